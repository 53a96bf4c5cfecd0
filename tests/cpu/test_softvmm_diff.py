"""Differential test of the integer ALU: the host CPU is the oracle.

Each case is a tiny snippet (load operands, one instruction, capture
registers and RFLAGS) assembled once, run natively through ctypes in an
executable mapping and in softvmm; results and the architecturally
defined flags must match.
"""

from __future__ import annotations

import ctypes
import mmap
import random
import struct

import pytest

from bhive.accel.base import ExitCode, VmReg
from bhive.accel.softvmm.harness import Machine
from bhive.guestbuild import assemble

CF, PF, AF, ZF, SF, OF = 1, 4, 0x10, 0x40, 0x80, 0x800
ALL = CF | PF | AF | ZF | SF | OF

REGS = {8: ("al", "bl", "cl", "dl"), 16: ("ax", "bx", "cx", "dx"),
        32: ("eax", "ebx", "ecx", "edx"), 64: ("rax", "rbx", "rcx", "rdx")}

# (template, defined-flags(bits, count) or mask); {a},{b} are rax/rbx-family names at the size
BINARY = {
    "add": ALL, "adc": ALL, "sub": ALL, "sbb": ALL, "cmp": ALL,
    "and": ALL & ~AF, "or": ALL & ~AF, "xor": ALL & ~AF, "test": ALL & ~AF,
}
UNARY = {"inc": ALL & ~CF | 0, "dec": ALL & ~CF | 0, "neg": ALL, "not": 0}
SHIFTS = ("shl", "shr", "sar", "rol", "ror", "rcl", "rcr")

# Native snippet: rdi = in/out buffer (rax, rbx, rcx, rdx, rflags).
NATIVE_PRO = """
    push rbx
    push rdi
    push qword [rdi + 32]
    popfq
    mov rax, [rdi]
    mov rbx, [rdi + 8]
    mov rcx, [rdi + 16]
    mov rdx, [rdi + 24]
"""
NATIVE_EPI = """
    pushfq
    pop rsi
    mov rdi, [rsp]
    mov [rdi], rax
    mov [rdi + 8], rbx
    mov [rdi + 16], rcx
    mov [rdi + 24], rdx
    mov [rdi + 32], rsi
    pop rdi
    pop rbx
    ret
"""


class Native:
    def __init__(self):
        self.mem = mmap.mmap(-1, 1 << 16, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.mem))
        self.out = ctypes.create_string_buffer(64)

    def run(self, code: bytes, regs: tuple, memval: int = 0) -> tuple:
        self.mem[:len(code)] = code
        struct.pack_into("<6Q", self.out, 0, *regs, memval)
        fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(self.addr)
        fn(ctypes.addressof(self.out))
        return struct.unpack_from("<6Q", self.out.raw)


def cases(seed=1234, n=60):
    rnd = random.Random(seed)
    interesting = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000,
                   0xFFFFFFFF, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000, 0xFFFFFFFFFFFFFFFF]

    def val():
        return rnd.choice(interesting) if rnd.random() < 0.5 else rnd.getrandbits(64)
    out = []
    for bits in (8, 16, 32, 64):
        a, b, c_, d = REGS[bits]
        for op, mask in BINARY.items():
            for _ in range(n):
                out.append((f"{op} {a}, {b}", mask, val(), val(), 0, val(), rnd.choice([0, 1])))
            out.append((f"{op} {a}, 0x5a", mask, val(), val(), 0, val(), 1))
        for op, mask in UNARY.items():
            for _ in range(n // 2):
                out.append((f"{op} {a}", mask | (0 if op in ("inc", "dec") else 0), val(), val(), 0, val(),
                            rnd.choice([0, 1])))
        for op in SHIFTS:
            for cnt in (0, 1, 2, 7, bits - 1, bits, bits + 1, 33, 63, 64, 200):
                mask = CF | (OF if (cnt & (63 if bits == 64 else 31)) == 1 else 0)
                if op in ("shl", "shr", "sar"):
                    mask |= SF | ZF | PF
                if op in ("rcl", "rcr") and bits < 32:
                    mask = (CF | (OF if cnt == 1 else 0))
                if (cnt & (63 if bits == 64 else 31)) == 0:
                    mask = ALL
                if op in ("shl", "shr") and bits < 32 and (cnt & 31) > bits:
                    mask &= ~CF    # CF undefined when count > operand size
                out.append((f"{op} {a}, cl", mask, val(), val(), cnt, val(), rnd.choice([0, 1])))
        if bits > 8:
            for _ in range(n // 2):
                out.append((f"imul {a}, {b}", CF | OF, val(), val(), 0, val(), 0))
                out.append((f"mul {b}", CF | OF, val(), val(), 0, val(), 0))
                out.append((f"imul {b}", CF | OF, val(), val(), 0, val(), 0))
                out.append((f"bt {a}, {b}", CF, val(), val(), 0, val(), 0))
                out.append((f"bts {a}, {b}", CF, val(), val(), 0, val(), 0))
                out.append((f"btr {a}, {b}", CF, val(), val(), 0, val(), 0))
                out.append((f"btc {a}, {b}", CF, val(), val(), 0, val(), 0))
                out.append((f"bsf {a}, {b}", ZF, val(), val() | 1 << rnd.randrange(bits), 0, val(), 0))
                out.append((f"bsr {a}, {b}", ZF, val(), val() | 1 << rnd.randrange(bits), 0, val(), 0))
                out.append((f"xadd {a}, {b}", ALL, val(), val(), 0, val(), 0))
                out.append((f"cmpxchg {c_}, {b}", ALL, val(), val(), val(), val(), 0))
                out.append((f"movsx rdx, {b[:-1] + 'l' if bits == 16 else 'bl'}", 0, val(), val(), 0, val(), 0))
                cnt = rnd.choice([1, 3, bits - 1])
                out.append((f"shld {a}, {b}, {cnt}", CF | SF | ZF | PF | (OF if cnt == 1 else 0),
                            val(), val(), 0, val(), 0))
                out.append((f"shrd {a}, {b}, {cnt}", CF | SF | ZF | PF | (OF if cnt == 1 else 0),
                            val(), val(), 0, val(), 0))
            for _ in range(n // 4):
                # division without #DE: small dividend high half
                out.append((f"div {b}", 0, val(), val() | (1 << (bits - 1)), 0, 0, 0))
                out.append((f"idiv {b}", 0, rnd.getrandbits(bits - 2), rnd.getrandbits(bits - 3) + 3, 0, 0, 0))
        for _ in range(n // 4):
            out.append(("setg dl", 0, val(), val(), 0, val(), 0))
    return out


MEMSZ = {8: "byte", 16: "word", 32: "dword", 64: "qword"}


def mem_cases(seed=99, n=25):
    """Memory-operand forms (plain, LOCKed, RMW); the operand lives at [rdi + 40]."""
    rnd = random.Random(seed)

    def val():
        return rnd.getrandbits(64)
    out = []
    for bits in (8, 16, 32, 64):
        a, b, c_, d = REGS[bits]
        mem = f"{MEMSZ[bits]} [rdi + 40]"
        for op, mask in BINARY.items():
            forms = [f"{op} {mem}, {b}", f"{op} {b}, {mem}", f"{op} {mem}, 0x5a"]
            if op not in ("cmp", "test"):
                forms.append(f"lock {op} {mem}, {b}")
            for form in forms:
                for _ in range(n):
                    out.append((form, mask, val(), val(), 0, val(), rnd.choice([0, 1]), val()))
        for form, mask in ((f"inc {mem}", ALL & ~CF), (f"lock dec {mem}", ALL & ~CF), (f"neg {mem}", ALL),
                           (f"lock not {mem}", 0), (f"xchg {mem}", None), (f"lock xadd {mem}, {b}", ALL),
                           (f"lock cmpxchg {mem}, {b}", ALL), (f"shl {mem}, 1", ALL & ~AF),
                           (f"sar {mem}, cl", CF | SF | ZF | PF)):
            if form.startswith("xchg"):
                form, mask = f"xchg {mem}, {b}", 0
            for _ in range(n):
                m_ = val()
                a_ = m_ if rnd.random() < 0.3 else val()      # cmpxchg: sometimes equal
                out.append((form, mask, a_, val(), rnd.choice([1, 3]), val(), rnd.choice([0, 1]), m_))
        if bits > 8:
            for _ in range(n):
                out.append((f"lock bts {mem}, {rnd.randrange(bits)}", CF, val(), val(), 0, val(), 0, val()))
                out.append((f"cmovl {b}, {mem}", 0, val(), val(), 0, val(), 0, val()))
                out.append((f"imul {b}, {mem}, 7", CF | OF, val(), val(), 0, val(), 0, val()))
        out.append((f"movzx rdx, byte [rdi + 40]", 0, val(), val(), 0, val(), 0, val()))
        out.append((f"movsx rdx, word [rdi + 41]", 0, val(), val(), 0, val(), 0, val()))
    return out


@pytest.fixture(scope="module")
def native():
    return Native()


def test_alu_matches_host(native):
    m = Machine(1)
    m.build_identity_map(0x1000)
    v = m.cpus[0]
    failures = []
    asm_cache: dict[str, tuple[bytes, bytes]] = {}
    for insn, mask, a, b, cnt, d, cf in cases():
        flags = 0x202 | cf
        if insn not in asm_cache:
            asm_cache[insn] = (assemble(NATIVE_PRO + insn + NATIVE_EPI, 64, 0),
                               assemble(insn + "\npushfq\npop rsi\ncli\nhlt\n", 64, 0x10000))
        host_code, guest_code = asm_cache[insn]
        host = native.run(host_code, (a, b, cnt, d, flags))
        m.write(0x10000, guest_code)
        m.long_mode(paging=False)
        for r, x in ((VmReg.RAX, a), (VmReg.RBX, b), (VmReg.RCX, cnt), (VmReg.RDX, d),
                     (VmReg.RFLAGS, flags)):
            v.vm_set_register(r, x)
        e = v.vm_run()
        assert e.code == ExitCode.HLT, (insn, e)
        got = (v.vm_get_register(VmReg.RAX), v.vm_get_register(VmReg.RBX),
               v.vm_get_register(VmReg.RCX), v.vm_get_register(VmReg.RDX),
               v.vm_get_register(VmReg.RSI))
        if got[:4] != host[:4] or (got[4] & mask) != (host[4] & mask):
            failures.append((insn, hex(a), hex(b), cnt, cf,
                             [hex(x) for x in host], [hex(x) for x in got], hex(mask)))
    assert not failures, f"{len(failures)} mismatches, first: {failures[:8]}"


def test_memory_forms_match_host(native):
    m = Machine(1)
    m.build_identity_map(0x1000)
    v = m.cpus[0]
    data = 0x30000
    failures = []
    asm_cache: dict[str, tuple[bytes, bytes]] = {}
    for insn, mask, a, b, cnt, d, cf, memval in mem_cases():
        flags = 0x202 | cf
        if insn not in asm_cache:
            asm_cache[insn] = (assemble(NATIVE_PRO + insn + NATIVE_EPI, 64, 0),
                               assemble(insn + "\npushfq\npop rsi\ncli\nhlt\n", 64, 0x10000))
        host_code, guest_code = asm_cache[insn]
        host = native.run(host_code, (a, b, cnt, d, flags), memval)
        m.write(0x10000, guest_code)
        m.w64(data + 40, memval)
        m.w64(data + 48, 0)
        m.long_mode(paging=False)
        for r, x in ((VmReg.RAX, a), (VmReg.RBX, b), (VmReg.RCX, cnt), (VmReg.RDX, d),
                     (VmReg.RFLAGS, flags), (VmReg.RDI, data)):
            v.vm_set_register(r, x)
        e = v.vm_run()
        assert e.code == ExitCode.HLT, (insn, e)
        got = (v.vm_get_register(VmReg.RAX), v.vm_get_register(VmReg.RBX),
               v.vm_get_register(VmReg.RCX), v.vm_get_register(VmReg.RDX),
               v.vm_get_register(VmReg.RSI), m.r64(data + 40))
        if got[:4] != host[:4] or got[5] != host[5] or (got[4] & mask) != (host[4] & mask):
            failures.append((insn, hex(a), hex(b), hex(memval), [hex(x) for x in host], [hex(x) for x in got]))
    assert not failures, f"{len(failures)} mismatches, first: {failures[:6]}"
