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

# MSI format (SDM 10.11.1, 10.11.2).
MSI_ADDR_BASE = 0xFEE00000  # the LAPIC's MSI window
MSI_ADDR_DEST_SHIFT = 12  # destination ID
MSI_ADDR_DEST_LOGICAL = 1 << 2  # DM
# RH.  bhyve's lapic_intr_msi (vm_lapic_msi) treats the destination as
# logical only when RH and DM are both set, so a logical RTE sets both.
MSI_ADDR_REDIRECTION_HINT = 1 << 3
MSI_DATA_DELIVERY_MODE_SHIFT = 8  # same encoding as the RTE
MSI_DATA_LEVEL_ASSERT = 1 << 14  # level-triggered message asserts
MSI_DATA_TRIGGER_LEVEL = 1 << 15  # trigger mode


class IrqLine(Protocol):
    """One interrupt line (an ISA IRQ or a GSI), injected into a device."""

    def set_level(self, asserted: bool) -> None:
        """Drive the line.  Edge-triggered users see a 0->1 transition."""


class MsiSender(Protocol):
    """Sends an MSI (address/data pair) towards the vCPUs.  `pin` says
    which input of the sender caused it (an IOAPIC pin), for the host's
    delivery counts (`bhive stats`); it is not part of the message."""

    def send_msi(self, addr: int, data: int, pin: int = -1) -> None: ...


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


def no_log(event: str, **fields: Any) -> None:
    """The `log` a model gets when its host gives none (unit tests)."""
