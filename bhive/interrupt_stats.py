"""Interrupt statistics of a VM, shaped like the guest's /proc/interrupts.

Counted on the host side, in two places, and read here from the files
they keep in the run directory (`stats-ROLE.json`, refreshed a few times a
second and at exit, so they outlive the VM):

* each vCPU process counts the MSIs it injected with vm_lapic_msi, per
  (sending actor, vector, addressing): for a physically addressed MSI that
  is exactly what the CPU received;
* the IOAPIC and PIC actors count what they delivered, per (pin, vector,
  destination vCPU process), and what they had to drop.

Rows: one per (controller, pin, vector); columns CPU0..CPUn-1 (received),
then what the controller sent and dropped.  Then the interrupts no device
raised, as each CPU's local APIC counted what it took (IRR -> ISR): `LOC`,
the vector of that CPU's timer LVT, and `IPI`, every other vector (sent by
another CPU's ICR, or by a CPU to itself), as /proc/interrupts has LOC, RES,
CAL and TLB.
"""

from __future__ import annotations

import json
from collections import defaultdict

from .rundir import RunDir

CHIP_NAMES = {"ioapic": "IO-APIC", "pic": "XT-PIC"}


def _read(rd: RunDir) -> list[dict]:
    out = []
    for path in sorted(rd.path.glob("stats-*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def interrupt_stats(rd: RunDir, cpus: int | None = None) -> dict:
    """{"cpus": n, "rows": [...]} for the VM in `rd` (running or ended)."""
    files = _read(rd)
    if cpus is None:
        info = rd.read_json("supervisor.json") or {}
        cpus = (info.get("config") or {}).get("cpus") or 1 + max(
            [f["cpu"] for f in files if "cpu" in f] or [0])
    received: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0] * cpus)
    other: dict[tuple[str, int], int] = defaultdict(int)      # logical/broadcast, by injecting CPU
    sent: dict[tuple[str, int, int], int] = defaultdict(int)  # (chip, pin, vector) -> delivered
    dropped: dict[tuple[str, int, int], int] = defaultdict(int)
    level_eois: dict[int, list[int]] = defaultdict(lambda: [0] * cpus)
    accepted: dict[int, list[int]] = defaultdict(lambda: [0] * cpus)   # vector -> taken, per CPU
    timer_vectors: dict[int, set[int]] = defaultdict(set)               # vector -> CPUs timing with it
    for f in files:
        if "cpu" in f:
            cpu = f["cpu"]
            if cpu < cpus:
                for vector, n in f.get("accepted", {}).items():
                    accepted[int(vector)][cpu] += n
                if f.get("timer_vector"):
                    timer_vectors[f["timer_vector"]].add(cpu)
            for key, n in f.get("vectors", {}).items():
                source, vector, kind = key.split(";")
                if kind in ("self", "extint") and cpu < cpus:
                    received[(source, int(vector))][cpu] += n
                else:
                    other[(source, int(vector))] += n
            for vector, n in f.get("level_eois", {}).items():
                if cpu < cpus:
                    level_eois[int(vector)][cpu] += n
        else:
            for key, n in f.get("deliveries", {}).items():
                chip, pin, vector, cpu = key.split(";")
                k = (f["role"], int(pin), int(vector))
                if cpu == "-":
                    dropped[k] += n
                else:
                    sent[k] += n
    # Which pins used each (controller, vector): the row label.
    pins: dict[tuple[str, int], set[int]] = defaultdict(set)
    for role, pin, vector in list(sent) + list(dropped):
        pins[(role, vector)].add(pin)
    rows = []
    keys = set(received) | set(other) | {(r, v) for r, _, v in list(sent) + list(dropped)}
    for source, vector in sorted(keys, key=lambda k: (k[1], k[0])):
        pin_set = sorted(pins.get((source, vector), ()))
        rows.append({
            "source": source,
            "chip": CHIP_NAMES.get(source, source),
            "vector": vector,
            "pins": pin_set,
            "per_cpu": list(received.get((source, vector), [0] * cpus)),
            "other": other.get((source, vector), 0),
            "sent": sum(n for (r, p, v), n in sent.items() if r == source and v == vector),
            "dropped": sum(n for (r, p, v), n in dropped.items() if r == source and v == vector),
            "level_eois": list(level_eois.get(vector, [0] * cpus)),
        })
    device_vectors = {v for _, v in keys}
    for vector in sorted(set(accepted) - device_vectors):
        kind = "LOC" if vector in timer_vectors else "IPI"
        rows.append({"source": "lapic", "chip": kind, "label": kind, "vector": vector, "pins": [],
                     "per_cpu": accepted[vector], "other": 0, "sent": 0, "dropped": 0,
                     "level_eois": [0] * cpus})
    return {"vm": rd.name, "cpus": cpus, "rows": rows}


def format_table(stats: dict) -> str:
    """/proc/interrupts-like text: IRQ, CPU0..n, chip, pin, vector, sent/dropped."""
    cpus = stats["cpus"]
    lines = ["      " + "".join(f"{'CPU' + str(i):>11}" for i in range(cpus))]
    for row in stats["rows"]:
        label = row.get("label") or ",".join(map(str, row["pins"])) or "-"
        if row["source"] == "lapic":
            lines.append(f"{label:>5}:" + "".join(f"{n:>11}" for n in row["per_cpu"])
                         + f"  {'LAPIC':<8} vec 0x{row['vector']:02x}  "
                         + ("local timer" if label == "LOC" else "inter-processor interrupts"))
            continue
        extra = f"sent={row['sent']}"
        if row["dropped"]:
            extra += f" dropped={row['dropped']}"
        if row["other"]:
            extra += f" logical/broadcast={row['other']}"
        lines.append(f"{label:>5}:" + "".join(f"{n:>11}" for n in row["per_cpu"])
                     + f"  {row['chip']:<8} vec 0x{row['vector']:02x}  {extra}")
    return "\n".join(lines)
