"""`bhive console VM` on a real terminal (a pty): attach to a detached
Linux VM, run a command, detach with Ctrl-A d (the VM runs on), attach
again, run another, stop the VM with Ctrl-A x.  A second console attached
meanwhile is read-only and sees the same output; the console history
(`bhive logs VM console`) keeps everything."""

from __future__ import annotations

import os
import subprocess
import time

from support import run_dir, wait_for
from test_console import exit_status, read_until, spawn_on_pty
from test_linux_boot import BOOT_TIMEOUT, kit  # noqa: F401  (the fixture)

NAME = "lx-attach"


def attach(marker: bytes):
    """A console on a pty, once it says it is attached and the shell answers."""
    pid, fd = spawn_on_pty("console", NAME)
    banner = read_until(fd, b"Ctrl-A d detaches)", timeout=30)
    time.sleep(0.3)
    os.write(fd, b"\r")
    read_until(fd, b"# ", timeout=60)
    return pid, fd, banner


def test_attach_detach_reattach_a_detached_linux_vm(kit, bhive):  # noqa: F811
    started = bhive.run("run", "--detach", "--name", NAME)
    assert started.returncode == 0, started.stderr.decode()
    console_log = run_dir(NAME) / "logs" / "console.log"
    try:
        wait_for(lambda: b"BOOT-OK" in console_log.read_bytes(), timeout=BOOT_TIMEOUT, what="BOOT-OK")

        pid, fd, banner = attach(b"# ")
        assert b"Ctrl-A x stops the VM" in banner               # the first console types
        watcher = bhive.popen("console", NAME)                  # a second one only watches
        time.sleep(1.0)
        os.write(fd, b"echo $((6 * 7))-first-attach\r")
        read_until(fd, b"42-first-attach", timeout=60)
        os.write(fd, b"\x01d")
        out = read_until(fd, b"still running", timeout=30)
        assert b"detached from lx-attach" in out
        assert exit_status(pid) == 0
        os.close(fd)
        assert bhive.run("ps", NAME).stdout.count(b"running") >= 1

        pid, fd, banner = attach(b"# ")
        assert b"Ctrl-A x stops the VM" in banner               # the writer left: the next one types
        os.write(fd, b"echo $((7 * 8))-second-attach\r")
        read_until(fd, b"56-second-attach", timeout=60)
        os.write(fd, b"\x01x")
        read_until(fd, b"exit status 0", timeout=60)
        assert exit_status(pid) == 0
        os.close(fd)

        watched, err = watcher.communicate(timeout=30)
        assert b"read-only" in err, err
        assert b"42-first-attach" in watched and b"56-second-attach" in watched
        history = bhive.run("logs", NAME, "console").stdout
        assert b"BOOT-OK" in history and b"42-first-attach" in history and b"56-second-attach" in history
    finally:
        subprocess.run(bhive.argv("stop", NAME), capture_output=True, env=bhive.env)
