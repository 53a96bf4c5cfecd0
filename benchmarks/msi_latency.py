"""MSI delivery latency: from a `vm_lapic_msi` call in one process until the
first instruction of the guest's handler on a softvmm vCPU running in
another process.

The sender stamps the host TSC (`softvmm.host_tsc()`, RDTSC) right before
the call; the handler's first instruction is RDTSC, stored in guest RAM.
Guest RDTSC is the host TSC (the vCPU's TSC offset is 0), so both stamps
come from one clock.  Measured for a vCPU that is running (a busy loop)
and for one that is halted (HLT, asleep in the kernel on its futex).

    python benchmarks/msi_latency.py            # prints a JSON summary
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bhive.accel.base import ExitCode, GuestMemory, SegDesc, VmReg  # noqa: E402
from bhive.guestbuild import assemble  # noqa: E402

CODE, IDT, STAMPS, SEQ = 0x10000, 0x20000, 0x100000, 0x30000
VEC = 0x40

GUEST = """
        mov rsp, 0x80000
        mov rbx, 0xfee00000
        mov dword [rbx + 0xf0], 0x1ff       ; SVR: enable the APIC
        out 0x81, al                        ; ready
        sti
    loop:
        {idle}
        jmp loop
    handler:
        rdtsc                               ; first instruction of the handler
        mov rcx, [{seq}]
        mov [{stamps} + rcx * 8], eax
        mov [{stamps} + rcx * 8 + 4], edx
        inc rcx
        mov [{seq}], rcx
        mov dword [rbx + 0xb0], 0           ; EOI
        iretq
"""


def _child(ram_addr, ram_size, shm_addr, code, ready, stop):
    from bhive.accel import softvmm
    from bhive.accel.softvmm.harness import CODE64, DATA64
    vm = softvmm.ACCELERATOR.vm_open(GuestMemory(ram_addr, ram_size, [(0, ram_size, 0)]), 1, shm_addr)
    v = vm.vcpu_open(0)
    v.vm_activate_cpu()
    v.set_mp_state(True)
    v.vm_set_register(VmReg.CR4, 0x20)
    v.vm_set_register(VmReg.EFER, 0x500)
    v.vm_set_register(VmReg.CR3, 0x1000)
    v.vm_set_register(VmReg.CR0, 0x80010011)
    v.vm_set_desc(VmReg.CS, SegDesc(0, 0xFFFFFFFF, CODE64, 0x08))
    for s in (VmReg.DS, VmReg.ES, VmReg.SS, VmReg.FS, VmReg.GS):
        v.vm_set_desc(s, SegDesc(0, 0xFFFFFFFF, DATA64, 0x10))
    v.vm_set_desc(VmReg.TR, SegDesc(0, 0x67, 0x8B, 0))
    v.vm_set_desc(VmReg.IDTR, SegDesc(IDT, 256 * 16 - 1, 0))
    v.vm_set_desc(VmReg.GDTR, SegDesc(0x40000, 23, 0))
    v.vm_set_register(VmReg.RIP, CODE)
    while not stop.is_set():
        e = v.vm_run()
        if e.code == ExitCode.INOUT:
            v.vm_complete_inout(e)
            if e.port == 0x81:
                ready.set()
        elif e.code not in (ExitCode.BOGUS,):
            raise SystemExit(f"unexpected exit {e}")


def _measure_one(halted: bool, samples: int) -> list[float]:
    from bhive.accel import softvmm
    from bhive.accel.softvmm.harness import Machine

    m = Machine(1)
    code = assemble(GUEST.format(idle="hlt" if halted else "inc r15", seq=SEQ, stamps=STAMPS), 64, CODE)
    m.write(CODE, code)
    m.build_identity_map(0x1000)
    handler = CODE + code.index(bytes.fromhex("0f31488b0c25"))   # rdtsc; mov rcx, [abs]
    m.write(IDT + VEC * 16, struct.pack("<IIII", (handler & 0xFFFF) | (0x08 << 16),
                                        0x8E00 | (handler & 0xFFFF0000), 0, 0))
    m.write(0x40000, struct.pack("<QQQ", 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF))
    from bhive.accel.softvmm.harness import _addr
    ctx = mp.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_child, args=(_addr(m.ram), m.ram_size, _addr(m.shm), code, ready, stop))
    p.start()
    try:
        if not ready.wait(20):
            raise RuntimeError("guest did not start")
        hz = m.vm.tsc_hz()
        out = []
        for i in range(samples + 5):
            time.sleep(0.002 if halted else 0.0002)        # halted: let it fall asleep
            t0 = softvmm.host_tsc()
            m.vm.vm_lapic_msi(0xFEE00000, VEC)
            deadline = time.monotonic() + 5
            while m.r64(SEQ) <= i:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"MSI {i} never reached the handler")
                time.sleep(0.00005)    # do not compete with the vCPU for a host CPU
            if i >= 5:                                       # warm-up
                out.append((m.r64(STAMPS + 8 * i) - t0) * 1e6 / hz)
        return out
    finally:
        stop.set()
        m.vm.kick(0)
        p.join(5)
        if p.is_alive():
            p.kill()


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure(samples: int = 200) -> dict:
    """p50/p99 MSI latency in microseconds for a running and a halted vCPU."""
    res = {}
    for label, halted in (("running", False), ("halted", True)):
        xs = _measure_one(halted, samples)
        res[label] = {"p50_us": round(statistics.median(xs), 2), "p99_us": round(_pct(xs, 0.99), 2),
                      "samples": len(xs)}
    return res


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
