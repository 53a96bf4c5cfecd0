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
    # the hottest loop of a Debian kernel boot (X.509 signature checks):
    # Linux 6.1 mpihelp_submul_1 as gcc 12 compiles it, over a 64-limb
    # vector at 0x40000, repeated rcx/64 times
    "kernel mpihelp_submul_1": """
        mov r15, rcx
        shr r15, 6
        mov r9, 0x89abcdef
        mov r10, 0x1234567
        mov rbp, 0x100000000
        mov rbx, 0x40200
        mov r11, 0x40200
        mov r12, -64
    outer:
        mov r8, -64
        xor esi, esi
    l:  movsxd rax, r8d
        sub rax, r12
        mov rcx, [rbx+rax*8]
        lea rdi, [rax*8]
        mov rdx, rcx
        mov ecx, ecx
        shr rdx, 0x20
        mov rax, rcx
        imul rax, r9
        mov r13, rdx
        imul r13, r9
        imul rcx, r10
        imul rdx, r10
        mov r14, rax
        mov eax, eax
        shr r14, 0x20
        add rcx, r13
        add rcx, r14
        mov r14, rdx
        add rdx, rbp
        cmp rcx, r13
        mov r13, rcx
        cmovae rdx, r14
        add rax, rsi
        shl r13, 0x20
        add rax, r13
        cmp rax, rsi
        setb sil
        add rdi, r11
        shr rcx, 0x20
        mov r13, [rdi]
        movzx esi, sil
        sub r13, rax
        adc rsi, rcx
        mov [rdi], r13
        add rsi, rdx
        add r8d, 1
        jne l
        dec r15
        jnz outer""",
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
