"""softvmm: bhive's own x86-64 CPU, written in C and loaded through cffi.

One `SoftVcpu` per vCPU process (or thread) executes guest code directly
on the shared guest RAM.  Cross-vCPU state (local APICs, run-state futex
words, per-page code generations) lives in the platform shm, so any
process of the VM can deliver an MSI or IPI without a round trip.

Every C call releases the GIL (cffi's default), so `vm_run` on one thread
and `vm_lapic_msi` / `kick` on another run concurrently.
"""

from __future__ import annotations

from ..base import (Accelerator, ExitCode, GuestMemory, SegDesc, SuspendHow, Vcpu, Vm, VmExit,
                    VmReg)

try:
    from ._softvmm import ffi, lib
    _IMPORT_ERROR: str | None = None
except ImportError as e:  # not built yet
    ffi = lib = None
    _IMPORT_ERROR = str(e)

_SEGS = {VmReg.ES, VmReg.CS, VmReg.SS, VmReg.DS, VmReg.FS, VmReg.GS, VmReg.LDTR, VmReg.TR,
         VmReg.IDTR, VmReg.GDTR}


def _require():
    if lib is None:
        raise RuntimeError(f"softvmm C core is not built ({_IMPORT_ERROR}); "
                           "run `python bhive/accel/softvmm/_build.py` or `pip install -e .`")


class SoftVcpu(Vcpu):
    def __init__(self, vm: "SoftVm", vcpuid: int):
        self.vm = vm
        self.vcpuid = vcpuid
        self._c = lib.svm_cpu_open(vm._vm, vcpuid)
        if self._c == ffi.NULL:
            raise ValueError(f"cannot open vCPU {vcpuid}")
        self._exit = ffi.new("svm_exit_t *")
        self._u64 = ffi.new("uint64_t[2]")
        jit = vm.options.get("jit_threshold")     # None: the environment's default (BHIVE_JIT*)
        if jit is not None:
            self.jit_config(int(jit))

    def jit_config(self, threshold: int) -> None:
        """Translate a block to host code after `threshold` interpreted runs
        (0: at once); a negative threshold keeps this vCPU on the interpreter."""
        lib.svm_jit_config(self._c, threshold)

    def close(self) -> None:
        if self._c is not None and self._c != ffi.NULL:
            lib.svm_cpu_close(self._c)
        self._c = None

    # -- running -------------------------------------------------------------
    def vm_run(self) -> VmExit:
        x = self._exit
        code = lib.svm_run(self._c, x)
        ec = ExitCode(code)
        e = VmExit(ec, rip=x.rip, inst_length=x.inst_length)
        if ec == ExitCode.INOUT:
            e.port, e.size, e.is_in = x.port, x.size, bool(x.is_in)
            e.data = x.data
        elif ec == ExitCode.INST_EMUL:
            e.gpa, e.size, e.is_write, e.data = x.gpa, x.size, bool(x.is_write), x.data
        elif ec in (ExitCode.RDMSR, ExitCode.WRMSR):
            e.msr, e.data = x.msr, x.data
        elif ec == ExitCode.IOAPIC_EOI:
            e.vector = x.vector
        elif ec == ExitCode.SUSPENDED:
            e.how = SuspendHow(x.how)
        elif ec == ExitCode.UNHANDLED:
            e.insn = bytes(ffi.buffer(x.insn, x.insn_len))
        return e

    def vm_complete_inout(self, exit: VmExit, value: int = 0) -> None:
        lib.svm_complete_io(self._c, value & 0xFFFFFFFFFFFFFFFF)

    def vm_complete_mmio(self, exit: VmExit, value: int = 0) -> None:
        lib.svm_complete_io(self._c, value & 0xFFFFFFFFFFFFFFFF)

    def vm_complete_msr(self, exit: VmExit, value: int = 0, gp: bool = False) -> None:
        lib.svm_complete_msr(self._c, value & 0xFFFFFFFFFFFFFFFF, 1 if gp else 0)

    def vm_activate_cpu(self) -> None:
        lib.svm_activate(self._c)

    def vm_inject_exception(self, vector: int, error_code: int | None = None) -> None:
        if lib.svm_inject_exception(self._c, vector, error_code is not None, error_code or 0):
            raise ValueError(f"bad exception vector {vector}")

    # -- registers -------------------------------------------------------------
    def vm_get_register(self, reg: VmReg) -> int:
        return lib.svm_get_reg(self._c, int(reg))

    def vm_set_register(self, reg: VmReg, value: int) -> None:
        if lib.svm_set_reg(self._c, int(reg), value & 0xFFFFFFFFFFFFFFFF):
            raise ValueError(f"register {VmReg(reg).name} cannot be set")

    def vm_get_desc(self, reg: VmReg) -> SegDesc:
        if reg not in _SEGS:
            raise ValueError(f"{VmReg(reg).name} has no descriptor")
        base = ffi.new("uint64_t *")
        limit = ffi.new("uint32_t *")
        access = ffi.new("uint32_t *")
        sel = ffi.new("uint16_t *")
        lib.svm_get_desc(self._c, int(reg), base, limit, access, sel)
        return SegDesc(base[0], limit[0], access[0], sel[0])

    def vm_set_desc(self, reg: VmReg, desc: SegDesc) -> None:
        if reg not in _SEGS:
            raise ValueError(f"{VmReg(reg).name} has no descriptor")
        lib.svm_set_desc(self._c, int(reg), desc.base, desc.limit, desc.access, desc.selector)

    # -- extras ------------------------------------------------------------------
    def set_mp_state(self, runnable: bool) -> None:
        """Like KVM_SET_MP_STATE: make the vCPU runnable now (True) or put it
        in wait-for-SIPI (False).  For loaders that start APs directly."""
        lib.svm_set_mp_state(self._c, 1 if runnable else 0)

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        """What the guest sees for CPUID(leaf, subleaf): (eax, ebx, ecx, edx)."""
        out = ffi.new("uint32_t[4]")
        lib.svm_cpuid(self._c, leaf, subleaf, out)
        return tuple(out)

    def stats(self) -> dict[str, int]:
        lib.svm_stats(self._c, self._u64, self._u64 + 1)
        out = {"instructions": self._u64[0], "exits": self._u64[1]}
        cache = ffi.new("uint64_t[8]")
        lib.svm_cache_stats(self._c, cache)
        out.update(zip(("block_lookups", "blocks_decoded", "block_cache_flushes", "block_arena_bytes",
                        "chain_epoch", "jit_blocks", "jit_fallbacks", "jit_code_bytes"), cache))
        return out

    def lapic_counts(self) -> tuple[dict[int, int], int]:
        """({vector: times this CPU took it}, the timer LVT's vector)."""
        counts, timer = ffi.new("uint32_t[256]"), ffi.new("uint32_t *")
        lib.svm_lapic_counts(self._c, counts, timer)
        return {v: n for v, n in enumerate(counts) if n}, timer[0]

    def jit_report(self) -> None:
        """With BHIVE_JIT_STATS=1: the JIT's fallbacks by opcode, on stderr."""
        lib.svm_jit_report(self._c)

    def pio_lane(self, base: int, count: int, ring_address: int, peer_addresses: list[int], capacity: int,
                 doorbell_fd: int, prefix: bytes, mirror_offset: int, neutral_writes: int) -> None:
        """Serve ports [base, base+count) without exits: see svm_pio_lane in
        csrc/softvmm.h and the channel layout in bhive.bus.channel."""
        peers = ffi.new("void *[]", [ffi.cast("void *", a) for a in peer_addresses])
        if lib.svm_pio_lane(self._c, base, count, ffi.cast("void *", ring_address), peers, len(peer_addresses),
                            capacity, doorbell_fd, prefix, len(prefix), mirror_offset, neutral_writes) != 0:
            raise RuntimeError(f"softvmm: cannot open a port lane at {base:#x}")

    def profile_start(self, capacity: int = 1 << 20, period: int = 10000) -> None:
        """Sample the guest RIP every `period` retired instructions into a
        ring of `capacity` entries (see profile_samples)."""
        self._prof = ffi.new("uint64_t[]", capacity)
        lib.svm_profile(self._c, self._prof, capacity, period)

    def profile_samples(self) -> list[int]:
        """The RIPs sampled so far (the latest `capacity` of them)."""
        if getattr(self, "_prof", None) is None:
            return []
        n = lib.svm_profile_count(self._c)
        cap = len(self._prof)
        return list(self._prof[0:min(n, cap)])

    # -- local APIC (owner thread, while the vCPU is not running) -------------------
    def lapic_read(self, offset: int) -> int:
        """Read the xAPIC register at `offset` (0x20 ID ... 0x3E0 DCR) as the guest would."""
        return lib.svm_lapic_read(self._c, offset)

    def lapic_write(self, offset: int, value: int) -> int | None:
        """Write an xAPIC register as the guest would; returns the vector of a
        level-triggered EOI (to forward to the IOAPIC) or None."""
        r = lib.svm_lapic_write(self._c, offset, value & 0xFFFFFFFF)
        return None if r < 0 else r

    def lapic_timer_poll(self) -> int | None:
        """Fire the LAPIC timer if due; the host TSC of its next expiry or None."""
        r = lib.svm_lapic_timer_poll(self._c)
        return None if r == 0xFFFFFFFFFFFFFFFF else r


class SoftVm(Vm):
    def __init__(self, memory: GuestMemory, ncpus: int, platform_shm: int, options: dict | None):
        _require()
        self.memory = memory
        self.ncpus = ncpus
        self.options = dict(options or {})
        flags = 0
        if self.options.get("unknown_msr") == "gp":
            flags |= 1   # SVM_F_UNKNOWN_MSR_GP: #GP in C without an exit
        slots = ffi.new("uint64_t[]", [v for s in memory.slots for v in s] or [0])
        self._vm = lib.svm_vm_open(ffi.cast("void *", memory.address), memory.size, slots,
                                   len(memory.slots), ffi.cast("void *", platform_shm), ncpus, flags)
        if self._vm == ffi.NULL:
            raise ValueError("svm_vm_open failed")
        cpu = self.options.get("cpu") or {}
        if "masks" in cpu:   # the CPU model (bhive.cpumodel); without one: "max"
            lib.svm_vm_set_cpu(self._vm, 1 if cpu["vendor"] == "AuthenticAMD" else 0,
                               ffi.new("uint32_t[7]", cpu["masks"]))
        self._vcpus: dict[int, SoftVcpu] = {}

    def vcpu_open(self, vcpuid: int) -> SoftVcpu:
        v = SoftVcpu(self, vcpuid)
        self._vcpus[vcpuid] = v
        return v

    def vm_lapic_msi(self, addr: int, data: int) -> None:
        lib.svm_lapic_msi(self._vm, addr, data & 0xFFFFFFFF)

    def vm_lapic_local_irq(self, vcpuid: int, pin: int, extint_vector: int = 0) -> None:
        """Assert LINT0 (pin 0) or LINT1 (pin 1) of `vcpuid` (-1: every vCPU),
        delivered as its LVT says (fixed, NMI, ExtINT with `extint_vector`)."""
        lib.svm_lapic_local_irq(self._vm, vcpuid, pin, extint_vector)

    def tsc_hz(self) -> int:
        """Frequency of the VM's TSC (the host TSC, calibrated once per VM)."""
        return lib.svm_tsc_hz(self._vm)

    def kick(self, vcpuid: int) -> None:
        """Make `vcpuid`'s vm_run return BOGUS promptly (from any thread/process)."""
        lib.svm_kick(self._vm, vcpuid)

    def invalidate_code(self, gpa: int, size: int) -> None:
        """Guest RAM [gpa, gpa+size) was written behind the vCPUs' back (DMA,
        loader): drop any decoded instructions for it.  Any thread/process."""
        lib.svm_invalidate(self._vm, gpa, size)

    # the name bhive.difftest (and other DMA writers) look for
    vm_memory_written = invalidate_code

    def close(self) -> None:
        for v in self._vcpus.values():
            v.close()
        self._vcpus.clear()
        if self._vm is not None:
            lib.svm_vm_close(self._vm)
            self._vm = None


def host_tsc() -> int:
    """The host TSC: the clock a guest's RDTSC reads in every vCPU process."""
    _require()
    return lib.svm_host_tsc()


class SoftvmmAccelerator(Accelerator):
    name = "softvmm"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if lib is None:
            return False, f"C core not built: {_IMPORT_ERROR}"
        return True, ""

    @classmethod
    def platform_shm_size(cls, ncpus: int, ram_size: int) -> int:
        _require()
        return lib.svm_shm_size(ncpus, ram_size)

    @classmethod
    def vm_open(cls, memory: GuestMemory, ncpus: int, platform_shm: int,
                options: dict | None = None) -> SoftVm:
        return SoftVm(memory, ncpus, platform_shm, options)


ACCELERATOR = SoftvmmAccelerator
