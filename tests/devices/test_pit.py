"""Pit8254 and port 0x61, against a fake clock."""

from __future__ import annotations

import msgpack
import pytest

from wiring import RecordingLine as Line

from bhive.actors.pit import (
    CONTROL,
    COUNTER0,
    COUNTER2,
    PORTB_GATE2,
    PORTB_OUT2,
    PORTB_REFRESH,
    PORTB_SPEAKER,
    STATUS_NULL_COUNT,
    STATUS_OUT,
    Pit8254,
    SystemControlPortB,
    ns_of_tick,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000_000  # not zero: load times are absolute

    def __call__(self) -> int:
        return self.now

    def ticks(self, n: int) -> None:
        """Advance to exactly n more PIT clocks after the current tick."""
        self.now = ns_of_tick(self.base, self.tick + n)
        self.tick += n

    def mark(self) -> None:
        self.base, self.tick = self.now, 0



class Rig:
    def __init__(self) -> None:
        self.clock = Clock()
        self.line = Line()
        self.events: list[str] = []
        self.pit = Pit8254(clock=self.clock, irq=self.line, log=lambda e, **f: self.events.append(e))
        self.portb = SystemControlPortB(self.pit, log=lambda e, **f: self.events.append(e))

    def program(self, channel: int, mode: int, count: int, access: int = 3) -> None:
        self.pit.write(CONTROL, 1, channel << 6 | access << 4 | mode << 1)
        self.clock.mark()
        if access in (1, 3):
            self.pit.write(channel, 1, count & 0xFF)
        if access in (2, 3):
            self.pit.write(channel, 1, count >> 8)

    def read16(self, channel: int) -> int:
        lo = self.pit.read(channel, 1)
        return lo | self.pit.read(channel, 1) << 8

    def latch(self, channel: int) -> int:
        self.pit.write(CONTROL, 1, channel << 6)
        return self.read16(channel)


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_mode0_counts_down_and_out_rises_at_terminal_count(rig):
    rig.program(0, 0, 1000)
    assert rig.latch(0) == 1000
    assert not rig.pit.out(0)
    rig.clock.ticks(400)
    assert rig.latch(0) == 600
    rig.clock.ticks(599)
    assert not rig.pit.out(0)
    rig.clock.ticks(1)
    assert rig.pit.out(0)
    rig.clock.ticks(5)
    assert rig.latch(0) == 0x10000 - 5  # wraps and keeps counting


def test_mode0_single_irq(rig):
    rig.program(0, 0, 1000)
    assert rig.pit.next_event_ns() == rig.clock.now + 1000 * 10**9 // 1_193_182 + 1
    rig.clock.ticks(999)
    assert rig.pit.advance(rig.clock.now) == 0
    assert rig.line.levels == []
    rig.clock.ticks(1)
    assert rig.pit.advance(rig.clock.now) == 1
    assert rig.line.levels == [True, False]
    assert rig.pit.next_event_ns() is None
    rig.clock.ticks(100_000)
    assert rig.pit.advance(rig.clock.now) == 0


def test_mode2_periodic_irq_and_count(rig):
    rig.program(0, 2, 100)
    rig.clock.ticks(30)
    assert rig.latch(0) == 70
    assert rig.pit.out(0)
    rig.clock.ticks(69)  # count 1: OUT low for one clock
    assert not rig.pit.out(0)
    first = rig.pit.next_event_ns()
    assert first == ns_of_tick(rig.clock.base, 100)
    rig.clock.ticks(1)
    assert rig.pit.out(0)
    assert rig.latch(0) == 100  # reloaded
    assert rig.pit.advance(rig.clock.now) == 1
    assert rig.pit.next_event_ns() == ns_of_tick(rig.clock.base, 200)
    rig.clock.ticks(100)
    assert rig.pit.advance(rig.clock.now) == 1
    assert rig.line.pulses == 2


def test_missed_periods_coalesce_into_one_pulse(rig):
    rig.program(0, 2, 100)
    rig.clock.ticks(1050)
    assert rig.pit.advance(rig.clock.now) == 10
    assert rig.line.pulses == 1
    assert "pit_ticks_coalesced" in rig.events
    assert rig.pit.next_event_ns() == ns_of_tick(rig.clock.base, 1100)


def test_mode3_square_wave(rig):
    rig.program(0, 3, 100)
    assert rig.pit.out(0)
    rig.clock.ticks(10)
    assert rig.latch(0) == 80  # decrements by two
    rig.clock.ticks(39)
    assert rig.pit.out(0)
    rig.clock.ticks(1)  # second half
    assert not rig.pit.out(0)
    rig.clock.ticks(50)
    assert rig.pit.out(0)
    assert rig.pit.advance(rig.clock.now) == 1


def test_count_zero_means_65536(rig):
    rig.program(0, 2, 0)
    assert rig.pit.next_event_ns() == ns_of_tick(rig.clock.base, 0x10000)
    rig.clock.ticks(1)
    assert rig.latch(0) == 0xFFFF


def test_reprogramming_restarts_irq_accounting(rig):
    rig.program(0, 2, 100)
    rig.clock.ticks(250)
    rig.pit.advance(rig.clock.now)
    rig.program(0, 2, 50)
    assert rig.pit.next_event_ns() == ns_of_tick(rig.clock.base, 50)
    rig.clock.ticks(50)
    assert rig.pit.advance(rig.clock.now) == 1


def test_control_word_stops_counter(rig):
    rig.program(0, 2, 100)
    rig.pit.write(CONTROL, 1, 0x34)  # channel 0, lohi, mode 2, no count yet
    assert rig.pit.next_event_ns() is None
    rig.clock.ticks(500)
    assert rig.pit.advance(rig.clock.now) == 0


def test_access_modes_lo_and_hi(rig):
    rig.program(0, 2, 0x34, access=1)
    rig.clock.ticks(4)
    assert rig.pit.read(0, 1) == 0x30
    assert rig.pit.read(0, 1) == 0x30  # LSB only, no flip-flop
    rig.program(0, 2, 0x1200, access=2)
    rig.clock.ticks(0x100)
    assert rig.pit.read(0, 1) == 0x11


def test_lohi_live_read_flip_flop(rig):
    rig.program(0, 2, 0x1234)
    assert rig.pit.read(0, 1) == 0x34
    assert rig.pit.read(0, 1) == 0x12
    assert rig.pit.read(0, 1) == 0x34


def test_latch_freezes_value_until_read(rig):
    rig.program(0, 2, 1000)
    rig.clock.ticks(100)
    rig.pit.write(CONTROL, 1, 0x00)
    rig.clock.ticks(100)
    rig.pit.write(CONTROL, 1, 0x00)  # second latch ignored while unread
    assert rig.read16(0) == 900
    assert rig.latch(0) == 800


def test_read_back_status_and_count(rig):
    rig.program(2, 0, 500)
    rig.portb.write(0, 1, PORTB_GATE2)
    rig.clock.mark()
    rig.clock.ticks(100)
    rig.pit.write(CONTROL, 1, 0xC0 | 1 << 3)  # latch count+status of channel 2
    status = rig.pit.read(COUNTER2, 1)
    assert status == 0x30  # lohi, mode 0, OUT low, count loaded
    assert rig.read16(COUNTER2) == 400
    rig.clock.ticks(400)
    rig.pit.write(CONTROL, 1, 0xC0 | 0x20 | 1 << 3)  # status only
    assert rig.pit.read(COUNTER2, 1) == STATUS_OUT | 0x30


def test_read_back_null_count(rig):
    rig.pit.write(CONTROL, 1, 0x34)
    rig.pit.write(CONTROL, 1, 0xE2)  # status of channel 0
    assert rig.pit.read(COUNTER0, 1) & STATUS_NULL_COUNT
    rig.pit.write(COUNTER0, 1, 10)
    rig.pit.write(COUNTER0, 1, 0)
    rig.pit.write(CONTROL, 1, 0xE2)
    assert not rig.pit.read(COUNTER0, 1) & STATUS_NULL_COUNT


def test_mode0_first_byte_stops_counting(rig):
    rig.program(0, 0, 1000)
    rig.pit.write(COUNTER0, 1, 0x10)  # LSB of a new count
    rig.clock.ticks(2000)
    assert not rig.pit.out(0)
    assert rig.pit.advance(rig.clock.now) == 0


def test_channel2_gate_and_out2_via_port_61(rig):
    # Linux's pit_calibrate_tsc: gate high, speaker off, mode 0, wait for OUT2.
    rig.portb.write(0, 1, PORTB_GATE2)
    rig.program(2, 0, 0xFFFF)
    assert not rig.portb.read(0, 1) & PORTB_OUT2
    rig.clock.ticks(0xFFFF)
    assert rig.portb.read(0, 1) & PORTB_OUT2


def test_gate_low_pauses_mode0(rig):
    rig.program(2, 0, 1000)  # gate 2 is low at reset: not counting
    rig.clock.ticks(500)
    assert rig.latch(2) == 1000
    rig.portb.write(0, 1, PORTB_GATE2)
    rig.clock.ticks(300)
    rig.portb.write(0, 1, 0)
    rig.clock.ticks(300)
    assert rig.latch(2) == 700
    rig.portb.write(0, 1, PORTB_GATE2)
    rig.clock.ticks(100)
    assert rig.latch(2) == 600


def test_gate_rising_reloads_mode2(rig):
    rig.portb.write(0, 1, PORTB_GATE2)
    rig.program(2, 2, 100)
    rig.clock.ticks(60)
    rig.portb.write(0, 1, 0)
    assert rig.pit.out(COUNTER2)  # gate low forces OUT high in mode 2
    rig.portb.write(0, 1, PORTB_GATE2)
    assert rig.latch(2) == 100


def test_port61_bits(rig):
    rig.portb.write(0, 1, 0xFF)
    first = rig.portb.read(0, 1)
    second = rig.portb.read(0, 1)
    assert first & 0x0F == 0x0F  # gate, speaker, check bits read back
    assert (first ^ second) & PORTB_REFRESH  # toggles on every read
    assert first & 0xC0 == 0  # no parity or IOCHK errors
    rig.portb.write(0, 1, PORTB_SPEAKER)
    assert rig.portb.read(0, 1) & 0x0F == PORTB_SPEAKER
    assert not rig.pit.regs.channels[COUNTER2].gate


def test_bcd_and_approximated_modes_logged(rig):
    rig.pit.write(CONTROL, 1, 0x31)  # BCD
    rig.pit.write(CONTROL, 1, 0x32)  # mode 1
    assert "pit_bcd_unsupported" in rig.events
    assert "pit_mode_approximated" in rig.events


def test_mode6_is_mode2(rig):
    rig.program(0, 6, 100)
    rig.clock.ticks(250)
    assert rig.pit.advance(rig.clock.now) == 2


def test_garbage(rig):
    assert rig.pit.read(CONTROL, 1) == 0xFF
    assert rig.pit.read(7, 1) == 0xFF
    rig.pit.write(7, 1, 1)
    assert rig.portb.read(1, 1) == 0xFF
    rig.portb.write(1, 1, PORTB_GATE2)
    assert not rig.pit.regs.channels[COUNTER2].gate
    for event in ("pit_read_control", "pit_unknown_read", "pit_unknown_write", "portb_bad_access"):
        assert event in rig.events


def test_state_round_trip(rig):
    rig.portb.write(0, 1, PORTB_GATE2 | PORTB_SPEAKER)
    rig.program(2, 3, 0x500)
    rig.program(0, 2, 1000)
    rig.clock.ticks(2500)
    rig.pit.advance(rig.clock.now)
    rig.pit.write(CONTROL, 1, 0x00)  # leave a latched count pending
    rig.pit.read(COUNTER0, 1)
    rig.portb.read(0, 1)
    state = msgpack.unpackb(msgpack.packb(rig.pit.state()))
    pb_state = msgpack.unpackb(msgpack.packb(rig.portb.state()))
    line = Line()
    twin = Pit8254.from_state(state, clock=rig.clock, irq=line)
    twin_pb = SystemControlPortB.from_state(pb_state, pit=twin)
    assert twin.state() == rig.pit.state()
    assert twin_pb.state() == rig.portb.state()
    assert twin.read(COUNTER0, 1) == rig.pit.read(COUNTER0, 1)  # latched MSB
    assert twin_pb.read(0, 1) == rig.portb.read(0, 1)
    assert twin.next_event_ns() == rig.pit.next_event_ns() == ns_of_tick(rig.clock.base, 3000)
    rig.clock.ticks(500)
    assert twin.advance(rig.clock.now) == rig.pit.advance(rig.clock.now) == 1
