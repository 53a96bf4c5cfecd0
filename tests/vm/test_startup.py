"""Start-up ordering: every process is spawned at once, but a vCPU runs its
first guest instruction only after every device actor has said Hello."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

import pytest

from bhive import config as config_mod
from bhive.exit_status import STATUS_INTERNAL
from bhive.rundir import pid_alive
from bhive.supervisor import Supervisor

from support import REPO

HELLO = REPO / "configs" / "hello.toml"
LATE = 1.5          # seconds the late actor spends before it starts for real


def late_worker_argv(argv: list[str], delay: float, module: str = "bhive.devices_worker") -> list[str]:
    """`argv` (python -m MODULE ARGS...) started `delay` seconds late."""
    code = (f"import runpy, sys, time; time.sleep({delay}); "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", code, *argv[3:]]


class LateActorSupervisor(Supervisor):
    """A supervisor whose actor `late` starts LATE seconds after the rest
    (the first time: a restart is not delayed)."""

    def __init__(self, cfg, late: str, argv=None):
        super().__init__(cfg)
        self.late = late
        self.late_argv = argv or (lambda a: late_worker_argv(a, LATE))

    def spawn(self, proc):
        if proc.role == self.late and proc.restarts == 0:
            proc.argv = self.late_argv(proc.argv)
        super().spawn(proc)


def moments(log: Path) -> list[tuple[float, str, str]]:
    """(epoch, event, rest) of every line of a structured log."""
    out = []
    for line in log.read_text().splitlines():
        stamp, _who, event, *rest = line.split(" ")
        t = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
        out.append((t, event, " ".join(rest)))
    return out


def run_vm(sup: Supervisor) -> int:
    sup.prepare()
    return sup.run()


@pytest.mark.parametrize("late", ["uart", "debug_exit"])
def test_no_vcpu_runs_before_every_actor_said_hello(late):
    cfg = config_mod.load(HELLO, {"name": f"order-{late}", "cpus": 2})
    sup = LateActorSupervisor(cfg, late)
    status = run_vm(sup)
    assert status == 1, sup.reason           # the guest ran to its isa-debug-exit write

    logs = sup.rundir.logs
    sup_log = moments(logs / "supervisor.log")
    hellos = {rest.split()[0].removeprefix("role="): t for t, ev, rest in sup_log if ev == "hello"}
    actors = set(cfg.devices)
    assert actors <= set(hellos), hellos
    last_actor = max(hellos[a] for a in actors)
    assert last_actor == hellos[late]
    for i in range(cfg.cpus):
        vcpu = {ev: t for t, ev, _ in moments(logs / f"vcpu{i}.log")}
        # Set up in parallel with the actors: ready long before the late one ...
        assert vcpu["ready"] < hellos[late] - LATE / 2, (vcpu, hellos)
        # ... but not a single instruction before every actor was up.
        assert vcpu["started"] > last_actor, (i, vcpu, hellos)
    # And the guest lost nothing on the way.
    console = (logs / "console.log").read_bytes()
    assert b"Hello from bhive vCPU 0 of 2" in console and b"Hello from bhive vCPU 1 of 2" in console


def test_an_actor_that_fails_to_start_ends_the_vm_before_any_vcpu_runs():
    cfg = config_mod.load(HELLO, {"name": "order-fail", "cpus": 2})
    sup = LateActorSupervisor(cfg, "uart",
                              lambda a: [sys.executable, "-c", "import sys, time; time.sleep(0.5); sys.exit(7)"])
    status = run_vm(sup)
    assert status == STATUS_INTERNAL and "uart exited with status 7" in sup.reason, sup.reason
    for i in range(cfg.cpus):
        events = [ev for _, ev, _ in moments(sup.rundir.logs / f"vcpu{i}.log")]
        assert "started" not in events, events
    assert not [p.pid for p in sup.procs.values() if pid_alive(p.pid)], "processes left behind"


def test_a_bad_image_found_after_the_spawn_leaves_nothing_running(tmp_path, bhive):
    """The image is loaded while the processes start: one that turns out
    bad (here a bzImage too short to be one) is still one error line and
    status 2, and the processes spawned meanwhile are gone."""
    kernel = tmp_path / "bad.bzImage"
    data = bytearray(0x400)
    data[0x202:0x206] = b"HdrS"
    kernel.write_bytes(bytes(data))
    name = "order-badimage"
    proc = bhive.run("run", "--kernel", kernel, "--name", name, "--smp", 2)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bhive: error: [boot] kernel:"), err
    rundir = str(Path(os.environ["BHIVE_RUN_ROOT"]) / name)
    left = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and rundir.encode() in (p / "cmdline").read_bytes():
                left.append(p.name)
        except OSError:
            pass
    assert not left, f"processes left behind: {left}"
