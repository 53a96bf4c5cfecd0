"""Debian from the IDE disk: time to `login:` and O_DIRECT dd throughput,
bhive against QEMU TCG with the same image, kernel, initrd, memory, -smp
and command line, measured in the same run.

    python benchmarks/disk.py --peer qemu                       # both images, SMP 1 2 4 8, bhive and QEMU
    python benchmarks/disk.py --peer qemu --no-bhive --smp 2    # the QEMU side only
    python benchmarks/disk.py --images debian-13 --smp 8 --runs 3 --json

The images are the guest kit's (python -m bhive.guestkit image debian-13;
built on first use).  Each boot: `-m 1024 -smp N`, the image's kernel and
initrd by --kernel/--initrd, `root=/dev/sda1 console=ttyS0 panic=-1`, the image as
the primary master IDE disk with -snapshot (`-drive if=ide` for QEMU,
`-hda` for bhive).  Time to login: host wall seconds from the launch to
`login:` on the serial console.  Throughput: after logging in as root, dd
of MiB 1 MiB blocks with O_DIRECT, a write (oflag=direct conv=fsync) then a
read (iflag=direct, caches dropped), MiB/s as dd reports it in the guest;
measured on the boots with --dd-smp vCPUs.  Runs alternate bhive and QEMU;
each figure is the median of --runs.  A boot whose guest log shows a lost
interrupt or an ATA error is reported as such (the figures would mean
nothing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bhive.guestkit import FetchError, diskrun, images  # noqa: E402
from bhive.guestkit.console import ConsoleError, GuestConsole  # noqa: E402


@dataclass
class Boot:
    vmm: str
    image: str
    smp: int
    login_seconds: float
    dd_write: float | None = None       # MiB/s
    dd_read: float | None = None
    disk_errors: list[str] = field(default_factory=list)
    qemu_crashes: int = 0               # QEMU boots that crashed before this one and were run again


def boot(vmm: str, img: images.Image, smp: int, dd_mib: int | None, timeout: float, memory: int) -> Boot:
    argv = diskrun.launch(vmm, img, smp, snapshot=True, memory_mb=memory, name=f"bench-{img.name}-{smp}")
    transcript = REPO / ".cache" / "bench-disk" / f"{vmm}-{img.name}-smp{smp}-{int(time.time())}.log"
    with GuestConsole(argv, transcript=transcript, cwd=REPO) as con:
        login = con.login(timeout=timeout)
        b = Boot(vmm, img.name, smp, login)
        if dd_mib:
            rates = diskrun.dd_throughput(con, dd_mib, timeout=timeout)
            b.dd_write, b.dd_read = rates["write"], rates["read"]
        b.disk_errors = diskrun.disk_errors(con)
        con.poweroff(timeout=120)
    return b


def boot_retrying_qemu(vmm: str, img: images.Image, smp: int, dd_mib, timeout: float, memory: int,
                       tries: int = 3) -> Boot:
    """boot(); a QEMU guest that crashed (diskrun.QEMU_CRASH: TCG's own
    trouble with live-patched kernel text) is counted and booted again."""
    for attempt in range(tries):
        try:
            b = boot(vmm, img, smp, dd_mib, timeout, memory)
            b.qemu_crashes = attempt
            return b
        except ConsoleError as exc:
            if vmm != "qemu" or not diskrun.QEMU_CRASH.search(str(exc)) or attempt == tries - 1:
                raise
            print(f"{img.name} smp={smp} qemu: the guest crashed under QEMU TCG; booting again",
                  file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, unit="") -> str:
    return "-" if x is None else f"{x:.1f}{unit}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", nargs="+", default=sorted(images.IMAGES), choices=sorted(images.IMAGES))
    ap.add_argument("--smp", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("-m", "--memory", type=int, default=1024, help="MiB")
    ap.add_argument("--peer", choices=["qemu"], help="also boot under this VMM (QEMU TCG)")
    ap.add_argument("--no-bhive", action="store_true", help="the peer only")
    ap.add_argument("--dd-mib", type=int, default=256, help="MiB per dd run (0: no dd)")
    ap.add_argument("--dd-smp", type=int, help="measure dd on the boots with this many vCPUs "
                                               "(default: the largest --smp)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds for each step of a boot")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    vmms = ([] if a.no_bhive else ["bhive"]) + ([a.peer] if a.peer else [])
    if not vmms:
        ap.error("nothing to run: --no-bhive without --peer")
    if "bhive" in vmms and not diskrun.bhive_has_disks():
        print("disk: bhive run has no -hda/-snapshot yet, so the bhive side cannot boot from a disk; "
              "run the QEMU side alone with --peer qemu --no-bhive", file=sys.stderr)
        return 2
    dd_smp = a.dd_smp or max(a.smp)
    boots: list[Boot] = []
    try:
        imgs = {n: images.build_image(n) for n in a.images}
        for name in a.images:
            for n in a.smp:
                for _ in range(a.runs):
                    for vmm in vmms:
                        b = boot_retrying_qemu(vmm, imgs[name], n, a.dd_mib if n == dd_smp else None,
                                               a.timeout, a.memory)
                        boots.append(b)
                        if not a.json:
                            dd = (f", dd O_DIRECT write {fmt(b.dd_write)} MiB/s read {fmt(b.dd_read)} MiB/s"
                                  if b.dd_write is not None else "")
                            bad = f", GUEST DISK ERRORS: {b.disk_errors}" if b.disk_errors else ""
                            print(f"{name} smp={n} {vmm}: login: after {b.login_seconds:.1f} s{dd}{bad}",
                                  flush=True)
    except (FetchError, ConsoleError, diskrun.DiskUnsupported) as exc:
        print(f"disk: {exc}", file=sys.stderr)
        return 1
    rows = []
    for name in a.images:
        for n in a.smp:
            row = {"image": name, "smp": n}
            for vmm in vmms:
                bs = [b for b in boots if (b.vmm, b.image, b.smp) == (vmm, name, n)]
                row[vmm] = {"login_median": median([b.login_seconds for b in bs]),
                            "login_runs": [round(b.login_seconds, 2) for b in bs],
                            "dd_write": median([b.dd_write for b in bs]), "dd_read": median([b.dd_read for b in bs]),
                            "disk_errors": sum(len(b.disk_errors) for b in bs)}
            rows.append(row)
    if a.json:
        print(json.dumps({"rows": rows, "boots": [asdict(b) for b in boots]}, indent=1))
        return 0
    print()
    print("| image | vCPUs | " + " | ".join(f"{v} login" for v in vmms)
          + (" | bhive / QEMU" if len(vmms) == 2 else "") + " | "
          + " | ".join(f"{v} dd write | {v} dd read" for v in vmms) + " |")
    print("|" + "---|" * (2 + len(vmms) + (1 if len(vmms) == 2 else 0) + 2 * len(vmms)))
    for r in rows:
        cells = [r["image"], str(r["smp"])] + [fmt(r[v]["login_median"], " s") for v in vmms]
        if len(vmms) == 2:
            bh, qe = r["bhive"]["login_median"], r[vmms[1]]["login_median"]
            cells.append(f"{bh / qe:.2f}" if bh and qe else "-")
        for v in vmms:
            cells += [fmt(r[v]["dd_write"], " MiB/s"), fmt(r[v]["dd_read"], " MiB/s")]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
