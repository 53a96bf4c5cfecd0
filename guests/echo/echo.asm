; Console echo: every byte typed on the serial console comes back;
; 'q' ends the VM through isa-debug-exit with V=3 (exit status 7).
bits 16
org 0x8000
%define COM1 0x3f8
start:
        cli
        mov dx, COM1 + 1
        mov al, 0
        out dx, al               ; IER: polled, no interrupts
.poll:  mov dx, COM1 + 5
        in al, dx
        test al, 1               ; LSR.DR: a byte is waiting
        jz .poll
        mov dx, COM1
        in al, dx
        cmp al, 'q'
        je .quit
        mov bl, al
        mov dx, COM1 + 5
.thre:  in al, dx
        test al, 0x20            ; LSR.THRE
        jz .thre
        mov al, bl
        mov dx, COM1
        out dx, al
        jmp .poll
.quit:  mov dx, 0xf4
        mov eax, 3
        out dx, eax
.halt:  hlt
        jmp .halt
