"""The bhyve accelerator (FreeBSD vmm.ko via libvmmapi); see `accel`.

Importing this package loads nothing: libvmmapi is opened (cffi, ABI
mode) only when a VM is opened on FreeBSD, so `accel = "bhyve"` elsewhere
is one line saying why and exit status 2.
"""

from .accel import BhyveAccelerator, BhyveVcpu, BhyveVm, check_vm_name, decode_exit

ACCELERATOR = BhyveAccelerator

__all__ = ["ACCELERATOR", "BhyveAccelerator", "BhyveVm", "BhyveVcpu", "check_vm_name", "decode_exit"]
