"""-serial as QEMU spells it, each backend through the real CLI with the
echo guest (it echoes what it receives on COM1; 'q' ends it with status
7): pty (the name is printed; a program opens it), unix:PATH,server,nowait
(a peer connects), file:PATH (output only: input comes from `bhive
console`), null (only the log), and a bad spelling (one line, status 2)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time

import pytest

from support import REPO, run_dir, wait_for

ECHO = REPO / "configs" / "echo.toml"


def start(bhive, name: str, serial: str) -> str:
    r = bhive.run("run", ECHO, "--name", name, "--detach", "-serial", serial)
    assert r.returncode == 0, r.stderr.decode()
    return r.stderr.decode()


def type_then_quit(bhive, name: str, data: bytes, arrived) -> None:
    """Types `data` through `bhive console`, waits until arrived() says the
    guest's echo got where it goes, then quits the VM with Ctrl-A x."""
    console = subprocess.Popen(bhive.argv("console", name), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=bhive.env)
    console.stdin.write(data)
    console.stdin.flush()
    wait_for(arrived, timeout=30, what="the echo")
    console.stdin.write(b"\x01x")
    console.stdin.close()
    assert console.wait(30) == 0


def ends_with(bhive, name: str, status: int) -> None:
    assert bhive.run("wait", name, timeout=60).returncode == status


def test_pty(bhive):
    err = start(bhive, "ser-pty", "pty")
    path = re.search(r"redirected to (/dev/pts/\d+)", err).group(1)
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"via-pty\x01x")                       # a wire: Ctrl-A x is data, not a quit
        got = b""
        deadline = time.monotonic() + 30
        while b"via-pty\x01x" not in got and time.monotonic() < deadline:
            got += os.read(fd, 100)
        assert got == b"via-pty\x01x"
        os.write(fd, b"q")
        ends_with(bhive, "ser-pty", 7)
    finally:
        os.close(fd)


def test_unix_server(bhive, tmp_path):
    path = tmp_path / "com1.sock"
    start(bhive, "ser-unix", f"unix:{path},server,nowait")
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.connect(str(path))
    peer.settimeout(30)
    peer.sendall(b"via-socket\x01x")                         # a wire: Ctrl-A x is data, not a quit
    got = b""
    while b"via-socket\x01x" not in got:
        got += peer.recv(100)
    assert got == b"via-socket\x01x"
    watcher = bhive.popen("console", "ser-unix")                 # the socket's peer types, consoles watch
    time.sleep(1.0)
    peer.sendall(b"q")
    ends_with(bhive, "ser-unix", 7)
    peer.close()
    _, err = watcher.communicate(timeout=30)
    assert b"read-only" in err


def test_file(bhive, tmp_path):
    out = tmp_path / "com1.out"
    start(bhive, "ser-file", f"file:{out}")
    type_then_quit(bhive, "ser-file", b"to-the-file", lambda: out.read_bytes() == b"to-the-file")
    ends_with(bhive, "ser-file", 0)


def test_null(bhive):
    """In the foreground too, nothing reaches stdout: only the log has it."""
    run = bhive.popen("run", ECHO, "--name", "ser-null", "-serial", "null")
    log = run_dir("ser-null") / "logs" / "console.log"
    wait_for(lambda: (run_dir("ser-null") / "sock" / "console.sock").exists(), timeout=30, what="the VM")
    time.sleep(0.5)
    type_then_quit(bhive, "ser-null", b"only-logged", lambda: log.read_bytes() == b"only-logged")
    out, err = run.communicate(timeout=30)
    assert run.returncode == 0 and out == b"", (out, err)


@pytest.mark.parametrize("spec", ["bogus", "unix:/tmp/x.sock", "tcp::4444", "file:"])
def test_bad_spelling_is_one_line_and_status_2(bhive, spec):
    r = bhive.run("run", ECHO, "--name", "ser-bad", "-serial", spec)
    assert r.returncode == 2
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "serial" in lines[0], lines
