; Interrupt latency benchmark (benchmarks/run.py irq_latency): from a device
; raising its line to the first instruction of the guest's handler on
; another vCPU.  The BSP routes IOAPIC pin 5 (vector 0x40, fixed, physical)
; to vCPU 1, then K times: stamps RDTSC, asks pc-testdev (port 0x2005) to
; raise and lower ISA line 5, and waits for vCPU 1's handler, whose first
; instruction stamps RDTSC.  Guest RDTSC is the host TSC in every vCPU
; process, so the two stamps compare.  -DSPIN=1: vCPU 1 busy-loops with
; interrupts on; otherwise it waits in HLT.  Prints "lat <ticks>" per run.
%include "../seed/boot.inc"

%ifndef K
%define K 200
%endif
%define IOAPIC 0xfec00000
%define VEC 0x40

bsp_main:
        mov eax, VEC
        lea rdx, [rel handler]
        call set_gate
        call start_aps
.wait_ap:
        pause
        cmp dword [rel ap_ready], 0
        je .wait_ap
        mov rbx, IOAPIC
        mov dword [rbx], 0x10 + 2 * 5 + 1       ; RTE 5 high: destination
        mov dword [rbx + 0x10], 1 << 24         ; APIC ID 1
        mov dword [rbx], 0x10 + 2 * 5           ; RTE 5 low: vector, fixed, edge, unmasked
        mov dword [rbx + 0x10], VEC
        xor r14d, r14d
.round: mov r15d, [rel count]
        call rdtsc64
        mov [rel t0], rax
        mov dx, 0x2005
        mov eax, 1
        out dx, al                              ; raise ISA line 5
        xor eax, eax
        out dx, al                              ; and lower it (an edge)
.spin:  pause
        cmp [rel count], r15d
        je .spin
        mov rax, [rel stamp]
        sub rax, [rel t0]
        call lock_acquire
        push rax
        lea rsi, [rel msg_lat]
        call puts
        pop rax
        call putdec
        mov al, 10
        call putc
        call lock_release
        inc r14d
        cmp r14d, K
        jb .round
        xor eax, eax
        ret

ap_main:
        cmp r13d, 1
        jne .park
        mov dword [rel ap_ready], 1
        sti
%ifdef SPIN
.busy:  inc qword [rel busy]
        jmp .busy
%else
.idle:  hlt
        jmp .idle
%endif
.park:  ret

handler:
        push rax
        push rdx
        rdtsc                                   ; the first thing the handler does
        shl rdx, 32
        or rax, rdx
        mov [rel stamp], rax
        lock inc dword [rel count]
        call eoi
        pop rdx
        pop rax
        iretq

msg_lat:  db "lat ", 0
        align 8
t0:       dq 0
stamp:    dq 0
busy:     dq 0
count:    dd 0
ap_ready: dd 0
