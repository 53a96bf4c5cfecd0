"""The differential CPU tester: generator, comparator, kvm-vs-kvm
self-consistency, directed cases with known answers, and the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bhive.accel import get
from bhive.difftest import gen
from bhive.difftest.machine import CODE, SCRATCH_SIZE, STACK_PTR, CaseInput, Outcome
from bhive.difftest.runner import assemble_batch, compare, format_divergence

from support import REPO


_kvm_ok, _kvm_why = get("kvm").available()
_skip_no_kvm = pytest.mark.skipif(not _kvm_ok, reason=f"kvm accelerator unavailable: {_kvm_why}")


def needs_kvm(fn):
    return pytest.mark.kvm(_skip_no_kvm(fn))


# --- no KVM needed ------------------------------------------------------

def test_generator_is_deterministic():
    for g in gen.group_names():
        a = [gen.make_case(123, i, g) for i in range(50)]
        b = [gen.make_case(123, i, g) for i in range(50)]
        assert [(c.text, c.inp, c.flags_undef, c.regs_undef) for c in a] == \
               [(c.text, c.inp, c.flags_undef, c.regs_undef) for c in b]
    assert [gen.make_case(1, i).text for i in range(50)] != [gen.make_case(2, i).text for i in range(50)]
    # replaying one case by index gives the same case as inside a run, and the
    # case remembers the --group it was drawn from (the replay command uses it)
    assert gen.make_case(9, 777).text == [gen.make_case(9, i) for i in range(770, 780)][7].text
    assert gen.make_case(9, 777, "int").mix == "int"
    assert gen.make_case(9, 3, "directed").text == gen.make_case(9, 3 + gen.directed_count(), "directed").text


def test_every_group_assembles():
    for g in gen.group_names():
        cases = [gen.make_case(5, i, g) for i in range(300)]
        code, addrs = assemble_batch(cases, CODE)
        assert len(addrs) == 300 and addrs[0] == CODE and addrs == sorted(addrs)
        assert CODE + len(code) > max(addrs)


def test_undefined_flag_table():
    F = gen
    assert F.shift_undef("shl", 32, 0) == 0
    assert F.shift_undef("shl", 32, 1) == F.AF
    assert F.shift_undef("shl", 32, 5) == F.AF | F.OF
    assert F.shift_undef("shl", 32, 32) == 0                 # masked to 0
    assert F.shift_undef("shr", 8, 9) == F.AF | F.OF | F.CF  # count >= width
    assert F.shift_undef("rcl", 64, 1) == 0
    assert F.shift_undef("ror", 16, 3) == F.OF
    assert F.UNDEF_FLAGS["and"] == F.AF
    assert F.UNDEF_FLAGS["div"] == F.STATUS


def _outcome(**kw):
    base = dict(kind="ok", regs=[0] * 16, rflags=0x2, rip=CODE, scratch=bytes(SCRATCH_SIZE))
    base.update(kw)
    return Outcome(**base)


def test_comparator_masks_only_undefined_bits():
    case = gen.Case("alu", "and eax, ebx", CaseInput([0] * 16, 2, bytes(SCRATCH_SIZE)),
                    flags_undef=gen.AF, regs_undef={3: 0xFF})
    a = _outcome()
    assert compare(case, a, _outcome(rflags=0x2 | gen.AF)) == []
    assert compare(case, a, _outcome(regs=[0, 0, 0, 0x12] + [0] * 12)) == []
    d = compare(case, a, _outcome(rflags=0x2 | gen.CF))
    assert d and "rflags" in d[0]
    d = compare(case, a, _outcome(regs=[1] + [0] * 15))
    assert d and "rax" in d[0]
    d = compare(case, a, _outcome(scratch=b"\1" + bytes(SCRATCH_SIZE - 1)))
    assert d and "memory" in d[0]
    d = compare(case, a, _outcome(kind="exc", vector=0))
    assert d and "exception #0" in d[0]
    text = format_divergence(case, "kvm", "softvmm", a, _outcome(kind="exc", vector=0), d)
    assert "and eax, ebx" in text and "--seed" in text


# --- KVM ----------------------------------------------------------------

@needs_kvm
def test_kvm_vs_kvm_is_self_consistent():
    from bhive.difftest.runner import DiffTester
    t = DiffTester("kvm", "kvm", batch=500)
    try:
        st = t.run(20260, 1500, "all", out=None)
    finally:
        t.close()
    assert (st.cases, st.divergences, st.skipped) == (1500, 0, 0)


@needs_kvm
def test_wrong_result_is_reported_as_divergence():
    from bhive.difftest.runner import DiffTester

    def corrupt(case, o):
        if case.index % 3 == 0:
            o.regs[0] ^= 1 << 40

    t = DiffTester("kvm", "kvm", batch=100, mutate_b=corrupt)
    try:
        st = t.run(77, 30, "alu", out=None, max_reports=3)
    finally:
        t.close()
    assert st.divergences == 10
    assert len(st.reports) == 3 and "DIVERGENCE" in st.reports[0] and "rax" in st.reports[0]


DIRECTED = [
    # (text, initial {reg index: value}, rflags, expected {reg index: value}, flags set, flags clear)
    ("add rax, rbx", {0: 0x7FFFFFFFFFFFFFFF, 3: 1}, 0x2, {0: 0x8000000000000000}, gen.OF | gen.SF, gen.CF | gen.ZF),
    ("sub eax, ebx", {0: 0xFFFFFFFF00000001, 3: 2}, 0x2, {0: 0xFFFFFFFF}, gen.CF | gen.SF, gen.ZF | gen.OF),
    ("adc al, 0xFF", {0: 0x1200}, 0x3, {0: 0x1200}, gen.CF | gen.ZF, gen.SF),
    ("shl rdx, cl", {2: 1, 1: 0x40}, 0x2 | gen.CF, {2: 1}, gen.CF, 0),          # count masked to 0
    ("shl edx, cl", {2: 0xFFFFFFFF00000001, 1: 0x20}, 0x2, {2: 0x1}, 0, 0),      # 32-bit write zero-extends
    ("mul rcx", {0: 1 << 63, 1: 4}, 0x2, {0: 0, 2: 2}, gen.CF | gen.OF, 0),
    ("idiv ecx", {0: 0xFFFFFFF9, 2: 0xFFFFFFFF, 1: 2}, 0x2, {0: 0xFFFFFFFD, 2: 0xFFFFFFFF}, 0, 0),
    ("bswap rsi", {6: 0x0102030405060708}, 0x2, {6: 0x0807060504030201}, 0, 0),
    ("movsx r9, r10b", {10: 0x80}, 0x2, {9: 0xFFFFFFFFFFFFFF80}, 0, 0),
    ("cmovz r11d, r12d", {11: 0xFFFFFFFFFFFFFFFF, 12: 5}, 0x2, {11: 0xFFFFFFFF}, 0, 0),  # not taken: zero-extends
    ("bsr eax, ebx", {3: 0x00F0}, 0x2, {0: 7}, 0, gen.ZF),
    ("xadd r8, r9", {8: 3, 9: 4}, 0x2, {8: 7, 9: 3}, 0, gen.ZF),
    ("cqo", {0: 1 << 63}, 0x2, {2: 0xFFFFFFFFFFFFFFFF}, 0, 0),
    ("lea eax, [rbx+rcx*8-1]", {3: 0x100000000, 1: 1}, 0x2, {0: 7}, 0, 0),
]


@needs_kvm
def test_directed_known_answers_on_kvm():
    from bhive.difftest.machine import Machine
    m = Machine("kvm")
    try:
        cases = [gen.Case("directed", t, CaseInput([0] * 4 + [STACK_PTR] + [0] * 11, fl, bytes(SCRATCH_SIZE)))
                 for t, _, fl, *_ in DIRECTED]
        for c, (_, init, *_r) in zip(cases, DIRECTED):
            for i, v in init.items():
                c.inp.regs[i] = v
        code, addrs = assemble_batch(cases, CODE)
        m.load_code_at(CODE, code)
        for c, addr, (text, init, fl, exp, fset, fclr) in zip(cases, addrs, DIRECTED):
            o = m.run_case(addr, c.inp)
            assert o.kind == "ok", text
            for i, v in exp.items():
                assert o.regs[i] == v, f"{text}: {gen.REG64[i]} = {o.regs[i]:#x}, expected {v:#x}"
            assert o.rflags & fset == fset, f"{text}: rflags {o.rflags:#x}"
            assert o.rflags & fclr == 0, f"{text}: rflags {o.rflags:#x}"
        # #DE is reported with its vector and the faulting RIP
        c = gen.Case("directed", "div rcx", CaseInput([1, 0, 0, 0, STACK_PTR] + [0] * 11, 2, bytes(SCRATCH_SIZE)))
        code, (addr,) = assemble_batch([c], CODE + 0x10000)
        m.load_code_at(CODE + 0x10000, code)
        o = m.run_case(addr, c.inp)
        assert (o.kind, o.vector, o.rip) == ("exc", 0, addr)
        # #PF error codes: a read-modify-write that faults reports a write
        # (W=1), and leaves RFLAGS as they were; reads report W=0.
        for text, err in (("add [rbx], rax", 6), ("mov rax, [rbx]", 4), ("inc dword [rbx]", 6)):
            regs = [0, 0, 0, 0x15008, STACK_PTR] + [0] * 11
            c = gen.Case("directed", text, CaseInput(regs, 0x202 | gen.ZF, bytes(SCRATCH_SIZE)))
            code, (addr,) = assemble_batch([c], CODE + 0x11000)
            m.load_code_at(CODE + 0x11000, code)
            o = m.run_case(addr, c.inp)
            assert (o.kind, o.vector, o.error_code, o.cr2) == ("exc", 14, err, 0x15008), text
            assert o.rflags & 0xFFFF == 0x202 | gen.ZF, text
    finally:
        m.close()


@needs_kvm
def test_cli_prints_seed_and_succeeds():
    p = subprocess.run([sys.executable, "-m", "bhive.difftest", "--seed", "31", "--cases", "300",
                        "--a", "kvm", "--b", "kvm"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "seed 31"
    assert "300 cases, 0 divergences" in lines[-1]


def _softvmm_reason() -> str | None:
    try:
        acc = get("softvmm")
    except Exception as e:  # not built yet: the package has no ACCELERATOR
        return f"softvmm not built yet ({type(e).__name__}: {e})"
    ok, why = acc.available()
    return None if ok else f"softvmm unavailable: {why}"


@needs_kvm
@pytest.mark.parametrize("engine", ["interpreter", "jit"])
@pytest.mark.parametrize("group,n", [("int", 3000), ("directed", gen.directed_count()),
                                     ("misc", 2000), ("ext", 2000), ("string", 1000), ("xchg", 1000)])
def test_kvm_vs_softvmm(group, n, engine):
    """Every integer group against the native CPU (`int` mixes them all; the
    others make sure each gets a fair share; `directed` is the whole list),
    once through softvmm's interpreter and once through its JIT, which
    translates every case before its first run."""
    why = _softvmm_reason()
    if why:
        pytest.skip(why)
    from bhive.difftest.runner import DiffTester
    t = DiffTester("kvm", "softvmm", batch=1000)
    t.mb.vcpu.jit_config(0 if engine == "jit" else -1)
    try:
        st = t.run(4242, n, group, max_reports=5, out=None)
        translated = t.mb.vcpu.stats()["jit_blocks"]
    finally:
        t.close()
    assert (translated > 0) == (engine == "jit"), translated
    assert st.cases == n and st.skipped == 0
    assert st.divergences == 0, "\n\n".join(st.reports)


@needs_kvm
def test_kvm_vs_softvmm_x87_and_sse():
    why = _softvmm_reason()
    if why:
        pytest.skip(why)
    from bhive.difftest.runner import DiffTester
    t = DiffTester("kvm", "softvmm", batch=1000)
    try:
        for group, seed in (("sse", 4243), ("x87", 4244)):
            st = t.run(seed, 15000, group, max_reports=5, out=None)
            assert st.cases == 15000 and st.skipped == 0, group
            assert st.divergences == 0, "\n\n".join(st.reports)
    finally:
        t.close()
