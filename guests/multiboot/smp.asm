; smp: an SMP start the way QEMU-era test kernels do it (kvm-unit-tests'
; smp_init): the BSP reads the CPU count from fw_cfg, writes INIT and then
; SIPI to "all excluding self" back to back, with no delay between them,
; and a second SIPI straight after (a started AP must ignore it).  Every AP
; counts itself in with LOCK XADD and sets its APIC ID's bit; the BSP
; checks that each of the other CPUs arrived exactly once.
;   SMP cpus=<n> arrived=<n> mask=<hex>
%define TEST_NAME "smp"
%define SMP
%include "../lib/kernel32.inc"
%include "../lib/fwcfg32.inc"

main:
        mov ax, K_NB_CPUS
        call fw_select
        call fw_read16
        mov ebx, eax                    ; EBX = CPUs
        cmp ebx, 2
        CHECK ae, "fw_cfg says there are at least 2 CPUs"
        cmp ebx, MAX_CPUS
        jbe .ok
        mov ebx, MAX_CPUS
.ok:    call smp_start
        mov dword [APIC + APIC_ICR_LO], 0x000c4600 | (TRAMPOLINE >> 12)   ; SIPI again
        lea eax, [ebx - 1]
        call smp_wait
        ; and nobody comes twice: give late starts 2 seconds
        mov edi, ap_arrived
        mov ecx, 2
        call wait_ne_secs
        call lock_acquire
        mov esi, msg_smp
        call puts
        mov eax, ebx
        call putdec
        mov esi, msg_arrived
        call puts
        mov eax, [ap_arrived]
        call putdec
        mov esi, msg_mask
        call puts
        mov eax, [ap_mask]
        call puthex
        call newline
        call lock_release
        lea eax, [ebx - 1]
        CHECK_EQ [ap_arrived], eax, "every AP arrived exactly once"
        mov ecx, ebx
        mov eax, 1
        shl eax, cl
        sub eax, 2                      ; bits 1..n-1
        CHECK_EQ [ap_mask], eax, "APs with APIC IDs 1..n-1 arrived, not the BSP"
        ret

ap_main:
        ret

        section .data
msg_smp:        db "SMP cpus=", 0
msg_arrived:    db " arrived=", 0
msg_mask:       db " mask=", 0
