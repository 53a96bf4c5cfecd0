"""QEMU's isa-debug-exit: a port the guest writes to end the VM with a status.

Semantics follow QEMU hw/misc/debugexit.c: a write of value V (any access
width up to the configured iosize) exits with status (V << 1) | 1, so a
guest can never produce status 0 and a test harness can tell "the guest
exited on purpose" from "the VMM exited cleanly".  Reads are not a feature
of the device; they answer all-ones like an undecoded ISA port.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from bhive.actors.base import no_log
from bhive.actors.host import DeviceHost
from bhive.bus.schema import VmEvent

DATA = 0  # the port; the device decodes `iosize` consecutive bytes from here
VALID_IOSIZES = (1, 2, 4)  # QEMU accepts the same widths
DEFAULT_IOSIZE = 4  # QEMU's default iosize
DEFAULT_IOBASE = 0x501  # QEMU's default iobase, for the host's convenience


@dataclass
class DebugExitRegisters:
    """The device has no registers; only its decoded width."""

    iosize: int = DEFAULT_IOSIZE


class DebugExit:
    """Wiring: exit(status) ends the VM; log(event, **fields) for garbage."""

    def __init__(
        self,
        exit: Callable[[int], None],
        iosize: int = DEFAULT_IOSIZE,
        log: Callable[..., None] = no_log,
    ) -> None:
        if iosize not in VALID_IOSIZES:
            # A configuration error from the host, not guest garbage.
            raise ValueError(f"isa-debug-exit iosize must be one of {VALID_IOSIZES}, not {iosize}")
        self.exit = exit
        self.log = log
        self.regs = DebugExitRegisters(iosize=iosize)

    def read(self, offset: int, size: int) -> int:
        if not self._decoded(offset, size):
            self.log("debug_exit_bad_read", offset=offset, size=size)
        return (1 << (8 * size)) - 1 if size > 0 else 0

    def write(self, offset: int, size: int, value: int) -> None:
        if not self._decoded(offset, size):
            self.log("debug_exit_bad_write", offset=offset, size=size, value=value)
            return
        value &= (1 << (8 * size)) - 1
        self.exit((value << 1) | 1)

    def _decoded(self, offset: int, size: int) -> bool:
        # QEMU's region is iosize bytes wide and accepts 1..4-byte accesses
        # anywhere inside it, passing the value through unshifted.
        return size in VALID_IOSIZES and 0 <= offset and offset + size <= self.regs.iosize

    def state(self) -> dict[str, Any]:
        return {"iosize": self.regs.iosize}

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        exit: Callable[[int], None],
        log: Callable[..., None] = no_log,
    ) -> "DebugExit":
        return cls(exit=exit, iosize=state["iosize"], log=log)


# --- the actor: the model hosted in its own process ---------------------------


class DebugExitHost(DeviceHost):
    """isa-debug-exit at `port`: a guest write ends the VM with status (V << 1) | 1."""

    def model_args(self) -> dict:
        return {"exit": self._exit, "log": self.log}

    def reset_args(self) -> dict:
        return {"iosize": self.cfg.options["iosize"]}

    def _exit(self, status: int) -> None:
        self.log("guest-exit", status=status)
        self.runtime.event(VmEvent(self.runtime.role, "exit", status, "isa-debug-exit write"))
