; seed #4 (BQL starvation): while N-1 APs spin on PAUSE, the BSP's LAPIC
; periodic timer-interrupt rate must not drop by more than 10% compared
; with the same measurement while the APs are halted.  Both phases time
; TICKS timer interrupts with RDTSC; the guest prints both and the ratio
; (per mille) and exits 0 (pass) or 4 (ratio above 1100 per mille).
%include "boot.inc"

%ifndef TICKS
%define TICKS 100
%endif
%ifndef PERIOD_US
%define PERIOD_US 2000
%endif

bsp_main:
        mov eax, 0x30
        lea rdx, [rel tick]
        call set_gate
        mov eax, 0x40
        lea rdx, [rel wake]
        call set_gate
        call start_aps
.up:    pause
        mov eax, [rel reported]
        cmp eax, r12d
        jb .up                                  ; APs are now halted (phase 1)
        mov rbx, APIC
        mov dword [rbx + 0x3e0], 0xb
        mov dword [rbx + 0x320], 0x20030        ; periodic, vector 0x30
        mov dword [rbx + 0x380], BUS_HZ / 1000000 * PERIOD_US
        sti
        call measure
        mov [rel t_halted], rax
        ; phase 2: the APs spin on PAUSE
        mov dword [rel phase], 2
        mov dword [rbx + 0x310], 0
        mov dword [rbx + 0x300], 0x000c0040     ; IPI 0x40, all excluding self: wake up
.spin:  pause
        mov eax, [rel spinning]
        inc eax
        cmp eax, r12d
        jb .spin
        call measure
        mov [rel t_spin], rax
        mov dword [rel phase], 3
        cli
        mov dword [rbx + 0x320], 0x10030        ; stop the timer
        ; ratio = t_spin * 1000 / t_halted
        mov rax, [rel t_spin]
        mov rcx, 1000
        mul rcx
        div qword [rel t_halted]
        mov r14, rax
        call lock_acquire
        lea rsi, [rel msg_h]
        call puts
        mov rax, [rel t_halted]
        call putdec
        lea rsi, [rel msg_s]
        call puts
        mov rax, [rel t_spin]
        call putdec
        lea rsi, [rel msg_r]
        call puts
        mov rax, r14
        call putdec
        mov al, 10
        call putc
        call lock_release
        xor eax, eax
        cmp r14, 1100
        jbe .ok
        mov eax, 4
.ok:    ret

measure:                                        ; RAX = TSC for TICKS timer interrupts
        mov eax, [rel ticks]
        inc eax
.sync:  hlt                                     ; start on a tick boundary
        cmp [rel ticks], eax
        jb .sync
        call rdtsc64
        mov r8, rax
        mov eax, [rel ticks]
        add eax, TICKS
.cnt:   hlt
        cmp [rel ticks], eax
        jb .cnt
        call rdtsc64
        sub rax, r8
        ret

ap_main:
        mov eax, 1
        lock xadd [rel reported], eax
        sti
.halt:  hlt                                     ; phase 1: halted until IPI 0x40
        cmp dword [rel phase], 2
        jb .halt
        lock inc dword [rel spinning]
.spin:  pause                                   ; phase 2: PAUSE spin
        cmp dword [rel phase], 2
        je .spin
        ret

tick:   inc dword [rel ticks]
        call eoi
        iretq
wake:   call eoi
        iretq

        align 8
t_halted:   dq 0
t_spin:     dq 0
reported:   dd 1
spinning:   dd 0
phase:      dd 1
ticks:      dd 0
msg_h:      db "seed4: halted-APs TSC ", 0
msg_s:      db " spinning-APs TSC ", 0
msg_r:      db " ratio(permille) ", 0
