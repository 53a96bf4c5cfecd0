"""A 64 KiB paste into the default Linux VM's shell through a real pty:
the console relay and the UART's actor hold input back until the guest's
RX FIFO has room, so every byte arrives (the checksum matches) and the
UART never reports an overrun."""

from __future__ import annotations

import hashlib
import os
import random
import select
import time

from support import run_dir
from test_console import quit_console, read_until, vm_on_pty
from test_linux_boot import BOOT_TIMEOUT, kit  # noqa: F401  (the fixture)

PASTE_LINES = 1024          # 1024 lines of 64 bytes: 64 KiB
LINE = 64


def paste(fd, data: bytes, timeout: float = 300) -> bytes:
    """Writes `data` to the pty as fast as it takes it, reading what comes back."""
    out = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(fd, False)
    try:
        while data:
            assert time.monotonic() < deadline, f"paste stalled with {len(data)} bytes left"
            r, w, _ = select.select([fd], [fd], [], 1)
            if r:
                out += os.read(fd, 65536)
            if w:
                try:
                    data = data[os.write(fd, data[:4096]):]
                except BlockingIOError:
                    pass
    finally:
        os.set_blocking(fd, True)
    return out


def test_a_64k_paste_arrives_whole_without_overrun(kit):  # noqa: F811
    rng = random.Random(15)
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
    data = b"".join(bytes(rng.choice(alphabet) for _ in range(LINE - 1)) + b"\n" for _ in range(PASTE_LINES))
    assert len(data) == 64 * 1024
    with vm_on_pty("run", "--name", "lx-paste") as (pid, fd):
        read_until(fd, b"BOOT-OK", timeout=BOOT_TIMEOUT)
        read_until(fd, b"# ", timeout=120)
        time.sleep(0.5)
        # No echo (the paste need not come back), then one file of it.
        os.write(fd, b"stty -echo; cat > /tmp/paste; echo PASTE-DONE\r")
        time.sleep(0.5)
        out = paste(fd, data)
        os.write(fd, b"\x04")                              # EOF at the start of a line ends cat
        out += read_until(fd, b"PASTE-DONE\r\n", timeout=120)
        os.write(fd, b"wc -c < /tmp/paste; md5sum /tmp/paste; echo SUMS-DONE\r")
        out += read_until(fd, b"SUMS-DONE\r\n", timeout=120)
        assert f"{len(data)}\r\n".encode() in out, out[-2000:]
        assert hashlib.md5(data).hexdigest().encode() in out, out[-2000:]
        assert b"input overrun" not in out
        quit_console(fd, pid, timeout=60)
    uart_log = (run_dir("lx-paste") / "logs" / "uart.log").read_text()
    assert "serial_rx_overrun" not in uart_log
    assert "input overrun" not in (run_dir("lx-paste") / "logs" / "console.log").read_text(errors="replace")
