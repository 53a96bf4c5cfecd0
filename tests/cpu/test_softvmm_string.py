"""REP MOVS / REP STOS in 64-bit mode, which softvmm runs a page at a time
(csrc/string.c): long runs across pages, a forward copy whose overlap the
guest's element order must replicate, and a fault part-way that leaves
RCX/RSI/RDI exactly at the faulting element."""

from __future__ import annotations

from bhive.accel.base import ExitCode, VmReg

from test_softvmm_sys import machine as sys_machine, map_4k, setup_4k_region

BUF = 0x200000          # 1 MiB of identity-mapped RAM to play in


def regs(m, *names):
    return [m.cpus[0].vm_get_register(getattr(VmReg, n)) for n in names]


def test_rep_stos_and_movs_across_pages():
    m = sys_machine(f"""
        mov rdi, {BUF + 0x7f8}         ; 8-aligned, 8 bytes before a page boundary
        mov rcx, 3000                  ; 24000 bytes: six pages
        mov rax, 0x1122334455667788
        rep stosq
        mov r8, rdi
        mov r9, rcx
        mov rsi, {BUF + 0x7f8}
        mov rdi, {BUF + 0x40003}       ; byte-misaligned destination
        mov rcx, 24000
        rep movsb
        mov r10, rsi
        mov r11, rdi
        hlt
    """)
    assert m.run().code == ExitCode.HLT
    pattern = (0x1122334455667788).to_bytes(8, "little")
    assert m.read(BUF + 0x7f8, 24000) == pattern * 3000
    assert m.read(BUF + 0x7f0, 8) == bytes(8) and m.read(BUF + 0x7f8 + 24000, 8) == bytes(8)
    assert m.read(BUF + 0x40003, 24000) == pattern * 3000
    assert regs(m, "R8", "R9", "R10", "R11") == [BUF + 0x7f8 + 24000, 0, BUF + 0x7f8 + 24000,
                                                 BUF + 0x40003 + 24000]


def test_overlapping_forward_movs_replicates_like_the_hardware():
    """dst = src + 1, byte elements, DF = 0: each element copies the one the
    previous element just wrote, so the first byte fills the range (a
    memmove would shift the bytes instead)."""
    m = sys_machine(f"""
        mov rsi, {BUF + 0x100}
        mov rdi, {BUF + 0x101}
        mov rcx, 9000
        rep movsb
        mov rsi, {BUF + 0x8000}
        mov rdi, {BUF + 0x8010}        ; qword elements, 2 elements apart
        mov rcx, 1000
        rep movsq
        hlt
    """)
    m.write(BUF + 0x100, bytes(range(1, 256)) * 40)
    m.write(BUF + 0x8000, b"".join(k.to_bytes(8, "little") for k in range(1, 1100)))
    assert m.run().code == ExitCode.HLT
    assert m.read(BUF + 0x100, 9001) == b"\x01" * 9001
    q = [int.from_bytes(m.read(BUF + 0x8000 + 8 * k, 8), "little") for k in range(1002)]
    assert q == [1 + (k % 2) for k in range(1002)]


def test_a_fault_part_way_leaves_the_registers_at_the_faulting_element():
    """REP STOSQ runs from a mapped 4K page into an unmapped one: #PF with
    CR2 = the first byte of the unmapped page, RDI there, RCX counting the
    elements not yet stored."""
    m = sys_machine("""
        GATE 14, pf
        mov rdi, 0x40000f00
        mov rcx, 100
        mov rax, -1
        rep stosq
        hlt
    pf: mov r12, rdi
        mov r13, rcx
        mov r14, cr2
        hlt
    """)
    setup_4k_region(m)
    map_4k(m, 0, 0x300000, 0x3)        # 0x40000000: mapped; 0x40001000: not present
    assert m.run().code == ExitCode.HLT
    assert regs(m, "R12", "R13", "R14") == [0x40001000, 100 - 0x100 // 8, 0x40001000]
    assert m.read(0x300f00, 0x100) == b"\xff" * 0x100
