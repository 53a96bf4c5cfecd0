; seed #8 (CPU side): a vector programmed after boot (0x20, the one the
; seed's IRR scrubber ate) delivered by self-IPIs and by cross-CPU fixed
; IPIs is never dropped.  Every CPU sends itself M self-IPIs, then M fixed
; IPIs to CPU (id+1) mod N, each carrying a distinct payload (1..M) in a
; mailbox; the sender waits for the handler's acknowledgement before the
; next one.  Every CPU must count exactly 2M handler runs with payload sum
; 2 * M(M+1)/2.  Exit 0 = pass, 8 = a count or sum is wrong.
%include "boot.inc"

%ifndef M
%define M 200
%endif
%define VEC 0x20

bsp_main:
        mov eax, VEC
        lea rdx, [rel handler]
        call set_gate
        call start_aps
        call work
.all:   pause
        mov eax, [rel done]
        cmp eax, r12d
        jb .all
        xor r14d, r14d                          ; failures
        xor ecx, ecx
.chk:   call lock_acquire
        lea rsi, [rel msg_cpu]
        call puts
        mov eax, ecx
        call putdec
        lea rsi, [rel msg_runs]
        call puts
        mov eax, [count + rcx * 4]
        call putdec
        lea rsi, [rel msg_sum]
        call puts
        mov rax, [sum + rcx * 8]
        call putdec
        mov al, 10
        call putc
        call lock_release
        cmp dword [count + rcx * 4], 2 * M
        jne .bad
        cmp qword [sum + rcx * 8], M * (M + 1)
        je .next
.bad:   inc r14d
.next:  inc ecx
        cmp ecx, r12d
        jb .chk
        xor eax, eax
        test r14d, r14d
        jz .ok
        mov eax, 8
.ok:    ret

ap_main:
        call work
.idle:  pause                                   ; keep taking IPIs until the BSP checks
        jmp .idle

; send M IPIs with the ICR value in R10 to target R11 (mailbox index)
send_m:
        mov rbx, APIC
        mov r9d, 1
.one:   mov eax, [ack + r11 * 4]
        mov [base + r13 * 4], eax               ; acks before this IPI
        mov [mailbox + r11 * 4], r9d            ; payload
        mov eax, r11d
        shl eax, 24
        mov [rbx + 0x310], eax
        mov [rbx + 0x300], r10d
        mov eax, [base + r13 * 4]
        inc eax
.w:     cmp [ack + r11 * 4], eax                ; handler ran and read the payload
        jae .acked
        pause
        jmp .w
.acked: inc r9d
        cmp r9d, M
        jbe .one
        ret

work:
        sti
        mov r11d, r13d
        mov r10d, (1 << 18) | VEC               ; self-IPI shorthand
        call send_m
        lock inc dword [rel self_done]
.barrier:                                       ; every CPU finished its self-IPIs
        pause
        mov eax, [rel self_done]
        cmp eax, r12d
        jb .barrier
        mov eax, r13d
        inc eax
        xor edx, edx
        div r12d
        mov r11d, edx                           ; target (id + 1) mod N
        mov r10d, VEC                           ; fixed, physical
        call send_m
        lock inc dword [rel done]
        ret

handler:
        push rax
        push rcx
        mov ecx, r13d
        mov eax, [mailbox + rcx * 4]
        add [sum + rcx * 8], rax
        inc dword [count + rcx * 4]
        lock inc dword [ack + rcx * 4]
        call eoi
        pop rcx
        pop rax
        iretq

        align 8
sum:        times 256 dq 0
count:      times 256 dd 0
ack:        times 256 dd 0
mailbox:    times 256 dd 0
base:       times 256 dd 0
self_done:  dd 0
done:       dd 0
msg_cpu:    db "seed8: vCPU ", 0
msg_runs:   db " handler runs ", 0
msg_sum:    db " payload sum ", 0
