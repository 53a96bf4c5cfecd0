"""I/O APIC: Intel 82093AA register set, version 0x20 (with an EOI register).

References: Intel 82093AA I/O APIC datasheet (order 290566-001), section
3.2 for the indirect registers and 3.2.4 for the redirection table; Intel
SDM vol. 3, 10.11 for the MSI address/data format.

Every delivery becomes an MSI built from the redirection entry as it is at
that moment.  Nothing about a pin's destination is ever cached: a guest that
moves an IRQ to another CPU (irqbalance, CPU hot-unplug) must see the very
next interrupt go there.

`set_irq(pin, level)` takes the logical assertion; the RTE polarity bit is
stored and read back but not applied, as in QEMU and bhyve's vioapic: the
host's devices assert logically and the MADT tells the guest the polarity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from bhive.actors.base import (MSI_ADDR_BASE, MSI_ADDR_DEST_LOGICAL, MSI_ADDR_DEST_SHIFT,
                               MSI_ADDR_REDIRECTION_HINT, MSI_DATA_DELIVERY_MODE_SHIFT, MSI_DATA_LEVEL_ASSERT,
                               MSI_DATA_TRIGGER_LEVEL, MsiSender, no_log)
from bhive.actors.host import DeviceHost
from bhive.actors.interrupts import LineInputs, isa_to_gsi
from bhive.bus import schema
from bhive.bus.schema import PicOutput

MMIO_BASE = 0xFEC00000  # where a PC puts the first IOAPIC (82093AA datasheet, 3.0)

# MMIO offsets from MMIO_BASE.
IOREGSEL = 0x00  # index of the register IOWIN reaches
IOWIN = 0x10  # 32-bit window onto the selected register
EOI = 0x40  # version 0x20: writing a vector acts like a LAPIC EOI broadcast
MMIO_SIZE = 0x100  # the decoded window (the PC reserves 4 KiB)

# Indirect registers (selected by IOREGSEL).
REG_ID = 0x00  # bits 24-27: the IOAPIC's APIC ID
REG_VER = 0x01  # bits 0-7 version, bits 16-23 max redirection entry
REG_ARB = 0x02  # bits 24-27: arbitration ID (mirrors ID on a write of ID)
REG_REDTBL = 0x10  # RTE n at 0x10 + 2n (low dword) and 0x11 + 2n (high)

NUM_PINS = 24  # like QEMU's and bhyve's
VERSION = 0x20  # QEMU's default: has the EOI register
ID_SHIFT = 24  # ID/ARB field position
ID_MASK = 0x0F  # 4-bit APIC ID

# Redirection-table entry bits (82093AA section 3.2.4).
RTE_VECTOR = 0xFF  # bits 0-7
RTE_DELIVERY_MODE_SHIFT = 8  # bits 8-10: fixed, lowest priority, SMI, NMI, INIT, ExtINT
RTE_DELIVERY_MODE_MASK = 0x7
RTE_DEST_LOGICAL = 1 << 11  # destination mode: 1 = logical
RTE_DELIVERY_STATUS = 1 << 12  # read-only; always idle here (delivery is immediate)
RTE_POLARITY_LOW = 1 << 13  # active-low input (stored, not applied)
RTE_REMOTE_IRR = 1 << 14  # read-only; level interrupt accepted, awaiting EOI
RTE_TRIGGER_LEVEL = 1 << 15  # 1 = level triggered
RTE_MASKED = 1 << 16  # interrupt mask
RTE_DEST_SHIFT = 56  # bits 56-63: destination APIC ID or logical set
RTE_RESET = RTE_MASKED  # all pins masked at reset
RTE_WRITABLE_LOW = 0x1FFFF & ~(RTE_DELIVERY_STATUS | RTE_REMOTE_IRR)  # bits 17-31 reserved
RTE_WRITABLE_HIGH = 0xFF000000  # bits 32-55 reserved

DELIVERY_FIXED = 0  # delivery modes used by tests and the host
DELIVERY_LOWEST = 1
DELIVERY_NMI = 4
DELIVERY_EXTINT = 7

class _NoMsi:
    def send_msi(self, addr: int, data: int, pin: int = -1) -> None:
        pass


def rte_to_msi(rte: int) -> tuple[int, int]:
    """The MSI (address, data) an RTE sends; read afresh on every delivery."""
    dest = (rte >> RTE_DEST_SHIFT) & 0xFF
    addr = MSI_ADDR_BASE | (dest << MSI_ADDR_DEST_SHIFT)
    if rte & RTE_DEST_LOGICAL:
        addr |= MSI_ADDR_DEST_LOGICAL | MSI_ADDR_REDIRECTION_HINT
    data = rte & RTE_VECTOR
    data |= ((rte >> RTE_DELIVERY_MODE_SHIFT) & RTE_DELIVERY_MODE_MASK) << MSI_DATA_DELIVERY_MODE_SHIFT
    if rte & RTE_TRIGGER_LEVEL:
        data |= MSI_DATA_TRIGGER_LEVEL | MSI_DATA_LEVEL_ASSERT
    return addr, data


@dataclass
class IoApicRegisters:
    """IOREGSEL, the ID, the redirection table and the pin input levels."""

    ioregsel: int = 0
    id: int = 0
    rtes: list[int] = field(default_factory=lambda: [RTE_RESET] * NUM_PINS)
    input_levels: int = 0  # bit n: pin n asserted


class IoApic:
    """Wiring: msi (MsiSender) for deliveries, log(event, **fields).
    Host side: set_irq(pin, level) for device lines, eoi(vector) for the
    LAPIC EOI broadcast of level-triggered vectors."""

    def __init__(
        self,
        msi: MsiSender | None = None,
        apic_id: int = 0,
        log: Callable[..., None] = no_log,
    ) -> None:
        self.msi = msi if msi is not None else _NoMsi()
        self.log = log
        self.regs = IoApicRegisters(id=apic_id & ID_MASK)

    # --- guest accesses -------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4) or offset % size:
            self.log("ioapic_bad_access", op="read", offset=offset, size=size)
            return 0
        mask = (1 << (8 * size)) - 1
        if IOREGSEL <= offset < IOREGSEL + 4:
            return (self.regs.ioregsel >> (8 * (offset - IOREGSEL))) & mask
        if IOWIN <= offset < IOWIN + 4:
            if size != 4:
                self.log("ioapic_narrow_iowin", op="read", size=size)
            return (self._read_indirect(self.regs.ioregsel) >> (8 * (offset - IOWIN))) & mask
        if EOI <= offset < EOI + 4:
            return 0  # write-only
        self.log("ioapic_unknown_read", offset=offset)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, 4) or offset % size:
            self.log("ioapic_bad_access", op="write", offset=offset, size=size, value=value)
            return
        mask = (1 << (8 * size)) - 1
        value &= mask
        if offset == IOREGSEL:
            self.regs.ioregsel = value & 0xFF  # an 8-bit register
        elif IOREGSEL < offset < IOREGSEL + 4:
            pass  # the upper bytes of IOREGSEL are reserved
        elif IOWIN <= offset < IOWIN + 4:
            if size != 4:
                self.log("ioapic_narrow_iowin", op="write", size=size)
            shift = 8 * (offset - IOWIN)
            index = self.regs.ioregsel
            old = self._read_indirect(index)
            self._write_indirect(index, (old & ~(mask << shift)) | (value << shift))
        elif offset == EOI:
            self.eoi(value & 0xFF)
        else:
            self.log("ioapic_unknown_write", offset=offset, value=value)

    def _read_indirect(self, index: int) -> int:
        r = self.regs
        if index == REG_ID:
            return r.id << ID_SHIFT
        if index == REG_VER:
            return VERSION | ((NUM_PINS - 1) << 16)
        if index == REG_ARB:
            return r.id << ID_SHIFT
        pin, high = self._rte_index(index)
        if pin is None:
            self.log("ioapic_unknown_register", op="read", index=index)
            return 0
        return (r.rtes[pin] >> 32) if high else (r.rtes[pin] & 0xFFFFFFFF)

    def _write_indirect(self, index: int, value: int) -> None:
        r = self.regs
        if index == REG_ID:
            r.id = (value >> ID_SHIFT) & ID_MASK
            return
        if index in (REG_VER, REG_ARB):
            self.log("ioapic_write_read_only", index=index, value=value)
            return
        pin, high = self._rte_index(index)
        if pin is None:
            self.log("ioapic_unknown_register", op="write", index=index, value=value)
            return
        old = r.rtes[pin]
        if high:
            rte = (old & 0xFFFFFFFF) | ((value & RTE_WRITABLE_HIGH) << 32)
        else:
            read_only = RTE_DELIVERY_STATUS | RTE_REMOTE_IRR
            rte = (old & ~0xFFFFFFFF) | (old & read_only) | (value & RTE_WRITABLE_LOW)
            if not rte & RTE_TRIGGER_LEVEL:
                # Remote IRR has no meaning for edge pins; a pin switched
                # to edge must not stay blocked (QEMU does the same).
                rte &= ~RTE_REMOTE_IRR
        r.rtes[pin] = rte
        # An unmasked level pin that is asserted is delivered now; edges
        # that arrived while masked are gone, as on the 82093AA.
        if rte & RTE_TRIGGER_LEVEL:
            self._service_level(pin)

    @staticmethod
    def _rte_index(index: int) -> tuple[int | None, bool]:
        if REG_REDTBL <= index < REG_REDTBL + 2 * NUM_PINS:
            return (index - REG_REDTBL) // 2, bool((index - REG_REDTBL) & 1)
        return None, False

    # --- host side ------------------------------------------------------

    def set_irq(self, pin: int, level: bool) -> None:
        r = self.regs
        if not 0 <= pin < NUM_PINS:
            self.log("ioapic_bad_pin", pin=pin)
            return
        bit = 1 << pin
        was = bool(r.input_levels & bit)
        if level:
            r.input_levels |= bit
        else:
            r.input_levels &= ~bit
        rte = r.rtes[pin]
        if rte & RTE_TRIGGER_LEVEL:
            self._service_level(pin)
        elif level and not was and not rte & RTE_MASKED:
            self._deliver(pin)

    def irq_line(self, pin: int) -> "IoApicIrqLine":
        """An IrqLine driving `pin`, for in-process wiring."""
        return IoApicIrqLine(self, pin)

    def eoi(self, vector: int) -> None:
        """A LAPIC EOI for `vector` (broadcast, or written to EOI): clear
        remote IRR of the level pins using it, re-delivering those whose
        line is still asserted."""
        r = self.regs
        for pin in range(NUM_PINS):
            rte = r.rtes[pin]
            if rte & RTE_VECTOR == vector and rte & RTE_REMOTE_IRR:
                r.rtes[pin] = rte & ~RTE_REMOTE_IRR
                self._service_level(pin)

    # --- internals ------------------------------------------------------

    def _service_level(self, pin: int) -> None:
        r = self.regs
        rte = r.rtes[pin]
        if (
            r.input_levels & (1 << pin)
            and rte & RTE_TRIGGER_LEVEL
            and not rte & (RTE_MASKED | RTE_REMOTE_IRR)
        ):
            r.rtes[pin] = rte | RTE_REMOTE_IRR
            self._deliver(pin)

    def _deliver(self, pin: int) -> None:
        addr, data = rte_to_msi(self.regs.rtes[pin])
        self.msi.send_msi(addr, data, pin)

    # --- snapshot -------------------------------------------------------

    def state(self) -> dict[str, Any]:
        r = self.regs
        return {
            "ioregsel": r.ioregsel,
            "id": r.id,
            "rtes": list(r.rtes),
            "input_levels": r.input_levels,
        }

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        msi: MsiSender | None = None,
        log: Callable[..., None] = no_log,
    ) -> "IoApic":
        """Rebuild without delivering: remote IRR records what is in flight."""
        dev = cls(msi=msi, log=log)
        dev.regs = IoApicRegisters(
            ioregsel=state["ioregsel"],
            id=state["id"],
            rtes=list(state["rtes"]),
            input_levels=state["input_levels"],
        )
        return dev


class IoApicIrqLine:
    """IrqLine adapter: one IOAPIC input pin."""

    def __init__(self, ioapic: IoApic, pin: int) -> None:
        self.ioapic = ioapic
        self.pin = pin

    def set_level(self, asserted: bool) -> None:
        self.ioapic.set_irq(self.pin, asserted)


# --- the actor: the model hosted in its own process ---------------------------


class IoApicHost(DeviceHost):
    """The I/O APIC actor: GSI lines in, MSIs out to the vCPU processes.

    Every delivery is built from the RTE as it is at that moment (the
    model never caches a destination: seed bug #5).  Each asserted line is
    serviced when its message arrives, whatever other lines do (no
    lowest-pin-wins loop: seed bug #6).  Sends never block (seed bug #7).
    While every RTE is masked it tells the PIC actors to deliver instead
    (`PicOutput`), as the PC's ExtINT wiring does.
    """

    def setup(self) -> None:
        self.connect_msi("ioapic")
        self.inputs = LineInputs()
        self.pic_enabled = True
        self.pic_socks = []
        for dev in self.vm.devices.values():
            if dev.type == "pic":
                sock = self.runtime.ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDHWM, 100)
                sock.connect(self.runtime.rundir.endpoint(dev.name))
                self.pic_socks.append(sock)

    def model_args(self) -> dict:
        return {"msi": self.msi_out, "log": self.log}

    def reset_args(self) -> dict:
        return {"apic_id": self.cfg.options["id"]}

    def mmio(self, gpa, size, is_write, data):
        offset = gpa - self.mmio_base
        if not 0 <= offset < MMIO_SIZE:
            self.log("ioapic-unclaimed-offset", offset=offset, write=is_write)
            return 0
        if is_write:
            self.model.write(offset, size, data)
            self._update_pic_output()
            return 0
        return self.model.read(offset, size)

    def irq_input(self, source, line, level):
        gsi = isa_to_gsi(line) if line < 16 else line
        self.model.set_irq(gsi, self.inputs.set(source, gsi, level))

    def eoi(self, vector: int) -> int:
        self.model.eoi(vector & 0xFF)
        return 1

    def _update_pic_output(self, force: bool = False) -> None:
        """The PIC delivers ExtINT only while every RTE is masked."""
        enabled = all(rte & RTE_MASKED for rte in self.model.regs.rtes)
        if enabled == self.pic_enabled and not force:
            return
        self.pic_enabled = enabled
        raw = schema.encode(PicOutput(self.runtime.role, enabled))
        for sock in self.pic_socks:
            try:
                sock.send(raw, zmq.NOBLOCK)
            except zmq.Again:
                self.log("pic-output-dropped", enabled=enabled)

    def state(self):
        return {**super().state(), "inputs": self.inputs.levels, "pic_enabled": self.pic_enabled}

    def restore(self, state):
        super().restore(state)
        self.inputs.levels = dict(state["inputs"])
        self.pic_enabled = state["pic_enabled"]
        self._update_pic_output(force=True)
