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
    paused = live and (rd.read_json("supervisor.json") or {}).get("state") == "paused"
    for row in table:
        if not live or not row.get("pid") or not pid_alive(row["pid"]):
            row["state"] = "exited" if row["state"] != "failed" else "failed"
        elif paused and row["kind"] == "vcpu":
            row["state"] = "paused"             # SIGSTOPped by bhive pause
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


# -- pause, wait, remove ---------------------------------------------------------

def _signal_supervisor(name: str, signum: int) -> RunDir:
    rd = find_vm(name)
    pid = rd.supervisor_pid()
    if not pid or not pid_alive(pid):
        raise LookupError(f"VM {name!r} is not running")
    os.kill(pid, signum)
    return rd


def set_paused(name: str, paused: bool, timeout: float = 10.0) -> None:
    """bhive pause / resume: the supervisor stops (SIGSTOP) or continues
    every vCPU process and says so in supervisor.json's state."""
    from .supervisor import PAUSE_SIGNAL, RESUME_SIGNAL
    rd = _signal_supervisor(name, PAUSE_SIGNAL if paused else RESUME_SIGNAL)
    want = "paused" if paused else "running"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = rd.read_json("supervisor.json") or {}
        if info.get("state") == want:
            return
        if not rd.is_live():
            raise LookupError(f"VM {name!r} ended")
        time.sleep(0.02)
    raise LookupError(f"VM {name!r} did not become {want} within {timeout:g}s")


def ended(rd: RunDir) -> dict | None:
    """supervisor.json of a VM that has ended (with its status and reason),
    or None while it runs (a reboot's stop has no status: it runs on)."""
    info = rd.read_json("supervisor.json") or {}
    if info.get("state") == "stopped" and info.get("status") is not None:
        return info
    if not rd.is_live():
        from .exit_status import STATUS_INTERNAL
        return {**info, "state": "stopped", "status": info.get("status", STATUS_INTERNAL)
                if info.get("status") is not None else STATUS_INTERNAL,
                "reason": info.get("reason") or "the supervisor died"}
    return None


def wait_vm(name: str, poll: float = 0.05) -> dict:
    """Blocks until VM `name` ends; its supervisor.json (status, reason)."""
    rd = find_vm(name)
    while (info := ended(rd)) is None:
        time.sleep(poll)
    return info


def remove_vm(name: str) -> None:
    """bhive rm: the run directory of an ended VM (its logs go with it)."""
    import shutil
    rd = find_vm(name)
    if ended(rd) is None:
        raise LookupError(f"VM {name!r} is running (bhive stop {name} first)")
    shutil.rmtree(rd.path)


def prune() -> list[str]:
    """bhive prune: removes every ended VM's run directory; their names."""
    from .rundir import all_vms
    gone = []
    for rd in all_vms():
        if ended(rd) is not None:
            remove_vm(rd.name)
            gone.append(rd.name)
    return gone
