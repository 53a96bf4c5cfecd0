"""Intel 8042 keyboard controller with a PS/2 keyboard and an empty AUX port.

References: IBM PC/AT Technical Reference, "Keyboard controller"; the
OSDev-documented command set; QEMU hw/input/pckbd.c (the controller) and
hw/input/ps2.c (the keyboard), which this follows; what Linux's
drivers/input/serio/i8042.c, libps2.c and keyboard/atkbd.c send.

Ports: data at 0x60 (offset DATA), status (read) / command (write) at
0x64 (offset COMMAND).

The output buffer is a queue of (byte, source) entries.  The source says
which side the byte is on: the keyboard side (the controller's own replies,
0xD2 data, the keyboard's answers; IRQ1 when the command byte enables it)
or the AUX side (0xD3 loopback data, the "nothing answered" error; status
bit 5 and IRQ12).  The guest sees the first deliverable entry; bytes from
the keyboard wait while the keyboard interface is disabled.  Reading the
data port drops the line and raises it again if another byte follows, so
an edge-triggered IRQ sees every byte (QEMU ps2_read_data).

The keyboard is an MF2 keyboard: GET ID answers FA AB 83 (AB 41 through
the controller's set-2 -> set-1 translation), ECHO, LEDs, typematic rate,
scan-code set, enable/disable, reset (FA AA).  No mouse is attached: a byte
sent to the AUX device (0xD4 xx) is answered at once with 0xFE flagged AUX
+ timeout, as a controller with nothing on the port does, so that Linux's
psmouse/atkbd probes of the AUX port fail immediately.

Command 0xFE (pulse output line 0: CPU reset), or writing an output port
value with bit 0 clear (command 0xD1), calls `reset()`: the VM ends with a
"reset" event.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from bhive.actors.base import IrqLine, NullIrqLine, no_log
from bhive.actors.host import DeviceHost
from bhive.bus.schema import VmEvent

DATA = 0  # port 0x60
COMMAND = 4  # port 0x64 (offset from 0x60)

# Status register.
STS_OBF = 0x01  # output buffer full
STS_IBF = 0x02  # input buffer full (never: we consume at once)
STS_SYS = 0x04  # system flag (POST passed): set after self test / by the command byte
STS_CMD = 0x08  # last write was to the command port
STS_UNLOCKED = 0x10  # keyboard not inhibited
STS_AUX = 0x20  # output buffer data is from the aux device
STS_TIMEOUT = 0x40  # the device did not answer (with STS_AUX: the AUX port)
STS_PARITY = 0x80  # parity error on the byte received

# Command byte (controller RAM 0).
CB_KBD_INT = 0x01  # IRQ1 when a keyboard-side byte is in the output buffer
CB_AUX_INT = 0x02  # IRQ12 when an AUX-side byte is in the output buffer
CB_SYS = 0x04  # system flag, mirrored in STS_SYS
CB_KBD_DISABLE = 0x10  # keyboard interface clock held low
CB_AUX_DISABLE = 0x20  # AUX interface clock held low
CB_XLATE = 0x40  # translate keyboard bytes from scan-code set 2 to set 1
CB_RESET = CB_XLATE | CB_SYS | CB_KBD_INT  # what QEMU and SeaBIOS leave: 0x45

# Controller commands (written to 0x64).
CMD_READ_CB = 0x20  # command byte -> output buffer
CMD_WRITE_CB = 0x60  # next data byte -> command byte
CMD_AUX_DISABLE = 0xA7  # set CB_AUX_DISABLE
CMD_AUX_ENABLE = 0xA8  # clear CB_AUX_DISABLE
CMD_AUX_TEST = 0xA9  # AUX interface test: 0x00 = lines fine
CMD_SELF_TEST = 0xAA  # controller self test: 0x55, sets the system flag
CMD_KBD_TEST = 0xAB  # keyboard interface test: 0x00 = lines fine
CMD_KBD_DISABLE = 0xAD  # set CB_KBD_DISABLE
CMD_KBD_ENABLE = 0xAE  # clear CB_KBD_DISABLE
CMD_READ_INPORT = 0xC0  # input port -> output buffer
CMD_READ_OUTPORT = 0xD0  # output port -> output buffer
CMD_WRITE_OUTPORT = 0xD1  # next data byte -> output port (bit 0 low: reset)
CMD_WRITE_KBD_OBUF = 0xD2  # next data byte -> output buffer, as if from the keyboard
CMD_WRITE_AUX_OBUF = 0xD3  # next data byte -> output buffer, as if from the AUX device
CMD_WRITE_AUX = 0xD4  # next data byte -> the AUX device
CMD_DISABLE_A20 = 0xDD  # clear the output port's A20 bit (HP Vectra)
CMD_ENABLE_A20 = 0xDF  # set the output port's A20 bit (HP Vectra)
CMD_PULSE_RESET = 0xFE  # 0xF0-0xFF pulse output bits; bit 0 low = reset

# Commands whose next data byte is theirs (not the keyboard's).
DATA_COMMANDS = (CMD_WRITE_CB, CMD_WRITE_OUTPORT, CMD_WRITE_KBD_OBUF, CMD_WRITE_AUX_OBUF,
                 CMD_WRITE_AUX)

SELF_TEST_OK = 0x55
INTERFACE_OK = 0x00  # answer to 0xA9 / 0xAB
INPORT_VALUE = 0x80  # input port: keyboard not inhibited (QEMU)
OUTPORT_RESET_LINE = 0x01  # 0 = CPU held in reset
OUTPORT_A20 = 0x02
OUTPORT_RESET = 0x03

# Keyboard commands (data port bytes while no controller command waits).
KBD_CMD_SET_LEDS = 0xED  # + 1 byte: scroll/num/caps lock LEDs
KBD_CMD_ECHO = 0xEE  # answers 0xEE
KBD_CMD_SCANCODE = 0xF0  # + 1 byte: 0 = query, 1-3 = select set
KBD_CMD_GET_ID = 0xF2  # answers ACK 0xAB 0x83
KBD_CMD_SET_RATE = 0xF3  # + 1 byte: typematic rate and delay
KBD_CMD_ENABLE = 0xF4  # start scanning
KBD_CMD_RESET_DISABLE = 0xF5  # defaults, stop scanning
KBD_CMD_RESET_ENABLE = 0xF6  # defaults, scan
KBD_CMD_SET_ALL_FIRST = 0xF7  # 0xF7-0xFA: set-3 key types for all keys
KBD_CMD_SET_ALL_LAST = 0xFA
KBD_CMD_SET_KEY_FIRST = 0xFB  # 0xFB-0xFD + 1 byte: set-3 key type of one key
KBD_CMD_SET_KEY_LAST = 0xFD
KBD_CMD_RESET = 0xFF  # ACK, then BAT passed (0xAA)

# Commands that take one parameter byte.
KBD_PARAM_COMMANDS = (KBD_CMD_SET_LEDS, KBD_CMD_SCANCODE, KBD_CMD_SET_RATE)

# Keyboard replies.
KBD_ACK = 0xFA  # command accepted
KBD_RESEND = 0xFE  # command not understood: send it again
KBD_BAT_OK = 0xAA  # basic assurance test passed (after reset)
KBD_ID = (0xAB, 0x83)  # MF2 keyboard
KBD_SCAN_SET_DEFAULT = 2

# The controller's set-2 -> set-1 translation (CB_XLATE) of the bytes below
# 0x80 a keyboard sends as replies: the ID's 0x83 and the scan-set numbers
# (QEMU translate_table); the reply bytes >= 0x80 (FA, FE, AA, EE, AB) map
# to themselves.
XLATE = {0x83: 0x41, 0x01: 0x43, 0x02: 0x41, 0x03: 0x3F}

# Where an output byte comes from (the second element of each queue entry).
SRC_CTRL = 0  # the controller itself (command replies, 0xD2): keyboard side
SRC_KBD = 1  # the keyboard: keyboard side, waits while the keyboard interface is disabled
SRC_AUX = 2  # AUX side (0xD3 loopback)
SRC_AUX_TIMEOUT = 3  # AUX side with the timeout flag: nothing answered a 0xD4 byte
SRC_STATUS = {SRC_CTRL: 0, SRC_KBD: 0, SRC_AUX: STS_AUX, SRC_AUX_TIMEOUT: STS_AUX | STS_TIMEOUT}
AUX_SIDE = (SRC_AUX, SRC_AUX_TIMEOUT)
AUX_NO_DEVICE = 0xFE  # the byte a controller returns when the AUX device does not answer

OUT_QUEUE_MAX = 16


class I8042:
    """Wiring: reset() ends the VM, kbd_irq (IRQ1), aux_irq (IRQ12), log(event, **fields)."""

    def __init__(self, reset: Callable[[], None] = lambda: None, kbd_irq: IrqLine | None = None,
                 log: Callable[..., None] = no_log, aux_irq: IrqLine | None = None) -> None:
        self.reset = reset
        self.kbd_irq = kbd_irq if kbd_irq is not None else NullIrqLine()
        self.aux_irq = aux_irq if aux_irq is not None else NullIrqLine()
        self.log = log
        self.command_byte = CB_RESET
        self.outport = OUTPORT_RESET
        self.pending = 0  # controller command awaiting its data byte (DATA_COMMANDS)
        self.out: deque[tuple[int, int]] = deque()  # (byte, SRC_*)
        self.last_out = 0x00  # the data port reads its last byte again when empty
        self.last_was_cmd = False
        self.kbd_level = False  # what we drive on kbd_irq / aux_irq
        self.aux_level = False
        # The keyboard.
        self.kbd_pending = 0  # keyboard command awaiting its parameter byte
        self.scan_set = KBD_SCAN_SET_DEFAULT
        self.scanning = True
        self.leds = 0

    # --- output buffer -------------------------------------------------------
    def _head(self) -> int | None:
        """Index of the entry the guest sees in the output buffer."""
        for i, (_, src) in enumerate(self.out):
            if src == SRC_KBD and self.command_byte & CB_KBD_DISABLE:
                continue
            return i
        return None

    def status(self) -> int:
        s = STS_UNLOCKED
        head = self._head()
        if head is not None:
            s |= STS_OBF | SRC_STATUS[self.out[head][1]]
        if self.command_byte & CB_SYS:
            s |= STS_SYS
        if self.last_was_cmd:
            s |= STS_CMD
        return s

    def _push(self, byte: int, src: int = SRC_CTRL) -> None:
        if len(self.out) >= OUT_QUEUE_MAX:
            self.log("i8042_overflow", byte=byte, src=src)
            return
        self.out.append((byte & 0xFF, src))

    def _kbd_reply(self, *data: int) -> None:
        """Bytes from the keyboard, through the controller's translation."""
        for byte in data:
            if self.command_byte & CB_XLATE:
                byte = XLATE.get(byte, byte)
            self._push(byte, SRC_KBD)

    def _levels(self) -> tuple[bool, bool]:
        head = self._head()
        if head is None:
            return False, False
        if self.out[head][1] in AUX_SIDE:
            return False, bool(self.command_byte & CB_AUX_INT)
        return bool(self.command_byte & CB_KBD_INT), False

    def _drive(self, kbd: bool, aux: bool) -> None:
        if kbd != self.kbd_level:
            self.kbd_level = kbd
            self.kbd_irq.set_level(kbd)
        if aux != self.aux_level:
            self.aux_level = aux
            self.aux_irq.set_level(aux)

    def _update_irq(self) -> None:
        self._drive(*self._levels())

    # --- guest access --------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == COMMAND:
            return self.status()
        if offset == DATA:
            head = self._head()
            if head is None:
                return self.last_out
            self.last_out = self.out[head][0]
            del self.out[head]
            # Reading deasserts the line; the next byte raises it again (a new edge).
            self._drive(False, False)
            self._update_irq()
            return self.last_out
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
        elif cmd in DATA_COMMANDS:
            self.pending = cmd
        elif cmd == CMD_SELF_TEST:
            self.command_byte |= CB_SYS
            self._push(SELF_TEST_OK)
        elif cmd in (CMD_KBD_TEST, CMD_AUX_TEST):
            self._push(INTERFACE_OK)
        elif cmd == CMD_KBD_DISABLE:
            self.command_byte |= CB_KBD_DISABLE
        elif cmd == CMD_KBD_ENABLE:
            self.command_byte &= ~CB_KBD_DISABLE
        elif cmd == CMD_AUX_DISABLE:
            self.command_byte |= CB_AUX_DISABLE
        elif cmd == CMD_AUX_ENABLE:
            self.command_byte &= ~CB_AUX_DISABLE
        elif cmd == CMD_READ_INPORT:
            self._push(INPORT_VALUE)
        elif cmd == CMD_READ_OUTPORT:
            self._push(self.outport)
        elif cmd == CMD_DISABLE_A20:
            self.outport &= ~OUTPORT_A20
        elif cmd == CMD_ENABLE_A20:
            self.outport |= OUTPORT_A20
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
        elif pending == CMD_WRITE_KBD_OBUF:
            self._push(value, SRC_CTRL)
        elif pending == CMD_WRITE_AUX_OBUF:
            self._push(value, SRC_AUX)
        elif pending == CMD_WRITE_AUX:
            # Sending enables the AUX interface; nothing is there to answer.
            self.command_byte &= ~CB_AUX_DISABLE
            self._push(AUX_NO_DEVICE, SRC_AUX_TIMEOUT)
        else:
            # Sending enables the keyboard interface (QEMU kbd_write_data).
            self.command_byte &= ~CB_KBD_DISABLE
            self._keyboard(value)

    # --- the keyboard --------------------------------------------------------
    def _keyboard(self, value: int) -> None:
        # A new byte aborts the unread answer to the previous one (QEMU ps2_cqueue_reset).
        self.out = deque(e for e in self.out if e[1] != SRC_KBD)
        pending, self.kbd_pending = self.kbd_pending, 0
        if pending == KBD_CMD_SET_LEDS:
            self.leds = value & 0x07
            self._kbd_reply(KBD_ACK)
        elif pending == KBD_CMD_SET_RATE:
            self._kbd_reply(KBD_ACK)
        elif pending == KBD_CMD_SCANCODE:
            if value == 0:
                self._kbd_reply(KBD_ACK, self.scan_set)
            elif 1 <= value <= 3:
                self.scan_set = value
                self._kbd_reply(KBD_ACK)
            else:
                self._kbd_reply(KBD_RESEND)
        elif pending:  # 0xFB-0xFD: the key's make code
            self._kbd_reply(KBD_ACK)
        elif value in KBD_PARAM_COMMANDS or KBD_CMD_SET_KEY_FIRST <= value <= KBD_CMD_SET_KEY_LAST:
            self.kbd_pending = value
            self._kbd_reply(KBD_ACK)
        elif value == KBD_CMD_GET_ID:
            self._kbd_reply(KBD_ACK, *KBD_ID)
        elif value == KBD_CMD_ECHO:
            self._kbd_reply(KBD_CMD_ECHO)
        elif value == KBD_CMD_ENABLE:
            self.scanning = True
            self._kbd_reply(KBD_ACK)
        elif value in (KBD_CMD_RESET_DISABLE, KBD_CMD_RESET_ENABLE):
            self._kbd_defaults()
            self.scanning = value == KBD_CMD_RESET_ENABLE
            self._kbd_reply(KBD_ACK)
        elif KBD_CMD_SET_ALL_FIRST <= value <= KBD_CMD_SET_ALL_LAST:
            self._kbd_reply(KBD_ACK)
        elif value == KBD_CMD_RESET:
            self._kbd_defaults()
            self._kbd_reply(KBD_ACK, KBD_BAT_OK)
        else:
            self.log("i8042_kbd_unknown_command", command=value)
            self._kbd_reply(KBD_RESEND)

    def _kbd_defaults(self) -> None:
        self.scan_set = KBD_SCAN_SET_DEFAULT
        self.scanning = True
        self.leds = 0

    # --- restart ---------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"command_byte": self.command_byte, "outport": self.outport, "pending": self.pending,
                "out": [list(e) for e in self.out], "last_out": self.last_out,
                "last_was_cmd": self.last_was_cmd, "kbd_level": self.kbd_level,
                "aux_level": self.aux_level, "kbd_pending": self.kbd_pending,
                "scan_set": self.scan_set, "scanning": self.scanning, "leds": self.leds}

    @classmethod
    def from_state(cls, state: dict[str, Any], reset=lambda: None, kbd_irq=None, log=no_log,
                   aux_irq=None) -> "I8042":
        dev = cls(reset, kbd_irq, log, aux_irq)
        dev.command_byte = state["command_byte"]
        dev.outport = state["outport"]
        dev.pending = state["pending"]
        dev.out = deque((byte, src) for byte, src in state["out"])
        dev.last_out = state["last_out"]
        dev.last_was_cmd = state["last_was_cmd"]
        dev.kbd_level = state["kbd_level"]
        dev.aux_level = state["aux_level"]
        dev.kbd_pending = state["kbd_pending"]
        dev.scan_set = state["scan_set"]
        dev.scanning = state["scanning"]
        dev.leds = state["leds"]
        return dev


# --- the actor: the model hosted in its own process ---------------------------


class I8042Host(DeviceHost):
    """Keyboard controller at `port` (0x60) and 0x64: the keyboard's line
    (`irq`, IRQ1) and the AUX port's (`aux_irq`, IRQ12); its reset line
    ends the VM with a "reset" event."""

    def setup(self) -> None:
        self.irq = self.connect_irq(self.cfg.options["irq"])
        self.aux_irq = self.connect_irq(self.cfg.options["aux_irq"])

    def model_args(self) -> dict:
        return {"reset": self._reset, "kbd_irq": self.irq, "aux_irq": self.aux_irq, "log": self.log}

    def _reset(self) -> None:
        self.runtime.event(VmEvent(self.runtime.role, "reset", 0, "i8042 reset line pulsed"))
