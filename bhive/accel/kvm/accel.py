"""The kvm accelerator: Linux KVM behind bhive's libvmmapi-shaped interface.

Pure ctypes over the KVM ioctls (no compile step).

Process model
-------------
A KVM VM (and its vCPU file descriptors) is bound to the process that
created it: the kernel ties the VM to the creating `mm`, so a vCPU of that
VM cannot be run from another process.  bhive runs every vCPU in its own OS
process, so under bhive the kvm accelerator has exactly **one vCPU per
KVM VM**, in two uses:

* whole bhive VMs (`options["whole_vm"]`, what `bhive run --accel kvm`
  does): every vCPU process creates its own single-vCPU KVM VM over the
  shared guest RAM, with bhive's local APIC instead of KVM's
  (`wholevm.py`, class KvmWholeVcpu);
* the oracle of the differential CPU tester (`bhive.difftest`):
  `vm_open(..., ncpus=1)`, `vcpu_open(0)`, CPL3 instruction sequences run
  natively and compared with softvmm.

Register ownership ("the accelerator owns RIP")
-----------------------------------------------
On a KVM_EXIT_IO the kernel has *not* yet moved RIP past the IN/OUT: the
instruction is completed (RAX loaded for IN, RIP advanced) by the kernel at
the start of the next KVM_RUN.  `vm_complete_inout` therefore only stores
the IN data in the kvm_run I/O area; the RIP advance happens inside the next
`vm_run`.  This is exactly the interface's rule that the worker never
touches RIP to finish an exit; the accelerator (here: the kernel) moves it.
If the VMM sets RIP itself before the next `vm_run`, KVM notices that RIP
changed and does not skip an instruction (the difftest relies on that to
start the next case).  MMIO reads are completed the same way.

Register accesses are cached: `vm_get_register` fetches KVM_GET_REGS /
KVM_GET_SREGS once per exit, `vm_set_register` edits the cached copy and
`vm_run` writes back only what changed, so setting all GPRs costs one ioctl.
"""

from __future__ import annotations

import ctypes as C
import errno
import mmap
import os

from ..base import (Accelerator, ExitCode, GuestMemory, SegDesc, SuspendHow, Vcpu,
                    VmExit, VmReg, Vm)
from ..segdesc import ar_to_fields, fields_to_ar
from . import _abi as K
from .wholevm import WholeVmVcpu

KVM_DEV = "/dev/kvm"

_libc = C.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [C.c_int, C.c_ulong, C.c_void_p]
_libc.ioctl.restype = C.c_int


class KvmError(OSError):
    pass


def _ioctl(fd: int, req: int, arg=None) -> int:
    """ioctl with a pointer (ctypes object) or integer argument."""
    if arg is None:
        p = None
    elif isinstance(arg, int):
        p = arg
    else:
        p = C.addressof(arg)
    while True:
        r = _libc.ioctl(fd, req, p)
        if r >= 0:
            return r
        e = C.get_errno()
        if e == errno.EINTR and req != K.KVM_RUN:
            continue
        raise KvmError(e, f"ioctl {req:#x}: {os.strerror(e)}")


_GPR = {
    VmReg.RAX: "rax", VmReg.RBX: "rbx", VmReg.RCX: "rcx", VmReg.RDX: "rdx",
    VmReg.RSI: "rsi", VmReg.RDI: "rdi", VmReg.RBP: "rbp", VmReg.RSP: "rsp",
    VmReg.R8: "r8", VmReg.R9: "r9", VmReg.R10: "r10", VmReg.R11: "r11",
    VmReg.R12: "r12", VmReg.R13: "r13", VmReg.R14: "r14", VmReg.R15: "r15",
    VmReg.RIP: "rip", VmReg.RFLAGS: "rflags",
}
_CTRL = {VmReg.CR0: "cr0", VmReg.CR2: "cr2", VmReg.CR3: "cr3", VmReg.CR4: "cr4",
         VmReg.EFER: "efer"}
_SEG = {VmReg.ES: "es", VmReg.CS: "cs", VmReg.SS: "ss", VmReg.DS: "ds", VmReg.FS: "fs",
        VmReg.GS: "gs", VmReg.LDTR: "ldt", VmReg.TR: "tr"}
_DT = {VmReg.IDTR: "idt", VmReg.GDTR: "gdt"}
_DR = {VmReg.DR0: 0, VmReg.DR1: 1, VmReg.DR2: 2, VmReg.DR3: 3}


def _seg_to_desc(s: K.kvm_segment) -> SegDesc:
    access = fields_to_ar(type=s.type, s=s.s, dpl=s.dpl, present=s.present, avl=s.avl, l=s.l,
                          db=s.db, g=s.g, unusable=s.unusable)
    return SegDesc(base=s.base, limit=s.limit, access=access, selector=s.selector)


def _desc_to_seg(d: SegDesc, s: K.kvm_segment) -> None:
    s.base = d.base & 0xFFFFFFFFFFFFFFFF
    s.limit = d.limit & 0xFFFFFFFF
    s.selector = d.selector & 0xFFFF
    for name, value in ar_to_fields(d.access).items():
        setattr(s, name, value)


class KvmVcpu(Vcpu):
    _ioctl = staticmethod(_ioctl)

    def __init__(self, vm: "KvmVm", vcpuid: int):
        self.vm = vm
        self.vcpuid = vcpuid
        self.fd = _ioctl(vm.fd, K.KVM_CREATE_VCPU, vcpuid)
        size = _ioctl(vm.sys_fd, K.KVM_GET_VCPU_MMAP_SIZE)
        self._run_map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._run_addr = C.addressof(C.c_char.from_buffer(self._run_map))
        self.run = K.kvm_run.from_address(self._run_addr)
        self._regs = K.kvm_regs()
        self._sregs = K.kvm_sregs()
        self._regs_valid = self._regs_dirty = False
        self._sregs_valid = self._sregs_dirty = False
        self._exit: VmExit | None = None
        self._nexits = 0
        self._set_cpuid()

    # -- setup ---------------------------------------------------------
    def _set_cpuid(self) -> None:
        cpuid = self.vm.acc_supported_cpuid()
        _ioctl(self.fd, K.KVM_SET_CPUID2, cpuid)

    def close(self) -> None:
        if self.fd >= 0:
            self.run = None
            try:
                self._run_map.close()
            except BufferError:
                pass
            os.close(self.fd)
            self.fd = -1

    # -- register cache ------------------------------------------------
    def _get_regs(self) -> K.kvm_regs:
        if not self._regs_valid:
            _ioctl(self.fd, K.KVM_GET_REGS, self._regs)
            self._regs_valid = True
        return self._regs

    def _get_sregs(self) -> K.kvm_sregs:
        if not self._sregs_valid:
            _ioctl(self.fd, K.KVM_GET_SREGS, self._sregs)
            self._sregs_valid = True
        return self._sregs

    def _flush(self) -> None:
        if self._regs_dirty:
            _ioctl(self.fd, K.KVM_SET_REGS, self._regs)
            self._regs_dirty = False
        if self._sregs_dirty:
            _ioctl(self.fd, K.KVM_SET_SREGS, self._sregs)
            self._sregs_dirty = False

    def vm_get_register(self, reg: VmReg) -> int:
        name = _GPR.get(reg)            # the hot path: no enum conversion
        if name is not None:
            return getattr(self._regs if self._regs_valid else self._get_regs(), name)
        reg = VmReg(reg)
        if reg in _CTRL:
            return getattr(self._get_sregs(), _CTRL[reg])
        if reg in _SEG:
            return getattr(self._get_sregs(), _SEG[reg]).selector
        if reg == VmReg.FS_BASE:
            return self._get_sregs().fs.base
        if reg in _DT:
            return getattr(self._get_sregs(), _DT[reg]).base
        if reg in _DR or reg in (VmReg.DR6, VmReg.DR7):
            d = K.kvm_debugregs()
            _ioctl(self.fd, K.KVM_GET_DEBUGREGS, d)
            return d.dr6 if reg == VmReg.DR6 else d.dr7 if reg == VmReg.DR7 else d.db[_DR[reg]]
        if reg == VmReg.INTR_SHADOW:
            ev = K.kvm_vcpu_events()
            _ioctl(self.fd, K.KVM_GET_VCPU_EVENTS, ev)
            return ev.interrupt.shadow & 1
        if reg == VmReg.ENTRY_INST_LENGTH:
            return 0
        raise KeyError(f"kvm: register {reg.name} is not supported")

    def get_gprs(self) -> dict[str, int]:
        """All GPRs, RIP and RFLAGS by name (one ioctl) - a fast path."""
        r = self._get_regs()
        return {name: getattr(r, name) for name, _ in K.kvm_regs._fields_}

    def vm_set_register(self, reg: VmReg, value: int) -> None:
        value &= 0xFFFFFFFFFFFFFFFF
        name = _GPR.get(reg)
        if name is not None:
            setattr(self._regs if self._regs_valid else self._get_regs(), name, value)
            self._regs_dirty = True
            return
        reg = VmReg(reg)
        if reg in _CTRL:
            setattr(self._get_sregs(), _CTRL[reg], value)
            self._sregs_dirty = True
        elif reg in _SEG:
            getattr(self._get_sregs(), _SEG[reg]).selector = value
            self._sregs_dirty = True
        elif reg == VmReg.FS_BASE:
            self._get_sregs().fs.base = value
            self._sregs_dirty = True
        elif reg in _DT:
            getattr(self._get_sregs(), _DT[reg]).base = value
            self._sregs_dirty = True
        elif reg in _DR or reg in (VmReg.DR6, VmReg.DR7):
            d = K.kvm_debugregs()
            _ioctl(self.fd, K.KVM_GET_DEBUGREGS, d)
            if reg == VmReg.DR6:
                d.dr6 = value
            elif reg == VmReg.DR7:
                d.dr7 = value
            else:
                d.db[_DR[reg]] = value
            _ioctl(self.fd, K.KVM_SET_DEBUGREGS, d)
        elif reg == VmReg.INTR_SHADOW:
            ev = K.kvm_vcpu_events()
            _ioctl(self.fd, K.KVM_GET_VCPU_EVENTS, ev)
            ev.interrupt.shadow = value & 3
            ev.flags = 0
            _ioctl(self.fd, K.KVM_SET_VCPU_EVENTS, ev)
        else:
            raise KeyError(f"kvm: register {reg.name} is not supported")

    def vm_get_desc(self, reg: VmReg) -> SegDesc:
        reg = VmReg(reg)
        s = self._get_sregs()
        if reg in _SEG:
            return _seg_to_desc(getattr(s, _SEG[reg]))
        if reg in _DT:
            dt = getattr(s, _DT[reg])
            return SegDesc(base=dt.base, limit=dt.limit, access=0)
        raise KeyError(f"kvm: {reg.name} has no descriptor")

    def vm_set_desc(self, reg: VmReg, desc: SegDesc) -> None:
        reg = VmReg(reg)
        s = self._get_sregs()
        if reg in _SEG:
            _desc_to_seg(desc, getattr(s, _SEG[reg]))
        elif reg in _DT:
            dt = getattr(s, _DT[reg])
            dt.base = desc.base
            dt.limit = desc.limit & 0xFFFF
        else:
            raise KeyError(f"kvm: {reg.name} has no descriptor")
        self._sregs_dirty = True

    # -- FPU / XSAVE (not part of the common interface) ----------------
    def kvm_get_fpu(self) -> K.kvm_fpu:
        f = K.kvm_fpu()
        _ioctl(self.fd, K.KVM_GET_FPU, f)
        return f

    def kvm_set_fpu(self, f: K.kvm_fpu) -> None:
        _ioctl(self.fd, K.KVM_SET_FPU, f)

    def kvm_get_xsave(self) -> bytes | None:
        """The 4 KiB XSAVE area, or None if KVM has no KVM_CAP_XSAVE."""
        if not self.vm.has_xsave:
            return None
        x = K.kvm_xsave()
        _ioctl(self.fd, K.KVM_GET_XSAVE, x)
        return bytes(x)

    def kvm_set_xsave(self, data: bytes) -> None:
        x = K.kvm_xsave.from_buffer_copy(data.ljust(C.sizeof(K.kvm_xsave), b"\0"))
        _ioctl(self.fd, K.KVM_SET_XSAVE, x)

    # -- running -------------------------------------------------------
    def vm_activate_cpu(self) -> None:
        pass

    def vm_run(self) -> VmExit:
        self._flush()
        self._regs_valid = self._sregs_valid = False
        self._exit = None
        try:
            _ioctl(self.fd, K.KVM_RUN)
        except KvmError as e:
            if e.errno in (errno.EINTR, errno.EAGAIN):
                return VmExit(ExitCode.BOGUS)
            raise
        self._nexits += 1
        ex = self._decode_exit(self.run.exit_reason)
        self._exit = ex
        return ex

    def _decode_exit(self, reason: int) -> VmExit:
        """The VmExit of the KVM_RUN that just returned with `reason`."""
        run = self.run
        rip = self._get_regs().rip
        if reason == K.KVM_EXIT_IO:
            io = run.u.io
            is_in = io.direction == K.KVM_EXIT_IO_IN
            data = 0
            if not is_in:
                data = int.from_bytes(C.string_at(self._run_addr + io.data_offset, io.size), "little")
            code = ExitCode.INOUT if io.count == 1 else ExitCode.INOUT_STR
            ex = VmExit(code, rip=rip, port=io.port, size=io.size, is_in=is_in, data=data)
        elif reason == K.KVM_EXIT_MMIO:
            m = run.u.mmio
            data = int.from_bytes(bytes(m.data)[:m.len], "little") if m.is_write else 0
            ex = VmExit(ExitCode.INST_EMUL, rip=rip, gpa=m.phys_addr, size=m.len,
                        is_write=bool(m.is_write), data=data)
        elif reason == K.KVM_EXIT_HLT:
            ex = VmExit(ExitCode.HLT, rip=rip)
        elif reason == K.KVM_EXIT_SHUTDOWN:
            ex = VmExit(ExitCode.SUSPENDED, rip=rip, how=SuspendHow.TRIPLEFAULT)
        elif reason == K.KVM_EXIT_SYSTEM_EVENT:
            t = run.u.system_event.type
            how = SuspendHow.RESET if t == K.KVM_SYSTEM_EVENT_RESET else SuspendHow.POWEROFF
            ex = VmExit(ExitCode.SUSPENDED, rip=rip, how=how)
        elif reason in (K.KVM_EXIT_INTR, K.KVM_EXIT_IRQ_WINDOW_OPEN):
            ex = VmExit(ExitCode.BOGUS, rip=rip)
        else:
            # INTERNAL_ERROR, FAIL_ENTRY, UNKNOWN, ...: nothing we can do.
            detail = b""
            if reason == K.KVM_EXIT_INTERNAL_ERROR:
                ie = run.u.internal
                detail = f"internal suberror {ie.suberror}".encode()
            elif reason == K.KVM_EXIT_FAIL_ENTRY:
                detail = f"fail entry {run.u.fail_entry.hardware_entry_failure_reason:#x}".encode()
            else:
                detail = f"kvm exit reason {reason}".encode()
            ex = VmExit(ExitCode.UNHANDLED, rip=rip, insn=detail)
        return ex

    def vm_complete_inout(self, exit: VmExit, value: int = 0) -> None:
        # RIP is advanced (and RAX loaded for IN) by KVM on the next KVM_RUN.
        if exit.is_in:
            io = self.run.u.io
            n = io.size * io.count
            data = (value & ((1 << (8 * io.size)) - 1)).to_bytes(io.size, "little") * io.count
            C.memmove(self._run_addr + io.data_offset, data, n)

    def vm_complete_mmio(self, exit: VmExit, value: int = 0) -> None:
        if not exit.is_write:
            m = self.run.u.mmio
            data = (value & ((1 << (8 * m.len)) - 1)).to_bytes(8, "little")
            C.memmove(C.addressof(m.data), data, 8)

    def vm_complete_msr(self, exit: VmExit, value: int = 0, gp: bool = False) -> None:
        # KVM handles (or #GPs) MSRs in the kernel; there are no MSR exits.
        raise NotImplementedError("kvm: MSR accesses never exit to the VMM")

    def vm_inject_exception(self, vector: int, error_code: int | None = None) -> None:
        ev = K.kvm_vcpu_events()
        _ioctl(self.fd, K.KVM_GET_VCPU_EVENTS, ev)
        ev.exception.injected = 0
        ev.exception.pending = 1
        ev.exception.nr = vector
        ev.exception.has_error_code = 1 if error_code is not None else 0
        ev.exception.error_code = error_code or 0
        ev.flags = 0
        try:
            _ioctl(self.fd, K.KVM_SET_VCPU_EVENTS, ev)
        except KvmError:
            # Without KVM_CAP_EXCEPTION_PAYLOAD "pending" is not accepted.
            ev.exception.pending = 0
            ev.exception.injected = 1
            _ioctl(self.fd, K.KVM_SET_VCPU_EVENTS, ev)

    def stats(self) -> dict[str, int]:
        return {"exits": self._nexits}


class KvmWholeVcpu(WholeVmVcpu, KvmVcpu):
    """A vCPU of a whole bhive VM: its own KVM VM, bhive's local APIC (wholevm)."""

    def __init__(self, vm: "KvmVm", vcpuid: int):
        self.vcpuid = vcpuid
        self.vm = vm
        self._whole_apic(vm.apic_vm)
        KvmVcpu.__init__(self, vm, vcpuid)
        self._whole_start()

    def _set_cpuid(self) -> None:
        _ioctl(self.fd, K.KVM_SET_CPUID2, self._whole_cpuid())

    def close(self) -> None:
        self.close_whole()
        KvmVcpu.close(self)


class KvmVm(Vm):
    def __init__(self, memory: GuestMemory, ncpus: int, options: dict | None, platform_shm: int = 0):
        options = options or {}
        self.whole_vm = bool(options.get("whole_vm"))
        self.apic_vm = None
        if self.whole_vm:
            # bhive's local APICs (softvmm's, in the platform shm every process maps)
            from ..softvmm import SoftvmmAccelerator
            self.apic_vm = SoftvmmAccelerator.vm_open(memory, ncpus, platform_shm, {})
        elif ncpus != 1:
            raise ValueError("kvm: one vCPU per VM process (a KVM VM is bound to its creating process)")
        self.ncpus = ncpus
        self.memory = memory
        self.sys_fd = os.open(KVM_DEV, os.O_RDWR | os.O_CLOEXEC)
        try:
            ver = _ioctl(self.sys_fd, K.KVM_GET_API_VERSION)
            if ver != K.KVM_API_VERSION:
                raise KvmError(errno.EINVAL, f"KVM API version {ver}")
            self.fd = _ioctl(self.sys_fd, K.KVM_CREATE_VM, 0)
        except Exception:
            os.close(self.sys_fd)
            raise
        self.has_xsave = _ioctl(self.sys_fd, K.KVM_CHECK_EXTENSION, K.KVM_CAP_XSAVE) > 0
        try:
            _ioctl(self.fd, K.KVM_SET_TSS_ADDR, 0xFFFBD000)
        except KvmError:
            pass
        self.irqchip = False
        if options.get("irqchip"):
            _ioctl(self.fd, K.KVM_CREATE_IRQCHIP)
            self.irqchip = True
        for slot, (gpa, size, off) in enumerate(memory.slots):
            r = K.kvm_userspace_memory_region(slot=slot, flags=0, guest_phys_addr=gpa,
                                              memory_size=size, userspace_addr=memory.address + off)
            _ioctl(self.fd, K.KVM_SET_USER_MEMORY_REGION, r)
        self._cpuid = None
        self.vcpus: dict[int, KvmVcpu] = {}

    def acc_supported_cpuid(self):
        if self._cpuid is None:
            n = 64
            while True:
                cp = K.kvm_cpuid2(n)()
                cp.nent = n
                try:
                    _ioctl(self.sys_fd, K.KVM_GET_SUPPORTED_CPUID, cp)
                    break
                except KvmError as e:
                    if e.errno != errno.E2BIG or n > 4096:
                        raise
                    n *= 2
            self._cpuid = cp
        return self._cpuid

    def vcpu_open(self, vcpuid: int) -> KvmVcpu:
        if vcpuid in self.vcpus:
            return self.vcpus[vcpuid]
        if self.whole_vm:
            if self.vcpus:
                raise ValueError("kvm: one vCPU per process (each vCPU process has its own KVM VM)")
            v = KvmWholeVcpu(self, vcpuid)
            self.vcpus[vcpuid] = v
            return v
        if vcpuid != 0:
            raise ValueError("kvm: only vCPU 0 (one vCPU per VM process)")
        v = KvmVcpu(self, vcpuid)
        self.vcpus[vcpuid] = v
        return v

    def kick(self, vcpuid: int) -> None:
        """Make `vcpuid`'s vm_run return BOGUS promptly (whole VMs; any process)."""
        if self.apic_vm is not None:
            self.apic_vm.kick(vcpuid)

    def vm_lapic_msi(self, addr: int, data: int) -> None:
        """Whole VMs: into bhive's local APIC(s) in shared memory, waking the
        destination (its watcher kicks it out of KVM_RUN).  Oracle VMs:
        through KVM's in-kernel local APIC.  Needs the VM to
        have been opened with options={"irqchip": True}; only the creating
        process can call it (see the module docstring)."""
        if self.apic_vm is not None:
            self.apic_vm.vm_lapic_msi(addr, data)
            return
        if not self.irqchip:
            raise RuntimeError("kvm: vm_lapic_msi needs options={'irqchip': True}")
        m = K.kvm_msi(address_lo=addr & 0xFFFFFFFF, address_hi=addr >> 32, data=data)
        _ioctl(self.fd, K.KVM_SIGNAL_MSI, m)

    def close(self) -> None:
        for v in self.vcpus.values():
            v.close()
        self.vcpus.clear()
        if self.apic_vm is not None:
            self.apic_vm.close()
            self.apic_vm = None
        for fd in ("fd", "sys_fd"):
            f = getattr(self, fd, -1)
            if f >= 0:
                os.close(f)
                setattr(self, fd, -1)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class KvmAccelerator(Accelerator):
    """Linux KVM.  One vCPU per VM process; used as the difftest oracle."""

    name = "kvm"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if not os.path.exists(KVM_DEV):
            return False, f"{KVM_DEV} does not exist (no KVM on this host)"
        try:
            fd = os.open(KVM_DEV, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            return False, f"cannot open {KVM_DEV}: {e.strerror}"
        try:
            ver = _ioctl(fd, K.KVM_GET_API_VERSION)
            if ver != K.KVM_API_VERSION:
                return False, f"{KVM_DEV}: unexpected KVM API version {ver}"
            vm = _ioctl(fd, K.KVM_CREATE_VM, 0)
            os.close(vm)
        except OSError as e:
            return False, f"{KVM_DEV} unusable: {e}"
        finally:
            os.close(fd)
        return True, ""

    @classmethod
    def platform_shm_size(cls, ncpus: int, ram_size: int) -> int:
        # whole VMs keep their local APICs where softvmm keeps them
        from ..softvmm import SoftvmmAccelerator
        return SoftvmmAccelerator.platform_shm_size(ncpus, ram_size)

    @classmethod
    def vm_open(cls, memory: GuestMemory, ncpus: int, platform_shm: int,
                options: dict | None = None) -> KvmVm:
        """options["whole_vm"]: a vCPU process of a bhive VM (see wholevm);
        otherwise one vCPU in this process (the difftest oracle)."""
        return KvmVm(memory, ncpus, options, platform_shm)
