"""KVM for whole bhive VMs: one single-vCPU KVM VM per vCPU process.

A KVM VM is bound to the process that created it, and bhive runs every
vCPU in its own process, so each vCPU process creates its own KVM VM with
exactly one vCPU (KVM vCPU id = the bhive vCPU id, so only vCPU 0 has the
BSP bit in IA32_APIC_BASE) over the same shared guest RAM.  There is no
in-kernel irqchip: KVM sees neither the other vCPUs nor any interrupt
controller.  The local APIC is bhive's own, softvmm's (csrc/lapic.c), in the
platform shm that every process of the VM maps:

* `vm_lapic_msi` (from the control thread, an actor, another vCPU's ICR
  write) sets the IRR there and futex-wakes the destination.  In each vCPU
  process a watcher thread waits on its APIC (`svm_lapic_wait`: an event,
  or the LAPIC timer's deadline) and kicks the vCPU out of KVM_RUN:
  `immediate_exit` = 1 (an entry about to happen returns at once) and a
  signal (an entry under way returns with EINTR).
* Before each entry the vCPU asks its APIC what to do
  (`svm_lapic_next_event`): INIT resets the KVM vCPU, SIPI starts it in
  real mode at the vector, an NMI goes in with KVM_NMI, an interrupt with
  KVM_INTERRUPT when the guest can take it (KVM's
  ready_for_interrupt_injection and IF), else an interrupt window is
  requested (KVM_EXIT_IRQ_WINDOW_OPEN).  IRR moves to ISR only when the
  vector really goes in.
* The guest's accesses to the APIC page (0xFEE00000) are KVM MMIO exits
  served here by the same register model softvmm uses; an EOI of a
  level-triggered vector becomes the IOAPIC_EOI exit, as on softvmm.
* HLT (KVM_EXIT_HLT without an irqchip) waits here for an interrupt; with
  IF clear it is the worker's HLT exit.
* MSRs KVM does not know exit to the worker (KVM_CAP_X86_USER_SPACE_MSR)
  and follow the same `[msr]` policy.
* CPUID is softvmm's model (topology: APIC ID = vCPU id, ncpus in leaf
  0xB and 1; TSC leaves) with every feature bit ANDed with what KVM
  supports on this host; the host's vendor and family/model; no KVM
  paravirtual leaves, no x2APIC, no TSC-deadline timer (the MSR would be
  KVM's, and KVM has no APIC here).
"""

from __future__ import annotations

import ctypes as C
import errno
import signal
import threading

from ..base import ExitCode, SegDesc, SuspendHow, VmExit, VmReg
from ..segdesc import real_mode_ar
from . import _abi as K

APIC_BASE = 0xFEE00000
APIC_PAGE = 0x1000
KICK_SIGNAL = signal.SIGUSR2
WAIT_NS = 50_000_000                  # longest wait in vm_run before a BOGUS exit (the worker checks for stop)

_libc = C.CDLL(None, use_errno=True)
_libc.pthread_kill.argtypes = [C.c_ulong, C.c_int]

# CPUID feature words that are ANDed with KVM's: (leaf, subleaf) -> register indexes (eax, ebx, ecx, edx)
_FEATURE_WORDS = {(1, 0): (2, 3), (7, 0): (1, 2, 3), (0x80000001, 0): (2, 3)}
_HOST_WORDS = {(0, 0): (1, 2, 3), (1, 0): (0,), (0x80000002, 0): (0, 1, 2, 3), (0x80000003, 0): (0, 1, 2, 3),
               (0x80000004, 0): (0, 1, 2, 3)}
_SUBLEAVES = {4: range(5), 7: range(1), 0xB: range(3)}
CPUID1_ECX_X2APIC = 1 << 21
CPUID1_ECX_TSC_DEADLINE = 1 << 24
CPUID1_ECX_HYPERVISOR = 1 << 31


def build_cpuid(softvmm_cpuid, kvm_entries) -> list[tuple[int, int, int, tuple[int, int, int, int]]]:
    """(function, index, flags, (eax, ebx, ecx, edx)) for KVM_SET_CPUID2:
    softvmm's model filtered by what KVM supports (see the module doc)."""
    kvm = {(e.function, e.index): (e.eax, e.ebx, e.ecx, e.edx) for e in kvm_entries}
    kvm_plain = {e.function: (e.eax, e.ebx, e.ecx, e.edx) for e in kvm_entries}
    max_std = softvmm_cpuid(0, 0)[0]
    max_ext = softvmm_cpuid(0x80000000, 0)[0]
    leaves = [*range(0, max_std + 1), 0x40000000, *range(0x80000000, max_ext + 1)]
    out = []
    for leaf in leaves:
        for sub in _SUBLEAVES.get(leaf, range(1)):
            regs = list(softvmm_cpuid(leaf, sub))
            host = kvm.get((leaf, sub), kvm_plain.get(leaf) if leaf not in _SUBLEAVES else None)
            for i in _FEATURE_WORDS.get((leaf, sub), ()):
                regs[i] &= host[i] if host is not None else 0
            if host is not None:
                for i in _HOST_WORDS.get((leaf, sub), ()):
                    regs[i] = host[i]
            if leaf == 0:
                regs[0] = max_std
            if leaf == 1:
                regs[2] = (regs[2] & ~(CPUID1_ECX_X2APIC | CPUID1_ECX_TSC_DEADLINE)) | CPUID1_ECX_HYPERVISOR
            flags = K.KVM_CPUID_FLAG_SIGNIFCANT_INDEX if leaf in _SUBLEAVES else 0
            out.append((leaf, sub, flags, tuple(regs)))
    return out


def _ignore(signum, frame):
    pass


class ApicWatcher(threading.Thread):
    """Kicks its vCPU out of KVM_RUN when its local APIC has something."""

    def __init__(self, vcpu: "WholeVmVcpu"):
        super().__init__(name=f"apic-watch{vcpu.vcpuid}", daemon=True)
        self.vcpu = vcpu
        self.consumed = threading.Event()
        self.closed = False

    def run(self) -> None:
        lib, c = self.vcpu.svm_lib, self.vcpu.apic._c
        while not self.closed:
            if not lib.svm_lapic_wait(c, 200_000_000):
                continue
            self.consumed.clear()
            self.vcpu.kick_self()
            self.consumed.wait(0.02)


class WholeVmVcpu:
    """Mixed into KvmVcpu (see accel.py): the parts that differ for whole VMs."""

    def lapic_counts(self) -> tuple[dict[int, int], int]:
        """What this CPU's local APIC took, by vector (bhive stats)."""
        return self.apic.lapic_counts()

    def _whole_apic(self, apic_vm) -> None:
        """Before the KVM vCPU exists (its CPUID comes from this APIC's model)."""
        from ..softvmm import ffi as svm_ffi, lib as svm_lib
        self.svm_lib, self.svm_ffi = svm_lib, svm_ffi
        self.apic = apic_vm.vcpu_open(self.vcpuid)       # this vCPU's local APIC (softvmm's, in shm)
        self._vectors = svm_ffi.new("uint32_t[2]")
        self._string: list[int] | None = None             # [element, count] of a REP INS/OUTS

    def _whole_start(self) -> None:
        self._halted = False
        self._main_thread = threading.get_ident()     # the thread that will call vm_run
        signal.signal(KICK_SIGNAL, _ignore)             # only to interrupt KVM_RUN (EINTR)
        self._in_kvm = False
        self.watcher = ApicWatcher(self)
        self.watcher.start()
        self._user_msrs = self._enable_user_msrs()
        self._sync_tsc()

    def _enable_user_msrs(self) -> bool:
        cap = K.kvm_enable_cap(cap=K.KVM_CAP_X86_USER_SPACE_MSR)
        cap.args[0] = K.KVM_MSR_EXIT_REASON_UNKNOWN
        try:
            self._ioctl(self.vm.fd, K.KVM_ENABLE_CAP, cap)
            return True
        except OSError:
            return False                  # older KVM: unknown MSRs #GP in the kernel

    def _sync_tsc(self) -> None:
        """Every vCPU's KVM VM starts its own TSC; set it to the host's so
        all vCPUs (and the LAPIC timer, which counts in host TSC) agree."""
        msrs = K.kvm_msrs_1(nmsrs=1)
        msrs.entries[0].index = 0x10                   # IA32_TIME_STAMP_COUNTER
        msrs.entries[0].data = self.svm_lib.svm_host_tsc()
        try:
            self._ioctl(self.fd, K.KVM_SET_MSRS, msrs)
        except OSError:
            pass

    def _whole_cpuid(self):
        supported = self.vm.acc_supported_cpuid()
        entries = build_cpuid(self.apic.cpuid, supported.entries[:supported.nent])
        cp = K.kvm_cpuid2(len(entries))()
        cp.nent = len(entries)
        for k, (fn, idx, flags, regs) in enumerate(entries):
            e = cp.entries[k]
            e.function, e.index, e.flags = fn, idx, flags
            e.eax, e.ebx, e.ecx, e.edx = regs
        return cp

    def kick_self(self) -> None:
        """From the watcher (or any thread of this process)."""
        self.run.immediate_exit = 1
        if self._in_kvm:
            _libc.pthread_kill(self._main_thread, KICK_SIGNAL)

    def close_whole(self) -> None:
        self.watcher.closed = True

    # -- the interface -----------------------------------------------------------
    def vm_activate_cpu(self) -> None:
        self.apic.vm_activate_cpu()      # APs: wait-for-SIPI in the shared APIC

    def _reset_for_init(self) -> None:
        """INIT (SDM Vol 3A 9.1.1, Table 9-1): real mode, CS F000 base
        FFFF0000, the rest zero; the AP then waits for SIPI."""
        s = self._get_sregs()
        for reg in (VmReg.DS, VmReg.ES, VmReg.FS, VmReg.GS, VmReg.SS):
            self.vm_set_desc(reg, SegDesc(0, 0xFFFF, real_mode_ar(code=False), 0))
        self.vm_set_desc(VmReg.CS, SegDesc(0xFFFF0000, 0xFFFF, real_mode_ar(code=True), 0xF000))
        self.vm_set_desc(VmReg.TR, SegDesc(0, 0xFFFF, 0x8B, 0))
        self.vm_set_desc(VmReg.LDTR, SegDesc(0, 0xFFFF, 0x82, 0))
        self.vm_set_desc(VmReg.GDTR, SegDesc(0, 0xFFFF, 0, 0))
        self.vm_set_desc(VmReg.IDTR, SegDesc(0, 0xFFFF, 0, 0))
        s.cr0, s.cr2, s.cr3, s.cr4, s.efer = 0x60000010, 0, 0, 0, 0
        self._sregs_dirty = True
        r = self._get_regs()
        for name, _ in K.kvm_regs._fields_:
            setattr(r, name, 0)
        r.rip, r.rflags = 0xFFF0, 2
        self._regs_dirty = True

    def _start_at_sipi(self, vector: int) -> None:
        self.vm_set_desc(VmReg.CS, SegDesc(vector << 12, 0xFFFF, real_mode_ar(code=True), vector << 8))
        self.vm_set_register(VmReg.RIP, 0)

    def vm_run(self) -> VmExit:
        if self._string is not None:
            ex = self._next_string_element()
            if ex is not None:
                return ex
        run = self.run
        lib, c, vec = self.svm_lib, self.apic._c, self._vectors
        while True:
            run.immediate_exit = 0
            if self._halted:
                can = bool(self._get_regs().rflags & 0x200)
            else:
                can = bool(run.ready_for_interrupt_injection and run.if_flag)
            ev = lib.svm_lapic_next_event(c, 1 if can else 0, vec)
            self.watcher.consumed.set()
            if ev & lib.SVM_EV_INIT:
                self._reset_for_init()
                self._halted = False
            if ev & lib.SVM_EV_SIPI:
                self._start_at_sipi(vec[0])
                self._halted = False
            if ev & lib.SVM_EV_KICK:
                return VmExit(ExitCode.BOGUS)
            if ev & lib.SVM_EV_WAIT_SIPI:
                lib.svm_lapic_wait(c, WAIT_NS)
                return VmExit(ExitCode.BOGUS)
            if ev & lib.SVM_EV_NMI:
                self._ioctl(self.fd, K.KVM_NMI)
                self._halted = False
            if ev & lib.SVM_EV_INTR:
                self._ioctl(self.fd, K.KVM_INTERRUPT, K.kvm_interrupt(irq=vec[1]))
                self._halted = False
            run.request_interrupt_window = 1 if ev & lib.SVM_EV_PENDING else 0
            if self._halted:
                if not lib.svm_lapic_wait(c, WAIT_NS):
                    return VmExit(ExitCode.BOGUS)
                continue
            ex = self._kvm_run_once()
            if ex is not None:
                return ex

    def _kvm_run_once(self) -> VmExit | None:
        """One KVM_RUN; an exit for the worker, or None to go round again."""
        self._flush()
        self._regs_valid = self._sregs_valid = False
        self._in_kvm = True
        try:
            self._ioctl(self.fd, K.KVM_RUN)
        except OSError as e:
            if e.errno in (errno.EINTR, errno.EAGAIN):
                return None
            raise
        finally:
            self._in_kvm = False
        self._nexits += 1
        run = self.run
        reason = run.exit_reason
        if reason == K.KVM_EXIT_MMIO and APIC_BASE <= run.u.mmio.phys_addr < APIC_BASE + APIC_PAGE:
            return self._apic_access(run.u.mmio)
        if reason == K.KVM_EXIT_HLT:
            self._halted = True
            if self._get_regs().rflags & 0x200:
                return None
            return VmExit(ExitCode.HLT, rip=self._get_regs().rip)
        if reason in (K.KVM_EXIT_IRQ_WINDOW_OPEN, K.KVM_EXIT_INTR):
            return None
        if reason == K.KVM_EXIT_IO and run.u.io.count > 1:
            self._string = [0, run.u.io.count]           # REP INS/OUTS: one exit per element
            return self._next_string_element()
        if reason in (K.KVM_EXIT_X86_RDMSR, K.KVM_EXIT_X86_WRMSR):
            m = run.u.msr
            write = reason == K.KVM_EXIT_X86_WRMSR
            return VmExit(ExitCode.WRMSR if write else ExitCode.RDMSR, rip=self._get_regs().rip, msr=m.index,
                          data=m.data if write else 0)
        return self._decode_exit(reason)

    def _apic_access(self, m) -> VmExit | None:
        off = (m.phys_addr - APIC_BASE) & 0xFF0
        if not m.is_write:
            value = self.apic.lapic_read(off) if m.len == 4 else 0
            C.memmove(C.addressof(m.data), value.to_bytes(8, "little"), 8)
            return None
        value = int.from_bytes(bytes(m.data)[:4], "little") if m.len == 4 else 0
        eoi = self.apic.lapic_write(off, value)
        self.svm_lib.svm_lapic_nudge(self.apic._c)      # the timer may have been (re)armed
        if eoi is not None:
            return VmExit(ExitCode.IOAPIC_EOI, rip=self._get_regs().rip, vector=eoi)
        return None

    def _next_string_element(self) -> VmExit | None:
        """The next element of a REP INS/OUTS that KVM handed over whole
        (count elements in the kvm_run data area), as its own INOUT_STR exit."""
        k, count = self._string
        if k >= count:
            self._string = None
            return None
        io = self.run.u.io
        is_in = io.direction == K.KVM_EXIT_IO_IN
        data = 0
        if not is_in:
            data = int.from_bytes(C.string_at(self._run_addr + io.data_offset + k * io.size, io.size), "little")
        return VmExit(ExitCode.INOUT_STR, rip=self._get_regs().rip, port=io.port, size=io.size, is_in=is_in,
                      data=data)

    def vm_complete_inout(self, exit: VmExit, value: int = 0) -> None:
        if self._string is None:
            super().vm_complete_inout(exit, value)
            return
        io = self.run.u.io
        k = self._string[0]
        if exit.is_in:
            data = (value & ((1 << (8 * io.size)) - 1)).to_bytes(io.size, "little")
            C.memmove(self._run_addr + io.data_offset + k * io.size, data, io.size)
        self._string[0] = k + 1

    def vm_complete_msr(self, exit: VmExit, value: int = 0, gp: bool = False) -> None:
        m = self.run.u.msr
        m.error = 1 if gp else 0
        if exit.code == ExitCode.RDMSR:
            m.data = value & 0xFFFFFFFFFFFFFFFF
