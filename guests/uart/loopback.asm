; The UART port lane against the 16550's loopback mode (section 8.6): in
; loopback a THR write lands in RBR, so the LSR read right after it must
; see DR, which a stale register mirror would miss.  ROUNDS times: enter
; loopback (MCR), write a byte, read LSR (DR and THRE set), read RBR (the
; byte), leave loopback; every THR write of the normal mode between them
; goes out on the console.  Reports "loopback: N rounds, M errors" and
; ends through isa-debug-exit with V = errors != 0.
bits 16
org 0x8000
%define COM1 0x3f8
%ifndef ROUNDS
%define ROUNDS 2000
%endif
start:
        cli
        xor ax, ax
        mov ds, ax
        mov dx, COM1 + 1
        xor al, al
        out dx, al               ; IER: polled
        mov dx, COM1 + 2
        mov al, 0x07
        out dx, al               ; FCR: FIFOs on and cleared
        xor si, si               ; errors
        xor cx, cx               ; rounds
.round: mov dx, COM1 + 4
        mov al, 0x10
        out dx, al               ; MCR: loopback
        mov bl, cl
        or bl, 0x40              ; a byte that changes each round
        mov dx, COM1
        mov al, bl
        out dx, al               ; THR -> RBR (posted)
        mov dx, COM1 + 5
        in al, dx                ; LSR: DR must be set now
        and al, 0x21
        cmp al, 0x21
        je .dr_ok
        inc si
.dr_ok: mov dx, COM1
        in al, dx                ; RBR: the byte
        cmp al, bl
        je .rbr_ok
        inc si
.rbr_ok:
        mov dx, COM1 + 5
        in al, dx                ; LSR: DR clear again
        test al, 1
        jz .empty
        inc si
.empty: mov dx, COM1 + 4
        mov al, 0x0b
        out dx, al               ; MCR: DTR RTS OUT2, loopback off
        mov al, '.'
        call putc
        inc cx
        cmp cx, ROUNDS
        jb .round
        mov al, 10
        call putc
        mov bx, msg_rounds
        call puts
        mov ax, cx
        call putdec
        mov bx, msg_errors
        call puts
        mov ax, si
        call putdec
        mov bx, msg_tail
        call puts
        mov al, 10
        call putc
        mov dx, 0xf4
        xor eax, eax
        test si, si
        jz .exit
        mov eax, 1
.exit:  out dx, eax
.halt:  hlt
        jmp .halt

putc:   push dx
        push ax
        mov dx, COM1 + 5
.wait:  in al, dx
        test al, 0x20            ; THRE
        jz .wait
        pop ax
        mov dx, COM1
        out dx, al
        pop dx
        ret

puts:   mov al, [bx]
        test al, al
        jz .done
        call putc
        inc bx
        jmp puts
.done:  ret

putdec: push cx                  ; AX as decimal
        push dx
        mov cx, 0
        mov di, 10
.div:   xor dx, dx
        div di
        push dx
        inc cx
        test ax, ax
        jnz .div
.out:   pop ax
        add al, '0'
        call putc
        loop .out
        pop dx
        pop cx
        ret

msg_rounds: db "loopback: ", 0
msg_errors: db " rounds, ", 0
msg_tail:   db " errors", 0
