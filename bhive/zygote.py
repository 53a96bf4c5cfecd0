"""The fork server ("zygote"): worker processes without a fresh interpreter each.

Every worker used to be spawned with exec (`python -m bhive.devices_worker
RUN_DIR ACTOR`, `python -m bhive.vcpu_worker RUN_DIR N`): ~0.1 s of CPU
each to start Python and import zmq, msgpack, cffi and bhive, with 10-18
of them starting at once on a few cores.  Instead `bhive run` starts one
zygote with exec, first thing (before the CLI imports the supervisor):

    python -m bhive.zygote <padding>

It imports what both worker modules need, once (~0.11 s of CPU, where a
zygote per module would take ~0.1 s each), while the supervisor starts.
It creates no thread and no ZeroMQ context, and freezes its objects out of
the garbage collector, so that its children do not copy its pages just to
scan them.  Then it serves its stdin, a SOCK_SEQPACKET socket to the
supervisor: first a ZygoteBind (the run directory, the doorbells every
worker inherits), then one ZygoteSpawn per worker.

For each ZygoteSpawn it forks twice: an intermediate child forks the worker
and exits at once, so the worker is reparented to the nearest subreaper,
the supervisor (`become_subreaper`).  The worker is thus a direct child of
the supervisor as an exec'd one is: the supervisor waits for it
(`ForkedProcess`, like subprocess.Popen) and gets its exit status, and the
worker's parent-death signal is armed on the supervisor.  The zygote
answers with the worker's pid (ZygoteSpawned) once it has been reparented,
and only then lets the worker go on (a pipe): a worker the supervisor may
not know of exits.

The forked worker is set up as an exec'd one would be: stdin on /dev/null,
stdout and stderr on the log file sent with the request, the doorbells
under the supervisor's numbers and no other descriptor, the supervisor's
environment of the moment, its process name (`bhive:uart`, what ps -o comm
and top show) and its command line rewritten in place (the zygote's
padding makes room) to the exec'd worker's: `python -m
bhive.devices_worker RUN_DIR uart`.

Whatever goes wrong with the zygote (it cannot start, it dies, it cannot
fork, a command line does not fit), the supervisor spawns with exec as
before; `BHIVE_NO_ZYGOTE=1` always does.  This module's top level imports
little: the CLI imports it before anything else.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

NO_ZYGOTE_ENV = "BHIVE_NO_ZYGOTE"     # set: every worker is exec'd, as before
ROLE = "zygote"                      # its log: logs/zygote.log, logs/zygote.stderr
MODULES = ("bhive.devices_worker", "bhive.vcpu_worker")
CMDLINE_ROOM = 400        # bytes of padding: a worker's command line is rewritten into them
MAX_MESSAGE = 1 << 20
MAX_FDS = 250             # SCM_RIGHTS carries at most 253 descriptors a message
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


# -- the zygote process ---------------------------------------------------------

def main() -> None:
    """`python -m bhive.zygote`: the zygote's life.  Never returns."""
    supervisor = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)      # first: an unused zygote dies with the CLI
    if os.getppid() != supervisor:
        os._exit(1)
    # Ctrl-C at a terminal is the supervisor's to act on (a worker gets
    # Python's handler back).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=os.dup(0))             # the request socket was our stdin
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    room = _cmdline_area()

    import importlib
    mains = {m: importlib.import_module(m).main for m in MODULES}
    from . import accel, worker_lifecycle
    from .bus import schema
    from .bus.schema import ZygoteBind, ZygoteSpawn, ZygoteSpawned
    from .log import EventLog
    from .rundir import RunDir
    try:
        accel.get("softvmm")      # the default accelerator's C core
    except ImportError:
        pass
    worker_lifecycle.name_process(ROLE)

    # The VM this zygote is for.
    raw, fds = b"", []
    try:
        raw, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS + 1)
        bind = schema.decode(raw) if raw else None
    except (OSError, schema.SchemaError):
        bind = None
    if not isinstance(bind, ZygoteBind) or len(fds) != len(bind.fds) + 1:
        os._exit(0 if not raw else 1)
    os.dup2(fds[0], 1)
    os.dup2(fds[0], 2)
    os.close(fds[0])
    doorbells = dict(zip(fds[1:], bind.fds))          # ours -> the number a worker has it under
    run_path = Path(bind.run_dir).absolute()
    rundir = RunDir(run_path.name, run_path.parent)
    log = EventLog(rundir.log_path(ROLE), ROLE)
    if room:
        set_cmdline(room, [room.words[0], "-m", "bhive.zygote", str(run_path)])
    try:
        accel.get(bind.accel)
    except (ImportError, KeyError) as exc:
        log("preload-failed", accel=bind.accel, error=str(exc))
    gc.freeze()           # children never scan (so never copy) what the zygote holds
    log("ready", cpu=f"{time.process_time():.3f}", modules=len(sys.modules))

    status = 0
    while True:
        try:
            raw, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 1)
        except OSError:
            break
        if not raw:
            break         # the supervisor closed its end: the VM is ending
        pid, role, error, go = 0, "", "", None
        try:
            msg = schema.decode(raw)
            if not isinstance(msg, ZygoteSpawn):
                raise schema.SchemaError(f"not a ZygoteSpawn: {type(msg).__name__}")
        except schema.SchemaError as exc:
            error = str(exc)
        else:
            role = msg.role
            argv = [room.words[0] if room else sys.executable, "-m", msg.module, *msg.args]
            if msg.module not in mains:
                error = f"not a worker module: {msg.module}"
            elif len(fds) != 1:
                error = f"expected 1 file descriptor (stdout), got {len(fds)}"
            elif room is None or len(_cmdline_bytes(argv)) > room.size:
                error = "the worker's command line does not fit in the zygote's"
            else:
                pid, error, go = _fork_worker(msg, mains[msg.module], argv, fds[0], doorbells, room,
                                              sock, log, supervisor)
        for fd in fds:
            os.close(fd)
        log("fork", role=role, pid=pid, **({"error": error} if error else {}))
        try:
            sock.send(schema.encode(ZygoteSpawned(role, pid, error)))
        except OSError:
            status = 1
        if go is not None:
            if status == 0:
                os.write(go, b"g")      # the supervisor knows the worker: it may start
            os.close(go)                # (else it sees EOF and exits at once)
        if status:
            break
    os._exit(status)


def _fork_worker(msg, main, argv, out_fd, doorbells, room, sock, log, supervisor):
    """Fork the worker through an intermediate process; returns (pid, error,
    go).  Once the intermediate is reaped the worker has been reparented to
    the supervisor (the intermediate's exit did it).  The worker then waits
    for a byte on `go`, written once its pid has been sent: a worker whose
    pid the supervisor may never learn (the zygote died first) exits
    instead of running next to the one the supervisor starts in its place."""
    r, w = os.pipe()            # intermediate -> zygote: the worker's pid
    go_r, go_w = os.pipe()      # zygote -> worker: start
    try:
        mid = os.fork()
    except OSError as exc:
        for fd in (r, w, go_r, go_w):
            os.close(fd)
        return 0, f"fork: {exc}", None
    if mid == 0:                                    # the intermediate
        code = 1
        try:
            os.close(r)
            os.close(go_w)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                _become(msg, main, argv, out_fd, doorbells, room, sock, log, supervisor, go_r)
            os.write(w, struct.pack("=i", pid))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.close(go_r)
    data = b""
    while chunk := os.read(r, 4):
        data += chunk
    os.close(r)
    _, status = os.waitpid(mid, 0)
    if status != 0 or len(data) != 4:
        os.close(go_w)
        return 0, f"the intermediate process failed (wait status {status:#x})", None
    return struct.unpack("=i", data)[0], "", go_w


def _become(msg, main, argv, out_fd, doorbells, room, sock, log, supervisor, go: int) -> None:
    """In the forked worker: become `python -m MODULE ARGS...`, run `main`,
    exit with its status.  Never returns."""
    from . import worker_lifecycle
    status = 1
    try:
        # Wait for the zygote's go (the intermediate is gone by then: this
        # process is the supervisor's child, its parent-death signal may be
        # armed, on the supervisor; an earlier one would have fired at the
        # reparenting itself).
        if os.read(go, 1) != b"g" or os.getppid() != supervisor:
            os._exit(1)
        os.close(go)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.close(sock.detach())
        log.close()
        _arrange_fds(out_fd, doorbells)
        os.environ.clear()
        os.environ.update(msg.env)
        sys.argv = [sys.modules[msg.module].__file__, *msg.args]
        worker_lifecycle.name_process(msg.role)
        set_cmdline(room, argv)
        status = main(list(msg.args))
    except SystemExit as exc:
        status = exc.code
    except BaseException:
        import traceback
        traceback.print_exc()
        status = 1
    if status is None:
        status = 0
    elif not isinstance(status, int):
        print(status, file=sys.stderr)      # as sys.exit("message") does
        status = 1
    worker_lifecycle.exit_now(status)


def _arrange_fds(out_fd: int, doorbells: dict[int, int]) -> None:
    """Leave open only stdin (/dev/null already), stdout and stderr on
    `out_fd`, and each doorbell under the number the supervisor gave it."""
    open_fds = [int(n) for n in os.listdir("/proc/self/fd")]
    base = max([2, *open_fds, *doorbells.values()]) + 1
    out = fcntl.fcntl(out_fd, fcntl.F_DUPFD_CLOEXEC, base)
    moved = {fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, base): target for fd, target in doorbells.items()}
    keep = {0, out, *moved}
    for fd in map(int, os.listdir("/proc/self/fd")):
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass          # the directory's own descriptor, already closed
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    for fd, target in moved.items():
        os.dup2(fd, target)   # inheritable, as subprocess's pass_fds leaves them
        os.close(fd)


class _CmdlineArea:
    """Where this process's command line lives (what /proc/PID/cmdline reads)."""

    def __init__(self, start: int, size: int, words: list[str]):
        self.start, self.size, self.words = start, size, words


def _cmdline_area() -> _CmdlineArea | None:
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2:].split()
        start, end = int(fields[45]), int(fields[46])       # arg_start, arg_end
    except (OSError, ValueError, IndexError):
        return None
    if start <= 0 or end <= start:
        return None
    words = [os.fsdecode(w) for w in ctypes.string_at(start, end - start).split(b"\0")]
    return _CmdlineArea(start, end - start, words)


def _cmdline_bytes(argv: list[str]) -> bytes:
    return b"\0".join(os.fsencode(a) for a in argv) + b"\0"


def set_cmdline(area: _CmdlineArea, argv: list[str]) -> bool:
    """Rewrite this process's command line in place to `argv`, if it fits."""
    new = _cmdline_bytes(argv)
    if area is None or len(new) > area.size:
        return False
    ctypes.memmove(area.start, new + b"\0" * (area.size - len(new)), area.size)
    return True


# -- the supervisor's side ------------------------------------------------------

def become_subreaper() -> bool | None:
    """Make this process the subreaper of its descendants (the zygote's
    orphaned workers become its children).  Returns whether it already
    was (to restore it later), or None if that is not possible here."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        was = ctypes.c_int(0)
        if libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0) != 0:
            return None
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return bool(was.value)


def restore_subreaper(was: bool | None) -> None:
    if was is False:
        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


class ForkedProcess:
    """A worker the zygote forked, now a child of this process: the part of
    subprocess.Popen's interface the supervisor uses."""

    def __init__(self, pid: int, args: list[str]):
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def _reap(self, flags: int) -> int | None:
        if self.returncode is not None:
            return self.returncode
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:
            # Not (or no longer) our child: it is over once the pid is
            # gone, with a status nobody can tell.
            try:
                os.kill(self.pid, 0)
                return None
            except ProcessLookupError:
                self.returncode = 255
                return self.returncode
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            while self._reap(0) is None:
                time.sleep(0.01)          # only for a process that is not our child
            return self.returncode
        deadline = time.monotonic() + timeout
        try:
            fd = os.pidfd_open(self.pid)
        except OSError:
            fd = None
        try:
            while self.poll() is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                if fd is not None:
                    select.select([fd], [], [], remaining)
                else:
                    time.sleep(min(remaining, 0.005))
        finally:
            if fd is not None:
                os.close(fd)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        # Until it is reaped (here) its pid cannot be reused.
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """The supervisor's handle on the zygote: start it (as early as
    possible), bind it to a VM, ask it for workers."""

    def __init__(self):
        self.pending: list[str] = []       # roles asked for, not answered yet (in order)
        self.bound = False
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Until it is bound to a VM its stderr is ours (an import error shows).
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            self.popen = subprocess.Popen([sys.executable, "-m", "bhive.zygote", " " * CMDLINE_ROOM],
                                          stdin=theirs, stdout=subprocess.DEVNULL, env=env, close_fds=True)
        except BaseException:
            self.sock.close()
            raise
        finally:
            theirs.close()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.sock is not None

    def _send(self, msg, fds: list[int]) -> bool:
        from .bus import schema
        if self.sock is None:
            return False
        try:
            socket.send_fds(self.sock, [schema.encode(msg)], fds)
        except OSError:
            self.close(kill=True)
            return False
        return True

    def bind(self, run_dir: str, accel: str, stderr_fd: int, fds: list[int]) -> bool:
        """Tell the zygote its VM: every worker inherits the descriptors
        `fds` (under the same numbers); the zygote's own stderr goes to
        `stderr_fd`.  False if the zygote is gone (or cannot take them)."""
        from .bus.schema import ZygoteBind
        if len(fds) > MAX_FDS:
            self.close(kill=True)
            return False
        self.bound = self._send(ZygoteBind(run_dir, accel, list(fds)), [stderr_fd, *fds])
        return self.bound

    def request(self, role: str, module: str, args: list[str], env: dict, out_fd: int) -> bool:
        """Ask for a worker (the answer is read by `reply`); False if the
        zygote cannot take it."""
        from .bus.schema import ZygoteSpawn
        if not self.bound or module not in MODULES:
            return False
        if not self._send(ZygoteSpawn(role, module, list(args), env), [out_fd]):
            return False
        self.pending.append(role)
        return True

    def reply(self, timeout: float):
        """The ZygoteSpawned answer to the oldest request, or None if the
        zygote died or did not answer within `timeout` (it is then ended,
        and the requests still pending are lost)."""
        from .bus import schema
        from .bus.schema import ZygoteSpawned
        if self.sock is None:
            return None
        r, _, _ = select.select([self.sock], [], [], timeout)
        raw = b""
        if r:
            try:
                raw = self.sock.recv(MAX_MESSAGE)
            except OSError:
                pass
        try:
            msg = schema.decode(raw) if raw else None
        except schema.SchemaError:
            msg = None
        if not isinstance(msg, ZygoteSpawned) or not self.pending or msg.role != self.pending[0]:
            self.close(kill=True)
            return None
        self.pending.pop(0)
        return msg

    def close(self, kill: bool = False) -> None:
        """Stop serving: the zygote exits once its socket is closed (`reap`
        waits for that), or at once with `kill`."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if kill:
            self.popen.kill()

    def reap(self, timeout: float = 1.0) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


if __name__ == "__main__":
    main()
