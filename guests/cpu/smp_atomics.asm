; smp_atomics: every vCPU (its own process under `bhive run`) does K
; LOCK XADD increments of one shared counter; the BSP waits for all of them
; and checks counter == ncpus * K.  Reports over COM1, exits via
; isa-debug-exit with 0 (pass) or 1 (fail).  Bring-up as in guests/hello.

%define K           200000
%define COM1        0x3f8
%define PML4        0x1000
%define PDPT        0x2000
%define PD0         0x3000
%define STACK_TOP   0x80000
%define APIC_ICR_LO 0xfee00300

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
        ; K locked increments of the shared counter
        mov ecx, K
.inc:   mov eax, 1
        lock xadd [rel counter], eax
        dec ecx
        jnz .inc
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
        lea rsi, [rel msg_cnt]
        call puts
        mov eax, [rel counter]
        call putdec
        lea rsi, [rel msg_exp]
        call puts
        mov eax, r12d
        imul eax, eax, K
        mov ebx, eax
        call putdec
        mov eax, [rel counter]
        cmp eax, ebx
        jne .fail
        lea rsi, [rel msg_pass]
        call puts
        xor eax, eax
        jmp .exit
.fail:  lea rsi, [rel msg_fail]
        call puts
        mov eax, 1
.exit:  mov dx, 0xf4
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
counter:    dd 0

msg_cnt:    db "smp_atomics: counter=", 0
msg_exp:    db " expected=", 0
msg_pass:   db " PASS", 10, 0
msg_fail:   db " FAIL", 10, 0
