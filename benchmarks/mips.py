"""MIPS of softvmm under a whole bhive VM, against QEMU TCG on the same image.

The guest (`guests/bench/loops.asm`) is a 64 KiB ROM: QEMU boots it with
`-bios`, bhive loads it flat at 0xF0000 and starts at F000:FFF0.  It runs
its loop in one CPU mode (MODES: 16-bit real, 32-bit flat, 32-bit paged,
compatibility, 64-bit).  Each loop iteration is a fixed number of
instructions, so the instruction count of a run is known exactly; start-up
cost cancels out by timing a long and a short run and dividing the
difference in instructions by the difference in time.

    python benchmarks/mips.py [RUNS] [MODE...]   # e.g. mips.py 3 32-bit-flat
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bhive.guestbuild import build_nasm  # noqa: E402

LOOPS = {  # name: (LOOP define, instructions per iteration)
    "integer (add/xor/inc/dec/jnz)": (1, 5),
    "memory (load, add to memory, 256 KiB set)": (2, 6),
    "branchy (LCG, data-dependent jz)": (3, 8),
}
MODES = {  # name: rom.inc defines
    "16-bit real": {"MODE": 16},
    "32-bit flat": {"MODE": 32},
    "32-bit paged": {"MODE": 32, "PAGED": 1},
    "compatibility": {"MODE": 33},
    "64-bit": {"MODE": 64},
}
SHORT = 1000


def image(loop: int, iterations: int, mode: str = "64-bit") -> Path:
    return build_nasm(REPO / "guests/bench/loops.asm",
                      defines={"LOOP": loop, "ITERATIONS": iterations, **MODES[mode]})


def wall_bhive(rom: Path, tmp: Path, jit: bool = True) -> float:
    cfg = tmp / "rom.toml"
    cfg.write_text(f'[vm]\nmemory = "64M"\n[boot]\nimage = "{rom}"\nload_address = 0xF0000\n'
                   f'entry = 0xFFFF0\n[devices.debug_exit]\nport = 0xf4\n')
    t = time.perf_counter()
    env = dict(os.environ, BHIVE_JIT="1" if jit else "0")
    p = subprocess.run([sys.executable, "-m", "bhive", "run", str(cfg), "--name", f"mips-{os.getpid()}"],
                       cwd=REPO, capture_output=True, timeout=900, env=env)
    dt = time.perf_counter() - t
    if p.returncode != 1:
        raise RuntimeError(f"bhive run of {rom.name} ended with {p.returncode}: {p.stderr.decode()[-300:]}")
    return dt


def wall_qemu(rom: Path, tmp: Path) -> float:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise RuntimeError("qemu-system-x86_64 is not installed (make deps installs it)")
    t = time.perf_counter()
    p = subprocess.run([qemu, "-accel", "tcg", "-bios", str(rom), "-m", "64", "-display", "none",
                        "-serial", "none", "-monitor", "none", "-no-reboot",
                        "-device", "isa-debug-exit,iobase=0xf4,iosize=4"],
                       capture_output=True, timeout=900)
    dt = time.perf_counter() - t
    if p.returncode != 1:
        raise RuntimeError(f"QEMU run of {rom.name} ended with {p.returncode}: {p.stderr.decode()[-300:]}")
    return dt


def mips(wall, loop: int, per_iter: int, long_iters: int, tmp: Path, mode: str = "64-bit") -> float:
    short_rom, long_rom = image(loop, SHORT, mode), image(loop, long_iters, mode)
    t_short, t_long = wall(short_rom, tmp), wall(long_rom, tmp)
    return per_iter * (long_iters - SHORT) / max(t_long - t_short, 1e-6) / 1e6


def wall_interpreter(rom: Path, tmp: Path) -> float:
    return wall_bhive(rom, tmp, jit=False)


def run(runs: int = 5, bhive_insns: float = 3e9, interp_insns: float = 6e8,
        qemu_insns: float = 6e9, modes=None) -> list[dict]:
    """Per CPU mode and loop: softvmm with its JIT (the default), softvmm
    interpreting only (BHIVE_JIT=0), and QEMU TCG; median MIPS of `runs`
    each."""
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for mode in modes or MODES:
            for name, (loop, per_iter) in LOOPS.items():
                b = [mips(wall_bhive, loop, per_iter, int(bhive_insns / per_iter), tmp, mode) for _ in range(runs)]
                i = [mips(wall_interpreter, loop, per_iter, int(interp_insns / per_iter), tmp, mode)
                     for _ in range(runs)]
                q = [mips(wall_qemu, loop, per_iter, int(qemu_insns / per_iter), tmp, mode) for _ in range(runs)]
                rows.append({"mode": mode, "loop": name, "bhive": statistics.median(b),
                             "interpreter": statistics.median(i), "qemu": statistics.median(q),
                             "bhive_runs": b, "interpreter_runs": i, "qemu_runs": q})
    return rows


if __name__ == "__main__":
    unknown = [m for m in sys.argv[2:] if m not in MODES]
    if unknown:
        print(f"mips.py: unknown mode {unknown[0]!r} (modes: {', '.join(MODES)})", file=sys.stderr)
        sys.exit(2)
    for row in run(int(sys.argv[1]) if len(sys.argv) > 1 else 3, modes=sys.argv[2:] or None):
        print(f"{row['mode']:14s} {row['loop']:45s} bhive {row['bhive']:8.1f} MIPS "
              f"(interpreter {row['interpreter']:.1f})   QEMU TCG {row['qemu']:8.1f} MIPS   "
              f"ratio {row['bhive'] / row['qemu']:.2f}")
