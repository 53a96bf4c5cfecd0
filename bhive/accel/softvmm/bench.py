"""Micro-benchmark of the softvmm CPU core: MIPS on simple integer loops.

    python -m bhive.accel.softvmm.bench [iterations]

Each loop runs in 64-bit mode in one vCPU of an in-process Machine; MIPS
is guest instructions retired (stats()["instructions"]) per wall-clock
second of vm_run, best of 3 runs.
"""

from __future__ import annotations

import sys
import time

from bhive.guestbuild import assemble

from .harness import Machine

LOOPS = {
    "dec/jnz": "l: dec rcx\njnz l",
    "alu (add/xor/inc/cmp/jb)": "l: add rax, rcx\nxor rdx, rax\ninc rbx\ncmp rbx, rcx\njb l",
    "alu+memory (add [m]/mov r,[m])": "l: add [rsp-8], rax\nmov rdx, [rsp-8]\ninc rbx\ncmp rbx, rcx\njb l",
    "call/ret": "l: call f\ninc rbx\ncmp rbx, rcx\njb l\njmp done\nf: add rax, rbx\nret\ndone:",
}


def measure(body: str, n: int) -> tuple[float, int]:
    best = 0.0
    insns = 0
    for _ in range(3):
        m = Machine(1)
        m.write(0x10000, assemble(f"mov rcx, {n}\nxor ebx, ebx\n{body}\ncli\nhlt", 64, 0x10000))
        m.long_mode()
        t = time.perf_counter()
        m.run()
        dt = time.perf_counter() - t
        insns = m.cpus[0].stats()["instructions"]
        best = max(best, insns / dt / 1e6)
    return best, insns


def main(argv: list[str]) -> None:
    n = int(argv[1]) if len(argv) > 1 else 20_000_000
    for name, body in LOOPS.items():
        mips, insns = measure(body, n)
        print(f"{name:34s} {mips:8.1f} MIPS  ({insns} instructions)")


if __name__ == "__main__":
    main(sys.argv)
