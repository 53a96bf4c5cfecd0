"""pc-testdev: QEMU's ISA test device for bare-metal test kernels.

Reference: QEMU hw/misc/pc-testdev.c.  Its conventions, by I/O port:

* 0xE0-0xE3: a 4-byte latch.  An access of n bytes at 0xE0+k reads or
  writes bytes k..k+n-1 of it.  As in QEMU's memory core, an access not
  aligned to its size is invalid: a write is dropped, a read floats high.
* 0xE4: "flush page": a 4-byte write of a guest-physical address asks the
  host to flush that page from its mappings (QEMU mprotects it away and
  back).  Guest RAM here is shared memory that every vCPU sees coherently
  and softvmm drops decoded code on any write, so there is nothing to
  flush; the request is counted and the last page kept.  Reads return 0.
* 0xE8-0xEB: the same latch through a byte-wide port (QEMU splits wider
  accesses into bytes, which comes to the same thing).
* 0x2000+n (n < 24): OUT 1 raises ISA/GSI line n, OUT 0 lowers it,
  delivered through the interrupt-controller actors like any device's line
  (so line 0 reaches IOAPIC pin 2 through the MADT's IRQ0 -> GSI2 override,
  as QEMU's does).  A read returns the level the guest last wrote (QEMU
  returns 0; reading back the level is harmless and helps tests).

And 64 KiB of plain memory behind MMIO at 0xFF000000 ("iomem"): reads
return what was written, little-endian, any width.
"""

from __future__ import annotations

from typing import Any, Callable

from bhive.actors.base import IrqLine, NullIrqLine, no_log
from bhive.actors.host import DeviceHost

IOPORT = 0xE0  # 4-byte latch
FLUSH = 0xE4  # 4-byte write: flush a guest page
IOPORT_BYTE = 0xE8  # the latch again, byte by byte
LEGACY_PORTS = (IOPORT, 12)  # 0xE0-0xEB: the three 4-port regions above
IRQ_BASE = 0x2000  # 0x2000 + n drives line n
NUM_LINES = 24  # ports 0x2000 .. 0x2017
IOMEM_BASE = 0xFF000000
IOMEM_SIZE = 0x10000
IOMEM_PAGE = 0x1000  # iomem is kept (and committed) per page written
UNMAPPED_READ = 0xFF


class TestDev:
    """Wiring: lines[n] (IrqLine) for n in 0..23, log(event, **fields).

    `read`/`write` take absolute I/O port numbers; `mmio_read`/`mmio_write`
    take the offset inside the iomem window."""

    __test__ = False  # not a pytest class

    def __init__(self, lines: list[IrqLine] | None = None, log: Callable[..., None] = no_log,
                 irq_base: int = IRQ_BASE) -> None:
        self.lines = list(lines) if lines is not None else [NullIrqLine() for _ in range(NUM_LINES)]
        self.log = log
        self.irq_base = irq_base
        self.levels = 0  # bit n: line n raised
        self.latch = 0  # the 4-byte latch behind 0xE0 and 0xE8
        self.flushes = 0
        self.last_flush = 0
        self.iomem: dict[int, bytearray] = {}  # page index -> its 4 KiB

    # --- I/O ports ------------------------------------------------------
    def read(self, port: int, size: int) -> int:
        if IOPORT <= port < IOPORT + 4 or IOPORT_BYTE <= port < IOPORT_BYTE + 4:
            if port % size:
                self.log("testdev_unaligned_read", port=port, size=size)
                return (1 << (8 * size)) - 1
            shift = 8 * (port & 3)
            return (self.latch >> shift) & ((1 << (8 * size)) - 1)
        if FLUSH <= port < FLUSH + 4:
            return 0
        line = port - self.irq_base
        if 0 <= line < NUM_LINES:
            return (self.levels >> line) & 1
        self.log("testdev_bad_read", port=port)
        return (1 << (8 * size)) - 1

    def write(self, port: int, size: int, value: int) -> None:
        if IOPORT <= port < IOPORT + 4 or IOPORT_BYTE <= port < IOPORT_BYTE + 4:
            if port % size:
                self.log("testdev_unaligned_write", port=port, size=size, value=value)
                return
            shift = 8 * (port & 3)
            mask = (((1 << (8 * size)) - 1) << shift) & 0xFFFFFFFF
            self.latch = (self.latch & ~mask) | ((value << shift) & mask)
            return
        if port == FLUSH and size == 4:
            self.flushes += 1
            self.last_flush = value & ~0xFFF
            self.log("testdev_flush_page", page=self.last_flush)
            return
        line = port - self.irq_base
        if 0 <= line < NUM_LINES:
            level = bool(value & ((1 << (8 * size)) - 1))
            if level:
                self.levels |= 1 << line
            else:
                self.levels &= ~(1 << line)
            self.lines[line].set_level(level)
            return
        self.log("testdev_bad_write", port=port, size=size, value=value)

    # --- iomem ------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        if not 0 <= offset <= IOMEM_SIZE - size:
            self.log("testdev_bad_mmio_read", offset=offset, size=size)
            return (1 << (8 * size)) - 1
        value = 0
        for i in range(size):
            page = self.iomem.get((offset + i) // IOMEM_PAGE)
            byte = page[(offset + i) % IOMEM_PAGE] if page is not None else 0
            value |= byte << (8 * i)
        return value

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if not 0 <= offset <= IOMEM_SIZE - size:
            self.log("testdev_bad_mmio_write", offset=offset, size=size)
            return
        for i in range(size):
            page = self.iomem.setdefault((offset + i) // IOMEM_PAGE, bytearray(IOMEM_PAGE))
            page[(offset + i) % IOMEM_PAGE] = (value >> (8 * i)) & 0xFF

    # --- snapshot -----------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"levels": self.levels, "latch": self.latch, "flushes": self.flushes,
                "last_flush": self.last_flush,
                "iomem": [[index, bytes(page)] for index, page in sorted(self.iomem.items())]}

    @classmethod
    def from_state(cls, state: dict[str, Any], lines=None, log: Callable[..., None] = no_log,
                   irq_base: int = IRQ_BASE) -> "TestDev":
        dev = cls(lines, log, irq_base)
        dev.levels = state["levels"]
        dev.latch = state.get("latch", 0)
        dev.flushes = state.get("flushes", 0)
        dev.last_flush = state.get("last_flush", 0)
        dev.iomem = {index: bytearray(page) for index, page in state.get("iomem", [])}
        return dev


# --- the actor: the model hosted in its own process ---------------------------


class TestDevHost(DeviceHost):
    """pc-testdev: IRQ lines at `port`+n, the latch/flush ports at
    0xE0-0xEB, and the 64 KiB iomem window at `mmio`."""

    def setup(self) -> None:
        self.irqs = [self.connect_irq(n) for n in range(NUM_LINES)]

    def model_args(self) -> dict:
        return {"lines": self.irqs, "irq_base": self.port_base, "log": self.log}

    def port_target(self, port):
        return self.model, port  # the model decodes its two port ranges itself

    def mmio(self, gpa, size, is_write, data):
        if is_write:
            self.model.mmio_write(gpa - self.mmio_base, size, data)
            return 0
        return self.model.mmio_read(gpa - self.mmio_base, size)
