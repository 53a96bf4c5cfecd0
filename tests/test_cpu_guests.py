"""CPU test guests (guests/cpu/*.asm) through the real `bhive run`: real
vCPU processes, real UART and isa-debug-exit actors.  Each guest reports
PASS/FAIL/SKIP lines over the UART and exits with its failure count."""

from __future__ import annotations

import re

EXPECTED_SYS64 = [
    "#DE divide error", "#DB single-step (TF)", "#BP int3", "#UD for INTO in 64-bit mode", "#UD ud2",
    "#GP non-canonical", "#NP segment not present", "#SS not-present stack segment",
    "#GP(sel) SS with RPL != CPL", "#PF not present read (err 0)",
    "#PF write to read-only at CPL0 with CR0.WP (err 3)", "#PF reserved bit (err 9)",
    "#PF NX fetch (err 0x11)", "#PF user read of supervisor page (err 5)",
    "#PF user write to read-only page (err 7)",
    "#GP INT 0x80 through a DPL0 gate from CPL3 (err 0x402)",
    "IRETQ to CPL3 and #BP back through a DPL3 gate",
    "#AC misaligned access at CPL3 with CR0.AM and EFLAGS.AC",
    "SYSCALL -> SYSRET -> SYSCALL round trip", "#DF for #NP while delivering #GP",
]


def test_sys64_exceptions_paging_user_mode_syscall(bhive):
    proc = bhive.run("run", "configs/cpu-sys64.toml", "--name", "cpu-sys64", timeout=120)
    out = proc.stdout.decode(errors="replace")
    fails = re.findall(r"^FAIL .*$", out, re.M)
    assert not fails, out
    passed = re.findall(r"^PASS (.*?)\r?$", out, re.M)
    assert passed == EXPECTED_SYS64, out
    assert "sys64: failures=0" in out, out
    assert proc.returncode == 1, (proc.returncode, out, proc.stderr)


def test_smp_atomics_eight_vcpu_processes(bhive):
    proc = bhive.run("run", "configs/cpu-smp-atomics.toml", "--name", "cpu-smp", timeout=180)
    out = proc.stdout.decode(errors="replace")
    assert "smp_atomics: counter=1600000 expected=1600000 PASS" in out, out
    assert proc.returncode == 1, (proc.returncode, out, proc.stderr)
