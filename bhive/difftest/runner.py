"""Batch assembly, running one batch on two machines, and comparison."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from .gen import GPR_NAMES_DISPLAY, Case, make_case
from .machine import CODE, CODE_END, MARKER_INSN, SCRATCH, Machine, Outcome

# FXSAVE bytes not compared: FOP/FIP/FDP (AMD stores them only with a
# pending x87 exception), MXCSR_MASK (a CPU model constant), the reserved
# and software-available tail.
FPU_IGNORE = frozenset(list(range(6, 24)) + list(range(28, 32)) + list(range(416, 512))
                       + [32 + 16 * i + j for i in range(8) for j in range(10, 16)])


def fpu_diff(a: bytes, b: bytes) -> list[str]:
    out = []
    for name, off, n in (("fcw", 0, 2), ("fsw", 2, 2), ("ftw", 4, 1), ("mxcsr", 24, 4)):
        va, vb = int.from_bytes(a[off:off + n], "little"), int.from_bytes(b[off:off + n], "little")
        if va != vb:
            out.append(f"{name:>6}: {va:#x}  vs  {vb:#x}")
    for i in range(8):
        o = 32 + 16 * i
        if a[o:o + 10] != b[o:o + 10]:
            out.append(f"   st{i}: {int.from_bytes(a[o:o + 10], 'little'):#022x}  vs  "
                       f"{int.from_bytes(b[o:o + 10], 'little'):#022x}")
    for i in range(16):
        o = 160 + 16 * i
        if a[o:o + 16] != b[o:o + 16]:
            out.append(f"{'xmm' + str(i):>6}: {a[o:o + 16][::-1].hex()}  vs  {b[o:o + 16][::-1].hex()}")
    return out or ["fxsave: images differ"]


class AssemblyError(RuntimeError):
    def __init__(self, msg: str, bad_cases: set[int]):
        super().__init__(msg)
        self.bad_cases = bad_cases


def assemble_batch(cases: list[Case], org: int) -> tuple[bytes, list[int]]:
    """One nasm run for the whole batch.  Returns code and each case's address."""
    lines = ["bits 64", "default abs", f"org {org:#x}"]
    owner: dict[int, int] = {}
    for i, c in enumerate(cases):
        lines.append(f"c{i}:")
        for ln in c.text.split("\n"):
            lines.append(ln)
            owner[len(lines)] = i
        lines.append(MARKER_INSN)
    lines.append("cend:")
    lines.append("align 4")
    for i in range(0, len(cases), 16):
        lines.append("dd " + ", ".join(f"c{j}" for j in range(i, min(i + 16, len(cases)))))
    lines.append("dd cend")
    text = "\n".join(lines) + "\n"
    with tempfile.TemporaryDirectory(prefix="difftest-") as d:
        src, out = os.path.join(d, "b.asm"), os.path.join(d, "b.bin")
        with open(src, "w") as f:
            f.write(text)
        p = subprocess.run(["nasm", "-f", "bin", "-w-all", "-o", out, src],
                           capture_output=True, text=True)
        if p.returncode != 0:
            bad = {owner[int(m.group(1))] for m in re.finditer(r":(\d+): error", p.stderr)
                   if int(m.group(1)) in owner}
            raise AssemblyError(p.stderr.strip()[:2000], bad)
        code = open(out, "rb").read()
    n = len(cases) + 1
    addrs = list(struct.unpack_from(f"<{n}I", code, len(code) - 4 * n))
    return code[:addrs[-1] - org], addrs[:-1]


def fmt_outcome_kind(o: Outcome) -> str:
    if o.kind == "exc":
        s = f"exception #{o.vector} err={o.error_code:#x} at rip={o.rip:#x}"
        if o.vector == 14:
            s += f" cr2={o.cr2:#x}"
        return s
    if o.kind == "ok":
        return f"completed, rip={o.rip:#x}"
    return f"{o.kind} {o.detail}"


EXTRA_FLAG_MASK = 0   # set by --mask-flags: RFLAGS bits ignored in every case


def compare(case: Case, a: Outcome, b: Outcome) -> list[str]:
    """Differences between two outcomes after masking the undefined parts."""
    d: list[str] = []
    if a.kind != b.kind or a.vector != b.vector or a.rip != b.rip or \
            (a.kind == "exc" and (a.error_code != b.error_code or a.cr2 != b.cr2)):
        d.append(f"outcome: {fmt_outcome_kind(a)}  vs  {fmt_outcome_kind(b)}")
    for i in range(16):
        m = ~case.regs_undef.get(i, 0)
        if (a.regs[i] ^ b.regs[i]) & m:
            d.append(f"{GPR_NAMES_DISPLAY[i]:>6}: {a.regs[i]:#018x}  vs  {b.regs[i]:#018x}")
    fm = ~(case.flags_undef | EXTRA_FLAG_MASK)
    if (a.rflags ^ b.rflags) & fm:
        d.append(f"rflags: {a.rflags:#010x} ({flag_str(a.rflags)})  vs  {b.rflags:#010x} "
                 f"({flag_str(b.rflags)})  [undefined mask {case.flags_undef:#x}]")
    if a.scratch != b.scratch:
        offs = [i for i in range(len(a.scratch)) if a.scratch[i] != b.scratch[i]]
        lo = offs[0]
        d.append(f"memory: {len(offs)} byte(s) differ, first at {SCRATCH + lo:#x}: "
                 f"{a.scratch[lo:lo + 16].hex()}  vs  {b.scratch[lo:lo + 16].hex()}")
    if (a.fpu is None) != (b.fpu is None):
        d.append("fxsave: only one side has an FPU image")
    elif a.fpu is not None and a.fpu != b.fpu:
        fa, fb = bytearray(a.fpu), bytearray(b.fpu)
        for buf in (fa, fb):
            for i in FPU_IGNORE:
                buf[i] = 0
            fsw = int.from_bytes(buf[2:4], "little") & ~case.fsw_undef
            buf[2:4] = fsw.to_bytes(2, "little")
        if fa != fb:
            d += fpu_diff(fa, fb)
    return d


FLAG_NAMES = ((0x1, "CF"), (0x4, "PF"), (0x10, "AF"), (0x40, "ZF"), (0x80, "SF"), (0x100, "TF"),
              (0x200, "IF"), (0x400, "DF"), (0x800, "OF"), (0x4000, "NT"), (0x10000, "RF"),
              (0x40000, "AC"), (0x200000, "ID"))


def flag_str(f: int) -> str:
    return " ".join(n for b, n in FLAG_NAMES if f & b) or "-"


def format_divergence(case: Case, a_name: str, b_name: str, a: Outcome, b: Outcome,
                      diffs: list[str]) -> str:
    out = [f"=== DIVERGENCE seed={case.seed} case={case.index} group={case.group} "
           f"(replay: python -m bhive.difftest --seed {case.seed} --case {case.index} "
           f"--group {case.mix or case.group} --a {a_name} --b {b_name})",
           "code:"]
    out += [f"    {ln}" for ln in case.text.split("\n")]
    out.append("initial state:")
    r = case.inp.regs
    for i in range(0, 16, 4):
        out.append("    " + "  ".join(f"{GPR_NAMES_DISPLAY[j]:>3}={r[j]:#018x}" for j in range(i, i + 4)))
    out.append(f"    rflags={case.inp.rflags:#x} ({flag_str(case.inp.rflags)})")
    if case.flags_undef or case.regs_undef:
        out.append(f"    undefined: flags {case.flags_undef:#x} "
                   f"regs {[GPR_NAMES_DISPLAY[i] for i in case.regs_undef]}")
    out.append(f"{a_name}: {fmt_outcome_kind(a)}")
    out.append(f"{b_name}: {fmt_outcome_kind(b)}")
    out.append(f"diff ({a_name}  vs  {b_name}):")
    out += [f"    {x}" for x in diffs]
    return "\n".join(out)


@dataclass
class Stats:
    cases: int = 0
    divergences: int = 0
    skipped: int = 0
    seconds: float = 0.0
    reports: list[str] = field(default_factory=list)
    by_group: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.cases / self.seconds if self.seconds else 0.0


class DiffTester:
    """Runs generated cases on machines `a` and `b` and compares them.

    `mutate_b`, if given, is applied to b's outcome before the comparison
    (used by the tests to prove that the comparator can fail)."""

    def __init__(self, a: str, b: str, batch: int = 1000, mutate_b=None):
        self.a_name, self.b_name = a, b
        self.ma = Machine(a)
        self.mb = Machine(b)
        self.batch = batch
        self.mutate_b = mutate_b
        self._next = CODE

    def _place(self, cases: list[Case]) -> tuple[bytes, list[int], list[Case]]:
        for _ in range(3):
            try:
                code, addrs = assemble_batch(cases, self._next)
            except AssemblyError as e:
                if not e.bad_cases:
                    raise
                print(f"difftest: generator produced unassemblable case(s) "
                      f"{sorted(cases[i].index for i in e.bad_cases)}: {e}", file=sys.stderr)
                cases = [c for i, c in enumerate(cases) if i not in e.bad_cases]
                continue
            if self._next + len(code) > CODE_END:
                self._next = CODE
                continue
            return code, addrs, cases
        raise RuntimeError("cannot place batch")

    def run_cases(self, cases: list[Case], stats: Stats, max_reports: int = 10,
                  out=sys.stdout) -> None:
        n0 = len(cases)
        code, addrs, cases = self._place(cases)
        stats.skipped += n0 - len(cases)
        base = self._next
        self.ma.load_code_at(base, code)
        self.mb.load_code_at(base, code)
        self._next = (base + len(code) + 0xFFF) & ~0xFFF
        for c, addr in zip(cases, addrs):
            oa = self.ma.run_case(addr, c.inp)
            ob = self.mb.run_case(addr, c.inp)
            if self.mutate_b:
                self.mutate_b(c, ob)
            stats.cases += 1
            diffs = compare(c, oa, ob)
            if diffs:
                stats.divergences += 1
                stats.by_group[c.group] = stats.by_group.get(c.group, 0) + 1
                if len(stats.reports) < max_reports:
                    rep = format_divergence(c, self.a_name, self.b_name, oa, ob, diffs)
                    stats.reports.append(rep)
                    if out:
                        print(rep, file=out, flush=True)

    def run(self, seed: int, ncases: int, group: str = "all", start: int = 0,
            max_reports: int = 10, out=sys.stdout, progress: bool = False) -> Stats:
        stats = Stats()
        t0 = time.perf_counter()
        i = start
        end = start + ncases
        while i < end:
            n = min(self.batch, end - i)
            cases = [make_case(seed, j, group) for j in range(i, i + n)]
            self.run_cases(cases, stats, max_reports, out)
            i += n
            if progress and out:
                el = time.perf_counter() - t0
                print(f"  {i - start}/{ncases} cases, {stats.divergences} divergences, "
                      f"{(i - start) / el:.0f} cases/s", file=sys.stderr, flush=True)
        stats.seconds = time.perf_counter() - t0
        return stats

    def close(self) -> None:
        self.ma.close()
        self.mb.close()
