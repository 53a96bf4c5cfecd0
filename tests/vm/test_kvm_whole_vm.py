"""Whole VMs on the kvm accelerator (bhive.accel.kvm.wholevm): the same guests
and the same assertions as on softvmm (this folder's other modules), with
every `bhive run` given `--accel kvm`.  Each vCPU process runs its own
single-vCPU KVM VM; the local APICs are bhive's, in shared memory.

Guest kernel code (CPL0) runs at about 1 MIPS under this machine's nested
KVM (/work/shared/notes/measurements.md), so the subset is chosen by what
it proves, not by CPU count: the hello guest on 1, 2 and 4 vCPUs (INIT/SIPI
through the ICR, CPUID topology), IOAPIC routing of every pin to every CPU,
IPIs counted exactly, IPIs waking halted CPUs, the bring-up with the BSP's
timer running, the [msr] policy, a level-triggered pin's EOI, ExtINT from
the PIC, IRQ0 against IRQ14, a killed vCPU process, REP INS/OUTS.
Measured here, under load: about 40 s for the module.

BHIVE_TEST_ACCEL=bhyve runs the same module on FreeBSD's vmm.ko (README,
"bhyve"); it is kvm by default.
"""

from __future__ import annotations

import os

import pytest

import test_hello
import test_interrupt_routing as routing
import test_msr_policy_and_port_exits as msr_and_ports
import test_smp_bringup_and_ipis as smp
from bhive.accel import get
from support import Bhive, run_dir

ACCEL = os.environ.get("BHIVE_TEST_ACCEL", "kvm")
_ok, _why = get(ACCEL).available()
pytestmark = pytest.mark.skipif(not _ok, reason=f"{ACCEL} accelerator unavailable: {_why}")


class AccelBhive(Bhive):
    """The real CLI, with `--accel kvm` (ACCEL) added to every `bhive run`;
    remembers the VM names so the test can check that KVM really ran them."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def argv(self, *args) -> list[str]:
        args = tuple(map(str, args))
        if args and args[0] == "run":
            args = (*args, "--accel", ACCEL)
            if "--name" in args:
                self.names.append(args[args.index("--name") + 1])
        return super().argv(*args)


@pytest.fixture
def bhive():
    """This module's `bhive` (and so the folder's `run_guest`): every VM on ACCEL."""
    b = AccelBhive()
    yield b
    for name in b.names:
        log = (run_dir(name) / "logs" / "vcpu0.log").read_text()
        assert f"started accel={ACCEL}" in log, f"{name} did not run on {ACCEL}"


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_hello_guest(bhive, cpus):
    test_hello.test_hello_greets_from_every_vcpu(bhive, cpus)


@pytest.mark.parametrize("cpus", [2, 4, 8])
def test_ioapic_routes_every_pin_to_every_cpu(bhive, tmp_path, cpus):
    routing.test_every_pin_arrives_on_the_cpu_its_rte_names(bhive, tmp_path, cpus)


def test_pit_irq0_never_starves_irq14(bhive, tmp_path):
    routing.test_pit_irq0_never_starves_irq14(bhive, tmp_path, 2)


def test_vector_programmed_after_boot_is_received_exactly_m_times(bhive, tmp_path):
    routing.test_vector_0x20_programmed_after_boot_is_received_exactly_m_times(bhive, tmp_path, 2)


def test_busy_halted_and_killed_vcpus_never_block_the_ioapic(bhive, tmp_path):
    """A vCPU process (and with it its KVM VM) killed mid-run: the others go on."""
    routing.test_busy_halted_and_killed_vcpus_never_block_the_ioapic(bhive, tmp_path, 4)


def test_level_triggered_pin_and_eoi(run_guest):
    routing.test_a_level_triggered_pin_redelivers_after_eoi_while_asserted_and_never_after(run_guest, 2)


def test_pic_extint_to_the_bsp(run_guest):
    routing.test_the_pic_delivers_extint_to_the_bsp_while_the_ioapic_is_masked(run_guest)


def test_init_sipi_bringup_with_bsp_timer_running(run_guest):
    smp.test_init_sipi_brings_up_every_ap_while_the_bsp_timer_runs(run_guest, 4)


def test_fixed_vector_ipis_never_dropped(run_guest):
    smp.test_fixed_vector_ipis_are_never_dropped(run_guest, 4)


def test_ipis_wake_halted_cpus(run_guest):
    smp.test_ipis_wake_halted_cpus(run_guest, 2)


@pytest.mark.xfail(reason="seed #4 on this host's nested KVM: PAUSE-spinning APs run in KVM with no "
                          "pause-loop exiting, so 4 vCPU processes on 2 cores slowed the BSP (measured "
                          "ratio 1.42 > 1.10; it passed once on a quieter machine); softvmm backs off on "
                          "PAUSE itself (README, kvm)", strict=False)
def test_pause_spinning_aps_do_not_slow_the_bsp_timer(run_guest):
    smp.test_pause_spinning_aps_do_not_slow_the_bsp_timer(run_guest, 4)


@pytest.mark.parametrize("policy", ["gp", "ignore"])
def test_unknown_msr_follows_the_policy(run_guest, policy):
    msr_and_ports.test_an_unknown_msr_follows_the_policy_on_every_cpu(run_guest, 2, policy)


def test_in_out_loop_runs_exactly_n_times(run_guest):
    msr_and_ports.test_an_in_out_loop_runs_exactly_n_times_with_rax_and_rip_right(run_guest, 2)


STRING_IO = r"""
bits 16
org 0x8000
    xor ax, ax
    mov es, ax
    mov ds, ax
    mov si, msg
    mov cx, msg_end - msg
    mov dx, 0x3f8
    cld
    rep outsb                   ; every byte to the UART
    mov di, buf
    mov cx, 4
    mov dx, 0x2e8               ; nobody decodes it: reads float high
    rep insw
    mov eax, [buf]
    and eax, [buf + 4]
    mov dx, 0xf4
    cmp eax, 0xffffffff
    mov eax, 5
    jne .bad
    mov eax, 6
.bad:
    out dx, eax
    hlt
msg: db "string io ok", 10
msg_end:
buf: dd 0, 0
"""


def test_rep_ins_and_outs(bhive, tmp_path):
    src = tmp_path / "strio.asm"
    src.write_text(STRING_IO)
    cfg = tmp_path / "strio.toml"
    cfg.write_text(f'[boot]\nimage = "{src}"\n[devices.uart]\nport = 0x3f8\n'
                   '[devices.debug_exit]\nport = 0xf4\niosize = 4\n')
    proc = bhive.run("run", cfg, "--name", "strio", timeout=60)
    assert proc.returncode == (6 << 1) | 1, proc.stderr
    assert proc.stdout == b"string io ok\n" or proc.stdout.endswith(b"string io ok\n"), proc.stdout
