"""bhive pause / resume on the default Linux VM (the guest stops printing
while paused, its clock shows no more than the wall time that passed, and
it goes on afterwards), and on an ended VM: bhive wait exits with its
status, ps -a says how it ended, rm and prune clear run directories."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time

from support import REPO, run_dir
from test_console import exit_status, read_until, vm_on_pty
from test_linux_boot import BOOT_TIMEOUT, kit  # noqa: F401  (the fixture)

TICK = re.compile(rb"T=(\d+\.\d+)")


def next_tick(fd, timeout: float = 60) -> tuple[float, float]:
    """The guest's next uptime line, and the host's clock when it came."""
    buf = b""
    deadline = time.monotonic() + timeout
    while True:
        m = TICK.search(buf)
        if m and buf.endswith(b"\n"):
            return float(m.group(1)), time.monotonic()
        left = deadline - time.monotonic()
        assert left > 0, f"no tick: {buf!r}"
        r, _, _ = select.select([fd], [], [], left)
        if r:
            buf += os.read(fd, 4096)
            if m := TICK.search(buf):
                buf = buf[m.start():]


def quiet_for(fd, seconds: float) -> bytes:
    out = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        r, _, _ = select.select([fd], [], [], left)
        if r:
            out += os.read(fd, 4096)
    return out


def test_pause_stops_the_guest_and_its_clock_follows_wall_time(kit, bhive):  # noqa: F811
    with vm_on_pty("run", "--name", "lx-pause") as (pid, fd):
        read_until(fd, b"BOOT-OK", timeout=BOOT_TIMEOUT)
        read_until(fd, b"# ", timeout=120)
        time.sleep(0.5)
        os.write(fd, b"while :; do echo T=$(cut -d' ' -f1 /proc/uptime); sleep 0.5; done\r")
        next_tick(fd)
        t0, h0 = next_tick(fd)
        assert bhive.run("pause", "lx-pause").returncode == 0
        quiet_for(fd, 1.0)                                  # what was in flight
        during = quiet_for(fd, 3.0)
        assert not TICK.search(during), during              # no guest instruction runs
        assert b"paused" in (run_dir("lx-pause") / "supervisor.json").read_bytes()
        assert re.findall(rb"vcpu\d +vcpu +\d+ (\w+)", bhive.run("ps", "lx-pause").stdout) == [b"paused"] * 2
        assert bhive.run("resume", "lx-pause").returncode == 0
        t1, h1 = next_tick(fd)
        t2, _ = next_tick(fd)
        assert t0 < t1 < t2                                 # it goes on
        assert t1 - t0 <= (h1 - h0) + 0.3, (t0, t1, h0, h1)  # never ahead of the wall clock
        assert (h1 - h0) >= 4.0                             # the pause did hold it
        os.write(fd, b"\x03\x01x")
        read_until(fd, b"exit status 0", timeout=60)
        assert exit_status(pid) == 0


def test_wait_ps_a_rm_prune(bhive):
    echo = REPO / "configs" / "echo.toml"
    for name in ("ended-7", "ended-0"):
        assert bhive.run("run", echo, "--name", name, "--detach").returncode == 0
    waiter = bhive.popen("wait", "ended-7")
    console = subprocess.run(bhive.argv("console", "ended-7"), input=b"q", capture_output=True, env=bhive.env,
                             timeout=60)
    assert console.returncode == 0, console.stderr
    assert waiter.wait(60) == 7                              # the VM's own status
    assert bhive.run("stop", "ended-0").returncode == 0
    assert bhive.run("wait", "ended-0").returncode == 0

    assert b"ended-7" not in bhive.run("ps").stdout
    listing = bhive.run("ps", "-a").stdout.decode()
    assert re.search(r"ended-7 .* exited +status 7: guest wrote to isa-debug-exit", listing), listing
    assert re.search(r"ended-0 .* exited +status 0: stopped by signal", listing), listing

    assert bhive.run("rm", "ended-7").returncode == 0
    assert not run_dir("ended-7").exists()
    assert bhive.run("rm", "no-such-vm").returncode == 1
    pruned = bhive.run("prune").stdout.decode().split()
    assert "ended-0" in pruned and not run_dir("ended-0").exists()
