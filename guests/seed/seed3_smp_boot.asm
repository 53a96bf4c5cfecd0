; seed #3: SMP bring-up.  The BSP runs its LAPIC timer (periodic, 1 ms,
; vector 0x30) while it starts the APs with INIT/SIPI; every AP reports
; in over the UART; the BSP waits for all N and checks that timer
; interrupts kept arriving meanwhile.  Exit 0 = pass, 2 = no timer ticks.
%include "boot.inc"

bsp_main:
        mov eax, 0x30
        lea rdx, [rel tick]
        call set_gate
        mov rbx, APIC
        mov dword [rbx + 0x3e0], 0xb            ; divide by 1
        mov dword [rbx + 0x320], 0x20030        ; periodic, vector 0x30
        mov dword [rbx + 0x380], BUS_HZ / 1000  ; 1 ms
        sti
        mov eax, 1
        lock xadd [rel reported], eax
        call start_aps
.wait:  pause
        mov eax, [rel reported]
        cmp eax, r12d
        jb .wait
        ; and a few more ticks after the last AP came up
        mov eax, [rel ticks]
        add eax, 5
.more:  hlt
        cmp [rel ticks], eax
        jb .more
        cli
        call lock_acquire
        lea rsi, [rel msg_all]
        call puts
        mov eax, r12d
        call putdec
        lea rsi, [rel msg_ticks]
        call puts
        mov eax, [rel ticks]
        call putdec
        mov al, 10
        call putc
        call lock_release
        xor eax, eax
        cmp dword [rel ticks], 5
        jae .ok
        mov eax, 2
.ok:    ret

ap_main:
        call lock_acquire
        lea rsi, [rel msg_ap]
        call puts
        mov eax, r13d
        call putdec
        mov al, 10
        call putc
        call lock_release
        mov eax, 1
        lock xadd [rel reported], eax
        ret

tick:   inc dword [rel ticks]
        call eoi
        iretq

        align 4
reported:   dd 0
ticks:      dd 0
msg_ap:     db "seed3: AP up: vCPU ", 0
msg_all:    db "seed3: all ", 0
msg_ticks:  db " vCPUs reported, BSP timer ticks ", 0
