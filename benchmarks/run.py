"""`make bench`: measure, then rewrite the matching sections of BENCHMARKS.md.

Each benchmark produces one markdown block, stored between
``<!-- bench:NAME:begin -->`` and ``<!-- bench:NAME:end -->`` markers, so
re-running one benchmark leaves the others' figures in place.

    python benchmarks/run.py                 # all
    python benchmarks/run.py exit_roundtrip  # one
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MD = REPO / "BENCHMARKS.md"


def percentile(sorted_values, q: float):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {date.today().isoformat()}"


def bhive(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bhive", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, timeout=timeout)


def exit_roundtrip(runs: int = 5) -> str:
    """Guest IN answered by the uart actor, until the vCPU resumes."""
    iterations = 20000
    per_run_p50, per_run_p99, walls, samples_all = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            env = dict(os.environ, BHIVE_EXIT_LATENCY=f"{tmp}/lat{i}")
            t0 = time.perf_counter()
            proc = bhive("run", "configs/bench-pio.toml", "--name", f"bench-pio-{os.getpid()}-{i}", env=env)
            walls.append(time.perf_counter() - t0)
            if proc.returncode != 1:
                raise SystemExit(f"bench-pio run {i} failed ({proc.returncode}): {proc.stderr.decode()}")
            samples = array("q")
            samples.frombytes(Path(f"{tmp}/lat{i}.vcpu0").read_bytes())
            s = sorted(samples)
            per_run_p50.append(percentile(s, 0.5))
            per_run_p99.append(percentile(s, 0.99))
            samples_all.extend(s)
    samples_all.sort()
    us = lambda ns: ns / 1000  # noqa: E731
    return "\n".join([
        "### Exit round trip (port I/O answered by a device actor)",
        "",
        f"Command: `make bench` (or `python benchmarks/run.py exit_roundtrip`); {machine()}.",
        "",
        f"The guest (`guests/bench/pio_loop.asm`) reads the UART scratch register {iterations} times; each "
        "read exits to the vCPU process, goes over ZeroMQ (msgpack) to the `uart` actor process, which "
        "applies it, commits its state to shared memory and answers. Measured in the vCPU process from "
        "the exit reaching the worker until `vm_complete_inout` returns.",
        "",
        "| metric | median of runs | all samples |",
        "|---|---|---|",
        f"| p50 | {us(statistics.median(per_run_p50)):.1f} µs | {us(percentile(samples_all, 0.5)):.1f} µs |",
        f"| p99 | {us(statistics.median(per_run_p99)):.1f} µs | {us(percentile(samples_all, 0.99)):.1f} µs |",
        f"| wall time per run ({iterations} exits, incl. VM start/stop) | {statistics.median(walls):.2f} s | |",
        "",
        f"{runs} runs, {len(samples_all)} samples.",
    ])


def mips(runs: int = 5) -> str:
    """softvmm MIPS under a whole VM, with QEMU TCG on the same image."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import mips as mips_bench
    rows = mips_bench.run(runs)
    lines = [
        "### CPU speed: MIPS on simple loops (softvmm vs QEMU TCG)",
        "",
        f"Command: `make bench` (or `python benchmarks/run.py mips`); {machine()}.",
        "",
        "The guest (`guests/bench/loops.asm`) is one 64 KiB ROM image run by both engines: QEMU 7.2 TCG "
        "(`-bios`) and a whole bhive VM (flat at 0xF0000, reset vector F000:FFF0). Each loop iteration is a "
        "fixed number of instructions; MIPS = (instructions of a long run - those of a short run) / "
        "(wall time difference), so start-up cancels out. Median of "
        f"{runs} runs each.",
        "",
        "| loop | bhive (softvmm) MIPS | QEMU TCG MIPS | bhive / QEMU |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['loop']} | {r['bhive']:.0f} | {r['qemu']:.0f} | {r['bhive'] / r['qemu']:.2f} |")
    return "\n".join(lines)


BENCHMARKS = {
    "exit_roundtrip": exit_roundtrip,
    "mips": mips,
}


def update_section(text: str, name: str, block: str) -> str:
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    section = f"{begin}\n{block}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _m: section, text)
    return text.rstrip("\n") + "\n\n" + section + "\n"


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    text = MD.read_text() if MD.exists() else "# Benchmarks\n"
    for name in names:
        print(f"running {name} ...", flush=True)
        block = BENCHMARKS[name]()
        print(block)
        text = update_section(text, name, block)
        MD.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
