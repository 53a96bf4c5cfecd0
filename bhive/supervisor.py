"""The supervisor: launches a VM's processes, watches them, ends the VM.

One supervisor per VM.  It owns the run directory, creates the shared
memory (guest RAM, accelerator platform state, console rings), starts one
process per device actor and one per vCPU, all at once (forked by the
zygote, bhive.zygote, whose workers it reaps as their subreaper), and loads the
guest image while they start: a vCPU process sets itself up meanwhile,
says Hello, and runs its first guest instruction only when the
supervisor sends it VcpuGo, once every actor has said Hello and the image
is loaded.  From then on it:

* relays the console (`bhive.console_relay`);
* restarts a device actor that dies, as its restart policy says;
* ends the VM on a guest event (isa-debug-exit, triple fault, ...) or
  on SIGTERM/SIGINT, and leaves no process behind.

The exit status of `bhive run` is the supervisor's (`bhive.exit_status`).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from . import accel as accel_mod
from . import block
from . import config as config_mod
from . import loader
from . import zygote as zygote_mod
from .bus import channel, schema
from .bus.schema import Control, Heartbeat, Hello, VcpuGo, VmEvent
from .bus.shm import SharedRegion
from .console_relay import ConsoleRelay
from .exit_status import (STATUS_CONFIG, STATUS_GUEST_CRASH, STATUS_INTERNAL, STATUS_STOPPED,
                          STATUS_WATCHDOG)
from .log import EventLog
from .rundir import RunDir

STARTUP_TIMEOUT = 20.0
HEARTBEAT_TIMEOUT = 10.0
PAUSE_SIGNAL = signal.SIGUSR1     # bhive pause VM
RESUME_SIGNAL = signal.SIGUSR2    # bhive resume VM
STOP_GRACE = 2.0
RESTART_BACKOFF = 0.05
ZYGOTE_TIMEOUT = 10.0     # a zygote that does not answer a request by then is replaced by exec
HALT_GRACE = 0.3          # all vCPUs halted: wait this long for a pending exit event


class VmStartError(RuntimeError):
    pass


def cache_bytecode() -> None:
    """Every worker is a fresh interpreter importing most of bhive.  Where
    PYTHONDONTWRITEBYTECODE is set, Python never caches bhive's bytecode,
    so each worker would compile ~20 modules again (30-50 ms of CPU per
    process, with all of them starting at once).  Compile the stale or
    missing ones here instead (a few ms when all are fresh); an install
    that cannot be written to is left as it is."""
    if not sys.dont_write_bytecode:
        return                      # the first import caches them
    import compileall
    try:
        compileall.compile_dir(Path(__file__).resolve().parent, quiet=2)
    except OSError:
        pass


def wait_exited(popens: list[subprocess.Popen], timeout: float) -> list[subprocess.Popen]:
    """Reap each process as it exits, for at most `timeout` seconds; returns
    those still running.  Woken by the exits themselves (pidfds), not by
    Popen.wait(timeout)'s polling, whose back-off sleeps grow to 50 ms."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    waiting = {}
    for popen in popens:
        if popen.poll() is not None:
            continue
        try:
            fd = os.pidfd_open(popen.pid)
        except OSError:                 # Linux < 5.3: Popen's own polling
            try:
                popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            continue
        waiting[fd] = popen
        poller.register(fd, select.POLLIN)
    try:
        while waiting and (remaining := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(remaining * 1000):
                poller.unregister(fd)
                os.close(fd)
                waiting.pop(fd).wait()
    finally:
        for fd in waiting:
            os.close(fd)
    return [p for p in popens if p.poll() is None]


@dataclass
class Proc:
    role: str
    kind: str                      # "actor" or "vcpu"
    argv: list[str]
    popen: subprocess.Popen | None = None
    state: str = "starting"        # starting, running, restarting, exited, failed
    restarts: int = 0
    started: float = 0.0
    heartbeat: float = 0.0
    counters: dict = field(default_factory=dict)
    policy: str = "always"
    max_restarts: int = 10
    restart_window: float = 10.0   # seconds; 0: max_restarts over the VM's life
    restart_times: deque = field(default_factory=deque)   # monotonic times of the restarts in the window
    died_at: float | None = None   # when its death was noticed (until its successor says Hello)
    last_exit: str = ""            # a vCPU's last exit, from its heartbeats
    spawned_by: str = ""           # "zygote" (forked by it) or "exec"

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None


class Supervisor:
    def __init__(self, cfg: config_mod.VmConfig, console_out=None, console_in_fd: int | None = None,
                 zygote: zygote_mod.Zygote | None = None):
        """`zygote`: one started already (bhive run starts it first thing);
        without one, prepare() starts it."""
        self.cfg = cfg
        self.rundir = RunDir(cfg.name)
        self.console = None                     # a ConsoleRelay, once the run directory exists
        self.console_out = console_out          # binary stream or None
        self.console_in_fd = console_in_fd
        self.procs: dict[str, Proc] = {}
        self.fds: dict[str, int] = {}
        self.status: int | None = None
        self.reason = ""
        self.stop_requested = False
        self.halted: set[str] = set()
        self.lost_cpus: set[str] = set()       # vCPUs killed from outside (SIGKILL)
        self.all_halted_at: float | None = None
        self.actors_up = False                  # every actor has said Hello (once)
        self.released: set[str] = set()         # vCPUs that were sent VcpuGo
        self.zygote = zygote
        self.subreaper_was: bool | None = None  # before _bind_zygote made this process one
        self.deferred: list[Proc] | None = None # spawns whose zygote answer is read later
        self.reboot_reason: str | None = None   # a guest reset asked for a reboot (_reboot)
        self.paused = False                     # the vCPU processes are stopped (bhive pause)
        self.pause_wanted = False               # what the last SIGUSR1/SIGUSR2 asked for
        self.reboots = 0
        self.image_locks: list[block.ImageLock] = []   # held for the VM's life
        self.t0 = time.monotonic()

    # -- start ------------------------------------------------------------
    def prepare(self) -> None:
        """Everything that can fail on bad input, and the processes' launch.

        The processes are spawned before the guest image is loaded into
        RAM, so that their start-up (forked by the zygote, or a fresh
        interpreter each) overlaps the loading (decompressing a kernel
        takes a few hundred ms); they need the boot state only once they
        are released (VcpuGo).  An image that turns out bad ends them (and
        the zygote) again before the ConfigError is raised."""
        try:
            self._prepare()
        except BaseException:
            self._stop_zygote()
            block.release_all(self.image_locks)
            raise

    def _prepare(self) -> None:
        if self.rundir.is_live() and self.rundir.supervisor_pid() != os.getpid():   # (not a reboot)
            raise config_mod.ConfigError(f"a VM named {self.cfg.name!r} is already running "
                                         f"(bhive stop {self.cfg.name}, or pick --name)")
        accel = accel_mod.get(self.cfg.accel)
        try:
            accel.check_config(self.cfg.name, self.cfg.cpus, self.cfg.memory)
        except ValueError as exc:
            raise config_mod.ConfigError(f"[vm] accel: {self.cfg.accel}: {exc}") from None
        ok, why = accel.available()
        if not ok:
            raise config_mod.ConfigError(f"[vm] accel: {self.cfg.accel} is not available here: {why}")
        image = loader.image_bytes(self.cfg)  # assembles .asm sources; fails early
        del image
        try:
            # Before any worker starts, so that an actor's restart never races it.
            self.image_locks = block.lock_drives(self.cfg.drives)
        except block.ImageError as exc:
            raise config_mod.ConfigError(str(exc)) from None
        cache_bytecode()
        rebooting = self.console is not None
        self.rundir.create(keep_logs=rebooting)
        self.log = EventLog(self.rundir.log_path("supervisor"), "supervisor")
        ram = SharedRegion(self.rundir.shm / "ram", self.cfg.memory, create=True)
        SharedRegion(self.rundir.shm / "platform",
                     max(4096, accel.platform_shm_size(self.cfg.cpus, self.cfg.memory)),
                     create=True).close()
        if not rebooting:
            self.console = ConsoleRelay(self.rundir, self.log, self.finish, self.console_out, self.console_in_fd,
                                        serial=self.cfg.serial)
        self.console.log = self.log
        self.console.create([d.name for d in self.cfg.devices.values()
                             if d.type == "uart" and d.options["console"]])
        self.fds = self._create_channels()
        self.rundir.write_json("supervisor.json", {
            "pid": os.getpid(), "name": self.cfg.name, "state": "starting", "started": time.time(),
            "config": config_mod.to_json(self.cfg), "boot": None, "serial": self.console.serial_name,
        })
        python = sys.executable
        for dev in self.cfg.devices.values():
            self.procs[dev.name] = Proc(dev.name, "actor",
                                        [python, "-m", "bhive.devices_worker", str(self.rundir.path), dev.name],
                                        policy=dev.options["restart"], max_restarts=dev.options["max_restarts"],
                                        restart_window=dev.options["restart_window"])
        for i in range(self.cfg.cpus):
            self.procs[f"vcpu{i}"] = Proc(f"vcpu{i}", "vcpu",
                                          [python, "-m", "bhive.vcpu_worker", str(self.rundir.path), str(i)])
        self._bind_zygote()
        self.ctx = zmq.Context.instance()
        self.ctl = self.ctx.socket(zmq.ROUTER)
        self.ctl.setsockopt(zmq.LINGER, 0)
        self.ctl.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted actor reuses its identity
        self.ctl.bind(self.rundir.endpoint("supervisor"))
        # Every process at once, vCPUs first (their set-up is the longest):
        # a vCPU waits for VcpuGo (_release_vcpus) before its first instruction.
        # The zygote may still be importing: its answers (the pids) are
        # read once the image is loaded.
        self.deferred = []
        for proc in sorted(self.procs.values(), key=lambda p: p.kind != "vcpu"):
            self.spawn(proc)
        deferred, self.deferred = self.deferred, None
        try:
            boot = loader.load(self.cfg, ram.view)
        except BaseException:
            self._finish_spawns(deferred)
            for proc in self.procs.values():
                proc.popen.kill()
                proc.popen.wait()
            self.ctl.close()
            self.rundir.drop_shared_memory()
            raise
        finally:
            ram.close()
        self.log("loaded", kind=self.cfg.boot_kind)
        self._finish_spawns(deferred)
        info = self.rundir.read_json("supervisor.json")
        info["boot"] = boot.to_json()
        info["zygote"] = self.zygote.pid if self.zygote is not None and self.zygote.alive else None
        self.rundir.write_json("supervisor.json", info)

    def _create_channels(self) -> dict[str, int]:
        """Shared-memory exit channels, one per (vCPU, device that owns
        ports or MMIO), and their eventfd doorbells.  The supervisor keeps
        the doorbells open, so a restarted actor inherits the same ones."""
        if self.cfg.exit_transport != "shm":
            return {}
        fds = {channel.wake_name(f"vcpu{i}"): channel.eventfd() for i in range(self.cfg.cpus)}
        for dev in self.cfg.devices.values():
            if not (dev.ports or dev.mmio):
                continue
            fds[channel.doorbell_name(dev.name)] = channel.eventfd()
            for i in range(self.cfg.cpus):
                channel.create(self.rundir.shm / channel.channel_file(dev.name, f"vcpu{i}"))
        return fds

    # -- spawning: forked by a zygote, or exec'd -----------------------------
    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env[channel.ENV_FDS] = channel.encode_fds(self.fds)
        return env

    def _bind_zygote(self) -> None:
        """Bind the fork server (bhive.zygote) to this VM, starting it if
        bhive run did not: its workers are reparented to this process,
        which becomes a subreaper.  Without it every worker is exec'd."""
        if os.environ.get(zygote_mod.NO_ZYGOTE_ENV):
            self._stop_zygote()
            return
        was = zygote_mod.become_subreaper()
        if was is None:
            self.log("zygote-unavailable", reason="cannot become a child subreaper")
            self._stop_zygote()
            return
        self.subreaper_was = was
        try:
            if self.zygote is None:
                self.zygote = zygote_mod.Zygote()
        except OSError as exc:
            self.log("zygote-unavailable", reason=str(exc))
            return
        with open(self.rundir.logs / f"{zygote_mod.ROLE}.stderr", "ab") as err:
            bound = self.zygote.bind(str(self.rundir.path), self.cfg.accel, err.fileno(),
                                     list(self.fds.values()))
        self.log("zygote", pid=self.zygote.pid, bound=bound)

    def _stop_zygote(self) -> None:
        if self.zygote is not None:
            self.zygote.close()
            self.zygote.reap()
        zygote_mod.restore_subreaper(self.subreaper_was)
        self.subreaper_was = None

    def _zygote_module(self, proc: Proc) -> str | None:
        """The worker module `proc` runs, if the zygote can fork it: the
        zygote is up and `proc` is `python -m MODULE ARGS` (not some other
        command line)."""
        if self.zygote is None or not self.zygote.alive or len(proc.argv) < 3:
            return None
        python, dash_m, module = proc.argv[:3]
        if python != sys.executable or dash_m != "-m" or module not in zygote_mod.MODULES:
            return None
        return module

    def spawn(self, proc: Proc) -> None:
        """Start `proc`'s process: forked by its zygote if there is one (the
        pid is known once the zygote answers: at once, or, while prepare()
        defers it, after the image is loaded), else exec'd."""
        proc.state = "starting"
        proc.started = proc.heartbeat = time.monotonic()
        module = self._zygote_module(proc)
        if module is not None:
            with open(self.rundir.logs / f"{proc.role}.stderr", "ab") as err:
                sent = self.zygote.request(proc.role, module, proc.argv[3:], self._worker_env(), err.fileno())
            if sent:
                proc.popen = None
                proc.spawned_by = "zygote"
                self.log("spawn", role=proc.role, restarts=proc.restarts, via="zygote")
                if self.deferred is not None:
                    self.deferred.append(proc)
                else:
                    self._finish_spawns([proc])
                return
        self._spawn_exec(proc)

    def _finish_spawns(self, procs: list[Proc]) -> None:
        """Read the zygote's answers for `procs` (in the order asked); one
        that failed, or whose zygote is gone, is exec'd instead."""
        for proc in procs:
            reply = self.zygote.reply(ZYGOTE_TIMEOUT) if self.zygote is not None else None
            if reply is not None and reply.pid > 0:
                proc.popen = zygote_mod.ForkedProcess(reply.pid, proc.argv)
                self.log("forked", role=proc.role, pid=reply.pid, restarts=proc.restarts)
                continue
            self.log("zygote-failed", role=proc.role,
                     error=reply.error if reply is not None else "the zygote is gone")
            self._spawn_exec(proc)

    def _spawn_exec(self, proc: Proc) -> None:
        err = open(self.rundir.logs / f"{proc.role}.stderr", "ab")
        # No preexec_fn (it would make subprocess fork this whole process
        # instead of vfork): the worker arms its parent-death signal itself
        # (bhive.worker_lifecycle.die_with_supervisor).
        proc.popen = subprocess.Popen(proc.argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                      env=self._worker_env(), close_fds=True,
                                      pass_fds=tuple(self.fds.values()))
        err.close()
        proc.spawned_by = "exec"
        proc.state = "starting"
        proc.started = proc.heartbeat = time.monotonic()
        self.log("spawn", role=proc.role, pid=proc.pid, restarts=proc.restarts, via="exec")

    def _wait_ready(self, roles: list[str]) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while any(self.procs[r].state != "running" for r in roles):
            if self.status is not None:
                raise VmStartError(self.reason)
            for r in roles:
                p = self.procs[r]
                if p.popen.poll() is not None:
                    raise VmStartError(f"{r} exited with status {p.popen.returncode} while starting "
                                       f"(see {self.rundir.logs / (r + '.stderr')})")
            if time.monotonic() > deadline:
                late = [r for r in roles if self.procs[r].state != "running"]
                raise VmStartError(f"{', '.join(late)} did not start within {STARTUP_TIMEOUT:.0f}s")
            self._poll_ctl(50)

    def start(self) -> None:
        """Wait for every process spawned by prepare() to say Hello,
        releasing the vCPUs as soon as every actor has."""
        actors = [p.role for p in self.procs.values() if p.kind == "actor"]
        self._wait_ready(list(self.procs))
        self.console.connect(self.ctx)
        info = self.rundir.read_json("supervisor.json")
        info["state"] = "running"
        self.rundir.write_json("supervisor.json", info)
        self.write_procs()
        self.log("running", cpus=self.cfg.cpus, actors=len(actors))

    # -- the loop ---------------------------------------------------------
    def _poll_ctl(self, timeout_ms: int) -> None:
        if not self.ctl.poll(timeout_ms):
            return
        while True:
            try:
                ident, raw = self.ctl.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue
            try:
                msg = schema.decode(raw)
            except schema.SchemaError as exc:
                self.log("bad-message", error=str(exc))
                continue
            proc = self.procs.get(ident.decode(errors="replace"))
            if isinstance(msg, Hello) and proc is not None:
                proc.state = "running"
                proc.heartbeat = time.monotonic()
                self.log("hello", role=proc.role, pid=msg.pid, restored=msg.restored)
                if proc.died_at is not None:
                    self._log_restart_latency(proc, msg.pid)
                self._release_vcpus()
                self.write_procs()
            elif isinstance(msg, Heartbeat) and proc is not None:
                proc.heartbeat = time.monotonic()
                proc.counters = msg.counters
                proc.last_exit = msg.counters.get("last_exit", proc.last_exit)
            elif isinstance(msg, VmEvent):
                self.on_event(msg)

    def _release_vcpus(self) -> None:
        """Once every actor has said Hello, send VcpuGo to each vCPU that
        has said Hello (a vCPU that has not is sent it when it does: the
        ROUTER can only address a peer it has heard from)."""
        actors = [p for p in self.procs.values() if p.kind == "actor"]
        if not self.actors_up:
            if any(p.state != "running" for p in actors):
                return
            self.actors_up = True
            self.log("actors-up", actors=len(actors))
        go = schema.encode(VcpuGo([p.role for p in actors]))
        for proc in self.procs.values():
            if proc.kind == "vcpu" and proc.state == "running" and proc.role not in self.released:
                self.released.add(proc.role)
                self.ctl.send_multipart([proc.role.encode(), go])

    def on_event(self, ev: VmEvent) -> None:
        self.log("event", source=ev.source, kind=ev.kind, status=ev.status, detail=ev.detail)
        if ev.kind == "exit":
            self.finish(ev.status, f"guest wrote to isa-debug-exit: status {ev.status}")
        elif ev.kind in ("triple-fault", "unhandled-instruction", "unexpected-exit"):
            self.finish(STATUS_GUEST_CRASH, f"{ev.source}: {ev.kind}: {ev.detail}")
        elif ev.kind == "fatal":
            self.finish(ev.status or STATUS_INTERNAL, f"{ev.source}: {ev.detail}")
        elif ev.kind == "suspended":
            self.finish(STATUS_STOPPED, f"guest {ev.detail}")
        elif ev.kind == "reset":
            if self.cfg.no_reboot:
                # Like QEMU -no-reboot: a reset ends the VM, saying so.
                self.finish(STATUS_STOPPED, f"guest reset (no reboot): {ev.detail}")
            elif self.reboot_reason is None:
                self.reboot_reason = ev.detail
        elif ev.kind == "poweroff":
            self.finish(STATUS_STOPPED, f"guest powered off: {ev.detail}")
        elif ev.kind == "halted":
            self.halted.add(ev.source)
            if len(self.halted | self.lost_cpus) >= self.cfg.cpus and self.all_halted_at is None:
                # Not final yet: the device write that preceded the HLT (e.g.
                # isa-debug-exit) reports on another socket and may arrive
                # a little later; it must win.
                self.all_halted_at = time.monotonic()

    def finish(self, status: int, reason: str) -> None:
        if self.status is None:
            self.status, self.reason = status, reason

    # -- restarts -------------------------------------------------------------
    def _restart_allowed(self, proc: Proc, now: float) -> bool:
        """The restart budget: at most max_restarts restarts in any
        restart_window seconds (a sliding window).  A steady chaos run
        (one kill every few hundred ms, each restart done in tens of ms)
        stays within it; an actor that dies as soon as it starts uses it
        up within the window and ends the VM."""
        if proc.policy != "always":
            return False
        times = proc.restart_times
        if proc.restart_window > 0:
            while times and now - times[0] > proc.restart_window:
                times.popleft()
        if len(times) >= proc.max_restarts:
            return False
        times.append(now)
        return True

    def _log_restart_latency(self, proc: Proc, pid: int) -> None:
        """The successor said Hello (it has restored the committed state and
        serves its channels and socket): log how long the actor was away,
        from the moment its death was noticed."""
        latency = time.monotonic() - proc.died_at
        proc.died_at = None
        self.log("restarted", role=proc.role, pid=pid, count=proc.restarts, latency_ms=f"{latency * 1000:.1f}")

    def check_children(self) -> None:
        now = time.monotonic()
        for proc in self.procs.values():
            if proc.popen is None or proc.state in ("exited", "failed"):
                continue
            code = proc.popen.poll()
            if code is None:
                if proc.state == "running" and now - proc.heartbeat > HEARTBEAT_TIMEOUT:
                    self.log("unresponsive", role=proc.role, pid=proc.pid)
                    proc.popen.kill()
                continue
            self.log("died", role=proc.role, pid=proc.pid, status=code)
            if proc.kind == "vcpu":
                proc.state = "exited" if code == 0 else "failed"
                if code != 0 and self.status is None and self.cfg.on_vcpu_loss == "stop":
                    # [vm] on_vcpu_loss = "stop": a vCPU process that dies ends
                    # the VM at once, naming it and what it was last doing.
                    how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
                    self.log("cpu-lost", role=proc.role, pid=proc.pid, policy="stop", last_exit=proc.last_exit)
                    self.finish(STATUS_INTERNAL, f"{proc.role} (pid {proc.pid}) {how}; its last reported exit: "
                                                 f"{proc.last_exit or 'none yet'} (on_vcpu_loss = \"stop\")")
                elif code == -signal.SIGKILL and len(self.lost_cpus) + 1 < self.cfg.cpus:
                    # `bhive kill VM vcpuN` (or the OOM killer): the CPU is
                    # gone, as if it had failed in hardware.  The VM goes on
                    # with the others; interrupts aimed at it are dropped and
                    # counted by the senders, which never wait for it.  A
                    # vCPU that exits with a status (crash, guest fault)
                    # still ends the VM below.
                    self.lost_cpus.add(proc.role)
                    self.log("cpu-lost", role=proc.role, pid=proc.pid)
                    if len(self.halted | self.lost_cpus) >= self.cfg.cpus and self.all_halted_at is None:
                        self.all_halted_at = time.monotonic()
                elif self.status is None:
                    self.finish(STATUS_INTERNAL if code not in (STATUS_GUEST_CRASH,) else code,
                                f"{proc.role} exited with status {code}")
            elif self._restart_allowed(proc, now):
                proc.restarts += 1
                if proc.state != "running":
                    time.sleep(RESTART_BACKOFF)   # it died before serving: do not spin
                proc.state = "restarting"
                proc.died_at = now
                self.log("restart", role=proc.role, count=proc.restarts)
                self.spawn(proc)
            else:
                proc.state = "failed"
                budget = ("its restart policy is \"never\"" if proc.policy != "always" else
                          f"it used its restart budget ({proc.max_restarts} restarts"
                          + (f" in {proc.restart_window:g} s)" if proc.restart_window > 0 else ")"))
                self.finish(STATUS_INTERNAL, f"device {proc.role} died (status {code}) and {budget}")
            self.write_procs()

    def loop(self) -> None:
        next_table = time.monotonic() + 1.0
        while self.status is None and not self.stop_requested and self.reboot_reason is None:
            self._poll_ctl(5)
            self.console.pump_output()
            self.console.pump_input()
            self.check_children()
            self._apply_pause()
            now = time.monotonic()
            if self.all_halted_at is not None and now - self.all_halted_at > HALT_GRACE:
                self.finish(STATUS_STOPPED, "all vCPUs halted with interrupts disabled")
            elif (panic := self.console.panic_reason(now)) is not None:
                self.finish(STATUS_GUEST_CRASH, panic)
            elif self.cfg.watchdog and now - self.t0 > self.cfg.watchdog:
                self.finish(STATUS_WATCHDOG, f"watchdog: the guest did not end within {self.cfg.watchdog:g} s")
            if time.monotonic() > next_table:
                self.write_procs()
                next_table = time.monotonic() + 1.0

    # -- stop -------------------------------------------------------------
    def stop(self) -> None:
        """vCPUs first, then the actors: an actor that is told to stop
        applies what the (now stopped) vCPUs posted to it before it exits,
        so the guest's last console bytes before an isa-debug-exit write
        are not lost."""
        self.pause_wanted = False
        self._apply_pause()         # a stopped process would not see SIGTERM
        if self.zygote is not None:
            self.zygote.close()     # no more workers: the zygote exits meanwhile
        for kind in ("vcpu", "actor"):
            procs = [p for p in self.procs.values() if p.kind == kind and p.popen is not None]
            for proc in procs:
                if proc.popen.poll() is None:
                    try:
                        self.ctl.send_multipart([proc.role.encode(), schema.encode(Control("stop"))],
                                                zmq.NOBLOCK)
                    except zmq.ZMQError:
                        pass
                    proc.popen.terminate()
            if kind == "actor":
                # No vCPU is left: free guest RAM (tens of ms for a Linux
                # guest's pages) while the actors drain and exit.  An actor
                # that maps it for DMA keeps its mapping.
                (self.rundir.shm / "ram").unlink(missing_ok=True)
            for proc in wait_exited([p.popen for p in procs], STOP_GRACE):
                proc.kill()
                proc.wait()
            for proc in procs:
                proc.state = "exited"
        self._stop_zygote()
        self.console.pump_output()
        self.write_procs()
        info = self.rundir.read_json("supervisor.json") or {}
        info.update(state="stopped", status=self.status, reason=self.reason, ended=time.time())
        self.rundir.write_json("supervisor.json", info)
        self.log("stopped", status=self.status, reason=self.reason)
        self.rundir.drop_shared_memory()        # with the snapshot overlays
        block.release_all(self.image_locks)

    # -- pause (bhive pause / resume) ---------------------------------------
    def _apply_pause(self) -> None:
        """Pausing stops every vCPU process (SIGSTOP): the guest executes
        nothing, and its clocks, which follow host time, show the pause as
        time that passed, no more.  The actors stay up; what they raise
        meanwhile waits as pending interrupts.  Resuming sends SIGCONT."""
        now = time.monotonic()
        vcpus = [p for p in self.procs.values() if p.kind == "vcpu" and p.pid and p.state == "running"]
        if self.pause_wanted != self.paused:
            self.paused = self.pause_wanted
            for proc in vcpus:
                try:
                    os.kill(proc.pid, signal.SIGSTOP if self.paused else signal.SIGCONT)
                except ProcessLookupError:
                    pass
            info = self.rundir.read_json("supervisor.json") or {}
            info["state"] = "paused" if self.paused else "running"
            self.rundir.write_json("supervisor.json", info)
            self.log("paused" if self.paused else "resumed", vcpus=len(vcpus))
        if self.paused:
            for proc in vcpus:
                proc.heartbeat = now        # a stopped vCPU is not a hung one

    # -- reboot -----------------------------------------------------------
    def _reboot(self) -> None:
        """A guest reset without -no-reboot: every worker is stopped and
        started afresh from the config, as at power-on (zeroed RAM, devices
        and vCPUs in their reset state, the image loaded again).  This
        process, the run directory's logs and the console (the terminal,
        attached `bhive console`s, what was typed) stay."""
        reason, self.reboot_reason = self.reboot_reason, None
        self.reboots += 1
        self.log("reboot", reason=reason, reboots=self.reboots)
        self.stop()
        self.console.note(f"\r\nbhive: {self.cfg.name}: guest reset ({reason}): rebooting\r\n".encode())
        self.ctl.close()
        for fd in self.fds.values():
            os.close(fd)
        self.zygote = None                      # stop() ended it; _bind_zygote starts another
        self.procs, self.fds = {}, {}
        self.halted, self.lost_cpus, self.released = set(), set(), set()
        self.all_halted_at, self.actors_up = None, False
        self._prepare()
        self.start()

    # -- a chaos run started with the VM ([chaos] in its config) ---------------
    def _start_chaos(self) -> None:
        self.chaos_report = None
        self._chaos = None
        if self.cfg.chaos:
            from . import chaos
            plan = chaos.Plan(**self.cfg.chaos)
            self._chaos = chaos.run_in_thread(self.rundir, plan, log=self.log)
            self.log("chaos-start", **{k: v for k, v in self.cfg.chaos.items() if v is not None and k != "kill"},
                     kill=",".join(plan.kill) if isinstance(plan.kill, list) else plan.kill)

    def _halt_chaos(self) -> None:
        """Before stop(): no more kills, and the last one's successor up,
        so that every actor drains what the vCPUs posted to it."""
        if getattr(self, "_chaos", None) is None:
            return
        run, thread, _ = self._chaos
        run.stop()
        thread.join(timeout=10)
        deadline = time.monotonic() + STARTUP_TIMEOUT / 4
        while time.monotonic() < deadline and any(
                p.kind == "actor" and p.state in ("starting", "restarting") for p in self.procs.values()):
            self._poll_ctl(5)
            self.check_children()

    def _end_chaos(self) -> None:
        """After stop(): the report, with the VM's final status and console."""
        if getattr(self, "_chaos", None) is None:
            return
        from . import chaos
        run, _, out = self._chaos
        if out:
            if out[0].stopped_by == "interrupted":
                out[0].stopped_by = "vm-ended"
            run.collect(out[0])
            self.chaos_report = out[0]
            chaos.write_report(self.rundir, out[0])

    def write_procs(self) -> None:
        now = time.monotonic()
        table = [{"role": "supervisor", "kind": "supervisor", "pid": os.getpid(), "state": "running",
                  "restarts": 0, "uptime": now - self.t0, "counters": {}}]
        for p in self.procs.values():
            table.append({"role": p.role, "kind": p.kind, "pid": p.pid, "state": p.state,
                          "restarts": p.restarts, "uptime": (now - p.started) if p.started else 0,
                          "counters": p.counters, "spawned_by": p.spawned_by})
        self.rundir.write_json("procs.json", table)

    def run(self) -> int:
        """Start, supervise until the VM ends, stop.  Returns the exit status."""
        self.t0 = time.monotonic()
        handler = lambda signum, _frame: setattr(self, "stop_requested", True)  # noqa: E731
        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        old.update({s: signal.signal(s, lambda signum, _frame: setattr(self, "pause_wanted", signum == PAUSE_SIGNAL))
                    for s in (PAUSE_SIGNAL, RESUME_SIGNAL)})
        try:
            try:
                self.start()
                self._start_chaos()
                self.loop()
                while self.reboot_reason is not None and self.status is None and not self.stop_requested:
                    self._reboot()
                    self.loop()
            except VmStartError as exc:
                self.finish(STATUS_INTERNAL, f"VM failed to start: {exc}")
            if self.status is None:
                self.finish(STATUS_STOPPED, "stopped by signal")
        finally:
            self._halt_chaos()
            self.stop()
            self._end_chaos()
            for s, h in old.items():
                signal.signal(s, h)
        return self.status


def main(argv: list[str] | None = None) -> int:
    """`python -m bhive.supervisor CONFIG_JSON`: a detached supervisor."""
    import json
    argv = sys.argv[1:] if argv is None else argv
    cfg = config_mod.from_json(json.loads(Path(argv[0]).read_text()))
    sup = Supervisor(cfg)
    try:
        sup.prepare()
    except config_mod.ConfigError as exc:
        print(f"bhive: error: {exc}", file=sys.stderr)
        return STATUS_CONFIG
    return sup.run()


if __name__ == "__main__":
    sys.exit(main())
