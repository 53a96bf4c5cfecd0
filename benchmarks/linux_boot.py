"""Time to `BOOT-OK cpus=N`: bhive against QEMU TCG, same kernel,
initramfs, memory, -smp and command line, measured in the same run.

Two QEMU columns: QEMU booting the bzImage (its guest decompresses the
kernel itself) and QEMU booting the uncompressed vmlinux through PVH
(`-kernel vmlinux`, no decompression, as bhive, which decompresses on the
host and caches the result: bhive.linux.cache, where the vmlinux comes
from).  Both ratios are shown.

    python benchmarks/linux_boot.py                                  # bookworm-cloud, SMP 1 2 4 8, 3 runs
    python benchmarks/linux_boot.py --kernel trixie-generic --smp 1 2 --runs 3 --json

Runs alternate bhive, QEMU, bhive, QEMU ... so that machine noise falls
on both alike; each figure is the median of `runs`.  bhive's instructions
per second over the boot come from its vCPUs' retired-instruction counts
(`bhive stats`), which the supervisor records at exit.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bhive import guestkit, linux  # noqa: E402
from bhive.guestkit import bootrun  # noqa: E402
from bhive.rundir import RunDir  # noqa: E402


@dataclass
class Comparison:
    kernel: str
    smp: int
    bhive_runs: list[float]
    qemu_runs: list[float]
    bhive_median: float
    qemu_median: float
    bhive_instructions: int = 0        # median of the runs: guest instructions, all vCPUs, launch to end
    bhive_mips: float = 0.0            # median of instructions / (launch to the VM's end) / 1e6
    bhive_cpu_mips: float = 0.0        # median of instructions / (the vCPU processes' CPU seconds) / 1e6
    qemu_failures: int = 0             # QEMU boots that crashed or hung and were run again
    pvh_runs: list[float] = None       # QEMU booting the uncompressed vmlinux through PVH
    pvh_median: float = float("nan")

    @property
    def ratio(self) -> float:
        return self.bhive_median / self.qemu_median

    @property
    def pvh_ratio(self) -> float:
        return self.bhive_median / self.pvh_median


def guest_instructions(vm: str) -> tuple[int, float]:
    """Instructions the VM's vCPUs retired and the CPU seconds their
    processes used, from their `stopped` log lines."""
    total, cpu = 0, 0.0
    for log in RunDir(vm).logs.glob("vcpu*.log"):
        for line in log.read_text().splitlines():
            m = re.search(r" stopped instructions=(\d+)", line)
            if m:
                total += int(m.group(1))
                c = re.search(r" cpu_seconds=([\d.]+)", line)
                cpu += float(c.group(1)) if c else 0.0
    return total, cpu


QEMU_RETRIES = 3          # QEMU TCG itself hangs or oopses now and then (SMP); such a run is repeated
QEMU_TIMEOUT = 90.0       # QEMU boots these in < 15 s here


def compare(kernel: str = "bookworm-cloud", smp: int = 1, runs: int = 3, memory_mb: int = 1024,
            append: str = bootrun.TEST_APPEND, timeout: float = 300.0, qemu: bool = True) -> Comparison:
    """bhive and QEMU alternately, `runs` each.  A bhive failure ends the
    benchmark (it is a bug of ours); a failed QEMU run is counted and run
    again, up to QEMU_RETRIES times per configuration."""
    kpath = Path(kernel) if Path(kernel).is_file() else guestkit.kernel_path(kernel)
    initrd = guestkit.build_initramfs()
    ours, peer, pvh, insns, mips, cpu_mips = [], [], [], [], [], []
    qemu_failures = 0
    argvs = [("bhive", bootrun.bhive_argv(kpath, initrd, smp, memory_mb, append, name=f"bootbench{smp}"))]
    if qemu:
        vmlinux = linux.vmlinux_file(linux.parse_bzimage(kpath.read_bytes()))
        argvs += [("qemu", bootrun.qemu_argv(kpath, initrd, smp, memory_mb, append)),
                  ("qemu-pvh", bootrun.qemu_argv(vmlinux, initrd, smp, memory_mb, append))]
    for i in range(runs):
        # each VMM goes first in turn, so that machine noise falls on all alike
        for vmm, argv in argvs[i % len(argvs):] + argvs[:i % len(argvs)]:
            while True:
                try:
                    r = bootrun.boot_once(argv, timeout if vmm == "bhive" else QEMU_TIMEOUT, vmm=vmm)
                    break
                except bootrun.BootError:
                    if vmm == "bhive" or qemu_failures >= QEMU_RETRIES:
                        raise
                    qemu_failures += 1
            if r.cpus != smp:
                raise bootrun.BootError(f"{vmm} guest reported BOOT-OK cpus={r.cpus}, expected {smp}")
            {"bhive": ours, "qemu": peer, "qemu-pvh": pvh}[vmm].append(r.seconds)
            if vmm == "bhive":
                n, cpu = guest_instructions(f"bootbench{smp}")
                insns.append(n)
                mips.append(n / r.total_seconds / 1e6)
                cpu_mips.append(n / cpu / 1e6 if cpu else 0.0)
    return Comparison(str(kernel), smp, ours, peer, statistics.median(ours),
                      statistics.median(peer) if peer else float("nan"),
                      int(statistics.median(insns)), statistics.median(mips), statistics.median(cpu_mips),
                      qemu_failures, pvh, statistics.median(pvh) if pvh else float("nan"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", nargs="+", default=["bookworm-cloud"],
                    help="guest-kit kernel names or bzImage paths")
    ap.add_argument("--smp", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("-m", "--memory", type=int, default=1024, help="MiB")
    ap.add_argument("--append", default=bootrun.TEST_APPEND)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--no-qemu", action="store_true", help="bhive only")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    results = []
    try:
        for k in a.kernel:
            for n in a.smp:
                c = compare(k, n, a.runs, a.memory, a.append, a.timeout, qemu=not a.no_qemu)
                results.append(c)
                if not a.json:
                    print(f"{c.kernel} smp={n}: bhive {c.bhive_median:.2f} s, qemu-tcg {c.qemu_median:.2f} s "
                          f"(ratio {c.ratio:.2f}), qemu-tcg PVH vmlinux {c.pvh_median:.2f} s "
                          f"(ratio {c.pvh_ratio:.2f}), {c.bhive_instructions / 1e9:.2f} G instructions at "
                          f"{c.bhive_mips:.0f} MIPS  (bhive {' '.join(f'{t:.2f}' for t in c.bhive_runs)}; "
                          f"qemu {' '.join(f'{t:.2f}' for t in c.qemu_runs)}; "
                          f"qemu-pvh {' '.join(f'{t:.2f}' for t in c.pvh_runs or [])})", flush=True)
    except bootrun.BootError as exc:
        print(f"linux_boot: {exc}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps([{**asdict(c), "ratio": c.ratio, "pvh_ratio": c.pvh_ratio} for c in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
