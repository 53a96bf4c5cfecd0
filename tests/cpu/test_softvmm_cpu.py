"""softvmm CPU core driven directly, in-process: modes, exceptions, I/O and
MMIO completion, MSR exits, unhandled opcodes, self-modifying code."""

from __future__ import annotations

import struct

from bhive.accel.base import ExitCode, SuspendHow, VmReg
from bhive.accel.softvmm.harness import Machine
from bhive.guestbuild import assemble

CODE = 0x10000
IDT = 0x20000
DATA = 0x30000


def machine64(asm: str, ncpus: int = 1, **kw) -> Machine:
    m = Machine(ncpus, **kw)
    m.write(CODE, assemble(asm, 64, CODE))
    m.long_mode()
    return m


def set_idt64(m: Machine, vectors: dict[int, int], cpu: int = 0) -> None:
    """64-bit interrupt gates for `vectors` {vector: handler address}."""
    for vec, addr in vectors.items():
        lo = (addr & 0xFFFF) | (0x08 << 16)
        hi = (0x8E00) | (addr & 0xFFFF0000)
        m.write(IDT + vec * 16, struct.pack("<IIII", lo, hi, addr >> 32, 0))
    # GDT for the handlers' CS reloads by IRETQ: null, 64-bit code, data
    m.write(0x40000, struct.pack("<QQQ", 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF))
    from bhive.accel.base import SegDesc
    v = m.cpus[cpu]
    v.vm_set_desc(VmReg.IDTR, SegDesc(IDT, 256 * 16 - 1, 0))
    v.vm_set_desc(VmReg.GDTR, SegDesc(0x40000, 23, 0))


def reg(m: Machine, r: VmReg, cpu: int = 0) -> int:
    return m.cpus[cpu].vm_get_register(r)


# ---------------------------------------------------------------- basics

def test_alu_and_flags_basic():
    m = machine64("""
        mov rax, 0x7fffffffffffffff
        add rax, 1                 ; OF, SF
        seto bl
        sets bh
        mov ecx, 5
        sub ecx, 7                 ; CF, SF; ECX zero-extended
        setc dl
        mov rsi, -1
        mov esi, esi               ; zero-extension of 32-bit writes
        mov r8, 0x123456789
        shl r8, 4
        imul r9, r8, 3
        mov r10, 100
        xor edx, edx
        mov rax, 1000
        div r10
        movzx r11, byte [rel val]
        movsx r12, word [rel val]
        bsr r13, r8
        cli
        hlt
    val: dw 0x8081
    """)
    e = m.run()
    assert e.code == ExitCode.HLT
    assert reg(m, VmReg.RBX) & 0xFFFF == 0x0101
    assert reg(m, VmReg.RCX) == 0xFFFFFFFE
    assert reg(m, VmReg.RSI) == 0xFFFFFFFF
    assert reg(m, VmReg.R8) == 0x1234567890
    assert reg(m, VmReg.R9) == 0x1234567890 * 3
    assert reg(m, VmReg.RAX) == 10
    assert reg(m, VmReg.R11) == 0x81
    assert reg(m, VmReg.R12) == 0xFFFFFFFFFFFF8081
    assert reg(m, VmReg.R13) == 36


def test_stack_call_ret_and_strings():
    m = machine64(f"""
        mov rsp, 0x80000
        call f
        mov rdi, {DATA}
        mov rcx, 16
        mov al, 0xAB
        rep stosb
        mov rsi, {DATA}
        mov rdi, {DATA + 0x100}
        mov rcx, 2
        rep movsq
        cli
        hlt
    f:  push rbx
        mov rbx, 42
        mov r15, rbx
        pop rbx
        ret
    """)
    m.run()
    assert reg(m, VmReg.R15) == 42
    assert reg(m, VmReg.RSP) == 0x80000
    assert m.read(DATA, 17) == b"\xab" * 16 + b"\0"
    assert m.read(DATA + 0x100, 17) == b"\xab" * 16 + b"\0"


# ---------------------------------------------------------------- mode switches

def test_real_to_protected_to_long_mode():
    code = assemble(f"""
        bits 16
        cli
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7000
        lgdt [gdtd]
        mov eax, cr0
        or eax, 1
        mov cr0, eax
        jmp dword 0x08:pm
        bits 32
    pm: mov ax, 0x10
        mov ds, ax
        mov ss, ax
        mov dword [{DATA}], 0x32323232   ; proof we ran in protected mode
        mov eax, cr4
        or eax, 0x20
        mov cr4, eax
        mov eax, 0x1000
        mov cr3, eax
        mov ecx, 0xc0000080
        rdmsr
        or eax, 0x100
        wrmsr
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        jmp 0x18:lm
        bits 64
    lm: mov rax, 0x6464646464646464
        mov [{DATA + 8}], rax
        mov ebx, 0xfee00020
        mov ebx, [rbx]                   ; local APIC ID register through paging
        cli
        hlt
        align 8
    gdt: dq 0, 0x00cf9a000000ffff, 0x00cf92000000ffff, 0x00af9a000000ffff
    gdtd: dw 31
        dd gdt
    """, 16, 0x8000)
    m = Machine(1)
    m.build_identity_map(0x1000)
    m.write(0x8000, code)
    m.real_mode(0, 0x8000)
    e = m.run()
    assert e.code == ExitCode.HLT, e
    assert m.r32(DATA) == 0x32323232
    assert m.r64(DATA + 8) == 0x6464646464646464
    v = m.cpus[0]
    assert reg(m, VmReg.EFER) & 0x500 == 0x500          # LME | LMA
    assert reg(m, VmReg.CR0) & 0x80000001 == 0x80000001
    cs = v.vm_get_desc(VmReg.CS)
    assert cs.selector == 0x18 and cs.access & 0x2000    # L bit
    assert reg(m, VmReg.RBX) & 0xFFFFFFFF == 0           # APIC ID 0


# ---------------------------------------------------------------- exceptions

def test_exceptions_through_idt_with_error_codes():
    m = machine64(f"""
        mov rsp, 0x80000
        xor r14, r14
        mov rax, 0x8000000000000000   ; non-canonical -> #GP(0)
        mov rbx, [rax]
        mov rax, 0x7000000000         ; unmapped (PML4[14] empty) -> #PF
        mov qword [rax], 1
        xor edx, edx
        xor ecx, ecx
        div ecx                       ; #DE
        int 0x30                      ; software interrupt
        cli
        hlt
    ; handlers: record (vector, error code) and skip the faulting instruction
    gp: mov r8, [rsp]                 ; error code
        mov r9, 13
        add qword [rsp + 8], 3        ; mov rbx, [rax] is 3 bytes
        add rsp, 8
        inc r14
        iretq
    pf: mov r10, [rsp]
        mov r11, cr2
        add qword [rsp + 8], 7        ; mov qword [rax], 1 is 7 bytes
        add rsp, 8
        inc r14
        iretq
    de: add qword [rsp], 2            ; div ecx is 2 bytes
        mov r12, 0xde
        inc r14
        iretq
    sw: mov r13, 0x30
        inc r14
        iretq
    """)
    base = CODE
    labels = _labels(m)
    set_idt64(m, {13: base + labels["gp"], 14: base + labels["pf"], 0: base + labels["de"],
                  0x30: base + labels["sw"]})
    e = m.run()
    assert e.code == ExitCode.HLT, e
    assert reg(m, VmReg.R14) == 4
    assert reg(m, VmReg.R8) == 0 and reg(m, VmReg.R9) == 13
    assert reg(m, VmReg.R10) == 0b10            # not present, write, supervisor
    assert reg(m, VmReg.R11) == 0x7000000000
    assert reg(m, VmReg.CR2) == 0x7000000000
    assert reg(m, VmReg.R12) == 0xDE
    assert reg(m, VmReg.R13) == 0x30
    assert reg(m, VmReg.RSP) == 0x80000


def _labels(m: Machine) -> dict[str, int]:
    # The handlers are located by their first instruction bytes.
    text = m.read(CODE, 0x200)
    pats = {
        "gp": bytes.fromhex("4c8b0424"),        # mov r8, [rsp]
        "pf": bytes.fromhex("4c8b1424"),        # mov r10, [rsp]
        "de": bytes.fromhex("48830424"),        # add qword [rsp], 2
        "sw": bytes.fromhex("41bd30000000"),    # mov r13d, 0x30
    }
    return {k: text.index(p) for k, p in pats.items()}


def test_real_mode_int_uses_ivt():
    code = assemble("""
        bits 16
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7000
        mov word [0x21 * 4], handler
        mov word [0x21 * 4 + 2], 0
        int 0x21
        cli
        hlt
    handler:
        mov bx, 0x1234
        iret
    """, 16, 0x8000)
    m = Machine(1)
    m.write(0x8000, code)
    m.real_mode(0, 0x8000)
    assert m.run().code == ExitCode.HLT
    assert reg(m, VmReg.RBX) == 0x1234
    assert reg(m, VmReg.RSP) == 0x7000


def test_triple_fault_suspends():
    m = machine64("""
        ud2
    """)
    from bhive.accel.base import SegDesc
    m.cpus[0].vm_set_desc(VmReg.IDTR, SegDesc(0, 0, 0))   # empty IDT: #UD -> #GP -> #DF -> shutdown
    e = m.run()
    assert e.code == ExitCode.SUSPENDED
    assert e.how == SuspendHow.TRIPLEFAULT


def test_unhandled_opcode_reports_bytes():
    m = machine64("""
        nop
        pshufb xmm0, xmm1   ; SSSE3: not implemented yet (nor advertised)
    """)
    e = m.run()
    assert e.code == ExitCode.UNHANDLED
    assert e.insn.startswith(b"\x66\x0f\x38\x00")
    assert e.rip == CODE + 1


def test_ud2_is_an_exception_not_unhandled():
    m = machine64("""
        mov rsp, 0x80000
        ud2
        cli
        hlt
    h:  add qword [rsp], 2
        mov r15, 6
        iretq
    """)
    text = m.read(CODE, 0x100)
    set_idt64(m, {6: CODE + text.index(bytes.fromhex("4883042402"))})
    assert m.run().code == ExitCode.HLT
    assert reg(m, VmReg.R15) == 6


# ---------------------------------------------------------------- port I/O

def test_in_loop_runs_exactly_n_iterations_and_merges_rax():
    m = machine64("""
        mov rax, 0x1122334455667788
        mov ecx, 7
    l:  in al, 0x60
        inc rbx
        dec ecx
        jnz l
        mov r8, rax
        mov rax, 0x1122334455667788
        mov dx, 0x61
        in ax, dx
        mov r9, rax
        mov rax, 0x1122334455667788
        in eax, 0x62
        cli
        hlt
    """)
    values = iter(range(0x10, 0x100))
    m.port_in = lambda cpu, port, size: {0x60: next(values), 0x61: 0xBEEF, 0x62: 0xCAFEF00D}[port]
    e = m.run()
    assert e.code == ExitCode.HLT
    assert reg(m, VmReg.RBX) == 7                   # exactly N iterations
    assert reg(m, VmReg.R8) == 0x1122334455667716   # AL merged, last value 0x16
    assert reg(m, VmReg.R9) == 0x112233445566BEEF   # AX merged
    assert reg(m, VmReg.RAX) == 0xCAFEF00D          # EAX zero-extends


def test_inout_exit_fields_and_rip_advance():
    m = machine64("""
        mov eax, 0x12345678
        mov dx, 0x3f8
        out dx, al
        out 0x80, eax
        in al, dx
        cli
        hlt
    """)
    v = m.cpus[0]
    e = v.vm_run()
    assert (e.code, e.port, e.size, e.is_in, e.data) == (ExitCode.INOUT, 0x3F8, 1, False, 0x78)
    assert e.inst_length == 1
    rip = e.rip
    v.vm_complete_inout(e)
    assert reg(m, VmReg.RIP) == rip + 1
    e = v.vm_run()
    assert (e.port, e.size, e.data) == (0x80, 4, 0x12345678) and e.inst_length == 2
    v.vm_complete_inout(e)
    e = v.vm_run()
    assert e.is_in and e.size == 1
    v.vm_complete_inout(e, 0x5A)
    assert reg(m, VmReg.RAX) == 0x1234565A
    assert reg(m, VmReg.RIP) == e.rip + 1
    assert v.vm_run().code == ExitCode.HLT


def test_rep_outs_and_ins_exit_per_element():
    m = machine64(f"""
        mov rsi, msg
        mov dx, 0x3f8
        mov ecx, 5
        rep outsb
        mov rdi, {DATA}
        mov ecx, 3
        mov dx, 0x70
        rep insw
        cli
        hlt
    msg: db "hello"
    """)
    vals = iter([0x1111, 0x2222, 0x3333])
    m.port_in = lambda cpu, port, size: next(vals)
    assert m.run().code == ExitCode.HLT
    assert m.serial() == "hello"
    assert m.read(DATA, 6) == struct.pack("<HHH", 0x1111, 0x2222, 0x3333)
    assert reg(m, VmReg.RCX) == 0


# ---------------------------------------------------------------- MMIO

def test_mmio_read_write_and_rmw():
    m = machine64("""
        mov rbx, 0xc0001000
        mov eax, [rbx]              ; MMIO read
        mov r8, rax
        mov dword [rbx + 4], 0xdeadbeef
        add dword [rbx + 8], 5      ; read, then write of value + 5
        mov r9w, [rbx + 12]
        cli
        hlt
    """)
    reads = {0xC0001000: 0x11223344, 0xC0001008: 100, 0xC000100C: 0xABCD}

    def mmio(cpu, gpa, size, is_write, value):
        m.mmio_log.append((gpa, size, is_write, value))
        return 0 if is_write else reads[gpa]
    m.mmio = mmio
    assert m.run().code == ExitCode.HLT
    assert reg(m, VmReg.R8) == 0x11223344
    assert reg(m, VmReg.R9) & 0xFFFF == 0xABCD
    assert m.mmio_log == [
        (0xC0001000, 4, False, 0),
        (0xC0001004, 4, True, 0xDEADBEEF),
        (0xC0001008, 4, False, 0),
        (0xC0001008, 4, True, 105),
        (0xC000100C, 2, False, 0),
    ]


# ---------------------------------------------------------------- MSRs, CPUID

def test_msr_exits_and_known_msrs():
    m = machine64("""
        mov ecx, 0xc0000100
        mov eax, 0x1000
        xor edx, edx
        wrmsr                       ; FS base: handled in C
        mov rbx, [fs:0x10]
        mov ecx, 0x12345
        rdmsr                       ; unknown: exit
        mov r8, rax
        mov r9, rdx
        cli
        hlt
    """)
    m.w64(0x1010, 0xF5F5)
    v = m.cpus[0]
    e = v.vm_run()
    assert e.code == ExitCode.RDMSR and e.msr == 0x12345
    v.vm_complete_msr(e, 0xAABBCCDD11223344)
    assert v.vm_run().code == ExitCode.HLT
    assert reg(m, VmReg.RBX) == 0xF5F5
    assert reg(m, VmReg.R8) == 0x11223344 and reg(m, VmReg.R9) == 0xAABBCCDD
    assert reg(m, VmReg.FS_BASE) == 0x1000


def test_cpuid_topology():
    m = Machine(3)
    v = m.cpus[2]
    eax, ebx, ecx, edx = v.cpuid(0)
    assert struct.pack("<III", ebx, edx, ecx) == b"GenuineIntel"
    assert (v.cpuid(1)[1] >> 24) == 2
    eax, ebx, ecx, edx = v.cpuid(0xB, 1)
    assert ebx & 0xFFFF == 3 and edx == 2 and (ecx >> 8) & 0xFF == 2
    assert v.cpuid(0x80000001)[3] & (1 << 29)      # long mode


# ---------------------------------------------------------------- self-modifying code

def test_self_modifying_code():
    m = machine64("""
        mov ecx, 3
    again:
        mov eax, 1                 ; patched below to mov eax, 2
    target equ $ - 4
        add ebx, eax
        mov byte [rel target], 2
        dec ecx
        jnz again
        cli
        hlt
    """)
    assert m.run().code == ExitCode.HLT
    assert reg(m, VmReg.RBX) == 1 + 2 + 2


def test_kick_returns_bogus():
    import threading
    import time
    m = machine64("""
    l:  jmp l
    """)
    threading.Timer(0.05, lambda: m.vm.kick(0)).start()
    t = time.time()
    e = m.cpus[0].vm_run()
    assert e.code == ExitCode.BOGUS
    assert time.time() - t < 2
    assert m.cpus[0].stats()["instructions"] > 1000


# ---------------------------------------------------------------- privilege transitions

def test_syscall_sysret_and_user_mode_page_fault():
    """Ring 0 -> SYSRET to ring 3 -> SYSCALL back; a ring-3 access to a
    supervisor page raises #PF with U=1 through the TSS RSP0 stack."""
    m = Machine(1)
    m.build_identity_map(0x1000)
    # make the 2 MiB page at 0x200000 user-accessible (PDE U bit); the rest stays supervisor
    m.w64(0x3000 + 8, 0x200000 | 0x87)
    m.w64(0x1000, 0x2000 | 7)          # U on the upper levels too
    m.w64(0x2000, 0x3000 | 7)
    kernel = assemble("""
        bits 64
        ; STAR: SYSCALL CS=0x08 (SS=0x10), SYSRET base 0x18 (SS=0x20, 64-bit CS=0x28)
        mov ecx, 0xc0000081
        xor eax, eax
        mov edx, 0x00180008
        wrmsr
        mov ecx, 0xc0000082           ; LSTAR
        mov eax, syscall_entry
        xor edx, edx
        wrmsr
        mov ecx, 0xc0000080
        rdmsr
        or eax, 1                     ; SCE
        wrmsr
        mov ecx, 0x200000             ; user entry
        mov r11, 0x202
        o64 sysret
    syscall_entry:
        mov r12, rcx                  ; user return address
        mov r13, 0x5c
        mov ax, ss
        movzx r14, ax
        cli
        hlt
    pf_handler:
        mov r8, [rsp]                 ; error code
        mov r9, [rsp + 16]            ; CS of the faulting code
        mov r10, cr2
        add qword [rsp + 8], 3        ; skip mov rax, [rbx]
        add rsp, 8
        iretq
    """, 64, 0x10000)
    user = assemble("""
        bits 64
        mov rbx, 0x10000              ; supervisor page
        mov rax, [rbx]                ; #PF(P|U)
        mov r15, 0x77
        syscall
    """, 64, 0x200000)
    m.write(0x10000, kernel)
    m.write(0x200000, user)
    # GDT: null, k-code64, k-data, (sysret base), u-data, u-code64, TSS (16 bytes)
    gdt = [0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF, 0, 0x00CFF2000000FFFF, 0x00AFFA000000FFFF]
    tss_base, tss_lim = 0x50000, 0x67
    tss_lo = (tss_lim & 0xFFFF) | ((tss_base & 0xFFFFFF) << 16) | (0x89 << 40) | ((tss_base >> 24) << 56)
    gdt += [tss_lo, tss_base >> 32]
    m.write(0x40000, struct.pack(f"<{len(gdt)}Q", *gdt))
    m.w64(tss_base + 4, 0x90000)       # RSP0
    m.long_mode(paging=False)
    from bhive.accel.base import SegDesc
    v = m.cpus[0]
    v.vm_set_desc(VmReg.GDTR, SegDesc(0x40000, len(gdt) * 8 - 1, 0))
    v.vm_set_desc(VmReg.TR, SegDesc(tss_base, tss_lim, 0x8B, 0x30))
    idt_h = 0x10000 + kernel.index(bytes.fromhex("4c8b0424"))
    lo = (idt_h & 0xFFFF) | (0x08 << 16)
    hi = 0x8E00 | (idt_h & 0xFFFF0000)
    m.write(IDT + 14 * 16, struct.pack("<IIII", lo, hi, 0, 0))
    v.vm_set_desc(VmReg.IDTR, SegDesc(IDT, 256 * 16 - 1, 0))
    e = m.run()
    assert e.code == ExitCode.HLT, e
    assert reg(m, VmReg.R8) == 0b101                 # present, read, user
    assert reg(m, VmReg.R9) == 0x2B                  # ring-3 CS (0x28 | 3)
    assert reg(m, VmReg.R10) == 0x10000
    assert reg(m, VmReg.R15) == 0x77
    assert reg(m, VmReg.R12) == 0x200000 + user.index(b"\x0f\x05") + 2
    assert reg(m, VmReg.R14) == 0x10                 # kernel SS after SYSCALL


def test_legacy_32bit_pusha_popa_bcd_xlat():
    m = Machine(1)
    m.write(0x10000, assemble("""
        bits 32
        mov eax, 0x11111111
        mov ebx, 0x22222222
        mov ecx, 0x33333333
        pusha
        xor eax, eax
        xor ebx, ebx
        xor ecx, ecx
        popa
        mov esi, eax
        mov al, 0x79
        add al, 0x35
        daa                          ; 0x79 + 0x35 = 114 BCD -> AL=0x14, CF=1
        setc dl
        mov edi, eax
        mov ebx, table
        mov al, 3
        xlatb
        mov ebp, eax
        cli
        hlt
    table: db 10, 11, 12, 13, 14
    """, 32, 0x10000))
    m.protected_mode()
    assert m.run().code == ExitCode.HLT
    assert reg(m, VmReg.RSI) == 0x11111111
    assert reg(m, VmReg.RDI) & 0xFF == 0x14 and reg(m, VmReg.RDX) & 0xFF == 1
    assert reg(m, VmReg.RBP) & 0xFF == 13
    assert reg(m, VmReg.RSP) == 0x80000


def test_cross_vcpu_code_modification():
    """vCPU 1 patches an instruction vCPU 0 is looping over; vCPU 0 sees it."""
    import threading
    m = Machine(2)
    m.write(CODE, assemble("""
    spin:
        mov eax, 0                   ; vCPU 1 patches the immediate to 1
    imm equ $ - 4
        test eax, eax
        jz spin
        out 0x80, al
        cli
        hlt
    patcher:
        mov ecx, 100000
    delay:
        dec ecx
        jnz delay
        mov byte [rel imm], 1
        cli
        hlt
    """, 64, CODE))
    code = m.read(CODE, 0x40)
    m.long_mode(0)
    m.long_mode(1, rip=CODE + code.index(bytes.fromhex("b9a0860100")), paging=False)
    t = threading.Thread(target=m.run, args=(1,))
    t.start()
    e = m.run(0, stop_on=(ExitCode.HLT, ExitCode.INOUT))
    t.join(10)
    assert e.code == ExitCode.INOUT and e.port == 0x80


def test_protected_mode_32bit_idt_error_code():
    m = Machine(1)
    code = assemble("""
        bits 32
        mov ax, 0x1233
        mov ds, ax                   ; beyond the GDT limit: #GP(0x1230)
        mov ax, 0x10
        mov ds, ax
        xor edx, edx
        xor ecx, ecx
        mov eax, 5
        div ecx                      ; #DE, no error code
        cli
        hlt
    gp: pop esi                      ; error code
        add dword [esp], 2           ; skip mov ds, ax
        iretd
    de: add dword [esp], 2
        mov edi, 0xde
        iretd
    """, 32, 0x10000)
    m.write(0x10000, code)
    gdt = [0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF]
    m.write(0x40000, struct.pack("<3Q", *gdt))
    gp = 0x10000 + code.index(bytes.fromhex("5e83042402"))
    de = 0x10000 + code.index(bytes.fromhex("83042402bf"))
    for vec, h in ((13, gp), (0, de)):
        m.write(IDT + vec * 8, struct.pack("<II", (h & 0xFFFF) | (0x08 << 16), 0x8E00 | (h & 0xFFFF0000)))
    m.protected_mode()
    from bhive.accel.base import SegDesc
    v = m.cpus[0]
    v.vm_set_desc(VmReg.GDTR, SegDesc(0x40000, 23, 0))
    v.vm_set_desc(VmReg.IDTR, SegDesc(IDT, 256 * 8 - 1, 0))
    assert m.run().code == ExitCode.HLT
    assert reg(m, VmReg.RSI) == 0x1230
    assert reg(m, VmReg.RDI) == 0xDE
    assert reg(m, VmReg.RSP) == 0x80000
    assert v.vm_get_desc(VmReg.DS).selector == 0x10
