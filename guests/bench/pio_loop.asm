; Exit round-trip benchmark: ITERATIONS reads of the UART scratch register,
; each one a VM exit answered by the uart actor, then isa-debug-exit.
; Real mode, loaded at 0x8000.
%ifndef ITERATIONS
%define ITERATIONS 20000
%endif
bits 16
org 0x8000
start:
        cli
        mov dx, 0x3ff            ; 16550 scratch register (SCR)
        mov al, 0x5a
        out dx, al
        mov ecx, ITERATIONS
.loop:  in al, dx
        cmp al, 0x5a             ; the actor must answer with what we wrote
        jne .bad
        dec ecx
        jnz .loop
        mov dx, 0xf4
        xor eax, eax             ; exit status (0 << 1) | 1 = 1
        out dx, eax
.halt:  hlt
        jmp .halt
.bad:   mov dx, 0xf4
        mov eax, 0x7f            ; exit status 255: wrong value read
        out dx, eax
        jmp .halt
