; Prints "boot" on COM1, then resets the machine through port 0x92's
; fast-reset bit (bit 0, 0 -> 1).  The VM reboots it (and it prints again)
; unless -no-reboot, which ends the VM with status 0.
bits 16
org 0x8000
%define COM1 0x3f8
start:
        cli
        mov si, msg
.next:  lodsb
        test al, al
        jz .reset
        mov bl, al
        mov dx, COM1 + 5
.thre:  in al, dx
        test al, 0x20            ; LSR.THRE
        jz .thre
        mov al, bl
        mov dx, COM1
        out dx, al
        jmp .next
.reset: in al, 0x92
        or al, 1                 ; fast reset
        out 0x92, al
.spin:  pause
        jmp .spin
msg:    db "boot", 10, 0
