"""Whole VMs on the kvm accelerator (bhive.accel.kvm.wholevm): the same guests
and the same assertions as on softvmm, with every `bhive run` given
`--accel kvm`.  Each vCPU process runs its own single-vCPU KVM VM; the
local APICs are bhive's, in shared memory.

Guest kernel code (CPL0) runs at about 1 MIPS under this machine's nested
KVM (/work/shared/notes/measurements.md), so the subset is chosen by what
it proves, not by CPU count: the hello guest on 1, 2 and 4 vCPUs (INIT/SIPI
through the ICR, CPUID topology), IOAPIC routing of every pin to every
CPU, IPIs counted exactly, IPIs waking halted CPUs, the bring-up with the
BSP's timer running, the [msr] policy, a level-triggered pin's EOI, and
ExtINT from the PIC.  Measured here, under load: about 1 s per guest.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import conftest
import test_hello
import test_seed_cpu
import test_seed_irq
from bhive.accel import get

_ok, _why = get("kvm").available()
pytestmark = pytest.mark.skipif(not _ok, reason=f"kvm accelerator unavailable: {_why}")


class KvmBhive(conftest.Bhive):
    """The real CLI, with `--accel kvm` added to every `bhive run`; remembers
    the VM names so the test can check that KVM really ran them."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def argv(self, *args) -> list[str]:
        args = tuple(map(str, args))
        if args and args[0] == "run":
            args = (*args, "--accel", "kvm")
            if "--name" in args:
                self.names.append(args[args.index("--name") + 1])
        return super().argv(*args)


@pytest.fixture
def kvm_bhive():
    b = KvmBhive()
    yield b
    root = Path(os.environ["BHIVE_RUN_ROOT"])
    for name in b.names:
        log = (root / name / "logs" / "vcpu0.log").read_text()
        assert "started accel=kvm" in log, f"{name} did not run on kvm"


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_hello_guest(kvm_bhive, cpus):
    test_hello.test_hello_greets_from_every_vcpu(kvm_bhive, cpus)


@pytest.mark.parametrize("cpus", [2, 4])
def test_ioapic_routes_every_pin_to_every_cpu(kvm_bhive, tmp_path, cpus):
    test_seed_irq.test_seed5_every_pin_arrives_on_the_cpu_its_rte_names(kvm_bhive, tmp_path, cpus)


def test_init_sipi_bringup_with_bsp_timer_running(kvm_bhive, tmp_path):
    test_seed_cpu.test_seed3_init_sipi_bringup_with_bsp_timer_running(kvm_bhive, tmp_path, 4)


def test_programmed_vector_ipis_never_dropped(kvm_bhive, tmp_path):
    test_seed_cpu.test_seed8_programmed_vector_ipis_never_dropped(kvm_bhive, tmp_path, 4)


def test_ipis_wake_halted_cpus(kvm_bhive, tmp_path):
    test_seed_cpu.test_seed7_ipis_wake_halted_cpus(kvm_bhive, tmp_path, 2)


@pytest.mark.parametrize("policy", ["gp", "ignore"])
def test_unknown_msr_follows_the_policy(kvm_bhive, tmp_path, policy):
    test_seed_cpu.test_seed1_benign_unknown_msr_follows_the_policy_on_every_cpu(kvm_bhive, tmp_path, 2, policy)


def test_level_triggered_pin_and_eoi(kvm_bhive, tmp_path):
    test_seed_cpu.test_level_triggered_pin_redelivers_after_eoi_while_asserted_and_never_after(
        kvm_bhive, tmp_path, 2)


def test_pic_extint_to_the_bsp(kvm_bhive, tmp_path):
    test_seed_cpu.test_pic_delivers_extint_to_the_bsp_while_the_ioapic_is_masked(kvm_bhive, tmp_path)
