"""Exits the vCPU completes itself, as self-checking guests through the
real `bhive run` on 1, 2, 4 and 8 vCPUs: unknown MSRs follow `[msr]
unknown` on every CPU (and are logged), and an IN/OUT loop runs exactly N
times with RAX merged and RIP advanced once per instruction."""

from __future__ import annotations

import re

import pytest

from support import REPO, run_dir

SEED = REPO / "guests" / "seed"
CPUS = [1, 2, 4, 8]


@pytest.mark.parametrize("policy", ["gp", "ignore"])
@pytest.mark.parametrize("cpus", CPUS)
def test_an_unknown_msr_follows_the_policy_on_every_cpu(run_guest, cpus, policy):
    name = f"seed1-{policy}-{cpus}"
    out = run_guest(SEED / "seed1_msr.asm", cpus, name, f'[msr]\nunknown = "{policy}"\n')
    reports = re.findall(r"seed1: vCPU (\d+) rdmsr (\S+) wrmsr (\S+)", out)
    assert sorted(int(c) for c, _, _ in reports) == list(range(cpus)), out
    expected = ("#GP", "#GP") if policy == "gp" else ("0", "ok")
    assert all((rd, wr) == expected for _, rd, wr in reports), out
    assert f"seed1: all vCPUs reported: {cpus}" in out
    # ... and each vCPU logged what it did with the MSR, host side
    logs = run_dir(name) / "logs"
    action = "#GP" if policy == "gp" else "ignored"
    for cpu in range(cpus):
        text = (logs / f"vcpu{cpu}.log").read_text()
        assert "unknown-msr msr=0x1b0" in text and f"action={action}" in text, text


@pytest.mark.parametrize("cpus", CPUS)
def test_an_in_out_loop_runs_exactly_n_times_with_rax_and_rip_right(run_guest, cpus):
    out = run_guest(SEED / "seed2_inout.asm", cpus, f"seed2-{cpus}")
    exact = sorted(int(c) for c in re.findall(r"seed2: vCPU (\d+) exits exact: 500", out))
    assert exact == list(range(cpus)), out
    assert f"seed2: all vCPUs exact: {cpus}" in out
