"""Boot a guest-kit Debian image from its IDE disk, under bhive or under
QEMU TCG (the peer), and work it through the serial console
(console.GuestConsole): time to `login:`, the sustained-I/O workload of
issue #11 (guests/disk/sustained-io.sh), dd throughput with O_DIRECT, and
the guest log's disk problems.  Used by tests/test_guestkit_images.py and
benchmarks/disk.py.

Both VMMs get the same thing: the image's kernel and initramfs-tools
initrd by --kernel/--initrd (there is no boot loader on the disk),
`root=/dev/sda1 console=ttyS0`, the image as the primary master IDE disk,
and -snapshot unless a test works on its own copy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .console import CommandResult, ConsoleError, GuestConsole

REPO = Path(__file__).resolve().parent.parent.parent
WORKLOAD = REPO / "guests" / "disk" / "sustained-io.sh"
QEMU = "qemu-system-x86_64"
# panic=-1: a guest that panics reboots at once, which ends either VMM
# (QEMU's -no-reboot; bhive treats a reset as the end), so a test fails in
# seconds instead of waiting out its timeout
APPEND = "root=/dev/sda1 console=ttyS0 panic=-1"
# QEMU TCG itself sometimes runs a CPU into an instruction that another CPU
# is live-patching (Linux 6.12's static keys and calls, int3-based): an
# Oops at a half-written NOP, seen here under load on 2 vCPUs.  Tests that
# check the image and the harness (not SMP) run QEMU on one vCPU; the
# benchmark counts such a QEMU boot and runs it again.
QEMU_CRASH = re.compile(r"Kernel panic|Oops|invalid opcode|general protection fault")

# Guest log lines that mean the disk path failed: the seed's lost ATA
# interrupts (30 s stalls, then DMA falling back to PIO), libata's error
# handling, block-layer and ext4 errors.
DISK_ERROR_PATTERNS = (
    r"lost interrupt",
    r"ata\d+(\.\d+)?: .*(timeout|failed command|resetting|SRST failed|limiting|exception Emask|"
    r"status: \{|error: \{|qc timeout|DMA disabled|FORCE|down(grad|shift))",
    r"I/O error",
    r"blk_update_request",
    r"EXT4-fs (error|warning)",
    r"Buffer I/O error",
    r"irq \d+: nobody cared",
)
_DISK_ERRORS = re.compile("|".join(f"(?:{p})" for p in DISK_ERROR_PATTERNS))
# What a stalled or crashed guest leaves behind.  Under bhive each is a bug;
# under QEMU TCG on a loaded host a starved guest prints some of them (a
# stall warning with its Call Trace) with nothing wrong with the disk.
STALL_PATTERNS = (
    r"blocked for more than \d+ seconds",
    r"soft lockup",
    r"rcu: .*detected stalls",
    r"WARNING: CPU",
    r"Call Trace",
    r"BUG: ",
    r"Kernel panic",
)
_STALLS = re.compile("|".join(f"(?:{p})" for p in STALL_PATTERNS))


class DiskUnsupported(RuntimeError):
    """This VMM cannot attach a disk (bhive before -hda/-snapshot land)."""


def qemu_argv(kernel, initrd, disk, smp: int = 1, memory_mb: int = 1024, snapshot: bool = True,
              append: str = APPEND, qemu: str = QEMU) -> list[str]:
    argv = [qemu, "-accel", "tcg", "-m", str(memory_mb), "-smp", str(smp), "-nographic", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
            "-drive", f"file={disk},format=raw,if=ide,index=0"]
    return argv + (["-snapshot"] if snapshot else [])


_bhive_disk_flags: bool | None = None


def bhive_has_disks() -> bool:
    """Whether `bhive run` takes -hda and -snapshot (helper "block" adds them)."""
    global _bhive_disk_flags
    if _bhive_disk_flags is None:
        p = subprocess.run([sys.executable, "-m", "bhive", "run", "--help"], capture_output=True, text=True,
                           cwd=REPO, timeout=60)
        text = p.stdout + p.stderr
        _bhive_disk_flags = bool(re.search(r"(^|\s)-hda\b", text) and re.search(r"(^|\s)-snapshot\b", text))
    return _bhive_disk_flags


def bhive_argv(kernel, initrd, disk, smp: int = 1, memory_mb: int = 1024, snapshot: bool = True,
               append: str = APPEND, name: str | None = None) -> list[str]:
    if not bhive_has_disks():
        raise DiskUnsupported("`bhive run` has no -hda/-snapshot yet (the IDE disk and its flags are "
                              "being added): the bhive side cannot boot from a disk")
    argv = [sys.executable, "-m", "bhive", "run", "--kernel", str(kernel), "--initrd", str(initrd),
            "--append", append, "-hda", str(disk), "--smp", str(smp), "-m", f"{memory_mb}M"]
    argv += ["-snapshot"] if snapshot else []
    return argv + (["--name", name] if name else [])


def launch(vmm: str, image, smp: int, snapshot: bool = True, disk=None, memory_mb: int = 1024,
           name: str | None = None) -> list[str]:
    """The command line booting `image` (an images.Image) under `vmm`
    ("qemu" or "bhive"); `disk` overrides the image file (a copy)."""
    disk = disk or image.disk
    if vmm == "qemu":
        return qemu_argv(image.vmlinuz, image.initrd, disk, smp, memory_mb, snapshot)
    if vmm == "bhive":
        return bhive_argv(image.vmlinuz, image.initrd, disk, smp, memory_mb, snapshot, name=name)
    raise ValueError(f"unknown VMM {vmm!r}")


def copy_image(src: Path, dst: Path) -> Path:
    """A sparse copy of an image (for tests that write without -snapshot)."""
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    return dst


@dataclass
class AtaDevice:
    name: str          # dev1.0
    kind: str          # ata, atapi, none
    xfer_mode: str     # XFER_MW_DMA_2, XFER_UDMA_5, XFER_PIO_4, ...

    @property
    def dma(self) -> bool:
        return "DMA" in self.xfer_mode


def ata_devices(con: GuestConsole) -> list[AtaDevice]:
    r = con.run("for d in /sys/class/ata_device/*; do echo ${d##*/} $(cat $d/class) $(cat $d/xfer_mode); done",
                check=True)
    out = []
    for line in r.output.splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append(AtaDevice(*parts))
    return out


def disk_errors(con: GuestConsole, stalls: bool = True) -> list[str]:
    """The guest log's lines matching DISK_ERROR_PATTERNS, and with
    `stalls` STALL_PATTERNS too.  (Not bootrun.GUEST_ERROR_PATTERNS: QEMU
    TCG's own guests mark the TSC unstable, which says nothing about the
    disk.)"""
    r = con.run("dmesg", timeout=120, check=True)
    return [l for l in r.output.splitlines() if _DISK_ERRORS.search(l) or (stalls and _STALLS.search(l))]


def sustained_io(con: GuestConsole, phase: str, mib: int = 256, timeout: float = 3600) -> CommandResult:
    """Run the workload's `phase` ("write" or "verify") in the guest."""
    return con.run_script(WORKLOAD.read_text(), f"{phase} {mib}", timeout=timeout)


_DD = re.compile(r"(\d+) bytes .* copied, ([\d.]+) s")


def dd_throughput(con: GuestConsole, mib: int = 256, path: str = "/var/tmp/bhive-dd.bin",
                  timeout: float = 1800) -> dict[str, float]:
    """Sequential write then read with O_DIRECT in 1 MiB blocks (dd), MiB/s
    as dd measures it in the guest; the file is removed afterwards."""
    out = {}
    for what, cmd in (("write", f"dd if=/dev/zero of={path} bs=1M count={mib} oflag=direct conv=fsync"),
                      ("read", f"sync; echo 3 > /proc/sys/vm/drop_caches; "
                               f"dd if={path} of=/dev/null bs=1M iflag=direct")):
        r = con.run(f"LC_ALL=C {cmd} 2>&1", timeout=timeout)
        m = _DD.search(r.output)
        if r.status != 0 or not m:
            raise ConsoleError(f"dd {what} failed (status {r.status}): {r.output.strip()}")
        out[what] = int(m.group(1)) / (1 << 20) / max(float(m.group(2)), 1e-9)
    con.run(f"rm -f {path}; sync")
    return out


def tool_available(vmm: str) -> str | None:
    """None if `vmm` can run here, else why not."""
    if vmm == "qemu":
        return None if shutil.which(QEMU) else f"{QEMU} is not installed (make deps)"
    return None if bhive_has_disks() else "bhive run has no -hda/-snapshot yet"
