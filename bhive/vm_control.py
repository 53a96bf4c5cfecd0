"""What the CLI does to VMs that run (or ran) elsewhere: find one, read
its process table, kill one of its processes, stop it, wait for a
detached one to come up.  Everything goes through the VM's run directory
(`bhive.rundir`) and signals; nothing here talks to the supervisor."""

from __future__ import annotations

import os
import signal
import time

from .rundir import RunDir, pid_alive
from .supervisor import STARTUP_TIMEOUT


def find_vm(name: str) -> RunDir:
    rd = RunDir(name)
    if not (rd.path / "supervisor.json").exists():
        raise LookupError(f"no VM named {name!r}")
    return rd


def process_table(rd: RunDir) -> list[dict]:
    table = rd.read_json("procs.json") or []
    live = rd.is_live()
    for row in table:
        if not live or not row.get("pid") or not pid_alive(row["pid"]):
            row["state"] = "exited" if row["state"] != "failed" else "failed"
    return table


def kill_actor(name: str, role: str) -> int:
    rd = find_vm(name)
    if not rd.is_live():
        raise LookupError(f"VM {name!r} is not running")
    for row in rd.read_json("procs.json") or []:
        if row["role"] == role:
            if row["kind"] == "supervisor":
                raise LookupError("use `bhive stop` to stop the supervisor")
            try:
                os.kill(row["pid"], signal.SIGKILL)
            except ProcessLookupError:
                raise LookupError(f"{role} of VM {name!r} is not running (pid {row['pid']} is gone)") from None
            return row["pid"]
    raise LookupError(f"VM {name!r} has no actor {role!r}")


def stop_vm(name: str, timeout: float = 10.0) -> None:
    rd = find_vm(name)
    pid = rd.supervisor_pid()
    if not pid or not pid_alive(pid):
        raise LookupError(f"VM {name!r} is not running")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def wait_running(rd: RunDir, pid: int, timeout: float = STARTUP_TIMEOUT + 5) -> dict:
    """For --detach: wait until the supervisor reports the VM running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = rd.read_json("supervisor.json")
        if info and info.get("pid") == pid and info.get("state") in ("running", "stopped"):
            return info
        if not pid_alive(pid) or _exited_child(pid):
            break
        time.sleep(0.02)
    return rd.read_json("supervisor.json") or {}


def _exited_child(pid: int) -> bool:
    """A child of ours that has exited (a zombie, which kill(0) still
    finds), without reaping it: its Popen reads the status."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return False
