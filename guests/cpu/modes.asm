; modes: a tour of every x86 operating mode and back, reported over COM1 as
;   PASS <name> / FAIL <name>
; then isa-debug-exit with the number of failures (0 -> `bhive run` exits 1).
;
;   real mode -> 16-bit protected mode -> 32-bit protected mode (flat, then
;   2-level paging, then PAE) -> IA-32e: compatibility mode -> 64-bit mode
;   (4-level paging) -> compatibility mode -> 64-bit mode -> compatibility
;   mode -> paging and long mode off -> 32-bit protected mode -> 16-bit
;   protected mode -> real mode.
;
; In every mode the code proves it runs in that mode: an operand-size probe
; (the same 4 bytes give a different EAX in 16-, 32- and 64-bit code), an
; interrupt through that mode's table format (IVT, 16-bit gate, 32-bit gate,
; 64-bit gate) with the frame size it implies, and the far transfer or IRET
; that leaves it.  Single vCPU; starts in real mode at 0x8000.

%define IVT_60      (0x60 * 4)
%define MARK0_SEG   0x5000              ; marker at physical 0x50000
%define MARK0       0x1111dddd
%define PD2         0x100000            ; 2-level: PD, PT0 (identity 0..4M), PT1
%define PT2_0       0x101000
%define PT2_1       0x102000
%define PDPT3       0x110000            ; PAE: PDPT, PD0, PT0, PD1, PT1
%define PD3_0       0x111000
%define PT3_0       0x112000
%define PD3_1       0x113000
%define PT3_1       0x114000
%define PML4        0x120000            ; 4-level
%define PDPT4       0x121000
%define PD4         0x122000
%define PDPT4_1     0x123000
%define PD4_1       0x124000
%define PT4_1       0x125000
%define MARK2_PHYS  0x200000            ; seen at linear 0x400000 (2-level)
%define MARK3_PHYS  0x201000            ; seen at linear 0x40000000 (PAE)
%define NX_PHYS     0x203000            ; seen at linear 0x40001000 (PAE, XD)
%define MARK4_PHYS  0x202000            ; seen at linear 0x8000000000 (4-level)
%define MARK2       0x2222aaaa
%define MARK3       0x3333bbbb
%define MARK4       0x4444cccc
%define STACK       0x7c00

%include "../lib/console.inc"

; the same bytes in every mode, after EAX = 0x12340000:
;   16-bit: xor ax, ax / dec ax     -> 0x1234ffff
;   32-bit: xor eax, eax / dec eax  -> 0xffffffff
;   64-bit: xor eax, eax / REX.W nop -> 0
%macro PROBE 0
        mov eax, 0x12340000
        db 0x31, 0xc0, 0x48, 0x90
%endmacro

%include "../lib/verdicts.inc"

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
        mov word [IVT_60], int16_handler
        mov word [IVT_60 + 2], 0
        mov ax, MARK0_SEG
        mov es, ax
        mov dword [es:0], MARK0
        xor ax, ax
        mov es, ax

        PROBE
        cmp eax, 0x1234ffff
        RESULT e, "real mode: 16-bit operand size"
        call real_mode_checks
        ; -> 16-bit protected mode: far JMP to a 16-bit code segment
        lgdt [gdt_desc]
        lidt [idt16_desc]
        mov eax, cr0
        or al, 1
        mov cr0, eax
        jmp 0x18:pm16

; shared by the way up and the way down (real mode, DS = SS = 0)
real_mode_checks:
        smsw ax
        test al, 1
        RESULT z, "real mode: CR0.PE = 0"
        mov ax, MARK0_SEG
        mov ds, ax
        mov eax, [0]
        xor bx, bx
        mov ds, bx
        cmp eax, MARK0
        RESULT e, "real mode: segment base = selector * 16"
        mov dword [int_sp], 0
        mov dword [int_cs], 0
        int 0x60
        cmp dword [int_sp], STACK - 2 - 6
        RESULT e, "real mode: INT through the IVT, 3-word frame, IRET"
        mov [far_sp], sp
        call 0:real_far
        cmp [far_sp], sp
        RESULT e, "real mode: far CALL and RETF"
        ret
real_far:
        retf

rm_gp:  mov [int_sp], sp                 ; #GP in real mode: resume after the access
        mov bp, sp
        mov word [bp], rm_gp_next
        iret

; 16-bit interrupt handler: the IVT in real mode, a 16-bit gate in protected mode
int16_handler:
        mov [int_sp], sp
        mov bp, sp
        mov ax, [bp + 2]
        mov [int_cs], ax
        iret

        CONSOLE 16
        VERDICTS 16

; ==== 16-bit protected mode ==============================================
pm16:   mov ax, 0x20
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, STACK
        call pm16_checks
        ; -> 32-bit protected mode: RETF from 16-bit code to a 32-bit code segment
        push word 0x08
        push word pm32
        retf

pm16_checks:
        PROBE
        cmp eax, 0x1234ffff
        RESULT e, "16-bit protected mode: 16-bit operand size"
        smsw ax
        test al, 1
        RESULT nz, "16-bit protected mode: CR0.PE = 1"
        mov ax, 0x28                    ; data descriptor with base 0x50000
        mov ds, ax
        mov eax, [0]
        mov bx, 0x20
        mov ds, bx
        cmp eax, MARK0
        RESULT e, "16-bit protected mode: segment base from the descriptor"
        mov dword [int_sp], 0
        mov dword [int_cs], 0
        int 0x60
        mov ax, [int_sp]
        cmp ax, STACK - 2 - 6
        jne .bad
        cmp word [int_cs], 0x18
.bad:   RESULT e, "16-bit protected mode: INT through a 16-bit gate, 3-word frame, IRET"
        ret

; ==== 32-bit protected mode ==============================================
        bits 32
pm32:   mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov esp, STACK
        lidt [idt32_desc]
        call pm32_checks
        mov [far_sp], esp
        call 0x08:pm32_far
        cmp [far_sp], esp
        RESULT e, "32-bit protected mode: far CALL and RETF"

        ; markers and page tables (2-level, PAE, 4-level)
        mov dword [MARK2_PHYS], MARK2
        mov dword [MARK3_PHYS], MARK3
        mov dword [MARK4_PHYS], MARK4
        mov byte [NX_PHYS], 0xc3
        mov edi, PD2
        mov ecx, (PT4_1 + 0x1000 - PD2) / 4
        xor eax, eax
        rep stosd
        ; 2-level: PD[0] -> PT0 identity 0..4M, PD[1] -> PT1: [0] = marker, [1] not present
        mov dword [PD2], PT2_0 | 3
        mov dword [PD2 + 4], PT2_1 | 3
        mov edi, PT2_0
        mov eax, 3
        mov ecx, 1024
.pt2:   stosd
        add eax, 0x1000
        loop .pt2
        mov dword [PT2_1], MARK2_PHYS | 3
        ; PAE: PDPT[0] -> PD0 (PD0[0] -> PT0 identity 0..2M, PD0[1] 2M page 2..4M),
        ;      PDPT[1] -> PD1 -> PT1: [0] = marker, [1] = NX page
        mov dword [PDPT3], PD3_0 | 1
        mov dword [PDPT3 + 8], PD3_1 | 1
        mov dword [PD3_0], PT3_0 | 3
        mov dword [PD3_0 + 8], 0x200000 | 0x83
        mov edi, PT3_0
        mov eax, 3
        mov ecx, 512
.pt3:   mov [edi], eax
        add eax, 0x1000
        add edi, 8
        loop .pt3
        mov dword [PD3_1], PT3_1 | 3
        mov dword [PT3_1], MARK3_PHYS | 3
        mov dword [PT3_1 + 8], NX_PHYS | 3
        mov dword [PT3_1 + 12], 0x80000000      ; XD
        ; 4-level: PML4[0] -> PDPT -> PD of 2M pages (0..1G); PML4[1] -> ... -> marker
        mov dword [PML4], PDPT4 | 3
        mov dword [PDPT4], PD4 | 3
        mov edi, PD4
        mov eax, 0x83
        mov ecx, 512
.pd4:   mov [edi], eax
        add eax, 0x200000
        add edi, 8
        loop .pd4
        mov dword [PML4 + 8], PDPT4_1 | 3
        mov dword [PDPT4_1], PD4_1 | 3
        mov dword [PD4_1], PT4_1 | 3
        mov dword [PT4_1], MARK4_PHYS | 3

        ; ---- 2-level paging ----
        mov eax, PD2
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov eax, [0x400000]
        cmp eax, MARK2
        RESULT e, "2-level paging: linear 0x400000 -> the marker page"
        mov dword [pf_resume], .pf1
        mov [pf_esp], esp
        mov dword [pf_err], -1
        mov eax, [0x401000]
.pf1:   cmp dword [pf_err], 0
        jne .pf1b
        cmp dword [pf_cr2], 0x401000
.pf1b:  RESULT e, "2-level paging: #PF through the 32-bit IDT (err 0, CR2)"
        PROBE
        cmp eax, 0xffffffff
        RESULT e, "2-level paging: still 32-bit code"

        ; ---- PAE paging (EFER.NXE for XD) ----
        mov eax, cr0
        and eax, 0x7fffffff
        mov cr0, eax
        mov eax, cr4
        or eax, 0x20
        mov cr4, eax
        mov eax, PDPT3
        mov cr3, eax
        mov ecx, 0xc0000080
        rdmsr
        or eax, 0x800                   ; NXE
        wrmsr
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov eax, [0x40000000]
        cmp eax, MARK3
        RESULT e, "PAE paging: linear 0x40000000 (PDPTE 1) -> the marker page"
        mov dword [pf_resume], .pf2
        mov [pf_esp], esp
        mov dword [pf_err], -1
        mov eax, 0x40001000
        call eax                        ; execute-disable page
.pf2:   cmp dword [pf_err], 0x11
        jne .pf2b
        cmp dword [pf_cr2], 0x40001000
.pf2b:  RESULT e, "PAE paging: NX fetch #PF through the 32-bit IDT (err 0x11, CR2)"

        ; ---- IA-32e mode: paging off, CR3 = PML4, EFER.LME, paging on ----
        mov eax, cr0
        and eax, 0x7fffffff
        mov cr0, eax
        mov eax, PML4
        mov cr3, eax
        mov ecx, 0xc0000080
        rdmsr
        or eax, 0x100                   ; LME
        wrmsr
        lidt [idt64_desc]               ; from here on interrupts use 16-byte gates
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        ; compatibility mode now (CS is still a 32-bit segment)
        mov ecx, 0xc0000080
        rdmsr
        test eax, 0x400
        RESULT nz, "EFER.LMA after CR0.PG with EFER.LME (compatibility mode)"
        PROBE
        cmp eax, 0xffffffff
        RESULT e, "compatibility mode after activation: 32-bit operand size"
        jmp 0x30:lm64

pm32_checks:                            ; the way up and the way down
        PROBE
        cmp eax, 0xffffffff
        RESULT e, "32-bit protected mode: 32-bit operand size"
        mov dword [int_sp], 0
        mov dword [int_cs], 0
        int 0x61
        cmp dword [int_sp], STACK - 4 - 12
        jne .bad
        cmp dword [int_cs], 0x08
.bad:   RESULT e, "32-bit protected mode: INT through a 32-bit gate, 3-dword frame, IRETD"
        ret
pm32_far:
        retf

int32_handler:
        mov [int_sp], esp
        mov eax, [esp + 4]
        mov [int_cs], eax
        iretd
pf32:   pop eax
        mov [pf_err], eax
        mov eax, cr2
        mov [pf_cr2], eax
        mov esp, [pf_esp]
        jmp [pf_resume]

compat_entry:                           ; IRETQ from 64-bit mode lands here
        PROBE
        cmp eax, 0xffffffff
        RESULT e, "IRETQ to compatibility mode: 32-bit operand size"
        mov ecx, 0xc0000080
        rdmsr
        test eax, 0x400
        RESULT nz, "compatibility mode: EFER.LMA = 1"
        mov esp, STACK + 4              ; misaligned: the 64-bit frame is aligned to 16
        mov dword [int_sp], 0
        mov dword [int_cs], 0
        int 0x63
        cmp dword [int_sp], STACK - 40
        jne .bad
        cmp dword [int_cs], 0x08
.bad:   RESULT e, "compatibility mode: INT through the 64-bit IDT, aligned 40-byte frame, IRETQ back"
        mov esp, STACK
        ; -> 64-bit mode: a 32-bit RETF to a 64-bit code segment
        push dword 0x30
        push dword lm64_back
        retf

down32:                                 ; compatibility mode, on the way down
        PROBE
        cmp eax, 0xffffffff
        RESULT e, "far JMP from 64-bit to compatibility mode"
        ; paging off leaves IA-32e mode (SDM Vol 3A 10.8.5.4), then EFER.LME off
        mov eax, cr0
        and eax, 0x7fffffff
        mov cr0, eax
        mov ecx, 0xc0000080
        rdmsr
        test eax, 0x400
        RESULT z, "CR0.PG = 0 in compatibility mode clears EFER.LMA"
        mov ecx, 0xc0000080
        rdmsr
        and eax, ~0x900
        wrmsr
        mov eax, cr4
        and eax, ~0x20
        mov cr4, eax
        lidt [idt32_desc]
        call pm32_checks
        ; -> 16-bit protected mode
        jmp 0x18:down16

        CONSOLE 32
        VERDICTS 32

; ==== 64-bit mode ========================================================
        bits 64
lm64:   mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov rsp, STACK
        PROBE
        test eax, eax
        RESULT z, "64-bit mode: REX.W prefix, 64-bit code"
        mov rax, 0x8000000000
        mov eax, [rax]
        cmp eax, MARK4
        RESULT e, "4-level paging: linear 0x8000000000 (PML4 entry 1) -> the marker page"
        mov rsp, STACK + 8              ; misaligned: the frame is aligned to 16
        mov qword [rel int_sp], 0
        mov qword [rel int_cs], 0
        int 0x62
        mov rsp, STACK
        cmp qword [rel int_sp], STACK - 40
        jne .bad
        cmp qword [rel int_cs], 0x30
.bad:   RESULT e, "64-bit mode: INT through a 64-bit gate, aligned 40-byte frame, IRETQ"
        ; -> compatibility mode by IRETQ
        mov rax, rsp
        push 0x10
        push rax
        pushfq
        push 0x08
        push compat_entry
        iretq

lm64_back:
        mov rsp, STACK
        PROBE
        test eax, eax
        RESULT z, "RETF from compatibility mode back to 64-bit mode"
        ; -> compatibility mode by far JMP (m16:32), on the way down
        jmp far dword [rel down_ptr]

int64_handler:
        mov [rel int_sp], rsp
        mov rax, [rsp + 8]
        mov [rel int_cs], rax
        iretq

        CONSOLE 64
        VERDICTS 64

; ==== back down: 16-bit protected mode, real mode =========================
        bits 16
down16: mov ax, 0x20
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, STACK
        lidt [idt16_desc]
        call pm16_checks
        mov ax, 0x10                    ; FS: 4G data, cached into real mode ("unreal")
        mov fs, ax
        ; -> real mode: PE off, far JMP to a real-mode CS
        mov eax, cr0
        and al, ~1
        mov cr0, eax
        jmp 0:real2
real2:  xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, STACK
        lidt [ivt_desc]
        PROBE
        cmp eax, 0x1234ffff
        RESULT e, "back in real mode: 16-bit operand size"
        call real_mode_checks
        ; segment limits apply in real mode too (SDM Vol 3A 20.1.1): a word at
        ; 0xFFFF is #GP, delivered through the IVT without an error code
        mov word [13 * 4], rm_gp
        mov word [13 * 4 + 2], 0
        mov dword [int_sp], 0
        mov [far_sp], sp
        mov ax, [0xffff]
rm_gp_next:
        mov ax, [far_sp]
        sub ax, 6
        cmp ax, [int_sp]
        RESULT e, "real mode: a word at offset 0xFFFF is #GP through the IVT (no error code)"
        mov eax, [fs:dword MARK2_PHYS]  ; FS not reloaded since protected mode
        cmp eax, MARK2
        RESULT e, "real mode: FS keeps the 4G limit cached in protected mode (unreal mode)"
        mov si, m_done
        call puts16
        mov eax, [fails]
        call puthex16
        mov al, 10
        call putc16
        mov eax, [fails]
        mov dx, 0xf4
        out dx, eax
.stop:  cli
        hlt
        jmp .stop

; ==== tables and data =====================================================
        align 8
gdt:    dq 0
        dq 0x00cf9a000000ffff           ; 0x08 32-bit code (also the compatibility-mode CS)
        dq 0x00cf92000000ffff           ; 0x10 data, 4G
        dq 0x00009a000000ffff           ; 0x18 16-bit code, 64K
        dq 0x000092000000ffff           ; 0x20 16-bit data, 64K
        dq 0x000092050000ffff           ; 0x28 16-bit data, base 0x50000
        dq 0x00af9a000000ffff           ; 0x30 64-bit code
gdt_end:
gdt_desc:  dw gdt_end - gdt - 1
           dd gdt
ivt_desc:  dw 0x3ff
           dd 0
idt16_desc: dw idt16_end - idt16 - 1
           dd idt16
idt32_desc: dw idt32_end - idt32 - 1
           dd idt32
idt64_desc: dw idt64_end - idt64 - 1
           dq idt64
down_ptr:  dd down32
           dw 0x08
        align 8
idt16:  times 0x60 dq 0
        dw int16_handler, 0x18, 0x8600, 0       ; 0x60: 16-bit interrupt gate
idt16_end:
idt32:  times 14 dq 0
        dw pf32, 0x08, 0x8e00, 0                ; 14: #PF
        times 0x61 - 15 dq 0
        dw int32_handler, 0x08, 0x8e00, 0       ; 0x61: 32-bit interrupt gate
idt32_end:
idt64:  times 0x62 dq 0, 0
        dw int64_handler, 0x30, 0x8e00, 0, 0, 0, 0, 0   ; 0x62
        dw int64_handler, 0x30, 0x8e00, 0, 0, 0, 0, 0   ; 0x63
idt64_end:
int_sp:    dq 0
int_cs:    dq 0
far_sp:    dd 0
pf_resume: dd 0
pf_esp:    dd 0
pf_err:    dd 0
pf_cr2:    dd 0
fails:     dd 0
m_pass: db "PASS ", 0
m_fail: db "FAIL ", 0
m_done: db "modes: failures=", 0
