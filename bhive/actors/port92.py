"""System Control Port A at I/O port 0x92: fast A20 gate and fast reset.

As on the PS/2 and every PC chipset since; modelled on QEMU hw/i386/port92.c.

References: IBM PS/2 Hardware Interface Technical Reference, "System
Control Port A"; Intel 82371AB (PIIX4) datasheet, port 92h.

Bit 0 is the fast reset: a 0 -> 1 transition resets the processor (the VM
reboots, or ends with -no-reboot).  Bit 1 gates address line 20.  bhive
keeps A20 always enabled (every guest it boots wants it on), so a write
clearing bit 1 is remembered and read back but logged as not applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from bhive.actors.base import no_log
from bhive.actors.host import DeviceHost
from bhive.bus.schema import VmEvent

CONTROL = 0  # the one register, at port 0x92
PORT = 0x92

FAST_RESET = 0x01  # bit 0: 0 -> 1 pulses the CPU reset line
A20_GATE = 0x02  # bit 1: address line 20 enabled
RESET_VALUE = A20_GATE  # A20 on, as the firmware leaves it


@dataclass
class Port92Registers:
    control: int = RESET_VALUE


class SystemControlPortA:
    """Wiring: reset() resets the machine; log(event, **fields)."""

    def __init__(self, reset: Callable[[], None] = lambda: None, log: Callable[..., None] = no_log) -> None:
        self.reset = reset
        self.log = log
        self.regs = Port92Registers()

    def read(self, offset: int, size: int) -> int:
        if offset != CONTROL or size != 1:
            self.log("port92_bad_read", offset=offset, size=size)
        # Bits other than 0-1 read back as written, like QEMU's outport.
        return self.regs.control

    def write(self, offset: int, size: int, value: int) -> None:
        if offset != CONTROL or size != 1:
            self.log("port92_bad_write", offset=offset, size=size, value=value)
        value &= 0xFF
        old, self.regs.control = self.regs.control, value
        if not value & A20_GATE:
            self.log("port92_a20_off_not_applied", value=value)
        if value & FAST_RESET and not old & FAST_RESET:
            self.log("port92_fast_reset", value=value)
            self.reset()

    def state(self) -> dict[str, Any]:
        return {"control": self.regs.control}

    @classmethod
    def from_state(cls, state: dict[str, Any], reset=lambda: None, log=no_log) -> "SystemControlPortA":
        dev = cls(reset, log)
        dev.regs.control = state["control"]
        return dev


# --- the actor: the model hosted in its own process ---------------------------

class Port92Host(DeviceHost):
    """Port 0x92; its fast reset asks the supervisor to reset the VM."""

    def model_args(self) -> dict:
        return {"reset": self._reset, "log": self.log}

    def _reset(self) -> None:
        self.runtime.event(VmEvent(self.runtime.role, "reset", 0, "port 0x92 fast reset"))
