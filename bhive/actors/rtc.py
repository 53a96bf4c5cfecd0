"""Motorola MC146818 RTC and CMOS RAM at ports 0x70 (index) / 0x71 (data).

References: Motorola MC146818A datasheet, "Register A-D" and "Time,
calendar and alarm locations"; crosvm devices/src/cmos.rs for the shape;
QEMU hw/i386/pc.c pc_cmos_init for the memory-size bytes.

Nothing ticks.  The guest's time is the injected wallclock() (nanoseconds
since the Unix epoch) plus an offset the guest changes by setting the
clock.  Update-ended, alarm and periodic flags are brought up to date from
elapsed time on every access and on advance(now_ns), which the host calls at
next_event_ns() when one of those interrupts is enabled.  Missed periods
coalesce: a flag is a flag, however many times it was set.

The IRQ output (IRQ8) is driven as a level: asserted while IRQF is set,
released by the read of register C that clears it, which is what the
edge-triggered IRQ8 input of the PC's slave PIC needs to see a new edge.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from bhive.actors.base import IrqLine, NullIrqLine, no_log
from bhive.actors.host import DeviceHost

# Port offsets from 0x70.
INDEX = 0  # write: bit 7 masks NMI, bits 0-6 select the CMOS byte
DATA = 1  # the selected byte
INDEX_NMI_MASK = 0x80  # NMI disable bit in the index write
INDEX_MASK = 0x7F  # 128 bytes of CMOS
CMOS_SIZE = 128

# Clock and control registers (CMOS indices).
REG_SECONDS = 0x00
REG_SECONDS_ALARM = 0x01
REG_MINUTES = 0x02
REG_MINUTES_ALARM = 0x03
REG_HOURS = 0x04
REG_HOURS_ALARM = 0x05
REG_DAY_OF_WEEK = 0x06  # 1 = Sunday
REG_DAY_OF_MONTH = 0x07
REG_MONTH = 0x08
REG_YEAR = 0x09  # two digits; the century is in REG_CENTURY
REG_A = 0x0A
REG_B = 0x0B
REG_C = 0x0C
REG_D = 0x0D
REG_CENTURY = 0x32  # IBM convention, named in the ACPI FADT's CENTURY field
TIME_REGISTERS = (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_DAY_OF_WEEK,
                  REG_DAY_OF_MONTH, REG_MONTH, REG_YEAR, REG_CENTURY)

# Register A.
A_UIP = 0x80  # update in progress (read-only)
A_DIVIDER_MASK = 0x70  # DV2-0: time base; 010 = 32.768 kHz
A_DIVIDER_RESET = 0x60  # DV 11x holds the divider chain in reset
A_RATE_MASK = 0x0F  # RS3-0: periodic interrupt rate
A_RESET = 0x26  # 32.768 kHz, 1024 Hz periodic rate: what BIOSes program

# Register B.
B_SET = 0x80  # stop updates so the guest can set the time
B_PIE = 0x40  # periodic interrupt enable
B_AIE = 0x20  # alarm interrupt enable
B_UIE = 0x10  # update-ended interrupt enable
B_SQWE = 0x08  # square-wave output (no pin here)
B_BINARY = 0x04  # DM: binary, not BCD
B_24H = 0x02  # 24-hour mode
B_DSE = 0x01  # daylight saving (ignored, logged)
B_RESET = B_24H  # BCD, 24 hours: the PC convention

# Register C (read-only, cleared by reading).
C_IRQF = 0x80  # an enabled flag is set: the IRQ line is asserted
C_PF = 0x40  # periodic
C_AF = 0x20  # alarm
C_UF = 0x10  # update ended

# Register D.
D_VRT = 0x80  # valid RAM and time: the battery is fine

ALARM_DONT_CARE = 0xC0  # alarm byte 11xxxxxx matches any value
HOUR_PM = 0x80  # bit 7 of the hours byte in 12-hour mode

# Memory-size bytes, as QEMU's pc_cmos_init and SeaBIOS use them.
CMOS_BASE_MEM = 0x15  # 0x15/0x16: KiB below 1 MiB (640)
CMOS_EXT_MEM = 0x17  # 0x17/0x18: KiB above 1 MiB, capped at 65535
CMOS_EXT_MEM_COPY = 0x30  # 0x30/0x31: the same, where AMI BIOSes look
CMOS_MEM_ABOVE_16M = 0x34  # 0x34/0x35: 64 KiB units from 16 MiB to 4 GiB
CMOS_MEM_ABOVE_4G = 0x5B  # 0x5b-0x5d: 64 KiB units above 4 GiB
DEFAULT_PCI_HOLE_START = 0xC000_0000  # bhyve's default lowmem limit (3 GiB)

NS_PER_S = 1_000_000_000
RTC_HZ = 32768  # the time base the periodic rates divide
UIP_WINDOW_NS = 244_000  # UIP rises 244 us before the update (datasheet)
UNMAPPED_READ = 0xFF  # the index port is write-only

KiB = 1024
MiB = 1024 * KiB


def _bcd(value: int) -> int:
    return (value // 10) << 4 | value % 10


def _from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


def memory_size_bytes(ram_size: int, pci_hole_start: int = DEFAULT_PCI_HOLE_START) -> dict[int, int]:
    """CMOS index -> byte for the memory-size locations."""
    below_4g = min(ram_size, pci_hole_start)
    above_4g = ram_size - below_4g
    base_kib = min(below_4g // KiB, 640)
    ext_kib = min(max(below_4g - MiB, 0) // KiB, 0xFFFF)
    above_16m = min(max(below_4g - 16 * MiB, 0) // (64 * KiB), 0xFFFF)
    above_4g_64k = min(above_4g // (64 * KiB), 0xFFFFFF)
    out = {}
    for index, value, width in (
        (CMOS_BASE_MEM, base_kib, 2),
        (CMOS_EXT_MEM, ext_kib, 2),
        (CMOS_EXT_MEM_COPY, ext_kib, 2),
        (CMOS_MEM_ABOVE_16M, above_16m, 2),
        (CMOS_MEM_ABOVE_4G, above_4g_64k, 3),
    ):
        for i in range(width):
            out[index + i] = (value >> (8 * i)) & 0xFF
    return out


@dataclass
class CmosRegisters:
    """The 128 CMOS bytes plus what the chip keeps outside them."""

    cmos: bytearray = field(default_factory=lambda: bytearray(CMOS_SIZE))
    index: int = 0
    nmi_masked: bool = False
    offset_ns: int = 0  # guest time minus wallclock()
    last_second: int = 0  # last guest second whose update was processed
    last_period: int = 0  # last periodic-interrupt period processed
    irq_asserted: bool = False


class Rtc:
    """Wiring: wallclock() -> ns since the epoch, irq (IRQ8), log.
    Arguments: ram_size (bytes) and pci_hole_start for the memory-size
    bytes.  Host side: next_event_ns(), advance(now_ns), nmi_masked."""

    def __init__(
        self,
        wallclock: Callable[[], int],
        irq: IrqLine | None = None,
        ram_size: int = 0,
        pci_hole_start: int = DEFAULT_PCI_HOLE_START,
        log: Callable[..., None] = no_log,
    ) -> None:
        self.wallclock = wallclock
        self.irq = irq if irq is not None else NullIrqLine()
        self.log = log
        self.regs = CmosRegisters()
        cmos = self.regs.cmos
        cmos[REG_A] = A_RESET
        cmos[REG_B] = B_RESET
        cmos[REG_D] = D_VRT
        for index, value in memory_size_bytes(ram_size, pci_hole_start).items():
            cmos[index] = value
        now = wallclock()
        self.regs.last_second = now // NS_PER_S
        self.regs.last_period = self._period_index(now)
        self._store_time(now)

    @property
    def nmi_masked(self) -> bool:
        return self.regs.nmi_masked

    # --- time -----------------------------------------------------------

    def _guest_ns(self, now: int) -> int:
        return now + self.regs.offset_ns

    def _updating(self) -> bool:
        """Is the time advancing (SET clear, divider chain running)?"""
        cmos = self.regs.cmos
        return not cmos[REG_B] & B_SET and cmos[REG_A] & A_DIVIDER_RESET != A_DIVIDER_RESET

    def _encode(self, value: int) -> int:
        return value if self.regs.cmos[REG_B] & B_BINARY else _bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.regs.cmos[REG_B] & B_BINARY else _from_bcd(value)

    def _encode_hours(self, hour: int) -> int:
        if self.regs.cmos[REG_B] & B_24H:
            return self._encode(hour)
        pm = HOUR_PM if hour >= 12 else 0
        return self._encode(hour % 12 or 12) | pm

    def _decode_hours(self, value: int) -> int:
        if self.regs.cmos[REG_B] & B_24H:
            return self._decode(value)
        return self._decode(value & ~HOUR_PM) % 12 + (12 if value & HOUR_PM else 0)

    def _time_bytes(self, guest_second: int) -> dict[int, int]:
        t = dt.datetime.fromtimestamp(guest_second, tz=dt.timezone.utc)
        return {
            REG_SECONDS: self._encode(t.second),
            REG_MINUTES: self._encode(t.minute),
            REG_HOURS: self._encode_hours(t.hour),
            REG_DAY_OF_WEEK: self._encode(t.isoweekday() % 7 + 1),  # Sunday = 1
            REG_DAY_OF_MONTH: self._encode(t.day),
            REG_MONTH: self._encode(t.month),
            REG_YEAR: self._encode(t.year % 100),
            REG_CENTURY: self._encode(t.year // 100),
        }

    def _store_time(self, now: int) -> None:
        for index, value in self._time_bytes(self._guest_ns(now) // NS_PER_S).items():
            self.regs.cmos[index] = value

    def _time_from_registers(self) -> int | None:
        """Guest seconds since the epoch from the time bytes, or None."""
        cmos = self.regs.cmos
        try:
            t = dt.datetime(
                self._decode(cmos[REG_CENTURY]) * 100 + self._decode(cmos[REG_YEAR]),
                self._decode(cmos[REG_MONTH]),
                self._decode(cmos[REG_DAY_OF_MONTH]),
                self._decode_hours(cmos[REG_HOURS]),
                self._decode(cmos[REG_MINUTES]),
                self._decode(cmos[REG_SECONDS]),
                tzinfo=dt.timezone.utc,
            )
        except ValueError:
            return None
        return int(t.timestamp())

    def _adopt_registers(self, now: int) -> None:
        """The guest has set the clock: make the registers the time now."""
        seconds = self._time_from_registers()
        if seconds is None:
            self.log("rtc_invalid_time", time=bytes(self.regs.cmos[:10]).hex())
            return
        subsecond = self._guest_ns(now) % NS_PER_S  # the divider keeps its phase
        self.regs.offset_ns = seconds * NS_PER_S + subsecond - now
        self.regs.last_second = seconds

    # --- flags and interrupts -------------------------------------------

    def _period_ticks(self) -> int | None:
        """Periodic interval in 32.768 kHz ticks, or None if off."""
        rate = self.regs.cmos[REG_A] & A_RATE_MASK
        if rate == 0 or self.regs.cmos[REG_A] & A_DIVIDER_RESET == A_DIVIDER_RESET:
            return None
        if rate <= 2:
            rate += 7  # rates 1 and 2 alias 8 and 9 (datasheet table 5)
        return 1 << (rate - 1)

    def _period_index(self, now: int) -> int:
        period = self._period_ticks()
        if period is None:
            return 0
        return now * RTC_HZ // NS_PER_S // period

    def _alarm_matches(self, guest_second: int) -> bool:
        now = self._time_bytes(guest_second)
        cmos = self.regs.cmos
        for alarm, current in ((REG_SECONDS_ALARM, REG_SECONDS),
                               (REG_MINUTES_ALARM, REG_MINUTES),
                               (REG_HOURS_ALARM, REG_HOURS)):
            if cmos[alarm] & ALARM_DONT_CARE == ALARM_DONT_CARE:
                continue
            if cmos[alarm] != now[current]:
                return False
        return True

    def _catch_up(self, now: int) -> None:
        """Set UF/AF/PF for everything that happened up to `now`."""
        r = self.regs
        cmos = r.cmos
        if self._updating():
            second = self._guest_ns(now) // NS_PER_S
            if second > r.last_second:
                cmos[REG_C] |= C_UF
                # At most a day of seconds covers every alarm setting.
                for s in range(max(r.last_second + 1, second - 86399), second + 1):
                    if self._alarm_matches(s):
                        cmos[REG_C] |= C_AF
                        break
            r.last_second = max(r.last_second, second)
        period = self._period_index(now)
        if self._period_ticks() is not None and period > r.last_period:
            cmos[REG_C] |= C_PF
        r.last_period = period
        self._update_irq()

    def _update_irq(self) -> None:
        cmos = self.regs.cmos
        enabled = cmos[REG_B] & (B_PIE | B_AIE | B_UIE)
        # Flag bits and enable bits line up: PF/PIE 6, AF/AIE 5, UF/UIE 4.
        if cmos[REG_C] & enabled & (C_PF | C_AF | C_UF):
            cmos[REG_C] |= C_IRQF
        level = bool(cmos[REG_C] & C_IRQF)
        if level != self.regs.irq_asserted:
            self.regs.irq_asserted = level
            self.irq.set_level(level)

    def next_event_ns(self) -> int | None:
        """When the next enabled interrupt source fires, or None."""
        cmos = self.regs.cmos
        now = self.wallclock()
        candidates = []
        if cmos[REG_B] & B_PIE and self._period_ticks() is not None:
            period = self._period_ticks()
            next_index = self._period_index(now) + 1
            candidates.append(-(-next_index * period * NS_PER_S // RTC_HZ))
        if cmos[REG_B] & (B_UIE | B_AIE) and self._updating():
            next_second = self._guest_ns(now) // NS_PER_S + 1
            candidates.append(next_second * NS_PER_S - self.regs.offset_ns)
        return min(candidates) if candidates else None

    def advance(self, now_ns: int) -> None:
        """Bring the flags (and the IRQ line) up to now_ns."""
        self._catch_up(now_ns)

    # --- guest accesses -------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if size != 1:
            self.log("rtc_wide_access", op="read", offset=offset, size=size)
        if offset == INDEX:
            return UNMAPPED_READ  # write-only
        if offset != DATA:
            self.log("rtc_unknown_read", offset=offset)
            return UNMAPPED_READ
        now = self.wallclock()
        self._catch_up(now)
        r = self.regs
        index = r.index
        if index in TIME_REGISTERS and self._updating():
            self._store_time(now)
        if index == REG_A:
            uip = 0
            if self._updating() and self._guest_ns(now) % NS_PER_S >= NS_PER_S - UIP_WINDOW_NS:
                uip = A_UIP
            return (r.cmos[REG_A] & ~A_UIP) | uip
        if index == REG_C:
            value = r.cmos[REG_C]
            r.cmos[REG_C] = 0  # all flags clear on read
            self._update_irq()
            return value
        return r.cmos[index]

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 1:
            self.log("rtc_wide_access", op="write", offset=offset, size=size)
        value &= 0xFF
        r = self.regs
        if offset == INDEX:
            r.index = value & INDEX_MASK
            r.nmi_masked = bool(value & INDEX_NMI_MASK)
            return
        if offset != DATA:
            self.log("rtc_unknown_write", offset=offset, value=value)
            return
        now = self.wallclock()
        self._catch_up(now)
        index = r.index
        if index == REG_A:
            was_updating = self._updating()
            r.cmos[REG_A] = value & ~A_UIP
            r.last_period = self._period_index(now)  # new rate, new phase
            if self._updating() and not was_updating:
                r.last_second = self._guest_ns(now) // NS_PER_S
        elif index == REG_B:
            self._write_b(value, now)
        elif index in (REG_C, REG_D):
            self.log("rtc_write_read_only", index=index, value=value)
        elif index in TIME_REGISTERS:
            updating = self._updating()
            if updating:
                self._store_time(now)
            r.cmos[index] = value
            if updating:
                # Writing the running clock sets the time from that byte on.
                self._adopt_registers(now)
        else:
            r.cmos[index] = value
        self._update_irq()

    def _write_b(self, value: int, now: int) -> None:
        r = self.regs
        old = r.cmos[REG_B]
        if value & B_SET:
            value &= ~B_UIE  # setting SET clears UIE (datasheet, register B)
            if not old & B_SET:
                self._store_time(now)  # freeze what the guest will edit
        if value & B_DSE and not old & B_DSE:
            self.log("rtc_dse_ignored")
        if (value ^ old) & (B_BINARY | B_24H) and old & B_SET:
            # Changing the format while stopped: re-read under the old
            # format, rewrite under the new one, like a BIOS reprogramming.
            seconds = self._time_from_registers()
            r.cmos[REG_B] = value
            if seconds is not None:
                for index, byte in self._time_bytes(seconds).items():
                    r.cmos[index] = byte
        r.cmos[REG_B] = value
        if old & B_SET and not value & B_SET:
            self._adopt_registers(now)

    # --- snapshot -------------------------------------------------------

    def state(self) -> dict[str, Any]:
        r = self.regs
        return {
            "cmos": bytes(r.cmos),
            "index": r.index,
            "nmi_masked": r.nmi_masked,
            "offset_ns": r.offset_ns,
            "last_second": r.last_second,
            "last_period": r.last_period,
            "irq_asserted": r.irq_asserted,
        }

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        wallclock: Callable[[], int],
        irq: IrqLine | None = None,
        log: Callable[..., None] = no_log,
    ) -> "Rtc":
        dev = cls(wallclock=wallclock, irq=irq, log=log)
        dev.regs = CmosRegisters(
            cmos=bytearray(state["cmos"]),
            index=state["index"],
            nmi_masked=state["nmi_masked"],
            offset_ns=state["offset_ns"],
            last_second=state["last_second"],
            last_period=state["last_period"],
            irq_asserted=state["irq_asserted"],
        )
        return dev


# --- the actor: the model hosted in its own process ---------------------------


class RtcHost(DeviceHost):
    """MC146818 at `port` (0x70/0x71) on the host's wall clock, IRQ8 driven
    as a level."""

    def setup(self) -> None:
        self.irq = self.connect_irq(self.cfg.options["irq"])

    def model_args(self) -> dict:
        return {"wallclock": time.time_ns, "irq": self.irq, "log": self.log}

    def reset_args(self) -> dict:
        return {"ram_size": self.vm.memory}

    def next_deadline(self):
        ns = self.model.next_event_ns()
        if ns is None:
            return None
        return time.monotonic() + max(0, ns - time.time_ns()) / 1e9

    def on_timer(self, now):
        self.model.advance(time.time_ns())
        self.runtime.commit()
