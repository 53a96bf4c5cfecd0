; sys32: system-level checks in 32-bit protected mode (no paging), reported
; over COM1 as  PASS <name> / FAIL <name> ...  then isa-debug-exit with the
; number of failures (0 -> `bhive run` exits 1).
;   exceptions: #OF (INTO), #BR (BOUND), #NM (CR0.TS/EM with x87 and SSE),
;     #MF (unmasked x87, CR0.NE), #XM (unmasked SSE, CR4.OSXMMEXCPT),
;     #TS and #SS(sel) for a bad inner stack in the TSS;
;   segment limit and type checks (SDM Vol 3A 5.3, 5.4): #GP(0) / #SS(0),
;     near branches beyond the CS limit,
;     expand-down segments, null segments, read-only data, code writes;
;   descriptor-load checks (#GP(sel), #NP(sel));
;   IRET to CPL3 and back through the TSS ESP0 stack;
;   call gates: CPL3 -> CPL0 with parameter copy and RETF n back (outer
;     level: DS with DPL0 becomes null), same-privilege CALL, far JMP;
;   SYSENTER/SYSEXIT; the interrupt shadow of STI and of MOV SS;
;   hardware task switches (SDM Vol 3A 7.3): far JMP to a TSS and back, CALL
;     through a task gate and IRET with NT, INT n and #GP through IDT task
;     gates (error code on the new task's stack), busy TSS.
; Single vCPU; starts in real mode at 0x8000.

%define IDT     0x20000
%define TSS     0x21000
%define KSTACK  0x80000             ; TSS ESP0
%define TSTACK  0x7c000             ; the kernel's test stack
%define USTACK  0x70000
%define SESTACK 0x78000             ; IA32_SYSENTER_ESP
%define APIC    0xfee00000
%define TSS2    0x22000             ; task of the far JMP
%define TSS3    0x23000             ; nested task (CALL / INT through task gates, IRET)
%define TSS5    0x24000             ; #GP handler task

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
pm32:   mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        mov esp, TSTACK
        ; x87/SSE: CR0.MP|NE, CR4.OSFXSR
        mov eax, cr0
        or eax, 0x22
        mov cr0, eax
        mov eax, cr4
        or eax, 0x200
        mov cr4, eax
        fninit
        ; IDT: 0..31 -> stubs (DPL0 interrupt gates)
        xor esi, esi
.idt:   mov eax, esi
        mov ebx, [stubs + esi * 4]
        mov ecx, 0x08
        mov edx, 0x8e00
        call set_gate
        inc esi
        cmp esi, 32
        jb .idt
        mov eax, 0x41                   ; DPL3 gate to ring-1 code: TSS SS1 is bad (#TS)
        mov ebx, never
        mov ecx, 0x30
        mov edx, 0xee00
        call set_gate
        mov eax, 0x42                   ; DPL3 gate to ring-2 code: TSS SS2 not present (#SS)
        mov ebx, never
        mov ecx, 0x38
        mov edx, 0xee00
        call set_gate
        mov eax, 0x43                   ; DPL3 gate: "back to the kernel"
        mov ebx, stub67
        mov ecx, 0x08
        mov edx, 0xee00
        call set_gate
        mov eax, 0x50                   ; self-IPI of the STI-shadow check
        mov ebx, stub80
        mov ecx, 0x08
        mov edx, 0x8e00
        call set_gate
        lidt [idt_desc]
        ; TSS: ESP0/SS0 good, SS1 = a ring-0 selector (RPL/DPL != 1), SS2 = not present
        mov edi, TSS
        mov ecx, 0x68 / 4
        xor eax, eax
        rep stosd
        mov dword [TSS + 4], KSTACK
        mov dword [TSS + 8], 0x10
        mov dword [TSS + 0x0c], 0x1000
        mov dword [TSS + 0x10], 0x10
        mov dword [TSS + 0x14], 0x1000
        mov dword [TSS + 0x18], 0x40 | 2
        mov word [TSS + 0x66], 0x68
        mov ax, 0x28
        ltr ax
        mov eax, 0x44                   ; task gate -> TSS3
        mov ebx, 0
        mov ecx, 0xa0
        mov edx, 0x8500
        call set_gate
        ; the other tasks: flat ring-0 segments, IF = 0, own stacks
        mov edi, TSS2
        mov eax, task2
        mov edx, 0x60000
        call make_tss
        mov edi, TSS3
        mov eax, task3
        mov edx, 0x5f000
        call make_tss
        mov edi, TSS5
        mov eax, task5
        mov edx, 0x5e000
        call make_tss
        ; call gates
        mov edi, gdt + 0x70             ; DPL3 -> 0x08:cg_inner, 2 dword parameters
        mov ebx, cg_inner
        mov ecx, 0x08
        mov edx, 0xec02
        call make_gate
        mov edi, gdt + 0x78             ; DPL0 -> 0x08:cg_same
        mov ebx, cg_same
        mov ecx, 0x08
        mov edx, 0x8c00
        call make_gate
        mov edi, gdt + 0x80             ; DPL0 -> 0x08:jg_target (far JMP)
        mov ebx, jg_target
        mov ecx, 0x08
        mov edx, 0x8c00
        call make_gate
        ; SYSENTER MSRs
        mov ecx, 0x174
        mov eax, 0x08
        xor edx, edx
        wrmsr
        mov ecx, 0x175
        mov eax, SESTACK
        wrmsr
        mov ecx, 0x176
        mov eax, sysenter_entry
        wrmsr
        ; local APIC software-enabled (STI shadow check)
        mov dword [APIC + 0xf0], 0x1ff

%macro T 0
  %push t
        mov dword [resume], %$resume
        mov [saved_esp], esp
        mov dword [ex_vec], -1
        mov dword [ex_err], -1
%endmacro
%macro E 3 ; vector (-1: none), error code, name
  %$resume:
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        mov esp, [saved_esp]
        mov edi, %1
        mov esi, %2
        mov ecx, %%name
        call check
        jmp %%after
  %%name: db %3, 0
  %%after:
  %pop
%endmacro
; RESULT cc, name: PASS when condition cc holds (after a compare)
%macro RESULT 2
        mov ecx, %%name
        j%-1 %%bad
        call pass
        jmp %%after
%%bad:  call fail
        call newline
        jmp %%after
  %%name: db %2, 0
  %%after:
%endmacro
; MISMATCH a, b: count a != b in EBP
%macro MISMATCH 2
        cmp %1, %2
        je %%ok
        inc ebp
%%ok:
%endmacro

        ; ---- exceptions -------------------------------------------------
        T
        mov al, 0x7f
        add al, 1                       ; OF = 1
        into
into_next:
        E 4, -2, "#OF INTO with OF=1 (32-bit)"
        cmp dword [ex_eip], into_next
        RESULT e, "#OF is a trap: saved EIP after INTO"

        T
        mov eax, 20
        bound eax, [bounds]
        E 5, -2, "#BR BOUND index above the upper bound"

        T
        mov eax, 5
        bound eax, [bounds]
        E -1, -1, "BOUND index within the bounds"

        T
        mov eax, cr0
        or eax, 8                       ; CR0.TS
        mov cr0, eax
        fld1
        E 7, -2, "#NM x87 with CR0.TS"

        T
        mov eax, cr0
        or eax, 4                       ; CR0.EM
        mov cr0, eax
        fld1
        E 7, -2, "#NM x87 with CR0.EM"

        T
        mov eax, cr0
        or eax, 8
        mov cr0, eax
        addps xmm0, xmm1
        E 7, -2, "#NM SSE with CR0.TS"

        T
        mov eax, cr0
        or eax, 4
        mov cr0, eax
        addps xmm0, xmm1
        E 6, -2, "#UD SSE with CR0.EM"

        T
        mov dword [mf_mark], 0
        fninit
        fldcw [fcw_zm]                  ; zero-divide unmasked
        fld1
        fldz
        fdivp st1, st0                  ; ZE pending (FSW.ES), no fault yet
        mov dword [mf_mark], 1
        fwait                           ; #MF here
        E 16, -2, "#MF unmasked x87 zero-divide at the next FWAIT (CR0.NE)"
        cmp dword [mf_mark], 1
        RESULT e, "#MF is delayed to the next waiting x87 instruction"

        T
        mov eax, cr4
        or eax, 0x400                   ; OSXMMEXCPT
        mov cr4, eax
        ldmxcsr [mxcsr_zm]
        movss xmm0, [one]
        xorps xmm1, xmm1
        divss xmm0, xmm1
        E 19, -2, "#XM unmasked SSE zero-divide (CR4.OSXMMEXCPT)"

        T
        mov eax, cr4
        and eax, ~0x400
        mov cr4, eax
        ldmxcsr [mxcsr_zm]
        movss xmm0, [one]
        xorps xmm1, xmm1
        divss xmm0, xmm1
        E 6, -2, "#UD unmasked SSE zero-divide without CR4.OSXMMEXCPT"

        ; ---- segment limit and type checks ------------------------------
        T
        mov ax, 0x48                    ; data, base 1M, limit 0xfff
        mov ds, ax
        mov eax, [0xffc]
        E -1, -1, "dword read at the end of a 4K data segment"

        T
        mov ax, 0x48
        mov ds, ax
        mov eax, [0xffe]
        E 13, 0, "#GP(0) dword read crossing the data segment limit"

        T
        mov ax, 0x48
        mov es, ax
        mov byte [es:0x1000], 1
        E 13, 0, "#GP(0) byte write just past the limit (ES)"

        T
        mov ax, 0x50                    ; read-only data
        mov es, ax
        mov eax, [es:0x100]
        E -1, -1, "read through a read-only data segment"

        T
        mov ax, 0x50
        mov es, ax
        mov [es:0x100], eax
        E 13, 0, "#GP(0) write through a read-only data segment"

        T
        mov eax, [cs:scratch]
        E -1, -1, "read through a readable code segment (CS override)"

        T
        mov [cs:scratch], eax
        E 13, 0, "#GP(0) write through a code segment (CS override)"

        T
        xor eax, eax
        mov fs, ax
        mov eax, [fs:0]
        E 13, 0, "#GP(0) access through a null segment (FS)"

        T
        mov ax, 0x58                    ; expand-down, limit 0xfff, B=1
        mov ds, ax
        mov eax, [0x2000]
        mov eax, [0xfffffffc]
        E -1, -1, "expand-down data segment: offsets above the limit"

        T
        mov ax, 0x58
        mov ds, ax
        mov eax, [0xffe]
        E 13, 0, "#GP(0) expand-down data segment: offset at/below the limit"

        T
        mov ax, 0x60                    ; stack, base 0x90000, limit 0xffff
        mov ss, ax
        mov esp, 0x8000
        push eax
        pop eax
        mov eax, [ss:0xfffc]
        mov eax, [ss:0x10000]
        E 12, 0, "#SS(0) SS access beyond the stack segment limit"

        T
        mov ax, 0x60
        mov ss, ax
        mov esp, 0x8000
        mov ebp, 0xfffe
        mov eax, [ebp]                  ; EBP-based: SS
        E 12, 0, "#SS(0) EBP-based access crossing the stack segment limit"

        T
        mov ax, 0x58                    ; expand-down as a stack
        mov ss, ax
        mov esp, 0x8000
        push eax
        pop eax
        mov eax, [ss:0x800]
        E 12, 0, "#SS(0) expand-down stack segment below its limit"

        T
        jmp 0xb8:.lim1                  ; CS with a 64K limit
.lim1:  mov word [0x30000], 0x0b0f       ; ud2 there: #UD if the limit were ignored
        mov eax, 0x30000
        jmp eax
        E 13, 0, "#GP(0) near JMP beyond the CS limit"

        T
        jmp 0xb8:.lim2
.lim2:  mov [t_esp], esp
        mov word [0x30000], 0x0b0f
        mov eax, 0x30000
        call eax
        E 13, 0, "#GP(0) near CALL beyond the CS limit"
        mov eax, [t_esp]
        sub eax, 12
        cmp [ex_frame], eax
        RESULT e, "near CALL beyond the CS limit pushes nothing"

        ; ---- descriptor loads ------------------------------------------------
        T
        mov ax, 0x88                    ; execute-only code
        mov ds, ax
        E 13, 0x88, "#GP(sel) execute-only code segment into DS"

        T
        mov ax, 0x50                    ; read-only data
        mov ss, ax
        E 13, 0x50, "#GP(sel) read-only data segment into SS"

        T
        mov ax, 0x20 | 3                ; DPL3 data at CPL0
        mov ss, ax
        E 13, 0x20, "#GP(sel) SS with RPL/DPL != CPL"

        T
        mov ax, 0x90
        mov es, ax
        E 11, 0x90, "#NP(sel) not-present data segment into ES"

        T
        mov ax, 0x1000                  ; beyond the GDT limit
        mov ds, ax
        E 13, 0x1000, "#GP(sel) selector beyond the GDT limit"

        ; ---- user mode, TSS stack switch -----------------------------------
        T
        mov edi, u_back
        jmp to_user
        E 0x43, -2, "IRETD to CPL3 and INT back through a DPL3 gate"
        xor ebp, ebp
        MISMATCH dword [ex_frame], KSTACK - 20
        MISMATCH dword [ex_cs], 0x1b
        MISMATCH dword [ex_uss], 0x23
        MISMATCH dword [ex_usp], USTACK
        MISMATCH dword [ex_eax], 0x1b
        test ebp, ebp
        RESULT z, "CPL3 -> CPL0 interrupt frame on the TSS ESP0 stack (SS:ESP, CS)"

        T
        mov edi, u_int41
        jmp to_user
        E 10, 0x10, "#TS(sel) INT from CPL3 whose TSS SS1 has RPL/DPL != 1"

        T
        mov edi, u_int42
        jmp to_user
        E 12, 0x40, "#SS(sel) INT from CPL3 whose TSS SS2 is not present"

        ; ---- call gates --------------------------------------------------------
        T
        mov edi, u_cgate
        jmp to_user
        E 0x43, -2, "CALL through a call gate CPL3 -> CPL0 and RETF 8 back"
        xor ebp, ebp
        MISMATCH dword [cg_cs], 0x08
        MISMATCH dword [cg_ss], 0x10
        MISMATCH dword [cg_esp], KSTACK - 24
        MISMATCH dword [cg_frame], u_cg_back
        MISMATCH dword [cg_frame + 4], 0x1b
        MISMATCH dword [cg_frame + 8], 0x2222
        MISMATCH dword [cg_frame + 12], 0x1111
        MISMATCH dword [cg_frame + 16], USTACK - 8
        MISMATCH dword [cg_frame + 20], 0x23
        test ebp, ebp
        RESULT z, "call gate: TSS stack, 2 parameters copied, old SS:ESP and CS:EIP"
        xor ebp, ebp
        MISMATCH dword [ex_usp], USTACK
        MISMATCH dword [ex_ebx], 0x1b
        MISMATCH dword [ex_ecx], 0x23
        test ebp, ebp
        RESULT z, "RETF 8 to CPL3: CS, SS, ESP with the parameters released"
        cmp dword [ex_eax], 0
        RESULT e, "RETF to CPL3 nulls a DS with DPL 0"

        T
        mov [cg2_before], esp
        call 0x78:0
        E -1, -1, "CALL through a call gate at the same privilege level"
        mov eax, [cg2_before]
        sub eax, 8
        xor ebp, ebp
        MISMATCH [cg2_esp], eax
        MISMATCH dword [cg2_cs], 0x08
        test ebp, ebp
        RESULT z, "same-privilege call gate: CS:EIP pushed on the current stack"

        T
        mov dword [jg_cs], 0
        jmp 0x80:0
        E -1, -1, "far JMP through a call gate"
        cmp dword [jg_cs], 0x08
        RESULT e, "far JMP through a call gate lands in the gate's code segment"

        T
        mov edi, u_cgate_dpl0
        jmp to_user
        E 13, 0x78, "#GP(sel) CALL from CPL3 through a DPL0 call gate"

        T
        mov edi, u_jmp_k
        jmp to_user
        E 13, 0x08, "#GP(sel) far JMP from CPL3 to non-conforming DPL0 code"

        ; ---- SYSENTER / SYSEXIT --------------------------------------------------
        T
        mov edi, u_sysenter
        jmp to_user
        E 0x43, -2, "SYSENTER -> SYSEXIT round trip"
        xor ebp, ebp
        MISMATCH dword [se_cs], 0x08
        MISMATCH dword [se_ss], 0x10
        MISMATCH dword [se_esp], SESTACK
        MISMATCH dword [ex_eax], 0x1b
        MISMATCH dword [ex_ebx], 0x23
        MISMATCH dword [ex_usp], USTACK
        test ebp, ebp
        RESULT z, "SYSENTER/SYSEXIT selectors and stacks from the MSRs"

        T
        mov ecx, 0x174
        xor eax, eax
        xor edx, edx
        wrmsr
        mov edi, u_sysenter
        jmp to_user
        E 13, 0, "#GP(0) SYSENTER with IA32_SYSENTER_CS = 0"
        mov ecx, 0x174
        mov eax, 0x08
        xor edx, edx
        wrmsr

        ; ---- interrupt shadows ------------------------------------------------
        T
        mov dword [APIC + 0x300], 0x00044050    ; self-IPI, vector 0x50 (IF = 0: pending)
        sti
        nop                             ; the STI shadow covers this one
sti_next:
        nop
        cli
        E 0x50, -2, "self-IPI after STI"
        cmp dword [ex_eip], sti_next
        RESULT e, "STI shadow: the interrupt is taken after the next instruction"

        T
        mov ax, 0x10
        pushfd
        or dword [esp], 0x100           ; TF
        popfd
        mov ss, ax                      ; traps would come here without the shadow
        nop
movss_next:
        nop
        E 1, -2, "single-step #DB over MOV SS"
        cmp dword [ex_eip], movss_next
        RESULT e, "MOV SS shadow: the single-step trap comes after the next instruction"

        ; ---- task switches (SDM Vol 3A 7.3) ------------------------------------
        T
        mov ebx, 0x1234
        mov esi, 0x5678
        mov dword [t_tr], 0
        jmp 0x98:0                      ; -> TSS2, which JMPs back to TSS 0x28
        mov [t_ebx], ebx
        mov [t_esi], esi
        E -1, -1, "far JMP to a TSS and a far JMP back"
        clts
        xor ebp, ebp
        MISMATCH dword [t_tr], 0x98
        MISMATCH dword [t_nt], 0
        MISMATCH dword [t_ts], 8
        MISMATCH dword [t_ebx], 0x1234  ; this task's registers came back from its TSS
        MISMATCH dword [t_esi], 0x5678
        str ax
        MISMATCH ax, 0x28
        test byte [gdt + 0x98 + 5], 2   ; TSS2 no longer busy
        setnz al
        movzx eax, al
        add ebp, eax
        test ebp, ebp
        RESULT z, "JMP task switch: TR, CR0.TS, NT clear, registers saved and restored, busy bits"

        T
        mov dword [t_tr], 0
        call 0xa8:0                     ; task gate -> TSS3, which IRETs back
        E -1, -1, "CALL through a task gate and IRET (NT) back"
        clts
        xor ebp, ebp
        MISMATCH dword [t_tr], 0xa0
        MISMATCH dword [t_nt], 0x4000
        MISMATCH dword [t_link], 0x28
        test byte [gdt + 0xa0 + 5], 2   ; TSS3 not busy after the IRET
        setnz al
        movzx eax, al
        add ebp, eax
        pushfd
        pop eax
        and eax, 0x4000
        add ebp, eax
        test ebp, ebp
        RESULT z, "nested task: NT = 1, previous-task link, busy bit cleared by IRET"

        T
        mov dword [t_tr], 0
        int 0x44                        ; IDT task gate -> TSS3
        E -1, -1, "INT n through an IDT task gate"
        clts
        xor ebp, ebp
        MISMATCH dword [t_tr], 0xa0
        MISMATCH dword [t_link], 0x28
        test ebp, ebp
        RESULT z, "INT n task gate: TR and the previous-task link"

        T
        mov dword [t5_vec], 13
        mov dword [IDT + 13 * 8], 0xb00000     ; #GP -> task gate to TSS5
        mov dword [IDT + 13 * 8 + 4], 0x8500
        mov ax, 0x88                    ; execute-only code into DS: #GP(0x88);
        mov ds, ax                      ; TSS5 records it and IRETs to [resume]
        E 13, 0x88, "#GP(sel) through an IDT task gate, error code on the new task's stack"
        clts
        mov eax, 13
        mov ebx, stub13
        mov ecx, 0x08
        mov edx, 0x8e00
        call set_gate

        T
        mov dword [t5_vec], 12
        mov dword [IDT + 12 * 8], 0xb00000     ; #SS -> task gate to TSS5
        mov dword [IDT + 12 * 8 + 4], 0x8500
        mov ax, 0x60                    ; stack, limit 0xffff
        mov ss, ax
        mov esp, 0x10008
.ss_int: int 0x43                       ; the 12-byte frame would cross the limit
        E 12, 0, "#SS(0) interrupt frame beyond the stack segment limit (via a task gate)"
        cmp dword [ex_eip], .ss_int
        RESULT e, "#SS for the interrupt frame is raised at the INT, before any push"
        clts
        mov eax, 12
        mov ebx, stub12
        mov ecx, 0x08
        mov edx, 0x8e00
        call set_gate

        T
        jmp 0x28:0                      ; the current task: busy
        E 13, 0x28, "#GP(sel) far JMP to a busy TSS"

        ; ---- done ------------------------------------------------------------
        mov esi, m_done
        call puts32
        mov eax, [fails]
        call puthex32
        mov al, 10
        call putc32
        mov eax, [fails]
        mov dx, 0xf4
        out dx, eax
.stop:  cli
        hlt
        jmp .stop

; ---- user-mode snippets (CPL 3, DS/ES = 0x23) ----
u_back:
        mov eax, cs
        int 0x43
u_int41:
        int 0x41
        jmp $
u_int42:
        int 0x42
        jmp $
u_cgate:
        push dword 0x1111
        push dword 0x2222
        call 0x73:0
u_cg_back:
        mov eax, ds                     ; 0: nulled by the RETF
        mov ebx, cs
        mov ecx, ss
        int 0x43
u_cgate_dpl0:
        call 0x7b:0
        jmp $
u_jmp_k:
        jmp 0x08:never
u_sysenter:
        mov ecx, esp
        mov edx, u_after_sysexit
        sysenter
u_after_sysexit:
        mov eax, cs
        mov ebx, ss
        int 0x43

; ---- kernel-side targets ----
cg_inner:                               ; CPL0 through the DPL3 gate, on the TSS stack
        mov [cg_esp], esp
        mov eax, cs
        mov [cg_cs], eax
        mov eax, ss
        mov [cg_ss], eax
        mov esi, esp
        mov edi, cg_frame
        mov ecx, 6
        cld
        rep movsd
        mov ax, 0x10                    ; DPL0 data: must not survive the return to CPL3
        mov ds, ax
        retf 8
cg_same:
        mov [cg2_esp], esp
        mov eax, [esp + 4]
        mov [cg2_cs], eax
        retf
jg_target:
        mov eax, cs
        mov [jg_cs], eax
        jmp [resume]
sysenter_entry:
        mov eax, cs
        mov [se_cs], eax
        mov eax, ss
        mov [se_ss], eax
        mov [se_esp], esp
        sysexit                         ; EDX = EIP, ECX = ESP (kept from user mode)
never:  jmp never

; tasks (ring 0, flat): record TR, EFLAGS.NT, CR0.TS and the previous-task link
task2:  call task_record
        mov ebx, 0xdead                 ; the caller's registers live in its TSS
        mov esi, 0xbeef
        jmp 0x28:0                      ; JMP back: TSS2 becomes available again
        jmp task2
task3:  call task_record
        iretd                           ; NT = 1: back to the previous task
        jmp task3
task5:  pop eax                         ; the error code
        mov [ex_err], eax
        mov eax, [t5_vec]
        mov [ex_vec], eax
        mov eax, [TSS + 0x20]           ; where the faulting task stopped
        mov [ex_eip], eax
        mov eax, [resume]               ; resume the faulting task at the check
        mov [TSS + 0x20], eax
        iretd
        jmp task5
task_record:
        str ax
        movzx eax, ax
        mov [t_tr], eax
        pushfd
        pop eax
        and eax, 0x4000
        mov [t_nt], eax
        mov eax, cr0
        and eax, 8
        mov [t_ts], eax
        mov eax, [TSS3]
        mov [t_link], eax
        ret

; make_tss: EDI 32-bit TSS, EAX EIP, EDX ESP
make_tss:
        push edi
        push eax
        mov ecx, 0x68 / 4
        xor eax, eax
        rep stosd
        pop eax
        pop edi
        mov [edi + 0x20], eax
        mov dword [edi + 0x24], 2
        mov [edi + 0x38], edx
        mov dword [edi + 0x48], 0x10    ; ES
        mov dword [edi + 0x4c], 0x08    ; CS
        mov dword [edi + 0x50], 0x10    ; SS
        mov dword [edi + 0x54], 0x10    ; DS
        mov dword [edi + 0x58], 0x10    ; FS
        mov dword [edi + 0x5c], 0x10    ; GS
        mov word [edi + 0x66], 0x68
        ret

to_user:                                ; EDI = user EIP
        mov ax, 0x23
        mov ds, ax
        mov es, ax
        push 0x23
        push USTACK
        push 0x002
        push 0x1b
        push edi
        iretd

; set_gate: EAX vector, EBX handler, ECX selector, EDX type/DPL word (clobbers EBX)
set_gate:
        push edi
        lea edi, [IDT + eax * 8]
        mov [edi], bx
        mov [edi + 2], cx
        mov [edi + 4], dx
        shr ebx, 16
        mov [edi + 6], bx
        pop edi
        ret
; make_gate: EDI descriptor, EBX offset, ECX selector, EDX attribute word
make_gate:
        mov [edi], bx
        mov [edi + 2], cx
        mov [edi + 4], dx
        shr ebx, 16
        mov [edi + 6], bx
        ret

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
STUB 67
STUB 80

; [esp] vector, [esp+4] error code, [esp+8] EIP, CS, EFLAGS (, ESP, SS from CPL3)
ex_common:
        push eax
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov [ex_ebx], ebx
        mov [ex_ecx], ecx
        mov eax, [esp]
        mov [ex_eax], eax
        mov eax, [esp + 4]
        mov [ex_vec], eax
        mov eax, [esp + 8]
        mov [ex_err], eax
        mov eax, [esp + 12]
        mov [ex_eip], eax
        mov eax, [esp + 16]
        mov [ex_cs], eax
        mov eax, [esp + 24]
        mov [ex_usp], eax
        mov eax, [esp + 28]
        mov [ex_uss], eax
        lea eax, [esp + 12]
        mov [ex_frame], eax
        mov eax, cr0
        and eax, ~0x4000c               ; TS, EM, AM off
        mov cr0, eax
        fninit
        ldmxcsr [mxcsr_default]
        cmp dword [ex_vec], 0x50
        jne .noeoi
        mov dword [APIC + 0xb0], 0
.noeoi: mov ax, 0x10
        mov ss, ax
        mov esp, [saved_esp]            ; back to the test, CPL 0
        push 2
        popfd
        jmp [resume]

; check: EDI want vector (-1 none), ESI want error (-2: none pushed/any), ECX name
check:
        mov eax, [ex_vec]
        cmp eax, edi
        jne .bad
        cmp esi, -2
        je pass
        cmp edi, -1
        je pass
        cmp [ex_err], esi
        jne .bad
        jmp pass
.bad:   call fail
        mov esi, m_vec
        call puts32
        mov eax, [ex_vec]
        call puthex32
        mov esi, m_err
        call puts32
        mov eax, [ex_err]
        call puthex32
        mov esi, m_eip
        call puts32
        mov eax, [ex_eip]
        call puthex32
        jmp newline
; pass: "PASS <ECX>" and a newline; fail: "FAIL <ECX>", the line left open
pass:   mov esi, m_pass
        call puts32
        mov esi, ecx
        call puts32
newline:
        mov al, 10
        call putc32
        ret
fail:   inc dword [fails]
        mov esi, m_fail
        call puts32
        mov esi, ecx
        call puts32
        ret

%include "../lib/console.inc"
        CONSOLE 32

        align 8
stubs:
%assign v 0
%rep 32
        dd stub %+ v
%assign v v+1
%endrep
gdt:    dq 0
        dq 0x00cf9a000000ffff           ; 0x08 ring-0 code
        dq 0x00cf92000000ffff           ; 0x10 ring-0 data
        dq 0x00cffa000000ffff           ; 0x18 ring-3 code
        dq 0x00cff2000000ffff           ; 0x20 ring-3 data
        dq 0x0000890000000067 | (TSS << 16)   ; 0x28 32-bit TSS
        dq 0x00cfba000000ffff           ; 0x30 ring-1 code
        dq 0x00cfda000000ffff           ; 0x38 ring-2 code
        dq 0x00cf52000000ffff           ; 0x40 ring-2 data, not present
        dq 0x0040921000000fff           ; 0x48 data, base 1M, limit 0xfff
        dq 0x00cf90000000ffff           ; 0x50 read-only data
        dq 0x0040960000000fff           ; 0x58 expand-down data, limit 0xfff, B=1
        dq 0x004092090000ffff           ; 0x60 data, base 0x90000, limit 0xffff
        dq 0                            ; 0x68
        dq 0                            ; 0x70 call gate (DPL3, 2 params) -> cg_inner
        dq 0                            ; 0x78 call gate (DPL0) -> cg_same
        dq 0                            ; 0x80 call gate (DPL0) -> jg_target
        dq 0x00cf98000000ffff           ; 0x88 execute-only code
        dq 0x00cf12000000ffff           ; 0x90 data, not present
        dq 0x0000890000000067 | (TSS2 << 16)  ; 0x98 TSS2
        dq 0x0000890000000067 | (TSS3 << 16)  ; 0xa0 TSS3
        dq 0x0000850000a00000           ; 0xa8 task gate -> 0xa0
        dq 0x0000890000000067 | (TSS5 << 16)  ; 0xb0 TSS5
        dq 0x00409a000000ffff           ; 0xb8 32-bit code, limit 0xffff
gdt_end:
gdt_desc: dw gdt_end - gdt - 1
        dd gdt
idt_desc: dw 256 * 8 - 1
        dd IDT
bounds: dd 0, 10
fcw_zm: dw 0x037b
        align 4
mxcsr_zm: dd 0x1d80
mxcsr_default: dd 0x1f80
one:    dd 1.0
scratch: dd 0
resume:    dd 0
saved_esp: dd 0
ex_vec:    dd 0
ex_err:    dd 0
ex_eip:    dd 0
ex_cs:     dd 0
ex_usp:    dd 0
ex_uss:    dd 0
ex_frame:  dd 0
ex_eax:    dd 0
ex_ebx:    dd 0
ex_ecx:    dd 0
mf_mark:   dd 0
cg_esp:    dd 0
cg_cs:     dd 0
cg_ss:     dd 0
cg_frame:  times 6 dd 0
cg2_before: dd 0
cg2_esp:   dd 0
cg2_cs:    dd 0
jg_cs:     dd 0
se_cs:     dd 0
se_ss:     dd 0
se_esp:    dd 0
fails:     dd 0
t_tr:      dd 0
t_nt:      dd 0
t_ts:      dd 0
t_link:    dd 0
t_ebx:     dd 0
t_esp:     dd 0
t5_vec:    dd 0
t_esi:     dd 0
m_pass: db "PASS ", 0
m_fail: db "FAIL ", 0
m_vec:  db " vec=", 0
m_err:  db " err=", 0
m_eip:  db " eip=", 0
m_done: db "sys32: failures=", 0
