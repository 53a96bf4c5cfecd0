"""The kvm accelerator (Linux KVM via ctypes); see `accel` for the details.

A KVM VM is bound to its creating process, so under bhive's
process-per-vCPU model every vCPU process has its own single-vCPU KVM VM:
whole bhive VMs (`wholevm`, bhive's local APIC in shared memory) and the
differential tester's oracle for CPL3 semantics.
"""

from .accel import KvmAccelerator, KvmVcpu, KvmVm, KvmError

ACCELERATOR = KvmAccelerator

__all__ = ["ACCELERATOR", "KvmAccelerator", "KvmVm", "KvmVcpu", "KvmError"]
