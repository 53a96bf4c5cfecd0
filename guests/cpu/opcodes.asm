; opcodes: unknown and unimplemented instructions raise #UD (never stop the
; VM), in real mode, 32-bit protected mode and 64-bit mode, reported over
; COM1 as PASS <name> / FAIL <name> ..., then isa-debug-exit with the number
; of failures (0 -> `bhive run` exits 1).
;
; Every record of unassigned.inc is copied into XBUF, followed by 16 NOPs
; and UD2, and entered by a JMP: the #UD handler records where the fault
; was.  The check passes when every record faults at its first byte (an
; instruction that did not fault would run into the NOPs and the UD2).
; Then, in 64-bit mode, instructions softvmm's CPUID does not advertise
; (INVPCID, RDPRU, SSSE3, XSAVE, ...) raise #UD, and RDPMC, with no
; performance counters in CPUID leaf 0xA, raises #GP(0).  Last, under the
; CPU model (-cpu), each gated instruction (and 1G pages, IA32_TSC_DEADLINE)
; works exactly when CPUID reports its feature.  Single vCPU;
; starts in real mode at 0x8000.

%define XBUF        0x6000
%define STACK       0x7c00
%define PML4        0x100000
%define PDPT        0x101000
%define PD          0x102000

%include "../lib/console.inc"
%include "../lib/verdicts.inc"

; RUN_TABLE table, name: run every record of a table in the current mode
%macro RUN_TABLE 2
%if __BITS__ == 64
        lea rsi, [rel %1]
        call run_table64
%elif __BITS__ == 32
        mov esi, %1
        call run_table32
%else
        mov si, %1
        call run_table16
%endif
        cmp dword [bad], 0
        RESULT e, %2
%endmacro

; the table runner, for the current BITS (xSI = first record)
%macro RUNNER 1
%push r
%if __BITS__ == 64
  %define %$S rsi
  %define %$D rdi
  %define %$C rcx
%elif __BITS__ == 32
  %define %$S esi
  %define %$D edi
  %define %$C ecx
%else
  %define %$S si
  %define %$D di
  %define %$C cx
%endif
run_table%1:
        mov dword [bad], 0
        mov dword [idx], 0
.next:  xor ecx, ecx
        mov cl, [%$S]
        test cl, cl
        jz .done
        inc %$S
        mov %$D, XBUF
        rep movsb
        mov al, 0x90
        mov cl, 16
        rep stosb
        mov word [%$D], 0x0b0f          ; UD2
        mov dword [ud_ip], -1
        jmp XBUF
.resume:                                ; from the #UD handler
        cmp dword [ud_ip], XBUF
        je .ok
        cmp dword [bad], 0
        jne .count
        push %$S                        ; report the first bad record
        mov %$S, m_bad
        call puts%1
        mov eax, [idx]
        call puthex%1
        mov %$S, m_at
        call puts%1
        mov eax, [ud_ip]
        call puthex%1
        mov al, 10
        call putc%1
        pop %$S
.count: inc dword [bad]
.ok:    inc dword [idx]
        jmp .next
.done:  ret
%pop
%endmacro

        org 0x8000
; ==== real mode ==========================================================
        bits 16
start:  cli
        jmp 0:.cs0
.cs0:   xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, STACK
        cld
        mov word [6 * 4], ud16
        mov word [6 * 4 + 2], 0
        RUN_TABLE ud_all, "real mode: every unassigned opcode raises #UD"
        lgdt [gdt_desc]
        mov eax, cr0
        or al, 1
        mov cr0, eax
        jmp 0x08:pm32

ud16:   push bp
        mov bp, sp
        push ax
        mov ax, [bp + 2]
        mov [ud_ip], ax
        mov word [ud_ip + 2], 0
        mov word [bp + 2], run_table16.resume
        pop ax
        pop bp
        iret

        CONSOLE 16
        VERDICTS 16
        RUNNER 16

; ==== 32-bit protected mode ==============================================
        bits 32
pm32:   mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov esp, STACK
        lidt [idt32_desc]
        RUN_TABLE ud_all, "32-bit protected mode: every unassigned opcode raises #UD"
        ; identity-map 0..1G with 2M pages, then IA-32e mode
        mov edi, PML4
        mov ecx, 3 * 1024
        xor eax, eax
        rep stosd
        mov dword [PML4], PDPT | 3
        mov dword [PDPT], PD | 3
        mov edi, PD
        mov eax, 0x83
        mov ecx, 512
.pd:    mov [edi], eax
        add eax, 0x200000
        add edi, 8
        loop .pd
        mov eax, cr4
        or eax, 0x20                    ; PAE
        mov cr4, eax
        mov eax, PML4
        mov cr3, eax
        mov ecx, 0xc0000080
        rdmsr
        or eax, 0x100                   ; LME
        wrmsr
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        jmp 0x18:lm64

ud32:   mov eax, [esp]
        mov [ud_ip], eax
        mov dword [esp], run_table32.resume
        iret

        CONSOLE 32
        VERDICTS 32
        RUNNER 32

; ==== 64-bit mode ========================================================
        bits 64
; EXPECT vec, name, instruction...: the instruction raises exception vec
; (with error code 0 for #GP)
%macro EXPECT 3+
        lea rax, [rel %%after]
        mov [rel resume], rax
        mov dword [rel exc_vec], -1
        mov dword [rel exc_err], -1
        %3
%%after:
        cmp dword [rel exc_vec], %1
%if %1 == 13
        jne %%r
        cmp dword [rel exc_err], 0
%%r:
%endif
        RESULT e, %2
%endmacro

; FEAT leaf, reg, bit, name, instruction...: PASS when the instruction runs
; (no #UD / #GP) exactly when CPUID leaf.reg[bit] is set
%macro FEAT 5+
        mov eax, %1
        xor ecx, ecx
        cpuid
        bt e%2x, %3
        setc r12b
        mov rsi, m_cpuid
        call puts64
        mov rsi, %%n
        call puts64
        mov al, '0'
        add al, r12b
        call putc64
        mov al, 10
        call putc64
        lea rax, [rel %%after]
        mov [rel resume], rax
        mov dword [rel exc_vec], -1
        %5
%%after:
        cmp dword [rel exc_vec], -1
        sete al
        cmp al, r12b
        RESULT e, {%4, " runs iff CPUID has it"}
        jmp %%end
%%n:    db %4, " ", 0
%%end:
%endmacro
%macro SET_CR4 1
        mov rax, cr4
        or eax, %1
        mov cr4, rax
        and eax, ~%1
        mov cr4, rax
%endmacro
%macro RD_MSR 1
        mov ecx, %1
        rdmsr
%endmacro
%macro SET_EFER 1
        mov ecx, 0xc0000080
        rdmsr
        or eax, %1
        wrmsr
%endmacro

lm64:   mov ax, 0x20
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov rsp, STACK
        lidt [rel idt64_desc]
        RUN_TABLE ud_all, "64-bit mode: every unassigned opcode raises #UD"
        RUN_TABLE ud_64, "64-bit mode: every opcode invalid in 64-bit mode raises #UD"
        ; assigned, but absent from CPUID (or needing a mode we are not in)
        EXPECT 6, "#UD INVPCID (CPUID.7:EBX.INVPCID = 0)", invpcid rax, [rel scratch]
        EXPECT 6, "#UD RDPRU (AMD only)", db 0x0f, 0x01, 0xfd
        EXPECT 6, "#UD RDFSBASE (CPUID.7:EBX.FSGSBASE = 0)", rdfsbase rax
        EXPECT 6, "#UD XGETBV (CPUID.1:ECX.XSAVE = 0)", xgetbv
        EXPECT 6, "#UD XSAVE (CPUID.1:ECX.XSAVE = 0)", xsave [rel scratch]
        EXPECT 6, "#UD PSHUFB (CPUID.1:ECX.SSSE3 = 0)", pshufb xmm0, xmm1
        EXPECT 6, "#UD PTEST (CPUID.1:ECX.SSE4_1 = 0)", ptest xmm0, xmm1
        EXPECT 6, "#UD AESENC (CPUID.1:ECX.AES = 0)", aesenc xmm0, xmm1
        EXPECT 6, "#UD RDRAND (CPUID.1:ECX.RDRAND = 0)", rdrand eax
        EXPECT 6, "#UD XBEGIN (CPUID.7:EBX.RTM = 0)", db 0xc7, 0xf8, 0, 0, 0, 0
        EXPECT 6, "#UD MONITOR (CPUID.1:ECX.MONITOR = 0)", monitor
        EXPECT 6, "#UD GETSEC with CR4.SMXE = 0", getsec
        EXPECT 6, "#UD VMREAD outside VMX operation", vmread rax, rbx
        EXPECT 6, "#UD RSM outside SMM", rsm
        EXPECT 6, "#UD 3DNow! (0F 0F)", db 0x0f, 0x0f, 0xc0, 0x9e
        EXPECT 13, "#GP(0) RDPMC at CPL0: no counters in CPUID leaf 0xA", rdpmc
        mov rax, cr4
        or eax, 0x100                   ; PCE
        mov cr4, rax
        EXPECT 13, "#GP(0) RDPMC with CR4.PCE = 1 and no counters", rdpmc

        ; the CPU model (-cpu / [cpu]): an instruction runs iff CPUID has its
        ; feature; "cpuid NAME BIT" lines tell the test which model it got
        mov rsi, m_vendor
        call puts64
        xor eax, eax
        cpuid
        mov [rel vendor], ebx
        mov [rel vendor + 4], edx
        mov [rel vendor + 8], ecx
        mov rsi, vendor
        call puts64
        mov al, 10
        call putc64
        FEAT 1, c, 23, "popcnt", popcnt eax, ebx
        FEAT 1, c, 22, "movbe", movbe eax, [rel scratch]
        FEAT 1, c, 13, "cx16", cmpxchg16b [rel scratch]
        FEAT 7, b, 3, "bmi1", andn eax, ebx, ecx
        FEAT 7, b, 8, "bmi2", rorx eax, ebx, 3
        FEAT 7, b, 19, "adx", adcx eax, ebx
        FEAT 0x80000001, d, 27, "rdtscp", rdtscp
        FEAT 0x80000001, c, 0, "lahf-lm", lahf
        FEAT 7, b, 7, "smep", SET_CR4 (1 << 20)
        FEAT 7, b, 20, "smap", stac
        FEAT 0x80000001, d, 20, "nx", SET_EFER 0x800
        FEAT 1, c, 24, "tsc-deadline", RD_MSR 0x6e0
        mov dword [PDPT + 8], 0x83              ; linear 1G..2G: a 1G page onto 0..1G
        FEAT 0x80000001, d, 26, "pdpe1gb", mov eax, [0x40000000]
        ; without ABM, F3 0F BD is BSR: LZCNT(1) = 31, BSR(1) = 0
        mov eax, 0x80000001
        cpuid
        bt ecx, 5
        setc r12b
        mov ebx, 1
        lzcnt eax, ebx
        cmp eax, 31
        sete al
        cmp al, r12b
        RESULT e, "LZCNT iff CPUID.80000001H:ECX.ABM, else BSR"

        mov rsi, m_done
        call puts64
        mov eax, [rel fails]
        call puthex64
        mov al, 10
        call putc64
        mov eax, [rel fails]
        mov dx, 0xf4
        out dx, eax
.stop:  cli
        hlt
        jmp .stop

; #UD from a table record: back to the runner
ud64:   mov rax, [rsp]
        mov [rel ud_ip], eax
        lea rax, [rel run_table64.resume]
        mov [rsp], rax
        iretq
; #UD / #GP from EXPECT: vector and error code, then back after the instruction
exc64_ud:
        cmp qword [rel resume], 0
        je ud64
        mov dword [rel exc_vec], 6
        jmp exc64_out
exc64_pf:
        mov dword [rel exc_vec], 14
        pop rax
        mov [rel exc_err], eax
        jmp exc64_out
exc64_gp:
        mov dword [rel exc_vec], 13
        pop rax
        mov [rel exc_err], eax
exc64_out:
        mov rax, [rel resume]
        mov [rsp], rax
        iretq

        CONSOLE 64
        VERDICTS 64
        RUNNER 64

%include "unassigned.inc"

        align 8
gdt:    dq 0
        dq 0x00cf9a000000ffff           ; 0x08 32-bit code
        dq 0x00cf92000000ffff           ; 0x10 data, 4G
        dq 0x00af9a000000ffff           ; 0x18 64-bit code
        dq 0x00cf92000000ffff           ; 0x20 data
gdt_end:
gdt_desc:  dw gdt_end - gdt - 1
           dd gdt
idt32_desc: dw idt32_end - idt32 - 1
           dd idt32
idt64_desc: dw idt64_end - idt64 - 1
           dq idt64
        align 8
idt32:  times 6 dq 0
        dw ud32, 0x08, 0x8e00, 0                ; 6: #UD
idt32_end:
        align 16
idt64:  times 6 dq 0, 0
        dw exc64_ud, 0x18, 0x8e00, 0, 0, 0, 0, 0        ; 6: #UD
        times 13 - 7 dq 0, 0
        dw exc64_gp, 0x18, 0x8e00, 0, 0, 0, 0, 0        ; 13: #GP
        dw exc64_pf, 0x18, 0x8e00, 0, 0, 0, 0, 0        ; 14: #PF
idt64_end:
resume:    dq 0
ud_ip:     dd 0
exc_vec:   dd 0
exc_err:   dd 0
idx:       dd 0
bad:       dd 0
fails:     dd 0
        align 16
scratch:   times 1024 db 0
m_pass: db "PASS ", 0
m_fail: db "FAIL ", 0
m_bad:  db "first record without #UD at its first byte: index ", 0
m_at:   db " #UD at ", 0
m_done: db "opcodes: failures=", 0
m_vendor: db "vendor ", 0
m_cpuid: db "cpuid ", 0
vendor: times 16 db 0
