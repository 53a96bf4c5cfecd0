; seed #7 (CPU side): fixed IPIs wake halted CPUs.  Each AP halts (IF=1)
; in a loop; for R rounds the BSP waits until each AP has announced it is
; about to HLT, sends it IPI 0x50 and waits for the AP's handler to run.
; With -DHOLD=1 the BSP then prints "seed7: holding" and halts forever, so
; a test can SIGKILL a vCPU process and inject MSIs from outside.
; Exit 0 = pass.
%include "boot.inc"

%ifndef R
%define R 50
%endif

bsp_main:
        mov eax, 0x50
        lea rdx, [rel wake]
        call set_gate
        call start_aps
        mov rbx, APIC
        mov r9d, 1                              ; round
.round: mov ecx, 1
.ap:    cmp ecx, r12d
        jae .next
.hw:    pause
        cmp dword [halting + rcx * 4], r9d      ; AP about to HLT in this round
        jb .hw
        mov eax, ecx
        shl eax, 24
        mov [rbx + 0x310], eax
        mov dword [rbx + 0x300], 0x50           ; fixed IPI to the halted AP
.ww:    pause
        cmp dword [woke + rcx * 4], r9d
        jb .ww
        inc ecx
        jmp .ap
.next:  inc r9d
        cmp r9d, R
        jbe .round
        call lock_acquire
        lea rsi, [rel msg_ok]
        call puts
        mov eax, r12d
        dec eax
        call putdec
        lea rsi, [rel msg_rounds]
        call puts
        mov eax, R
        call putdec
        mov al, 10
        call putc
        call lock_release
%ifdef HOLD
        lea rsi, [rel msg_hold]
        call puts
        sti
.hold:  hlt
        jmp .hold
%endif
        xor eax, eax
        ret

ap_main:
        sti
.loop:  mov eax, [woke + r13 * 4]
        cmp eax, R
        jae .done
        inc eax
        mov [halting + r13 * 4], eax            ; "halting for round eax"
        hlt                                     ; only the IPI wakes us
        jmp .loop
.done:  ret

wake:   inc dword [woke + r13 * 4]
        call eoi
        iretq

        align 4
halting:    times 256 dd 0
woke:       times 256 dd 0
msg_ok:     db "seed7: halted APs woken by IPIs: ", 0
msg_rounds: db " APs x rounds ", 0
msg_hold:   db "seed7: holding", 10, 0
