"""softvmm's port lane (csrc/pio_lane.c): UART writes posted into the
actor's channel and LSR reads answered from the actor's register mirror,
without exits, through the real processes.  It must be invisible to the
guest: loopback mode (where a THR write changes LSR at once) still reads
right, and every byte arrives exactly once."""

from __future__ import annotations

import re

from support import REPO, run_dir

GUEST = REPO / "guests" / "uart" / "loopback.asm"


def vcpu_stopped_line(name: str) -> str:
    log = run_dir(name) / "logs" / "vcpu0.log"
    return next(l for l in log.read_text().splitlines() if " stopped " in l)


def test_loopback_reads_through_the_lane_are_exact(bhive, vm_config):
    p = bhive.run("run", vm_config(GUEST, memory="16M"), "--name", "lane-loop", timeout=120)
    out = p.stdout.decode()
    assert "loopback: 2000 rounds, 0 errors" in out, out[-500:]
    assert p.returncode == 1, p.stderr
    assert out.count(".") == 2000                      # every normal-mode byte, once


def test_the_lane_takes_the_console_off_the_exit_path(bhive, vm_config):
    """The same guest with and without lanes: the output is identical, and
    with lanes almost no UART access leaves the vCPU (loopback rounds
    still must: their LSR reads wait for posted MCR writes)."""
    cfg = vm_config(GUEST, memory="16M")
    with_lanes = bhive.run("run", cfg, "--name", "lane-on", timeout=120)
    bhive.env["BHIVE_NO_PORT_LANES"] = "1"
    without = bhive.run("run", cfg, "--name", "lane-off", timeout=120)
    assert with_lanes.stdout == without.stdout and with_lanes.returncode == without.returncode == 1
    exits_on = int(re.search(r"exits_uart=(\d+)", vcpu_stopped_line("lane-on")).group(1))
    exits_off = int(re.search(r"exits_uart=(\d+)", vcpu_stopped_line("lane-off")).group(1))
    assert exits_off > 2000 * 8                         # every access exits without the lane
    assert exits_on < exits_off / 2, (exits_on, exits_off)
