; The 8259A path end to end: with every IOAPIC RTE masked (as firmware
; leaves them), the PIC owns the interrupt output and delivers ExtINT to
; the BSP.  The guest reprograms the master PIC (ICW1-ICW4) to vector base
; 0x50, unmasks only IRQ5, and K times raises and lowers ISA line 5
; through pc-testdev, waiting for its handler, which sends the PIC a
; non-specific EOI.  Exit 0 = exactly K interrupts at vector 0x55.
%include "boot.inc"

%define K 50
%define VEC 0x55                                ; base 0x50 + IRQ5

bsp_main:
        mov eax, VEC
        lea rdx, [rel handler]
        call set_gate
        mov al, 0x11                            ; ICW1: edge, cascade, ICW4 follows
        out 0x20, al
        mov al, 0x50                            ; ICW2: vector base
        out 0x21, al
        mov al, 0x04                            ; ICW3: slave on IRQ2
        out 0x21, al
        mov al, 0x01                            ; ICW4: 8086 mode, normal EOI
        out 0x21, al
        mov al, 0xff & ~(1 << 5)                ; OCW1: only IRQ5 unmasked
        out 0x21, al
        sti
        xor r14d, r14d
.round: inc r14d
        mov dx, 0x2005
        mov al, 1
        out dx, al                              ; raise ISA line 5
        xor eax, eax
        out dx, al                              ; lower it: one edge
.wait:  pause
        cmp [rel count], r14d
        jb .wait
        cmp r14d, K
        jb .round
        call rdtsc64                            ; then nothing more may arrive
        mov r15, rax
.quiet: pause
        call rdtsc64
        sub rax, r15
        cmp rax, 100000000
        jb .quiet
        call lock_acquire
        lea rsi, [rel msg_done]
        call puts
        mov eax, [rel count]
        call putdec
        mov al, 10
        call putc
        call lock_release
        xor eax, eax
        cmp dword [rel count], K
        je .ok
        mov eax, 4
.ok:    ret

ap_main:
        ret

handler:
        push rax
        lock inc dword [rel count]
        mov al, 0x20                            ; OCW2: non-specific EOI
        out 0x20, al
        pop rax
        iretq

msg_done: db "pic: extint deliveries ", 0
        align 4
count:    dd 0
