; seed #2: IN/OUT exits complete exactly once, with RAX and RIP right.
; Every CPU runs N iterations of: a 16-bit IN from a port no device owns
; (the bus answers 0xFFFF) into a RAX holding a known pattern, checking the
; merge (bits 63:16 kept), an OUT to port 0x80, and a count.  A re-executed
; IN (stale RIP) or a skipped instruction shows as a wrong count or RAX.
; Then, under the print lock, it writes its APIC ID to the UART scratch
; register and reads it back M times (a device actor's answer, same checks).
; Exit 0 = every CPU counted exactly N and M; 3 = a wrong RAX or count.
%include "boot.inc"

%ifndef N
%define N 500
%endif
%define M 20
%define PATTERN 0x1122334455667788

bsp_main:
        call loop_io
        call start_aps
.wait:  pause
        mov eax, [rel reported]
        cmp eax, r12d
        jb .wait
        mov eax, [rel failures]
        test eax, eax
        jnz .bad
        call lock_acquire
        lea rsi, [rel msg_all]
        call puts
        mov eax, r12d
        call putdec
        mov al, 10
        call putc
        call lock_release
        xor eax, eax
        ret
.bad:   mov eax, 3
        ret

ap_main:
        call loop_io
        ret

loop_io:
        xor r14d, r14d                          ; iterations done
        mov r15, PATTERN
.io:    mov rax, r15
        mov dx, 0x2e8                           ; unclaimed: the bus floats high
        in ax, dx
        mov rbx, r15
        or rbx, 0xffff
        cmp rax, rbx                            ; only AX replaced
        jne .fail
        out 0x80, al
        inc r14d
        cmp r14d, N
        jb .io
        cmp r14d, N
        jne .fail
        ; a device actor's answer: the UART scratch register
        call lock_acquire
        xor r14d, r14d
.scr:   mov eax, r13d
        add eax, r14d
        mov dx, 0x3ff
        out dx, al
        mov rax, r15
        in al, dx
        mov rbx, r15
        mov bl, r13b
        add bl, r14b
        cmp rax, rbx
        jne .fail_locked
        inc r14d
        cmp r14d, M
        jb .scr
        lea rsi, [rel msg_cpu]
        call puts
        mov eax, r13d
        call putdec
        lea rsi, [rel msg_n]
        call puts
        mov eax, N
        call putdec
        mov al, 10
        call putc
        call lock_release
        jmp .done
.fail_locked:
        call lock_release
.fail:  lock inc dword [rel failures]
.done:  mov eax, 1
        lock xadd [rel reported], eax
        ret

msg_cpu:  db "seed2: vCPU ", 0
msg_n:    db " exits exact: ", 0
msg_all:  db "seed2: all vCPUs exact: ", 0
        align 4
reported: dd 0
failures: dd 0
