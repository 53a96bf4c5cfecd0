"""softvmm SMP: LOCKed atomics across vCPU threads, local APIC delivery
(MSI, IPIs, INIT/SIPI), halted vCPUs woken from other threads, and the
hello guest on 1 and 4 vCPUs."""

from __future__ import annotations

import struct
import threading
import time

import pytest

from bhive.accel import softvmm
from bhive.accel.base import ExitCode, SegDesc, VmReg
from bhive.accel.softvmm.harness import Machine
from bhive.guestbuild import assemble, build_nasm

CODE = 0x10000
IDT = 0x20000
COUNTER = 0x30000


def reg(m, r, cpu=0):
    return m.cpus[cpu].vm_get_register(r)


def setup_idt(m: Machine, cpu: int, vectors: dict[int, int]) -> None:
    for vec, addr in vectors.items():
        lo = (addr & 0xFFFF) | (0x08 << 16)
        hi = 0x8E00 | (addr & 0xFFFF0000)
        m.write(IDT + vec * 16, struct.pack("<IIII", lo, hi, addr >> 32, 0))
    m.write(0x40000, struct.pack("<QQQ", 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF))
    v = m.cpus[cpu]
    v.vm_set_desc(VmReg.IDTR, SegDesc(IDT, 256 * 16 - 1, 0))
    v.vm_set_desc(VmReg.GDTR, SegDesc(0x40000, 23, 0))


# ---------------------------------------------------------------- atomics

@pytest.mark.parametrize("op", ["lock xadd [rbx], eax", "lock inc dword [rbx]",
                                "lock add dword [rbx], eax"])
def test_locked_rmw_is_atomic_across_4_vcpus(op):
    K = 100000
    m = Machine(4)
    code = assemble(f"""
        mov rbx, {COUNTER}
        mov ecx, {K}
    l:  mov eax, 1
        {op}
        dec ecx
        jnz l
        mov dx, 0x80
        out dx, al
        cli
        hlt
    """, 64, CODE)
    m.write(CODE, code)
    for k in range(4):
        m.long_mode(k, rsp=0x80000 - k * 0x1000)
    done = []

    def body(k):
        e = m.run(k, stop_on=(ExitCode.HLT,))
        done.append((k, e.code))
    ts = [threading.Thread(target=body, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert sorted(done) == [(k, ExitCode.HLT) for k in range(4)]
    assert m.r32(COUNTER) == 4 * K


def test_cmpxchg_spinlock_counter_across_4_vcpus():
    K = 20000
    m = Machine(4)
    code = assemble(f"""
        mov rbx, {COUNTER}
        mov ecx, {K}
    l:  mov eax, [rbx]
    retry:
        lea edx, [rax + 1]
        lock cmpxchg [rbx], edx
        jnz retry
        dec ecx
        jnz l
        cli
        hlt
    """, 64, CODE)
    m.write(CODE, code)
    for k in range(4):
        m.long_mode(k)
    ts = [threading.Thread(target=m.run, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert m.r32(COUNTER) == 4 * K


# ---------------------------------------------------------------- interrupts

HALT_WAIT = """
        mov rsp, 0x80000
        mov rax, 0xfee000d0
        mov dword [rax], 0x02000000 ; LDR: logical APIC ID bit 1 (flat model)
        mov dword [rax + 0x20], 0x1ff ; SVR: APIC software-enabled (else fixed IRQs are dropped)
        out 0x81, al                ; ready
        sti
    idle:
        hlt
        cmp r15, 0
        je idle
        out 0x80, al
        cli
        hlt
    handler:
        mov r15, 0x40
        inc r14
        mov rax, 0xfee000b0
        mov dword [rax], 0          ; EOI
        iretq
"""


def _handler_addr(code_bytes):
    return CODE + code_bytes.index(bytes.fromhex("41bf40000000"))   # mov r15d, 0x40


def _halt_wait_machine(ncpus=1, cpu=0):
    m = Machine(ncpus)
    code = assemble(HALT_WAIT, 64, CODE)
    m.write(CODE, code)
    m.long_mode(cpu)
    setup_idt(m, cpu, {0x40: _handler_addr(code)})
    return m


def _run_until_port(m, cpu, port, on_ready=None):
    """Run `cpu` until it writes `port`; returns the exit codes seen."""
    v = m.cpus[cpu]
    codes = []
    while True:
        e = v.vm_run()
        codes.append(e.code)
        if e.code == ExitCode.INOUT:
            v.vm_complete_inout(e)
            if e.port == 0x81 and on_ready:
                on_ready()
            if e.port == port:
                return codes
        else:
            assert e.code == ExitCode.BOGUS, e


@pytest.mark.parametrize("addr", [0xFEE00000, 0xFEE0200C, 0xFEEFF000],   # logical needs RH+DM (bhyve)
                         ids=["physical", "logical-flat", "broadcast"])
def test_msi_wakes_halted_vcpu_from_another_thread(addr):
    m = _halt_wait_machine()
    t0 = time.time()
    _run_until_port(m, 0, 0x80, on_ready=lambda: threading.Timer(
        0.15, lambda: m.vm.vm_lapic_msi(addr, 0x40)).start())
    assert time.time() - t0 >= 0.14
    assert reg(m, VmReg.R14) == 1
    # the halted vCPU slept in the kernel instead of spinning
    assert m.cpus[0].stats()["instructions"] < 100


def test_level_triggered_eoi_exits_and_tpr_masks():
    m = Machine(1)
    code = assemble("""
        mov rsp, 0x80000
        mov rax, 0xfee00080
        mov dword [rax], 0x50       ; TPR 0x50 masks vector 0x41
        sti
        nop
        nop
        mov r13, r14                ; nothing delivered yet
        mov dword [rax], 0          ; TPR 0: 0x41 is deliverable now
        nop
        cli
        hlt
    handler:
        inc r14
        mov rbx, 0xfee000b0
        mov dword [rbx], 0          ; EOI of a level-triggered vector
        iretq
    """, 64, CODE)
    m.write(CODE, code)
    m.long_mode(0)
    setup_idt(m, 0, {0x41: CODE + code.index(bytes.fromhex("49ffc6"))})
    m.cpus[0].lapic_write(0xF0, 0x1FF)         # SVR: software-enable the APIC
    m.vm.vm_lapic_msi(0xFEE00000, 0xC041)     # level, assert, vector 0x41
    v = m.cpus[0]
    e = v.vm_run()
    assert e.code == ExitCode.IOAPIC_EOI and e.vector == 0x41
    assert v.vm_run().code == ExitCode.HLT
    assert reg(m, VmReg.R13) == 0 and reg(m, VmReg.R14) == 1


def test_fixed_ipi_through_icr_wakes_other_vcpu():
    m = _halt_wait_machine(ncpus=2, cpu=1)
    sender = assemble("""
        mov rax, 0xfee00000
        mov dword [rax + 0x310], 1 << 24     ; destination APIC ID 1
        mov dword [rax + 0x300], 0x40        ; fixed, physical, vector 0x40
        cli
        hlt
    """, 64, 0x18000)
    m.write(0x18000, sender)
    ready = threading.Event()
    t = threading.Thread(target=_run_until_port, args=(m, 1, 0x80, ready.set))
    t.start()
    assert ready.wait(10)
    m.long_mode(0, rip=0x18000, rsp=0x70000)
    assert m.run(0).code == ExitCode.HLT
    t.join(10)
    assert not t.is_alive()
    assert reg(m, VmReg.R14, 1) == 1


def test_init_sipi_via_msi_starts_ap_in_real_mode():
    m = Machine(2)
    ap_code = assemble("""
        bits 16
        mov ax, cs
        mov bx, 0x1234
        out 0x80, al
        cli
        hlt
    """, 16, 0)
    m.write(0x9000, ap_code)
    v = m.cpus[1]
    v.vm_activate_cpu()
    t0 = time.time()
    assert v.vm_run().code == ExitCode.BOGUS          # waits for SIPI, bounded
    assert 0.02 < time.time() - t0 < 1.0
    m.vm.vm_lapic_msi(0xFEE01000, 0x4500)             # INIT to APIC 1
    m.vm.vm_lapic_msi(0xFEE01000, 0x4609)             # SIPI vector 9
    e = v.vm_run()
    assert e.code == ExitCode.INOUT and e.port == 0x80
    assert reg(m, VmReg.RAX, 1) & 0xFFFF == 0x0900
    assert v.vm_get_desc(VmReg.CS).base == 0x9000


# ---------------------------------------------------------------- hello guest

@pytest.mark.parametrize("ncpus", [1, 4])
def test_hello_guest(ncpus):
    m = Machine(ncpus)
    m.write(0x8000, build_nasm("hello/hello.asm").read_bytes())
    m.real_mode(0, 0x8000)
    for k in range(1, ncpus):
        m.cpus[k].vm_activate_cpu()
    m.run_all(timeout=30)
    lines = m.serial().splitlines()
    assert sorted(lines[:-1]) == [f"Hello from bhive vCPU {k} of {ncpus}" for k in range(ncpus)]
    assert lines[-1] == f"hello: all {ncpus} vCPUs reported"
    assert m.out.get(0xF4) is None            # debug-exit write is what stopped it


def test_msi_from_another_process_wakes_vcpu():
    """The vCPU runs in a forked child that opens the VM on the same shared
    mappings; the parent (another process) delivers the MSI through the
    platform shm and the futex wakes the child."""
    import multiprocessing as mp
    import os

    from bhive.accel.base import GuestMemory
    from bhive.accel.softvmm.harness import _addr

    m = Machine(1)
    code = assemble(HALT_WAIT, 64, CODE)
    m.write(CODE, code)
    m.build_identity_map(0x1000)
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    result = ctx.Queue()

    def child():
        vm = softvmm.ACCELERATOR.vm_open(GuestMemory(_addr(m.ram), m.ram_size, [(0, m.ram_size, 0)]),
                                         1, _addr(m.shm))
        mm = Machine.__new__(Machine)
        mm.__dict__.update(m.__dict__)
        mm.vm, mm.cpus = vm, [vm.vcpu_open(0)]
        mm.long_mode(0, paging=False)
        setup_idt(mm, 0, {0x40: _handler_addr(code)})
        t0 = time.time()
        _run_until_port(mm, 0, 0x80, on_ready=ready.set)
        result.put((os.getpid(), time.time() - t0, mm.cpus[0].vm_get_register(VmReg.R14),
                    mm.cpus[0].stats()["instructions"]))

    p = ctx.Process(target=child)
    p.start()
    assert ready.wait(10)
    time.sleep(0.1)
    m.vm.vm_lapic_msi(0xFEE00000, 0x40)
    pid, dt, r14, insns = result.get(timeout=10)
    p.join(10)
    assert pid != os.getpid() and p.exitcode == 0
    assert r14 == 1 and dt >= 0.09 and insns < 100
