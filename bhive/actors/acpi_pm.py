"""ACPI fixed hardware: PM1a event and control blocks and the PM timer.

Reference: ACPI 6.5 section 4.8 (fixed hardware registers): PM1_STS /
PM1_EN (4.8.3.1), PM1_CNT (4.8.3.2), PM_TMR (4.8.3.3).  Layout from
`port` (the FADT names each block): PM1a_EVT_BLK at +0 (STS 2 bytes, EN 2
bytes), PM1a_CNT_BLK at +4 (2 bytes), PM_TMR_BLK at +8 (4 bytes) -- QEMU's
ICH9 layout at 0x600.

The PM timer is a free-running 24-bit counter at 3.579545 MHz computed
from the injected clock (the FADT leaves TMR_VAL_EXT clear).  There is no
SMI_CMD port, so ACPI is always enabled: SCI_EN reads 1.  Writing SLP_EN
with SLP_TYP = S5_SLP_TYP (the value in the DSDT's \\_S5 package) powers
the VM off through `poweroff()`.  TMR_STS is set when bit 23 of the
counter toggles; with TMR_EN it raises the SCI line.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from bhive.actors.base import IrqLine, NullIrqLine, no_log
from bhive.actors.host import DeviceHost
from bhive.bus.schema import VmEvent

PM_BASE = 0x600  # QEMU's ICH9 PMBASE; the FADT gives the guest the blocks below

# Offsets from PM_BASE.
PM1_STS = 0x0  # 2 bytes, write 1 to clear
PM1_EN = 0x2  # 2 bytes
PM1_CNT = 0x4  # 2 bytes
PM_TMR = 0x8  # 4 bytes, read-only
PORT_COUNT = 12

PM_TIMER_HZ = 3_579_545
NS_PER_S = 1_000_000_000
TMR_MASK = 0xFFFFFF  # 24 bits

STS_TMR = 1 << 0
STS_PWRBTN = 1 << 8
STS_WAK = 1 << 15
STS_WRITABLE = STS_TMR | STS_PWRBTN | STS_WAK | (1 << 5) | (1 << 10)  # GBL, RTC too
EN_TMR = 1 << 0
EN_WRITABLE = EN_TMR | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 10)
CNT_SCI_EN = 1 << 0
CNT_SLP_TYP_SHIFT = 10
CNT_SLP_TYP_MASK = 0x7
CNT_SLP_EN = 1 << 13  # write-only
CNT_WRITABLE = 0x1C06 | CNT_SCI_EN  # BM_RLD, GBL_RLS (write-only), SLP_TYP
S5_SLP_TYP = 5  # must match \_S5 in the DSDT (bhive.firmware.acpi)


def ticks(ns: int) -> int:
    return ns * PM_TIMER_HZ // NS_PER_S


class AcpiPm:
    """Wiring: clock() -> ns, sci (IrqLine), poweroff(), sleep(slp_typ), log."""

    def __init__(self, clock: Callable[[], int], sci: IrqLine | None = None,
                 poweroff: Callable[[], None] = lambda: None,
                 sleep: Callable[[int], None] = lambda typ: None,
                 log: Callable[..., None] = no_log) -> None:
        self.clock = clock
        self.sci = sci if sci is not None else NullIrqLine()
        self.poweroff = poweroff
        self.sleep = sleep
        self.log = log
        self.sts = 0
        self.en = 0
        self.cnt = CNT_SCI_EN
        self.start_ns = clock()      # the counter reads 0 at reset
        self.overflows_seen = 0      # bit-23 toggles already folded into TMR_STS
        self.sci_level = False

    # --- timer ---------------------------------------------------------------
    def timer(self, now: int | None = None) -> int:
        now = self.clock() if now is None else now
        return ticks(now - self.start_ns) & TMR_MASK

    def _catch_up(self, now: int) -> None:
        toggles = ticks(now - self.start_ns) >> 23
        if toggles > self.overflows_seen:
            self.overflows_seen = toggles
            self.sts |= STS_TMR
        self._update_sci()

    def _update_sci(self) -> None:
        level = bool(self.sts & self.en & (STS_TMR | STS_PWRBTN)) and bool(self.cnt & CNT_SCI_EN)
        if level != self.sci_level:
            self.sci_level = level
            self.sci.set_level(level)

    def next_event_ns(self) -> int | None:
        """When TMR_STS next sets, if TMR_EN asks for an SCI."""
        if not self.en & EN_TMR:
            return None
        k = self.overflows_seen + 1
        return self.start_ns + -(-(k << 23) * NS_PER_S // PM_TIMER_HZ)

    def advance(self, now_ns: int) -> None:
        self._catch_up(now_ns)

    # --- registers ----------------------------------------------------------
    def _reg16(self, offset: int) -> int:
        if offset == PM1_STS:
            return self.sts
        if offset == PM1_EN:
            return self.en
        if offset == PM1_CNT:
            return self.cnt
        return 0

    def read(self, offset: int, size: int) -> int:
        now = self.clock()
        self._catch_up(now)
        if PM_TMR <= offset < PM_TMR + 4:
            return (self.timer(now) >> (8 * (offset - PM_TMR))) & ((1 << (8 * size)) - 1)
        if 0 <= offset < PM1_CNT + 2:
            value = 0
            for i in range(size):
                o = offset + i
                if o >= PM1_CNT + 2:
                    break
                value |= ((self._reg16(o & ~1) >> (8 * (o & 1))) & 0xFF) << (8 * i)
            return value
        self.log("acpi_pm_bad_read", offset=offset, size=size)
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        self._catch_up(self.clock())
        if PM_TMR <= offset < PM_TMR + 4:
            self.log("acpi_pm_timer_write", value=value)  # read-only
            return
        if not 0 <= offset < PM1_CNT + 2:
            self.log("acpi_pm_bad_write", offset=offset, size=size, value=value)
            return
        # Assemble byte writes into the 16-bit registers they touch.
        for reg in (PM1_STS, PM1_EN, PM1_CNT):
            lo, hi = max(offset, reg), min(offset + size, reg + 2)
            if lo >= hi:
                continue
            mask = 0
            part = 0
            for o in range(lo, hi):
                byte = (value >> (8 * (o - offset))) & 0xFF
                part |= byte << (8 * (o - reg))
                mask |= 0xFF << (8 * (o - reg))
            self._write16(reg, part, mask)
        self._update_sci()

    def _write16(self, reg: int, value: int, mask: int) -> None:
        if reg == PM1_STS:
            self.sts &= ~(value & mask & STS_WRITABLE)
        elif reg == PM1_EN:
            self.en = (self.en & ~mask) | (value & mask & EN_WRITABLE)
        elif reg == PM1_CNT:
            self.cnt = ((self.cnt & ~mask) | (value & mask & CNT_WRITABLE)) | CNT_SCI_EN
            if value & mask & CNT_SLP_EN:
                typ = (value >> CNT_SLP_TYP_SHIFT) & CNT_SLP_TYP_MASK
                if typ == S5_SLP_TYP:
                    self.log("acpi_poweroff", slp_typ=typ)
                    self.poweroff()
                else:
                    self.log("acpi_sleep_unsupported", slp_typ=typ)
                    self.sleep(typ)

    # --- snapshot -----------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"sts": self.sts, "en": self.en, "cnt": self.cnt, "start_ns": self.start_ns,
                "overflows_seen": self.overflows_seen, "sci_level": self.sci_level}

    @classmethod
    def from_state(cls, state: dict[str, Any], clock, sci=None, poweroff=lambda: None,
                   sleep=lambda typ: None, log=no_log) -> "AcpiPm":
        dev = cls(clock, sci, poweroff, sleep, log)
        for k, v in state.items():
            setattr(dev, k, v)
        return dev


# --- the actor: the model hosted in its own process ---------------------------


class AcpiPmHost(DeviceHost):
    """PM1a event/control and the PM timer at `port`, the SCI on `sci`;
    SLP_TYP=5 + SLP_EN powers the VM off."""

    def setup(self) -> None:
        self.sci = self.connect_irq(self.cfg.options["sci"])

    def model_args(self) -> dict:
        return {"clock": time.monotonic_ns, "sci": self.sci, "poweroff": self._poweroff, "log": self.log}

    def _poweroff(self) -> None:
        self.runtime.event(VmEvent(self.runtime.role, "poweroff", 0, "ACPI S5 (SLP_EN)"))

    def next_deadline(self):
        ns = self.model.next_event_ns()
        return None if ns is None else ns / 1e9

    def on_timer(self, now):
        self.model.advance(time.monotonic_ns())
        self.runtime.commit()
