"""The serial console on a real terminal (a pty): input reaches the guest,
output reaches the terminal, Ctrl-A x quits."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import sys
import time

from support import REPO


def spawn_on_pty(*args):
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "bhive", *args])
    return pid, fd


@contextlib.contextmanager
def vm_on_pty(*args):
    """`bhive ARGS` on a pty: (pid, fd).  However the test ends, the fd is
    closed and a process still running is killed (one already reaped by
    exit_status is left alone: its pid may be another's by now)."""
    pid, fd = spawn_on_pty(*args)
    try:
        yield pid, fd
    finally:
        os.close(fd)
        try:
            running = os.waitpid(pid, os.WNOHANG)[0] == 0
        except ChildProcessError:
            running = False
        if running:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def quit_console(fd, pid, timeout: float = 60) -> None:
    """Ctrl-A x: the VM stops and `bhive run` exits with status 0."""
    os.write(fd, b"\x01x")
    read_until(fd, b"exit status 0", timeout=timeout)
    assert exit_status(pid) == 0


def read_until(fd, needle: bytes, timeout: float = 60) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {needle!r}; got {buf!r}"
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def exit_status(pid) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_typed_bytes_are_echoed_and_q_exits():
    pid, fd = spawn_on_pty("run", "configs/echo.toml", "--name", "echo-q")
    read_until(fd, b"Ctrl-A x quits")
    time.sleep(0.3)
    os.write(fd, b"bhive!")
    read_until(fd, b"bhive!")
    os.write(fd, b"q")
    read_until(fd, b"exit status 7")
    assert exit_status(pid) == 7
    os.close(fd)


def test_ctrl_a_x_quits():
    pid, fd = spawn_on_pty("run", "configs/echo.toml", "--name", "echo-x")
    read_until(fd, b"Ctrl-A x quits")
    os.write(fd, b"\x01x")
    out = read_until(fd, b"exit status 0")
    assert b"quit from the console" in out
    assert exit_status(pid) == 0
    os.close(fd)
