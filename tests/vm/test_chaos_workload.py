"""A guest workload that keeps the interrupt path and the serial port busy
while `bhive chaos` kills the actors it uses, at least 50 times at random
instants: guests/platform/chaos.asm raises IRQ14 1500 times through
pc-testdev (OUT to port 0x200e, a completed write), each one delivered by
the IOAPIC actor as an MSI, counted by the guest's handler, and prints a
progress line on COM1 every 25.  The checks are the README's guarantees:

* an exit in flight when its actor dies is answered exactly once: every
  progress line arrives once, whole and in order (an OUT applied twice
  or lost would show), and the VM ends through isa-debug-exit;
* an interrupt raised around a crash is delivered: the guest never had to
  raise one again ("retries 0"), received at least 1500, and the IOAPIC
  actor dropped none; an edge only once (exactly 1500) is the README's
  known gap, an expected failure here until it is closed.
"""

from __future__ import annotations

import json
import re

import pytest

from support import REPO, run_dir, wait_for

CONFIG = REPO / "configs" / "platform.toml"
KILLED = ["ioapic", "testdev", "uart", "pit", "rtc", "pic"]


@pytest.fixture(scope="module")
def workload(bhive, tmp_path_factory):
    """The workload under 60 kills, run once: (chaos report, console, stats, VM info)."""
    name = "chaos-work"
    cfg = tmp_path_factory.mktemp("work") / "work.toml"
    text = CONFIG.read_text().replace("../guests/platform/route.asm", str(REPO / "guests/platform/chaos.asm"))
    for dev in KILLED:
        text = text.replace(f"[devices.{dev}]\n", f"[devices.{dev}]\nmax_restarts = 100\n", 1)
    cfg.write_text(text)
    proc = bhive.run("run", cfg, "--smp", 2, "--name", name, "--detach", timeout=60)
    assert proc.returncode == 0, proc.stderr
    chaos = bhive.run("chaos", name, "--kill", ",".join(KILLED), "--every", "20ms", "--jitter", "15ms",
                      "--count", 60, "--seed", 14, "--json", timeout=120)
    console = run_dir(name) / "logs" / "console.log"
    during = console.read_bytes()
    report = json.loads(chaos.stdout)
    assert chaos.returncode == 0, (report, chaos.stderr)
    assert b"progress 1500" not in during, "the kills came too late to be mid-run"

    def ended():
        info = json.loads((run_dir(name) / "supervisor.json").read_text())
        return info if info.get("state") == "stopped" else None
    info = wait_for(ended, 240, 0.1, "the VM to finish")
    stats = json.loads(bhive.run("stats", name, "--json").stdout)
    return report, console.read_bytes().decode(), stats, info


def test_60_kills_land_on_every_actor_of_the_workload(workload):
    report, _, _, _ = workload
    assert report["total_kills"] == 60 and set(report["kills"]) == set(KILLED), report
    assert report["restart_latency_ms"]["all"]["n"] == 60, report
    assert report["guest_errors"] == [] and report["failures"] == [] and report["ok"]


def test_every_exit_is_answered_once_and_no_interrupt_is_lost(workload):
    _, out, stats, info = workload
    assert info["status"] == 1, (info, out[-2000:])
    progress = re.findall(r"^progress (\d+)$", out, re.M)
    assert progress == [str(n) for n in range(25, 1501, 25)], progress
    m = re.search(r"irq14 received (\d+) irq0 received \d+ retries (\d+)", out)
    assert m, out[-2000:]
    assert int(m.group(1)) >= 1500 and int(m.group(2)) == 0, out[-2000:]   # none lost, none raised again
    assert "EXC" not in out and "lost" not in out
    row = next(r for r in stats["rows"] if r["source"] == "ioapic" and r["vector"] == 0x20)
    assert row["dropped"] == 0 and row["sent"] >= 1500, row
    assert sum(row["per_cpu"]) == row["sent"], row      # what the IOAPIC sent, the vCPUs injected


@pytest.mark.xfail(reason="known gap (README, Chaos): an edge whose line change or MSI escaped before its "
                          "device's or the IOAPIC's commit is raised again by the replayed request; one run "
                          "saw 1507 deliveries for 1500 pulses", strict=False)
def test_no_edge_interrupt_is_delivered_twice(workload):
    _, out, stats, _ = workload
    m = re.search(r"irq14 received (\d+)", out)
    assert m and int(m.group(1)) == 1500, out[-2000:]
    row = next(r for r in stats["rows"] if r["source"] == "ioapic" and r["vector"] == 0x20)
    assert row["sent"] == 1500, row
