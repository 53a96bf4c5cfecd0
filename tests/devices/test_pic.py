"""DualPic and Elcr: initialization, priorities, EOI, cascade, delivery."""

from __future__ import annotations

import msgpack
import pytest

from bhive.actors.pic import (
    COMMAND,
    DATA,
    ELCR_MASTER,
    ELCR_SLAVE,
    ICW1_IC4,
    ICW1_INIT,
    ICW4_8086,
    ICW4_AEOI,
    OCW2_NONSPECIFIC_EOI,
    OCW2_ROTATE_NONSPECIFIC_EOI,
    OCW2_SET_PRIORITY,
    OCW2_SPECIFIC_EOI,
    OCW3_ESMM,
    OCW3_POLL,
    OCW3_RIS,
    OCW3_RR,
    OCW3_SELECT,
    OCW3_SMM,
    POLL_INTERRUPT,
    DualPic,
    Elcr,
)


class Rig:
    def __init__(self) -> None:
        self.vectors: list[int] = []
        self.events: list[str] = []
        self.pic = DualPic(deliver_extint=self.vectors.append, log=self.log)
        self.elcr = Elcr(self.pic, log=self.log)

    def log(self, event: str, **fields) -> None:
        self.events.append(event)

    def take(self) -> list[int]:
        out, self.vectors[:] = list(self.vectors), []
        return out

    def eoi_master(self) -> None:
        self.pic.master_io.write(COMMAND, 1, OCW2_NONSPECIFIC_EOI)

    def eoi_slave(self) -> None:
        self.pic.slave_io.write(COMMAND, 1, OCW2_NONSPECIFIC_EOI)

    def pulse(self, line: int) -> None:
        self.pic.set_irq(line, True)
        self.pic.set_irq(line, False)


@pytest.fixture
def rig() -> Rig:
    r = Rig()
    r.pic.bios_setup(irq_mask=0)
    return r


def init_chip(io, base: int, icw3: int, icw4: int) -> None:
    io.write(COMMAND, 1, ICW1_INIT | ICW1_IC4)
    io.write(DATA, 1, base)
    io.write(DATA, 1, icw3)
    io.write(DATA, 1, icw4)


def test_reset_state_delivers_nothing():
    r = Rig()
    assert r.pic.master_io.read(DATA, 1) == 0
    assert r.pic.master_io.read(COMMAND, 1) == 0  # IRR
    assert r.pic.slave_io.read(DATA, 1) == 0


def test_bios_setup_vectors_and_default_mask():
    r = Rig()
    r.pic.bios_setup()
    assert r.pic.master_io.read(DATA, 1) == 0xFB
    assert r.pic.slave_io.read(DATA, 1) == 0xFF
    r.pic.master_io.write(DATA, 1, 0xFA)  # unmask IRQ0
    r.pulse(0)
    assert r.take() == [0x08]


def test_vectors_for_every_line(rig):
    for line in range(16):
        if line == 2:
            continue
        rig.pulse(line)
        if line >= 8:
            assert rig.take() == [0x70 + line - 8]
            rig.eoi_slave()
        else:
            assert rig.take() == [0x08 + line]
        rig.eoi_master()
        assert rig.take() == []


def test_ack_at_delivery_moves_irr_to_isr(rig):
    rig.pulse(3)
    assert rig.take() == [0x0B]
    io = rig.pic.master_io
    assert io.read(COMMAND, 1) == 0  # IRR cleared by the acknowledge
    io.write(COMMAND, 1, OCW3_SELECT | OCW3_RR | OCW3_RIS)
    assert io.read(COMMAND, 1) == 1 << 3  # ISR
    rig.eoi_master()
    assert io.read(COMMAND, 1) == 0


def test_lower_priority_waits_for_eoi(rig):
    rig.pulse(3)
    rig.pulse(5)
    assert rig.take() == [0x0B]
    rig.eoi_master()
    assert rig.take() == [0x0D]


def test_higher_priority_nests(rig):
    rig.pulse(5)
    rig.pulse(1)
    assert rig.take() == [0x0D, 0x09]


def test_equal_priority_does_not_nest(rig):
    rig.pulse(4)
    rig.pulse(4)
    assert rig.take() == [0x0C]
    rig.eoi_master()
    assert rig.take() == [0x0C]  # the second edge was latched in IRR


def test_masked_request_stays_in_irr(rig):
    io = rig.pic.master_io
    io.write(DATA, 1, 1 << 6)
    rig.pulse(6)
    assert rig.take() == []
    assert io.read(COMMAND, 1) == 1 << 6
    io.write(DATA, 1, 0)
    assert rig.take() == [0x0E]


def test_edge_needs_new_rising_edge(rig):
    rig.pic.set_irq(4, True)
    assert rig.take() == [0x0C]
    rig.eoi_master()
    rig.pic.set_irq(4, True)  # still high: no new edge
    assert rig.take() == []


def test_specific_eoi(rig):
    rig.pulse(5)
    rig.pulse(1)
    rig.take()
    rig.pic.master_io.write(COMMAND, 1, OCW2_SPECIFIC_EOI | 5)
    io = rig.pic.master_io
    io.write(COMMAND, 1, OCW3_SELECT | OCW3_RR | OCW3_RIS)
    assert io.read(COMMAND, 1) == 1 << 1


def test_nonspecific_eoi_clears_highest_priority(rig):
    rig.pulse(5)
    rig.pulse(1)
    rig.take()
    rig.eoi_master()
    io = rig.pic.master_io
    io.write(COMMAND, 1, OCW3_SELECT | OCW3_RR | OCW3_RIS)
    assert io.read(COMMAND, 1) == 1 << 5


def test_rotate_on_eoi_makes_served_level_lowest(rig):
    rig.pulse(1)
    rig.take()
    rig.pic.master_io.write(COMMAND, 1, OCW2_ROTATE_NONSPECIFIC_EOI)
    # Now IR2 is highest ... IR1 lowest: IR7 beats IR1.
    rig.pic.master_io.write(DATA, 1, 0xFF)
    rig.pulse(1)
    rig.pulse(7)
    rig.pic.master_io.write(DATA, 1, 0)
    assert rig.take() == [0x0F]


def test_set_priority(rig):
    rig.pic.master_io.write(COMMAND, 1, OCW2_SET_PRIORITY | 4)  # IR5 highest
    rig.pic.master_io.write(DATA, 1, 0xFF)
    rig.pulse(0)
    rig.pulse(5)
    rig.pic.master_io.write(DATA, 1, 0)
    assert rig.take() == [0x0D]


def test_auto_eoi_leaves_isr_clear(rig):
    init_chip(rig.pic.master_io, 0x20, 0x04, ICW4_8086 | ICW4_AEOI)
    rig.pulse(3)
    rig.pulse(5)  # not blocked: nothing in service
    assert rig.take() == [0x23, 0x25]
    io = rig.pic.master_io
    io.write(COMMAND, 1, OCW3_SELECT | OCW3_RR | OCW3_RIS)
    assert io.read(COMMAND, 1) == 0


def test_icw1_resets_mask_and_isr(rig):
    io = rig.pic.master_io
    io.write(DATA, 1, 0x55)
    rig.pulse(0)
    rig.take()
    init_chip(io, 0x50, 0x04, ICW4_8086)
    assert io.read(DATA, 1) == 0
    rig.pulse(0)
    assert rig.take() == [0x50]  # ISR was cleared, new base


def test_icw_without_icw4(rig):
    io = rig.pic.master_io
    io.write(COMMAND, 1, ICW1_INIT)  # no IC4
    io.write(DATA, 1, 0x30)
    io.write(DATA, 1, 0x04)
    io.write(DATA, 1, 0xFE)  # this is OCW1 now
    assert io.read(DATA, 1) == 0xFE


def test_poll_mode(rig):
    rig.pic.set_output_enabled(False)
    rig.pulse(6)
    io = rig.pic.master_io
    io.write(COMMAND, 1, OCW3_SELECT | OCW3_POLL)
    assert io.read(COMMAND, 1) == POLL_INTERRUPT | 6
    io.write(COMMAND, 1, OCW3_SELECT | OCW3_RR | OCW3_RIS)
    assert io.read(COMMAND, 1) == 1 << 6  # the poll acknowledged it
    io.write(COMMAND, 1, OCW3_SELECT | OCW3_POLL)
    assert io.read(COMMAND, 1) == 0  # nothing else pending


def test_output_disabled_holds_delivery(rig):
    rig.pic.set_output_enabled(False)
    rig.pulse(4)
    assert rig.take() == []
    assert rig.pic.intr()
    rig.pic.set_output_enabled(True)
    assert rig.take() == [0x0C]
    assert not rig.pic.intr()


def test_cascade_blocks_slave_until_master_eoi(rig):
    rig.pulse(12)
    assert rig.take() == [0x74]
    rig.eoi_slave()
    rig.pulse(9)  # slave free, but master IR2 still in service
    assert rig.take() == []
    rig.eoi_master()
    assert rig.take() == [0x71]


def test_slave_higher_priority_than_master_ir3(rig):
    rig.pulse(3)
    rig.pulse(8)  # via IR2: higher priority than IR3, nests
    assert rig.take() == [0x0B, 0x70]


def test_spurious_slave_irq():
    r = Rig()
    r.pic.bios_setup(irq_mask=0)
    r.pic.set_output_enabled(False)
    r.elcr.write(ELCR_SLAVE, 1, 1 << 3)  # IRQ11 level
    r.pic.set_irq(11, True)
    r.pic.set_irq(11, False)  # gone before "INTA"; master IR2 latched edge
    r.pic.set_output_enabled(True)
    assert r.take() == [0x77]
    assert "pic_spurious" in r.events


def test_level_triggered_redelivers_after_eoi_while_high(rig):
    rig.elcr.write(ELCR_MASTER, 1, 1 << 5)
    rig.pic.set_irq(5, True)
    assert rig.take() == [0x0D]
    rig.eoi_master()
    assert rig.take() == [0x0D]  # still asserted
    rig.pic.set_irq(5, False)
    rig.eoi_master()
    assert rig.take() == []


def test_level_request_withdrawn_before_delivery(rig):
    rig.elcr.write(ELCR_MASTER, 1, 1 << 5)
    rig.pic.set_output_enabled(False)
    rig.pic.set_irq(5, True)
    rig.pic.set_irq(5, False)
    rig.pic.set_output_enabled(True)
    assert rig.take() == []


def test_elcr_reserved_bits(rig):
    rig.elcr.write(ELCR_MASTER, 2, 0xFFFF)
    assert rig.elcr.read(ELCR_MASTER, 1) == 0xF8  # IRQ0-2 always edge
    assert rig.elcr.read(ELCR_SLAVE, 1) == 0xDE  # IRQ8 and IRQ13 always edge
    assert "elcr_reserved_bits" in rig.events


def test_special_mask_mode(rig):
    io = rig.pic.master_io
    rig.pulse(3)
    rig.take()
    rig.pulse(5)  # blocked by IR3 in service
    assert rig.take() == []
    io.write(DATA, 1, 1 << 3)  # mask IR3 ...
    io.write(COMMAND, 1, OCW3_SELECT | OCW3_ESMM | OCW3_SMM)  # ... and enter SMM
    assert rig.take() == [0x0D]


def test_garbage(rig):
    assert rig.pic.master_io.read(5, 1) == 0xFF
    rig.pic.master_io.write(5, 1, 0)
    rig.pic.set_irq(16, True)
    rig.pic.set_irq(2, True)
    assert rig.elcr.read(2, 1) == 0xFF
    rig.eoi_master()  # nothing in service
    assert rig.take() == []
    for event in ("pic_unknown_read", "pic_unknown_write", "pic_bad_irq", "pic_cascade_irq_driven",
                  "elcr_unknown_read", "pic_eoi_nothing_in_service"):
        assert event in rig.events


def test_state_round_trip(rig):
    rig.elcr.write(ELCR_MASTER, 1, 0x20)
    rig.pic.master_io.write(DATA, 1, 0x40)
    rig.pulse(3)
    rig.pulse(9)
    rig.pulse(6)  # masked
    rig.pulse(7)  # blocked behind IR3
    rig.take()
    state = msgpack.unpackb(msgpack.packb(rig.pic.state()))
    elcr_state = msgpack.unpackb(msgpack.packb(rig.elcr.state()))
    vectors: list[int] = []
    twin = DualPic.from_state(state, deliver_extint=vectors.append)
    Elcr.from_state(elcr_state, pic=twin)
    assert twin.state() == rig.pic.state()
    assert vectors == []  # rebuilding delivers nothing
    for pic, out in ((rig.pic, rig.vectors), (twin, vectors)):
        pic.slave_io.write(COMMAND, 1, OCW2_NONSPECIFIC_EOI)
        pic.master_io.write(COMMAND, 1, OCW2_NONSPECIFIC_EOI)
        pic.master_io.write(COMMAND, 1, OCW2_NONSPECIFIC_EOI)
    assert vectors == rig.vectors == [0x0F]


def test_no_delivery_mid_initialization(rig):
    io = rig.pic.master_io
    io.write(COMMAND, 1, ICW1_INIT | ICW1_IC4)
    rig.pulse(0)  # arrives between ICW1 and ICW2: the old base is stale
    assert rig.take() == []
    io.write(DATA, 1, 0x20)
    io.write(DATA, 1, 0x04)
    assert rig.take() == []
    io.write(DATA, 1, ICW4_8086)
    assert rig.take() == [0x20]


def test_irq_line_adapter(rig):
    line = rig.pic.irq_line(4)
    line.set_level(True)
    line.set_level(False)
    assert rig.take() == [0x0C]
