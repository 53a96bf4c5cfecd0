"""Random and directed test-case generation.

A case is a few lines of nasm (one to three instructions), an initial
state (GPRs, RFLAGS, the SCRATCH bytes, optionally an FXSAVE image) and the
masks of what the architecture leaves undefined afterwards:

* `flags_undef`: RFLAGS bits that are undefined (the table below, from the
  SDM/APM; value-dependent entries such as shift counts are resolved per
  case from the known count);
* `regs_undef`: {register index: bit mask} for undefined results
  (bsf/bsr with a zero source, shld/shrd with count > operand size).

Case i of seed S is generated from `random.Random(S * 2**32 + i)`, so
`--seed S --case I` replays exactly that case.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from .machine import DATA_PTR, RFLAGS_BASE, SCRATCH, SCRATCH_SIZE, STACK_PTR, CaseInput

CF, PF, AF, ZF, SF, TF, IF, DF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x100, 0x200, 0x400, 0x800
AC, ID, NT = 0x40000, 0x200000, 0x4000
STATUS = CF | PF | AF | ZF | SF | OF
M64 = (1 << 64) - 1
M32 = (1 << 32) - 1

# Architecturally undefined RFLAGS bits per instruction (fixed part).  The
# value-dependent ones (shifts/rotates/shld/shrd by count) are computed by
# `shift_undef` / `shxd_undef`.
UNDEF_FLAGS = {
    "and": AF, "or": AF, "xor": AF, "test": AF,
    "mul": SF | ZF | AF | PF, "imul": SF | ZF | AF | PF,
    "div": STATUS, "idiv": STATUS,
    "bt": OF | SF | AF | PF, "bts": OF | SF | AF | PF, "btr": OF | SF | AF | PF,
    "btc": OF | SF | AF | PF,
    "bsf": CF | OF | SF | AF | PF, "bsr": CF | OF | SF | AF | PF,
}
# Flags each instruction reads (to keep undefined flags from leaking).
READS_FLAGS = {"adc": CF, "sbb": CF, "rcl": CF, "rcr": CF, "lahf": STATUS, "pushf": -1,
               "cmov": STATUS, "set": STATUS, "cmc": CF}

REG64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
REG32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi") + tuple(f"r{i}d" for i in range(8, 16))
REG16 = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di") + tuple(f"r{i}w" for i in range(8, 16))
REG8 = ("al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil") + tuple(f"r{i}b" for i in range(8, 16))
GPR_NAMES_DISPLAY = REG64
REG8H = ("ah", "ch", "dh", "bh")
REGN = {8: REG8, 16: REG16, 32: REG32, 64: REG64}
PTR = {8: "byte", 16: "word", 32: "dword", 64: "qword"}
CC = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")

EDGE = (0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF,
        0x80000000, 0xFFFFFFFF, 0x100000000, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000, M64,
        M64 - 1, 0x8000000000000001, 0x5555555555555555, 0xAAAAAAAAAAAAAAAA)


@dataclass(slots=True)
class Case:
    group: str
    text: str
    inp: CaseInput
    flags_undef: int = 0
    regs_undef: dict[int, int] = field(default_factory=dict)
    index: int = -1
    seed: int = -1
    fsw_undef: int = 0          # FSW bits undefined (x87 condition codes)
    mix: str = ""               # the --group the case was drawn from (for replay)


def rand_value(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.35:
        v = rng.choice(EDGE)
        if rng.random() < 0.3:
            v = (v + rng.choice((-1, 1))) & M64
        return v
    if r < 0.55:
        return rng.getrandbits(rng.choice((8, 16, 32)))
    if r < 0.65:
        return (-rng.getrandbits(rng.choice((8, 16, 31)))) & M64
    return rng.getrandbits(64)


class Ctx:
    """The state of one case under construction."""

    def __init__(self, rng: random.Random, group: str):
        self.rng = rng
        self.group = group
        self.regs = [rand_value(rng) for _ in range(16)]
        self.regs[4] = STACK_PTR
        self.rflags = RFLAGS_BASE | (rng.getrandbits(12) & STATUS)
        self.lines: list[str] = []
        self.undef = 0
        self.regs_undef: dict[int, int] = {}
        # rax/rcx/rdx/rsi/rdi are implicit operands of too many instructions
        self.base = rng.choice((3, 5, 8, 9, 10, 11, 12, 13, 14, 15))
        self.regs[self.base] = DATA_PTR + rng.randrange(-64, 64)
        # index register of SIB operands (reserved like the base: a case
        # with 50% of the draws has none, so every register is a destination)
        self.index = -1
        if rng.random() < 0.5:
            self.index = rng.choice([i for i in (3, 5, 8, 9, 10, 11, 12, 13, 14, 15) if i != self.base])
            self.regs[self.index] = rng.randrange(-8, 9) & M64
        self.reserved = {4, self.base, self.index}
        self.fpu: bytes | None = None
        self.stop = False
        self.rsp_ok = False     # single-instruction case: rsp may be an operand
        self.fsw_undef = 0

    def reg(self, avoid=()) -> int:
        while True:
            r = self.rng.randrange(16)
            if r in avoid or (r in self.reserved and not (self.rsp_ok and r == 4)):
                continue
            return r

    def mem(self, size: int) -> str:
        rng = self.rng
        disp = rng.randrange(-200, 200)
        r = rng.random()
        if r < 0.4 and self.index >= 0:  # base + index*scale + disp
            sc = rng.choice((1, 2, 4, 8))
            return f"{PTR[size]} [{REG64[self.base]}+{REG64[self.index]}*{sc}{disp:+d}]"
        if r < 0.35:                    # 32-bit address size
            return f"{PTR[size]} [{REG32[self.base]}{disp:+d}]"
        return f"{PTR[size]} [{REG64[self.base]}{disp:+d}]"

    def emit(self, line: str, undef: int = 0, reads: int = 0, writes: int = STATUS) -> bool:
        """Add an instruction; refuse (False) if it reads an undefined flag."""
        if reads & self.undef:
            return False
        self.lines.append(line)
        self.undef = (self.undef & ~writes) | undef
        return True

    def imm(self, size: int) -> int:
        v = rand_value(self.rng)
        bits = min(size, 32)
        v &= (1 << bits) - 1
        if bits == 32 and size == 64:       # sign-extended imm32
            v = v - (1 << 32) if v & 0x80000000 else v
        return v


def _sizes(rng, allow8=True):
    return rng.choice((8, 16, 32, 64) if allow8 else (16, 32, 64))


def _rm(ctx: Ctx, size: int, dst_avoid=()):
    """A random r/m operand: (text, register index or None)."""
    if ctx.rng.random() < 0.3:
        return ctx.mem(size), None
    r = ctx.reg(dst_avoid)
    return REGN[size][r], r


# --- integer generators; each adds one instruction to ctx ---------------

def g_alu(ctx: Ctx):
    rng = ctx.rng
    op = rng.choice(("add", "adc", "sub", "sbb", "and", "or", "xor", "cmp", "test"))
    size = _sizes(rng)
    dst, _ = _rm(ctx, size)
    if rng.random() < 0.4:
        src = str(ctx.imm(size))
    elif dst.startswith(PTR[size]):
        src = REGN[size][ctx.reg()]
    elif rng.random() < 0.3:
        src = ctx.mem(size)
    else:
        src = REGN[size][ctx.reg()]
    if size == 8 and rng.random() < 0.1 and "[" not in dst and "[" not in src:
        free = [i for i in range(4) if i not in ctx.reserved]   # ah..bh alias rax..rbx
        if free:
            dst, src = REG8H[rng.choice(free)], rng.choice(REG8H)  # legacy high-byte registers
    ctx.emit(f"{op} {dst}, {src}", UNDEF_FLAGS.get(op, 0), READS_FLAGS.get(op, 0))


def g_unary(ctx: Ctx):
    rng = ctx.rng
    op = rng.choice(("inc", "dec", "neg", "not"))
    size = _sizes(rng)
    dst, _ = _rm(ctx, size)
    writes = {"inc": STATUS & ~CF, "dec": STATUS & ~CF, "neg": STATUS, "not": 0}[op]
    ctx.emit(f"{op} {dst}", 0, 0, writes)


def shift_undef(op: str, size: int, count: int) -> int:
    mc = count & (0x3F if size == 64 else 0x1F)
    if mc == 0:
        return OF if op in ("rol", "ror") else 0
    if op in ("rol", "ror", "rcl", "rcr"):
        return 0 if mc == 1 else OF
    u = AF | (OF if mc > 1 else 0)
    if op in ("shl", "sal", "shr") and mc >= size:
        u |= CF
    return u


def g_shift(ctx: Ctx):
    rng = ctx.rng
    op = rng.choice(("rol", "ror", "rcl", "rcr", "shl", "sal", "shr", "sar"))
    size = _sizes(rng)
    form = rng.random()
    if form < 0.4:
        count = rng.choice((0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255, rng.randrange(256)))
        cnt = str(count)
    elif form < 0.55:
        count, cnt = 1, "1"
    else:
        count = rng.choice((0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255, rng.randrange(256)))
        ctx.regs[1] = (ctx.regs[1] & ~0xFF) | count   # (rcx may be the destination too)
        cnt = "cl"
    dst, _ = _rm(ctx, size)
    mc = count & (0x3F if size == 64 else 0x1F)
    if mc == 0:
        writes = 0
    elif op in ("rol", "ror", "rcl", "rcr"):
        writes = CF | OF
    else:
        writes = STATUS
    ctx.emit(f"{op} {dst}, {cnt}", shift_undef(op, size, count), READS_FLAGS.get(op, 0), writes)
    ctx.stop = True


def g_muldiv(ctx: Ctx):
    rng = ctx.rng
    op = rng.choice(("mul", "imul", "div", "idiv", "imul2", "imul3"))
    if op in ("imul2", "imul3"):
        size = _sizes(rng, allow8=False)
        d = ctx.reg()
        src, _ = _rm(ctx, size)
        if op == "imul2":
            line = f"imul {REGN[size][d]}, {src}"
        else:
            line = f"imul {REGN[size][d]}, {src}, {ctx.imm(size)}"
        ctx.emit(line, UNDEF_FLAGS["imul"])
        return
    size = _sizes(rng)
    if op in ("div", "idiv"):
        r = rng.random()
        if r < 0.6:                                   # mostly no #DE: small dividend
            ctx.regs[2] = rng.choice((0, M64)) if op == "idiv" else rng.choice((0, 1))
            if size == 8:
                ctx.regs[0] = rng.getrandbits(64)
        ctx.reserved |= {0, 2}
        src, ri = _rm(ctx, size)
        ctx.reserved -= {0, 2}
        if ri is not None and rng.random() < 0.8 and ctx.regs[ri] & ((1 << size) - 1) == 0:
            ctx.regs[ri] |= 3
        if ri is None and rng.random() < 0.05:
            src = f"{REGN[size][0]}"               # div by the dividend's own register
        ctx.emit(f"{op} {src}", UNDEF_FLAGS[op])
        ctx.stop = True
        return
    src, _ = _rm(ctx, size)
    ctx.emit(f"{op} {src}", UNDEF_FLAGS[op])


def g_bit(ctx: Ctx):
    rng = ctx.rng
    op = rng.choice(("bt", "bts", "btr", "btc"))
    size = _sizes(rng, allow8=False)
    dst, dr = _rm(ctx, size)
    if rng.random() < 0.5:
        src = str(rng.randrange(256))
    else:
        s = ctx.reg()
        if dr is None:                               # bit offset reaches memory: keep it near
            ctx.regs[s] = rng.randrange(-600, 600) & M64
        src = REGN[size][s]
    ctx.emit(f"{op} {dst}, {src}", UNDEF_FLAGS[op], 0, CF | OF | SF | AF | PF)


def g_bitscan(ctx: Ctx):
    rng = ctx.rng
    op = rng.choice(("bsf", "bsr"))
    size = _sizes(rng, allow8=False)
    d = ctx.reg()
    if rng.random() < 0.5:
        src = ctx.mem(size)
        zero = None
    else:
        s = ctx.reg()
        if rng.random() < 0.2:
            ctx.regs[s] &= ~((1 << size) - 1)
        src = REGN[size][s]
        zero = ctx.regs[s] & ((1 << size) - 1) == 0 and s != d
    # A zero source leaves the destination undefined (Intel) / unchanged (AMD):
    # with a memory source we cannot know, so mask whenever it might be zero.
    if zero is None or zero:
        ctx.regs_undef[d] = M64
    ctx.emit(f"{op} {REGN[size][d]}, {src}", UNDEF_FLAGS[op])
    ctx.stop = True


def g_shxd(ctx: Ctx):
    rng = ctx.rng
    op = rng.choice(("shld", "shrd"))
    size = _sizes(rng, allow8=False)
    count = rng.choice((0, 1, 2, 8, 15, 16, 17, 24, 31, 32, 33, 63, 64, rng.randrange(256)))
    mc = count & (0x3F if size == 64 else 0x1F)
    if rng.random() < 0.5:
        cnt = str(count)
    else:
        ctx.regs[1] = (ctx.regs[1] & ~0xFF) | count
        cnt = "cl"
    if mc > size:
        d = ctx.reg()
        dst = REGN[size][d]
        ctx.regs_undef[d] = M64
    else:
        dst, _ = _rm(ctx, size)
    src = REGN[size][ctx.reg()]
    undef = 0
    if mc:
        undef = AF | (OF if mc != 1 else 0)
        if mc > size:
            undef = STATUS
    ctx.emit(f"{op} {dst}, {src}, {cnt}", undef, 0, STATUS if mc else 0)
    ctx.stop = True


def g_xchg(ctx: Ctx):
    rng = ctx.rng
    op = rng.choice(("cmpxchg", "xadd", "xchg", "cmpxchg8b", "cmpxchg16b"))
    size = _sizes(rng)
    if op == "cmpxchg8b" or op == "cmpxchg16b":
        ctx.reserved |= {0, 1, 2, 3}
        if ctx.base in (0, 1, 2, 3):
            return g_alu(ctx)
        n = 8 if op == "cmpxchg8b" else 16
        disp = rng.randrange(-12, 12) * 16 + (0 if n == 16 else rng.choice((0, 8, 4)))
        ctx.regs[ctx.base] = DATA_PTR
        ctx.emit(f"{op} [{REG64[ctx.base]}{disp:+d}]", 0, 0, ZF)
        ctx.stop = True
        return
    dst, dr = _rm(ctx, size)
    s = ctx.reg()
    if op == "cmpxchg" and dr is not None and rng.random() < 0.5:
        ctx.regs[0] = ctx.regs[dr]
    lock = "lock " if dr is None and rng.random() < 0.3 else ""
    writes = 0 if op == "xchg" else STATUS
    ctx.emit(f"{lock}{op} {dst}, {REGN[size][s]}", 0, 0, writes)


def g_cmov(ctx: Ctx):
    rng = ctx.rng
    cc = rng.choice(CC)
    if rng.random() < 0.5:
        size = _sizes(rng, allow8=False)
        src, _ = _rm(ctx, size)
        ctx.emit(f"cmov{cc} {REGN[size][ctx.reg()]}, {src}", 0, STATUS, 0)
    else:
        dst, _ = _rm(ctx, 8)
        ctx.emit(f"set{cc} {dst}", 0, STATUS, 0)


def g_movx(ctx: Ctx):
    rng = ctx.rng
    kind = rng.choice(("movzx", "movsx", "movsxd", "mov", "lea", "bswap"))
    d = ctx.reg()
    if kind in ("movzx", "movsx"):
        dsize = _sizes(rng, allow8=False)
        ssize = rng.choice((8, 16)) if dsize > 16 else 8
        src, _ = _rm(ctx, ssize)
        ctx.emit(f"{kind} {REGN[dsize][d]}, {src}", 0, 0, 0)
    elif kind == "movsxd":
        src, _ = _rm(ctx, 32)
        ctx.emit(f"movsxd {REG64[d]}, {src}", 0, 0, 0)
    elif kind == "mov":
        size = _sizes(rng)
        if rng.random() < 0.3:
            ctx.emit(f"mov {REGN[size][d]}, {ctx.imm(size) if size < 64 else rand_value(rng)}", 0, 0, 0)
        else:
            src, _ = _rm(ctx, size)
            ctx.emit(f"mov {REGN[size][d]}, {src}", 0, 0, 0)
    elif kind == "lea":
        size = _sizes(rng, allow8=False)
        b = REG64[rng.randrange(16)]
        i = REG64[rng.choice([r for r in range(16) if r != 4])]
        sc = rng.choice((1, 2, 4, 8))
        disp = rng.choice((0, 1, -1, 0x7FFFFFFF, -0x80000000, rng.randrange(-2**31, 2**31)))
        if rng.random() < 0.2:            # 32-bit address size
            b, i = REG32[REG64.index(b)], REG32[REG64.index(i)]
        ctx.emit(f"lea {REGN[size][d]}, [{b}+{i}*{sc}{disp:+d}]", 0, 0, 0)
    else:
        size = rng.choice((32, 64))
        ctx.emit(f"bswap {REGN[size][d]}", 0, 0, 0)


def g_string(ctx: Ctx):
    rng = ctx.rng
    op = rng.choice(("movs", "stos", "lods", "cmps", "scas"))
    sfx = rng.choice("bwdq")
    width = {"b": 1, "w": 2, "d": 4, "q": 8}[sfx]
    rep = rng.choice(("", "rep ", "repe ", "repne ")) if op in ("cmps", "scas") else rng.choice(("", "rep "))
    ctx.regs[1] = rng.choice((0, 1, 2, 3, 5, 8, 16, rng.randrange(24)))
    down = rng.random() < 0.5
    if down:
        ctx.rflags |= DF
    lo, hi = -0x180 + 24 * width, 0x180 - 24 * width
    ctx.regs[6] = DATA_PTR + rng.randrange(lo, hi)
    ctx.regs[7] = DATA_PTR + rng.randrange(lo, hi)
    if ctx.base in (1, 6, 7):
        ctx.base = 3
    if op in ("cmps", "scas") and rng.random() < 0.5:
        ctx.regs[7] = ctx.regs[6] + rng.randrange(-8, 8)   # overlapping: some equal prefixes
    if rep and rng.random() < 0.15:
        # Run off the start of SCRATCH into the supervisor-only page below:
        # a #PF part-way through, with RCX/RSI/RDI showing the progress.
        ctx.rflags |= DF
        ctx.regs[rng.choice((6, 7))] = SCRATCH + rng.randrange(0, 48)
        ctx.regs[1] = rng.randrange(8, 64)
    if rng.random() < 0.3:
        ctx.regs[0] = 0
    writes = STATUS if op in ("cmps", "scas") else 0
    ctx.emit(f"{rep}{op}{sfx}", 0, 0, writes)
    ctx.stop = True


def g_stack(ctx: Ctx):
    rng = ctx.rng
    kind = rng.choice(("push", "pop", "push16", "pop16", "pushimm", "pushf", "popf",
                       "lahf", "sahf", "convert", "pushmem", "popmem", "cmc_clc"))
    r = ctx.reg()
    if kind == "push":
        ctx.emit(f"push {REG64[r]}", 0, 0, 0)
    elif kind == "pop":
        ctx.emit(f"pop {REG64[r]}", 0, 0, 0)
    elif kind == "push16":
        ctx.emit(f"push {REG16[r]}", 0, 0, 0)
    elif kind == "pop16":
        ctx.emit(f"pop {REG16[r]}", 0, 0, 0)
    elif kind == "pushimm":
        if rng.random() < 0.3:
            ctx.emit(f"push word {rng.randrange(65536)}", 0, 0, 0)
        else:
            ctx.emit(f"push qword {ctx.imm(64) if rng.random() < 0.7 else rng.randrange(-128, 128)}", 0, 0, 0)
    elif kind == "pushmem":
        ctx.emit(f"push {ctx.mem(64)}", 0, 0, 0)
    elif kind == "popmem":
        ctx.emit(f"pop {ctx.mem(64)}", 0, 0, 0)
    elif kind == "pushf":
        ctx.emit(rng.choice(("pushfq", "pushfw")), 0, -1, 0)
    elif kind == "popf":
        # The value popped comes from a register we push: keep TF clear,
        # and AC and NT too: the nested KVM oracle runs CPL3 natively, where
        # AC would be honoured and NT is lost on the way back to the VMM.
        ctx.regs[r] = rand_value(rng) & ~(TF | AC | NT)
        ctx.emit(f"push {REG64[r]}", 0, 0, 0)
        ctx.emit("popfq", 0, 0, STATUS)
    elif kind == "lahf":
        ctx.emit("lahf", 0, STATUS, 0)
    elif kind == "sahf":
        ctx.emit("sahf", 0, 0, CF | PF | AF | ZF | SF)
    elif kind == "cmc_clc":
        op = rng.choice(("cmc", "clc", "stc", "cld", "std"))
        ctx.emit(op, 0, CF if op == "cmc" else 0, CF if op in ("cmc", "clc", "stc") else 0)
    else:
        ctx.reserved |= {0, 2}
        ctx.emit(rng.choice(("cbw", "cwde", "cdqe", "cwd", "cdq", "cqo")), 0, 0, 0)
        ctx.reserved -= {0, 2}


GROUPS = {
    "alu": [g_alu, g_unary],
    "shift": [g_shift, g_shxd],
    "muldiv": [g_muldiv],
    "bit": [g_bit, g_bitscan],
    "xchg": [g_xchg],
    "cmov": [g_cmov],
    "mov": [g_movx],
    "string": [g_string],
    "stack": [g_stack],
}
# How often each group is drawn by the default "int" mix.
WEIGHTS = {"alu": 5, "shift": 3, "muldiv": 3, "bit": 2, "xchg": 2, "cmov": 2, "mov": 2,
           "string": 2, "stack": 2, "sse": 3, "x87": 2}


SINGLE = frozenset({"shift", "bit", "string"})
SP_SAVE = SCRATCH + SCRATCH_SIZE - 8     # never touched by the cases' own accesses
_SP_RE = re.compile(r"\b(rsp|esp|sp|spl)\b")


def group_names() -> list[str]:
    return ["all", "int", "directed"] + list(GROUPS)


def make_case(seed: int, index: int, group: str = "all") -> Case:
    if group == "directed":
        return directed_case(seed, index)
    rng = random.Random(seed * (1 << 32) + index)
    if group in ("all", "int"):
        names = list(WEIGHTS) if group == "all" else [n for n in WEIGHTS if n not in FPU_GROUPS]
        g = rng.choices(names, weights=[WEIGHTS[n] for n in names])[0]
    else:
        g = group
    ctx = Ctx(rng, g)
    # Groups whose undefined results depend on operand values (shift counts,
    # zero bsf sources, ...) get one instruction, so the value is known.
    ninsn = 1 if g in SINGLE or rng.random() < 0.6 else rng.randrange(2, 4)
    ctx.rsp_ok = ninsn == 1 and g not in ("stack", "string")
    tries = 0
    while len(ctx.lines) < ninsn and not ctx.stop and tries < 10:
        tries += 1
        # Sequences stay in their group, with some flag-producing ALU ops mixed in.
        fn = g_alu if ctx.lines and rng.random() < 0.3 else rng.choice(GROUPS[g])
        fn(ctx)
    lines = ctx.lines
    if ctx.rsp_ok and _SP_RE.search("\n".join(lines)):
        # The case may have written RSP.  Store it to SP_SAVE (compared with
        # the scratch memory) and give `int3` a sane stack pointer: the
        # nested KVM oracle is flaky (#UD on int3) with a non-canonical RSP.
        save = [] if 4 in ctx.regs_undef else [f"mov [{SP_SAVE:#x}], rsp"]   # undefined: drop it
        lines = lines + save + [f"mov rsp, {STACK_PTR:#x}"]
    if g in FPU_GROUPS:
        ctx.fpu = fpu_image(rng, g == "x87")
        lines = [FPU_PROLOGUE] + lines + [FPU_EPILOGUE]
    scratch = rng.randbytes(SCRATCH_SIZE)
    inp = CaseInput(ctx.regs, ctx.rflags, scratch, ctx.fpu)
    return Case(g, "\n".join(lines), inp, ctx.undef, ctx.regs_undef, index, seed, ctx.fsw_undef, group)


# --- x87 and SSE2 -------------------------------------------------------
# Cases of these groups start with `fxrstor [FPU_IN]` (an image built here)
# and end with `fxsave [FPU_OUT]`, which the harness compares.

FSW_C023 = 0x4500            # C0, C2, C3: undefined after most x87 instructions
FPU_PROLOGUE = "fxrstor [0x11000]"
FPU_EPILOGUE = "fxsave [0x11200]"

DOUBLE_SPECIAL = (0x0000000000000000, 0x8000000000000000, 0x3FF0000000000000, 0xBFF0000000000000,
                  0x4000000000000000, 0x3FE0000000000000, 0x7FF0000000000000, 0xFFF0000000000000,
                  0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001, 0x0000000000000001,
                  0x000FFFFFFFFFFFFF, 0x0010000000000000, 0x7FEFFFFFFFFFFFFF, 0x4330000000000000,
                  0x43E0000000000000, 0xC3E0000000000000, 0x41DFFFFFFFC00000, 0x3FB999999999999A)
FLOAT_SPECIAL = (0x00000000, 0x80000000, 0x3F800000, 0xBF800000, 0x40000000, 0x7F800000, 0xFF800000,
                 0x7FC00000, 0xFFC00000, 0x7F800001, 0x00000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF,
                 0x4F000000, 0xCF000000, 0x5F000000, 0x3DCCCCCD)


def rand_double(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.25:
        return rng.choice(DOUBLE_SPECIAL)
    if r < 0.6:                         # "nice" values: small integers and fractions
        sign = rng.getrandbits(1) << 63
        exp = 1023 + rng.randrange(-8, 40)
        return sign | exp << 52 | rng.getrandbits(8) << 44
    if r < 0.9:
        sign = rng.getrandbits(1) << 63
        exp = 1023 + rng.randrange(-60, 64)
        return sign | exp << 52 | rng.getrandbits(52)
    return rng.getrandbits(64)


def rand_float(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.25:
        return rng.choice(FLOAT_SPECIAL)
    if r < 0.6:
        return rng.getrandbits(1) << 31 | (127 + rng.randrange(-8, 30)) << 23 | rng.getrandbits(6) << 17
    if r < 0.9:
        return rng.getrandbits(1) << 31 | (127 + rng.randrange(-40, 40)) << 23 | rng.getrandbits(23)
    return rng.getrandbits(32)


def rand_ext80(rng: random.Random) -> int:
    """An 80-bit extended value (sign, 15-bit exponent, explicit integer bit)."""
    r = rng.random()
    sign = rng.getrandbits(1) << 79
    if r < 0.08:
        return sign                                     # zero
    if r < 0.13:
        return sign | 0x7FFF << 64 | 1 << 63            # infinity
    if r < 0.17:
        return sign | 0x7FFF << 64 | 3 << 62 | rng.getrandbits(40)   # QNaN
    if r < 0.19:
        return sign | 0x7FFF << 64 | 1 << 63 | 1 << rng.randrange(40)  # SNaN
    if r < 0.21:
        return sign | rng.getrandbits(62)              # denormal
    if r < 0.55:
        return sign | (0x3FFF + rng.randrange(-8, 40)) << 64 | 1 << 63 | rng.getrandbits(8) << 55
    return sign | (0x3FFF + rng.randrange(-200, 200)) << 64 | 1 << 63 | rng.getrandbits(63)


def fpu_image(rng: random.Random, x87: bool) -> bytes:
    img = bytearray(512)
    if x87:
        fcw = 0x037F if rng.random() < 0.6 else (0x40 | rng.choice((0x3F, 0x3F, 0x3E, 0x3B, 0x37))
                                                  | rng.randrange(4) << 8 | rng.randrange(4) << 10)
        top = rng.randrange(8)
        nvalid = rng.choice((8, 8, 7, 6, 4, 2, 0))
        ftw = 0
        for i in range(nvalid):                          # ST(0..nvalid-1) valid
            ftw |= 1 << ((top + i) & 7)
        fsw = top << 11
    else:
        fcw, ftw, fsw = 0x037F, 0, 0
    mx = 0x1F80 if rng.random() < 0.6 else (0x1F80 & ~(rng.getrandbits(6) << 7 if rng.random() < 0.2 else 0)) \
        | rng.randrange(4) << 13 | rng.getrandbits(1) << 15 | rng.getrandbits(1) << 6
    img[0:2] = fcw.to_bytes(2, "little")
    img[2:4] = fsw.to_bytes(2, "little")
    img[4] = ftw
    img[24:28] = mx.to_bytes(4, "little")
    for i in range(8):
        v = rand_ext80(rng) if x87 else rng.getrandbits(64) | 0xFFFF << 64    # MMX registers
        img[32 + 16 * i:42 + 16 * i] = v.to_bytes(10, "little")
    for i in range(16):
        if rng.random() < 0.5:
            lanes = [rand_double(rng) for _ in range(2)]
            b = b"".join(x.to_bytes(8, "little") for x in lanes)
        else:
            b = b"".join(rand_float(rng).to_bytes(4, "little") for _ in range(4))
        if rng.random() < 0.2:
            b = rng.randbytes(16)
        img[160 + 16 * i:176 + 16 * i] = b
    return bytes(img)


SSE_FP = ("addsd", "subsd", "mulsd", "divsd", "minsd", "maxsd", "sqrtsd",
          "addss", "subss", "mulss", "divss", "minss", "maxss", "sqrtss",
          "addpd", "subpd", "mulpd", "divpd", "minpd", "maxpd", "sqrtpd",
          "addps", "subps", "mulps", "divps", "minps", "maxps", "sqrtps",
          "andpd", "andnpd", "orpd", "xorpd", "andps", "orps", "xorps",
          "unpcklpd", "unpckhpd", "unpcklps", "unpckhps", "cvtsd2ss", "cvtss2sd",
          "cvtdq2pd", "cvtdq2ps", "cvtps2dq", "cvttps2dq", "cvtpd2dq", "cvttpd2dq",
          "cvtpd2ps", "cvtps2pd", "rcpss", "rsqrtss")
SSE_INT = ("paddb", "paddw", "paddd", "paddq", "psubb", "psubw", "psubd", "psubq",
           "paddsb", "paddsw", "paddusb", "paddusw", "psubsb", "psubsw", "psubusb", "psubusw",
           "pmullw", "pmulhw", "pmulhuw", "pmuludq", "pmaddwd", "psadbw", "pavgb", "pavgw",
           "pmaxsw", "pmaxub", "pminsw", "pminub", "pand", "pandn", "por", "pxor",
           "pcmpeqb", "pcmpeqw", "pcmpeqd", "pcmpgtb", "pcmpgtw", "pcmpgtd",
           "packsswb", "packssdw", "packuswb", "punpcklbw", "punpcklwd", "punpckldq",
           "punpcklqdq", "punpckhbw", "punpckhwd", "punpckhdq", "punpckhqdq",
           "psllw", "pslld", "psllq", "psrlw", "psrld", "psrlq", "psraw", "psrad")
# rcpss/rsqrtss are approximations whose exact bits are CPU-specific.
SSE_APPROX = frozenset({"rcpss", "rsqrtss"})


def g_sse(ctx: Ctx):
    rng = ctx.rng
    x = lambda: f"xmm{rng.randrange(16)}"
    k = rng.random()
    if k < 0.4:
        op = rng.choice([o for o in SSE_FP if o not in SSE_APPROX])
        if rng.random() < 0.8:
            src = x()
        elif op == "cvtsd2ss":
            src = ctx.mem(64)
        elif op == "cvtss2sd":
            src = ctx.mem(32)
        elif op.endswith("sd"):
            src = ctx.mem(64)
        elif op.endswith("ss"):
            src = ctx.mem(32)
        else:   # packed memory operands must be 16-byte aligned: use movdqu forms elsewhere
            src = x()
        ctx.emit(f"{op} {x()}, {src}", 0, 0, 0)
    elif k < 0.7:
        op = rng.choice(SSE_INT)
        if op[:3] in ("psl", "psr") and rng.random() < 0.5:
            ctx.emit(f"{op} {x()}, {rng.choice((0, 1, 7, 8, 15, 16, 31, 32, 63, 64, rng.randrange(256)))}", 0, 0, 0)
        else:
            ctx.emit(f"{op} {x()}, {x()}", 0, 0, 0)
    elif k < 0.8:
        op = rng.choice(("ucomisd", "comisd", "ucomiss", "comiss"))
        ctx.emit(f"{op} {x()}, {x()}", 0, 0, STATUS)
    elif k < 0.9:
        size = rng.choice((32, 64))
        kind = rng.choice(("cvtsi2sd", "cvtsi2ss", "cvttsd2si", "cvtsd2si", "cvttss2si", "cvtss2si",
                           "movd", "movq_to", "pmovmskb", "movmskpd", "movmskps"))
        r = REGN[size][ctx.reg()]
        if kind in ("cvtsi2sd", "cvtsi2ss"):
            ctx.emit(f"{kind} {x()}, {r}", 0, 0, 0)
        elif kind == "movd":
            ctx.emit(f"{'movd' if size == 32 else 'movq'} {x()}, {r}", 0, 0, 0)
        elif kind == "movq_to":
            ctx.emit(f"{'movd' if size == 32 else 'movq'} {r}, {x()}", 0, 0, 0)
        elif kind in ("pmovmskb", "movmskpd", "movmskps"):
            ctx.emit(f"{kind} {REG32[ctx.reg()]}, {x()}", 0, 0, 0)
        else:
            ctx.emit(f"{kind} {r}, {x()}", 0, 0, 0)
    else:
        kind = rng.choice(("pshufd", "shufpd", "shufps", "pshuflw", "pshufhw", "movdqu_st", "movdqu_ld",
                           "movsd_st", "pslldq", "psrldq"))
        if kind in ("movdqu_st", "movsd_st"):
            ctx.emit(f"{kind[:-3]} {ctx.mem(64).replace('qword ', '')}, {x()}", 0, 0, 0)
        elif kind == "movdqu_ld":
            ctx.emit(f"movdqu {x()}, {ctx.mem(64).replace('qword ', '')}", 0, 0, 0)
        elif kind in ("pslldq", "psrldq"):
            ctx.emit(f"{kind} {x()}, {rng.randrange(20)}", 0, 0, 0)
        else:
            ctx.emit(f"{kind} {x()}, {x()}, {rng.randrange(256)}", 0, 0, 0)


X87_ARITH = ("fadd", "fsub", "fsubr", "fmul", "fdiv", "fdivr")


def g_x87(ctx: Ctx):
    rng = ctx.rng
    st = lambda: f"st{rng.randrange(8)}"
    k = rng.random()
    c_undef = FSW_C023
    if k < 0.35:
        op = rng.choice(X87_ARITH)
        f = rng.random()
        if f < 0.4:
            line = f"{op} st0, {st()}"
        elif f < 0.7:
            line = f"{op} {st()}, st0"
        elif f < 0.85:
            line = f"{op}p {st()}, st0"
        else:
            line = f"{op} {ctx.mem(rng.choice((32, 64)))}"
    elif k < 0.55:
        line = rng.choice(("fsqrt", "fchs", "fabs", "frndint", "fxch st1", f"fxch {st()}", "fld1", "fldz",
                           "fld st0", f"fld {st()}", f"fstp {st()}", f"fst {st()}", "fincstp", "fdecstp",
                           f"ffree {st()}", "fscale", "fxtract", "fprem", "fprem1", "fldpi", "fldl2e"))
        if line in ("fprem", "fprem1"):
            c_undef = 0
    elif k < 0.7:
        line = rng.choice(("fcom", "fcomp", "fucom", "fucomp", "ftst", "fxam", "fcompp", "fucompp"))
        if line in ("fcom", "fcomp", "fucom", "fucomp"):
            line += f" {st()}"
        c_undef = 0
    elif k < 0.8:
        op = rng.choice(("fcomi", "fcomip", "fucomi", "fucomip"))
        ctx.emit(f"{op} st0, {st()}", 0, 0, STATUS)
        return                          # C0, C2, C3 are not affected by fcomi
    else:
        m = ctx.mem(8).replace("byte ", "")
        line = rng.choice((f"fld dword {m}", f"fld qword {m}", f"fld tword {m}", f"fild word {m}",
                           f"fild dword {m}", f"fild qword {m}", f"fstp dword {m}", f"fstp qword {m}",
                           f"fstp tword {m}", f"fistp word {m}", f"fistp dword {m}", f"fistp qword {m}",
                           f"fisttp qword {m}", f"fist dword {m}", f"fst qword {m}"))
    ctx.emit(line, 0, 0, 0)
    ctx.fsw_undef = c_undef


SSE_PACKED = ("addps", "addpd", "mulps", "mulpd", "subps", "subpd", "divps", "divpd", "minps", "maxpd",
              "sqrtps", "sqrtpd", "rcpps", "rsqrtps", "andnps", "xorpd", "unpckhps", "cvtdq2ps", "cvtps2dq",
              "cvttps2dq", "cvtpd2dq", "cvttpd2dq", "cvtpd2ps", "haddps", "haddpd", "hsubps", "hsubpd",
              "addsubps", "addsubpd", "movsldup", "movshdup", "paddq", "psubq", "pmuludq", "pcmpgtd",
              "punpckhqdq", "packuswb", "psadbw", "pmaddwd", "psraw", "pslld", "psrlq", "pavgw")


def mem_a16(ctx: Ctx) -> str:
    """A 16-byte aligned memory operand (packed SSE forms).  Misaligned ones
    are not generated: architecturally #GP(0), but the nested KVM oracle
    reports #UD for them (its #GP intercept cannot emulate SSE)."""
    disp = ctx.rng.randrange(-192, 192)
    disp -= (ctx.regs[ctx.base] + disp) % 16
    return f"[{REG64[ctx.base]}{disp:+d}]"


def g_sse_ext(ctx: Ctx):
    """More SSE/SSE2/SSE3: compares with every predicate, moves of every
    form (register, unaligned and aligned memory: misaligned m128 operands
    take #GP), MXCSR round trips, memory operands of packed arithmetic."""
    rng = ctx.rng
    x = lambda: f"xmm{rng.randrange(16)}"
    m = lambda: ctx.mem(64).replace("qword ", "")
    ma = lambda: mem_a16(ctx)
    k = rng.random()
    if k < 0.2:
        op = rng.choice(("cmpps", "cmppd", "cmpss", "cmpsd"))
        src = x() if rng.random() < 0.8 else (ma() if op in ("cmpps", "cmppd") else m())
        line = f"{op} {x()}, {src}, {rng.randrange(8)}"
    elif k < 0.45:
        line = rng.choice((
            f"movss {x()}, {x()}", f"movsd {x()}, {x()}", f"movss {x()}, dword {m()}", f"movsd {x()}, qword {m()}",
            f"movss dword {m()}, {x()}", f"movsd qword {m()}, {x()}", f"movaps {x()}, {x()}", f"movapd {x()}, {ma()}",
            f"movaps {ma()}, {x()}", f"movups {x()}, {m()}", f"movupd {m()}, {x()}", f"movdqa {x()}, {ma()}",
            f"movdqa {ma()}, {x()}", f"movlps {x()}, {m()}", f"movhps {x()}, {m()}", f"movlpd {x()}, {m()}",
            f"movhpd {x()}, {m()}", f"movlps {m()}, {x()}", f"movhps {m()}, {x()}", f"movhlps {x()}, {x()}",
            f"movlhps {x()}, {x()}", f"movq {x()}, {x()}", f"movq {x()}, qword {m()}", f"movq qword {m()}, {x()}",
            f"movd {x()}, dword {m()}", f"movd dword {m()}, {x()}", f"movntdq {ma()}, {x()}", f"movntps {ma()}, {x()}",
            f"movnti {m()}, {REGN[rng.choice((32, 64))][ctx.reg()]}", f"lddqu {x()}, {m()}",
            f"movddup {x()}, {x()}", f"movddup {x()}, qword {m()}", f"movupd {x()}, {x()}", f"movdqu {x()}, {x()}"))
    elif k < 0.65:
        op = rng.choice(SSE_PACKED)
        line = f"{op} {x()}, {x() if rng.random() < 0.6 else ma()}"
    elif k < 0.75:
        op = rng.choice(("pshufd", "pshufhw", "pshuflw", "shufps", "shufpd"))
        line = f"{op} {x()}, {ma()}, {rng.randrange(256)}"
    elif k < 0.85:
        kind = rng.choice(("pinsrw", "pinsrw_m", "pextrw", "cvtsi2sd_m", "cvtss2si_m", "comisd_m", "rcpss", "rsqrtss"))
        if kind == "pinsrw":
            line = f"pinsrw {x()}, {REG32[ctx.reg()]}, {rng.randrange(256)}"
        elif kind == "pinsrw_m":
            line = f"pinsrw {x()}, word {m()}, {rng.randrange(8)}"
        elif kind == "pextrw":
            line = f"pextrw {REG32[ctx.reg()]}, {x()}, {rng.randrange(256)}"
        elif kind == "cvtsi2sd_m":
            line = f"{rng.choice(('cvtsi2sd', 'cvtsi2ss'))} {x()}, {rng.choice(('dword', 'qword'))} {m()}"
        elif kind == "cvtss2si_m":
            sz = rng.choice((32, 64))
            op = rng.choice(("cvtss2si", "cvttss2si", "cvtsd2si", "cvttsd2si"))
            line = f"{op} {REGN[sz][ctx.reg()]}, {'dword' if 'ss' in op else 'qword'} {m()}"
        elif kind == "comisd_m":
            op = rng.choice(("comisd", "ucomisd", "comiss", "ucomiss"))
            ctx.emit(f"{op} {x()}, {'qword' if op.endswith('d') else 'dword'} {m()}", 0, 0, STATUS)
            return
        else:
            line = f"{kind} {x()}, {x()}"
    else:
        # an MXCSR round trip through memory with new rounding/DAZ/FTZ/masks, then an operation
        addr = m()
        bits = rng.choice((0x6000, 0x2000, 0x4000, 0x8040, 0x0040, 0x8000, 0x1f80, 0x0080 << rng.randrange(6)))
        ctx.emit(f"stmxcsr dword {addr}", 0, 0, 0)
        ctx.emit(f"xor dword {addr}, {bits:#x}", 0, 0, STATUS)
        ctx.emit(f"ldmxcsr dword {addr}", 0, 0, 0)
        op = rng.choice([o for o in SSE_FP if o not in SSE_APPROX] + ["cvtsd2si", "cvtss2si"])
        if op in ("cvtsd2si", "cvtss2si"):
            line = f"{op} {REG64[ctx.reg()]}, {x()}"
        else:
            line = f"{op} {x()}, {x()}"
    ctx.emit(line, 0, 0, 0)


def g_x87_ext(ctx: Ctx):
    """More x87: integer and m64 memory arithmetic, FCMOVcc, transcendentals
    (bit-exact: softvmm runs them on the host's x87), control/status
    instructions, FBSTP, FISTTP of every size, WAIT with a pending exception."""
    rng = ctx.rng
    st = lambda: f"st{rng.randrange(8)}"
    m = lambda: ctx.mem(8).replace("byte ", "")
    c_undef = FSW_C023
    k = rng.random()
    if k < 0.25:
        op = rng.choice(("fiadd", "fimul", "ficom", "ficomp", "fisub", "fisubr", "fidiv", "fidivr",
                         "fadd", "fmul", "fcom", "fcomp", "fsub", "fsubr", "fdiv", "fdivr"))
        size = rng.choice(("word", "dword")) if op.startswith("fi") else rng.choice(("dword", "qword"))
        line = f"{op} {size} {m()}"
        if "com" in op:
            c_undef = 0
    elif k < 0.4:
        cc = rng.choice(("b", "e", "be", "u", "nb", "ne", "nbe", "nu"))
        if ctx.undef & STATUS:
            return
        line = f"fcmov{cc} st0, {st()}"
    elif k < 0.6:
        line = rng.choice(("fsin", "fcos", "fsincos", "fptan", "fpatan", "f2xm1", "fyl2x", "fyl2xp1",
                           "fldl2t", "fldlg2", "fldln2", "fnop", "fsubp", "fdivrp", "faddp", "fmulp"))
        if line in ("fsin", "fcos", "fsincos", "fptan"):
            c_undef = FSW_C023 & ~0x400       # C2 = "operand out of range"
    elif k < 0.8:
        line = rng.choice((f"fnstsw word {m()}", f"fnstcw word {m()}", "fnclex", "fninit", "fwait",
                           f"fbstp tword {m()}", f"fisttp word {m()}", f"fisttp dword {m()}",
                           f"fistp qword {m()}", f"fist word {m()}", f"fst dword {m()}", f"fstp st{rng.randrange(8)}",
                           f"ffreep st{rng.randrange(8)}", f"fxch st{rng.randrange(8)}"))
        if line in ("fnclex", "fninit") or line.startswith("fnst"):
            c_undef = 0
        if line.startswith("fnstsw"):
            c_undef = 0
    else:
        # FLDCW with a new precision/rounding control and masks, then arithmetic
        addr = m()
        ctx.emit(f"fnstcw word {addr}", 0, 0, 0)
        bits = rng.choice((0x0c00, 0x0400, 0x0800, 0x0300, 0x0200, 0x0100, 0x0001, 0x0004, 0x0008, 0x0010, 0x0020))
        ctx.emit(f"xor word {addr}, {bits:#x}", 0, 0, STATUS)
        ctx.emit(f"fldcw word {addr}", 0, 0, 0)
        op = rng.choice(X87_ARITH + ("fsqrt", "frndint", "fscale", "fld1", "fldpi"))
        line = f"{op} st0, {st()}" if op in X87_ARITH else op
    ctx.emit(line, 0, 0, 0)
    ctx.fsw_undef = c_undef


MMX_BIN = ("paddb", "paddw", "paddd", "paddq", "psubb", "psubw", "psubd", "psubq", "paddsb", "paddsw",
           "paddusb", "paddusw", "psubsb", "psubsw", "psubusb", "psubusw", "pmullw", "pmulhw", "pmulhuw",
           "pmuludq", "pmaddwd", "psadbw", "pavgb", "pavgw", "pmaxsw", "pmaxub", "pminsw", "pminub",
           "pand", "pandn", "por", "pxor", "pcmpeqb", "pcmpeqw", "pcmpeqd", "pcmpgtb", "pcmpgtw", "pcmpgtd",
           "packsswb", "packssdw", "packuswb", "punpcklbw", "punpcklwd", "punpckldq", "punpckhbw",
           "punpckhwd", "punpckhdq", "psllw", "pslld", "psllq", "psrlw", "psrld", "psrlq", "psraw", "psrad")


def g_mmx(ctx: Ctx):
    """MMX (the mm registers are the x87 significands: TOP/tags change too)
    and the MMX<->SSE conversions."""
    rng = ctx.rng
    mm = lambda: f"mm{rng.randrange(8)}"
    x = lambda: f"xmm{rng.randrange(16)}"
    m = lambda: ctx.mem(64).replace("qword ", "")
    k = rng.random()
    if k < 0.45:
        op = rng.choice(MMX_BIN)
        if op[:3] in ("psl", "psr") and rng.random() < 0.4:
            line = f"{op} {mm()}, {rng.choice((0, 1, 7, 15, 16, 31, 32, 63, 64, rng.randrange(256)))}"
        else:
            src = mm() if rng.random() < 0.7 else m()
            line = f"{op} {mm()}, {src}"
    elif k < 0.75:
        r32, r64 = REG32[ctx.reg()], REG64[ctx.reg()]
        line = rng.choice((f"movd {mm()}, {r32}", f"movq {mm()}, {r64}", f"movd {r32}, {mm()}", f"movq {r64}, {mm()}",
                           f"movq {mm()}, {mm()}", f"movq {mm()}, qword {m()}", f"movq qword {m()}, {mm()}",
                           f"movd {mm()}, dword {m()}", f"movntq {m()}, {mm()}", "emms",
                           f"pshufw {mm()}, {mm()}, {rng.randrange(256)}", f"pinsrw {mm()}, {r32}, {rng.randrange(256)}",
                           f"pextrw {r32}, {mm()}, {rng.randrange(256)}", f"pmovmskb {r32}, {mm()}"))
    else:
        line = rng.choice((f"cvtpi2ps {x()}, {mm()}", f"cvtpi2pd {x()}, {mm()}", f"cvtpi2ps {x()}, qword {m()}",
                           f"cvtps2pi {mm()}, {x()}", f"cvttps2pi {mm()}, {x()}", f"cvtpd2pi {mm()}, {x()}",
                           f"cvttpd2pi {mm()}, {x()}", f"cvttpd2pi {mm()}, {mem_a16(ctx)}",
                           f"movq2dq {x()}, {mm()}", f"movdq2q {mm()}, {x()}"))
    ctx.emit(line, 0, 0, 0)


GROUPS["sse"] = [g_sse, g_sse_ext, g_mmx]
GROUPS["x87"] = [g_x87, g_x87_ext]
FPU_GROUPS = frozenset({"sse", "x87"})


# --- directed: a systematic enumeration ---------------------------------
# `--group directed` walks this list (case i is entry i mod len), with the
# other registers random; the edge values per operand size are crossed
# exhaustively for the binary ALU ops, every count is tried for the shifts.

def _edges(size: int) -> list[int]:
    m = (1 << size) - 1
    h = 1 << (size - 1)
    return [0, 1, 2, h - 1, h, h + 1, m - 1, m]


def _directed_list() -> list[tuple[str, dict[int, int], int, int, dict[int, int]]]:
    """(text, {reg: value}, rflags status bits, undefined flags, regs_undef)."""
    out = []
    for size in (8, 16, 32, 64):
        a_r, b_r = REGN[size][0], REGN[size][3]
        ed = _edges(size)
        for op in ("add", "adc", "sub", "sbb", "and", "or", "xor", "cmp", "test"):
            for cf in ((0, CF) if op in ("adc", "sbb") else (0,)):
                for x in ed:
                    for y in ed:
                        out.append((f"{op} {a_r}, {b_r}", {0: x, 3: y}, cf, UNDEF_FLAGS.get(op, 0), {}))
        for op in ("inc", "dec", "neg", "not"):
            for x in ed:
                out.append((f"{op} {a_r}", {0: x}, CF, 0, {}))
        for op in ("rol", "ror", "rcl", "rcr", "shl", "shr", "sar"):
            for cf in (0, CF):
                for count in range(0, size + 3):
                    for x in (ed[4], ed[7] ^ 0x5A, ed[3]):
                        out.append((f"{op} {a_r}, cl", {0: x, 1: count}, cf, shift_undef(op, size, count), {}))
        for op in ("mul", "imul", "div", "idiv"):
            for x in ed:
                for y in ed:
                    for hi in ((0, M64) if op in ("div", "idiv") else (0,)):
                        regs = {0: x, 3: y, 2: hi}
                        if size == 8:
                            regs[0] = x | (0xFF00 if hi else 0)
                        out.append((f"{op} {b_r}", regs, 0, UNDEF_FLAGS[op], {}))
        if size > 8:
            for op in ("bsf", "bsr"):
                for y in ed + [1 << (size // 2)]:
                    out.append((f"{op} {a_r}, {b_r}", {3: y}, 0, UNDEF_FLAGS[op], {0: M64} if y == 0 else {}))
            for op in ("shld", "shrd"):
                for count in (0, 1, 2, size - 1, size, size + 1, 31, 32, 63):
                    mc = count & (0x3F if size == 64 else 0x1F)
                    undef = (STATUS if mc > size else AF | (OF if mc != 1 else 0)) if mc else 0
                    out.append((f"{op} {a_r}, {b_r}, cl", {0: ed[7] ^ 0x5A, 3: ed[4] | 1, 1: count}, 0,
                                undef, {0: M64} if mc > size else {}))
    # Page faults: error codes (P, W/R, U) for reads, writes and read-modify-
    # writes on not-present, read-only (code) and supervisor pages.
    for addr in (0x15008, 0x20010, 0x8000, 0xFFFFFFF0):
        for text in ("mov rax, [rbx]", "mov [rbx], rax", "add [rbx], rax", "inc dword [rbx]",
                     "neg word [rbx]", "xchg [rbx], al", "xadd [rbx], rax", "shl qword [rbx], 3",
                     "bts dword [rbx], 5", "cmpxchg [rbx], rcx", "push qword [rbx]", "movsb",
                     "lock or byte [rbx], 1", "adc byte [rbx], 0"):
            regs = {3: addr, 6: addr, 7: DATA_PTR}
            out.append((text, regs, 0, UNDEF_FLAGS.get(text.split()[0], 0), {}))
    return out


_DIRECTED: list | None = None


def directed_case(seed: int, index: int) -> Case:
    global _DIRECTED
    if _DIRECTED is None:
        _DIRECTED = _directed_list()
    text, regs, cf, undef, regs_undef = _DIRECTED[index % len(_DIRECTED)]
    rng = random.Random(seed * (1 << 32) + index)
    vals = [rand_value(rng) for _ in range(16)]
    vals[4] = STACK_PTR
    for r, v in regs.items():
        vals[r] = v
    rflags = RFLAGS_BASE | (rng.getrandbits(12) & STATUS & ~CF) | cf
    inp = CaseInput(vals, rflags, rng.randbytes(SCRATCH_SIZE), None)
    return Case("directed", text, inp, undef, dict(regs_undef), index, seed, 0, "directed")


def directed_count() -> int:
    global _DIRECTED
    if _DIRECTED is None:
        _DIRECTED = _directed_list()
    return len(_DIRECTED)


# --- ext: POPCNT/LZCNT/TZCNT, BMI1/BMI2, ADX, MOVBE ------------------------
# Not in the default mixes: softvmm does not advertise these CPUID features
# yet, and a CPU without LZCNT/TZCNT runs them as BSR/BSF.  `--group ext`.

def g_ext(ctx: Ctx):
    rng = ctx.rng
    size = rng.choice((32, 64))
    R = REGN[size]
    d, s1, s2 = ctx.reg(), ctx.reg(), ctx.reg()
    src = R[s1] if rng.random() < 0.7 else ctx.mem(size)
    k = rng.choice(("popcnt", "lzcnt", "tzcnt", "andn", "bextr", "blsi", "blsr", "blsmsk", "bzhi",
                    "pdep", "pext", "rorx", "sarx", "shlx", "shrx", "mulx", "adcx", "adox", "movbe"))
    if k in ("popcnt", "lzcnt", "tzcnt"):
        if rng.random() < 0.5:
            size = 16
            src = REG16[s1] if "[" not in src else src.replace("dword", "word").replace("qword", "word")
            R = REG16
        ctx.emit(f"{k} {R[d]}, {src}", 0 if k == "popcnt" else OF | SF | PF | AF)
    elif k in ("andn", "bextr", "bzhi", "pdep", "pext"):
        undef = {"andn": AF | PF, "bextr": AF | SF | PF, "bzhi": AF | PF}.get(k, 0)
        writes = STATUS if undef else 0
        if k in ("bextr", "bzhi") and rng.random() < 0.6:
            ctx.regs[s2] = rng.randrange(0, 0x10000) if k == "bextr" else rng.randrange(0, 300)
        ctx.emit(f"{k} {R[d]}, {src if k in ('bextr', 'bzhi') else R[s2]}, "
                 f"{R[s2] if k in ('bextr', 'bzhi') else src}", undef, 0, writes)
    elif k in ("blsi", "blsr", "blsmsk"):
        ctx.emit(f"{k} {R[d]}, {src}", AF | PF)
    elif k == "rorx":
        ctx.emit(f"rorx {R[d]}, {src}, {rng.randrange(256)}", 0, 0, 0)
    elif k in ("sarx", "shlx", "shrx"):
        ctx.emit(f"{k} {R[d]}, {src}, {R[s2]}", 0, 0, 0)
    elif k == "mulx":
        ctx.reserved.add(2)
        d, d2 = ctx.reg(), ctx.reg()
        ctx.reserved.discard(2)
        if d == d2:                       # same destinations: the result is undefined
            d2 = (d2 + 1) % 16
            if d2 in ctx.reserved or d2 == 2:
                return
        ctx.emit(f"mulx {R[d]}, {R[d2]}, {src}", 0, 0, 0)
    elif k in ("adcx", "adox"):
        f = CF if k == "adcx" else OF
        ctx.emit(f"{k} {R[d]}, {src}", 0, f, f)
    else:
        m = ctx.mem(size)
        if rng.random() < 0.5:
            ctx.emit(f"movbe {R[d]}, {m}", 0, 0, 0)
        else:
            ctx.emit(f"movbe {m}, {R[d]}", 0, 0, 0)


GROUPS["ext"] = [g_ext]


def g_ext2(ctx: Ctx):
    """CRC32 (every source size), 16-bit MOVBE, memory forms of ADCX/ADOX."""
    rng = ctx.rng
    k = rng.choice(("crc32", "crc32", "movbe16", "adx_mem"))
    d = ctx.reg()
    if k == "crc32":
        dsize, ssize = rng.choice(((32, 8), (32, 16), (32, 32), (64, 8), (64, 64)))
        src, _ = _rm(ctx, ssize)
        ctx.emit(f"crc32 {REGN[dsize][d]}, {src}", 0, 0, 0)
    elif k == "movbe16":
        m = ctx.mem(16)
        ctx.emit(f"movbe {REG16[d]}, {m}" if rng.random() < 0.5 else f"movbe {m}, {REG16[d]}", 0, 0, 0)
    else:
        op, f = rng.choice((("adcx", CF), ("adox", OF)))
        size = rng.choice((32, 64))
        ctx.emit(f"{op} {REGN[size][d]}, {ctx.mem(size)}", 0, f, f)


GROUPS["ext"].append(g_ext2)


# --- misc: ENTER/LEAVE, XLAT, LOOPcc/JrCXZ, NOP and hint forms, fences,
# #UD encodings, LOCKed read-modify-writes, far BT offsets, a32 strings --

_NOPS = ("nop", "pause", "lfence", "mfence", "sfence", "nop dword [rax+rax*1+0]", "nop word [rax+rax*1+0]",
         "db 0x0f, 0x1f, 0x00", "db 0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00",
         "db 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00", "prefetcht0 [rax]",
         "prefetcht1 [rcx+rdx*8]", "prefetcht2 [rsi-1]", "prefetchnta [rdi]", "prefetchw [rax]",
         "prefetch [rbx]", "db 0x0f, 0x19, 0x04, 0x24", "db 0x0f, 0x1e, 0xc8", "xchg eax, eax")
_UDS = ("ud2", "ud1 eax, [rax]", "db 0x0f, 0xff, 0xc0", "db 0xce", "db 0xd6", "db 0x27", "db 0x2f",
        "db 0x37", "db 0x3f", "db 0xd4, 0x0a", "db 0xd5, 0x0a", "db 0x0f, 0xb8, 0xc0",
        "db 0x0f, 0xc7, 0xc8", "db 0x0f, 0xba, 0xc0, 0x01", "db 0xf0, 0x0f, 0xa3, 0x03",
        "db 0xf0, 0x01, 0xc0", "db 0xc4, 0xe2, 0x7c, 0xf2, 0xc0", "db 0x66, 0xc4, 0xe2, 0x78, 0xf2, 0xc0",
        "db 0x0f, 0x38, 0xf0, 0xc0", "db 0x60", "db 0x61", "db 0x06", "db 0x1f", "db 0x9a, 0, 0, 0, 0, 0, 0")


def g_misc(ctx: Ctx):
    rng = ctx.rng
    k = rng.choice(("enter", "enter", "leave", "xlat", "loop", "loop", "nop", "ud", "lock", "lock",
                    "bt_far", "cx16", "a32str", "xchg8h"))
    if k in ("enter", "leave") and (ctx.base == 5 or ctx.lines):
        k = "xlat"
    if k == "enter":
        level = rng.choice((0, 1, 2, 3, 4, 7, 31, 32, 33, rng.randrange(256)))
        alloc = rng.choice((0, 1, 8, 16, 0x100, 0xFFFF, rng.randrange(0x200)))
        ctx.regs[5] = (DATA_PTR + rng.randrange(-0x100, 0x380)) & ~(0 if rng.random() < 0.2 else 7)
        # (RBP stays canonical: a non-canonical stack access must be #SS(0), and
        # softvmm's MMU still raises #GP for it -- see the report of wave2/int)
        if rng.random() < 0.05:
            ctx.regs[5] |= rng.getrandbits(15) << 32
        o16 = "o16 " if rng.random() < 0.15 else ""
        ctx.emit(f"{o16}enter {alloc}, {level}", 0, 0, 0)
        ctx.stop = True
    elif k == "leave":
        ctx.regs[5] = (STACK_PTR + rng.randrange(-0x200, 0x180)) & ~(0 if rng.random() < 0.2 else 7)
        if rng.random() < 0.1:
            ctx.regs[5] = rand_value(rng) & 0x7FFFFFFFFFF    # #PF far away (canonical: see enter)
        ctx.emit(rng.choice(("leave", "leave", "o16 leave")), 0, 0, 0)
        ctx.stop = True
    elif k == "xlat":
        if ctx.base != 3:
            ctx.regs[3] = DATA_PTR + rng.randrange(-0x100, 0x100)
            ctx.reserved.add(3)
        ctx.emit(rng.choice(("xlatb", "xlatb", "a32 xlatb")), 0, 0, 0)
    elif k == "loop":
        op = rng.choice(("loop", "loope", "loopne", "jrcxz", "jecxz", "loop_a32", "loope_a32"))
        if 1 in ctx.reserved or ctx.base == 1:
            return
        ctx.regs[1] = rng.choice((0, 1, 2, 0x100000000, 0x100000001, 0xFFFFFFFF, M64, rand_value(rng)))
        ctx.reserved.add(1)
        lbl = f".t{len(ctx.lines)}"
        tail = ", ecx" if op.endswith("_a32") else ""
        op = op.replace("_a32", "")
        reads = ZF if op in ("loope", "loopne") else 0
        r = ctx.reg()
        if ctx.emit(f"{op} {lbl}{tail}", 0, reads, 0):
            ctx.lines.append(f"not {REG64[r]}")
            ctx.lines.append(f"{lbl}:")
    elif k == "nop":
        ctx.emit(rng.choice(_NOPS) if rng.random() < 0.8 else f"clflush {ctx.mem(8)[5:]}", 0, 0, 0)
    elif k == "ud":
        ctx.emit(rng.choice(_UDS), 0, 0, 0)
        ctx.stop = True
    elif k == "lock":
        op = rng.choice(("add", "or", "adc", "sbb", "and", "sub", "xor", "inc", "dec", "neg", "not",
                         "xchg", "xadd", "cmpxchg", "bts", "btr", "btc"))
        size = rng.choice((16, 32, 64) if op.startswith("bt") else (8, 16, 32, 64))
        m = ctx.mem(size)
        if op in ("inc", "dec", "neg", "not"):
            writes = {"inc": STATUS & ~CF, "dec": STATUS & ~CF, "neg": STATUS, "not": 0}[op]
            ctx.emit(f"lock {op} {m}", 0, 0, writes)
        elif op.startswith("bt"):
            src = str(rng.randrange(256)) if rng.random() < 0.5 else REGN[size][ctx.reg()]
            if not src.isdigit():
                ctx.regs[REGN[size].index(src)] = rng.randrange(-300, 300) & M64
            ctx.emit(f"lock {op} {m}, {src}", UNDEF_FLAGS[op], 0, CF | OF | SF | AF | PF)
        else:
            reads = CF if op in ("adc", "sbb") else 0
            ctx.emit(f"lock {op} {m}, {REGN[size][ctx.reg()]}", UNDEF_FLAGS.get(op, 0), reads,
                     0 if op == "xchg" else STATUS)
    elif k == "bt_far":
        op = rng.choice(("bt", "bts", "btr", "btc"))
        size = rng.choice((16, 32, 64))
        s = ctx.reg()
        # (an RBP-based operand must stay canonical: SS-relative, see enter)
        sh = rng.randrange(3, 46 if ctx.base == 5 else 64 if size == 64 else size)
        v = (1 << sh) + rng.randrange(-64, 64)
        ctx.regs[s] = (-v if rng.random() < 0.5 else v) & M64
        ctx.emit(f"{op} {ctx.mem(size)}, {REGN[size][s]}", UNDEF_FLAGS[op], 0, CF | OF | SF | AF | PF)
        ctx.stop = True
    elif k == "cx16":
        if ctx.reserved & {0, 1, 2, 3} or ctx.base in (0, 1, 2, 3):
            return
        ctx.regs[ctx.base] = DATA_PTR
        disp = rng.randrange(-8, 8) * 16 + rng.choice((8, 4, 1, 0))
        ctx.emit(f"{rng.choice(('', 'lock '))}cmpxchg16b [{REG64[ctx.base]}{disp:+d}]", 0, 0, ZF)
        ctx.stop = True
    elif k == "a32str":
        if ctx.lines or ctx.base in (1, 6, 7):
            return
        op = rng.choice(("movs", "stos", "lods", "cmps", "scas"))
        sfx = rng.choice("bwdq")
        rp = rng.choice(("", "rep ")) if op in ("movs", "stos", "lods") else rng.choice(("", "repe ", "repne "))
        hi = lambda: rng.getrandbits(32) << 32 if rng.random() < 0.7 else 0
        ctx.regs[1] = hi() | rng.choice((0, 1, 2, 3, 7, 16))
        ctx.regs[6] = hi() | (DATA_PTR + rng.randrange(-0x100, 0x100))
        ctx.regs[7] = hi() | (DATA_PTR + rng.randrange(-0x100, 0x100))
        if rng.random() < 0.5:
            ctx.rflags |= DF
        if rp and not ctx.regs[1] & M32:
            # zero iterations: some CPUs still write ECX, EDI or ESI (their
            # upper halves cleared: seen with SCAS/CMPS and STOS), others
            # write nothing, as the SDM's pseudo-code has it
            for r in (1, 6, 7):
                ctx.regs_undef[r] = M64 & ~M32
        ctx.emit(f"a32 {rp}{op}{sfx}", 0, 0, STATUS if op in ("cmps", "scas") else 0)
        ctx.stop = True
    else:
        a, b = rng.choice(REG8H), rng.choice(REG8H)
        if {0, 1, 2, 3} & ctx.reserved:
            return
        line = rng.choice((f"xchg {a}, {b}", f"cmpxchg {a}, {b}", f"xadd {a}, {b}", f"bswap {REG32[ctx.reg()]}"))
        ctx.emit(line, 0, 0, STATUS if line.startswith(("cmpxchg", "xadd")) else 0)


GROUPS["misc"] = [g_misc]
WEIGHTS["misc"] = 2
WEIGHTS["ext"] = 1
