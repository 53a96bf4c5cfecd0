"""SMP bring-up and inter-processor interrupts, as self-checking nasm
guests (guests/seed/) through the real `bhive run`, one process per vCPU,
on 1, 2, 4 and 8 vCPUs: INIT/SIPI, PAUSE-spinning APs beside the BSP's
timer, IPIs counted exactly, halted and killed vCPUs.  Each guest reports
over the UART and exits through isa-debug-exit (status 0 -> `bhive run`
exits 1).  tests/README.md maps the seed's bugs to these tests."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from bhive.accel import softvmm

from support import REPO, run_dir, wait_for

SEED = REPO / "guests" / "seed"
CPUS = [1, 2, 4, 8]


@pytest.mark.parametrize("cpus", CPUS)
def test_init_sipi_brings_up_every_ap_while_the_bsp_timer_runs(run_guest, cpus):
    out = run_guest(SEED / "seed3_smp_boot.asm", cpus, f"seed3-{cpus}")
    aps = sorted(int(x) for x in re.findall(r"seed3: AP up: vCPU (\d+)", out))
    assert aps == list(range(1, cpus)), out
    m = re.search(r"seed3: all (\d+) vCPUs reported, BSP timer ticks (\d+)", out)
    assert m and int(m.group(1)) == cpus and int(m.group(2)) >= 5, out


@pytest.mark.parametrize("cpus", CPUS)
def test_pause_spinning_aps_do_not_slow_the_bsp_timer(run_guest, cpus):
    out = run_guest(SEED / "seed4_pause_timer.asm", cpus, f"seed4-{cpus}")
    m = re.search(r"halted-APs TSC (\d+) spinning-APs TSC (\d+) ratio\(permille\) (\d+)", out)
    assert m, out
    halted, spinning, ratio = map(int, m.groups())
    assert halted > 0 and ratio <= 1100, out        # the guest exits 4 above 1100 too


@pytest.mark.parametrize("cpus", CPUS)
def test_fixed_vector_ipis_are_never_dropped(run_guest, cpus):
    out = run_guest(SEED / "seed8_ipi_count.asm", cpus, f"seed8-{cpus}")
    rows = re.findall(r"seed8: vCPU (\d+) handler runs (\d+) payload sum (\d+)", out)
    M = 200
    assert sorted(int(r[0]) for r in rows) == list(range(cpus)), out
    assert all(int(r[1]) == 2 * M and int(r[2]) == M * (M + 1) for r in rows), out


@pytest.mark.parametrize("cpus", CPUS)
def test_ipis_wake_halted_cpus(run_guest, cpus):
    out = run_guest(SEED / "seed7_halt_wake.asm", cpus, f"seed7-{cpus}")
    assert f"seed7: halted APs woken by IPIs: {cpus - 1} APs x rounds 50" in out, out


def _dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.mark.parametrize("cpus", [2, 8])
def test_an_msi_into_a_killed_vcpu_returns_at_once(bhive, vm_config, cpus):
    from bhive.accel.base import GuestMemory
    from bhive.bus.shm import SharedRegion
    from bhive.loader import ram_slots

    name = f"seed7kill-{cpus}"
    proc = bhive.popen("run", vm_config(SEED / "seed7_hold.asm", cpus), "--name", name)
    rd = run_dir(name)
    try:
        wait_for(lambda: (rd / "logs" / "console.log").exists()
                 and b"seed7: holding" in (rd / "logs" / "console.log").read_bytes(),
                 timeout=60, what="the guest to hold")
        ram = SharedRegion(rd / "shm" / "ram")
        platform = SharedRegion(rd / "shm" / "platform")
        vm = softvmm.ACCELERATOR.vm_open(GuestMemory(ram.address, ram.size, ram_slots(64 << 20)),
                                         cpus, platform.address)
        table = {row["role"]: row for row in json.loads((rd / "procs.json").read_text())}
        victim = cpus - 1
        pid = table[f"vcpu{victim}"]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _dead(pid), timeout=10, what="the vCPU process to die")
        worst = 0.0
        for k in range(1000):
            t0 = time.perf_counter()
            vm.vm_lapic_msi(0xFEE00000 | (victim << 12), 0x60)     # fixed, physical
            worst = max(worst, time.perf_counter() - t0)
        assert worst < 0.01, f"an MSI to a dead vCPU took {worst * 1e3:.2f} ms"
        # it landed in the dead vCPU's APIC (the shm outlives the process)
        assert vm.vcpu_open(victim).lapic_read(0x230) & 1, "vector 0x60 not in the IRR"
        t0 = time.perf_counter()
        vm.vm_lapic_msi(0xFEEFF000, 0x50)                           # broadcast, dead one included
        assert time.perf_counter() - t0 < 0.01
        # The supervisor records the lost CPU and the VM goes on with the
        # others (bhive.supervisor: a SIGKILLed vCPU is "cpu-lost"); it
        # still stops cleanly on request, and nothing hangs.
        sup_log = rd / "logs" / "supervisor.log"
        wait_for(lambda: f"cpu-lost role=vcpu{victim}" in sup_log.read_text(), 10, what="cpu-lost")
        assert proc.poll() is None, "losing one vCPU ended the VM"
        assert bhive.run("stop", name).returncode == 0
        proc.wait(timeout=30)
        assert proc.returncode == 0, proc.stderr.read()
        vm.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
