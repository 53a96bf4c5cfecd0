"""Where does guest time go?  A flat profile of a VM's guest code.

Run a VM with BHIVE_PROFILE=N in the environment: every vCPU (softvmm)
samples its guest RIP every N retired instructions and writes the samples
to <rundir>/profile-vcpuK.bin when it stops.  This names the functions
those samples fall in, using the kernel's symbols (a System.map, or the guest kit's kallsyms
of a Debian kernel):

    BHIVE_PROFILE=10000 bhive run --append "console=ttyS0 bhive.test=1"
    python -m bhive.guest_profile debian --kernel bookworm-cloud      # top 40
    python -m bhive.guest_profile debian --map /boot/System.map-6.1.0 --top 80
"""

from __future__ import annotations

import argparse
import bisect
import collections
import sys
from array import array
from pathlib import Path

from .rundir import RunDir


class SymbolMap:
    """Text symbols of a System.map (address type name), for lookups."""

    def __init__(self, text: str):
        syms = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] in "tTwW":
                syms.append((int(parts[0], 16), parts[2]))
        syms.sort()
        self.addrs = [a for a, _ in syms]
        self.names = [n for _, n in syms]

    def name(self, rip: int) -> str:
        k = bisect.bisect_right(self.addrs, rip) - 1
        if k < 0 or rip - self.addrs[k] > 1 << 20:
            return "user" if rip < 1 << 47 else f"{rip:#x}"
        return self.names[k]


def samples(rundir: RunDir) -> dict[str, array]:
    out = {}
    for path in sorted(rundir.path.glob("profile-vcpu*.bin")):
        a = array("Q")
        a.frombytes(path.read_bytes())
        out[path.stem.removeprefix("profile-")] = a
    return out


def flat_profile(rips, symbols: SymbolMap) -> list[tuple[str, int]]:
    return collections.Counter(symbols.name(r) for r in rips).most_common()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bhive.guest_profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vm", help="VM name (its run directory must still exist)")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--kernel", help="guest-kit kernel name (its kallsyms are read once under QEMU)")
    g.add_argument("--map", help="a System.map file")
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args(argv)
    if a.kernel:
        from . import guestkit
        map_path = guestkit.kallsyms(a.kernel)
    else:
        map_path = Path(a.map)
    symbols = SymbolMap(map_path.read_text())
    per_cpu = samples(RunDir(a.vm))
    if not per_cpu:
        print(f"bhive.guest_profile: no profile-vcpu*.bin in {RunDir(a.vm).path} (run with BHIVE_PROFILE=N)",
              file=sys.stderr)
        return 2
    rips = [r for s in per_cpu.values() for r in s]
    total = len(rips)
    print(f"{total} samples from {', '.join(f'{k} ({len(v)})' for k, v in per_cpu.items())}")
    for name, n in flat_profile(rips, symbols)[:a.top]:
        print(f"{100 * n / total:6.2f}%  {n:7d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
