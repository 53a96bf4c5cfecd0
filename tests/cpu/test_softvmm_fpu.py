"""softvmm x87 / SSE / FXSAVE, driven directly: edge cases the random
differential tests reach rarely (NaN propagation, DAZ/FTZ, integer
indefinite, stack overflow, FXSAVE layout, #NM/#XM/#UD/#MF/#GP)."""

from __future__ import annotations

import struct

from bhive.accel.base import ExitCode, SegDesc, VmReg
from bhive.accel.softvmm.harness import Machine
from bhive.guestbuild import assemble

CODE = 0x10000
IDT = 0x20000
DATA = 0x30000
VECTORS = (6, 7, 13, 16, 19)
HANDLERS = 0x800      # handler for vector v at CODE + HANDLERS + 16 * v: r15 = v; hlt

CR4_BASE = 0x20 | 0x200 | 0x400    # PAE, OSFXSR, OSXMMEXCPT


def run(asm: str, cr4: int = CR4_BASE, cr0_set: int = 0, data: bytes = b"") -> Machine:
    # #XM (the last stub) also saves XMM0's low qword and MXCSR: what the faulting instruction left
    stubs = "".join(f"times {HANDLERS + 16 * v} - ($ - $$) db 0x90\n"
                    + (f"    movq rbx, xmm0\n    stmxcsr [{DATA + 0x20:#x}]\n" if v == 19 else "")
                    + f"    mov r15, {v}\n    hlt\n" for v in VECTORS)
    src = f"""
        mov r15, -1
        {asm}
        hlt
    {stubs}
    """
    m = Machine(1)
    m.write(CODE, assemble(src, 64, CODE))
    if data:
        m.write(DATA, data)
    m.long_mode()
    v = m.cpus[0]
    v.vm_set_register(VmReg.CR4, cr4)
    v.vm_set_register(VmReg.CR0, v.vm_get_register(VmReg.CR0) | cr0_set)
    for vec in VECTORS:
        addr = CODE + HANDLERS + 16 * vec
        m.write(IDT + vec * 16, struct.pack("<IIII", (addr & 0xFFFF) | 0x08 << 16,
                                            0x8E00 | (addr & 0xFFFF0000), addr >> 32, 0))
    m.write(0x40000, struct.pack("<QQQ", 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF))
    v.vm_set_desc(VmReg.IDTR, SegDesc(IDT, 256 * 16 - 1, 0))
    v.vm_set_desc(VmReg.GDTR, SegDesc(0x40000, 23, 0))
    e = m.run()
    assert e.code == ExitCode.HLT, e
    return m


def r(m: Machine, name: str) -> int:
    return m.cpus[0].vm_get_register(getattr(VmReg, name))


def vector(m: Machine) -> int:
    v = r(m, "R15")
    return -1 if v == (1 << 64) - 1 else v


def d2q(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


# ---------------------------------------------------------------- SSE

def test_cvtt_overflow_gives_integer_indefinite_and_ie():
    m = run(f"""
        mov rax, {d2q(3e10):#x}
        movq xmm0, rax
        cvttsd2si ebx, xmm0            ; out of int32 range
        cvttsd2si rcx, xmm0            ; fits in int64
        mov rax, {d2q(float('nan')):#x}
        movq xmm1, rax
        cvttsd2si rdx, xmm1            ; NaN -> 0x8000000000000000
        mov rax, {d2q(-2.75):#x}
        movq xmm2, rax
        cvttsd2si esi, xmm2            ; truncation toward zero
        stmxcsr [{DATA:#x}]
        mov edi, [{DATA:#x}]
    """)
    assert vector(m) == -1
    assert r(m, "RBX") == 0x80000000
    assert r(m, "RCX") == 30000000000
    assert r(m, "RDX") == 0x8000000000000000
    assert r(m, "RSI") == 0xFFFFFFFE
    assert r(m, "RDI") & 0x3F == 0x21          # IE | PE, masks untouched
    assert r(m, "RDI") & 0x1F80 == 0x1F80


def test_nan_propagation_and_compare_flags():
    qnan_a, snan_b = 0x7FF8000000000AAA, 0x7FF0000000000BBB
    m = run(f"""
        mov rax, {qnan_a:#x}
        movq xmm0, rax
        mov rax, {snan_b:#x}
        movq xmm1, rax
        movapd xmm2, xmm1
        addsd xmm2, xmm0               ; SNaN first: it is quieted and returned
        addsd xmm0, xmm1               ; QNaN first: first operand returned
        movq rbx, xmm2
        movq rcx, xmm0
        stmxcsr [{DATA:#x}]
        mov edx, [{DATA:#x}]
        ucomisd xmm0, xmm0             ; unordered: ZF PF CF
        pushfq
        pop rsi
    """)
    assert r(m, "RBX") == snan_b | (1 << 51)
    assert r(m, "RCX") == qnan_a
    assert r(m, "RDX") & 1                      # IE from the SNaN
    assert r(m, "RSI") & 0x8C5 == 0x45          # ZF PF CF set, OF SF clear


def test_daz_and_ftz():
    denorm = 0x0000000000000001
    m = run(f"""
        mov rax, {denorm:#x}
        movq xmm0, rax
        mov rax, {d2q(1.0):#x}
        movq xmm1, rax
        movapd xmm2, xmm0
        mulsd xmm2, xmm1               ; denormal kept (DAZ off)
        movq rbx, xmm2
        mov dword [{DATA:#x}], 0x1FC0  ; DAZ
        ldmxcsr [{DATA:#x}]
        movapd xmm3, xmm0
        mulsd xmm3, xmm1               ; denormal input read as zero
        movq rcx, xmm3
        mov rax, {d2q(2.0 ** -1000):#x}
        movq xmm4, rax
        mov dword [{DATA:#x}], 0x9F80  ; FTZ
        ldmxcsr [{DATA:#x}]
        mulsd xmm4, xmm4               ; tiny result flushed to zero
        movq rdx, xmm4
        stmxcsr [{DATA:#x}]
        mov esi, [{DATA:#x}]
    """)
    assert r(m, "RBX") == denorm
    assert r(m, "RCX") == 0
    assert r(m, "RDX") == 0
    assert r(m, "RSI") & 0x3F == 0x30          # UE | PE


def test_rounding_control_governs_conversions():
    out = []
    for rc in range(4):
        m = run(f"""
            mov dword [{DATA:#x}], {0x1F80 | rc << 13:#x}
            ldmxcsr [{DATA:#x}]
            mov rax, {d2q(-2.5):#x}
            movq xmm0, rax
            cvtsd2si rbx, xmm0
        """)
        out.append(r(m, "RBX") - (1 << 64))
    assert out == [-2, -3, -2, -2]             # nearest-even, down, up, toward zero


def test_unmasked_simd_exception_xm_or_ud_and_destination_kept():
    body = f"""
        mov dword [{DATA:#x}], 0x1D80  ; ZM clear
        ldmxcsr [{DATA:#x}]
        mov rax, {d2q(1.0):#x}
        movq xmm0, rax
        xorpd xmm1, xmm1
        divsd xmm0, xmm1
    """
    m = run(body)
    assert vector(m) == 19
    assert r(m, "RBX") == d2q(1.0)                                   # destination unchanged
    assert struct.unpack_from("<I", m.read(DATA + 0x20, 4))[0] == 0x1D80 | 0x4   # ZE recorded
    m = run(body, cr4=CR4_BASE & ~0x400)                             # CR4.OSXMMEXCPT = 0
    assert vector(m) == 6


def test_packed_integer_and_shuffles():
    m = run(f"""
        mov rax, 0x8001_7fff_0001_ffff
        movq xmm0, rax
        pshufd xmm1, xmm0, 0x44        ; low qword twice
        paddsw xmm1, xmm1              ; saturating: 0x8000 0x7fff 0x0002 0xfffe
        movq rbx, xmm1
        pmovmskb ecx, xmm1
        pcmpeqb xmm2, xmm2
        psrldq xmm2, 15
        movq rdx, xmm2
        pextrw esi, xmm1, 1
        movdqa [{DATA:#x}], xmm1
        movdqu [{DATA + 17:#x}], xmm1
        mov rdi, [{DATA + 25:#x}]
    """)
    assert vector(m) == -1
    assert r(m, "RBX") == 0x8000_7FFF_0002_FFFE
    assert r(m, "RCX") == 0x9393
    assert r(m, "RDX") == 0xFF
    assert r(m, "RSI") == 0x0002
    assert r(m, "RDI") == 0x8000_7FFF_0002_FFFE


def test_misaligned_movaps_gp_and_cr4_osfxsr_ud():
    m = run(f"movaps xmm0, [{DATA + 8:#x}]")
    assert vector(m) == 13
    m = run(f"movups xmm0, [{DATA + 8:#x}]")
    assert vector(m) == -1
    m = run("addps xmm0, xmm1", cr4=0x20)
    assert vector(m) == 6


def test_cr0_ts_raises_nm_for_sse_x87_fxsave_and_wait_with_mp():
    for insn in ("addps xmm0, xmm1", "fld1", f"fxsave [{DATA:#x}]", "fwait"):
        m = run(insn, cr0_set=0x8 | 0x2)        # TS, MP
        assert vector(m) == 7, insn
    m = run("fwait", cr0_set=0x8)                # TS without MP: WAIT does not fault
    assert vector(m) == -1


# ---------------------------------------------------------------- FXSAVE

def test_fxsave_layout_and_fxrstor_roundtrip():
    m = run(f"""
        fninit
        fld1
        fldpi
        mov dword [{DATA + 0x400:#x}], 0x3F80    ; RC=01
        ldmxcsr [{DATA + 0x400:#x}]
        mov rax, 0x1122334455667788
        movq xmm0, rax
        movq xmm15, rax
        fxsave [{DATA:#x}]
        fxsave64 [{DATA + 0x200:#x}]
        fninit
        pxor xmm0, xmm0
        fxrstor [{DATA:#x}]
        movq rbx, xmm0
        fstp tword [{DATA + 0x410:#x}]
        fxsave [{DATA + 0x208:#x}]               ; misaligned: #GP(0)
    """)
    assert vector(m) == 13
    img = m.read(DATA, 512)
    fcw, fsw, ftw, _, fop = struct.unpack_from("<HHBBH", img, 0)
    assert (fcw, fsw, ftw, fop) == (0x37F, 6 << 11, 0xC0, 0)
    assert struct.unpack_from("<I", img, 24)[0] == 0x3F80
    assert img[32:42] == bytes.fromhex("35c26821a2da0fc90040")     # ST0 = pi
    assert img[48:58] == bytes.fromhex("0000000000000080ff3f")     # ST1 = 1.0
    assert img[160:168] == struct.pack("<Q", 0x1122334455667788)
    assert img[160 + 15 * 16:168 + 15 * 16] == struct.pack("<Q", 0x1122334455667788)
    assert r(m, "RBX") == 0x1122334455667788
    assert m.read(DATA + 0x410, 10) == bytes.fromhex("35c26821a2da0fc90040")


# ---------------------------------------------------------------- x87

def test_x87_precision_control_and_sqrt_bit_exact():
    m = run(f"""
        fninit
        fld1
        fadd st0, st0
        fsqrt
        fstp tword [{DATA:#x}]
        mov word [{DATA + 0x100:#x}], 0x007F     ; PC = single
        fldcw [{DATA + 0x100:#x}]
        fld1
        mov dword [{DATA + 0x104:#x}], 3
        fidiv dword [{DATA + 0x104:#x}]
        fstp tword [{DATA + 0x10:#x}]
    """)
    assert m.read(DATA, 10) == struct.pack("<QH", 0xB504F333F9DE6484, 0x3FFF)
    assert m.read(DATA + 0x10, 10) == struct.pack("<QH", 0xAAAAAB0000000000, 0x3FFD)


def test_x87_stack_overflow_masked_and_unmasked():
    m = run("fninit\n" + "\n".join(["fld1"] * 9) + f"""
        fnstsw ax
        fstp tword [{DATA:#x}]
    """)
    assert r(m, "RAX") & 0xC7FF == 0x0241         # C1 (overflow), SF, IE; masked: no ES
    assert m.read(DATA, 10) == struct.pack("<QH", 0xC000000000000000, 0xFFFF)   # real indefinite
    m = run(f"""
        fninit
        mov word [{DATA + 0x100:#x}], 0x037E     ; IM clear
        fldcw [{DATA + 0x100:#x}]
        """ + "\n".join(["fld1"] * 9) + """
        fnstsw ax
        fwait
    """)
    assert vector(m) == 16                       # #MF at the next waiting instruction
    assert r(m, "RAX") & 0xC7FF == 0x82C1        # B, C1 (overflow), ES, SF, IE


def test_x87_integer_stores_compares_and_fxam():
    m = run(f"""
        fninit
        mov dword [{DATA:#x}], 40000
        fild dword [{DATA:#x}]
        fist word [{DATA + 0x10:#x}]             ; out of range: 0x8000, IE
        fnstsw ax
        mov ebx, eax
        fnclex
        fld1
        fcomi st0, st1                           ; 1 < 40000: CF
        setc cl
        fcompp
        fxam                                     ; empty: C3 C0
        fnstsw ax
    """)
    assert vector(m) == -1
    assert struct.unpack_from("<H", m.read(DATA + 0x10, 2))[0] == 0x8000
    assert r(m, "RBX") & 0x3F == 0x01
    assert r(m, "RCX") & 0xFF == 1
    assert r(m, "RAX") & 0x4700 == 0x4100


def test_fnstenv_fldenv_fnsave_frstor():
    m = run(f"""
        fninit
        fldz
        fld1
        mov word [{DATA + 0x300:#x}], 0x0272     ; PM, UM, OM, DM masked; ZM, IM unmasked; PC=53
        fldcw [{DATA + 0x300:#x}]
        fnstenv [{DATA:#x}]                      ; 28-byte protected-mode image, then masks all
        fnstcw [{DATA + 0x302:#x}]
        fnsave [{DATA + 0x40:#x}]                ; 108 bytes, then FNINIT
        fnstcw [{DATA + 0x304:#x}]
        frstor [{DATA + 0x40:#x}]
        fstp tword [{DATA + 0x100:#x}]           ; 1.0 back from FRSTOR
        fstp tword [{DATA + 0x110:#x}]           ; 0.0
        fnstsw ax
        fldenv [{DATA:#x}]
        fnstcw [{DATA + 0x306:#x}]
    """)
    assert vector(m) == -1
    env = m.read(DATA, 28)
    fcw, fsw, ftw = struct.unpack_from("<HxxHxxHxx", env, 0)
    assert fcw == 0x0272
    assert fsw == 6 << 11
    assert ftw == 0b0100_1111_1111_1111          # R7 zero (01), R6 valid (00), the rest empty (11)
    assert struct.unpack_from("<HH", m.read(DATA + 0x302, 4)) == (0x027F, 0x037F)   # masked; FNINIT
    save = m.read(DATA + 0x40, 108)
    assert struct.unpack_from("<H", save, 0)[0] == 0x027F and save[4:12] == env[4:12]
    assert save[28:38] == struct.pack("<QH", 1 << 63, 0x3FFF)       # ST0 = 1.0
    assert save[38:48] == bytes(10)                                  # ST1 = +0.0
    assert m.read(DATA + 0x100, 10) == struct.pack("<QH", 1 << 63, 0x3FFF)
    assert m.read(DATA + 0x110, 10) == bytes(10)
    assert r(m, "RAX") & 0x3800 == 0             # TOP back to 0 after two pops
    assert struct.unpack_from("<H", m.read(DATA + 0x306, 2))[0] == 0x0272


# ---------------------------------------------------------------- MMX

def test_mmx_aliases_x87_registers_tags_and_emms():
    m = run(f"""
        fninit
        fld1                                      ; TOP = 7
        mov rax, 0x00FF_7FFF_8000_0001
        movq mm3, rax
        paddsw mm3, mm3                           ; 0x00ff+.. saturating words
        movq rbx, mm3
        fxsave [{DATA:#x}]
        emms
        fxsave [{DATA + 0x200:#x}]
    """)
    assert vector(m) == -1
    assert r(m, "RBX") == 0x01FE_7FFF_8000_0002
    img = m.read(DATA, 512)
    fsw, ftw = struct.unpack_from("<HB", img, 2)
    assert fsw & 0x3800 == 0 and ftw == 0xFF          # TOP = 0, all valid
    assert img[32 + 16 * 3:42 + 16 * 3] == struct.pack("<QH", 0x01FE_7FFF_8000_0002, 0xFFFF)   # R3 = MM3
    assert m.read(DATA + 0x200, 5)[4] == 0            # EMMS: all empty
    m = run("paddb mm0, mm1", cr0_set=0x4)            # CR0.EM: #UD for MMX (x87 would be #NM)
    assert vector(m) == 6
    m = run("""
        fninit
        mov word [0x30100], 0x037E                ; IM clear
        fldcw [0x30100]
        fld1
        fld1
        fld1
        fld1
        fld1
        fld1
        fld1
        fld1
        fld1                                      ; unmasked #IS: ES pending
        paddb mm0, mm1                            ; #MF
    """)
    assert vector(m) == 16
