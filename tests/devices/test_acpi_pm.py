"""The ACPI PM model (PM1a blocks, PM timer, SCI, S5) driven directly."""

from __future__ import annotations

from bhive.actors import acpi_pm as pm


def test_acpi_pm_timer_counts_at_3_579545_mhz_and_wraps_at_24_bits():
    now = [1_000_000_000]
    dev = pm.AcpiPm(clock=lambda: now[0])
    assert dev.read(pm.PM_TMR, 4) == 0
    now[0] += 1_000_000_000
    assert dev.read(pm.PM_TMR, 4) == pm.PM_TIMER_HZ & pm.TMR_MASK
    assert dev.read(pm.PM1_CNT, 2) & pm.CNT_SCI_EN     # no SMI_CMD: ACPI always enabled
    assert not dev.read(pm.PM1_STS, 2) & pm.STS_TMR    # bit 23 toggles after 2**23 ticks (2.34 s)
    now[0] += 2_000_000_000
    assert dev.read(pm.PM_TMR, 4) == (3 * pm.PM_TIMER_HZ) & pm.TMR_MASK   # wrapped
    assert dev.read(pm.PM1_STS, 2) & pm.STS_TMR
    dev.write(pm.PM1_STS, 2, pm.STS_TMR)               # write 1 to clear
    assert not dev.read(pm.PM1_STS, 2) & pm.STS_TMR


def test_acpi_pm_sci_and_s5_poweroff(line):
    now = [0]
    sci, off = line, []
    dev = pm.AcpiPm(clock=lambda: now[0], sci=sci, poweroff=lambda: off.append(1))
    dev.write(pm.PM1_EN, 2, pm.EN_TMR)
    deadline = dev.next_event_ns()
    assert deadline == -(-(1 << 23) * 10**9 // pm.PM_TIMER_HZ)
    now[0] = deadline
    dev.advance(now[0])
    assert sci.levels == [True]
    dev.write(pm.PM1_STS, 2, pm.STS_TMR)
    assert sci.levels == [True, False]
    dev.write(pm.PM1_CNT, 2, (pm.S5_SLP_TYP << pm.CNT_SLP_TYP_SHIFT) | pm.CNT_SLP_EN)
    assert off == [1]
    assert pm.AcpiPm.from_state(dev.state(), clock=lambda: now[0]).state() == dev.state()
