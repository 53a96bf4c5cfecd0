"""The bhyve accelerator: FreeBSD's vmm.ko through libvmmapi (cffi, ABI mode).

Process model (as the issue asks; see README "bhyve" for what has been run)
-----------------------------------------------------------------------------
A VM under /dev/vmm belongs to no process: the supervisor creates it
(`create_host_vm`: vm_create, vm_setup_memory) before any worker starts,
and every vCPU process opens it by name (vm_open), opens its own vCPU
(vm_vcpu_open) and loops on vm_run.  A vCPU process that dies and is
restarted takes its vCPU over: the kernel keeps every register, the local
APIC (IRR/ISR, timer), pending exceptions and the guest's memory; what
is lost is what lived in the dead process: an exit it had taken but not
completed.  The kernel has already moved the resume point past it (vmm.c:
nextrip = rip + inst_length), so an IN in flight would finish with RAX
unchanged; a taking-over process calls vm_restart_instruction first, and
the instruction runs again (a read with side effects is repeated, an OUT
already handed to its actor arrives twice).

Exits, decoded here into the same `VmExit` softvmm produces, then handled
by the same dispatch in bhive.vcpu_worker:

* INOUT: the value of an IN is merged into RAX here (`vm_complete_inout`);
  the kernel moves RIP past the instruction at the next vm_run (vmm.c:
  nextrip = rip + inst_length for every exit returned to userspace).
* INOUT_STR: one element per exit, moved through vm_copy_setup/vm_copyin/
  vm_copyout; RSI/RDI (and RCX under REP) move, and the instruction is
  restarted (vm_restart_instruction) while RCX is not 0, as bhyve's
  inout.c does.
* INST_EMUL: the kernel has decoded the instruction (struct vie) and moved
  nextrip past it.  bhyve links the matching emulator
  (vmm_instruction_emul.c) into its own binary; libvmmapi does not export
  it, so `decode_mmio` does what it does for the MOV family (MOV, MOVZX,
  MOVSX: every MMIO access Linux and our guests make to the IOAPIC, HPET
  and device BARs); another instruction is an UNHANDLED exit.
* RDMSR/WRMSR: the `[msr]` policy of the worker; the value goes to
  EDX:EAX, or #GP(0) is injected with the instruction restarted.
* HLT (VM_CAP_HALT_EXIT: the kernel sleeps until an interrupt, so an exit
  here means interrupts are off and it will not wake: the vCPU is stopped)
  and PAUSE (VM_CAP_PAUSE_EXIT is not set: a stray one is BOGUS).
* SPINUP_AP: the target vCPU is reset, given the SIPI vector's real-mode
  CS:IP and resumed (vm_resume_cpu), as bhyve's spinup_ap.c does; APs are
  created suspended (vm_suspend_cpu) and loop on DEBUG exits until then.
  VM_CAP_IPI_EXIT stays off: INIT/SIPI are the kernel's.
* SUSPENDED: its reason (`how`) ends the VM.

Interrupts enter only through vm_lapic_msi (VM_LAPIC_MSI), which takes
no vCPU lock; vm_lapic_irq locks the target vCPU and is what deadlocked
the seed (its bug #7), so this module has no way to call it.
"""

from __future__ import annotations

import errno
import os
import sys
import time

from ..base import Accelerator, ExitCode, GuestMemory, SegDesc, SuspendHow, Vcpu, Vm, VmExit, VmReg
from ..segdesc import real_mode_ar
from . import _abi as A

LIBVMMAPI = "libvmmapi.so"

# x86 register numbers (ModRM reg / rm, REX-extended) -> vm_reg_name
_GPR_BY_NUMBER = (VmReg.RAX, VmReg.RCX, VmReg.RDX, VmReg.RBX, VmReg.RSP, VmReg.RBP, VmReg.RSI, VmReg.RDI,
                  VmReg.R8, VmReg.R9, VmReg.R10, VmReg.R11, VmReg.R12, VmReg.R13, VmReg.R14, VmReg.R15)
_PROT_READ, _PROT_WRITE = 1, 2
_RFLAGS_IF = 0x200
_RFLAGS_DF = 0x400


class BhyveError(OSError):
    pass


def check_vm_name(name: str) -> None:
    """Refuse a VM name the kernel would reject with ENAMETOOLONG, before
    anything is created (vmm.h VM_MAX_NAMELEN)."""
    n = len(name.encode())
    if n > A.VM_MAX_NAMELEN:
        raise ValueError(f"VM name of {n} bytes is longer than vmm.ko accepts "
                         f"({A.VM_MAX_NAMELEN}, VM_MAX_NAMELEN in vmm.h)")
    if "/" in name or not name:
        raise ValueError(f"VM name {name!r} cannot be a /dev/vmm node name")


def _mask(size: int) -> int:
    return (1 << (8 * size)) - 1


def merge_register(old: int, value: int, size: int) -> int:
    """A register write of `size` bytes, as the CPU does it: 1 and 2 bytes
    merge into the low bytes, 4 bytes zero-extend, 8 bytes replace."""
    if size == 4:
        return value & 0xFFFFFFFF
    if size == 8:
        return value & 0xFFFFFFFFFFFFFFFF
    m = _mask(size)
    return (old & ~m & 0xFFFFFFFFFFFFFFFF) | (value & m)


class MmioPlan:
    """What a decoded MMIO instruction does: one access of `size` bytes,
    a write of `data`, or a read whose value lands in `reg` (extended by
    `extend`: "zero", "sign" to `dest_size` bytes, or merged)."""

    __slots__ = ("is_write", "size", "data", "reg", "high_byte", "dest_size", "extend")

    def __init__(self, is_write, size, data=0, reg=None, high_byte=False, dest_size=0, extend=None):
        self.is_write, self.size, self.data = is_write, size, data
        self.reg, self.high_byte, self.dest_size, self.extend = reg, high_byte, dest_size, extend


def decode_mmio(vie, get_register) -> MmioPlan | None:
    """The MOV family of a kernel-decoded instruction (struct vie), as
    vmm_instruction_emul.c's emulate_mov/emulate_movx define it; None for
    anything else.  `get_register(VmReg)` reads the source of a store."""
    f = A.vie_fields(vie)
    op_type, op = vie.op.op_type, vie.op.op_byte
    opsize = f["opsize"]

    def gpr(size):
        n = f["reg"]
        if size == 1 and not f["rex_present"] and 4 <= n <= 7:
            return _GPR_BY_NUMBER[n - 4], True          # AH, CH, DH, BH
        return _GPR_BY_NUMBER[n], False

    if op_type == A.VIE_OP_TYPE_MOV:
        if op in (0x88, 0x89):                          # MOV r/m, r
            size = 1 if op == 0x88 else opsize
            reg, high = gpr(size)
            value = get_register(reg) >> (8 if high else 0)
            return MmioPlan(True, size, value & _mask(size))
        if op in (0x8A, 0x8B):                          # MOV r, r/m
            size = 1 if op == 0x8A else opsize
            reg, high = gpr(size)
            return MmioPlan(False, size, reg=reg, high_byte=high, dest_size=size)
        if op == 0xA1:                                  # MOV rAX, moffs
            return MmioPlan(False, opsize, reg=VmReg.RAX, dest_size=opsize)
        if op == 0xA3:                                  # MOV moffs, rAX
            return MmioPlan(True, opsize, get_register(VmReg.RAX) & _mask(opsize))
        if op in (0xC6, 0xC7):                          # MOV r/m, imm (imm32 sign-extended for REX.W)
            size = 1 if op == 0xC6 else opsize
            return MmioPlan(True, size, vie.immediate & _mask(size))
        return None
    if op_type in (A.VIE_OP_TYPE_MOVZX, A.VIE_OP_TYPE_MOVSX):
        if op not in (0xB6, 0xB7, 0xBE, 0xBF):
            return None
        src = 1 if op in (0xB6, 0xBE) else 2
        reg, _ = gpr(opsize)
        return MmioPlan(False, src, reg=reg, dest_size=opsize,
                        extend="zero" if op_type == A.VIE_OP_TYPE_MOVZX else "sign")
    return None


def apply_mmio_read(plan: MmioPlan, value: int, old: int) -> int:
    """The new value of `plan.reg` after the read returned `value`."""
    value &= _mask(plan.size)
    if plan.extend == "sign" and value >> (8 * plan.size - 1):
        value |= ~_mask(plan.size) & 0xFFFFFFFFFFFFFFFF
    if plan.extend is not None:
        return merge_register(old, value, plan.dest_size)
    if plan.high_byte:
        return (old & ~0xFF00 & 0xFFFFFFFFFFFFFFFF) | (value << 8)
    return merge_register(old, value, plan.dest_size)


def decode_exit(vme) -> VmExit:
    """struct vm_exit -> the VmExit every accelerator returns.  Exits that
    need the backend's own work (INST_EMUL, INOUT_STR data, SPINUP_AP)
    are completed by `BhyveVcpu.vm_run`; this is the part that is only
    reading the structure."""
    code = vme.exitcode
    u = vme.u
    if code == A.EXIT["INOUT"]:
        b = A.inout_bits(u.inout.bits)
        return VmExit(ExitCode.INOUT, rip=vme.rip, inst_length=vme.inst_length, port=u.inout.port,
                      size=b["bytes"], is_in=bool(b["in"]), data=0 if b["in"] else u.inout.eax & _mask(b["bytes"]))
    if code == A.EXIT["INOUT_STR"]:
        b = A.inout_bits(u.inout_str.inout.bits)
        return VmExit(ExitCode.INOUT_STR, rip=vme.rip, inst_length=vme.inst_length,
                      port=u.inout_str.inout.port, size=b["bytes"], is_in=bool(b["in"]))
    if code == A.EXIT["INST_EMUL"]:
        return VmExit(ExitCode.INST_EMUL, rip=vme.rip, inst_length=vme.inst_length, gpa=u.inst_emul.gpa)
    if code in (A.EXIT["RDMSR"], A.EXIT["WRMSR"]):
        write = code == A.EXIT["WRMSR"]
        return VmExit(ExitCode.WRMSR if write else ExitCode.RDMSR, rip=vme.rip, inst_length=vme.inst_length,
                      msr=u.msr.code, data=u.msr.wval if write else 0)
    if code == A.EXIT["HLT"]:
        # With VM_CAP_HALT_EXIT the kernel waits for interrupts itself; only
        # a HLT with IF clear (which nothing but NMI/INIT ends) is the VMM's.
        stopped = not (u.hlt.rflags & _RFLAGS_IF)
        return VmExit(ExitCode.HLT if stopped else ExitCode.BOGUS, rip=vme.rip)
    if code == A.EXIT["IOAPIC_EOI"]:
        return VmExit(ExitCode.IOAPIC_EOI, rip=vme.rip, vector=u.ioapic_eoi.vector)
    if code == A.EXIT["SUSPENDED"]:
        how = u.suspended.how
        return VmExit(ExitCode.SUSPENDED, rip=vme.rip,
                      how=SuspendHow(how) if how in SuspendHow._value2member_map_ else SuspendHow.NONE)
    if code == A.EXIT["SPINUP_AP"]:
        return VmExit(ExitCode.SPINUP_AP, rip=vme.rip)
    if code in (A.EXIT["BOGUS"], A.EXIT["PAUSE"], A.EXIT["REQIDLE"], A.EXIT["RENDEZVOUS"],
                A.EXIT["DEBUG"], A.EXIT["MTRAP"]):
        return VmExit(ExitCode.BOGUS, rip=vme.rip)
    name = A.EXITCODES[code] if 0 <= code < len(A.EXITCODES) else str(code)
    return VmExit(ExitCode.UNHANDLED, rip=vme.rip, insn=f"bhyve exit {name}".encode())


class BhyveVcpu(Vcpu):
    """One vCPU of a vmm.ko VM.  `lib`/`ffi` are libvmmapi's (or, in the
    tests, a stand-in driven by softvmm with the same signatures)."""

    def __init__(self, vm: "BhyveVm", vcpuid: int):
        self.vm = vm
        self.lib, self.ffi = vm.lib, vm.ffi
        self.vcpuid = vcpuid
        self._vcpu = self.lib.vm_vcpu_open(vm.ctx, vcpuid)
        if self._vcpu == self.ffi.NULL:
            raise BhyveError(self.ffi.errno, f"vm_vcpu_open({vcpuid}) failed")
        self._vme = self.ffi.new("struct vm_exit *")
        self._cpuset = self.ffi.new("uint8_t[]", 128)           # cpuset_t of CPU_SETSIZE 1024
        self._vmrun = self.ffi.new("struct vm_run *")
        self._vmrun.cpuid = vcpuid
        self._vmrun.cpuset = self._cpuset
        self._vmrun.cpusetsize = 128
        self._vmrun.vm_exit = self._vme
        self._u64 = self.ffi.new("uint64_t *")
        self._mmio: MmioPlan | None = None
        self._str: dict | None = None
        self._exits = 0
        self._check(self.lib.vm_set_capability(self._vcpu, A.VM_CAP_HALT_EXIT, 1), "VM_CAP_HALT_EXIT")

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            e = self.ffi.errno or errno.EIO
            raise BhyveError(e, f"bhyve: {what}: {os.strerror(e)}")

    # -- registers ------------------------------------------------------------
    def vm_get_register(self, reg: VmReg) -> int:
        self._check(self.lib.vm_get_register(self._vcpu, int(reg), self._u64), f"get {VmReg(reg).name}")
        return self._u64[0]

    def vm_set_register(self, reg: VmReg, value: int) -> None:
        self._check(self.lib.vm_set_register(self._vcpu, int(reg), value & 0xFFFFFFFFFFFFFFFF),
                    f"set {VmReg(reg).name}")

    def vm_get_desc(self, reg: VmReg) -> SegDesc:
        base, limit, access = self.ffi.new("uint64_t *"), self.ffi.new("uint32_t *"), self.ffi.new("uint32_t *")
        self._check(self.lib.vm_get_desc(self._vcpu, int(reg), base, limit, access), f"desc {VmReg(reg).name}")
        sel = self.vm_get_register(reg) if reg not in (VmReg.IDTR, VmReg.GDTR) else 0
        return SegDesc(base[0], limit[0], access[0], sel)

    def vm_set_desc(self, reg: VmReg, desc: SegDesc) -> None:
        self._check(self.lib.vm_set_desc(self._vcpu, int(reg), desc.base, desc.limit, desc.access),
                    f"desc {VmReg(reg).name}")
        if reg not in (VmReg.IDTR, VmReg.GDTR):
            self.vm_set_register(reg, desc.selector)

    # -- running --------------------------------------------------------------
    def vm_activate_cpu(self) -> None:
        self._check(self.lib.vm_activate_cpu(self._vcpu), "vm_activate_cpu")
        if self.vcpuid != 0:
            # An AP waits for SIPI: suspended until the BSP's SPINUP_AP resumes it.
            self._check(self.lib.vm_suspend_cpu(self._vcpu), "vm_suspend_cpu")

    def vm_run(self) -> VmExit:
        self._mmio = None
        self._str = None
        if self.lib.vm_run(self._vcpu, self._vmrun) != 0:
            e = self.ffi.errno
            if e in (errno.EINTR, errno.EAGAIN):
                return VmExit(ExitCode.BOGUS)
            raise BhyveError(e, f"bhyve: vm_run: {os.strerror(e)}")
        self._exits += 1
        vme = self._vme
        ex = decode_exit(vme)
        if ex.code == ExitCode.INST_EMUL:
            plan = decode_mmio(vme.u.inst_emul.vie, self.vm_get_register)
            if plan is None:
                vie = vme.u.inst_emul.vie
                return VmExit(ExitCode.UNHANDLED, rip=ex.rip,
                              insn=bytes(self.ffi.buffer(vie.inst, max(1, vie.num_valid))))
            self._mmio = plan
            ex.size, ex.is_write, ex.data = plan.size, plan.is_write, plan.data if plan.is_write else 0
        elif ex.code == ExitCode.INOUT_STR:
            return self._string_exit(ex)
        elif ex.code == ExitCode.SPINUP_AP:
            self._spinup_ap(vme.u.spinup_ap.vcpu, vme.u.spinup_ap.rip)
            return VmExit(ExitCode.BOGUS, rip=ex.rip)
        elif ex.code == ExitCode.BOGUS and vme.exitcode == A.EXIT["DEBUG"]:
            time.sleep(0.001)          # a suspended AP: bhyverun's vmexit_debug does the same
        return ex

    def _string_exit(self, ex: VmExit) -> VmExit:
        """INS/OUTS: one element through the guest's linear address space."""
        s = self._vme.u.inout_str
        b = A.inout_bits(s.inout.bits)
        if b["rep"] and s.count == 0:
            return VmExit(ExitCode.BOGUS, rip=ex.rip)
        amask = _mask(s.addrsize) if s.addrsize else 0xFFFFFFFFFFFFFFFF
        gla = (s.seg_desc.base + (s.index & amask)) & 0xFFFFFFFFFFFFFFFF
        iov = self.ffi.new("struct iovec[2]")
        fault = self.ffi.new("int *")
        prot = _PROT_WRITE if b["in"] else _PROT_READ
        self._check(self.lib.vm_copy_setup(self._vcpu, self.ffi.addressof(s, "paging"), gla, ex.size, prot,
                                           iov, 2, fault), "vm_copy_setup")
        if fault[0]:
            return VmExit(ExitCode.BOGUS, rip=ex.rip)   # the kernel injected the #PF/#GP
        self._str = {"iov": iov, "rep": b["rep"], "in": b["in"], "addrsize": s.addrsize,
                     "rflags": s.rflags, "index_reg": VmReg.RDI if b["in"] else VmReg.RSI}
        if not b["in"]:
            buf = self.ffi.new("uint8_t[8]")
            self.lib.vm_copyin(iov, buf, ex.size)
            ex.data = int.from_bytes(bytes(buf[0:ex.size]), "little")
        return ex

    def _finish_string(self, ex: VmExit, value: int) -> None:
        st = self._str
        self._str = None
        if st["in"]:
            buf = self.ffi.new("uint8_t[8]", list((value & _mask(ex.size)).to_bytes(8, "little")))
            self.lib.vm_copyout(buf, st["iov"], ex.size)
        amask = _mask(st["addrsize"]) if st["addrsize"] else 0xFFFFFFFFFFFFFFFF
        step = -ex.size if st["rflags"] & _RFLAGS_DF else ex.size
        idx = self.vm_get_register(st["index_reg"])
        self.vm_set_register(st["index_reg"], (idx & ~amask) | ((idx + step) & amask))
        if st["rep"]:
            rcx = self.vm_get_register(VmReg.RCX)
            left = ((rcx & amask) - 1) & amask
            self.vm_set_register(VmReg.RCX, (rcx & ~amask) | left)
            if left:
                self._check(self.lib.vm_restart_instruction(self._vcpu), "vm_restart_instruction")

    def _spinup_ap(self, target: int, rip: int) -> None:
        """SIPI to `target`: reset it, point it at the vector (CS = vector <<
        8, IP = 0, real mode) and let it run (bhyve's spinup_ap.c)."""
        vcpu = self.vm.other_vcpu(target)
        self._check(self.lib.vcpu_reset(vcpu), "vcpu_reset")
        base = rip & 0xFF000                        # the SIPI vector's page
        self._check(self.lib.vm_set_desc(vcpu, int(VmReg.CS), base, 0xFFFF, real_mode_ar(code=True)), "AP CS")
        self._check(self.lib.vm_set_register(vcpu, int(VmReg.CS), base >> 4), "AP CS selector")
        self._check(self.lib.vm_set_register(vcpu, int(VmReg.RIP), rip & 0xFFF), "AP RIP")
        self._check(self.lib.vm_resume_cpu(vcpu), "vm_resume_cpu")

    def vm_complete_inout(self, exit: VmExit, value: int = 0) -> None:
        if exit.code == ExitCode.INOUT_STR:
            self._finish_string(exit, value)
        elif exit.is_in:
            rax = self.vm_get_register(VmReg.RAX)
            self.vm_set_register(VmReg.RAX, merge_register(rax, value, exit.size))
        # RIP: the kernel resumes at rip + inst_length (vmm.c nextrip)

    def vm_complete_mmio(self, exit: VmExit, value: int = 0) -> None:
        plan, self._mmio = self._mmio, None
        if plan is not None and not plan.is_write:
            self.vm_set_register(plan.reg, apply_mmio_read(plan, value, self.vm_get_register(plan.reg)))

    def vm_complete_msr(self, exit: VmExit, value: int = 0, gp: bool = False) -> None:
        if gp:
            self._check(self.lib.vm_inject_exception(self._vcpu, 13, 1, 0, 1), "inject #GP")
        elif exit.code == ExitCode.RDMSR:
            self.vm_set_register(VmReg.RAX, value & 0xFFFFFFFF)
            self.vm_set_register(VmReg.RDX, (value >> 32) & 0xFFFFFFFF)

    def vm_inject_exception(self, vector: int, error_code: int | None = None) -> None:
        self._check(self.lib.vm_inject_exception(self._vcpu, vector, error_code is not None, error_code or 0, 1),
                    "vm_inject_exception")

    def stats(self) -> dict[str, int]:
        return {"exits": self._exits}


class BhyveVm(Vm):
    def __init__(self, lib, ffi, name: str, memory: GuestMemory | None, ncpus: int):
        check_vm_name(name)
        self.lib, self.ffi = lib, ffi
        self.name = name
        self.memory = memory
        self.ncpus = ncpus
        self.ctx = lib.vm_open(name.encode())
        if self.ctx == ffi.NULL:
            e = ffi.errno or errno.ENOENT
            raise BhyveError(e, f"bhyve: vm_open({name!r}): {os.strerror(e)}")
        self._others: dict[int, object] = {}

    def vcpu_open(self, vcpuid: int) -> BhyveVcpu:
        return BhyveVcpu(self, vcpuid)

    def other_vcpu(self, vcpuid: int):
        """A handle on another vCPU of the VM (for SPINUP_AP)."""
        if vcpuid not in self._others:
            self._others[vcpuid] = self.lib.vm_vcpu_open(self.ctx, vcpuid)
        return self._others[vcpuid]

    def vm_lapic_msi(self, addr: int, data: int) -> None:
        # VM_LAPIC_MSI: no vCPU lock in the kernel, so it never waits on a
        # running or halted target.  (Never vm_lapic_irq: the seed's bug #7.)
        if self.lib.vm_lapic_msi(self.ctx, addr, data & 0xFFFFFFFF) != 0:
            raise BhyveError(self.ffi.errno, "bhyve: vm_lapic_msi failed")


def _load():
    """libvmmapi through cffi in ABI mode: FreeBSD only, loaded on first use."""
    import cffi
    ffi = cffi.FFI()
    ffi.cdef(A.CDEF)
    return ffi.dlopen(LIBVMMAPI), ffi


def _vmm_loaded() -> tuple[bool, str]:
    if not sys.platform.startswith("freebsd"):
        return False, f"vmm.ko is FreeBSD's hypervisor and this host runs {sys.platform}"
    if os.path.exists("/dev/vmmctl"):          # FreeBSD 15: the control device of a loaded vmm.ko
        return True, ""
    import subprocess                           # FreeBSD 14: ask the kernel linker
    if subprocess.run(["kldstat", "-q", "-m", "vmm"], capture_output=True).returncode != 0:
        return False, "vmm.ko is not loaded (kldload vmm)"
    return True, ""


class BhyveAccelerator(Accelerator):
    """FreeBSD vmm.ko.  Only usable on FreeBSD 14 or later with vmm.ko loaded."""

    name = "bhyve"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        ok, why = _vmm_loaded()
        if not ok:
            return ok, why
        try:
            _load()
        except (OSError, ImportError) as e:
            return False, f"cannot load {LIBVMMAPI}: {e}"
        return True, ""

    @classmethod
    def check_config(cls, name: str, ncpus: int, ram_size: int) -> None:
        check_vm_name(name)

    @classmethod
    def platform_shm_size(cls, ncpus: int, ram_size: int) -> int:
        return 0

    @classmethod
    def create_host_vm(cls, name: str, ncpus: int, ram_size: int) -> None:
        """Supervisor, before any worker: the VM under /dev/vmm and its RAM."""
        check_vm_name(name)
        lib, ffi = _load()
        if lib.vm_create(name.encode()) != 0:
            raise BhyveError(ffi.errno, f"bhyve: vm_create({name!r}): {os.strerror(ffi.errno)}")
        ctx = lib.vm_open(name.encode())
        if lib.vm_set_topology(ctx, ncpus, 1, 1, ncpus) != 0 or \
                lib.vm_setup_memory(ctx, ram_size, A.VM_MMAP_NONE) != 0:
            e = ffi.errno
            lib.vm_destroy(ctx)
            raise BhyveError(e, f"bhyve: setting up {name!r}: {os.strerror(e)}")
        lib.vm_close(ctx)

    @classmethod
    def destroy_host_vm(cls, name: str) -> None:
        lib, ffi = _load()
        ctx = lib.vm_open(name.encode())
        if ctx != ffi.NULL:
            lib.vm_destroy(ctx)

    @classmethod
    def vm_open(cls, memory: GuestMemory, ncpus: int, platform_shm: int,
                options: dict | None = None) -> BhyveVm:
        lib, ffi = _load()
        return BhyveVm(lib, ffi, (options or {})["name"], memory, ncpus)


__all__ = ["BhyveAccelerator", "BhyveVm", "BhyveVcpu", "decode_exit", "decode_mmio", "apply_mmio_read",
           "merge_register", "check_vm_name"]
