"""Chaos: kill a device actor mid-run; the guest keeps going, nothing is lost."""

from __future__ import annotations

import json
import re
from pathlib import Path

from support import run_dir, wait_for

REPEAT = 15000  # chatty.asm: greetings per vCPU (the port lane prints fast: a few seconds of output)


def test_ps_and_logs_while_running_and_uart_killed(bhive):
    name = "chaos"
    cpus = 2
    proc = bhive.run("run", "configs/chatty.toml", "--smp", cpus, "--name", name, "--detach", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == name
    rd = run_dir(name)
    console = rd / "logs" / "console.log"

    # `bhive ps`: the supervisor, one process per vCPU, one per actor.
    ps = json.loads(bhive.run("ps", name, "--json").stdout)
    roles = {row["role"]: row for row in ps}
    assert set(roles) == {"supervisor", "vcpu0", "vcpu1", "uart", "debug_exit"}
    pids = {row["pid"] for row in ps}
    assert len(pids) == len(ps), "every role is its own OS process"
    for role, row in roles.items():
        cmdline = Path(f"/proc/{row['pid']}/cmdline").read_bytes().replace(b"\0", b" ")
        expected = {"supervisor": b"bhive", "uart": b"bhive.devices_worker",
                    "debug_exit": b"bhive.devices_worker"}.get(role, b"bhive.vcpu_worker")
        assert expected in cmdline, (role, cmdline)
        assert row["state"] == "running", row
    text = bhive.run("ps", name).stdout.decode()
    assert re.search(r"\buart\s+actor\s+\d+\s+running\s+0\b", text), text

    # `bhive logs -f VM uart` follows the actor's log across its restart.
    follower = bhive.popen("logs", "-f", name, "uart")
    wait_for(lambda: console.exists() and console.stat().st_size > 200, 60, what="guest output")
    old_pid = roles["uart"]["pid"]
    killed = bhive.run("kill", name, "uart")
    assert killed.returncode == 0, killed.stderr

    # The run completes on its own, with every greeting whole and once.
    def ended():
        info = json.loads((rd / "supervisor.json").read_text())
        return info if info.get("state") == "stopped" else None
    info = wait_for(ended, 240, 0.1, "the VM to finish")
    assert info["status"] == 1, info

    out = console.read_bytes()
    for cpu in range(cpus):
        line = f"Hello from bhive vCPU {cpu} of {cpus}\n".encode()
        assert out.count(line) == REPEAT, (cpu, out.count(line))
    assert out.count(b"\n") == cpus * REPEAT + 1, out[-400:]
    assert f"hello: all {cpus} vCPUs reported".encode() in out

    table = json.loads((rd / "procs.json").read_text())
    uart = next(row for row in table if row["role"] == "uart")
    assert uart["restarts"] == 1 and uart["pid"] != old_pid
    sup_log = (rd / "logs" / "supervisor.log").read_text()
    assert re.search(r"restart role=uart count=1", sup_log)

    follower.wait(timeout=30)   # -f ends once the VM is gone
    followed = follower.stdout.read().decode()
    assert "ready" in followed and "restored" in followed, followed


def test_logs_interleave_every_actor_by_time(bhive):
    name = "interleave"
    r = bhive.run("run", "configs/hello.toml", "--smp", 2, "--name", name)
    assert r.returncode == 1, r.stderr
    out = bhive.run("logs", name).stdout.decode().splitlines()
    roles = {line.split()[1].split("[")[0] for line in out}
    assert {"supervisor", "uart", "debug_exit", "vcpu0", "vcpu1"} <= roles
    stamps = [line.split()[0] for line in out]
    assert stamps == sorted(stamps), "not interleaved by time"
    console = bhive.run("logs", name, "console").stdout
    assert b"hello: all 2 vCPUs reported" in console
