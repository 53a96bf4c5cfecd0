"""softvmm system-level behaviour driven in-process: TLB semantics (INVLPG
vs MOV CR3 vs global pages vs CR4.PGE), PAE PDPTE registers, accessed and
dirty bits, #PF error codes (RSVD, WP, NX, I/D), #DF / triple-fault rules
(SDM Vol 3A 6.15 Table 6-5), TF single-step, IST, SYSENTER/SYSEXIT, CPUID
and MSRs."""

from __future__ import annotations

import struct
import time

from bhive.accel import softvmm
from bhive.accel.base import ExitCode, SegDesc, SuspendHow, VmReg
from bhive.accel.softvmm.harness import Machine
from bhive.guestbuild import assemble

CODE = 0x10000
IDT = 0x20000
GDT = 0x40000
TSS = 0x41000
PT = 0x180000          # a 4K page table for linear 0x40000000.. (TLB slot 0x80)
PD = 0x17F000

# 64-bit runtime IDT builder: gate(vector, handler, ist) as a nasm macro
PRELUDE = f"""
%macro GATE 2-3 0
        mov edi, {IDT} + %1 * 16
        lea rax, [rel %2]
        mov word [rdi], ax
        mov word [rdi + 2], 0x08
        mov byte [rdi + 4], %3
        mov byte [rdi + 5], 0x8e
        shr rax, 16
        mov word [rdi + 6], ax
        shr rax, 16
        mov dword [rdi + 8], eax
        mov dword [rdi + 12], 0
%endmacro
"""


def machine(asm: str, tss_ist1: int = 0) -> Machine:
    m = Machine(1, ram_size=8 << 20)
    m.write(CODE, assemble(PRELUDE + asm, 64, CODE))
    m.long_mode()
    # GDT: null, 64-bit code, data, 64-bit TSS (2 slots)
    tss_desc_lo = (0x67) | ((TSS & 0xFFFFFF) << 16) | (0x89 << 40) | ((TSS >> 24) << 56)
    m.write(GDT, struct.pack("<QQQQQ", 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF, tss_desc_lo, 0))
    m.write(TSS, bytes(0x68))
    m.w64(TSS + 0x24, tss_ist1)
    v = m.cpus[0]
    v.vm_set_desc(VmReg.GDTR, SegDesc(GDT, 39, 0))
    v.vm_set_desc(VmReg.IDTR, SegDesc(IDT, 256 * 16 - 1, 0))
    v.vm_set_desc(VmReg.TR, SegDesc(TSS, 0x67, 0x8B, 0x18))
    return m


def reg(m: Machine, r: VmReg) -> int:
    return m.cpus[0].vm_get_register(r)


def map_4k(m: Machine, lin_index: int, phys: int, flags: int) -> None:
    """PTE for linear 0x40000000 + lin_index * 4K (PML4[0] -> PDPT[1] -> PD -> PT)."""
    m.w64(PT + 8 * lin_index, phys | flags)


def setup_4k_region(m: Machine) -> None:
    m.w64(0x2000 + 8 * 1, PD | 3)        # harness PDPT at 0x2000: entry 1 = 1G..2G
    m.w64(PD, PT | 3)
    for k in range(512):
        m.w64(PT + 8 * k, 0)


# ---------------------------------------------------------------- TLB

def test_tlb_invlpg_vs_cr3_vs_global_vs_pge_toggle():
    m = machine("""
        mov rax, cr4
        or rax, 0x80                    ; CR4.PGE
        mov cr4, rax
        mov rbx, [0x40000000]           ; X (global)  -> 0x200000
        mov rcx, [0x40001000]           ; Y (local)   -> 0x201000
        mov qword [0x180000], 0x202103  ; remap X -> 0x202000 (G, W, P)
        mov qword [0x180008], 0x203003  ; remap Y -> 0x203000
        mov r8, [0x40000000]            ; both stale: no invalidation yet
        mov r9, [0x40001000]
        mov rax, cr3
        mov cr3, rax                    ; flushes Y, not the global X
        mov r10, [0x40000000]
        mov r11, [0x40001000]
        invlpg [0x40000000]             ; flushes X (global too)
        mov r12, [0x40000000]
        mov qword [0x180000], 0x200103  ; X back to 0x200000
        mov rax, cr3
        mov cr3, rax
        mov r13, [0x40000000]           ; global: still 0x202000
        mov rax, cr4
        and rax, ~0x80                  ; PGE toggle: flushes everything
        mov cr4, rax
        mov r14, [0x40000000]
        cli
        hlt
    """)
    setup_4k_region(m)
    map_4k(m, 0, 0x200000, 0x103)
    map_4k(m, 1, 0x201000, 0x003)
    for phys, val in ((0x200000, 0xA1), (0x201000, 0xB1), (0x202000, 0xA2), (0x203000, 0xB2)):
        m.w64(phys, val)
    e = m.run()
    assert e.code == ExitCode.HLT, e
    got = [reg(m, r) for r in (VmReg.RBX, VmReg.RCX, VmReg.R8, VmReg.R9, VmReg.R10,
                               VmReg.R11, VmReg.R12, VmReg.R13, VmReg.R14)]
    assert got == [0xA1, 0xB1, 0xA1, 0xB1, 0xA1, 0xB2, 0xA2, 0xA2, 0xA1], [hex(g) for g in got]


def test_invlpg_flushes_every_slice_of_a_large_page():
    # linear 0x40000000 as one 2M page; touch two 4K slices, remap, INVLPG one address
    m = machine("""
        mov rbx, [0x40000000]
        mov rcx, [0x40105000]
        mov qword [0x17f000], 0x400083  ; 2M page -> 0x400000
        invlpg [0x40000000]             ; must drop the 0x40105000 slice too
        mov r8, [0x40105000]
        cli
        hlt
    """)
    m.w64(0x2000 + 8, PD | 3)
    m.w64(PD, 0x200000 | 0x83)
    m.w64(0x200000, 1)
    m.w64(0x305000, 2)
    m.w64(0x505000, 3)
    e = m.run()
    assert e.code == ExitCode.HLT, e
    assert (reg(m, VmReg.RBX), reg(m, VmReg.RCX), reg(m, VmReg.R8)) == (1, 2, 3)


def test_accessed_and_dirty_bits():
    m = machine("""
        mov rax, [0x40000000]           ; read: A in PDE and PTE, no D
        mov rbx, [0x180000]
        mov rcx, [0x17f000]
        mov qword [0x40000008], 5       ; write: D in the PTE
        mov rdx, [0x180000]
        cli
        hlt
    """)
    setup_4k_region(m)
    map_4k(m, 0, 0x200000, 0x003)
    e = m.run()
    assert e.code == ExitCode.HLT, e
    assert reg(m, VmReg.RBX) == 0x200000 | 0x23            # A, not D
    assert reg(m, VmReg.RCX) & 0x20                          # PDE accessed
    assert reg(m, VmReg.RDX) == 0x200000 | 0x63            # A and D
    assert m.r64(0x200008) == 5


# ---------------------------------------------------------------- #PF error codes

PF_RECORDER = """
        GATE 14, pf
        xor edi, edi
        mov rsi, 0x60000                ; records: (error code, CR2)
        mov rsp, 0x80000
        jmp tests
    pf: pop rax
        mov [rsi], rax
        mov rax, cr2
        mov [rsi + 8], rax
        add rsi, 16
        mov [rsp], r15                  ; resume address
        iretq
    tests:
"""


def test_page_fault_error_codes_rsvd_wp_nx_and_fetch():
    m = machine(PF_RECORDER + """
        mov ecx, 0xc0000080
        rdmsr
        or eax, 0x800                   ; EFER.NXE
        wrmsr
        lea r15, [rel t1]
        mov rax, [0x40000000]           ; not present, read
    t1: lea r15, [rel t2]
        mov qword [0x40001000], 1       ; read-only page, WP=1 at CPL0 -> protection, write
    t2: lea r15, [rel t3]
        mov rax, [0x40002000]           ; reserved bit 45 in the PTE -> RSVD
    t3: lea r15, [rel t4]
        mov rax, 0x40003000
        call rax                        ; NX page: fetch -> P, I/D
    t4: mov rax, cr0
        and rax, ~0x10000               ; WP=0: CPL0 writes to read-only pages succeed
        mov cr0, rax
        mov qword [0x40001000], 7
        cli
        hlt
    """)
    setup_4k_region(m)
    map_4k(m, 1, 0x201000, 0x001)
    map_4k(m, 2, 0x202000 | (1 << 45), 0x003)
    map_4k(m, 3, 0x203000, 0x003 | (1 << 63))
    e = m.run()
    assert e.code == ExitCode.HLT, e
    rec = [(m.r64(0x60000 + 16 * k), m.r64(0x60008 + 16 * k)) for k in range(4)]
    assert rec == [(0b00000, 0x40000000), (0b00011, 0x40001000), (0b01001, 0x40002000),
                   (0b10001, 0x40003000)], rec
    assert m.r64(0x201000) == 7


# ---------------------------------------------------------------- #DF / triple fault

def test_contributory_during_contributory_is_double_fault():
    # #GP's gate is not present -> #NP while delivering #GP -> #DF (error code 0)
    m = machine("""
        GATE 8, df
        mov rsp, 0x80000
        mov rax, 0x8000000000000000
        mov rbx, [rax]                  ; #GP
        hlt
    df: mov r8, [rsp]                   ; error code
        mov r9, 0xdf
        cli
        hlt
    """)
    e = m.run()
    assert e.code == ExitCode.HLT, e
    assert reg(m, VmReg.R9) == 0xDF and reg(m, VmReg.R8) == 0


def test_page_fault_while_delivering_page_fault_uses_ist_double_fault():
    # #PF handler's stack is unmapped -> #PF during #PF delivery -> #DF on IST1
    m = machine("""
        GATE 14, pf
        GATE 8, df, 1
        mov rsp, 0x7000000000           ; unmapped stack
        mov rax, 0x7100000000
        mov rax, [rax]                  ; #PF
        hlt
    pf: hlt
    df: mov r8, [rsp]
        mov r9, rsp
        mov r10, cr2
        cli
        hlt
    """, tss_ist1=0x90000)
    e = m.run()
    assert e.code == ExitCode.HLT, e
    assert reg(m, VmReg.R8) == 0
    assert reg(m, VmReg.R9) == 0x90000 - 48       # SS, RSP, RFLAGS, CS, RIP, error code
    assert reg(m, VmReg.R10) == 0x6FFFFFFFF8      # the second #PF: the push of SS


def test_benign_then_contributory_is_handled_serially():
    # INT3's gate is present-bit clear: #NP(vector 3) is delivered normally, not #DF
    m = machine("""
        GATE 11, np
        GATE 8, df
        GATE 3, df
        mov byte [0x20000 + 3 * 16 + 5], 0x0e      ; P = 0
        mov rsp, 0x80000
        int3
        hlt
    np: mov r8, [rsp]
        cli
        hlt
    df: mov r9, 0xdf
        cli
        hlt
    """)
    e = m.run()
    assert e.code == ExitCode.HLT, e
    assert reg(m, VmReg.R8) == 3 * 8 + 2 and reg(m, VmReg.R9) == 0


def test_fault_during_double_fault_is_triple_fault():
    m = machine("""
        GATE 13, gp
        mov word [0x20000 + 13 * 16 + 2], 0     ; null code selector in the #GP gate
        mov rsp, 0x80000
        mov rax, 0x8000000000000000
        mov rbx, [rax]                  ; #GP
        hlt
    gp: hlt
    """)
    # #GP while delivering #GP -> #DF, whose gate is absent -> triple fault
    e = m.run()
    assert e.code == ExitCode.SUSPENDED and e.how == SuspendHow.TRIPLEFAULT, e


# ---------------------------------------------------------------- single step

def test_tf_single_step_traps_after_each_instruction():
    m = machine("""
        GATE 1, db
        mov rsp, 0x80000
        xor r14, r14
        pushfq
        or qword [rsp], 0x100
        popfq                           ; sets TF: no trap after it
        nop
        cmp eax, eax                    ; cmp + jcc would be fused: still two traps
        je .n
    .n: pushfq
        and qword [rsp], ~0x100
        popfq                           ; TF set when it began: trap
        mov r13, 1                      ; not traced
        cli
        hlt
    db: inc r14
        mov r12, dr6
        iretq
    """)
    e = m.run()
    assert e.code == ExitCode.HLT, e
    assert reg(m, VmReg.R14) == 6                  # nop, cmp, je, pushfq, and, popfq
    assert reg(m, VmReg.R12) & 0x4000              # DR6.BS


# ---------------------------------------------------------------- PAE PDPTEs

def test_pae_pdptes_are_loaded_at_cr3_load():
    code = assemble(f"""
        bits 32
        mov eax, cr4
        or eax, 0x20                    ; PAE
        mov cr4, eax
        mov eax, 0x1000
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov ebx, [0x40000000]           ; via PDPTE1 -> PD 0x3000 -> 0x200000
        mov dword [0x1008], 0x4001      ; PDPTE1 -> PD 0x4000 (in memory only)
        invlpg [0x40000000]             ; drops the TLB entry, not the PDPTE registers
        mov ecx, [0x40000000]           ; still through the old PDPTE
        mov eax, 0x1000
        mov cr3, eax                    ; reloads the PDPTEs
        mov edx, [0x40000000]           ; now 0x400000
        cli
        hlt
    """, 32, CODE)
    m = Machine(1, ram_size=8 << 20)
    m.write(CODE, code)
    m.w64(0x1000, 0x2001)
    m.w64(0x1008, 0x3001)
    for k in range(512):
        m.w64(0x2000 + 8 * k, (k << 21) | 0x83)      # identity for 0..1G
    m.w64(0x3000, 0x200000 | 0x83)
    m.w64(0x4000, 0x400000 | 0x83)
    m.w64(0x200000, 0x1111)
    m.w64(0x400000, 0x2222)
    m.protected_mode()
    e = m.run()
    assert e.code == ExitCode.HLT, e
    assert [reg(m, r) & 0xFFFF for r in (VmReg.RBX, VmReg.RCX, VmReg.RDX)] == [0x1111, 0x1111, 0x2222]


def test_pae_reserved_pdpte_bit_faults_the_cr3_load():
    code = assemble(f"""
        bits 32
        mov eax, cr4
        or eax, 0x20
        mov cr4, eax
        mov eax, 0x1000
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov dword [0x1008], 0x3001 | 0x100   ; reserved bit 8
        mov eax, 0x1000
        mov cr3, eax                    ; #GP(0): no IDT -> triple fault
        cli
        hlt
    """, 32, CODE)
    m = Machine(1, ram_size=8 << 20)
    m.write(CODE, code)
    m.w64(0x1000, 0x2001)
    for k in range(512):
        m.w64(0x2000 + 8 * k, (k << 21) | 0x83)
    m.protected_mode()
    m.cpus[0].vm_set_desc(VmReg.IDTR, SegDesc(0, 0, 0))
    e = m.run()
    assert e.code == ExitCode.SUSPENDED and e.how == SuspendHow.TRIPLEFAULT, e
    assert reg(m, VmReg.RIP) != 0


# ---------------------------------------------------------------- system instructions

def test_sysenter_sysexit_64():
    m = machine("""
        mov ecx, 0x174
        mov eax, 0x08
        xor edx, edx
        wrmsr                           ; SYSENTER_CS: 0x08 -> user CS 0x2b, SS 0x33
        mov ecx, 0x175
        mov eax, 0x70000
        wrmsr
        mov ecx, 0x176
        lea rax, [rel kern]
        wrmsr
        lea rdx, [rel user]
        mov rcx, 0x50000
        o64 sysexit
    user:
        mov r8, cs
        mov r9, rsp
        sysenter
    kern:
        mov r10, cs
        mov r11, rsp
        cli
        hlt
    """)
    # user code / data at GDT slots 5 and 6 (0x28, 0x30)
    m.write(GDT + 0x28, struct.pack("<QQ", 0x00AFFA000000FFFF, 0x00CFF2000000FFFF))
    m.cpus[0].vm_set_desc(VmReg.GDTR, SegDesc(GDT, 55, 0))
    # user pages: the harness identity map is supervisor-only -> make it user
    for i in range(4):
        for j in range(512):
            m.w64(0x3000 + 0x1000 * i + 8 * j, ((i << 30) | (j << 21)) | 0x87)
    m.w64(0x1000, m.r64(0x1000) | 4)
    for i in range(4):
        m.w64(0x2000 + 8 * i, m.r64(0x2000 + 8 * i) | 4)
    e = m.run()
    assert e.code == ExitCode.HLT, e
    assert reg(m, VmReg.R8) == 0x2B and reg(m, VmReg.R9) == 0x50000
    assert reg(m, VmReg.R10) == 0x08 and reg(m, VmReg.R11) == 0x70000


def test_cpuid_tsc_leaves_and_tsc_rate():
    m = machine("""
        mov eax, 0x15
        cpuid
        mov r8d, eax
        mov r9d, ebx
        mov r10d, ecx
        mov eax, 0x80000008
        cpuid
        mov r11d, eax
        mov eax, 0x40000000
        cpuid
        mov r12d, ebx
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov r13, rax
        cli
        hlt
    """)
    t0 = softvmm.host_tsc()
    e = m.run()
    t1 = softvmm.host_tsc()
    assert e.code == ExitCode.HLT, e
    # leaf 0x15: TSC = crystal * EBX / EAX, the crystal being the LAPIC timer
    # clock (128 MiHz), and the TSC the calibrated host TSC frequency.  Linux
    # computes crystal_khz * EBX / EAX in 32 bits (native_calibrate_tsc): it
    # must not overflow, and must give the TSC to within 10 ppm.
    apic_bus = 128 << 20
    hz = m.vm.tsc_hz()
    assert 1_000_000_000 < hz < 10_000_000_000
    eax, ebx, ecx = reg(m, VmReg.R8), reg(m, VmReg.R9), reg(m, VmReg.R10)
    assert ecx == apic_bus and eax > 0
    crystal_khz = ecx // 1000
    assert crystal_khz * ebx < 1 << 32
    linux_tsc_khz = crystal_khz * ebx // eax
    assert abs(linux_tsc_khz * 1000 - hz) / hz < 10e-6, (eax, ebx, linux_tsc_khz, hz)
    assert reg(m, VmReg.R11) & 0xFFFF == 0x3028
    assert struct.pack("<I", reg(m, VmReg.R12)) == b"bhiv"
    # the TSC is the host's invariant TSC: the same clock in every process
    assert t0 <= reg(m, VmReg.R13) <= t1


def test_msrs_mtrr_pat_spec_ctrl():
    m = machine("""
        mov ecx, 0xfe
        rdmsr
        mov r8d, eax                    ; MTRRcap
        mov ecx, 0x2ff
        mov eax, 0xc06
        xor edx, edx
        wrmsr
        rdmsr
        mov r9d, eax
        mov ecx, 0x10a
        rdmsr
        mov r10d, eax                   ; ARCH_CAPABILITIES
        mov r12d, edx                   ; its high half: ITS_NO is bit 62
        mov ecx, 0x48
        mov eax, 1
        xor edx, edx                    ; SPEC_CTRL's high half is reserved (#GP)
        wrmsr
        rdmsr
        mov r11d, eax
        cli
        hlt
    """)
    e = m.run()
    assert e.code == ExitCode.HLT, e
    assert reg(m, VmReg.R8) == 0x508 and reg(m, VmReg.R9) == 0xC06
    assert reg(m, VmReg.R10) & 1 and reg(m, VmReg.R11) == 1
    assert reg(m, VmReg.R12) & (1 << 30)                       # ITS_NO (bit 62)
