"""The supervisor: launches a VM's processes, watches them, ends the VM.

One supervisor per VM.  It owns the run directory, creates the shared
memory (guest RAM, accelerator platform state, console rings), starts one
process per device actor and one per vCPU, all at once (forked by the
zygote, bhive.zygote, whose workers it reaps as their subreaper), and loads the
guest image while they start: a vCPU process sets itself up meanwhile,
says Hello, and runs its first guest instruction only when the
supervisor sends it VcpuGo, once every actor has said Hello and the image
is loaded.  From then on it:

* relays the console rings to the terminal and to logs/console.log;
* restarts a device actor that dies, as its restart policy says;
* ends the VM on a guest event (isa-debug-exit, triple fault, ...) or
  on SIGTERM/SIGINT, and leaves no process behind.

Exit statuses of `bhive run`:
    0           the guest halted or was stopped
    (V<<1)|1    the guest wrote V to isa-debug-exit (QEMU's convention)
    2           bad config or image (nothing was started)
    3           the guest crashed (triple fault, unhandled instruction,
                a kernel panic on the console)
    4           bhive itself failed (a process died, an actor gave up)
    124         the watchdog ([vm] watchdog, --watchdog) expired first
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from . import accel as accel_mod
from . import config as config_mod
from . import loader
from . import zygote as zygote_mod
from .bus import channel, schema
from .bus.schema import ConsoleInput, Control, Heartbeat, Hello, VcpuGo, VmEvent
from .bus.shm import ConsoleRing, SharedRegion
from .log import EventLog
from .rundir import RunDir, pid_alive

STATUS_STOPPED = 0
STATUS_CONFIG = 2
STATUS_GUEST_CRASH = 3
STATUS_INTERNAL = 4
STATUS_WATCHDOG = 124     # as timeout(1) says it

STARTUP_TIMEOUT = 20.0
HEARTBEAT_TIMEOUT = 10.0
STOP_GRACE = 2.0
RESTART_BACKOFF = 0.05
ZYGOTE_TIMEOUT = 10.0     # a zygote that does not answer a request by then is replaced by exec
HALT_GRACE = 0.3          # all vCPUs halted: wait this long for a pending exit event
# A guest kernel that panics prints this and then spins or halts with
# interrupts on, which no CPU-level event reveals: the console does.
PANIC_MARKER = b"Kernel panic - not syncing"
PANIC_GRACE = 1.0         # let the panic's backtrace reach the console first
ESCAPE = 0x01  # Ctrl-A, then 'x' quits (like QEMU's -nographic)


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
        self.rings: list[tuple[str, ConsoleRing, list[int]]] = []
        self.escape_pending = False
        self.console_req = 0
        self.pending_input = b""
        self.console_tail = b""                 # the last bytes, for markers split across reads
        self.panic_at: float | None = None
        self.panic_line = ""
        self.actors_up = False                  # every actor has said Hello (once)
        self.released: set[str] = set()         # vCPUs that were sent VcpuGo
        self.zygote = zygote
        self.subreaper_was: bool | None = None  # before _bind_zygote made this process one
        self.deferred: list[Proc] | None = None # spawns whose zygote answer is read later
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
            raise

    def _prepare(self) -> None:
        if self.rundir.is_live():
            raise config_mod.ConfigError(f"a VM named {self.cfg.name!r} is already running "
                                         f"(bhive stop {self.cfg.name}, or pick --name)")
        accel = accel_mod.get(self.cfg.accel)
        ok, why = accel.available()
        if not ok:
            raise config_mod.ConfigError(f"[vm] accel: {self.cfg.accel} is not available here: {why}")
        image = loader.image_bytes(self.cfg)  # assembles .asm sources; fails early
        del image
        cache_bytecode()
        self.rundir.create()
        self.log = EventLog(self.rundir.log_path("supervisor"), "supervisor")
        ram = SharedRegion(self.rundir.shm / "ram", self.cfg.memory, create=True)
        SharedRegion(self.rundir.shm / "platform",
                     max(4096, accel.platform_shm_size(self.cfg.cpus, self.cfg.memory)),
                     create=True).close()
        for dev in self.cfg.devices.values():
            if dev.type == "uart" and dev.options["console"]:
                ring = ConsoleRing(self.rundir.shm / f"{dev.name}.console", create=True)
                self.rings.append((dev.name, ring, [0]))
        self.fds = self._create_channels()
        self.console_log = open(self.rundir.logs / "console.log", "ab", buffering=0)
        self.rundir.write_json("supervisor.json", {
            "pid": os.getpid(), "name": self.cfg.name, "state": "starting", "started": time.time(),
            "config": config_mod.to_json(self.cfg), "boot": None,
        })
        python = sys.executable
        for dev in self.cfg.devices.values():
            self.procs[dev.name] = Proc(dev.name, "actor",
                                        [python, "-m", "bhive.devices_worker", str(self.rundir.path), dev.name],
                                        policy=dev.options["restart"], max_restarts=dev.options["max_restarts"])
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
        # (bhive.worker.die_with_supervisor).
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
        self.console_sock = None
        actors = [p.role for p in self.procs.values() if p.kind == "actor"]
        self._wait_ready(list(self.procs))
        if self.rings:
            self.console_sock = self.ctx.socket(zmq.DEALER)
            self.console_sock.setsockopt(zmq.LINGER, 0)
            self.console_sock.connect(self.rundir.endpoint(self.rings[0][0]))
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
                self._release_vcpus()
                self.write_procs()
            elif isinstance(msg, Heartbeat) and proc is not None:
                proc.heartbeat = time.monotonic()
                proc.counters = msg.counters
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
            # No reboot (like QEMU -no-reboot): a reset ends the VM, saying so.
            self.finish(STATUS_STOPPED, f"guest reset: {ev.detail}")
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
                if code == -signal.SIGKILL and len(self.lost_cpus) + 1 < self.cfg.cpus:
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
            elif proc.policy == "always" and proc.restarts < proc.max_restarts:
                proc.restarts += 1
                proc.state = "restarting"
                time.sleep(RESTART_BACKOFF)
                self.log("restart", role=proc.role, count=proc.restarts)
                self.spawn(proc)
            else:
                proc.state = "failed"
                self.finish(STATUS_INTERNAL, f"device {proc.role} died (status {code}) "
                                             f"and its restart policy is exhausted")
            self.write_procs()

    def pump_console(self) -> None:
        for _, ring, pos in self.rings:
            end = ring.published
            if end == pos[0]:
                continue
            data = ring.read(pos[0], end)
            pos[0] = end
            ring.consume(end)
            self.console_log.write(data)
            if self.console_out is not None:
                self.console_out.write(data)
                self.console_out.flush()
            self.watch_console(data)

    def watch_console(self, data: bytes) -> None:
        """Notice a guest kernel panic on the console."""
        text = self.console_tail + data
        self.console_tail = text[-512:]
        if self.panic_at is None:
            k = text.find(PANIC_MARKER)
            if k >= 0:
                self.panic_at = time.monotonic()
                self.panic_line = text[k:].split(b"\n")[0].decode(errors="replace").strip()
                self.log("guest-panic", line=self.panic_line)

    def pump_input(self) -> None:
        if self.console_in_fd is None:
            return
        r, _, _ = select.select([self.console_in_fd], [], [], 0)
        if not r:
            return
        data = os.read(self.console_in_fd, 1024)
        if not data:
            self.console_in_fd = None
            return
        out = bytearray()
        for b in data:
            if self.escape_pending:
                self.escape_pending = False
                if b in (ord("x"), ord("X")):
                    self.finish(STATUS_STOPPED, "quit from the console (Ctrl-A x)")
                    return
                out.append(b)
            elif b == ESCAPE:
                self.escape_pending = True
            else:
                out.append(b)
        self.pending_input += bytes(out)

    def flush_input(self) -> None:
        """Hands typed bytes to the console UART, keeping what it cannot take."""
        if not self.pending_input or self.console_sock is None:
            return
        self.console_req += 1
        self.console_sock.send(schema.encode(ConsoleInput("supervisor", self.console_req,
                                                          self.pending_input[:256])))
        if self.console_sock.poll(200):
            reply = schema.decode(self.console_sock.recv())
            if reply.req_id == self.console_req:
                self.pending_input = self.pending_input[reply.accepted:]

    def loop(self) -> None:
        next_table = time.monotonic() + 1.0
        while self.status is None and not self.stop_requested:
            self._poll_ctl(5)
            self.pump_console()
            self.pump_input()
            self.flush_input()
            self.check_children()
            now = time.monotonic()
            if self.all_halted_at is not None and now - self.all_halted_at > HALT_GRACE:
                self.finish(STATUS_STOPPED, "all vCPUs halted with interrupts disabled")
            elif self.panic_at is not None and now - self.panic_at > PANIC_GRACE:
                self.finish(STATUS_GUEST_CRASH, f"guest kernel panic: {self.panic_line}")
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
        self.pump_console()
        self.write_procs()
        info = self.rundir.read_json("supervisor.json") or {}
        info.update(state="stopped", status=self.status, reason=self.reason, ended=time.time())
        self.rundir.write_json("supervisor.json", info)
        self.log("stopped", status=self.status, reason=self.reason)
        self.rundir.drop_shared_memory()

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
        try:
            try:
                self.start()
                self.loop()
            except VmStartError as exc:
                self.finish(STATUS_INTERNAL, f"VM failed to start: {exc}")
            if self.status is None:
                self.finish(STATUS_STOPPED, "stopped by signal")
        finally:
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)
        return self.status


# -- library calls behind the CLI -------------------------------------------

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
        if not pid_alive(pid):
            break
        time.sleep(0.02)
    return rd.read_json("supervisor.json") or {}


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
