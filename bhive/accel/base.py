"""The accelerator interface, shaped like FreeBSD's libvmmapi.

Every accelerator (softvmm, kvm, bhyve) implements these classes, and
`bhive.vcpu_worker` only ever talks to them.  The names follow libvmmapi
(`vm_run`, `vm_get_register`, `vm_lapic_msi`, ...) so that the code path a
bhyve user reads here is the one they know from bhyverun.c.

Ownership rule that makes the seed's "stale RIP after IN/OUT" bug
impossible: the accelerator owns the architectural registers.  The worker
never caches RIP or RAX; it completes an exit by calling `vm_complete_inout`
or `vm_complete_mmio`, and the accelerator moves RIP past the instruction.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass


class VmReg(enum.IntEnum):
    """Register identifiers, in the order of FreeBSD's `enum vm_reg_name`."""

    RAX = 0
    RBX = 1
    RCX = 2
    RDX = 3
    RSI = 4
    RDI = 5
    RBP = 6
    R8 = 7
    R9 = 8
    R10 = 9
    R11 = 10
    R12 = 11
    R13 = 12
    R14 = 13
    R15 = 14
    CR0 = 15
    CR3 = 16
    CR4 = 17
    DR7 = 18
    RSP = 19
    RIP = 20
    RFLAGS = 21
    ES = 22
    CS = 23
    SS = 24
    DS = 25
    FS = 26
    GS = 27
    LDTR = 28
    TR = 29
    IDTR = 30
    GDTR = 31
    EFER = 32
    CR2 = 33
    PDPTE0 = 34
    PDPTE1 = 35
    PDPTE2 = 36
    PDPTE3 = 37
    INTR_SHADOW = 38
    DR0 = 39
    DR1 = 40
    DR2 = 41
    DR3 = 42
    DR6 = 43
    ENTRY_INST_LENGTH = 44
    FS_BASE = 45


SEGMENT_REGS = (VmReg.ES, VmReg.CS, VmReg.SS, VmReg.DS, VmReg.FS, VmReg.GS,
                VmReg.LDTR, VmReg.TR, VmReg.IDTR, VmReg.GDTR)


class ExitCode(enum.IntEnum):
    """Exit reasons; the numbers are FreeBSD's `enum vm_exitcode`."""

    INOUT = 0
    BOGUS = 2          # nothing to do: budget ran out or the vCPU was kicked
    RDMSR = 3          # an MSR the accelerator does not implement
    WRMSR = 4
    HLT = 5            # HLT with interrupts disabled: the vCPU is stopped
    PAUSE = 7
    INST_EMUL = 9      # MMIO: an access outside guest RAM
    SPINUP_AP = 10
    IOAPIC_EOI = 13    # EOI of a level-triggered vector
    SUSPENDED = 14     # triple fault, shutdown
    INOUT_STR = 15
    UNHANDLED = 100    # instruction the accelerator cannot execute (#UD is
                       # raised for architecturally invalid ones instead)


class SuspendHow(enum.IntEnum):
    """`enum vm_suspend_how`."""

    NONE = 0
    RESET = 1
    POWEROFF = 2
    HALT = 3
    TRIPLEFAULT = 4


@dataclass(slots=True)
class VmExit:
    """One VM exit.  Only the fields of its `code` are meaningful."""

    code: ExitCode
    rip: int = 0              # guest RIP of the exiting instruction
    inst_length: int = 0
    # INOUT / INOUT_STR
    port: int = 0
    size: int = 0             # bytes: 1, 2 or 4 (MMIO: 1, 2, 4 or 8)
    is_in: bool = False
    data: int = 0             # OUT/MMIO-write value; RDMSR/WRMSR value
    # INST_EMUL (MMIO)
    gpa: int = 0
    is_write: bool = False
    # RDMSR / WRMSR
    msr: int = 0
    # IOAPIC_EOI
    vector: int = 0
    # SUSPENDED
    how: SuspendHow = SuspendHow.NONE
    # UNHANDLED: the instruction bytes, for the log
    insn: bytes = b""


@dataclass(slots=True)
class SegDesc:
    """A segment register's hidden part, as `vm_get_desc` returns it.

    `access` uses the VMX access-rights layout (type, S, DPL, P, AVL, L,
    D/B, G, and bit 16 "unusable"), like bhyve.
    """

    base: int
    limit: int
    access: int
    selector: int = 0


class GuestMemory:
    """Where guest RAM lives: a host mapping and its guest-physical slots.

    `slots` is a list of (gpa, size, offset_in_mapping).  Every vCPU
    process and every DMA-capable actor maps the same shared file.
    """

    def __init__(self, address: int, size: int, slots: list[tuple[int, int, int]]):
        self.address = address
        self.size = size
        self.slots = slots


class Vcpu(ABC):
    """One virtual CPU.  Only its own vCPU process calls these."""

    vcpuid: int

    @abstractmethod
    def vm_run(self) -> VmExit:
        """Run until an exit that needs the VMM."""

    @abstractmethod
    def vm_get_register(self, reg: VmReg) -> int: ...

    @abstractmethod
    def vm_set_register(self, reg: VmReg, value: int) -> None: ...

    @abstractmethod
    def vm_get_desc(self, reg: VmReg) -> SegDesc: ...

    @abstractmethod
    def vm_set_desc(self, reg: VmReg, desc: SegDesc) -> None: ...

    @abstractmethod
    def vm_activate_cpu(self) -> None:
        """Mark this vCPU runnable.  An AP that is not the boot CPU then
        waits in wait-for-SIPI inside `vm_run` until INIT and SIPI arrive."""

    @abstractmethod
    def vm_inject_exception(self, vector: int, error_code: int | None = None) -> None: ...

    @abstractmethod
    def vm_complete_inout(self, exit: VmExit, value: int = 0) -> None:
        """Finish an INOUT exit exactly once: for IN, `value` lands in
        AL/AX/EAX (or memory for INS); RIP moves past the instruction."""

    @abstractmethod
    def vm_complete_mmio(self, exit: VmExit, value: int = 0) -> None:
        """Finish an INST_EMUL exit; for a read, `value` is the data."""

    @abstractmethod
    def vm_complete_msr(self, exit: VmExit, value: int = 0, gp: bool = False) -> None:
        """Finish an RDMSR/WRMSR exit: either the value (RDMSR) and RIP
        moves on, or #GP(0) is raised in the guest."""

    def stats(self) -> dict[str, int]:
        """Counters for benchmarks and `bhive stats` (instructions, exits)."""
        return {}


class Vm(ABC):
    """One VM as seen from one process: memory plus its vCPUs."""

    @abstractmethod
    def vcpu_open(self, vcpuid: int) -> Vcpu: ...

    def vm_memory_written(self, gpa: int, size: int) -> None:
        """Something other than a vCPU (DMA from a device actor, a loader,
        a test harness) wrote guest RAM: accelerators that cache decoded
        code invalidate it.  No-op for hardware accelerators."""

    @abstractmethod
    def vm_lapic_msi(self, addr: int, data: int) -> None:
        """Deliver an MSI (addr 0xFEExxxxx, data) to the destination local
        APIC(s).  Callable from any thread of any process that opened this
        VM, never blocks, and wakes a halted destination."""


class Accelerator(ABC):
    """Factory for VMs; one module per accelerator in `bhive.accel`."""

    name: str

    @classmethod
    @abstractmethod
    def available(cls) -> tuple[bool, str]:
        """(usable here?, reason if not)."""

    @classmethod
    def check_config(cls, name: str, ncpus: int, ram_size: int) -> None:
        """Refuse (ValueError) a VM this accelerator cannot create, before
        anything starts: e.g. a name longer than vmm.ko accepts."""

    @classmethod
    @abstractmethod
    def platform_shm_size(cls, ncpus: int, ram_size: int) -> int:
        """Bytes of shared memory the accelerator needs for cross-process
        state (e.g. softvmm's local APIC pages and per-page code-generation
        counters).  0 if it needs none."""

    @classmethod
    @abstractmethod
    def vm_open(cls, memory: GuestMemory, ncpus: int, platform_shm: int,
                options: dict | None = None) -> Vm:
        """Open the VM in this process.  `platform_shm` is the address of a
        mapping of `platform_shm_size(ncpus)` zero-initialised bytes shared
        by every process of the VM."""
