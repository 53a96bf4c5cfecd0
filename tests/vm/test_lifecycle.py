"""VM lifecycle: signals stop everything, nothing leaks, VMs coexist."""

from __future__ import annotations

import json
import signal

import pytest

from bhive.rundir import pid_alive
from support import run_dir, wait_for


def live_table(name: str):
    p = run_dir(name) / "procs.json"
    if not p.exists():
        return None
    table = json.loads(p.read_text())
    return table if all(r["state"] == "running" for r in table) and len(table) > 3 else None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_whole_vm(bhive, spin, signum):
    name = f"sig{int(signum)}"
    proc = bhive.popen("run", spin, "--smp", 2, "--name", name)
    table = wait_for(lambda: live_table(name), 60, what="the VM to run")
    pids = [row["pid"] for row in table]
    proc.send_signal(signum)
    proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read()
    assert not [p for p in pids if pid_alive(p)], "processes left behind"
    assert not (run_dir(name) / "shm" / "ram").exists(), "guest RAM not freed"


def test_supervisor_sigkill_takes_the_children(bhive, spin):
    name = "orphans"
    proc = bhive.popen("run", spin, "--name", name)
    table = wait_for(lambda: live_table(name), 60, what="the VM to run")
    proc.kill()
    proc.wait()
    children = [row["pid"] for row in table if row["kind"] != "supervisor"]
    wait_for(lambda: not [p for p in children if pid_alive(p)], 10, what="children to die")


def test_two_vms_side_by_side_and_stop(bhive, spin):
    for name in ("left", "right"):
        r = bhive.run("run", spin, "--name", name, "--detach")
        assert r.returncode == 0, r.stderr
    ps = json.loads(bhive.run("ps", "--json").stdout)
    vms = {row["vm"] for row in ps}
    assert {"left", "right"} <= vms
    dup = bhive.run("run", spin, "--name", "left")
    assert dup.returncode == 2 and b"already running" in dup.stderr
    for name in ("left", "right"):
        assert bhive.run("stop", name).returncode == 0
        info = json.loads((run_dir(name) / "supervisor.json").read_text())
        assert info["state"] == "stopped"
        assert not pid_alive(info["pid"])
    assert bhive.run("stop", "left").returncode == 1


def test_logs_of_unknown_vm_or_actor(bhive):
    r = bhive.run("logs", "no-such-vm")
    assert r.returncode == 1 and b"no VM named 'no-such-vm'" in r.stderr
