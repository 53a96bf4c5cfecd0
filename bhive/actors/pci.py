"""PCI bus 0 of an i440FX/PIIX3 PC: the host bridge's configuration
mechanism #1 and the configuration space of every function on the bus.

References: PCI Local Bus Specification 3.0, 3.2.2.3.2 (configuration
mechanism #1: CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC-0xCFF) and
chapter 6 (the type-0 header, BAR sizing in 6.2.5.1); Intel 82441FX
(i440FX) datasheet 290549 section 3; Intel 82371SB (PIIX3) datasheet
290550, 2.2 (PIRQRC at 0x60-0x63) and 4.1.5 (the reset control register
at 0xCF9).

The configuration spaces live in shared memory (`ConfigTable`, a region
file in the run directory): the pci actor is the only writer; the IDE actor
reads its BAR4 base and command register there, and a vCPU process that
takes an exit to a port no device claims statically looks up which
function's enabled BAR decodes it (`ConfigTable.port_owner`).  A restarted
pci actor re-attaches to the same table and loses nothing; every config
write is idempotent when re-applied (status bits are write-1-to-clear), so
a write re-applied after a kill is harmless.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .base import no_log
from .host import DeviceHost

# Configuration mechanism #1 ports (offsets from 0xCF8, the decoded window).
CONFIG_ADDRESS = 0x0        # dword only: enable, bus, device, function, register
RESET_CONTROL = 0x1         # byte 0xCF9: PIIX3 reset control register (RC)
CONFIG_DATA = 0x4           # 0xCFC-0xCFF: byte, word or dword window onto the register
PORT_BASE = 0xCF8
PORT_COUNT = 8

CONFIG_ENABLE = 1 << 31     # CONFIG_ADDRESS bit 31: the next data access is a config cycle
CONFIG_ADDRESS_MASK = 0x80FFFFFC    # bits 30-24 reserved (0), bits 1-0 read as 0
RC_SYS_RESET = 0x02         # RC bit 1: hard reset when RC bit 2 goes 0 -> 1
RC_RESET_CPU = 0x04         # RC bit 2: start the reset

# Type-0 header offsets (PCI 3.0 figure 6-1).
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
CLASS_PROG_IF = 0x09        # then subclass 0x0A, base class 0x0B
CACHE_LINE_SIZE = 0x0C
LATENCY_TIMER = 0x0D
HEADER_TYPE = 0x0E
BAR0 = 0x10                 # six dword BARs, 0x10-0x27
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
INTERRUPT_LINE = 0x3C       # written by firmware/OS, no effect on the hardware
INTERRUPT_PIN = 0x3D        # read-only: 0 none, 1 INTA# ... 4 INTD#
CONFIG_SIZE = 256

HEADER_MULTIFUNCTION = 0x80   # HEADER_TYPE bit 7: functions 1-7 exist, scan them

# COMMAND bits (PCI 3.0 6.2.2).
CMD_IO = 0x0001             # respond to I/O BARs
CMD_MEMORY = 0x0002         # respond to memory BARs
CMD_BUS_MASTER = 0x0004     # may master the bus (DMA)
CMD_WRITABLE = 0x0547       # + parity error response, SERR#, INTx disable
# STATUS bits 15-11 and 8 are write-1-to-clear error flags.
STATUS_W1C = 0xF900

BAR_IO = 0x1                # BAR bit 0: I/O space
BAR_KIND_NONE, BAR_KIND_IO, BAR_KIND_MEM = 0, 1, 2

# i440FX (82441FX) and PIIX3 (82371SB) identities.
INTEL = 0x8086
I440FX_DEVICE = 0x1237
PIIX3_ISA_DEVICE = 0x7000
PIRQRC = 0x60               # PIIX3: PIRQ[A-D] route control, 0x60-0x63
PIRQRC_DISABLE = 0x80       # bit 7: not routed to an ISA IRQ (APIC mode)
PIRQRC_IRQ_MASK = 0x0F
PIRQ_FIRMWARE = (10, 10, 11, 11)   # what the firmware (we) leaves, as SeaBIOS does
PIRQ_GSI_BASE = 16          # PIRQ n is hard-wired to IOAPIC GSI 16 + n

# Shared table layout: a header, then one slot per function.
TABLE_MAGIC = 0x42504349    # "BPCI"
MAX_FUNCTIONS = 8
OWNER_BYTES = 32
_HEADER = struct.Struct("<IIII")      # magic, CONFIG_ADDRESS, generation, functions
_SLOT_HEAD = struct.Struct("<HBB32s6I6B2x")   # devfn, present, pad, owner, BAR sizes, BAR kinds
SLOT_SIZE = _SLOT_HEAD.size + 2 * CONFIG_SIZE   # + config bytes + write mask
TABLE_SIZE = 8192
TABLE_FILE = "pci.config"      # in the run directory's shm/
assert _HEADER.size + MAX_FUNCTIONS * SLOT_SIZE <= TABLE_SIZE


def devfn(device: int, function: int) -> int:
    return (device << 3) | function


@dataclass(frozen=True)
class Bar:
    index: int              # 0-5
    kind: int               # BAR_KIND_IO or BAR_KIND_MEM (32-bit, non-prefetchable)
    size: int               # a power of two
    base: int = 0           # what the firmware assigns


@dataclass(frozen=True)
class FunctionSpec:
    """What a PCI function is: identity, BARs, pin, its own registers."""
    device: int
    function: int
    vendor_id: int
    device_id: int
    class_code: int                     # base class << 16 | subclass << 8 | prog-if
    revision: int = 0
    header_type: int = 0
    subsystem: tuple[int, int] = (0, 0)     # (vendor, device)
    bars: tuple[Bar, ...] = ()
    interrupt_pin: int = 0
    command: int = 0                    # firmware's COMMAND value
    # device-specific registers: (offset, size, initial value), writable
    registers: tuple[tuple[int, int, int], ...] = ()
    status: int = 0


HOST_BRIDGE = FunctionSpec(
    0, 0, INTEL, I440FX_DEVICE, 0x060000, revision=0x02,
    # 82441FX: PMCCFG 0x50, DRAM control 0x57, PAM0-6 0x59-0x5F, DRB 0x60-0x67, SMRAM 0x72
    registers=((0x50, 2, 0), (0x57, 1, 0), (0x59, 7, 0), (0x60, 8, 0), (0x72, 1, 0x02)),
    command=CMD_IO | CMD_MEMORY, status=0x0280)
ISA_BRIDGE = FunctionSpec(
    1, 0, INTEL, PIIX3_ISA_DEVICE, 0x060100, header_type=HEADER_MULTIFUNCTION,
    # 82371SB: IORT 0x4C, XBCS 0x4E, PIRQRC 0x60-0x63, TOM 0x69, MSTAT 0x6A,
    # MBIRQ 0x70-0x71, APIC base 0x80, DLC 0x82, SMI 0xA0-0xAF
    registers=((0x4C, 1, 0x4D), (0x4E, 2, 0x03), (PIRQRC, 4, int.from_bytes(bytes(PIRQ_FIRMWARE), "little")),
               (0x69, 1, 0x02), (0x6A, 2, 0), (0x70, 2, 0x8080), (0x80, 1, 0), (0x82, 1, 0),
               (0xA0, 16, 0)),
    command=CMD_IO | CMD_MEMORY | CMD_BUS_MASTER, status=0x0200)


def _owner_bytes(owner: str) -> bytes:
    raw = owner.encode()
    if len(raw) >= OWNER_BYTES:
        raise ValueError(f"PCI function owner name {owner!r} is too long")
    return raw


class ConfigTable:
    """Every function's configuration space in a shared region.

    Writers (the pci actor) call `create`/`add_function` once and then
    only change config bytes; readers (the IDE actor, vCPU processes) map
    the same file and decode BARs and COMMAND when they need them.
    `generation` counts writes that changed a BAR or COMMAND.
    """

    def __init__(self, region):
        self.region = region
        self.buf = region.map

    @classmethod
    def create(cls, path: str | Path) -> "ConfigTable":
        """A fresh, empty table; readers ignore it until `seal()`."""
        from ..bus.shm import SharedRegion
        path = Path(path)
        path.unlink(missing_ok=True)
        table = cls(SharedRegion(path, TABLE_SIZE, create=True))
        _HEADER.pack_into(table.buf, 0, 0, 0, 0, 0)
        return table

    def seal(self) -> None:
        """Publish a table whose functions are all in place."""
        struct.pack_into("<I", self.buf, 0, TABLE_MAGIC)

    @classmethod
    def open(cls, path: str | Path) -> "ConfigTable | None":
        """The sealed table at `path`, or None (not there yet)."""
        from ..bus.shm import SharedRegion
        path = Path(path)
        try:
            region = SharedRegion(path)
        except (FileNotFoundError, ValueError):
            return None
        table = cls(region)
        if region.size < TABLE_SIZE or _HEADER.unpack_from(table.buf, 0)[0] != TABLE_MAGIC:
            region.close()
            return None
        return table

    @classmethod
    def in_memory(cls) -> "ConfigTable":
        """A private table (unit tests, tools)."""
        class _Mem:
            def __init__(self):
                self.map = bytearray(TABLE_SIZE)
        table = cls(_Mem())
        _HEADER.pack_into(table.buf, 0, TABLE_MAGIC, 0, 0, 0)
        return table

    # -- header ------------------------------------------------------------
    @property
    def config_address(self) -> int:
        return _HEADER.unpack_from(self.buf, 0)[1]

    @config_address.setter
    def config_address(self, value: int) -> None:
        struct.pack_into("<I", self.buf, 4, value)

    @property
    def generation(self) -> int:
        return _HEADER.unpack_from(self.buf, 0)[2]

    def bump(self) -> None:
        struct.pack_into("<I", self.buf, 8, (self.generation + 1) & 0xFFFFFFFF)

    @property
    def count(self) -> int:
        return _HEADER.unpack_from(self.buf, 0)[3]

    # -- slots -------------------------------------------------------------
    def _slot(self, i: int) -> int:
        return _HEADER.size + i * SLOT_SIZE

    def slot_of(self, dfn: int) -> int | None:
        for i in range(self.count):
            head = _SLOT_HEAD.unpack_from(self.buf, self._slot(i))
            if head[0] == dfn and head[1]:
                return i
        return None

    def add_function(self, spec: FunctionSpec, owner: str) -> int:
        i = self.count
        if i >= MAX_FUNCTIONS:
            raise ValueError("too many PCI functions")
        sizes = [0] * 6
        kinds = [0] * 6
        for bar in spec.bars:
            sizes[bar.index], kinds[bar.index] = bar.size, bar.kind
        off = self._slot(i)
        _SLOT_HEAD.pack_into(self.buf, off, devfn(spec.device, spec.function), 1, 0, _owner_bytes(owner),
                             *sizes, *kinds)
        cfg = bytearray(CONFIG_SIZE)
        mask = bytearray(CONFIG_SIZE)
        struct.pack_into("<HHHHB", cfg, 0, spec.vendor_id, spec.device_id, spec.command, spec.status,
                         spec.revision)
        cfg[CLASS_PROG_IF:CLASS_PROG_IF + 3] = spec.class_code.to_bytes(3, "little")
        cfg[HEADER_TYPE] = spec.header_type
        struct.pack_into("<HH", cfg, SUBSYSTEM_VENDOR_ID, *spec.subsystem)
        cfg[INTERRUPT_PIN] = spec.interrupt_pin
        struct.pack_into("<H", mask, COMMAND, CMD_WRITABLE)
        mask[CACHE_LINE_SIZE] = mask[LATENCY_TIMER] = 0xFF
        mask[INTERRUPT_LINE] = 0xFF
        for bar in spec.bars:
            low = BAR_IO if bar.kind == BAR_KIND_IO else 0
            struct.pack_into("<I", cfg, BAR0 + 4 * bar.index, (bar.base & ~(bar.size - 1)) | low)
            struct.pack_into("<I", mask, BAR0 + 4 * bar.index, ~(bar.size - 1) & 0xFFFFFFFF & ~0x3
                             if bar.kind == BAR_KIND_IO else ~(bar.size - 1) & 0xFFFFFFF0)
        for reg, size, value in spec.registers:
            cfg[reg:reg + size] = value.to_bytes(size, "little")
            mask[reg:reg + size] = b"\xff" * size
        base = off + _SLOT_HEAD.size
        self.buf[base:base + CONFIG_SIZE] = bytes(cfg)
        self.buf[base + CONFIG_SIZE:base + 2 * CONFIG_SIZE] = bytes(mask)
        struct.pack_into("<I", self.buf, 12, i + 1)
        self.bump()
        return i

    def config(self, slot: int) -> memoryview:
        base = self._slot(slot) + _SLOT_HEAD.size
        return memoryview(self.buf)[base:base + CONFIG_SIZE]

    def write_mask(self, slot: int) -> memoryview:
        base = self._slot(slot) + _SLOT_HEAD.size + CONFIG_SIZE
        return memoryview(self.buf)[base:base + CONFIG_SIZE]

    def owner(self, slot: int) -> str:
        return _SLOT_HEAD.unpack_from(self.buf, self._slot(slot))[3].rstrip(b"\0").decode()

    def bars(self, slot: int) -> list[tuple[int, int, int]]:
        """[(index, kind, size)] of the function's implemented BARs."""
        head = _SLOT_HEAD.unpack_from(self.buf, self._slot(slot))
        sizes, kinds = head[4:10], head[10:16]
        return [(i, kinds[i], sizes[i]) for i in range(6) if kinds[i]]

    # -- decoding, for the BAR's owner and the vCPUs -----------------------
    def read32(self, slot: int, offset: int) -> int:
        return struct.unpack_from("<I", self.buf, self._slot(slot) + _SLOT_HEAD.size + offset)[0]

    def command(self, slot: int) -> int:
        return self.read32(slot, COMMAND) & 0xFFFF

    def bar_base(self, slot: int, index: int) -> int | None:
        """Where BAR `index` decodes now, or None while it does not
        (its space disabled in COMMAND, or unassigned)."""
        for i, kind, size in self.bars(slot):
            if i != index:
                continue
            raw = self.read32(slot, BAR0 + 4 * i)
            if kind == BAR_KIND_IO:
                base = raw & ~(size - 1) & 0xFFFFFFFC
                if not self.command(slot) & CMD_IO or base == 0 or base + size > 0x10000:
                    return None
                return base
            base = raw & ~(size - 1) & 0xFFFFFFF0
            if not self.command(slot) & CMD_MEMORY or base == 0:
                return None
            return base
        return None

    def _owner_of(self, kind: int, addr: int) -> str | None:
        for slot in range(self.count):
            for index, k, size in self.bars(slot):
                if k != kind:
                    continue
                base = self.bar_base(slot, index)
                if base is not None and base <= addr < base + size:
                    return self.owner(slot)
        return None

    def port_owner(self, port: int) -> str | None:
        """The actor whose enabled I/O BAR decodes `port`, if any."""
        return self._owner_of(BAR_KIND_IO, port)

    def mmio_owner(self, gpa: int) -> str | None:
        return self._owner_of(BAR_KIND_MEM, gpa)


class PciHost:
    """Configuration mechanism #1 over a ConfigTable (bus 0 only).

    Wiring: `reset` is called when the guest writes the PIIX3 reset
    control register with RC bit 2 set; log(event, **fields).
    read(offset, size)/write(offset, size, value) take offsets from 0xCF8.
    """

    def __init__(self, table: ConfigTable, reset: Callable[[], None] | None = None,
                 log: Callable[..., None] = no_log):
        self.table = table
        self.reset = reset
        self.log = log
        self.reset_control = 0
        self.garbage = 0            # guest accesses that hardware would ignore

    # -- the function addressed by CONFIG_ADDRESS ----------------------------
    def _target(self) -> tuple[int | None, int]:
        addr = self.table.config_address
        if not addr & CONFIG_ENABLE:
            return None, 0
        bus, dfn, reg = (addr >> 16) & 0xFF, (addr >> 8) & 0xFF, addr & 0xFC
        if bus != 0:
            return None, reg
        return self.table.slot_of(dfn), reg

    def read(self, offset: int, size: int) -> int:
        ones = (1 << (8 * size)) - 1
        if offset == CONFIG_ADDRESS and size == 4:
            return self.table.config_address
        if offset == RESET_CONTROL and size == 1:
            return self.reset_control
        if offset < CONFIG_DATA:
            self._garbage("pci-address-partial-read", offset=offset, size=size)
            return ones
        slot, reg = self._target()
        if slot is None:
            return ones              # no such function: master abort, all ones
        cfg = self.table.config(slot)
        start = reg + offset - CONFIG_DATA
        if start % size:
            self._garbage("pci-unaligned-read", reg=start, size=size)
        value = 0
        for i in range(size):
            # bytes past 0xCFF are other ports (0xD00...): nobody answers
            inside = offset - CONFIG_DATA + i < 4
            value |= (cfg[start + i] if inside else 0xFF) << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == CONFIG_ADDRESS and size == 4:
            self.table.config_address = value & CONFIG_ADDRESS_MASK
            return
        if offset == RESET_CONTROL and size == 1:
            old, self.reset_control = self.reset_control, value & 0x0E
            if value & RC_RESET_CPU and not old & RC_RESET_CPU:
                self.log("pci-reset-control", value=value)
                if self.reset is not None:
                    self.reset()
            return
        if offset < CONFIG_DATA:
            self._garbage("pci-address-partial-write", offset=offset, size=size, value=value)
            return
        slot, reg = self._target()
        if slot is None:
            return                  # nobody claims the cycle: it vanishes
        start = reg + offset - CONFIG_DATA
        if start % size:
            self._garbage("pci-unaligned-write", reg=start, size=size, value=value)
        cfg, mask = self.table.config(slot), self.table.write_mask(slot)
        changed_decode = False
        ignored = 0
        for i in range(size):
            at = start + i
            if offset - CONFIG_DATA + i >= 4:
                break           # past 0xCFF: another port, not this register
            byte = (value >> (8 * i)) & 0xFF
            old = cfg[at]
            if STATUS <= at < STATUS + 2:
                w1c = (STATUS_W1C >> (8 * (at - STATUS))) & 0xFF
                new = old & ~(byte & w1c)
                ignored |= byte & ~w1c
            else:
                new = (old & ~mask[at]) | (byte & mask[at])
                if (byte ^ old) & ~mask[at] and not BAR0 <= at < BAR0 + 24:
                    ignored |= 1    # a read-only bit written with a different value
            if new != old:
                cfg[at] = new
                if COMMAND <= at < COMMAND + 2 or BAR0 <= at < BAR0 + 24:
                    changed_decode = True
        if ignored:
            self._garbage("pci-readonly-write", function=self.table.owner(slot), reg=start, size=size,
                          value=value)
        if changed_decode:
            self.table.bump()

    def _garbage(self, event: str, **fields) -> None:
        self.garbage += 1
        if self.garbage <= 100 or self.garbage % 1000 == 0:
            self.log(event, **fields)

    # -- PIIX3 PIRQ routing --------------------------------------------------
    def pirq_isa_irq(self, pirq: int) -> int | None:
        """The ISA IRQ PIRQ[pirq] reaches in PIC mode, or None (disabled)."""
        slot = self.table.slot_of(devfn(ISA_BRIDGE.device, ISA_BRIDGE.function))
        if slot is None:
            return None
        rc = self.table.config(slot)[PIRQRC + pirq]
        if rc & PIRQRC_DISABLE or (rc & PIRQRC_IRQ_MASK) < 3:
            return None
        return rc & PIRQRC_IRQ_MASK

    def state(self) -> dict[str, Any]:
        # The configuration spaces are the shared table itself.
        return {"reset_control": self.reset_control, "garbage": self.garbage}

    @classmethod
    def from_state(cls, state: dict[str, Any], table: ConfigTable, reset=None,
                   log: Callable[..., None] = no_log) -> "PciHost":
        dev = cls(table, reset=reset, log=log)
        dev.reset_control = state["reset_control"]
        dev.garbage = state["garbage"]
        return dev


def intx_gsi(slot: int, pin: int) -> int:
    """The IOAPIC GSI of INTx at `slot`, `pin` (1 = INTA#), as wired on this
    board: PIRQ[(slot + pin - 1) % 4] -> GSI 16 + n (ACPI _PRT, MP table)."""
    return PIRQ_GSI_BASE + (slot + pin - 1) % 4


def build_table(table: ConfigTable, functions: list[tuple[FunctionSpec, str]]) -> None:
    """Fill a fresh table: the host bridge and PIIX3 ISA bridge (owned by
    `functions`' pci actor, named in the first entry) and the others."""
    for spec, owner in functions:
        table.add_function(spec, owner)


class PciHostDevice(DeviceHost):
    """The i440FX host bridge and the PIIX3 ISA bridge.  Bus 0's config
    spaces are the shared table (run directory shm/pci.config): built once
    from the registry (every configured device type with a `pci_function`),
    re-attached by a restarted actor."""

    def setup(self) -> None:
        from ..devices import DEVICE_TYPES
        path = self.runtime.rundir.shm / TABLE_FILE
        table = ConfigTable.open(path)
        if table is None:                  # first start (or killed while building it)
            table = ConfigTable.create(path)
            functions = [(HOST_BRIDGE, self.runtime.role), (ISA_BRIDGE, self.runtime.role)]
            for dev in self.vm.devices.values():
                spec = DEVICE_TYPES[dev.type].pci_function
                if spec is not None:
                    functions.append((spec(), dev.name))
            build_table(table, functions)
            table.seal()
        self.table = table

    def model_args(self) -> dict:
        return {"table": self.table, "reset": self._reset, "log": self.log}

    def _reset(self) -> None:
        from ..bus.schema import VmEvent
        self.runtime.event(VmEvent(self.runtime.role, "reset", 0, "PIIX3 reset control register"))
