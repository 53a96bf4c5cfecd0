"""The peer: boot a guest-kit kernel + busybox initramfs under QEMU TCG and
time it, for comparison with bhive.

    python benchmarks/qemu_peer.py                       # bookworm-cloud, SMP 1 and 2, 3 runs
    python benchmarks/qemu_peer.py --kernel trixie-generic --smp 1 2 4 --runs 5 --json

One run: `qemu-system-x86_64 -accel tcg -m 1024 -smp N -nographic
-no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel K
-initrd I -append "console=ttyS0 panic=-1 bhive.test=1"`.  The figure is
host wall seconds from just before the launch to the moment the
`BOOT-OK cpus=N` line arrives on the serial console (QEMU's stdout); the
guest's /init then ends QEMU through isa-debug-exit (exit status 1, see
guests/initramfs/init).  `measure` returns the median of K runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MARKER = re.compile(rb"BOOT-OK cpus=(\d+)")
DEFAULT_APPEND = "console=ttyS0 panic=-1 bhive.test=1"
QEMU = "qemu-system-x86_64"
DEBUG_EXIT_OK = 1          # (0 << 1) | 1: what /bin/bhive-exit makes QEMU return


class PeerError(RuntimeError):
    pass


@dataclass
class BootRun:
    seconds: float              # launch -> BOOT-OK on the console
    cpus: int                   # N of "BOOT-OK cpus=N"
    exit_code: int | None       # QEMU's; 1 = the guest ended it through isa-debug-exit
    total_seconds: float        # launch -> QEMU gone
    console: str = field(default="", repr=False)


def qemu_argv(kernel: str | os.PathLike, initrd: str | os.PathLike, smp: int = 1, memory_mb: int = 1024,
              append: str = DEFAULT_APPEND, qemu: str = QEMU) -> list[str]:
    return [qemu, "-accel", "tcg", "-m", str(memory_mb), "-smp", str(smp), "-nographic", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", append]


def boot_once(kernel: str | os.PathLike, initrd: str | os.PathLike, smp: int = 1, memory_mb: int = 1024,
              append: str = DEFAULT_APPEND, timeout: float = 180.0, qemu: str = QEMU) -> BootRun:
    """Boot once; raise PeerError if BOOT-OK does not show within `timeout`."""
    if shutil.which(qemu) is None:
        raise PeerError(f"{qemu} is not installed (make deps)")
    argv = qemu_argv(kernel, initrd, smp, memory_mb, append, qemu)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    buf = bytearray()
    seen: float | None = None
    cpus = 0
    fd = proc.stdout.fileno()
    deadline = t0 + timeout
    try:
        while True:
            now = time.perf_counter()
            if now > deadline:
                break
            # after the marker, give the guest a few seconds to end QEMU
            if seen is not None and now > seen + 15:
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
                proc.wait(timeout=2 if seen is not None else 0.1)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        proc.stdout.close()
    total = time.perf_counter() - t0
    console = buf.decode(errors="replace")
    if seen is None:
        tail = "\n".join(console.splitlines()[-25:])
        raise PeerError(f"no BOOT-OK within {timeout:.0f} s (QEMU exit {proc.returncode}); console tail:\n{tail}")
    return BootRun(seen - t0, cpus, proc.returncode, total, console)


@dataclass
class Measurement:
    kernel: str
    smp: int
    runs: list[float]
    median: float
    cpus_reported: list[int]
    exit_codes: list[int | None]
    qemu_version: str


def qemu_version(qemu: str = QEMU) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def measure(kernel: str = "bookworm-cloud", smp: int = 1, runs: int = 3, memory_mb: int = 1024,
            append: str = DEFAULT_APPEND, timeout: float = 180.0, qemu: str = QEMU) -> Measurement:
    """Median over `runs` boots of a guest-kit kernel (by name, or a bzImage
    path) with the kit's initramfs.  Checks the guest saw `smp` CPUs."""
    from bhive import guestkit
    kpath = Path(kernel) if Path(kernel).is_file() else guestkit.kernel_path(kernel)
    initrd = guestkit.build_initramfs()
    times, cpus, codes = [], [], []
    for _ in range(runs):
        r = boot_once(kpath, initrd, smp, memory_mb, append, timeout, qemu)
        if r.cpus != smp:
            raise PeerError(f"guest reported BOOT-OK cpus={r.cpus}, expected {smp}")
        times.append(r.seconds)
        cpus.append(r.cpus)
        codes.append(r.exit_code)
    return Measurement(str(kernel), smp, times, statistics.median(times), cpus, codes, qemu_version(qemu))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", default="bookworm-cloud", help="guest-kit kernel name or a bzImage path")
    ap.add_argument("--smp", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("-m", "--memory", type=int, default=1024, help="MiB")
    ap.add_argument("--append", default=DEFAULT_APPEND)
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    results = []
    try:
        for n in a.smp:
            m = measure(a.kernel, n, a.runs, a.memory, a.append, a.timeout)
            results.append(m)
            if not a.json:
                runs = " ".join(f"{t:.2f}" for t in m.runs)
                print(f"qemu-tcg {m.kernel} smp={n}: median {m.median:.2f} s  (runs: {runs}; "
                      f"exit codes {m.exit_codes})", flush=True)
    except PeerError as exc:
        print(f"qemu_peer: {exc}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps([asdict(m) for m in results], indent=1))
    elif results:
        print(results[0].qemu_version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
