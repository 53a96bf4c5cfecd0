"""Rtc: clock registers, formats, setting the time, flags and IRQ8, CMOS."""

from __future__ import annotations

import datetime as dt

import msgpack
import pytest

from wiring import RecordingLine as Line

from bhive.actors.rtc import (
    A_UIP,
    B_24H,
    B_AIE,
    B_BINARY,
    B_PIE,
    B_SET,
    B_UIE,
    C_AF,
    C_IRQF,
    C_PF,
    C_UF,
    DATA,
    INDEX,
    REG_A,
    REG_B,
    REG_C,
    REG_CENTURY,
    REG_D,
    REG_DAY_OF_MONTH,
    REG_DAY_OF_WEEK,
    REG_HOURS,
    REG_HOURS_ALARM,
    REG_MINUTES,
    REG_MINUTES_ALARM,
    REG_MONTH,
    REG_SECONDS,
    REG_SECONDS_ALARM,
    REG_YEAR,
    Rtc,
    memory_size_bytes,
)

S = 1_000_000_000
# Tuesday 2024-03-05 14:07:09 UTC, 100 ms into the second.
T0 = int(dt.datetime(2024, 3, 5, 14, 7, 9, tzinfo=dt.timezone.utc).timestamp()) * S + 100_000_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now



class Rig:
    def __init__(self, ram_size: int = 256 * 1024 * 1024) -> None:
        self.clock = Clock()
        self.line = Line()
        self.events: list[str] = []
        self.rtc = Rtc(wallclock=self.clock, irq=self.line, ram_size=ram_size,
                       log=lambda e, **f: self.events.append(e))

    def get(self, index: int) -> int:
        self.rtc.write(INDEX, 1, index)
        return self.rtc.read(DATA, 1)

    def put(self, index: int, value: int) -> None:
        self.rtc.write(INDEX, 1, index)
        self.rtc.write(DATA, 1, value)


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_reset_registers(rig):
    assert rig.get(REG_A) == 0x26
    assert rig.get(REG_B) == B_24H
    assert rig.get(REG_C) == 0
    assert rig.get(REG_D) == 0x80


def test_time_in_bcd_24h(rig):
    assert rig.get(REG_SECONDS) == 0x09
    assert rig.get(REG_MINUTES) == 0x07
    assert rig.get(REG_HOURS) == 0x14
    assert rig.get(REG_DAY_OF_WEEK) == 3  # Tuesday, Sunday = 1
    assert rig.get(REG_DAY_OF_MONTH) == 0x05
    assert rig.get(REG_MONTH) == 0x03
    assert rig.get(REG_YEAR) == 0x24
    assert rig.get(REG_CENTURY) == 0x20


def test_time_follows_wallclock(rig):
    rig.clock.now += 61 * S
    assert rig.get(REG_SECONDS) == 0x10
    assert rig.get(REG_MINUTES) == 0x08


def test_binary_and_12h_formats(rig):
    rig.put(REG_B, B_BINARY)  # binary, 12-hour
    assert rig.get(REG_HOURS) == 0x80 | 2  # 2 PM
    assert rig.get(REG_MINUTES) == 7
    assert rig.get(REG_YEAR) == 24
    rig.put(REG_B, 0)  # BCD, 12-hour
    assert rig.get(REG_HOURS) == 0x82
    rig.clock.now -= 2 * 3600 * S  # 12:07
    assert rig.get(REG_HOURS) == 0x92  # 12 PM
    rig.clock.now -= 12 * 3600 * S  # 00:07
    assert rig.get(REG_HOURS) == 0x12  # 12 AM


def test_index_nmi_bit_and_write_only_index(rig):
    rig.rtc.write(INDEX, 1, 0x80 | REG_MINUTES)
    assert rig.rtc.nmi_masked
    assert rig.rtc.read(DATA, 1) == 0x07  # bit 7 is not part of the index
    assert rig.rtc.read(INDEX, 1) == 0xFF
    rig.rtc.write(INDEX, 1, REG_MINUTES)
    assert not rig.rtc.nmi_masked


def test_cmos_ram_bytes(rig):
    rig.put(0x40, 0xA5)
    rig.put(0x7F, 0x5A)
    assert rig.get(0x40) == 0xA5
    assert rig.get(0x7F) == 0x5A


def test_memory_size_bytes_small():
    rig = Rig(ram_size=32 * 1024 * 1024)
    assert rig.get(0x15) | rig.get(0x16) << 8 == 640
    ext = (32 - 1) * 1024
    assert rig.get(0x17) | rig.get(0x18) << 8 == ext
    assert rig.get(0x30) | rig.get(0x31) << 8 == ext
    assert rig.get(0x34) | rig.get(0x35) << 8 == (32 - 16) * 16
    assert rig.get(0x5B) | rig.get(0x5C) << 8 | rig.get(0x5D) << 16 == 0


def test_memory_size_bytes_large():
    bytes_ = memory_size_bytes(8 * 1024**3)  # 3 GiB low, 5 GiB high
    assert bytes_[0x17] | bytes_[0x18] << 8 == 0xFFFF  # capped
    assert bytes_[0x34] | bytes_[0x35] << 8 == (3 * 1024 - 16) * 16
    assert bytes_[0x5B] | bytes_[0x5C] << 8 | bytes_[0x5D] << 16 == 5 * 1024 * 16
    assert memory_size_bytes(8 * 1024**3, pci_hole_start=0xE000_0000)[0x34] == ((3584 - 16) * 16) & 0xFF


def test_setting_time_with_set_bit(rig):
    rig.put(REG_B, B_24H | B_SET)
    rig.clock.now += 5 * S
    assert rig.get(REG_SECONDS) == 0x09  # frozen while SET
    rig.put(REG_YEAR, 0x99)
    rig.put(REG_CENTURY, 0x19)
    rig.put(REG_HOURS, 0x23)
    rig.put(REG_MINUTES, 0x59)
    rig.put(REG_SECONDS, 0x58)
    rig.put(REG_B, B_24H)
    rig.clock.now += 3 * S
    assert rig.get(REG_SECONDS) == 0x01
    assert rig.get(REG_MINUTES) == 0x00
    assert rig.get(REG_HOURS) == 0x00
    assert rig.get(REG_DAY_OF_MONTH) == 0x06
    assert rig.get(REG_YEAR) == 0x99
    assert rig.get(REG_CENTURY) == 0x19


def test_writing_running_clock_sets_time(rig):
    rig.put(REG_MINUTES, 0x30)
    rig.clock.now += S
    assert rig.get(REG_MINUTES) == 0x30
    assert rig.get(REG_SECONDS) == 0x10


def test_invalid_time_keeps_old_and_logs(rig):
    rig.put(REG_B, B_24H | B_SET)
    rig.put(REG_MONTH, 0x13)
    rig.put(REG_B, B_24H)
    assert "rtc_invalid_time" in rig.events
    assert rig.get(REG_MONTH) == 0x03


def test_set_clears_uie(rig):
    rig.put(REG_B, B_24H | B_UIE | B_SET)
    assert rig.get(REG_B) == B_24H | B_SET


def test_format_change_while_set_converts_registers(rig):
    rig.put(REG_B, B_24H | B_SET)
    rig.put(REG_B, B_SET | B_BINARY)  # binary, 12h
    assert rig.get(REG_HOURS) == 0x82
    assert rig.get(REG_MINUTES) == 7
    rig.put(REG_B, B_BINARY)
    assert rig.get(REG_HOURS) == 0x82  # the time was kept


def test_uip_window(rig):
    rig.clock.now = (T0 // S) * S + S - 100_000  # 100 us before the update
    assert rig.get(REG_A) & A_UIP
    rig.clock.now += 200_000
    assert not rig.get(REG_A) & A_UIP
    rig.put(REG_A, 0xA6)  # UIP is read-only
    assert rig.get(REG_A) == 0x26


def test_update_ended_interrupt(rig):
    rig.put(REG_B, B_24H | B_UIE)
    assert not rig.line.level
    nxt = rig.rtc.next_event_ns()
    assert nxt == (T0 // S + 1) * S
    rig.rtc.advance(nxt - 1)
    assert not rig.line.level
    rig.clock.now = nxt
    rig.rtc.advance(nxt)
    assert rig.line.level
    # PF is set too: the 1024 Hz periodic rate runs with PIE clear.
    assert rig.get(REG_C) == C_IRQF | C_UF | C_PF
    assert not rig.line.level
    assert rig.get(REG_C) == 0


def test_flags_set_without_enable_but_no_irq(rig):
    rig.clock.now += 2 * S
    rig.rtc.advance(rig.clock.now)
    assert not rig.line.level
    # Flags are set whatever the enables (register C); PF from the 1024 Hz
    # default rate, UF from the seconds that passed.
    assert rig.get(REG_C) == C_UF | C_PF
    assert rig.rtc.next_event_ns() is None


def test_enabling_with_pending_flag_raises_irq(rig):
    rig.clock.now += S
    rig.rtc.advance(rig.clock.now)
    rig.put(REG_B, B_24H | B_UIE)
    assert rig.line.level


def test_alarm_interrupt(rig):
    rig.put(REG_HOURS_ALARM, 0x14)
    rig.put(REG_MINUTES_ALARM, 0x07)
    rig.put(REG_SECONDS_ALARM, 0x12)
    rig.put(REG_B, B_24H | B_AIE)
    rig.clock.now += 2 * S  # 14:07:11
    rig.rtc.advance(rig.clock.now)
    assert not rig.line.level
    rig.clock.now += S  # 14:07:12
    rig.rtc.advance(rig.clock.now)
    assert rig.line.level
    assert rig.get(REG_C) & (C_AF | C_IRQF) == C_AF | C_IRQF


def test_alarm_dont_care_and_missed_seconds(rig):
    rig.put(REG_HOURS_ALARM, 0xFF)
    rig.put(REG_MINUTES_ALARM, 0x30)
    rig.put(REG_SECONDS_ALARM, 0x00)
    rig.put(REG_B, B_24H | B_AIE)
    rig.clock.now += 3 * 3600 * S  # skipped past 14:30:00 and others
    rig.rtc.advance(rig.clock.now)
    assert rig.get(REG_C) & C_AF


def test_periodic_interrupt(rig):
    rig.put(REG_A, 0x2F)  # 2 Hz
    rig.put(REG_B, B_24H | B_PIE)
    nxt = rig.rtc.next_event_ns()
    assert nxt % (S // 2) == 0 and 0 < nxt - rig.clock.now <= S // 2
    rig.clock.now = nxt - 1
    rig.rtc.advance(rig.clock.now)
    assert not rig.line.level
    rig.clock.now = nxt
    rig.rtc.advance(nxt)
    assert rig.line.level
    # T0 is 100 ms into a second: the 500 ms boundary is not an update.
    assert rig.get(REG_C) == C_IRQF | C_PF


def test_periodic_rates(rig):
    rig.put(REG_B, B_24H | B_PIE)
    for rs, hz in ((1, 256), (3, 8192), (6, 1024), (15, 2)):
        rig.put(REG_A, 0x20 | rs)
        period = rig.rtc.next_event_ns()
        rig.clock.now = period
        assert rig.rtc.next_event_ns() - period == pytest.approx(S / hz, abs=1)


def test_rate_zero_or_divider_reset_disables_periodic(rig):
    rig.put(REG_B, B_24H | B_PIE)
    rig.put(REG_A, 0x20)
    assert rig.rtc.next_event_ns() is None
    rig.put(REG_A, 0x76)
    assert rig.rtc.next_event_ns() is None


def test_register_c_and_d_read_only(rig):
    rig.put(REG_C, 0xFF)
    rig.put(REG_D, 0x00)
    assert rig.get(REG_C) == 0
    assert rig.get(REG_D) == 0x80
    assert rig.events.count("rtc_write_read_only") == 2


def test_garbage(rig):
    assert rig.rtc.read(2, 1) == 0xFF
    rig.rtc.write(2, 1, 0)
    assert "rtc_unknown_read" in rig.events and "rtc_unknown_write" in rig.events


def test_state_round_trip(rig):
    rig.put(REG_B, B_24H | B_SET)
    rig.put(REG_YEAR, 0x30)
    rig.put(REG_B, B_24H | B_UIE | B_PIE)
    rig.put(REG_A, 0x2E)
    rig.put(0x50, 0x77)
    rig.clock.now += S
    rig.rtc.advance(rig.clock.now)
    rig.rtc.write(INDEX, 1, 0x80 | REG_C)
    state = msgpack.unpackb(msgpack.packb(rig.rtc.state()))
    line = Line()
    twin = Rtc.from_state(state, wallclock=rig.clock, irq=line)
    assert twin.state() == rig.rtc.state()
    assert line.levels == []
    assert twin.nmi_masked
    assert twin.read(DATA, 1) == rig.rtc.read(DATA, 1) == C_IRQF | C_UF | C_PF
    for index in (REG_YEAR, REG_SECONDS, 0x50, 0x34):
        twin.write(INDEX, 1, index)
        assert twin.read(DATA, 1) == rig.get(index)
    assert twin.next_event_ns() == rig.rtc.next_event_ns()
