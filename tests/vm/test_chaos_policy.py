"""The restart budget, the vCPU-loss policy and `bhive chaos` itself:
its flags and [chaos] table, its schedule, its report.

* a device actor may restart `max_restarts` times within any
  `restart_window`: a steady chaos run never uses the budget up, a crash
  loop does and ends the VM with status 4, saying why;
* [vm] on_vcpu_loss = "stop": a vCPU process that dies ends the VM,
  naming it and its last exit;
* bad flags and bad [chaos]/[vm] keys are one line and status 2.
"""

from __future__ import annotations

import json
import re
import signal

import pytest

from bhive import chaos
from bhive.config import ConfigError
from support import run_dir, wait_for


def ended(name: str):
    info = json.loads((run_dir(name) / "supervisor.json").read_text())
    return info if info.get("state") == "stopped" else None


def spin_with(spin, tmp_path, uart_extra: str = "", vm_extra: str = "", cpus: int = 1):
    cfg = tmp_path / "spin.toml"
    text = spin.read_text().replace("[devices.uart]\n", f"[devices.uart]\n{uart_extra}")
    text = text.replace('image = "spin.asm"', f'image = "{spin.parent / "spin.asm"}"')
    cfg.write_text(f"[vm]\ncpus = {cpus}\n{vm_extra}" + text)
    return cfg


def test_a_steady_chaos_run_never_uses_up_the_restart_budget(bhive, spin, tmp_path):
    """3 restarts per 250 ms, kills 150 ms apart: 12 kills, four times
    the budget over the run (a lifetime count would end the VM at the 4th)."""
    name = "budget-steady"
    cfg = spin_with(spin, tmp_path, 'max_restarts = 3\nrestart_window = "250ms"\n')
    assert bhive.run("run", cfg, "--name", name, "--detach").returncode == 0
    try:
        r = bhive.run("chaos", name, "--kill", "uart", "--every", "150ms", "--count", 12, "--json")
        report = json.loads(r.stdout)
        assert r.returncode == 0, report
        assert report["kills"] == {"uart": 12} and report["vm_state"] == "running", report
        assert report["restart_latency_ms"]["uart"]["n"] == 12
        table = {row["role"]: row for row in json.loads(bhive.run("ps", name, "--json").stdout)}
        assert table["uart"]["restarts"] == 12 and table["uart"]["state"] == "running"
        log = (run_dir(name) / "logs" / "supervisor.log").read_text()
        latencies = re.findall(r"restarted role=uart pid=\d+ count=\d+ latency_ms=([\d.]+)", log)
        assert len(latencies) == 12, log[-2000:]
    finally:
        bhive.run("stop", name)


def test_a_crash_loop_uses_up_the_budget_and_ends_the_vm(bhive, spin, tmp_path):
    name = "budget-loop"
    cfg = spin_with(spin, tmp_path, 'max_restarts = 3\nrestart_window = "60s"\n')
    assert bhive.run("run", cfg, "--name", name, "--detach").returncode == 0
    r = bhive.run("chaos", name, "--kill", "uart", "--every", "1ms", "--count", 10)
    assert r.returncode == 1, r.stdout
    out = r.stdout.decode()
    assert "chaos: FAILED" in out and "the VM ended with status 4" in out, out
    info = wait_for(lambda: ended(name), 30, what="the VM to end")
    assert info["status"] == 4
    assert info["reason"] == "device uart died (status -9) and it used its restart budget (3 restarts in 60 s)"


def test_on_vcpu_loss_stop_ends_the_vm_naming_the_vcpu_and_its_last_exit(bhive, tmp_path):
    """vcpu0 spins on an unclaimed port read (an exit each time); killed,
    it ends the VM (status 4) with a reason that names it and that exit."""
    (tmp_path / "inloop.asm").write_text("bits 16\norg 0x8000\n.l: in al, 0x99\njmp .l\n")
    cfg = tmp_path / "inloop.toml"
    cfg.write_text('[vm]\ncpus = 2\non_vcpu_loss = "stop"\n[boot]\nimage = "inloop.asm"\n'
                   '[devices.uart]\nport = 0x3f8\n[devices.debug_exit]\nport = 0xf4\n')
    name = "vcpu-stop"
    assert bhive.run("run", cfg, "--name", name, "--detach").returncode == 0

    def vcpu0_reported():
        rows = {r["role"]: r for r in json.loads(bhive.run("ps", name, "--json").stdout)}
        return rows["vcpu0"] if rows["vcpu0"]["counters"].get("last_exit") else None
    wait_for(vcpu0_reported, 30, 0.2, "a heartbeat of vcpu0 with its last exit")
    assert bhive.run("kill", name, "vcpu0").returncode == 0
    info = wait_for(lambda: ended(name), 30, what="the VM to end")
    assert info["status"] == 4, info
    assert re.fullmatch(r"vcpu0 \(pid \d+\) killed by signal 9; its last reported exit: INOUT at rip=0x8000 "
                        r"\(on_vcpu_loss = \"stop\"\)", info["reason"]), info["reason"]


def test_on_vcpu_loss_continue_keeps_the_vm_going(bhive, spin, tmp_path):
    name = "vcpu-continue"
    cfg = spin_with(spin, tmp_path, cpus=2)
    assert bhive.run("run", cfg, "--name", name, "--detach").returncode == 0
    try:
        r = bhive.run("chaos", name, "--kill", "vcpu1", "--count", 1, "--json")
        assert r.returncode == 0, r.stdout
        wait_for(lambda: "cpu-lost role=vcpu1" in (run_dir(name) / "logs" / "supervisor.log").read_text(), 10)
        assert ended(name) is None
    finally:
        bhive.run("stop", name)


@pytest.mark.parametrize("table, message", [
    ('[devices.uart]\nrestart_window = "soon"\n', "[devices.uart] restart_window: bad duration 'soon'"),
    ('[vm]\non_vcpu_loss = "restart"\n', '[vm] on_vcpu_loss: "restart" is not supported yet'),
    ('[vm]\non_vcpu_loss = "pray"\n', "[vm] on_vcpu_loss: 'pray' is not one of continue, stop"),
    ('[chaos]\nsignal = "HUP"\n', "[chaos] signal: 'HUP' is not one of KILL, STOP/CONT, TERM"),
    ('[chaos]\nkill = "uart,disk"\n', "[chaos] kill: the VM has no actor 'disk'"),
    ('[chaos]\nevery = "0ms"\n', "[chaos] every: must be more than 0"),
    ('[chaos]\noften = 1\n', "[chaos]: unknown key 'often'"),
])
def test_bad_chaos_and_policy_keys_are_one_line_and_status_2(bhive, spin, tmp_path, table, message):
    cfg = tmp_path / "bad.toml"
    base = spin.read_text().replace('image = "spin.asm"', f'image = "{spin.parent / "spin.asm"}"')
    if table.startswith("[devices.uart]"):
        cfg.write_text(base.replace("[devices.uart]\n", table))
    elif table.startswith("[vm]"):
        cfg.write_text(table + base)
    else:
        cfg.write_text(base + table)
    r = bhive.run("run", cfg, "--name", "bad")
    assert r.returncode == 2
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_bhive_chaos_bad_flags_are_one_line_and_status_2(bhive, spin, tmp_path):
    r = bhive.run("chaos", "nosuchvm", "--count", 1)
    assert r.returncode == 2 and r.stderr.decode().strip() == "bhive: error: no VM named 'nosuchvm'"
    name = "chaos-flags"
    assert bhive.run("run", spin_with(spin, tmp_path), "--name", name, "--detach").returncode == 0
    try:
        for flags, message in [(["--kill", "disk"], "the VM has no actor 'disk'"),
                               (["--every", "fast"], "bad duration 'fast'"),
                               (["--signal", "USR1"], "is not one of KILL, STOP/CONT, TERM"),
                               (["--count", "0"], "count: 0 must be a positive integer")]:
            r = bhive.run("chaos", name, *flags)
            lines = r.stderr.decode().strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and message in lines[0], (flags, lines)
        # STOP/CONT freezes the actor, which is not restarted
        r = bhive.run("chaos", name, "--kill", "uart", "--signal", "STOP/CONT", "--every", "50ms",
                      "--count", 3, "--json")
        report = json.loads(r.stdout)
        assert r.returncode == 0 and report["kills"] == {"uart": 3}, report
        table = {row["role"]: row for row in json.loads(bhive.run("ps", name, "--json").stdout)}
        assert table["uart"]["restarts"] == 0
    finally:
        bhive.run("stop", name)


def test_ctrl_c_ends_a_chaos_run_with_its_report(bhive, spin, tmp_path):
    name = "chaos-int"
    assert bhive.run("run", spin_with(spin, tmp_path), "--name", name, "--detach").returncode == 0
    try:
        p = bhive.popen("chaos", name, "--kill", "uart", "--every", "100ms", "--json")
        log = run_dir(name) / "logs" / "supervisor.log"
        wait_for(lambda: log.read_text().count("restarted role=uart") >= 2, 30, what="two restarts")
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=30)
        report = json.loads(out)
        assert p.returncode == 0 and report["stopped_by"] == "interrupted", report
        assert report["kills"]["uart"] >= 2
    finally:
        bhive.run("stop", name)


def test_a_seeded_schedule_is_reproducible():
    plan = chaos.parse_plan({"kill": "random", "every": "100ms", "jitter": "50ms", "seed": 42})
    devices = ["uart", "pit", "rtc", "ioapic"]
    runs = []
    for _ in range(2):
        s = chaos.Schedule(plan, devices)
        runs.append([(s.next_target(), s.next_interval()) for _ in range(50)])
    assert runs[0] == runs[1]
    assert {t for t, _ in runs[0]} == set(devices)
    assert all(0.05 <= i <= 0.15 for _, i in runs[0])
    other = chaos.Schedule(chaos.parse_plan({"kill": "random", "seed": 43}), devices)
    assert [other.next_target() for _ in range(50)] != [t for t, _ in runs[0]]
    turn = chaos.Schedule(chaos.parse_plan({"kill": "pit,rtc"}), devices)
    assert [turn.next_target() for _ in range(4)] == ["pit", "rtc", "pit", "rtc"]
    assert chaos.parse_plan({"signal": "STOP/CONT"}).signal == "STOP"
    assert chaos.parse_plan({"for": "60s", "count": 5}).duration == 60.0
    with pytest.raises(ConfigError):
        chaos.parse_plan({"jitter": "1s", "every": "100ms"})
    assert chaos.percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert chaos.percentile(list(range(1, 101)), 99) == 99
