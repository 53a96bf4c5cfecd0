; sys64: system-level checks in long mode, reported over COM1 as
;   PASS <name> / FAIL <name> vec=<v> err=<e> / SKIP <name>: <why>
; then isa-debug-exit with the number of failures (0 -> `bhive run` exits 1).
; Exceptions (with error codes and CR2), page faults (not present, U/S, R/W,
; WP at CPL0, NX, RSVD), #AC at CPL3, TF single-step #DB, #DF, #SS for
; non-canonical stack references (on an IST stack), #NM/#MF/#XM, IRET to
; user mode and back, SYSCALL/SYSRET, a 64-bit call gate CPL3 -> CPL0 and
; RETF back.  Single vCPU; starts in real mode at 0x8000.

%define COM1    0x3f8
%define PML4    0x100000
%define PDPT    0x101000
%define PD0     0x102000            ; 4 PDs: identity 0..4G with 2M user pages
%define PDT     0x106000            ; PD for linear 1G..2G (test pages)
%define PTT     0x107000            ; PT for linear 0x40000000.. (4K test pages)
%define IDT     0x20000
%define TSS     0x21000
%define KSTACK  0x80000
%define USTACK  0x70000
%define TPAGE   0x40000000
%define APIC    0xfee00000

        org 0x8000
        bits 16
        cli
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7c00
        lgdt [gdt_desc]
        mov eax, cr0
        or eax, 1
        mov cr0, eax
        jmp dword 0x08:pm32
        bits 32
pm32:   mov ax, 0x18
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov edi, PML4
        mov ecx, (PTT + 0x1000 - PML4) / 4
        xor eax, eax
        rep stosd
        mov dword [PML4], PDPT | 7
        mov edi, PDPT
        mov eax, PD0 | 7
        mov ecx, 4
.pdpt:  mov [edi], eax
        add eax, 0x1000
        add edi, 8
        loop .pdpt
        mov dword [PDPT + 8], PDT | 7   ; 1G..2G: the test page tables
        mov edi, PD0
        mov eax, 0x87
        xor edx, edx
        mov ecx, 2048
.pde:   mov [edi], eax
        mov [edi + 4], edx
        add eax, 0x200000
        adc edx, 0
        add edi, 8
        loop .pde
        mov dword [PDT], PTT | 7
        mov eax, cr4
        or eax, 0x20
        mov cr4, eax
        mov eax, PML4
        mov cr3, eax
        mov ecx, 0xc0000080
        rdmsr
        or eax, 0x901                   ; LME, NXE, SCE
        wrmsr
        mov eax, cr0
        or eax, 0x80010000              ; PG, WP
        mov cr0, eax
        jmp 0x10:lm

        bits 64
lm:     mov ax, 0x18
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov rsp, KSTACK
        ; IDT: stubs for 0..31
        xor ebx, ebx
.idt:   mov rax, [stubs + rbx * 8]
        mov rdi, rbx
        shl rdi, 4
        add rdi, IDT
        mov word [rdi], ax
        mov word [rdi + 2], 0x10
        mov word [rdi + 4], 0x8e00
        shr rax, 16
        mov word [rdi + 6], ax
        mov qword [rdi + 8], 0
        inc ebx
        cmp ebx, 32
        jb .idt
        mov byte [IDT + 3 * 16 + 5], 0xee      ; #BP gate DPL 3
        mov byte [IDT + 12 * 16 + 4], 1        ; #SS on IST1: RSP may be non-canonical
        lidt [idt_desc]
        ; TSS: RSP0, IST1
        mov qword [TSS + 4], KSTACK - 0x1000
        mov qword [TSS + 0x24], KSTACK - 0x2000
        mov word [TSS + 0x66], 0x68
        mov ax, 0x38
        ltr ax
        ; SYSCALL MSRs: kernel CS 0x10 / SS 0x18; SYSRET base 0x20 -> SS 0x2b, CS 0x33
        mov ecx, 0xc0000081
        xor eax, eax
        mov edx, 0x00200010
        wrmsr
        mov ecx, 0xc0000082
        lea rax, [rel syscall_entry]
        mov rdx, rax
        shr rdx, 32
        wrmsr
        mov ecx, 0xc0000084
        mov eax, 0x40700                ; SFMASK: AC, IF, TF, DF
        xor edx, edx
        wrmsr
        ; test pages at 0x40000000 + k*4K
        mov qword [PTT + 0 * 8], 0                              ; 0: not present
        mov qword [PTT + 1 * 8], 0x300000 | 0x005               ; 1: user, read-only
        mov qword [PTT + 2 * 8], 0x301000 | 0x003               ; 2: supervisor, writable
        mov rax, 0x302000 | 0x007 | (1 << 63)
        mov [PTT + 3 * 8], rax                                  ; 3: user, NX
        mov rax, 0x303000 | 0x007 | (1 << 45)
        mov [PTT + 4 * 8], rax                                  ; 4: reserved bit 45
        mov byte [0x302000], 0xc3                               ; ret (never runs)
        ; 64-bit call gate at 0x50 (16 bytes): DPL3 -> 0x10:cg64_target
        lea rax, [rel cg64_target]
        mov word [gdt + 0x50], ax
        mov word [gdt + 0x52], 0x10
        mov word [gdt + 0x54], 0xec00
        shr rax, 16
        mov word [gdt + 0x56], ax
        shr rax, 16
        mov dword [gdt + 0x58], eax
        mov dword [gdt + 0x5c], 0
        ; x87/SSE: CR0.MP|NE, CR4.OSFXSR|OSXMMEXCPT
        mov rax, cr0
        or eax, 0x22
        mov cr0, rax
        mov rax, cr4
        or eax, 0x600
        mov cr4, rax
        fninit

%macro T 0
  %push t
        lea rax, [rel %$resume]
        mov [resume], rax
        mov [saved_rsp], rsp
        mov qword [ex_vec], -1
        mov qword [ex_err], -1
        mov qword [ex_cr2], -1
%endmacro
%macro E 4 ; vector, error code, cr2 (-1: don't care), name
  %$resume:
        mov rdi, %1
        mov rsi, %2
        mov rdx, %3
        lea rcx, [rel %%name]
        call check
        jmp %%after
  %%name: db %4, 0
  %%after:
  %pop
%endmacro
%macro SKIP 1
        lea rsi, [rel %%m]
        call puts
        jmp %%a
  %%m: db "SKIP ", %1, 10, 0
  %%a:
%endmacro

        T
        xor edx, edx
        xor ecx, ecx
        div ecx
        E 0, 0, -1, "#DE divide error"

        T
        pushfq
        or qword [rsp], 0x100
        popfq
        nop                             ; single-step trap after this
        E 1, 0, -1, "#DB single-step (TF)"

        T
        int3
        E 3, 0, -1, "#BP int3"

        SKIP "#OF/#BR: INTO and BOUND are #UD in 64-bit mode (checked below as #UD)"
        T
        db 0xce                         ; INTO
        E 6, 0, -1, "#UD for INTO in 64-bit mode"

        T
        ud2
        E 6, 0, -1, "#UD ud2"

        T
        mov rax, cr0
        or eax, 8                       ; CR0.TS
        mov cr0, rax
        addps xmm0, xmm1
        E 7, 0, -1, "#NM SSE with CR0.TS (64-bit)"

        T
        fninit
        fldcw [rel fcw_zm]              ; zero-divide unmasked
        fld1
        fldz
        fdivp st1, st0
        fwait
        E 16, 0, -1, "#MF unmasked x87 zero-divide (64-bit)"

        T
        ldmxcsr [rel mxcsr_zm]
        movss xmm0, [rel one]
        xorps xmm1, xmm1
        divss xmm0, xmm1
        E 19, 0, -1, "#XM unmasked SSE zero-divide (64-bit)"

        T
        mov rax, 0x8000000000000000
        mov rax, [rax]
        E 13, 0, -1, "#GP non-canonical"

        T
        mov ax, 0x48                    ; not-present data descriptor
        mov ds, ax
        E 11, 0x48, -1, "#NP segment not present"
        mov ax, 0x18
        mov ds, ax

        T
        mov ax, 0x48
        mov ss, ax
        E 12, 0x48, -1, "#SS not-present stack segment"

        T
        mov ax, 0x28 | 3                ; user data selector at CPL0 into SS: RPL != CPL
        mov ss, ax
        E 13, 0x28, -1, "#GP(sel) SS with RPL != CPL"

        SKIP "#TS: a bad TSS SSn needs legacy mode (checked by sys32)"

        T
        mov rax, 0x8000000000001000
        mov [TSS + 0x2c], rax           ; IST2: non-canonical
        mov byte [IDT + 3 * 16 + 4], 2  ; #BP on IST2
        int3
        E 12, 0, -1, "#SS(0) delivering through a non-canonical IST pointer"
        mov byte [IDT + 3 * 16 + 4], 0

        T
        mov rsp, 0x8000000000000000
        push rax
        E 12, 0, -1, "#SS(0) push with a non-canonical RSP (IST1)"

        T
        mov rsp, 0x8000000000000008
        pushfq
        E 12, 0, -1, "#SS(0) PUSHFQ with a non-canonical RSP"

        T
        mov rbp, 0x8000000000000000
        mov rax, [rbp + 8]
        E 12, 0, -1, "#SS(0) non-canonical RBP-based access"

        T
        mov rbx, 0x8000000000000000
        mov rax, [ss:rbx]
        E 12, 0, -1, "#SS(0) non-canonical access with an SS override"

        T
        mov rax, [TPAGE]
        E 14, 0, TPAGE, "#PF not present read (err 0)"

        T
        mov qword [TPAGE + 0x1008], 1
        E 14, 3, TPAGE + 0x1008, "#PF write to read-only at CPL0 with CR0.WP (err 3)"

        T
        mov rax, [TPAGE + 0x4000]
        E 14, 9, TPAGE + 0x4000, "#PF reserved bit (err 9)"

        T
        mov rax, TPAGE + 0x3000
        call rax
        E 14, 0x11, TPAGE + 0x3000, "#PF NX fetch (err 0x11)"

        ; user mode
        T
        lea rdi, [rel u_read_sup]
        jmp to_user
        E 14, 5, TPAGE + 0x2000, "#PF user read of supervisor page (err 5)"

        T
        lea rdi, [rel u_write_ro]
        jmp to_user
        E 14, 7, TPAGE + 0x1010, "#PF user write to read-only page (err 7)"

        T
        lea rdi, [rel u_int80]
        jmp to_user
        E 13, 0x80 * 8 + 2, -1, "#GP INT 0x80 through a DPL0 gate from CPL3 (err 0x402)"

        T
        lea rdi, [rel u_cs]
        jmp to_user
        E 3, 0, -1, "IRETQ to CPL3 and #BP back through a DPL3 gate"
        cmp qword [user_cs], 0x33
        je .csok
        lea rsi, [rel m_cs]
        call puts
        inc dword [fails]
.csok:

        T
        mov rax, cr0
        or eax, 0x40000                 ; CR0.AM
        mov cr0, rax
        lea rdi, [rel u_ac]
        jmp to_user
        E 17, 0, -1, "#AC misaligned access at CPL3 with CR0.AM and EFLAGS.AC"

        T
        lea rdi, [rel u_syscall]
        jmp to_user
        E -1, -1, -1, "SYSCALL -> SYSRET -> SYSCALL round trip"
        cmp qword [sc_cs], 0x10
        jne .scbad
        cmp qword [sc_ss], 0x18
        jne .scbad
        cmp qword [sc_ucs], 0x33
        jne .scbad
        cmp qword [sc_r11], 0
        je .scbad
        jmp .scok
.scbad: lea rsi, [rel m_sc]
        call puts
        inc dword [fails]
.scok:

        T
        lea rdi, [rel u_cgate64]
        jmp to_user
        E 3, 0, -1, "64-bit call gate CPL3 -> CPL0 and RETF (REX.W) back"
        xor ebp, ebp
        lea rax, [rel u_cg64_back]
        cmp [cg_frame], rax
        setne cl
        add bpl, cl
        cmp qword [cg_frame + 8], 0x33
        setne cl
        add bpl, cl
        cmp qword [cg_frame + 16], USTACK
        setne cl
        add bpl, cl
        cmp qword [cg_frame + 24], 0x2b
        setne cl
        add bpl, cl
        cmp qword [cg_rsp], KSTACK - 0x1000 - 32
        setne cl
        add bpl, cl
        cmp qword [cg_cs], 0x10
        setne cl
        add bpl, cl
        cmp qword [cg_ss], 0
        setne cl
        add bpl, cl
        cmp qword [u_cs2], 0x33
        setne cl
        add bpl, cl
        cmp qword [u_ss2], 0x2b
        setne cl
        add bpl, cl
        cmp qword [u_rsp2], USTACK
        setne cl
        add bpl, cl
        lea rcx, [rel n_cg64]
        call verdict

        T
        mov byte [IDT + 13 * 16 + 5], 0x0e      ; #GP gate: P = 0
        mov rax, 0x8000000000000000
        mov rax, [rax]                  ; #GP -> #NP delivering it -> #DF
        E 8, 0, -1, "#DF for #NP while delivering #GP"
        mov byte [IDT + 13 * 16 + 5], 0x8e

        ; ---- null SS in 64-bit mode: only with RPL = CPL < 3 (SDM Vol. 2B MOV) ----
        T
        mov ax, 3
        mov ss, ax
        E 13, 0, -1, "#GP(0) MOV SS with a null selector whose RPL 3 != CPL 0 (64-bit mode)"
        T
        xor eax, eax
        mov ss, ax
        mov ax, 0x18
        mov ss, ax
        E -1, 0, -1, "MOV SS with a null selector, RPL = CPL = 0, is allowed in 64-bit mode"

        ; ---- non-canonical bases in 64-bit mode: #GP ----
        T
        lgdt [rel nc_desc]
        E 13, 0, -1, "#GP(0) LGDT with a non-canonical base"
        T
        lidt [rel nc_desc]
        E 13, 0, -1, "#GP(0) LIDT with a non-canonical base"
        T
        mov ax, 0x60
        lldt ax
        E 13, 0x60, -1, "#GP(sel) LLDT of a descriptor with a non-canonical base"
%macro WRMSR_NC 2
        T
        mov ecx, %1
        xor eax, eax
        mov edx, 0x00008000             ; 0x0000800000000000
        wrmsr
        E 13, 0, -1, %2
%endmacro
        WRMSR_NC 0xc0000100, "#GP(0) WRMSR IA32_FS_BASE non-canonical"
        WRMSR_NC 0xc0000101, "#GP(0) WRMSR IA32_GS_BASE non-canonical"
        WRMSR_NC 0xc0000102, "#GP(0) WRMSR IA32_KERNEL_GS_BASE non-canonical"
        WRMSR_NC 0xc0000082, "#GP(0) WRMSR IA32_LSTAR non-canonical"
        WRMSR_NC 0x176, "#GP(0) WRMSR IA32_SYSENTER_EIP non-canonical"

        ; ---- NMI blocking until IRET (SDM Vol. 3A 6.7.1), with IF = 0 ----
        ; the handler sends two more NMIs to itself while blocked: exactly one
        ; more is delivered, right after its IRETQ (before the next instruction)
        lea rax, [rel nmi_handler]
        mov word [IDT + 2 * 16], ax
        shr rax, 16
        mov word [IDT + 2 * 16 + 6], ax
        mov edi, APIC                   ; (a disp32 would sign-extend)
        mov dword [rdi + 0xf0], 0x1ff   ; SVR: APIC software-enabled
        mov dword [nmi_count], 0
        cli
        mov dword [rdi + 0x310], 0      ; ICR: physical destination APIC ID 0 (us)
        mov dword [rdi + 0x300], 0x4400 ; NMI, assert
        nop
        nop
        mov ecx, 100000
.nmi_wait:
        pause
        loop .nmi_wait
        xor ebp, ebp
        cmp dword [nmi_count], 2
        setne cl
        add bpl, cl
        cmp dword [nmi_nested], 1
        setne cl
        add bpl, cl
        mov rax, [nmi_rip]
        cmp rax, [nmi_rip + 8]
        setne cl
        add bpl, cl
        lea rcx, [rel n_nmi]
        call verdict

        ; ---- local APIC (SDM Vol. 3A 11.4.3, 11.5.4) ----
        ; globally disabling the APIC clears CPUID.1:EDX.APIC and resets it:
        ; re-enabled, the xAPIC ID is the initial one again
        mov edi, APIC
        xor ebp, ebp
        mov dword [rdi + 0x20], 0x05000000      ; xAPIC ID := 5
        cmp dword [rdi + 0x20], 0x05000000
        setne cl
        add bpl, cl
        mov ecx, 0x1b
        rdmsr
        mov r12d, eax
        mov r13d, edx
        and eax, ~0x800
        wrmsr                                   ; IA32_APIC_BASE.EN = 0
        mov eax, 1
        cpuid
        bt edx, 9
        setc cl
        add bpl, cl
        mov ecx, 0x1b
        mov eax, r12d
        mov edx, r13d
        wrmsr                                   ; enabled again
        mov eax, 1
        cpuid
        bt edx, 9
        setnc cl
        add bpl, cl
        cmp dword [rdi + 0x20], 0
        setne cl
        add bpl, cl
        lea rcx, [rel n_apicid]
        call verdict
%macro WRMSR_GP 4 ; msr, edx, eax, name
        T
        mov ecx, %1
        mov edx, %2
        mov eax, %3
        wrmsr
        E 13, 0, -1, %4
%endmacro
        WRMSR_GP 0x1b, 0, 0xfee00c00, "#GP(0) IA32_APIC_BASE.EXTD without x2APIC in CPUID"
        WRMSR_GP 0x1b, 0x100, 0xfee00800, "#GP(0) IA32_APIC_BASE bit 40 (at MAXPHYADDR)"
        WRMSR_GP 0x1b, 0, 0xfee00a00, "#GP(0) IA32_APIC_BASE reserved bit 9"
        ; the timer: TMCCT starts at TMICT and counts down, a TMICT write
        ; restarts it, TMICT = 0 stops it (TMCCT 0), a one-shot ends at 0
        mov edi, APIC
        xor ebp, ebp
        mov dword [rdi + 0x3e0], 0xb            ; divide by 1
        mov dword [rdi + 0x320], 0x10020        ; one-shot, masked
        mov dword [rdi + 0x380], 0x7fffffff
        mov eax, [rdi + 0x390]
        test eax, eax
        setz cl
        add bpl, cl
        cmp eax, 0x7fffffff
        seta cl
        add bpl, cl
        mov ecx, 20000
.tm1:   pause
        loop .tm1
        mov ebx, [rdi + 0x390]
        cmp ebx, eax
        setae cl
        add bpl, cl
        mov dword [rdi + 0x380], 0x7fffffff     ; restart
        mov edx, [rdi + 0x390]
        cmp edx, ebx
        setbe cl
        add bpl, cl
        mov dword [rdi + 0x380], 0              ; stop
        cmp dword [rdi + 0x390], 0
        setne cl
        add bpl, cl
        mov dword [rdi + 0x380], 64             ; 0.5 us
        mov ecx, 20000
.tm2:   pause
        loop .tm2
        cmp dword [rdi + 0x390], 0
        setne cl
        add bpl, cl
        lea rcx, [rel n_tmcct]
        call verdict
        ; machine check: CPUID.1:EDX.MCE/MCA with IA32_MCG_CAP (0 banks, no
        ; MCG_CTL) and IA32_MCG_STATUS readable, IA32_MCG_CTL absent
        xor ebp, ebp
        mov eax, 1
        cpuid
        and edx, (1 << 7) | (1 << 14)
        cmp edx, (1 << 7) | (1 << 14)
        setne cl
        add bpl, cl
        T
        mov ecx, 0x179
        rdmsr
        mov [mcg_cap], eax
        mov ecx, 0x17a
        rdmsr
        or [mcg_cap], eax
        E -1, 0, -1, "IA32_MCG_CAP and IA32_MCG_STATUS read (MCA advertised)"
        cmp dword [mcg_cap], 0
        setne cl
        add bpl, cl
        lea rcx, [rel n_mcg]
        call verdict
        T
        mov ecx, 0x17b
        rdmsr
        E 13, 0, -1, "#GP(0) IA32_MCG_CTL without MCG_CAP.MCG_CTL_P"
        WRMSR_GP 0x179, 0, 0, "#GP(0) WRMSR IA32_MCG_CAP (read-only)"

        ; ---- SMEP / SMAP (SDM Vol. 3A 4.6.1), STAC / CLAC ----
        T
        lea rdi, [rel u_stac]
        jmp to_user
        E 6, 0, -1, "#UD STAC at CPL3"
        xor ebp, ebp
        mov eax, 7
        xor ecx, ecx
        cpuid
        and ebx, (1 << 7) | (1 << 20)
        cmp ebx, (1 << 7) | (1 << 20)
        setne cl
        add bpl, cl
        lea rcx, [rel n_smep_cpuid]
        call verdict
        ; the first 2M (this code, its data, stacks and tables) supervisor-only;
        ; a user page at TPAGE + 0x5000 holding a RET
        and qword [PD0], ~4
        mov qword [PTT + 5 * 8], 0x304000 | 7
        mov byte [0x304000], 0xc3
        mov rax, cr3
        mov cr3, rax
        mov rax, cr4
        or eax, 1 << 20                 ; SMEP
        mov cr4, rax
        T
        mov eax, TPAGE + 0x5000
        call rax
        E 14, 0x11, TPAGE + 0x5000, "#PF SMEP: supervisor fetch from a user page (err 0x11)"
        mov rax, cr4
        or eax, 1 << 21                 ; SMAP
        mov cr4, rax
        T
        mov eax, TPAGE + 0x5000
        mov bl, [rax]
        E 14, 1, TPAGE + 0x5000, "#PF SMAP: supervisor read of a user page with EFLAGS.AC = 0 (err 1)"
        T
        mov eax, TPAGE + 0x5000
        mov byte [rax + 1], 0
        E 14, 3, TPAGE + 0x5001, "#PF SMAP: supervisor write to a user page with EFLAGS.AC = 0 (err 3)"
        T
        mov eax, TPAGE + 0x5000
        stac
        mov bl, [rax]
        mov byte [rax + 1], 0x5a
        clac
        E -1, 0, -1, "SMAP: STAC opens user pages to supervisor reads and writes"
        T
        mov eax, TPAGE + 0x5000
        mov bl, [rax]
        E 14, 1, TPAGE + 0x5000, "#PF SMAP: CLAC closes them again (the cached translation too)"
        T
        pushfq
        or dword [rsp], 0x40000         ; AC through POPF
        popfq
        mov eax, TPAGE + 0x5000
        mov bl, [rax]
        pushfq
        and dword [rsp], ~0x40000
        popfq
        E -1, 0, -1, "SMAP: EFLAGS.AC = 1 set by POPF allows the access"
        ; hot enough to be translated: STAC/CLAC around a load, 300 times; the
        ; last iteration skips STAC and must fault
        T
        mov eax, TPAGE + 0x5000
        mov r14d, 300
.smap_hot:
        cmp r14d, 1
        je .smap_nostac
        stac
.smap_nostac:
        add bl, [rax]
        clac
        dec r14d
        jnz .smap_hot
        E 14, 1, TPAGE + 0x5000, "#PF SMAP in a hot (translated) loop once STAC is skipped"
        xor ebp, ebp
        cmp r14d, 1
        setne cl
        add bpl, cl
        lea rcx, [rel n_smap_hot]
        call verdict
        mov rax, cr4
        and eax, ~((1 << 20) | (1 << 21))
        mov cr4, rax
        or qword [PD0], 4
        mov rax, cr3
        mov cr3, rax

        ; ---- debug registers (SDM Vol. 3B 17.2-17.3) ----
        ; a #DB handler that counts, records DR6 and the frame's RIP, clears
        ; DR6 and TF and sets RF in the frame (so an instruction breakpoint
        ; lets the instruction run on return)
        lea rax, [rel db_handler]
        mov word [IDT + 1 * 16], ax
        shr rax, 16
        mov word [IDT + 1 * 16 + 6], ax
        mov eax, 0xffff0ff0             ; DR6 is sticky: BS is still set from the TF test
        mov dr6, rax
        ; DR0 execute breakpoint: a fault before the instruction
        xor ebp, ebp
        mov dword [db_count], 0
        lea rax, [rel .bp_x]
        mov dr0, rax
        mov eax, 0x1                    ; L0, RW0 = 00 (execute), LEN0 = 00
        mov dr7, rax
        xor ebx, ebx
.bp_x:  inc ebx
        mov eax, 0x400
        mov dr7, rax
        cmp dword [db_count], 1
        setne cl
        add bpl, cl
        lea rax, [rel .bp_x]
        cmp [db_rip], rax
        setne cl
        add bpl, cl
        mov rax, [db_dr6]
        and eax, 0x600f
        cmp eax, 1
        setne cl
        add bpl, cl
        cmp ebx, 1                      ; RF = 1 from the handler: it ran once
        setne cl
        add bpl, cl
        lea rcx, [rel n_bp_x]
        call verdict
        ; DR1 write breakpoint (4 bytes): a trap after the store, reads pass
        xor ebp, ebp
        mov dword [db_count], 0
        lea rax, [rel watch]
        mov dr1, rax
        mov eax, 0x4 | (1 << 20) | (3 << 22)    ; L1, RW1 = 01 (write), LEN1 = 11
        mov dr7, rax
        mov eax, [watch + 2]            ; a read: no #DB
        mov word [watch + 2], 7         ; overlapping write
.bp_w:  nop
        mov eax, 0x400
        mov dr7, rax
        cmp dword [db_count], 1
        setne cl
        add bpl, cl
        lea rax, [rel .bp_w]
        cmp [db_rip], rax
        setne cl
        add bpl, cl
        mov rax, [db_dr6]
        and eax, 0x600f
        cmp eax, 2
        setne cl
        add bpl, cl
        cmp word [watch + 2], 7
        setne cl
        add bpl, cl
        lea rcx, [rel n_bp_w]
        call verdict
        ; DR3 read/write breakpoint (8 bytes): a read traps
        xor ebp, ebp
        mov dword [db_count], 0
        lea rax, [rel watch]
        mov dr3, rax
        mov eax, 0x40 | (3 << 28) | (2 << 30)   ; L3, RW3 = 11, LEN3 = 10 (8 bytes)
        mov dr7, rax
        mov al, [watch + 7]
.bp_r:  nop
        mov eax, 0x400
        mov dr7, rax
        cmp dword [db_count], 1
        setne cl
        add bpl, cl
        lea rax, [rel .bp_r]
        cmp [db_rip], rax
        setne cl
        add bpl, cl
        mov rax, [db_dr6]
        and eax, 0x600f
        cmp eax, 8
        setne cl
        add bpl, cl
        lea rcx, [rel n_bp_r]
        call verdict
        ; DR2 I/O breakpoint (CR4.DE): OUT to COM1's scratch register traps
        xor ebp, ebp
        mov dword [db_count], 0
        mov rax, cr4
        or eax, 0x8                     ; DE
        mov cr4, rax
        mov eax, COM1 + 7
        mov dr2, rax
        mov eax, 0x10 | (2 << 24)       ; L2, RW2 = 10 (I/O), LEN2 = 00
        mov dr7, rax
        mov dx, COM1 + 7
        mov al, 0x5a
        out dx, al
.bp_io: nop
        mov eax, 0x400
        mov dr7, rax
        cmp dword [db_count], 1
        setne cl
        add bpl, cl
        lea rax, [rel .bp_io]
        cmp [db_rip], rax
        setne cl
        add bpl, cl
        mov rax, [db_dr6]
        and eax, 0x600f
        cmp eax, 4
        setne cl
        add bpl, cl
        lea rcx, [rel n_bp_io]
        call verdict
        T
        mov rax, dr4
        E 6, 0, -1, "#UD MOV from DR4 with CR4.DE = 1"
        mov rax, cr4
        and eax, ~0x8
        mov cr4, rax
        T
        mov rax, dr5                    ; DR7 alias without CR4.DE
        E -1, 0, -1, "MOV from DR5 without CR4.DE reads DR7"
        ; DR7.GD: the next MOV DR is a #DB fault with DR6.BD; GD is cleared
        xor ebp, ebp
        mov dword [db_count], 0
        mov eax, 0x2400
        mov dr7, rax
.bp_gd: mov rax, dr0
        mov rax, dr7
        cmp dword [db_count], 1
        setne cl
        add bpl, cl
        lea rdx, [rel .bp_gd]
        cmp [db_rip], rdx
        setne cl
        add bpl, cl
        test eax, 0x2000
        setnz cl
        add bpl, cl
        mov rax, [db_dr6]
        and eax, 0x600f
        cmp eax, 0x2000
        setne cl
        add bpl, cl
        lea rcx, [rel n_bp_gd]
        call verdict
        ; TF single-step and a data breakpoint in the same instruction: one #DB
        xor ebp, ebp
        mov dword [db_count], 0
        lea rax, [rel watch]
        mov dr1, rax
        mov eax, 0x4 | (1 << 20) | (3 << 22)
        mov dr7, rax
        pushfq
        or dword [rsp], 0x100
        popfq
        mov dword [watch], 1            ; traps: BS and B1
.bp_tf: nop
        mov eax, 0x400
        mov dr7, rax
        cmp dword [db_count], 1
        setne cl
        add bpl, cl
        lea rax, [rel .bp_tf]
        cmp [db_rip], rax
        setne cl
        add bpl, cl
        mov rax, [db_dr6]
        and eax, 0x600f
        cmp eax, 0x4002
        setne cl
        add bpl, cl
        lea rcx, [rel n_bp_tf]
        call verdict
        ; the stub handler back at IDT[1]
        mov rax, [stubs + 8]
        mov word [IDT + 1 * 16], ax
        shr rax, 16
        mov word [IDT + 1 * 16 + 6], ax

        ; LTR last: a wrongly loaded TSS would break later tests
        T
        mov ax, 0x70
        ltr ax
        E 13, 0x70, -1, "#GP(sel) LTR of a TSS descriptor with a non-canonical base"

        ; done
        lea rsi, [rel m_done]
        call puts
        mov eax, [fails]
        call putdec
        mov al, 10
        call putc
        mov eax, [fails]
        mov dx, 0xf4
        out dx, eax
.stop:  cli
        hlt
        jmp .stop

db_handler:
        push rax
        inc dword [db_count]
        mov rax, dr6
        mov [db_dr6], rax
        mov rax, [rsp + 8]
        mov [db_rip], rax
        or dword [rsp + 24], 0x10000    ; RF
        and dword [rsp + 24], ~0x100    ; TF
        mov eax, 0xffff0ff0
        mov dr6, rax
        pop rax
        iretq

; NMI handler: counts, records the interrupted RIP; the first one raises two
; more NMIs while NMIs are blocked and checks that none nests
nmi_handler:
        push rax
        push rcx
        mov eax, [nmi_count]
        mov rcx, [rsp + 16]
        mov [nmi_rip + rax * 8], rcx
        inc eax
        mov [nmi_count], eax
        cmp eax, 1
        jne .out
        mov dword [rdi + 0x300], 0x4400
        mov dword [rdi + 0x300], 0x4400
        mov ecx, 100000
.spin:  pause
        loop .spin
        mov eax, [nmi_count]
        mov [nmi_nested], eax
.out:   pop rcx
        pop rax
        iretq

; ---- user-mode snippets (CPL 3) ----
u_read_sup:
        mov rax, [TPAGE + 0x2000]
        jmp $
u_write_ro:
        mov qword [TPAGE + 0x1010], 1
        jmp $
u_int80:
        int 0x80
        jmp $
u_cs:
        mov ax, cs
        movzx eax, ax
        mov [user_cs], rax
        int3
        jmp $
u_ac:
        pushfq
        or dword [rsp], 0x40000         ; EFLAGS.AC
        popfq
        mov rax, [USTACK - 0x103]       ; misaligned
        jmp $
u_stac: stac
        jmp $
u_cgate64:
        call far [rel cg64_ptr]         ; m16:64 (nasm adds REX.W); the offset is ignored for a call gate
u_cg64_back:
        mov eax, cs
        mov [rel u_cs2], rax
        mov eax, ss
        mov [rel u_ss2], rax
        mov [rel u_rsp2], rsp
        int3
        jmp $
u_syscall:
        mov eax, 1
        syscall                         ; -> kernel, SYSRETs to u_sc2
u_sc2:  mov ax, cs
        movzx eax, ax
        mov [sc_ucs], rax
        mov eax, 2
        syscall                         ; -> kernel, resumes the test
        jmp $

; ---- kernel helpers ----
to_user:                                ; RDI = user RIP; IRETQ to CPL 3
        push 0x2b
        push USTACK
        push 0x202
        push 0x33
        push rdi
        iretq

cg64_target:                            ; CPL0 through the 64-bit call gate
        mov [rel cg_rsp], rsp
        mov eax, cs
        mov [rel cg_cs], rax
        mov eax, ss
        mov [rel cg_ss], rax
        mov rax, [rsp]
        mov [rel cg_frame], rax
        mov rax, [rsp + 8]
        mov [rel cg_frame + 8], rax
        mov rax, [rsp + 16]
        mov [rel cg_frame + 16], rax
        mov rax, [rsp + 24]
        mov [rel cg_frame + 24], rax
        o64 retf                        ; RIP, CS, RSP, SS: back to CPL 3

syscall_entry:
        cmp eax, 1
        jne .back
        mov ax, cs
        movzx eax, ax
        mov [sc_cs], rax
        mov ax, ss
        movzx eax, ax
        mov [sc_ss], rax
        mov [sc_r11], r11
        lea rcx, [rel u_sc2]
        o64 sysret
.back:  mov ax, 0x18
        mov ss, ax
        mov rsp, [saved_rsp]
        jmp [resume]

%macro STUB 1
stub%1:
  %if (%1 = 8) || (%1 >= 10 && %1 <= 14) || (%1 = 17)
  %else
        push 0
  %endif
        push %1
        jmp ex_common
%endmacro
%assign v 0
%rep 32
STUB v
%assign v v+1
%endrep

ex_common:                                 ; [rsp] vector, [rsp+8] error code, then the frame
        push rax
        mov rax, [rsp + 8]
        mov [ex_vec], rax
        mov rax, [rsp + 16]
        mov [ex_err], rax
        mov rax, cr2
        mov [ex_cr2], rax
        mov rax, cr0
        and eax, ~0x4000c               ; leave CR0.AM, TS, EM off
        mov cr0, rax
        fninit
        ldmxcsr [rel mxcsr_default]
        pop rax
        mov ax, 0x18
        mov ds, ax
        mov es, ax
        mov rsp, [saved_rsp]            ; back to the kernel test, CPL 0
        mov ax, 0x18
        mov ss, ax
        push 0                          ; clear TF/AC/IF
        popfq
        jmp [resume]

; check: RDI want vector, RSI want error, RDX want CR2 (-1 = any), RCX name
check:
        push rcx
        mov rax, [ex_vec]
        cmp rax, rdi
        jne .bad
        cmp rdi, -1
        je .ok
        mov rax, [ex_err]
        cmp rax, rsi
        jne .bad
        cmp rdx, -1
        je .ok
        cmp rdx, [ex_cr2]
        jne .bad
.ok:    lea rsi, [rel m_pass]
        call puts
        pop rsi
        call puts
        mov al, 10
        call putc
        ret
.bad:   inc dword [fails]
        lea rsi, [rel m_fail]
        call puts
        pop rsi
        call puts
        lea rsi, [rel m_vec]
        call puts
        mov rax, [ex_vec]
        call puthex
        lea rsi, [rel m_err]
        call puts
        mov rax, [ex_err]
        call puthex
        lea rsi, [rel m_cr2]
        call puts
        mov rax, [ex_cr2]
        call puthex
        mov al, 10
        call putc
        ret

puthex: push rcx
        push rbx
        mov rbx, rax
        mov ecx, 16
.h:     rol rbx, 4
        mov al, bl
        and al, 15
        add al, '0'
        cmp al, '9'
        jbe .p
        add al, 7
.p:     call putc
        loop .h
        pop rbx
        pop rcx
        ret
; verdict: PASS/FAIL <RCX name> by BPL (number of mismatches)
verdict:
        test bpl, bpl
        jnz .bad
        lea rsi, [rel m_pass]
        call puts
        jmp .name
.bad:   inc dword [fails]
        lea rsi, [rel m_fail]
        call puts
.name:  mov rsi, rcx
        call puts
        mov al, 10
        call putc
        ret

%include "../lib/console64.inc"

        align 8
stubs:
%assign v 0
%rep 32
        dq stub %+ v
%assign v v+1
%endrep
gdt:    dq 0
        dq 0x00cf9a000000ffff           ; 0x08 32-bit code
        dq 0x00af9a000000ffff           ; 0x10 64-bit kernel code
        dq 0x00cf92000000ffff           ; 0x18 kernel data
        dq 0x00cffa000000ffff           ; 0x20 user 32-bit code
        dq 0x00cff2000000ffff           ; 0x28 user data
        dq 0x00affa000000ffff           ; 0x30 user 64-bit code
        dq 0x0000890000000067 | ((TSS & 0xffffff) << 16)   ; 0x38 TSS
        dq 0
        dq 0x00cf12000000ffff           ; 0x48 data, not present
        dq 0, 0                         ; 0x50 64-bit call gate (DPL3) -> cg64_target
        dq 0x0000820000000fff, 0x00008000       ; 0x60 LDT, base 0x0000800000000000 (non-canonical)
        dq 0x0000890000000067, 0x00008000       ; 0x70 TSS, base 0x0000800000000000 (non-canonical)
gdt_end:
gdt_desc: dw gdt_end - gdt - 1
        dq gdt
idt_desc: dw 32 * 16 - 1
        dq IDT
nc_desc:   dw 0xfff
           dq 0x0000800000000000
nmi_count: dd 0
nmi_nested: dd 0
nmi_rip:   times 4 dq 0
resume:    dq 0
saved_rsp: dq 0
ex_vec:    dq 0
ex_err:    dq 0
ex_cr2:    dq 0
user_cs:   dq 0
sc_cs:     dq 0
sc_ss:     dq 0
sc_ucs:    dq 0
sc_r11:    dq 0
fails:     dd 0
cg_rsp:    dq 0
cg_cs:     dq 0
cg_ss:     dq 0
cg_frame:  times 4 dq 0
u_cs2:     dq 0
u_ss2:     dq 0
u_rsp2:    dq 0
cg64_ptr:  dq 0
           dw 0x50 | 3
fcw_zm:    dw 0x037b
           align 4
mxcsr_zm:  dd 0x1d80
mxcsr_default: dd 0x1f80
one:       dd 1.0
n_cg64: db "64-bit call gate: TSS RSP0, null SS, 8-byte frame; RETF restores CS:RIP, SS:RSP", 0
n_apicid: db "IA32_APIC_BASE.EN = 0 clears CPUID.1:EDX.APIC; re-enabled, the xAPIC ID is reset", 0
n_tmcct: db "APIC timer: TMCCT counts down from TMICT, a TMICT write restarts it, 0 stops it", 0
n_mcg:  db "CPUID.1:EDX.MCE/MCA set, IA32_MCG_CAP = 0 banks, IA32_MCG_STATUS = 0", 0
mcg_cap: dd 0
n_smep_cpuid: db "CPUID.7:EBX.SMEP and SMAP set", 0
n_smap_hot: db "SMAP: the fault comes on the iteration without STAC, not before", 0
n_bp_x: db "DR0 execute breakpoint: #DB fault before it, DR6.B0, RF lets it run once", 0
n_bp_w: db "DR1 write breakpoint: #DB trap after an overlapping write, DR6.B1; reads pass", 0
n_bp_r: db "DR3 read/write breakpoint (8 bytes): a read traps, DR6.B3", 0
n_bp_io: db "DR2 I/O breakpoint with CR4.DE: OUT traps, DR6.B2", 0
n_bp_gd: db "DR7.GD: MOV DR is a #DB fault with DR6.BD, GD cleared", 0
n_bp_tf: db "TF and a write breakpoint in one instruction: one #DB with DR6.BS and B1", 0
        align 8
watch:  dq 0
db_count: dd 0
db_dr6: dq 0
db_rip: dq 0
n_nmi:  db "NMI while an NMI handler runs: exactly one more, right after its IRETQ (IF = 0)", 0
m_pass: db "PASS ", 0
m_fail: db "FAIL ", 0
m_vec:  db " vec=", 0
m_err:  db " err=", 0
m_cr2:  db " cr2=", 0
m_cs:   db "FAIL user CS after IRETQ is not 0x33", 10, 0
m_sc:   db "FAIL SYSCALL/SYSRET selectors or R11", 10, 0
m_done: db "sys64: failures=", 0
