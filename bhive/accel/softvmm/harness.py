"""An in-process machine around softvmm for tests and benchmarks.

RAM and the platform shm are anonymous MAP_SHARED mappings of this
process; vCPUs run in threads (the C core releases the GIL).  Port I/O
and MMIO exits go to Python callbacks.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
import threading

from ..base import ExitCode, GuestMemory, SegDesc, VmReg
from . import ACCELERATOR

CODE64 = 0xA09B    # VMX access rights: P, DPL0, code exec/read accessed, L, G
DATA64 = 0xC093
CODE32 = 0xC09B
DATA32 = 0xC093


def _addr(m: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(m))


class Machine:
    def __init__(self, ncpus: int = 1, ram_size: int = 4 << 20, options: dict | None = None):
        self.ncpus = ncpus
        self.ram_size = ram_size
        self.ram = mmap.mmap(-1, ram_size, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        shm_size = ACCELERATOR.platform_shm_size(ncpus, ram_size)
        self.shm = mmap.mmap(-1, shm_size, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        mem = GuestMemory(_addr(self.ram), ram_size, [(0, ram_size, 0)])
        self.vm = ACCELERATOR.vm_open(mem, ncpus, _addr(self.shm), options)
        self.cpus = [self.vm.vcpu_open(i) for i in range(ncpus)]
        self.out: dict[int, list[int]] = {}
        self.mmio_log: list[tuple] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    # -- memory ------------------------------------------------------------------
    def write(self, gpa: int, data: bytes) -> None:
        self.ram[gpa:gpa + len(data)] = data
        self.vm.invalidate_code(gpa, len(data))     # like any DMA into guest RAM

    def read(self, gpa: int, n: int) -> bytes:
        return bytes(self.ram[gpa:gpa + n])

    def r64(self, gpa: int) -> int:
        return struct.unpack_from("<Q", self.ram, gpa)[0]

    def r32(self, gpa: int) -> int:
        return struct.unpack_from("<I", self.ram, gpa)[0]

    def w64(self, gpa: int, v: int) -> None:
        struct.pack_into("<Q", self.ram, gpa, v)   # data only: no code invalidation

    # -- CPU setup ------------------------------------------------------------------
    def real_mode(self, cpu: int = 0, ip: int = 0x8000) -> None:
        v = self.cpus[cpu]
        v.vm_activate_cpu()
        v.vm_set_desc(VmReg.CS, SegDesc(0, 0xFFFF, 0x9B, 0))
        v.vm_set_register(VmReg.RIP, ip)

    def long_mode(self, cpu: int = 0, rip: int = 0x10000, rsp: int = 0x80000,
                  pt_base: int = 0x1000, paging: bool = True) -> None:
        """Flat 64-bit mode with identity paging of the low 4 GiB (2M pages);
        paging=False reuses page tables already built at pt_base."""
        if paging:
            self.build_identity_map(pt_base)
        v = self.cpus[cpu]
        v.vm_activate_cpu()
        v.set_mp_state(True)
        v.vm_set_register(VmReg.CR4, 0x20)
        v.vm_set_register(VmReg.EFER, 0x500 | 0x800)
        v.vm_set_register(VmReg.CR3, pt_base)
        v.vm_set_register(VmReg.CR0, 0x80000011 | 0x10000)
        v.vm_set_desc(VmReg.CS, SegDesc(0, 0xFFFFFFFF, CODE64, 0x08))
        for s in (VmReg.DS, VmReg.ES, VmReg.SS, VmReg.FS, VmReg.GS):
            v.vm_set_desc(s, SegDesc(0, 0xFFFFFFFF, DATA64, 0x10))
        v.vm_set_desc(VmReg.TR, SegDesc(0, 0x67, 0x8B, 0))
        v.vm_set_register(VmReg.RIP, rip)
        v.vm_set_register(VmReg.RSP, rsp)

    def protected_mode(self, cpu: int = 0, rip: int = 0x10000, rsp: int = 0x80000) -> None:
        """Flat 32-bit protected mode, no paging."""
        v = self.cpus[cpu]
        v.vm_activate_cpu()
        v.set_mp_state(True)
        v.vm_set_register(VmReg.CR0, 0x11)
        v.vm_set_desc(VmReg.CS, SegDesc(0, 0xFFFFFFFF, CODE32, 0x08))
        for s in (VmReg.DS, VmReg.ES, VmReg.SS, VmReg.FS, VmReg.GS):
            v.vm_set_desc(s, SegDesc(0, 0xFFFFFFFF, DATA32, 0x10))
        v.vm_set_register(VmReg.RIP, rip)
        v.vm_set_register(VmReg.RSP, rsp)

    def build_identity_map(self, base: int = 0x1000) -> None:
        self.w64(base, (base + 0x1000) | 3)                 # PML4[0] -> PDPT
        for i in range(4):
            self.w64(base + 0x1000 + 8 * i, (base + 0x2000 + 0x1000 * i) | 3)
            for j in range(512):
                self.w64(base + 0x2000 + 0x1000 * i + 8 * j, ((i << 30) | (j << 21)) | 0x83)

    # -- running ----------------------------------------------------------------------
    def port_in(self, cpu: int, port: int, size: int) -> int:
        if port == 0x3FD:
            return 0x60          # 16550 LSR: THR empty
        return 0xFFFFFFFF & ((1 << (8 * size)) - 1)

    def port_out(self, cpu: int, port: int, size: int, value: int) -> bool:
        """Returns True to stop the whole machine."""
        if port == 0xF4:
            return True
        with self.lock:
            self.out.setdefault(port, []).append(value)
        return False

    def mmio(self, cpu: int, gpa: int, size: int, is_write: bool, value: int) -> int:
        self.mmio_log.append((cpu, gpa, size, is_write, value))
        return 0

    def serial(self) -> str:
        return bytes(self.out.get(0x3F8, [])).decode(errors="replace")

    def run(self, cpu: int = 0, max_exits: int = 100000, stop_on=(ExitCode.HLT,)):
        """Run one vCPU in this thread until an exit in `stop_on`, a debug-exit
        write, or the machine is stopped.  Returns the last exit."""
        v = self.cpus[cpu]
        for _ in range(max_exits):
            if self.stop.is_set():
                return None
            e = v.vm_run()
            if e.code == ExitCode.INOUT:
                if e.is_in:
                    v.vm_complete_inout(e, self.port_in(cpu, e.port, e.size))
                else:
                    stopping = self.port_out(cpu, e.port, e.size, e.data)
                    v.vm_complete_inout(e)
                    if stopping:
                        self.stop.set()
                        for k in range(self.ncpus):
                            self.vm.kick(k)
                        return e
            elif e.code == ExitCode.INST_EMUL:
                v.vm_complete_mmio(e, self.mmio(cpu, e.gpa, e.size, e.is_write, e.data))
            elif e.code == ExitCode.BOGUS:
                continue
            elif e.code in (ExitCode.RDMSR, ExitCode.WRMSR):
                v.vm_complete_msr(e, 0, gp=True)
            if e.code in stop_on or e.code in (ExitCode.SUSPENDED, ExitCode.UNHANDLED):
                return e
        raise TimeoutError(f"vCPU {cpu}: no stop after {max_exits} exits")

    def run_all(self, timeout: float = 20.0, stop_on=()) -> list:
        """Run every vCPU in its own thread until the debug-exit port is hit."""
        results: list = [None] * self.ncpus
        errors: list = []

        def body(k):
            try:
                while not self.stop.is_set():
                    e = self.run(k, max_exits=1 << 30, stop_on=stop_on)
                    if e is None or e.code in (ExitCode.SUSPENDED, ExitCode.UNHANDLED) or e.port == 0xF4:
                        results[k] = e
                        if e is not None and e.code in (ExitCode.SUSPENDED, ExitCode.UNHANDLED):
                            errors.append((k, e))
                            self.stop.set()
                            for j in range(self.ncpus):
                                self.vm.kick(j)
                        return
                    results[k] = e
            except Exception as ex:  # pragma: no cover - surfaced by the caller
                errors.append((k, ex))
                self.stop.set()

        threads = [threading.Thread(target=body, args=(k,), daemon=True) for k in range(self.ncpus)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
        if any(t.is_alive() for t in threads):
            self.stop.set()
            for j in range(self.ncpus):
                self.vm.kick(j)
            for t in threads:
                t.join(2)
            raise TimeoutError(f"machine did not stop; serial so far: {self.serial()!r}")
        if errors:
            raise RuntimeError(f"vCPU failures: {errors}")
        return results
