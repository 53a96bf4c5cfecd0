"""The CPUID a whole-VM kvm vCPU gets (bhive.accel.kvm.wholevm.build_cpuid):
softvmm's model, feature bits ANDed with what KVM supports.  No /dev/kvm
needed: KVM's supported list is given."""

from __future__ import annotations

from types import SimpleNamespace

from bhive.accel.kvm.wholevm import CPUID1_ECX_TSC_DEADLINE, CPUID1_ECX_X2APIC, build_cpuid
from bhive.accel.softvmm.harness import Machine


def kvm_entry(function, index=0, eax=0, ebx=0, ecx=0, edx=0):
    return SimpleNamespace(function=function, index=index, eax=eax, ebx=ebx, ecx=ecx, edx=edx)


def test_topology_is_softvmms_and_features_are_what_both_support():
    m = Machine(ncpus=4)
    vendor = (0x756E6547, 0x6C65746E, 0x49656E69)          # "GenuineIntel" as EBX, ECX, EDX
    kvm = [kvm_entry(0, 0, 0x1F, *vendor),
           kvm_entry(1, 0, 0x000906EA, 0, 0xFFFFFFFF & ~(1 << 13), 0xFFFFFFFF),   # no CMPXCHG16B
           kvm_entry(7, 0, 0, 0xFFFFFFFF, 0, 0),
           kvm_entry(0x80000001, 0, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF & ~(1 << 27)),   # no RDTSCP
           kvm_entry(0x40000001, 0, 0xFFFFFFFF, 0, 0, 0)]                        # KVM's PV features
    entries = {(f, i): regs for f, i, _, regs in build_cpuid(m.cpus[2].cpuid, kvm)}
    soft = lambda leaf, sub=0: m.cpus[2].cpuid(leaf, sub)
    # topology: APIC ID 2 of 4, from softvmm (KVM's list has no leaf 0xB at all)
    assert entries[(1, 0)][1] >> 24 == 2
    assert entries[(0xB, 1)][1] == 4 and entries[(0xB, 0)][3] == 2
    # features: softvmm's AND KVM's; no x2APIC, no TSC deadline; hypervisor bit kept
    ecx = entries[(1, 0)][2]
    assert ecx & (1 << 13) == 0 and soft(1)[2] & (1 << 13)
    assert ecx & (CPUID1_ECX_X2APIC | CPUID1_ECX_TSC_DEADLINE) == 0 and ecx >> 31
    assert entries[(1, 0)][3] == soft(1)[3]
    assert entries[(0x80000001, 0)][3] == soft(0x80000001)[3] & ~(1 << 27)
    assert entries[(7, 0)][1] == soft(7)[1]
    # the host's vendor and family/model; no KVM paravirtual leaves
    assert entries[(0, 0)][1:] == vendor and entries[(1, 0)][0] == 0x000906EA
    assert (0x40000001, 0) not in entries and entries[(0x40000000, 0)] == soft(0x40000000)
