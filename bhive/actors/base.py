"""What every device model looks like, whatever process hosts it.

A device model is a plain object modelled on rust-vmm's vm-superio and
crosvm's cmos.rs: register constants at the top of its module, a state
object named after the registers, `read(offset, size)`/`write(offset, size,
value)` dispatching on those constants, and `state()`/`from_state()` so that
a restarted actor rebuilds it exactly.  Interrupt lines and MSI senders are
injected by the host process, never imported.
"""

from __future__ import annotations

from typing import Any, Protocol


class IrqLine(Protocol):
    """One interrupt line (an ISA IRQ or a GSI), injected into a device."""

    def set_level(self, asserted: bool) -> None:
        """Drive the line.  Edge-triggered users see a 0->1 transition."""


class MsiSender(Protocol):
    """Sends an MSI (address/data pair) towards the vCPUs."""

    def send_msi(self, addr: int, data: int) -> None: ...


class DeviceModel(Protocol):
    """The contract between a device model and the actor hosting it."""

    def read(self, offset: int, size: int) -> int:
        """Guest read of `size` bytes at `offset` within the device's range."""

    def write(self, offset: int, size: int, value: int) -> None:
        """Guest write of `size` bytes at `offset` within the device's range."""

    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild the device; msgpack-serialisable
        (ints, bytes, str, lists, dicts)."""


class NullIrqLine:
    """A line connected to nothing (the device's IRQ is not wired)."""

    def set_level(self, asserted: bool) -> None:
        pass
