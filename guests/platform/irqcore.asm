; irqcore: the seed's IRQ-side regression guests (included by route.asm,
; starve.asm, exact.asm, chaos.asm, lost.asm, which %define MODE).
;
; Every CPU: real mode -> long mode (as guests/hello/hello.asm), loads one
; shared IDT, enables its local APIC (SVR), and idles with interrupts on
; (`sti; hlt`, or a busy loop on CPU 1 in MODE_LOST).  Every vector >= 0x20
; lands in one handler that counts it per CPU in COUNTS[apic_id][vector]
; and EOIs.  Exceptions print "EXC <vec> on cpu <id>" and exit with 0x7f.
; The BSP starts the APs (INIT/SIPI), then drives the test: it programs the
; IOAPIC at 0xFEC00000 over MMIO and raises ISA/GSI lines through
; pc-testdev (OUT 1 / OUT 0 to 0x2000 + line), reports on COM1 and writes
; isa-debug-exit: 0 = pass (bhive exits 1), 1 = fail (bhive exits 3).

%define MODE_ROUTE  1
%define MODE_STARVE 2
%define MODE_EXACT  3
%define MODE_CHAOS  4
%define MODE_LOST   5

%define COM1        0x3f8
%define PML4        0x1000
%define PDPT        0x2000
%define PD0         0x3000
%define STACK_TOP   0x80000
%define COUNTS      0x100000        ; [cpu 0..63][vector 0..255] dwords
%define IDT         0x110000        ; 256 x 16 bytes
%define EXPECT      0x111000        ; per-CPU expected counts (MODE_LOST)
%define LAPIC       0xfee00000
%define IOAPIC      0xfec00000
%define TESTDEV     0x2000
%define DEBUG_EXIT  0xf4
%define TIMEOUT_TSC 8000000000      ; ~2-4 s of host TSC

        org 0x8000
        bits 16
start:
        cli
        jmp 0:.flat
.flat:
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7000
        lgdt [gdt_desc]
        mov eax, cr0
        or eax, 1
        mov cr0, eax
        jmp dword 0x08:pm32

        bits 32
pm32:
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov fs, ax
        mov gs, ax
        mov ecx, 0x1b
        rdmsr
        test eax, 0x100
        jz .paging
        mov edi, PML4
        mov ecx, (0x7000 - PML4) / 4
        xor eax, eax
        rep stosd
        mov dword [PML4], PDPT | 3
        mov edi, PDPT
        mov eax, PD0 | 3
        mov ecx, 4
.pdpt:  mov [edi], eax
        add eax, 0x1000
        add edi, 8
        loop .pdpt
        mov edi, PD0
        mov eax, 0x83
        xor edx, edx
        mov ecx, 2048
.pde:   mov [edi], eax
        mov [edi + 4], edx
        add eax, 0x200000
        adc edx, 0
        add edi, 8
        loop .pde
.paging:
        mov eax, cr4
        or eax, 1 << 5
        mov cr4, eax
        mov eax, PML4
        mov cr3, eax
        mov ecx, 0xc0000080
        rdmsr
        or eax, 1 << 8
        wrmsr
        mov eax, cr0
        or eax, 1 << 31
        mov cr0, eax
        jmp 0x18:lm64

        bits 64
lm64:
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov eax, 0xb
        mov ecx, 1
        cpuid
        movzx r12d, bx              ; r12 = CPUs
        mov r13d, edx               ; r13 = my APIC ID
        mov eax, r13d
        shl eax, 12
        mov esp, STACK_TOP
        sub rsp, rax

        mov ecx, 0x1b
        rdmsr
        test eax, 0x100
        jz ap_entry

        ; ---- BSP: counters, IDT, then the APs ----
        mov rdi, COUNTS
        mov ecx, (EXPECT + 0x1000 - COUNTS) / 8
        xor eax, eax
        rep stosq
        call build_idt
        call cpu_setup
        cmp r12d, 1
        jbe .wait
        mov rbx, LAPIC
        mov dword [rbx + 0x310], 0
        mov dword [rbx + 0x300], 0x000c4500     ; INIT, all excluding self
        mov dword [rbx + 0x300], 0x000c4608     ; SIPI 0x08 -> 0x8000
.wait:
        pause
        mov eax, [rel reported]
        inc eax                                 ; + the BSP
        cmp eax, r12d
        jb .wait
        sti
        call run_test                           ; eax = 0 pass, 1 fail
        mov dx, DEBUG_EXIT
        out dx, eax
.stop:  cli
        hlt
        jmp .stop

ap_entry:
        call cpu_setup
        lock inc dword [rel reported]
%if MODE == MODE_LOST
        cmp r13d, 1
        jne .idle
        sti
.busy:  inc qword [rel busy_loops]              ; CPU 1: busy, interrupts on
        jmp .busy
%endif
.idle:  sti
        hlt
        jmp .idle

; per-CPU: IDT, local APIC software-enabled (SVR bit 8, spurious 0xff)
cpu_setup:
        lidt [rel idt_desc]
        mov rbx, LAPIC
        mov dword [rbx + 0xf0], 0x1ff
        mov dword [rbx + 0x80], 0               ; TPR 0
        ret

build_idt:
        mov rdi, IDT
        lea rsi, [rel stubs]
        xor ecx, ecx
.e:     mov rax, rsi
        mov [rdi], ax                           ; offset 15:0
        mov word [rdi + 2], 0x18                ; 64-bit code selector
        mov word [rdi + 4], 0x8e00              ; present, interrupt gate
        shr rax, 16
        mov [rdi + 6], ax                       ; offset 31:16
        mov dword [rdi + 8], 0                  ; offset 63:32
        mov dword [rdi + 12], 0
        add rdi, 16
        add rsi, 16
        inc ecx
        cmp ecx, 256
        jb .e
        ret

; ---- interrupt entry: one 16-byte stub per vector ----
        align 16
stubs:
%assign v 0
%rep 256
        align 16
        push qword v
        jmp irq_common
%assign v v + 1
%endrep

irq_common:
        push rax
        push rbx
        push rdx
        mov rax, [rsp + 24]                     ; the vector
        cmp eax, 32
        jb exception
        mov rbx, LAPIC
        mov ebx, [rbx + 0x20]
        shr ebx, 24                             ; my APIC ID
        shl ebx, 10                             ; * 256 vectors * 4 bytes
        lock inc dword [COUNTS + rbx + rax * 4]
        mov rbx, LAPIC
        mov dword [rbx + 0xb0], 0               ; EOI
        pop rdx
        pop rbx
        pop rax
        add rsp, 8
        iretq

exception:
        mov rbx, rax
        lea rsi, [rel msg_exc]
        call puts
        mov eax, ebx
        call putdec
        lea rsi, [rel msg_on]
        call puts
        mov eax, r13d
        call putdec
        mov al, 10
        call putc
        mov dx, DEBUG_EXIT
        mov eax, 0x7f
        out dx, eax
.h:     cli
        hlt
        jmp .h

; ---- IOAPIC and testdev helpers (BSP) ----
; set_rte: EDI = pin, EAX = low dword, EDX = high dword (destination << 24)
set_rte:
        push rbx
        push rcx
        mov rbx, IOAPIC
        lea ecx, [rdi * 2 + 0x11]
        mov [rbx], ecx
        mov [rbx + 0x10], edx
        dec ecx
        mov [rbx], ecx
        mov [rbx + 0x10], eax
        pop rcx
        pop rbx
        ret

; mask_rte: EDI = pin
mask_rte:
        push rax
        push rdx
        mov eax, 0x10000
        xor edx, edx
        call set_rte
        pop rdx
        pop rax
        ret

; pulse: EDI = line: OUT 1 then OUT 0 to the testdev port (an edge)
pulse:
        push rax
        push rdx
        lea edx, [rdi + TESTDEV]
        mov al, 1
        out dx, al
        xor eax, eax
        out dx, al
        pop rdx
        pop rax
        ret

; count: ESI = cpu, EDI = vector -> EAX
count:
        mov eax, esi
        shl eax, 8
        add eax, edi
        mov eax, [COUNTS + rax * 4]
        ret

; wait_count: ESI = cpu, EDI = vector, ECX = target -> EAX = 1 reached, 0 timeout
wait_count:
        push rbx
        push rdx
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov rbx, TIMEOUT_TSC
        add rbx, rax                            ; deadline
.spin:  call count
        cmp eax, ecx
        jae .ok
        pause
        rdtsc
        shl rdx, 32
        or rax, rdx
        cmp rax, rbx
        jb .spin
        xor eax, eax
        jmp .out
.ok:    mov eax, 1
.out:   pop rdx
        pop rbx
        ret

; ---- the tests ----
%if MODE == MODE_ROUTE
; seed #5: every pin we can raise, routed to every CPU in turn, arrives on
; exactly that CPU.  Pin 2 is raised as ISA line 0 (the IRQ0 -> GSI2
; override); pin 0 (ExtINT) and pin 4 (the UART's) are not ours to raise.
run_test:
        lea r14, [rel route_pins]
.pin:   movzx r15d, byte [r14]
        cmp r15d, 0xff
        je .done
        xor r8d, r8d                            ; cpu k
.cpu:   mov edi, r15d
        lea eax, [r15d + 0x40]                  ; vector 0x40 + pin, fixed, edge, physical
        mov edx, r8d
        shl edx, 24
        call set_rte
        mov edi, r15d
        cmp edi, 2
        jne .raise
        xor edi, edi                            ; GSI 2 is ISA IRQ 0
.raise: call pulse
        mov esi, r8d
        lea edi, [r15d + 0x40]
        mov ecx, 1
        call wait_count
        test eax, eax
        jz .fail
        mov edi, r15d
        call mask_rte
        inc r8d
        cmp r8d, r12d
        jb .cpu
        ; each CPU got exactly one interrupt on this pin's vector
        xor esi, esi
.chk:   lea edi, [r15d + 0x40]
        call count
        cmp eax, 1
        jne .dup
        inc esi
        cmp esi, r12d
        jb .chk
        inc r14
        inc dword [rel pins_ok]
        jmp .pin
.done:  lea rsi, [rel msg_route_ok]
        call puts
        mov eax, [rel pins_ok]
        call putdec
        lea rsi, [rel msg_pins_x]
        call puts
        mov eax, r12d
        call putdec
        lea rsi, [rel msg_cpus]
        call puts
        xor eax, eax
        ret
.dup:   mov r8d, esi
.fail:  lea rsi, [rel msg_route_fail]
        call puts
        mov eax, r15d
        call putdec
        lea rsi, [rel msg_cpu]
        call puts
        mov eax, r8d
        call putdec
        mov al, 10
        call putc
        mov eax, 1
        ret
route_pins: db 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
            db 16, 17, 18, 19, 20, 21, 22, 23, 0xff
%endif

%if MODE == MODE_STARVE || MODE == MODE_EXACT || MODE == MODE_CHAOS
%ifndef ITER
%define ITER 100
%endif
; seed #6 (STARVE): the PIT at 1 kHz on IRQ0 (GSI 2, vector 0x30) and
; IRQ14 (vector 0x20, lower priority class) on the same CPU; IRQ14 is
; raised ITER times and must arrive every time while the timer keeps
; arriving too.
; seed #8 (EXACT): vector 0x20 programmed for IRQ14 after boot, raised ITER
; times, rotating over the CPUs, is received exactly ITER times.
; CHAOS: EXACT with progress lines, while the test kills the IOAPIC actor;
; a pulse whose assertion the dead IOAPIC never processed is raised again
; after a timeout (counted as a retry), received counts must be exact.
run_test:
        xor r14d, r14d                          ; i
        xor r15d, r15d                          ; retries
        xor r9d, r9d                            ; no deadline yet
%if MODE == MODE_STARVE
        lea r8d, [r12d - 1]                     ; the last CPU takes both
        mov edi, 2
        mov eax, 0x30
        mov edx, r8d
        shl edx, 24
        call set_rte
        mov al, 0x34                            ; PIT ch0, lo/hi, mode 2
        out 0x43, al
        mov ax, 1193                            ; 1 kHz
        out 0x40, al
        mov al, ah
        out 0x40, al
%endif
.next:  inc r14d
%if MODE == MODE_STARVE
        lea r8d, [r12d - 1]
%else
        mov eax, r14d
        xor edx, edx
        div r12d
        mov r8d, edx                            ; cpu = i mod n
%endif
%if MODE == MODE_CHAOS
        cmp r14d, 1                             ; programmed once: the RTE must survive the kill
        jne .programmed
        lea r8d, [r12d - 1]
%endif
        mov edi, 14
        mov eax, 0x20                           ; vector 0x20, fixed, edge
        mov edx, r8d
        shl edx, 24
        call set_rte
.programmed:
        ; target: total received so far (all CPUs) + 1
        call total20
        lea ecx, [eax + 1]
        mov [rel want], ecx
.raise: mov edi, 14
        call pulse
.w:     call total20
        cmp eax, [rel want]
        jae .got
        rdtsc
        shl rdx, 32
        or rax, rdx
        test r9, r9
        jnz .have
        mov r9, TIMEOUT_TSC
        add r9, rax
.have:  cmp rax, r9
        jb .w
        xor r9d, r9d
%if MODE == MODE_CHAOS
        inc r15d                                ; lost before the IOAPIC took it: raise again
        cmp r15d, 5
        jb .raise
%endif
        lea rsi, [rel msg_lost]
        call puts
        mov eax, r14d
        call putdec
        mov al, 10
        call putc
        mov eax, 1
        ret
.got:   xor r9d, r9d
%if MODE == MODE_CHAOS
        mov eax, r14d
        xor edx, edx
        mov ecx, 25
        div ecx
        test edx, edx
        jnz .np
        lea rsi, [rel msg_progress]
        call puts
        mov eax, r14d
        call putdec
        mov al, 10
        call putc
.np:
%endif
        cmp r14d, ITER
        jb .next
%if MODE == MODE_STARVE
        mov edi, 2
        call mask_rte
%endif
        ; settle, then the totals must be exact: no duplicate, no loss
        mov ecx, 2000000
.settle: pause
        loop .settle
        mov edi, 14
        call mask_rte
        call total20
        mov ebx, eax
        lea rsi, [rel msg_irq14]
        call puts
        mov eax, ebx
        call putdec
        lea rsi, [rel msg_irq0]
        call puts
        call total30
        mov r10d, eax
        call putdec
        lea rsi, [rel msg_retries]
        call puts
        mov eax, r15d
        call putdec
        mov al, 10
        call putc
        cmp ebx, ITER
        jne .bad
%if MODE == MODE_STARVE
        cmp r10d, 10                            ; the timer kept arriving
        jb .bad
%endif
        xor eax, eax
        ret
.bad:   mov eax, 1
        ret

total20:
        push rsi
        push rdi
        push rbx
        xor ebx, ebx
        xor esi, esi
        mov edi, 0x20
.t:     call count
        add ebx, eax
        inc esi
        cmp esi, r12d
        jb .t
        mov eax, ebx
        pop rbx
        pop rdi
        pop rsi
        ret

total30:
        push rsi
        push rdi
        push rbx
        xor ebx, ebx
        xor esi, esi
        mov edi, 0x30
.t:     call count
        add ebx, eax
        inc esi
        cmp esi, r12d
        jb .t
        mov eax, ebx
        pop rbx
        pop rdi
        pop rsi
        ret
%endif

%if MODE == MODE_LOST
; seed #7: pin 10 (vector 0x50) is aimed at each CPU in turn, round after
; round.  CPU 1 is busy (a tight loop), the others but the BSP halted, and
; the last one's process is killed by the test once "lost: ready" shows.
; Every live CPU must keep receiving every round; the dead one stops, and
; raising lines at it never holds up the others.  20 rounds after the
; death are required.
run_test:
        lea rsi, [rel msg_ready]
        call puts
        lea eax, [r12d - 1]
        call putdec
        mov al, 10
        call putc
        lea r15d, [r12d - 1]                    ; the doomed CPU
        xor r14d, r14d                          ; rounds
        mov dword [rel after_death], 0
.round: inc r14d
        cmp r14d, 200000
        ja .never
        xor r8d, r8d
.cpu:   mov edi, 10
        mov eax, 0x50
        mov edx, r8d
        shl edx, 24
        call set_rte
        mov edi, 10
        call pulse
        cmp r8d, r15d
        jne .live
        cmp dword [rel dead], 0
        jne .skip                               ; raised at the dead CPU: do not wait
.live:  inc dword [EXPECT + r8 * 4]
        mov ecx, [EXPECT + r8 * 4]
        mov esi, r8d
        mov edi, 0x50
        call wait_count
        test eax, eax
        jnz .skip
        cmp r8d, r15d
        jne .fail
        mov dword [rel dead], 1                 ; the doomed CPU stopped answering
        mov [rel dead_round], r14d
.skip:  inc r8d
        cmp r8d, r12d
        jb .cpu
        cmp dword [rel dead], 0
        je .round
        inc dword [rel after_death]
        cmp dword [rel after_death], 20
        jb .round
        lea rsi, [rel msg_lost_ok]
        call puts
        mov eax, r14d
        call putdec
        lea rsi, [rel msg_dead_round]
        call puts
        mov eax, [rel dead_round]
        call putdec
        mov al, 10
        call putc
        xor eax, eax
        ret
.fail:  lea rsi, [rel msg_lost_fail]
        call puts
        mov eax, r8d
        call putdec
        lea rsi, [rel msg_round]
        call puts
        mov eax, r14d
        call putdec
        mov al, 10
        call putc
        mov eax, 1
        ret
.never: lea rsi, [rel msg_never]
        call puts
        mov eax, 1
        ret
%endif

; ---- COM1 output (BSP only; the exception path may race, rarely) ----
%include "../lib/console64.inc"

; ---- data ----
        align 8
gdt:    dq 0
        dq 0x00cf9a000000ffff
        dq 0x00cf92000000ffff
        dq 0x00af9a000000ffff
gdt_end:
gdt_desc:
        dw gdt_end - gdt - 1
        dd gdt
        align 8
idt_desc:
        dw 256 * 16 - 1
        dq IDT

        align 8
busy_loops:  dq 0
reported:    dd 0
pins_ok:     dd 0
want:        dd 0
dead:        dd 0
dead_round:  dd 0
after_death: dd 0

msg_exc:        db "EXC ", 0
msg_on:         db " on cpu ", 0
msg_cpu:        db " cpu ", 0
msg_cpus:       db " cpus", 10, 0
msg_route_ok:   db "route ok: ", 0
msg_pins_x:     db " pins x ", 0
msg_route_fail: db "route FAIL: pin ", 0
msg_lost:       db "irq FAIL: no interrupt for raise ", 0
msg_progress:   db "progress ", 0
msg_irq14:      db "irq14 received ", 0
msg_irq0:       db " irq0 received ", 0
msg_retries:    db " retries ", 0
msg_ready:      db "lost: ready, kill vcpu", 0
msg_lost_ok:    db "lost ok: rounds ", 0
msg_dead_round: db " dead since round ", 0
msg_lost_fail:  db "lost FAIL: cpu ", 0
msg_round:      db " missed round ", 0
msg_never:      db "lost FAIL: the doomed vCPU never died", 10, 0
