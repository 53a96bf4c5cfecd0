; hello: SMP bring-up smoke test for bhive.
;
; Flat binary, org 0x8000, loaded at guest-physical 0x8000.  The BSP starts
; in real mode at 0000:8000; APs get SIPI vector 0x08 and start at
; 0800:0000 (the same bytes).  Every CPU goes real mode -> 32-bit protected
; mode -> long mode (4-level paging, identity map of the low 4 GiB with 2 MiB
; pages so the local APIC at 0xFEE00000 is reachable), then prints
;     Hello from bhive vCPU <apicid> of <n>
; on the 16550 at 0x3F8 under a spinlock.  n comes from CPUID leaf 0xB.
; The BSP (IA32_APIC_BASE bit 8) starts the APs with INIT + SIPI
; (all-excluding-self), waits until all n CPUs have reported, prints
;     hello: all <n> vCPUs reported
; and writes 0 to the isa-debug-exit port 0xF4.
;
; Memory: page tables at 0x1000-0x6fff, per-CPU 4 KiB stacks below 0x80000
; (indexed by APIC ID), variables right after the code.

%ifndef REPEAT
%define REPEAT      1               ; greetings per vCPU (chatty.asm sets more)
%endif
%define COM1        0x3f8
%define PML4        0x1000
%define PDPT        0x2000
%define PD0         0x3000          ; 4 page directories: 0x3000..0x6fff
%define STACK_TOP   0x80000
%define APIC_ICR_LO 0xfee00300
%define APIC_ICR_HI 0xfee00310

        org 0x8000
        bits 16
start:
        cli
        jmp 0:.flat                 ; APs arrive with CS=0x0800: normalise
.flat:
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7000
        lgdt [gdt_desc]
        mov eax, cr0
        or eax, 1                   ; PE
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
        ; only the BSP builds the page tables (before it starts the APs)
        mov ecx, 0x1b               ; IA32_APIC_BASE
        rdmsr
        test eax, 0x100             ; BSP flag
        jz .paging
        ; clear 0x1000..0x6fff
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
        ; 2048 PDEs of 2 MiB: PS | RW | P
        mov edi, PD0
        mov eax, 0x83
        xor edx, edx                ; high dword of the physical address
        mov ecx, 2048
.pde:   mov [edi], eax
        mov [edi + 4], edx
        add eax, 0x200000
        adc edx, 0
        add edi, 8
        loop .pde
.paging:
        mov eax, cr4
        or eax, 1 << 5              ; PAE
        mov cr4, eax
        mov eax, PML4
        mov cr3, eax
        mov ecx, 0xc0000080         ; EFER
        rdmsr
        or eax, 1 << 8              ; LME
        wrmsr
        mov eax, cr0
        or eax, 1 << 31             ; PG -> IA-32e mode active
        mov cr0, eax
        jmp 0x18:lm64

        bits 64
lm64:
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        ; APIC ID and CPU count from CPUID leaf 0xB (x2APIC topology)
        mov eax, 0xb
        mov ecx, 1                  ; core level
        cpuid
        movzx r12d, bx              ; r12 = number of logical processors
        mov r13d, edx               ; r13 = x2APIC ID of this CPU
        ; per-CPU stack
        mov eax, r13d
        shl eax, 12
        mov esp, STACK_TOP
        sub rsp, rax
        ; say hello under the lock, REPEAT times
        mov r14d, REPEAT
.greet:
        call lock_acquire
        lea rsi, [rel msg_hello]
        call puts
        mov eax, r13d
        call putdec
        lea rsi, [rel msg_of]
        call puts
        mov eax, r12d
        call putdec
        mov al, 10
        call putc
        call lock_release
        dec r14d
        jnz .greet
        mov eax, 1
        lock xadd [rel reported], eax

        mov ecx, 0x1b
        rdmsr
        test eax, 0x100
        jz ap_done

        ; ---- BSP: start the APs, wait for them ----
        cmp r12d, 1
        jbe .wait
        mov rbx, APIC_ICR_LO
        mov dword [rbx + 0x10], 0           ; ICR high: destination unused with a shorthand
        mov dword [rbx], 0x000c4500         ; INIT, assert, all excluding self
        mov dword [rbx], 0x000c4608         ; SIPI vector 0x08 -> 0x8000
.wait:
        pause
        mov eax, [rel reported]
        cmp eax, r12d
        jb .wait
        call lock_acquire
        lea rsi, [rel msg_all]
        call puts
        mov eax, r12d
        call putdec
        lea rsi, [rel msg_rep]
        call puts
        call lock_release
        mov dx, 0xf4
        xor eax, eax
        out dx, eax                         ; isa-debug-exit
.stop:  cli
        hlt
        jmp .stop

ap_done:
        cli
        hlt
        jmp ap_done

%include "../lib/console64.inc"

; ---- data ----
        align 8
gdt:    dq 0
        dq 0x00cf9a000000ffff               ; 0x08: 32-bit code, flat
        dq 0x00cf92000000ffff               ; 0x10: data, flat
        dq 0x00af9a000000ffff               ; 0x18: 64-bit code
gdt_end:
gdt_desc:
        dw gdt_end - gdt - 1
        dd gdt

        align 4
reported:   dd 0

msg_hello:  db "Hello from bhive vCPU ", 0
msg_of:     db " of ", 0
msg_all:    db "hello: all ", 0
msg_rep:    db " vCPUs reported", 10, 0
