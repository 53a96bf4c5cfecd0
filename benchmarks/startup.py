"""Where `bhive run`'s fixed cost goes: launch, start-up, teardown.

    python benchmarks/startup.py --runs 5                       # configs/hello.toml
    python benchmarks/startup.py --linux bookworm-cloud --smp 1 2 --runs 3
    python benchmarks/startup.py --no-zygote ...                # every worker exec'd (BHIVE_NO_ZYGOTE=1)

Runs `bhive run` as a user would (a fresh `python -m bhive run`), notes
the wall time of the launch and of the process's end, and reads the
run directory's logs for the moments in between:

    spawn      the supervisor spawned its first process
    loaded     the image was in guest RAM (for Linux: the kernel decompressed,
               or found in the cache of decompressed kernels, and copied)
    actors     the last device actor said Hello
    vcpu0      vcpu0 logged `started` (its first guest instruction follows)
    boot-ok    `BOOT-OK cpus=N` reached stdout (Linux only)
    exit-write the guest wrote to isa-debug-exit (debug_exit's `guest-exit`)
    stopped    the supervisor logged `stopped` (every process gone)
    exit       `bhive run` returned

Each figure is seconds after the launch, the median of the runs; `teardown`
is exit - exit-write.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bhive.guestkit import bootrun  # noqa: E402
from bhive.rundir import RunDir  # noqa: E402

PHASES = ("spawn", "loaded", "actors", "vcpu0", "boot-ok", "exit-write", "stopped", "exit", "teardown")
_LINE = re.compile(r"^(\S+Z) (\w+)\[\d+\] (\S+)(.*)$")


def _epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def log_moments(vm: str) -> dict[str, float]:
    """Epoch times of the phases the logs record."""
    out: dict[str, float] = {}
    for path in RunDir(vm).logs.glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            m = _LINE.match(line)
            if not m:
                continue
            t, role, event, rest = _epoch(m.group(1)), m.group(2), m.group(3), m.group(4)
            if role == "supervisor" and event == "spawn" and "restarts=0" in rest:
                out.setdefault("spawn", t)
                out["spawn"] = min(out["spawn"], t)
            elif role == "supervisor" and event == "hello" and "role=vcpu" not in rest:
                out["actors"] = max(out.get("actors", 0.0), t)
            elif role == "supervisor" and event == "loaded":
                out["loaded"] = t
            elif role == "supervisor" and event == "stopped":
                out["stopped"] = t
            elif role == "vcpu0" and event == "started":
                out["vcpu0"] = t
            elif event == "guest-exit":
                out["exit-write"] = t
    return out


def run_once(argv: list[str], vm: str, timeout: float = 300.0, env: dict | None = None) -> dict[str, float]:
    t0 = time.time()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env)
    buf = bytearray()
    boot_ok = None
    fd = proc.stdout.fileno()
    while True:
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            proc.kill()
            raise RuntimeError(f"{vm}: no output for {timeout:.0f} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        if boot_ok is None and bootrun.MARKER.search(buf):
            boot_ok = time.time()
    proc.wait()
    end = time.time()
    if proc.returncode != bootrun.DEBUG_EXIT_OK:
        raise RuntimeError(f"{vm}: exit status {proc.returncode}; console tail:\n"
                           + buf.decode(errors="replace")[-2000:])
    moments = {k: v - t0 for k, v in log_moments(vm).items()}
    if boot_ok is not None:
        moments["boot-ok"] = boot_ok - t0
    moments["exit"] = end - t0
    if "exit-write" in moments:
        moments["teardown"] = moments["exit"] - moments["exit-write"]
    return moments


def summarize(label: str, runs: list[dict[str, float]]) -> str:
    cols = []
    for phase in PHASES:
        vals = [r[phase] for r in runs if phase in r]
        if vals:
            cols.append(f"{phase} {statistics.median(vals):.3f}")
    return f"{label} ({len(runs)} runs, median s after launch): " + ", ".join(cols)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "hello.toml"))
    ap.add_argument("--linux", metavar="KERNEL", help="boot this guest-kit kernel (or bzImage) instead")
    ap.add_argument("--smp", type=int, nargs="+", default=[1])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("-m", "--memory", type=int, default=1024, help="MiB (Linux)")
    ap.add_argument("--verbose", "-v", action="store_true", help="every run, not just the medians")
    ap.add_argument("--no-zygote", action="store_true", help="exec every worker (no fork server)")
    a = ap.parse_args(argv)
    env = dict(os.environ)
    if a.no_zygote:
        env["BHIVE_NO_ZYGOTE"] = "1"
    for smp in a.smp:
        vm = f"startbench{smp}"
        if a.linux:
            from bhive import guestkit
            kernel = Path(a.linux) if Path(a.linux).is_file() else guestkit.kernel_path(a.linux)
            cmd = bootrun.bhive_argv(kernel, guestkit.build_initramfs(), smp, a.memory, name=vm)
            label = f"{Path(str(a.linux)).name} smp={smp}"
        else:
            cmd = [sys.executable, "-m", "bhive", "run", a.config, "--smp", str(smp), "--name", vm]
            label = f"{Path(a.config).name} smp={smp}"
        runs = []
        for _ in range(a.runs):
            runs.append(run_once(cmd, vm, env=env))
            if a.verbose:
                print("  " + ", ".join(f"{k} {runs[-1][k]:.3f}" for k in PHASES if k in runs[-1]), flush=True)
        print(summarize(label + (" no-zygote" if a.no_zygote else ""), runs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
