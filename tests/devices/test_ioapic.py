"""IoApic: indirect registers, RTE semantics, MSI encoding, remote IRR."""

from __future__ import annotations

import msgpack
import pytest

from bhive.actors.ioapic import (
    DELIVERY_LOWEST,
    DELIVERY_NMI,
    EOI,
    IOREGSEL,
    IOWIN,
    NUM_PINS,
    REG_ARB,
    REG_ID,
    REG_REDTBL,
    REG_VER,
    RTE_DEST_LOGICAL,
    RTE_MASKED,
    RTE_POLARITY_LOW,
    RTE_REMOTE_IRR,
    RTE_TRIGGER_LEVEL,
    IoApic,
)


class Msi:
    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []
        self.pins: list[int] = []    # the pin each MSI was sent for

    def send_msi(self, addr: int, data: int, pin: int = -1) -> None:
        self.sent.append((addr, data))
        self.pins.append(pin)

    def take(self) -> list[tuple[int, int]]:
        out, self.sent[:] = list(self.sent), []
        return out


class Rig:
    def __init__(self) -> None:
        self.msi = Msi()
        self.events: list[str] = []
        self.ioapic = IoApic(msi=self.msi, log=lambda e, **f: self.events.append(e))

    def reg_read(self, index: int) -> int:
        self.ioapic.write(IOREGSEL, 4, index)
        return self.ioapic.read(IOWIN, 4)

    def reg_write(self, index: int, value: int) -> None:
        self.ioapic.write(IOREGSEL, 4, index)
        self.ioapic.write(IOWIN, 4, value)

    def program(self, pin: int, low: int, dest: int = 0) -> None:
        self.reg_write(REG_REDTBL + 2 * pin + 1, dest << 24)
        self.reg_write(REG_REDTBL + 2 * pin, low)

    def rte_low(self, pin: int) -> int:
        return self.reg_read(REG_REDTBL + 2 * pin)


@pytest.fixture
def rig() -> Rig:
    return Rig()


def fixed_msi(vector: int, dest: int = 0, level: bool = False) -> tuple[int, int]:
    data = vector | ((1 << 15 | 1 << 14) if level else 0)
    return 0xFEE00000 | dest << 12, data


def test_reset_values(rig):
    assert rig.reg_read(REG_ID) == 0
    assert rig.reg_read(REG_VER) == 0x00170020  # 24 entries, version 0x20
    assert rig.reg_read(REG_ARB) == 0
    for pin in range(NUM_PINS):
        assert rig.rte_low(pin) == RTE_MASKED
        assert rig.reg_read(REG_REDTBL + 2 * pin + 1) == 0


def test_ioregsel_reads_back(rig):
    rig.ioapic.write(IOREGSEL, 4, 0x1234)
    assert rig.ioapic.read(IOREGSEL, 4) == 0x34  # 8-bit register


def test_id_register_and_arb(rig):
    rig.reg_write(REG_ID, 0x0F00_0000 | 0xFFFF)
    assert rig.reg_read(REG_ID) == 0x0F00_0000
    assert rig.reg_read(REG_ARB) == 0x0F00_0000
    rig.reg_write(REG_VER, 0)
    assert rig.reg_read(REG_VER) == 0x00170020
    assert IoApic(apic_id=2).state()["id"] == 2


def test_rte_reserved_and_read_only_bits(rig):
    rig.reg_write(REG_REDTBL, 0xFFFF_FFFF)
    assert rig.rte_low(0) == 0x1_AFFF  # delivery status, remote IRR, 17-31 read 0
    rig.reg_write(REG_REDTBL + 1, 0xFFFF_FFFF)
    assert rig.reg_read(REG_REDTBL + 1) == 0xFF00_0000


def test_masked_pin_does_not_deliver(rig):
    rig.ioapic.set_irq(4, True)
    assert rig.msi.sent == []


def test_each_delivery_names_the_pin_that_caused_it(rig):
    """The MSI sender is told the pin (the host counts deliveries per pin
    for `bhive stats`), without it being part of the message."""
    rig.program(4, 0x31)
    rig.program(9, 0x31)
    rig.ioapic.set_irq(9, True)
    rig.ioapic.set_irq(4, True)
    assert rig.msi.take() == [fixed_msi(0x31), fixed_msi(0x31)]
    assert rig.msi.pins == [9, 4]


def test_edge_delivery_on_rising_edge_only(rig):
    rig.program(4, 0x31, dest=1)
    rig.ioapic.set_irq(4, True)
    rig.ioapic.set_irq(4, True)  # no edge
    rig.ioapic.set_irq(4, False)
    rig.ioapic.set_irq(4, True)
    assert rig.msi.take() == [fixed_msi(0x31, dest=1)] * 2


def test_edge_while_masked_is_lost(rig):
    rig.program(4, 0x31 | RTE_MASKED)
    rig.ioapic.set_irq(4, True)
    rig.ioapic.set_irq(4, False)
    rig.program(4, 0x31)
    assert rig.msi.take() == []
    rig.ioapic.set_irq(4, True)  # even held high across the unmask: no edge on unmask
    rig.program(4, 0x31 | RTE_MASKED)
    rig.program(4, 0x31)
    assert rig.msi.take() == [fixed_msi(0x31)]


def test_destination_reread_on_every_delivery(rig):
    # The seed bug: an IRQ hard-wired to the BSP.  Retargeting must take
    # effect on the very next interrupt.
    rig.program(9, 0x41, dest=0)
    rig.ioapic.set_irq(9, True)
    rig.ioapic.set_irq(9, False)
    rig.reg_write(REG_REDTBL + 2 * 9 + 1, 3 << 24)
    rig.ioapic.set_irq(9, True)
    rig.ioapic.set_irq(9, False)
    rig.reg_write(REG_REDTBL + 2 * 9, 0x42)
    rig.ioapic.set_irq(9, True)
    assert rig.msi.take() == [fixed_msi(0x41, 0), fixed_msi(0x41, 3), fixed_msi(0x42, 3)]


def test_msi_encoding_logical_lowest_priority(rig):
    rig.program(5, 0x55 | RTE_DEST_LOGICAL | DELIVERY_LOWEST << 8, dest=0x0F)
    rig.ioapic.set_irq(5, True)
    # DM and RH both set: bhyve's vm_lapic_msi needs RH to read dest as logical.
    assert rig.msi.take() == [(0xFEE0_F00C, 0x155)]


def test_msi_encoding_nmi(rig):
    rig.program(6, DELIVERY_NMI << 8, dest=2)
    rig.ioapic.set_irq(6, True)
    assert rig.msi.take() == [(0xFEE0_2000, 0x400)]


def test_polarity_is_stored_not_applied(rig):
    rig.program(7, 0x27 | RTE_POLARITY_LOW)
    assert rig.rte_low(7) & RTE_POLARITY_LOW
    rig.ioapic.set_irq(7, True)
    assert rig.msi.take() == [fixed_msi(0x27)]


def test_level_remote_irr_blocks_until_eoi(rig):
    rig.program(10, 0x61 | RTE_TRIGGER_LEVEL, dest=1)
    rig.ioapic.set_irq(10, True)
    assert rig.msi.take() == [fixed_msi(0x61, 1, level=True)]
    assert rig.rte_low(10) & RTE_REMOTE_IRR
    rig.ioapic.set_irq(10, False)
    rig.ioapic.set_irq(10, True)  # remote IRR still set: no delivery
    assert rig.msi.take() == []
    rig.ioapic.eoi(0x61)
    assert rig.msi.take() == [fixed_msi(0x61, 1, level=True)]  # still asserted
    rig.ioapic.set_irq(10, False)
    rig.ioapic.eoi(0x61)
    assert not rig.rte_low(10) & RTE_REMOTE_IRR
    assert rig.msi.take() == []


def test_eoi_register(rig):
    rig.program(10, 0x61 | RTE_TRIGGER_LEVEL)
    rig.ioapic.set_irq(10, True)
    rig.msi.take()
    rig.ioapic.write(EOI, 4, 0x61)
    assert rig.msi.take() == [fixed_msi(0x61, level=True)]


def test_eoi_other_vector_does_nothing(rig):
    rig.program(10, 0x61 | RTE_TRIGGER_LEVEL)
    rig.ioapic.set_irq(10, True)
    rig.msi.take()
    rig.ioapic.eoi(0x62)
    assert rig.rte_low(10) & RTE_REMOTE_IRR
    assert rig.msi.take() == []


def test_eoi_redelivers_with_current_destination(rig):
    rig.program(10, 0x61 | RTE_TRIGGER_LEVEL, dest=0)
    rig.ioapic.set_irq(10, True)
    rig.reg_write(REG_REDTBL + 2 * 10 + 1, 5 << 24)
    rig.ioapic.eoi(0x61)
    assert rig.msi.take() == [fixed_msi(0x61, 0, True), fixed_msi(0x61, 5, True)]


def test_level_reevaluated_on_unmask(rig):
    rig.program(11, 0x71 | RTE_TRIGGER_LEVEL | RTE_MASKED)
    rig.ioapic.set_irq(11, True)
    assert rig.msi.take() == []
    rig.program(11, 0x71 | RTE_TRIGGER_LEVEL)
    assert rig.msi.take() == [fixed_msi(0x71, level=True)]


def test_level_deasserted_while_masked_not_delivered(rig):
    rig.program(11, 0x71 | RTE_TRIGGER_LEVEL | RTE_MASKED)
    rig.ioapic.set_irq(11, True)
    rig.ioapic.set_irq(11, False)
    rig.program(11, 0x71 | RTE_TRIGGER_LEVEL)
    assert rig.msi.take() == []


def test_rte_rewrite_keeps_remote_irr_and_edge_clears_it(rig):
    rig.program(12, 0x81 | RTE_TRIGGER_LEVEL)
    rig.ioapic.set_irq(12, True)
    rig.program(12, 0x82 | RTE_TRIGGER_LEVEL)  # guest cannot clear remote IRR
    assert rig.rte_low(12) & RTE_REMOTE_IRR
    assert len(rig.msi.take()) == 1
    rig.program(12, 0x82)  # switched to edge: remote IRR meaningless
    assert not rig.rte_low(12) & RTE_REMOTE_IRR


def test_narrow_iowin_access_merges_bytes(rig):
    rig.program(3, 0x1234 & 0x7FF, dest=0)
    rig.ioapic.write(IOREGSEL, 1, REG_REDTBL + 6)
    rig.ioapic.write(IOWIN + 2, 1, 0x00)  # unmask: clear byte 2
    assert rig.ioapic.read(IOWIN, 4) == 0x234
    assert rig.ioapic.read(IOWIN + 1, 1) == 0x02
    assert "ioapic_narrow_iowin" in rig.events


def test_garbage(rig):
    assert rig.ioapic.read(0x20, 4) == 0
    rig.ioapic.write(0x20, 4, 1)
    assert rig.ioapic.read(IOWIN + 1, 2) == 0  # misaligned
    assert rig.reg_read(0x50) == 0  # past the redirection table
    rig.reg_write(0x50, 1)
    rig.ioapic.set_irq(24, True)
    rig.ioapic.set_irq(-1, True)
    assert rig.msi.sent == []
    for event in ("ioapic_unknown_read", "ioapic_unknown_write", "ioapic_bad_access",
                  "ioapic_unknown_register", "ioapic_bad_pin"):
        assert event in rig.events


def test_state_round_trip(rig):
    rig.reg_write(REG_ID, 3 << 24)
    rig.program(10, 0x61 | RTE_TRIGGER_LEVEL, dest=2)
    rig.program(4, 0x31 | RTE_DEST_LOGICAL, dest=0x80)
    rig.ioapic.set_irq(10, True)
    rig.ioapic.write(IOREGSEL, 4, REG_REDTBL + 2 * 10 + 1)
    rig.msi.take()
    state = msgpack.unpackb(msgpack.packb(rig.ioapic.state()))
    msi = Msi()
    twin = IoApic.from_state(state, msi=msi)
    assert twin.state() == rig.ioapic.state()
    assert msi.sent == []
    for dev in (rig.ioapic, twin):
        dev.eoi(0x61)
        dev.set_irq(4, True)
    assert msi.sent == rig.msi.sent and len(msi.sent) == 2
    assert twin.read(IOWIN, 4) == rig.ioapic.read(IOWIN, 4) == 0x0200_0000


def test_irq_line_adapter(rig):
    rig.program(2, 0x30)
    line = rig.ioapic.irq_line(2)
    line.set_level(True)
    assert rig.msi.take() == [fixed_msi(0x30)]
