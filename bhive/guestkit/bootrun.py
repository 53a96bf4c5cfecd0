"""Boot a guest-kit Linux and time it to `BOOT-OK cpus=N`, under bhive or
under QEMU TCG (the peer), with the same kernel, initramfs, memory, CPU
count and command line.  Used by the Linux boot tests and by
benchmarks/linux_boot.py.

The figure is host wall seconds from just before the launch to the moment
the `BOOT-OK cpus=N` line arrives on the console (stdout of the VMM).  The
guest's /init then ends the VM through isa-debug-exit (exit status 1, see
guests/initramfs/init).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

MARKER = re.compile(rb"BOOT-OK cpus=(\d+)")
TEST_APPEND = "console=ttyS0 panic=-1 bhive.test=1"
QEMU = "qemu-system-x86_64"
DEBUG_EXIT_OK = 1          # (0 << 1) | 1: what /bin/bhive-exit makes the VMM return

# Guest log lines that mean the platform failed the kernel: lost or
# misrouted interrupts, a broken local APIC, a clocksource that Linux
# distrusts, an AP that never came up.  The Linux boot tests fail on any.
GUEST_ERROR_PATTERNS = (
    r"do_boot_cpu failed",
    r"CPU\d+ failed to boot",
    r"not responding",                         # "CPU%d: not responding" (smpboot)
    r"Stuck \?\?",
    r"APIC.*(error|ERROR|bug|BUG)",
    r"spurious APIC interrupt",
    r"IO-APIC \+ timer doesn't work",
    r"MP-BIOS bug",
    r"lost (an? )?(interrupt|tick)",
    r"irq \d+: nobody cared",
    r"Marking clocksource '.*' as unstable",
    r"Marking TSC unstable",
    r"clocksource.*(watchdog|skew)",
    r"TSC.*(unstable|not synchronized|warp)",
    r"timekeeping watchdog",
    r"rcu: INFO: rcu_.* detected stalls",
    r"watchdog: BUG: soft lockup",
    r"Kernel panic",
    r"general protection fault",
    r"invalid opcode",
    r"BUG: ",
    r"WARNING: CPU",
    r"Call Trace",
)
_GUEST_ERRORS = re.compile("|".join(f"(?:{p})" for p in GUEST_ERROR_PATTERNS))


class BootError(RuntimeError):
    pass


@dataclass
class BootRun:
    vmm: str                    # "bhive" or "qemu"
    seconds: float              # launch -> BOOT-OK on the console
    cpus: int                   # N of "BOOT-OK cpus=N"
    exit_code: int | None       # the VMM's; 1 = the guest ended it through isa-debug-exit
    total_seconds: float        # launch -> VMM gone
    console: str = field(default="", repr=False)

    def guest_errors(self) -> list[str]:
        """Console lines matching GUEST_ERROR_PATTERNS."""
        return [l for l in self.console.splitlines() if _GUEST_ERRORS.search(l)]

    def interrupts(self) -> dict[str, list[int]]:
        """The /proc/interrupts dump that /init prints after BOOT-OK:
        {label: per-CPU counts}, labels like "0" .. "24", "LOC", "RES", "CAL"."""
        lines = self.console.splitlines()
        try:
            start = next(i for i, l in enumerate(lines) if l.split()[:1] == ["CPU0"])
        except StopIteration:
            return {}
        ncpu = len(lines[start].split())
        out: dict[str, list[int]] = {}
        for l in lines[start + 1:]:
            parts = l.split()
            if not parts or not re.fullmatch(r"[0-9A-Z]+:", parts[0]):
                break
            counts = []
            for p in parts[1:1 + ncpu]:
                if not p.isdigit():
                    break
                counts.append(int(p))
            out[parts[0][:-1]] = counts
        return out


def bhive_argv(kernel, initrd, smp: int = 1, memory_mb: int = 1024, append: str = TEST_APPEND,
               name: str | None = None, watchdog: float | None = None) -> list[str]:
    argv = [sys.executable, "-m", "bhive", "run", "--kernel", str(kernel), "--initrd", str(initrd),
            "--append", append, "--smp", str(smp), "-m", f"{memory_mb}M"]
    if watchdog:
        argv += ["--watchdog", str(watchdog)]
    return argv + (["--name", name] if name else [])


def qemu_argv(kernel, initrd, smp: int = 1, memory_mb: int = 1024, append: str = TEST_APPEND,
              qemu: str = QEMU) -> list[str]:
    """QEMU TCG booting `kernel`: a bzImage, or an uncompressed vmlinux, which
    QEMU enters through its PVH note (bhive.linux.vmlinux_file gives one)."""
    return [qemu, "-accel", "tcg", "-m", str(memory_mb), "-smp", str(smp), "-nographic", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", append]


def boot_once(argv: list[str], timeout: float = 180.0, env: dict | None = None,
              vmm: str | None = None) -> BootRun:
    """Run `argv`, watch its stdout for BOOT-OK; raise BootError (with the
    console tail) if it does not show within `timeout`.  After the marker
    the guest gets 20 s to end the VMM before it is killed."""
    if shutil.which(argv[0]) is None and not Path(argv[0]).is_file():
        raise BootError(f"{argv[0]} is not installed (make deps)")
    vmm = vmm or ("qemu" if "qemu" in Path(argv[0]).name else "bhive")
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)
    buf = bytearray()
    seen: float | None = None
    cpus = 0
    fd = proc.stdout.fileno()
    deadline = t0 + timeout
    try:
        while True:
            now = time.perf_counter()
            if now > deadline or (seen is not None and now > seen + 20):
                break
            r, _, _ = select.select([fd], [], [], 0.5)
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            if seen is None:
                m = MARKER.search(buf)
                if m:
                    seen = time.perf_counter()
                    cpus = int(m.group(1))
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=5)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        proc.stdout.close()
    total = time.perf_counter() - t0
    console = buf.decode(errors="replace").replace("\r\n", "\n")
    if seen is None:
        tail = "\n".join(console.splitlines()[-30:])
        raise BootError(f"{vmm}: no BOOT-OK within {timeout:.0f} s (exit {proc.returncode}); "
                        f"console tail:\n{tail}")
    return BootRun(vmm, seen - t0, cpus, proc.returncode, total, console)
