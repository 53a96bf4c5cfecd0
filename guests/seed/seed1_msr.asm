; seed #1: benign unknown MSRs during SMP bring-up.  Every CPU (the BSP and
; each AP as it comes up) reads and writes MSR 0x1b0 (IA32_ENERGY_PERF_BIAS,
; which softvmm does not implement) and reports what happened: the value,
; or #GP.  What must happen is the VM's configured policy ([msr] unknown):
; "gp" -> both fault; "ignore" -> the read gives 0, the write is dropped.
; Either way every CPU reports in (the seed's APs died on a surprise #GP).
; Exit 0 = all N CPUs reported.
%include "boot.inc"

%define MSR 0x1b0

bsp_main:
        mov eax, 13                             ; #GP
        lea rdx, [rel gp_handler]
        call set_gate
        call probe
        call start_aps
.wait:  pause
        mov eax, [rel reported]
        cmp eax, r12d
        jb .wait
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

ap_main:
        call probe
        ret

; probe: rdmsr then wrmsr; a #GP handler skips the 2-byte instruction and
; sets r15 = 1.  Reports "seed1: vCPU n rdmsr X wrmsr Y".
probe:
        xor r15d, r15d
        mov ecx, MSR
        mov eax, 0x5a5a5a5a
        mov edx, 0x5a5a5a5a
        rdmsr
        mov r14d, r15d                          ; rdmsr faulted?
        mov ebx, eax                            ; low half of what it read
        xor r15d, r15d
        mov ecx, MSR
        mov eax, 6
        xor edx, edx
        wrmsr
        call lock_acquire
        lea rsi, [rel msg_cpu]
        call puts
        mov eax, r13d
        call putdec
        lea rsi, [rel msg_rd]
        call puts
        test r14d, r14d
        jz .rd_ok
        lea rsi, [rel msg_gp]
        call puts
        jmp .wr
.rd_ok: mov eax, ebx
        call putdec
.wr:    lea rsi, [rel msg_wr]
        call puts
        lea rsi, [rel msg_ok]
        test r15d, r15d
        jz .say
        lea rsi, [rel msg_gp]
.say:   call puts
        mov al, 10
        call putc
        call lock_release
        mov eax, 1
        lock xadd [rel reported], eax
        ret

gp_handler:                                     ; error code on the stack
        add rsp, 8
        add qword [rsp], 2                      ; past RDMSR/WRMSR (0F 32 / 0F 30)
        mov r15d, 1
        iretq

msg_cpu:  db "seed1: vCPU ", 0
msg_rd:   db " rdmsr ", 0
msg_wr:   db " wrmsr ", 0
msg_gp:   db "#GP", 0
msg_ok:   db "ok", 0
msg_all:  db "seed1: all vCPUs reported: ", 0
        align 4
reported: dd 0
