"""The fork server (bhive.zygote): every worker is forked by the zygote,
yet is a child of the supervisor, named after its role, with the command
line an exec'd worker has; a killed actor is forked again; without the
zygote every worker is exec'd as before."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from bhive.rundir import pid_alive
from support import run_dir, wait_for

MODULES = {"actor": "bhive.devices_worker", "vcpu": "bhive.vcpu_worker"}


def table(name: str) -> dict[str, dict]:
    return {row["role"]: row for row in json.loads((run_dir(name) / "procs.json").read_text())}


def running(name: str, role: str, restarts: int = 0):
    row = table(name).get(role)
    return row if row and row["state"] == "running" and row["restarts"] == restarts else None


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return int(stat[stat.rindex(b")") + 2:].split()[1])


def ready_cpu(log: Path) -> float:
    """CPU seconds a process had used when it logged `ready` (its last one)."""
    return float(re.findall(r" ready .*?cpu=([0-9.]+)", log.read_text())[-1])


def check_forked(name: str, row: dict, supervisor: int) -> None:
    """`row` (a process table row) is a worker its zygote forked, set up as
    an exec'd worker would be."""
    role, kind, pid = row["role"], row["kind"], row["pid"]
    logs = run_dir(name) / "logs"
    assert row["spawned_by"] == "zygote", row
    assert re.search(rf"\bfork role={role} pid={pid}\b", (logs / "zygote.log").read_text())
    assert parent_of(pid) == supervisor, (role, "not reparented to the supervisor")
    assert Path(f"/proc/{pid}/comm").read_text().strip() == f"bhive:{role}"[:15]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    last = role.removeprefix("vcpu") if kind == "vcpu" else role
    assert argv[1:] == [b"-m", MODULES[kind].encode(), str(run_dir(name)).encode(), last.encode()], argv
    # It imported nothing itself: its whole set-up took a fraction of the
    # CPU that the zygote's imports did (an exec'd worker's is about equal).
    assert ready_cpu(logs / f"{role}.log") < 0.5 * ready_cpu(logs / "zygote.log"), role


def test_workers_are_forked_by_the_zygote_and_an_actor_restarts_through_it(bhive, spin):
    """--detach: the detached supervisor starts the zygote itself."""
    name = "zyg"
    r = bhive.run("run", spin, "--smp", 2, "--name", name, "--detach", timeout=60)
    assert r.returncode == 0, r.stderr
    try:
        info = json.loads((run_dir(name) / "supervisor.json").read_text())
        supervisor = info["pid"]
        zygote = info["zygote"]
        assert parent_of(zygote) == supervisor
        argv = Path(f"/proc/{zygote}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        assert argv[1:] == [b"-m", b"bhive.zygote", str(run_dir(name)).encode()], argv
        assert Path(f"/proc/{zygote}/comm").read_text().strip() == "bhive:zygote"
        rows = wait_for(lambda: all(running(name, role) for role in ("uart", "debug_exit", "vcpu0", "vcpu1"))
                        and table(name), 60, what="the VM to run")
        workers = [row for row in rows.values() if row["kind"] != "supervisor"]
        assert len(workers) == 4
        for row in workers:
            check_forked(name, row, supervisor)

        # A killed actor is forked again by the zygote and restores its state.
        old = rows["uart"]["pid"]
        assert bhive.run("kill", name, "uart").returncode == 0
        row = wait_for(lambda: running(name, "uart", restarts=1), 30, what="uart to restart")
        assert row["pid"] != old
        check_forked(name, row, supervisor)
        sup_log = (run_dir(name) / "logs" / "supervisor.log").read_text()
        assert re.search(rf"forked role=uart pid={row['pid']} restarts=1", sup_log), sup_log
        assert " restored " in (run_dir(name) / "logs" / "uart.log").read_text()

        # A forked vCPU's exit status reaches the supervisor: SIGKILL is a lost CPU.
        assert bhive.run("kill", name, "vcpu1").returncode == 0
        wait_for(lambda: "cpu-lost role=vcpu1" in (run_dir(name) / "logs" / "supervisor.log").read_text(),
                 30, what="vcpu1 to be reported lost")
    finally:
        bhive.run("stop", name)
    info = json.loads((run_dir(name) / "supervisor.json").read_text())
    assert info["state"] == "stopped" and info["status"] == 0, info
    left = [pid for pid in [zygote, *(row["pid"] for row in workers)] if pid_alive(pid)]
    assert not left, f"processes left behind: {left}"


def test_supervisor_sigkill_takes_the_zygote_and_the_workers(bhive, spin):
    """In the foreground bhive run starts the zygote before it loads the config."""
    name = "zygkill"
    proc = bhive.popen("run", spin, "--name", name)
    wait_for(lambda: (run_dir(name) / "procs.json").exists() and running(name, "vcpu0")
             and running(name, "uart"), 60, what="the VM to run")
    info = json.loads((run_dir(name) / "supervisor.json").read_text())
    for row in table(name).values():
        if row["kind"] != "supervisor":
            check_forked(name, row, proc.pid)
    pids = [info["zygote"], *(row["pid"] for row in table(name).values() if row["kind"] != "supervisor")]
    proc.kill()
    proc.wait()
    wait_for(lambda: not [p for p in pids if pid_alive(p)], 10, what="the zygote and workers to die")


def test_without_the_zygote_workers_are_execd(bhive, spin):
    """BHIVE_NO_ZYGOTE=1, or a zygote that is gone: workers are exec'd."""
    bhive.env["BHIVE_NO_ZYGOTE"] = "1"
    r = bhive.run("run", "configs/hello.toml", "--name", "nozyg")
    assert r.returncode == 1, r.stderr
    rows = json.loads((run_dir("nozyg") / "procs.json").read_text())
    assert {row["spawned_by"] for row in rows if row["kind"] != "supervisor"} == {"exec"}
    assert not list((run_dir("nozyg") / "logs").glob("zygote*"))
    del bhive.env["BHIVE_NO_ZYGOTE"]

    # The zygote killed mid-run: a killed actor is exec'd instead.
    name = "zyggone"
    r = bhive.run("run", spin, "--name", name, "--detach", timeout=60)
    assert r.returncode == 0, r.stderr
    try:
        wait_for(lambda: running(name, "uart"), 60, what="the VM to run")
        zygote = json.loads((run_dir(name) / "supervisor.json").read_text())["zygote"]
        os.kill(zygote, signal.SIGKILL)
        assert bhive.run("kill", name, "uart").returncode == 0
        row = wait_for(lambda: running(name, "uart", restarts=1), 30, what="uart to restart")
        assert row["spawned_by"] == "exec", row
        argv = Path(f"/proc/{row['pid']}/cmdline").read_bytes().split(b"\0")
        assert argv[:3] == [sys.executable.encode(), b"-m", b"bhive.devices_worker"], argv
        assert Path(f"/proc/{row['pid']}/comm").read_text().strip() == "bhive:uart"
    finally:
        assert bhive.run("stop", name).returncode == 0


def test_a_forked_workers_exit_status_and_stderr_reach_its_parent(tmp_path):
    """Library level: this process as the supervisor (a subreaper), the
    zygote forking workers whose main returns a status or raises."""
    from bhive import zygote
    from bhive.rundir import RunDir
    rd = RunDir("lib", tmp_path)
    rd.create()
    was = zygote.become_subreaper()
    assert was is not None
    z = zygote.Zygote()
    try:
        with open(rd.logs / "zygote.stderr", "ab") as err:
            assert z.bind(str(rd.path), "softvmm", err.fileno(), [])

        def spawn(role, args):
            with open(rd.logs / f"{role}.stderr", "ab") as out:
                assert z.request(role, "bhive.devices_worker", args, dict(os.environ), out.fileno())
            reply = z.reply(30)
            assert reply is not None and reply.pid > 0 and not reply.error, reply
            assert parent_of(reply.pid) == os.getpid()
            return zygote.ForkedProcess(reply.pid, args)

        assert spawn("usage", ["one-argument"]).wait(30) == 2       # main's usage error
        assert "usage: python -m bhive.devices_worker" in (rd.logs / "usage.stderr").read_text()
        assert spawn("crash", [str(rd.path), "no-such-actor"]).wait(30) == 1   # main raised
        assert "Traceback" in (rd.logs / "crash.stderr").read_text()
        # Not a worker module: refused, nothing forked.
        with open(os.devnull, "wb") as out:
            assert not z.request("x", "os", [], {}, out.fileno())
    finally:
        z.close()
        z.reap()
        zygote.restore_subreaper(was)
    assert "ready" in (rd.logs / "zygote.log").read_text()
