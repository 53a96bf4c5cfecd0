"""The kvm accelerator (Linux KVM via ctypes); see `accel` for the details.

A KVM VM is bound to its creating process, so under bhive's
process-per-vCPU model this accelerator supports one vCPU per VM process.
Its job is to be the differential tester's oracle for CPL3 semantics.
"""

from .accel import KvmAccelerator, KvmVcpu, KvmVm, KvmError

ACCELERATOR = KvmAccelerator

__all__ = ["ACCELERATOR", "KvmAccelerator", "KvmVm", "KvmVcpu", "KvmError"]
