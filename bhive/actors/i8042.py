"""Intel 8042 keyboard controller, minimal: enough for firmware and Linux
probing, and the reset line.

References: IBM PC/AT Technical Reference, "Keyboard controller"; the
OSDev-documented command set; QEMU hw/input/pckbd.c for reset values.
Ports: data at 0x60 (offset DATA), status (read) / command (write) at
0x64 (offset COMMAND).  No keyboard or mouse is attached: the controller
answers its own commands and a keyboard that ACKs (0xFA) everything, so a
guest's probe terminates.

Command 0xFE (pulse output line 0: CPU reset), or writing an output port
value with bit 0 clear (command 0xD1), calls `reset()`: the VM ends with a
"reset" event.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from bhive.actors.base import IrqLine, NullIrqLine

DATA = 0  # port 0x60
COMMAND = 4  # port 0x64 (offset from 0x60)

# Status register.
STS_OBF = 0x01  # output buffer full
STS_IBF = 0x02  # input buffer full (never: we consume at once)
STS_SYS = 0x04  # system flag (POST passed): set after self test / by the command byte
STS_CMD = 0x08  # last write was to the command port
STS_UNLOCKED = 0x10  # keyboard not inhibited
STS_AUX = 0x20  # output buffer data is from the aux device

# Command byte (controller RAM 0).
CB_KBD_INT = 0x01  # IRQ1 when a keyboard byte is in the output buffer
CB_AUX_INT = 0x02
CB_SYS = 0x04
CB_KBD_DISABLE = 0x10
CB_AUX_DISABLE = 0x20
CB_XLATE = 0x40
CB_RESET = CB_XLATE | CB_SYS | CB_KBD_INT  # what QEMU and SeaBIOS leave: 0x45

# Controller commands (written to 0x64).
CMD_READ_CB = 0x20
CMD_WRITE_CB = 0x60
CMD_AUX_DISABLE = 0xA7
CMD_AUX_ENABLE = 0xA8
CMD_AUX_TEST = 0xA9
CMD_SELF_TEST = 0xAA
CMD_KBD_TEST = 0xAB
CMD_KBD_DISABLE = 0xAD
CMD_KBD_ENABLE = 0xAE
CMD_READ_OUTPORT = 0xD0
CMD_WRITE_OUTPORT = 0xD1
CMD_WRITE_AUX = 0xD4
CMD_PULSE_RESET = 0xFE  # 0xF0-0xFF pulse output bits; bit 0 low = reset

SELF_TEST_OK = 0x55
KBD_ACK = 0xFA
KBD_BAT_OK = 0xAA
OUTPORT_RESET_LINE = 0x01  # 0 = CPU held in reset
OUTPORT_A20 = 0x02
OUTPORT_RESET = 0x03

OUT_QUEUE_MAX = 16


def _no_log(event: str, **fields: Any) -> None:
    pass


class I8042:
    """Wiring: reset() ends the VM, kbd_irq (IRQ1), log(event, **fields)."""

    def __init__(self, reset: Callable[[], None] = lambda: None, kbd_irq: IrqLine | None = None,
                 log: Callable[..., None] = _no_log) -> None:
        self.reset = reset
        self.kbd_irq = kbd_irq if kbd_irq is not None else NullIrqLine()
        self.log = log
        self.command_byte = CB_RESET
        self.outport = OUTPORT_RESET
        self.pending = 0  # controller command awaiting its data byte (0x60, 0xD1, 0xD4)
        self.out: deque[int] = deque()
        self.last_was_cmd = False
        self.irq_level = False

    def status(self) -> int:
        s = STS_UNLOCKED
        if self.out:
            s |= STS_OBF
        if self.command_byte & CB_SYS:
            s |= STS_SYS
        if self.last_was_cmd:
            s |= STS_CMD
        return s

    def _push(self, byte: int) -> None:
        if len(self.out) >= OUT_QUEUE_MAX:
            self.log("i8042_overflow", byte=byte)
            return
        self.out.append(byte & 0xFF)
        self._update_irq()

    def _update_irq(self) -> None:
        level = bool(self.out) and bool(self.command_byte & CB_KBD_INT) \
            and not self.command_byte & CB_KBD_DISABLE
        if level != self.irq_level:
            self.irq_level = level
            self.kbd_irq.set_level(level)

    def read(self, offset: int, size: int) -> int:
        if offset == COMMAND:
            return self.status()
        if offset == DATA:
            value = self.out.popleft() if self.out else 0x00
            self._update_irq()
            return value
        self.log("i8042_bad_read", offset=offset)
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == COMMAND:
            self.last_was_cmd = True
            self._command(value)
        elif offset == DATA:
            self.last_was_cmd = False
            self._data(value)
        else:
            self.log("i8042_bad_write", offset=offset, value=value)
        self._update_irq()

    def _command(self, cmd: int) -> None:
        self.pending = 0
        if cmd == CMD_READ_CB:
            self._push(self.command_byte)
        elif cmd in (CMD_WRITE_CB, CMD_WRITE_OUTPORT, CMD_WRITE_AUX):
            self.pending = cmd
        elif cmd == CMD_SELF_TEST:
            self.command_byte |= CB_SYS
            self._push(SELF_TEST_OK)
        elif cmd in (CMD_KBD_TEST, CMD_AUX_TEST):
            self._push(0x00)
        elif cmd == CMD_KBD_DISABLE:
            self.command_byte |= CB_KBD_DISABLE
        elif cmd == CMD_KBD_ENABLE:
            self.command_byte &= ~CB_KBD_DISABLE
        elif cmd == CMD_AUX_DISABLE:
            self.command_byte |= CB_AUX_DISABLE
        elif cmd == CMD_AUX_ENABLE:
            self.command_byte &= ~CB_AUX_DISABLE
        elif cmd == CMD_READ_OUTPORT:
            self._push(self.outport)
        elif 0xF0 <= cmd <= 0xFF:
            if not cmd & 0x01:  # bit 0 low in the pulse mask: pulse the reset line
                self.log("i8042_reset", command=cmd)
                self.reset()
        else:
            self.log("i8042_unknown_command", command=cmd)

    def _data(self, value: int) -> None:
        pending, self.pending = self.pending, 0
        if pending == CMD_WRITE_CB:
            self.command_byte = value
        elif pending == CMD_WRITE_OUTPORT:
            self.outport = value
            if not value & OUTPORT_RESET_LINE:
                self.log("i8042_reset", outport=value)
                self.reset()
        elif pending == CMD_WRITE_AUX:
            self.log("i8042_no_aux", value=value)  # no mouse: nothing answers
        else:
            # A byte to the keyboard: ACK it; 0xFF (reset) also passes BAT.
            self._push(KBD_ACK)
            if value == 0xFF:
                self._push(KBD_BAT_OK)

    def state(self) -> dict[str, Any]:
        return {"command_byte": self.command_byte, "outport": self.outport, "pending": self.pending,
                "out": list(self.out), "last_was_cmd": self.last_was_cmd, "irq_level": self.irq_level}

    @classmethod
    def from_state(cls, state: dict[str, Any], reset=lambda: None, kbd_irq=None, log=_no_log) -> "I8042":
        dev = cls(reset, kbd_irq, log)
        dev.command_byte = state["command_byte"]
        dev.outport = state["outport"]
        dev.pending = state["pending"]
        dev.out = deque(state["out"])
        dev.last_was_cmd = state["last_was_cmd"]
        dev.irq_level = state["irq_level"]
        return dev
