"""softvmm's local APIC as another accelerator uses it (kvm whole VMs):
svm_lapic_next_event / svm_lapic_wait / svm_lapic_nudge (csrc/lapic.c),
driven directly, no /dev/kvm needed."""

from __future__ import annotations

import threading
import time

from bhive.accel.softvmm import ffi, lib
from bhive.accel.softvmm.harness import Machine

SVR, ICR_LO, ICR_HI, EOI, TIMER_LVT, TIMER_ICR, TIMER_DCR = 0xF0, 0x300, 0x310, 0xB0, 0x320, 0x380, 0x3E0


def next_event(cpu, can_intr):
    vec = ffi.new("uint32_t[2]")
    ev = lib.svm_lapic_next_event(cpu._c, 1 if can_intr else 0, vec)
    return ev, vec[0], vec[1]


def isr_has(cpu, vec):
    return bool(cpu.lapic_read(0x100 + (vec >> 5) * 0x10) & (1 << (vec & 31)))


def test_an_interrupt_is_accepted_only_when_it_can_go_in():
    m = Machine(ncpus=2)
    v0 = m.cpus[0]
    v0.vm_activate_cpu()
    v0.lapic_write(SVR, 0x1FF)
    m.vm.vm_lapic_msi(0xFEE00000, 0x41)            # fixed, vector 0x41, to APIC 0
    ev, _, _ = next_event(v0, can_intr=False)
    assert ev & lib.SVM_EV_PENDING and not ev & lib.SVM_EV_INTR
    assert not isr_has(v0, 0x41)                   # still in the IRR: nothing was lost
    ev, _, vec = next_event(v0, can_intr=True)
    assert ev & lib.SVM_EV_INTR and vec == 0x41 and isr_has(v0, 0x41)
    ev, _, _ = next_event(v0, can_intr=True)
    assert ev == 0                                 # taken exactly once
    assert v0.lapic_write(EOI, 0) is None and not isr_has(v0, 0x41)


def test_init_then_sipi_starts_an_ap_and_a_kick_is_reported():
    m = Machine(ncpus=2)
    v0, v1 = m.cpus
    v0.vm_activate_cpu()
    v1.vm_activate_cpu()                           # the AP waits for SIPI
    v0.lapic_write(SVR, 0x1FF)
    ev, _, _ = next_event(v1, can_intr=True)
    assert ev & lib.SVM_EV_WAIT_SIPI
    v0.lapic_write(ICR_HI, 1 << 24)
    v0.lapic_write(ICR_LO, 0x4500)                 # INIT, assert
    v0.lapic_write(ICR_LO, 0x4608)                 # SIPI, vector 8
    ev, sipi, _ = next_event(v1, can_intr=True)
    assert ev & lib.SVM_EV_INIT and ev & lib.SVM_EV_SIPI and sipi == 8
    assert not ev & lib.SVM_EV_WAIT_SIPI
    m.vm.kick(1)
    ev, _, _ = next_event(v1, can_intr=True)
    assert ev & lib.SVM_EV_KICK


def test_wait_returns_on_an_msi_from_another_thread_and_on_the_timer():
    m = Machine(ncpus=1)
    v0 = m.cpus[0]
    v0.vm_activate_cpu()
    v0.lapic_write(SVR, 0x1FF)
    assert lib.svm_lapic_wait(v0._c, 20_000_000) == 0          # nothing: times out
    threading.Timer(0.05, m.vm.vm_lapic_msi, (0xFEE00000, 0x42)).start()
    t0 = time.monotonic()
    assert lib.svm_lapic_wait(v0._c, 5_000_000_000) == 1
    assert time.monotonic() - t0 < 2.0
    next_event(v0, can_intr=True)
    # the LAPIC timer: one-shot, divide by 1, a short count; the waiter wakes for it
    v0.lapic_write(TIMER_DCR, 0xB)
    v0.lapic_write(TIMER_LVT, 0x50)
    v0.lapic_write(TIMER_ICR, 100_000)
    lib.svm_lapic_nudge(v0._c)
    assert lib.svm_lapic_wait(v0._c, 5_000_000_000) == 1
    ev, _, vec = next_event(v0, can_intr=True)
    assert ev & lib.SVM_EV_INTR and vec == 0x50
