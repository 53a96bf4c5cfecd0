"""pc-testdev's IRQ lines: OUT 1 to 0x2000+n raises line n, OUT 0 lowers it.

Reference: QEMU hw/misc/pc-testdev.c (`test_irq_line_write`, the 24-port
region at 0x2000).  Line n is an ISA IRQ / GSI number, delivered through
the interrupt-controller actors like any device's line (so line 0 reaches
IOAPIC pin 2 through the MADT's IRQ0 -> GSI2 override, as QEMU's does).
A read returns the level the guest last wrote (QEMU returns nothing
useful; reading back the level is harmless and helps tests).
"""

from __future__ import annotations

from typing import Any, Callable

from bhive.actors.base import IrqLine, NullIrqLine

NUM_LINES = 24  # ports 0x2000 .. 0x2017
UNMAPPED_READ = 0xFF


def _no_log(event: str, **fields: Any) -> None:
    pass


class TestDev:
    """Wiring: lines[n] (IrqLine) for n in 0..23, log(event, **fields)."""

    def __init__(self, lines: list[IrqLine] | None = None, log: Callable[..., None] = _no_log) -> None:
        self.lines = list(lines) if lines is not None else [NullIrqLine() for _ in range(NUM_LINES)]
        self.log = log
        self.levels = 0  # bit n: line n raised

    def read(self, offset: int, size: int) -> int:
        if not 0 <= offset < NUM_LINES:
            self.log("testdev_bad_read", offset=offset)
            return (1 << (8 * size)) - 1
        return (self.levels >> offset) & 1

    def write(self, offset: int, size: int, value: int) -> None:
        if not 0 <= offset < NUM_LINES:
            self.log("testdev_bad_write", offset=offset, value=value)
            return
        level = bool(value & ((1 << (8 * size)) - 1))
        if level:
            self.levels |= 1 << offset
        else:
            self.levels &= ~(1 << offset)
        self.lines[offset].set_level(level)

    def state(self) -> dict[str, Any]:
        return {"levels": self.levels}

    @classmethod
    def from_state(cls, state: dict[str, Any], lines=None, log: Callable[..., None] = _no_log) -> "TestDev":
        dev = cls(lines, log)
        dev.levels = state["levels"]
        return dev
