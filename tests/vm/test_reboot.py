"""A guest reset reboots the VM in place, as with QEMU: `reboot -f` in the
default Linux VM (Linux resets through the FADT's reset register, the
i8042's pulse command) comes back to BOOT-OK and a shell on the same
terminal, and the console says why; with -no-reboot the reset ends the VM
with status 0."""

from __future__ import annotations

import os
import time

from support import REPO, run_dir, wait_for
from test_console import exit_status, quit_console, read_until, vm_on_pty
from test_linux_boot import BOOT_TIMEOUT, kit  # noqa: F401  (the fixture)


def shell(fd) -> None:
    read_until(fd, b"BOOT-OK", timeout=BOOT_TIMEOUT)
    read_until(fd, b"# ", timeout=120)
    time.sleep(0.5)


def test_reboot_comes_back_to_a_shell(kit):  # noqa: F811
    with vm_on_pty("run", "--name", "lx-reboot") as (pid, fd):
        shell(fd)
        os.write(fd, b"reboot -f\r")
        out = read_until(fd, b"rebooting", timeout=120)
        assert b"guest reset (i8042 reset line pulsed)" in out, out[-2000:]
        shell(fd)                                           # BOOT-OK a second time
        os.write(fd, b"echo $((6 * 7))-after-reboot\r")
        read_until(fd, b"42-after-reboot", timeout=60)
        quit_console(fd, pid, timeout=60)
    log = (run_dir("lx-reboot") / "logs" / "console.log").read_bytes()
    assert log.count(b"BOOT-OK") == 2 and b"rebooting" in log       # one history across the reboot


def test_no_reboot_ends_the_vm_on_a_reset(kit):  # noqa: F811
    with vm_on_pty("run", "--name", "lx-noreboot", "-no-reboot") as (pid, fd):
        shell(fd)
        os.write(fd, b"reboot -f\r")
        out = read_until(fd, b"exit status 0", timeout=120)
        assert b"guest reset (no reboot)" in out and b"rebooting" not in out, out[-2000:]
        assert exit_status(pid) == 0


PORT92_GUEST = REPO / "guests" / "reset" / "port92.asm"


def test_a_port_0x92_reset_reboots_the_flat_guest_again_and_again(bhive, vm_config):
    cfg = vm_config(PORT92_GUEST, extra="[devices.port92]\n")
    r = bhive.run("run", cfg, "--name", "p92", "--detach")
    assert r.returncode == 0, r.stderr.decode()
    log = run_dir("p92") / "logs" / "console.log"
    try:
        wait_for(lambda: log.read_bytes().count(b"boot\n") >= 3, timeout=60, what="three boots")
        assert b"guest reset (port 0x92 fast reset): rebooting" in log.read_bytes()
    finally:
        bhive.run("stop", "p92")


def test_a_port_0x92_reset_with_no_reboot_ends_with_status_0(bhive, vm_config):
    cfg = vm_config(PORT92_GUEST, extra="[devices.port92]\n")
    r = bhive.run("run", cfg, "--name", "p92-once", "-no-reboot", timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.count(b"boot\n") == 1
    assert b"guest reset (no reboot): port 0x92 fast reset" in r.stderr
