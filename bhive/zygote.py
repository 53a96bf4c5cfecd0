"""Fork servers ("zygotes"): worker processes without a fresh interpreter each.

Every worker used to be `python -m bhive.devices_worker RUN_DIR ACTOR` or
`python -m bhive.vcpu_worker RUN_DIR N`, spawned with exec: ~0.1 s of CPU
each to start Python and import zmq, msgpack, cffi and bhive, with 10-18
of them starting at once on a few cores.  Instead the supervisor starts,
with exec, one zygote per worker module:

    python -m bhive.devices_worker --zygote RUN_DIR
    python -m bhive.vcpu_worker --zygote RUN_DIR

A zygote imports everything its workers need (the module itself, plus its
`preload`: the accelerator, lazily imported firmware tables), creates no
thread and no ZeroMQ context, freezes its objects out of the garbage
collector (so that children do not copy its pages just to scan them), and
serves ZygoteSpawn requests on its stdin, a SOCK_SEQPACKET socket to the
supervisor.  For each it forks twice: the intermediate child forks the
worker and exits at once, so the worker is reparented to the nearest
subreaper, the supervisor (`become_subreaper`).  The worker is thus a
direct child of the supervisor, as an exec'd one is: the supervisor
waits for it (`ForkedProcess`, like subprocess.Popen), gets its exit
status, and the worker's parent-death signal is armed on the supervisor
(it waits until it has been reparented before it runs `main`).  The
zygote answers with the worker's pid (ZygoteSpawned) once the worker has
been reparented.

The forked worker is then set up as an exec'd one would be: stdin on
/dev/null, stdout and stderr on the log file the supervisor sent with the
request, of the inherited descriptors only the doorbells it names (the
zygote inherited them from the supervisor under the same numbers), the
supervisor's environment of the moment, its process name (`bhive:uart`,
what ps -o comm and top show) and its command line rewritten in place to
`python -m MODULE RUN_DIR ROLE`, as an exec'd worker's reads.

If a zygote cannot start or dies, the supervisor spawns with exec again
(`BHIVE_NO_ZYGOTE=1` always does).
"""

from __future__ import annotations

import ctypes
import gc
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from pathlib import Path

from . import worker
from .bus import schema
from .bus.schema import ZygoteSpawn, ZygoteSpawned
from .log import EventLog
from .rundir import RunDir

FLAG = "--zygote"
NO_ZYGOTE_ENV = "BHIVE_NO_ZYGOTE"     # set: every worker is exec'd, as before
MAX_MESSAGE = 1 << 20
REPARENT_TIMEOUT = 5.0               # a worker not reparented to the supervisor by then exits
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


def role_of(kind: str) -> str:
    """The zygote's own role name (its log, its stderr file)."""
    return f"zygote-{kind}"


# -- the zygote process ---------------------------------------------------------

def serve(module: str, kind: str, main, argv: list[str], preload=None) -> None:
    """`python -m MODULE --zygote RUN_DIR [PADDING]`: the zygote's life.
    `main(args)` is the worker's entry point; `preload(rundir)` imports
    what the workers would import later.  Never returns."""
    run_path = Path(argv[0])
    rundir = RunDir(run_path.name, run_path.parent)
    name = role_of(kind)
    supervisor = os.getppid()
    worker.die_with_supervisor(supervisor)
    worker.name_process(f"zyg-{kind}")             # bhive:zyg-actor, bhive:zyg-vcpu
    # Ctrl-C at a terminal is the supervisor's to act on; a worker gets
    # Python's handler back (_become).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log = EventLog(rundir.log_path(name), name)
    sock = socket.socket(fileno=os.dup(0))         # the request socket was our stdin
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    inherited = {fd for fd in map(int, os.listdir("/proc/self/fd")) if _is_open(fd)} - {0, 1, 2, sock.fileno()}
    if preload is not None:
        preload(rundir)
    gc.freeze()           # children never scan (so never copy) what the zygote holds
    log("ready", cpu=f"{time.process_time():.3f}", modules=len(sys.modules))
    status = 0
    while True:
        try:
            raw, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 8)
        except OSError:
            break
        if not raw:
            break         # the supervisor closed its end: the VM is ending
        try:
            msg = schema.decode(raw)
            if not isinstance(msg, ZygoteSpawn):
                raise schema.SchemaError(f"not a ZygoteSpawn: {type(msg).__name__}")
        except schema.SchemaError as exc:
            pid, role, error = 0, "", str(exc)
        else:
            role = msg.role
            missing = sorted(set(msg.keep_fds) - inherited)
            if len(fds) != 1:
                pid, error = 0, f"expected 1 file descriptor (stdout), got {len(fds)}"
            elif missing:
                pid, error = 0, f"file descriptors {missing} were not passed to the zygote"
            else:
                pid, error = _fork_worker(msg, fds[0], sock, log, supervisor, module, main)
        for fd in fds:
            os.close(fd)
        log("fork", role=role, pid=pid, **({"error": error} if error else {}))
        try:
            sock.send(schema.encode(ZygoteSpawned(role, pid, error)))
        except OSError:
            status = 1
            break
    os._exit(status)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _fork_worker(msg: ZygoteSpawn, out_fd: int, sock, log, supervisor: int, module: str, main):
    """Fork the worker through an intermediate process; returns (pid, error).
    Once the intermediate is reaped the worker has been reparented to the
    supervisor (the intermediate's exit did it)."""
    r, w = os.pipe()
    try:
        mid = os.fork()
    except OSError as exc:
        os.close(r)
        os.close(w)
        return 0, f"fork: {exc}"
    if mid == 0:                                    # the intermediate
        code = 1
        try:
            os.close(r)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                _become(msg, out_fd, sock, log, supervisor, os.getppid(), module, main)
            os.write(w, struct.pack("=i", pid))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4):
        data += chunk
    os.close(r)
    _, status = os.waitpid(mid, 0)
    if status != 0 or len(data) != 4:
        return 0, f"the intermediate process failed (wait status {status:#x})"
    return struct.unpack("=i", data)[0], ""


def _become(msg: ZygoteSpawn, out_fd: int, sock, log, supervisor: int, intermediate: int,
            module: str, main) -> None:
    """In the forked worker: become `python -m MODULE ARGS...`, run `main`,
    exit with its status.  Never returns."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.close(sock.detach())
        log.close()
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        keep = {0, 1, 2, *msg.keep_fds}
        for name in os.listdir("/proc/self/fd"):
            if int(name) not in keep:
                try:
                    os.close(int(name))
                except OSError:
                    pass          # the directory's own descriptor, already closed
        os.environ.clear()
        os.environ.update(msg.env)
        sys.argv = [sys.argv[0], *msg.args]
        worker.name_process(msg.role)
        set_cmdline(msg.args)
        _await_reparent(supervisor, intermediate)
        status = main(list(msg.args))
    except SystemExit as exc:
        status = exc.code
    except BaseException:
        traceback.print_exc()
        status = 1
    if status is None:
        status = 0
    elif not isinstance(status, int):
        print(status, file=sys.stderr)      # as sys.exit("message") does
        status = 1
    worker.exit_now(status)


def _await_reparent(supervisor: int, intermediate: int) -> None:
    """Wait until the intermediate has exited and this process is the
    supervisor's child; its parent-death signal may be armed only then (an
    earlier one would fire at the reparenting itself)."""
    deadline = time.monotonic() + REPARENT_TIMEOUT
    while (parent := os.getppid()) != supervisor:
        if parent != intermediate or time.monotonic() > deadline:
            os._exit(1)           # the supervisor is gone (or is not our subreaper)
        time.sleep(0.0001)


def set_cmdline(args: list[str]) -> bool:
    """Rewrite this process's command line (/proc/PID/cmdline, what ps
    shows) in place: the first three words (`python -m MODULE`) kept, the
    rest replaced by `args`, if that fits in the original's bytes."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2:].split()
        start, end = int(fields[45]), int(fields[46])       # arg_start, arg_end
    except (OSError, ValueError, IndexError):
        return False
    size = end - start
    if start <= 0 or size <= 0:
        return False
    head = ctypes.string_at(start, size).split(b"\0")[:3]
    new = b"\0".join([*head, *(os.fsencode(a) for a in args)]) + b"\0"
    if len(new) > size:
        return False
    ctypes.memmove(start, new + b"\0" * (size - len(new)), size)
    return True


# -- the supervisor's side ------------------------------------------------------

def become_subreaper() -> bool | None:
    """Make this process the subreaper of its descendants (a zygote's
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
    """A worker a zygote forked, now a child of this process: the part of
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
            # Not (or no longer) our child: someone else reaped it.  It is
            # over once the pid is gone; its status is unknown.
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
                time.sleep(0.01)          # only for a child that is not ours
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
        # Until it is reaped (here) the pid cannot be reused.
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
    """The supervisor's handle on one zygote: start it, ask it for workers."""

    def __init__(self, kind: str, module: str, rundir: RunDir, env: dict, pass_fds: tuple[int, ...],
                 longest_args: list[str]):
        self.kind = kind
        self.role = role_of(kind)
        self.module = module
        self.pending: list[str] = []       # roles asked for, not answered yet (in order)
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-m", module, FLAG, str(rundir.path)]
        # Room for a worker's command line (set_cmdline rewrites it in place).
        have = len("\0".join(argv[3:])) + 1
        need = len("\0".join(longest_args)) + 1
        if need > have:
            argv.append(" " * (need - have - 1))
        err = open(rundir.logs / f"{self.role}.stderr", "ab")
        try:
            self.popen = subprocess.Popen(argv, stdin=theirs, stdout=err, stderr=err, env=env,
                                          close_fds=True, pass_fds=pass_fds)
        finally:
            theirs.close()
            err.close()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.sock is not None

    def request(self, role: str, args: list[str], env: dict, keep_fds: list[int], out_fd: int) -> bool:
        """Ask for a worker (the answer is read by `reply`); False if the
        zygote is gone."""
        if self.sock is None:
            return False
        raw = schema.encode(ZygoteSpawn(role, list(args), env, list(keep_fds)))
        try:
            socket.send_fds(self.sock, [raw], [out_fd])
        except OSError:
            self.close(kill=True)
            return False
        self.pending.append(role)
        return True

    def reply(self, timeout: float) -> ZygoteSpawned | None:
        """The answer to the oldest request, or None if the zygote died or
        did not answer within `timeout` (it is then ended, and every request
        still pending is lost: `pending` says which)."""
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
