; Level-triggered interrupts end to end: IOAPIC pin 5 (vector 0x41) is
; level-triggered and routed to the last vCPU.  Each round the BSP raises
; ISA line 5 through pc-testdev (port 0x2005).  The handler counts, and on
; its first run of a round EOIs *without* lowering the line: the line is
; still asserted, so after the EOI clears Remote IRR the IOAPIC must
; deliver again (82093AA datasheet, 3.2.4).  On its second run it lowers
; the line and EOIs: no third delivery may follow.  So each round is
; exactly 2 deliveries; any drop or extra delivery shows in the total.
; Exit 0 = exactly 2*K deliveries and none after the last round.
%include "boot.inc"

%define K 50
%define IOAPIC 0xfec00000
%define VEC 0x41

bsp_main:
        mov eax, VEC
        lea rdx, [rel handler]
        call set_gate
        call start_aps
.aps:   pause
        mov eax, [rel ready]
        inc eax
        cmp eax, r12d
        jb .aps
        lea eax, [r12d - 1]                     ; the last vCPU (the BSP if alone)
        shl eax, 24
        mov rbx, IOAPIC
        mov dword [rbx], 0x10 + 2 * 5 + 1
        mov [rbx + 0x10], eax
        mov dword [rbx], 0x10 + 2 * 5
        mov dword [rbx + 0x10], VEC | (1 << 15) ; level-triggered, active high, fixed
        sti
        xor r14d, r14d
.round: inc r14d
        mov dx, 0x2005
        mov al, 1
        out dx, al                              ; assert the line; the handler lowers it
        lea eax, [r14d * 2]
.wait:  pause
        cmp [rel count], eax
        jb .wait
        cmp r14d, K
        jb .round
        ; nothing more may come: wait ~50 ms of TSC and look again
        call rdtsc64
        mov r15, rax
.quiet: pause
        call rdtsc64
        sub rax, r15
        cmp rax, 150000000
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
        cmp dword [rel count], 2 * K
        je .ok
        mov eax, 4
.ok:    ret

ap_main:
        lock inc dword [rel ready]
        sti
.idle:  hlt
        jmp .idle

handler:
        push rax
        push rdx
        inc dword [rel runs]                    ; only this vCPU runs the handler
        test dword [rel runs], 1
        jnz .eoi                                ; first run of the round: leave the line up
        mov dx, 0x2005
        xor eax, eax
        out dx, al                              ; second run: lower it first
.eoi:   call eoi                                ; level vector: the EOI reaches the IOAPIC
        lock inc dword [rel count]              ; counted once it is all done, so the
        pop rdx                                 ; BSP cannot raise the next round early
        pop rax
        iretq

msg_done: db "level: deliveries ", 0
        align 4
count:    dd 0
runs:     dd 0
ready:    dd 0
