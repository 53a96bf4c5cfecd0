"""`make chaos`: the chaos soak, and restart latency per actor.

Boots the guest kit's busybox Linux (bookworm-cloud, `bhive.test=1`) again
and again with a [chaos] table that kills every device actor in turn at
random instants, until at least --kills kills (default 1000) have landed;
each boot must reach BOOT-OK, end itself, and print no guest error
(bhive.chaos.CHAOS_ERROR_PATTERNS), and its chaos report must be ok.
Prints restart latency (kill -> successor's Hello) p50/p99/max per actor
over all boots, and the totals.  Exit status 0 only if every boot passed.

    python benchmarks/chaos.py                    # >= 1000 kills on 2 vCPUs
    python benchmarks/chaos.py --kills 200 --smp 8 --every 100ms --json

Figures depend on the machine's load: a loaded 2-core machine shows a
p99 several times the p50 (restarts queue behind each other and behind
the vCPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bhive import chaos as chaos_mod          # noqa: E402
from bhive.rundir import RunDir               # noqa: E402

DEVICES = ["uart", "debug_exit", "ioapic", "pic", "pit", "rtc", "i8042", "acpi_pm", "testdev", "fw_cfg"]
DEVICE_OPTIONS = {"acpi_pm": "port = 0x600\n", "testdev": "port = 0x2000\n"}


def config(name: str, smp: int, every: str, jitter: str, seed: int) -> str:
    devices = "".join(f"[devices.{d}]\nmax_restarts = 1000\n{DEVICE_OPTIONS.get(d, '')}" for d in DEVICES)
    return (f'[vm]\nname = "{name}"\ncpus = {smp}\nmemory = "512M"\nwatchdog = 600\n'
            f'[boot]\nkernel = "guestkit:bookworm-cloud"\ninitrd = "guestkit:initramfs"\n'
            f'append = "console=ttyS0 panic=-1 bhive.test=1 ignore_loglevel"\n{devices}'
            f'[chaos]\nkill = "all-devices"\nevery = "{every}"\njitter = "{jitter}"\nseed = {seed}\n')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=1000)
    ap.add_argument("--smp", type=int, default=2)
    ap.add_argument("--every", default="50ms")
    ap.add_argument("--jitter", default="40ms")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    latencies: dict[str, list[float]] = {}
    totals = {"boots": 0, "failed_boots": 0, "kills": 0, "exits_in_flight": 0, "exits_retried": 0,
              "interrupts_resent": 0, "guest_errors": 0}
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        seed = 0
        while totals["kills"] < args.kills:
            seed += 1
            name = f"chaos-soak-{os.getpid()}-{seed}"
            cfg = Path(tmp) / f"{name}.toml"
            cfg.write_text(config(name, args.smp, args.every, args.jitter, seed))
            t0 = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "bhive", "run", str(cfg)], capture_output=True,
                                  cwd=REPO, timeout=900)
            totals["boots"] += 1
            report_path = RunDir(name).path / "chaos.json"
            report = json.loads(report_path.read_text()) if report_path.exists() else None
            console = proc.stdout.decode(errors="replace")
            ok = proc.returncode == 1 and "BOOT-OK" in console and report is not None and report["ok"]
            if report is not None:
                totals["kills"] += report["total_kills"]
                totals["exits_in_flight"] += report["exits_in_flight"]
                totals["exits_retried"] += report["exits_retried"]
                totals["interrupts_resent"] += report["interrupts_resent"]
                totals["guest_errors"] += len(report["guest_errors"])
            if not ok:
                totals["failed_boots"] += 1
                failures.append({"boot": name, "status": proc.returncode,
                                 "report": report, "stderr": proc.stderr.decode(errors="replace")[-1500:]})
            # per-kill latencies: the supervisor's log has each successor's
            # Hello; the report keeps only percentiles, so read them there
            sup = RunDir(name).log_path("supervisor")
            for line in sup.read_text().splitlines() if sup.exists() else []:
                if " restarted " in line:
                    f = chaos_mod._fields(line)
                    latencies.setdefault(f["role"], []).append(float(f["latency_ms"]))
            if ok:
                shutil.rmtree(RunDir(name).path, ignore_errors=True)   # a failed boot's stays, for its logs
            print(f"boot {seed}: status {proc.returncode}, {report['total_kills'] if report else '?'} kills, "
                  f"{time.monotonic() - t0:.1f} s, {'ok' if ok else 'FAILED'}", file=sys.stderr)
    summary = {}
    for role, values in sorted(latencies.items()):
        summary[role] = {"n": len(values), "p50": chaos_mod.percentile(values, 50),
                         "p99": chaos_mod.percentile(values, 99), "max": max(values)}
    every = [v for values in latencies.values() for v in values]
    summary["all"] = {"n": len(every), "p50": chaos_mod.percentile(every, 50),
                      "p99": chaos_mod.percentile(every, 99), "max": max(every, default=0.0)}
    if args.json:
        print(json.dumps({"totals": totals, "restart_latency_ms": summary, "failures": failures}, indent=1))
    else:
        print("restart latency (supervisor: death noticed -> successor's Hello), ms")
        print(f"{'ACTOR':<12} {'N':>6} {'P50':>8} {'P99':>8} {'MAX':>8}")
        for role, s in summary.items():
            print(f"{role:<12} {s['n']:>6} {s['p50']:>8.1f} {s['p99']:>8.1f} {s['max']:>8.1f}")
        print(", ".join(f"{k}: {v}" for k, v in totals.items()))
        for f in failures:
            print(f"FAILED {f['boot']}: status {f['status']}; "
                  f"{(f['report'] or {}).get('failures')} {(f['report'] or {}).get('guest_errors')}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
