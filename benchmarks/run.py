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
sys.path.insert(0, str(REPO))


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
    """Guest IN answered by the uart actor, until the vCPU resumes, over
    both exit transports in the same run."""
    iterations = 20000
    base = (REPO / "configs/bench-pio.toml").read_text()
    image = (REPO / "guests/bench/pio_loop.asm").resolve()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for transport in ("shm", "zmq"):
            cfg = Path(tmp) / f"pio-{transport}.toml"
            cfg.write_text(base.replace('image = "../guests/bench/pio_loop.asm"', f'image = "{image}"')
                           .replace("[vm]\n", f'[vm]\nexit_transport = "{transport}"\n'))
            p50, p99, walls = [], [], []
            for i in range(runs):
                env = dict(os.environ, BHIVE_EXIT_LATENCY=f"{tmp}/lat-{transport}{i}")
                t0 = time.perf_counter()
                proc = bhive("run", cfg, "--name", f"bench-pio-{os.getpid()}-{i}", env=env)
                walls.append(time.perf_counter() - t0)
                if proc.returncode != 1:
                    raise SystemExit(f"bench-pio run failed ({proc.returncode}): {proc.stderr.decode()}")
                samples = array("q")
                samples.frombytes(Path(f"{tmp}/lat-{transport}{i}.vcpu0").read_bytes())
                ordered = sorted(samples)
                p50.append(percentile(ordered, 0.5) / 1000)
                p99.append(percentile(ordered, 0.99) / 1000)
            results[transport] = (statistics.median(p50), statistics.median(p99), statistics.median(walls))
    shm, zmq_ = results["shm"], results["zmq"]
    return "\n".join([
        "### Exit round trip (port I/O answered by a device actor)",
        "",
        f"Command: `make bench` (or `python benchmarks/run.py exit_roundtrip`); {machine()}.",
        "",
        f"The guest (`guests/bench/pio_loop.asm`) reads the UART scratch register {iterations} times; each "
        "read exits to the vCPU process, goes to the `uart` actor process, which applies it, commits its "
        "state to shared memory and answers. Measured in the vCPU process from the exit reaching the "
        "worker until `vm_complete_inout` returns. Both transports carry the same schema messages: `shm` "
        "is the default shared-memory channel with eventfd doorbells, `zmq` a ZeroMQ DEALER/ROUTER round "
        f"trip. Median of {runs} runs' percentiles.",
        "",
        "| transport | p50 | p99 | wall per run (20000 exits, incl. VM start/stop) |",
        "|---|---|---|---|",
        f"| shm (default) | {shm[0]:.1f} µs | {shm[1]:.1f} µs | {shm[2]:.2f} s |",
        f"| zmq | {zmq_[0]:.1f} µs | {zmq_[1]:.1f} µs | {zmq_[2]:.2f} s |",
        f"| zmq / shm | {zmq_[0] / shm[0]:.1f}x | {zmq_[1] / shm[1]:.1f}x | |",
        "",
        "No peer figure: QEMU TCG answers the same IN inside its own process, with no exit to leave.",
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
        "bhive runs softvmm as it boots Linux (the JIT translates the loop after 16 runs) and, for "
        "comparison, interpreting only (`BHIVE_JIT=0`).",
        "",
        "The same loops run in each CPU mode (`rom.inc` switches to it before the loop): 16-bit real mode, "
        "32-bit protected mode with paging off and on, compatibility mode (a 32-bit code segment under long "
        "mode) and 64-bit mode.",
        "",
        "| mode | loop | bhive (softvmm) MIPS | softvmm interpreter only | QEMU TCG MIPS | bhive / QEMU |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['loop']} | {r['bhive']:.0f} | {r['interpreter']:.0f} | {r['qemu']:.0f} | "
                     f"{r['bhive'] / r['qemu']:.2f} |")
    return "\n".join(lines)


def host_tsc_hz() -> float:
    """Host TSC ticks per second (guest RDTSC reads the host TSC)."""
    from bhive.accel import softvmm
    t0, c0 = time.perf_counter(), softvmm.host_tsc()
    time.sleep(0.5)
    return (softvmm.host_tsc() - c0) / (time.perf_counter() - t0)


def irq_latency(runs: int = 5) -> str:
    """From a device raising its line to the first instruction of the
    guest's handler, through the testdev and IOAPIC actors."""
    from bhive.guestbuild import build_nasm
    sys.path.insert(0, str(REPO / "benchmarks"))
    import msi_latency
    hz = host_tsc_hz()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, defines in (("halted", {}), ("busy (spinning, IF=1)", {"SPIN": 1})):
            image = build_nasm(REPO / "guests/bench/irq_latency.asm", defines=defines)
            cfg = Path(tmp) / "irq.toml"
            cfg.write_text(f'[vm]\ncpus = 2\nmemory = "64M"\n[boot]\nimage = "{image}"\n'
                           '[devices.uart]\nport = 0x3f8\n[devices.debug_exit]\nport = 0xf4\n'
                           '[devices.ioapic]\nmmio = 0xfec00000\n[devices.testdev]\nport = 0x2000\n')
            p50s, p99s = [], []
            for i in range(runs):
                proc = bhive("run", cfg, "--name", f"irqlat-{os.getpid()}-{i}")
                if proc.returncode != 1:
                    raise SystemExit(f"irq_latency run failed ({proc.returncode}): {proc.stderr.decode()}")
                ticks = sorted(int(x) for x in re.findall(rb"lat (\d+)", proc.stdout))
                p50s.append(percentile(ticks, 0.5) / hz * 1e6)
                p99s.append(percentile(ticks, 0.99) / hz * 1e6)
            rows.append((f"device line -> handler, destination vCPU {label}",
                         statistics.median(p50s), statistics.median(p99s)))
    inj = msi_latency.measure()
    for key, label in (("running", "running"), ("halted", "halted")):
        if key in inj:
            rows.append((f"`vm_lapic_msi` from another process -> handler, vCPU {label}",
                         inj[key]["p50_us"], inj[key]["p99_us"]))
    lines = [
        "### Interrupt delivery latency",
        "",
        f"Command: `make bench` (or `python benchmarks/run.py irq_latency`); {machine()}.",
        "",
        "Whole path (`guests/bench/irq_latency.asm`, 2 vCPUs): the BSP stamps RDTSC and asks pc-testdev "
        "to raise ISA line 5 (a port exit to the `testdev` actor, which drives the line to the `ioapic` "
        "actor; the IOAPIC reads RTE 5 and sends the MSI to vCPU 1's process, whose control thread "
        "injects it with `vm_lapic_msi`); vCPU 1's handler stamps RDTSC as its first instruction. Guest "
        "RDTSC is the host TSC in every process, so the stamps compare. 200 interrupts a run, median of "
        f"{runs} runs' percentiles. The second part is the injection alone (`benchmarks/msi_latency.py`).",
        "",
        "| path | p50 | p99 |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {p50:.0f} µs | {p99:.0f} µs |" for label, p50, p99 in rows]
    return "\n".join(lines)


def linux_boot(runs: int = 3) -> str:
    """Time to BOOT-OK, bhive against QEMU TCG in the same run."""
    import linux_boot as lb
    from bhive.guestkit import bootrun
    kernels = ["bookworm-cloud", "bookworm-generic", "trixie-generic"]
    rows = []
    for kernel in kernels:
        for smp in (1, 2, 4, 8):
            c = lb.compare(kernel, smp, runs, 1024, bootrun.TEST_APPEND)
            print(f"  {kernel} smp={smp}: bhive {c.bhive_median:.2f} s, qemu {c.qemu_median:.2f} s, "
                  f"qemu PVH {c.pvh_median:.2f} s", flush=True)
            rows.append(c)
    lines = [
        "### Linux boot: time to BOOT-OK",
        "",
        f"Command: `make bench` (or `python benchmarks/run.py linux_boot`, or "
        f"`python benchmarks/linux_boot.py --kernel K --smp N`); {machine()}.",
        "",
        "Host wall seconds from launch to the `BOOT-OK cpus=N` line on the serial console: a Debian "
        "kernel with the guest kit's busybox initramfs, 1024 MiB, command line "
        f"`{bootrun.TEST_APPEND}`. The peer is `qemu-system-x86_64 -accel tcg` with the same kernel, "
        f"initramfs, memory, `-smp` and command line, in two ways: booting the bzImage (QEMU's guest "
        "decompresses the kernel itself; the generic kernels are xz/zstd) and booting the uncompressed "
        "vmlinux through PVH (`-kernel vmlinux`, no decompression). bhive decompresses the kernel on the "
        "host once and caches it by content (`bhive/linux/cache.py`; QEMU's vmlinux is that file). Runs "
        f"take turns going first; median of {runs} each. Instructions: what bhive's vCPUs retired from launch to the "
        "VM's end, and that over the wall time of the run (all vCPUs together) and over the CPU time the vCPU "
        "processes used (the Linux boot mix: what softvmm sustains on kernel code, start-up included).",
        "",
        "| kernel | vCPUs | bhive | QEMU TCG (bzImage) | bhive / QEMU | QEMU TCG (PVH vmlinux) | bhive / QEMU-PVH "
        "| bhive instructions | bhive MIPS (wall) | MIPS per vCPU CPU second |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {c.kernel} | {c.smp} | {c.bhive_median:.2f} s | {c.qemu_median:.2f} s | {c.ratio:.2f} | "
              f"{c.pvh_median:.2f} s | {c.pvh_ratio:.2f} | "
              f"{c.bhive_instructions / 1e9:.2f} G | {c.bhive_mips:.0f} | {c.bhive_cpu_mips:.0f} |" for c in rows]
    failures = [f"{c.kernel} SMP{c.smp} ({c.qemu_failures})" for c in rows if c.qemu_failures]
    lines += ["", "QEMU TCG runs that hung or oopsed and were run again (QEMU's own SMP flakiness; "
              "`benchmarks/linux_boot.py` QEMU_RETRIES): " + (", ".join(failures) if failures else "none") + "."]
    return "\n".join(lines)


BENCHMARKS = {
    "linux_boot": linux_boot,
    "exit_roundtrip": exit_roundtrip,
    "mips": mips,
    "irq_latency": irq_latency,
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
