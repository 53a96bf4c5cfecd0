"""Intel 8254 PIT (ports 0x40-0x43) and PC system control port B (0x61).

Reference: Intel 82C54 datasheet (order 231244-006): "Control Word
Format", "Read Operations" (counter latch, read-back), "Mode Definitions".

Counters are never ticked.  Each channel remembers when its count was
loaded; the current count and OUT are computed from the elapsed time given
by the injected clock(), like QEMU's i8254 and bhyve's vatpit.  For IRQ0 the
host asks next_event_ns() when OUT0 next rises and calls advance(now_ns),
which pulses the IRQ line once however many periods were missed (a late
host coalesces ticks rather than bursting them; the guest's clocksource
catches up from the count).

Modes: 0, 2 and 3 are modelled; 1 and 5 (gate-triggered) and 4 (strobe)
count like mode 0 after the count is written; 6 and 7 are 2 and 3, as the
datasheet says.  BCD counting is logged and counted in binary.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from bhive.actors.base import IrqLine, NullIrqLine, no_log
from bhive.actors.host import DeviceHost

# Port offsets from 0x40.
COUNTER0 = 0  # channel 0: system timer, OUT0 drives IRQ0
COUNTER1 = 1  # channel 1: DRAM refresh on old PCs, no output here
COUNTER2 = 2  # channel 2: speaker and calibration, gate and OUT via port 0x61
CONTROL = 3  # control word (write only)
NUM_CHANNELS = 3

PIT_HZ = 1_193_182  # input clock, 14.31818 MHz / 12
NS_PER_S = 1_000_000_000

# Control word fields.
CW_SELECT_SHIFT = 6  # bits 7-6: counter, or 3 = read-back
CW_READ_BACK = 3  # select value of the read-back command
CW_ACCESS_SHIFT = 4  # bits 5-4: access mode, 0 = counter latch command
CW_MODE_SHIFT = 1  # bits 3-1: mode
CW_BCD = 0x01  # BCD counting

# Access modes (control word bits 5-4).
ACCESS_LATCH = 0  # counter latch command
ACCESS_LO = 1  # LSB only
ACCESS_HI = 2  # MSB only
ACCESS_LOHI = 3  # LSB then MSB

# Read-back command bits.
RB_NO_COUNT = 0x20  # active low: 0 latches the counts
RB_NO_STATUS = 0x10  # active low: 0 latches the statuses
RB_COUNTER_SHIFT = 1  # bits 1-3 select counters 0-2

# Status byte (read-back).
STATUS_OUT = 0x80  # OUT pin
STATUS_NULL_COUNT = 0x40  # count written but not yet loaded
STATUS_PROGRAM_MASK = 0x3F  # RW, mode and BCD as last programmed

# Modes.
MODE_TERMINAL_COUNT = 0  # interrupt on terminal count
MODE_ONE_SHOT = 1  # hardware retriggerable one-shot
MODE_RATE = 2  # rate generator
MODE_SQUARE = 3  # square wave
MODE_SW_STROBE = 4  # software triggered strobe
MODE_HW_STROBE = 5  # hardware triggered strobe

PORTB_PORT = 0x61  # ISA port of system control port B (PC/AT technical reference)

# Port 0x61 (system control port B) bits.
PORTB_GATE2 = 0x01  # gate of channel 2
PORTB_SPEAKER = 0x02  # speaker data enable
PORTB_CHECKS = 0x0C  # parity/IOCHK check disables; stored, nothing to check
PORTB_REFRESH = 0x10  # toggles on every read (Linux and BIOSes delay on it)
PORTB_OUT2 = 0x20  # OUT of channel 2
PORTB_WRITABLE = PORTB_GATE2 | PORTB_SPEAKER | PORTB_CHECKS

UNMAPPED_READ = 0xFF  # an undecoded port, or the write-only control word


def ticks_between(start_ns: int, end_ns: int) -> int:
    """Whole PIT clocks elapsed from start_ns to end_ns."""
    return max(0, end_ns - start_ns) * PIT_HZ // NS_PER_S


def ns_of_tick(start_ns: int, tick: int) -> int:
    """The first nanosecond at which `tick` clocks have elapsed."""
    return start_ns + -(-tick * NS_PER_S // PIT_HZ)


@dataclass
class PitChannel:
    """One counter: its programming, its load time and the read/write
    flip-flops of the current access mode."""

    mode: int = 0
    access: int = ACCESS_LOHI
    bcd: bool = False
    reload: int = 0x10000  # count register; a written 0 means 65536
    counting: bool = False  # a count has been loaded since the control word
    load_ns: int = 0  # clock() when the count was loaded
    gate: bool = True
    gate_low_ns: int = 0  # when gate fell (counting frozen since)
    null_count: bool = True
    write_msb_next: bool = False  # LOHI write flip-flop
    write_lsb: int = 0  # LSB held until the MSB arrives
    read_msb_next: bool = False  # LOHI read flip-flop for live reads
    latched: list[int] = field(default_factory=list)  # bytes of a latched count
    status_latched: int | None = None  # a read-back status byte


@dataclass
class PitRegisters:
    channels: list[PitChannel] = field(
        default_factory=lambda: [PitChannel() for _ in range(NUM_CHANNELS)]
    )
    irq_edges_delivered: int = 0  # OUT0 rising edges already turned into IRQ0


class Pit8254:
    """Wiring: irq (IRQ0), clock() -> ns, log(event, **fields).
    Host side: next_event_ns(), advance(now_ns), set_gate(channel, level),
    out(channel) -- the latter two for the port 0x61 model."""

    def __init__(
        self,
        clock: Callable[[], int],
        irq: IrqLine | None = None,
        log: Callable[..., None] = no_log,
    ) -> None:
        self.clock = clock
        self.irq = irq if irq is not None else NullIrqLine()
        self.log = log
        self.regs = PitRegisters()
        # Channels 0 and 1 have their gates tied high; channel 2's starts
        # low until port 0x61 raises it, as on a PC.
        self.regs.channels[COUNTER2].gate = False

    # --- counting -------------------------------------------------------

    @staticmethod
    def _effective_mode(mode: int) -> int:
        if mode >= 6:
            return mode - 4  # 110 and 111 are modes 2 and 3
        if mode in (MODE_ONE_SHOT, MODE_SW_STROBE, MODE_HW_STROBE):
            return MODE_TERMINAL_COUNT
        return mode

    def _elapsed(self, ch: PitChannel, now: int) -> int:
        end = now if ch.gate else ch.gate_low_ns
        return ticks_between(ch.load_ns, end)

    def _count(self, ch: PitChannel, now: int) -> int:
        if not ch.counting:
            return ch.reload & 0xFFFF
        d = self._elapsed(ch, now)
        mode = self._effective_mode(ch.mode)
        if mode == MODE_RATE:
            return (ch.reload - d % ch.reload) & 0xFFFF
        if mode == MODE_SQUARE:
            # Decrements by two per clock (exact for even counts).
            return (ch.reload - (2 * d) % ch.reload) & 0xFFFF
        return (ch.reload - d) & 0xFFFF  # mode 0 wraps and keeps counting

    def _out(self, ch: PitChannel, now: int) -> bool:
        mode = self._effective_mode(ch.mode)
        if not ch.counting:
            return mode != MODE_TERMINAL_COUNT  # mode 0 OUT goes low on the control word
        if mode != MODE_TERMINAL_COUNT and not ch.gate:
            return True  # modes 2/3: gate low forces OUT high
        d = self._elapsed(ch, now)
        if mode == MODE_RATE:
            return d % ch.reload != ch.reload - 1  # low for the clock at count 1
        if mode == MODE_SQUARE:
            return d % ch.reload < (ch.reload + 1) // 2  # high for the first half
        return d >= ch.reload

    def _rising_edges(self, ch: PitChannel, now: int) -> int:
        """OUT rising edges since the count was loaded (0 or 1 for mode 0)."""
        if not ch.counting:
            return 0
        d = self._elapsed(ch, now)
        if self._effective_mode(ch.mode) == MODE_TERMINAL_COUNT:
            return 1 if d >= ch.reload else 0
        return d // ch.reload  # modes 2/3 rise again at every period end

    # --- guest accesses -------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if size != 1:
            self.log("pit_wide_access", op="read", offset=offset, size=size)
        if offset == CONTROL:
            self.log("pit_read_control")
            return UNMAPPED_READ
        if not 0 <= offset < NUM_CHANNELS:
            self.log("pit_unknown_read", offset=offset)
            return UNMAPPED_READ
        ch = self.regs.channels[offset]
        if ch.status_latched is not None:
            status, ch.status_latched = ch.status_latched, None
            return status
        if ch.latched:
            return ch.latched.pop(0)
        count = self._count(ch, self.clock())
        if ch.access == ACCESS_LO:
            return count & 0xFF
        if ch.access == ACCESS_HI:
            return count >> 8
        if ch.read_msb_next:
            ch.read_msb_next = False
            return count >> 8
        ch.read_msb_next = True
        return count & 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 1:
            self.log("pit_wide_access", op="write", offset=offset, size=size)
        value &= 0xFF
        if offset == CONTROL:
            self._write_control(value)
        elif 0 <= offset < NUM_CHANNELS:
            self._write_count(offset, value)
        else:
            self.log("pit_unknown_write", offset=offset, value=value)

    def _write_control(self, value: int) -> None:
        select = value >> CW_SELECT_SHIFT
        if select == CW_READ_BACK:
            self._read_back(value)
            return
        ch = self.regs.channels[select]
        access = (value >> CW_ACCESS_SHIFT) & 3
        if access == ACCESS_LATCH:
            # Counter latch: a second latch before the first is read is ignored.
            if not ch.latched:
                ch.latched = self._count_bytes(ch, self._count(ch, self.clock()))
            return
        ch.access = access
        ch.mode = (value >> CW_MODE_SHIFT) & 7
        ch.bcd = bool(value & CW_BCD)
        if ch.bcd:
            self.log("pit_bcd_unsupported", channel=select)
        if ch.mode in (MODE_ONE_SHOT, MODE_SW_STROBE, MODE_HW_STROBE):
            self.log("pit_mode_approximated", channel=select, mode=ch.mode)
        # A control word resets the flip-flops and stops the counter until
        # a new count arrives; mode 0 OUT goes low at once.
        ch.counting = False
        ch.null_count = True
        ch.write_msb_next = False
        ch.read_msb_next = False
        ch.latched = []
        ch.status_latched = None
        if select == COUNTER0:
            self.regs.irq_edges_delivered = 0

    def _read_back(self, value: int) -> None:
        now = self.clock()
        for n in range(NUM_CHANNELS):
            if not value & (1 << (RB_COUNTER_SHIFT + n)):
                continue
            ch = self.regs.channels[n]
            if not value & RB_NO_STATUS and ch.status_latched is None:
                status = (ch.access << CW_ACCESS_SHIFT) | (ch.mode << CW_MODE_SHIFT)
                status |= CW_BCD if ch.bcd else 0
                status |= STATUS_OUT if self._out(ch, now) else 0
                status |= STATUS_NULL_COUNT if ch.null_count else 0
                ch.status_latched = status
            if not value & RB_NO_COUNT and not ch.latched:
                ch.latched = self._count_bytes(ch, self._count(ch, now))

    @staticmethod
    def _count_bytes(ch: PitChannel, count: int) -> list[int]:
        if ch.access == ACCESS_LO:
            return [count & 0xFF]
        if ch.access == ACCESS_HI:
            return [count >> 8]
        return [count & 0xFF, count >> 8]

    def _write_count(self, n: int, byte: int) -> None:
        ch = self.regs.channels[n]
        if ch.access == ACCESS_LO:
            self._load(n, byte)
        elif ch.access == ACCESS_HI:
            self._load(n, byte << 8)
        elif not ch.write_msb_next:
            ch.write_lsb = byte
            ch.write_msb_next = True
            if self._effective_mode(ch.mode) == MODE_TERMINAL_COUNT:
                ch.counting = False  # mode 0: the first byte stops counting
                ch.null_count = True
        else:
            ch.write_msb_next = False
            self._load(n, ch.write_lsb | (byte << 8))

    def _load(self, n: int, count: int) -> None:
        ch = self.regs.channels[n]
        ch.reload = count or 0x10000
        ch.load_ns = self.clock()
        if not ch.gate:
            ch.gate_low_ns = ch.load_ns
        ch.counting = True
        ch.null_count = False
        if n == COUNTER0:
            self.regs.irq_edges_delivered = 0

    # --- host side ------------------------------------------------------

    def set_gate(self, n: int, level: bool) -> None:
        ch = self.regs.channels[n]
        level = bool(level)
        if level == ch.gate:
            return
        now = self.clock()
        if not level:
            ch.gate_low_ns = now
        elif self._effective_mode(ch.mode) == MODE_TERMINAL_COUNT:
            ch.load_ns += now - ch.gate_low_ns  # resume where it paused
        else:
            ch.load_ns = now  # modes 2/3: a rising gate reloads the count
        ch.gate = level

    def out(self, n: int) -> bool:
        return self._out(self.regs.channels[n], self.clock())

    def next_event_ns(self) -> int | None:
        """When OUT0 next rises (IRQ0), or None if it never will."""
        ch = self.regs.channels[COUNTER0]
        if not ch.counting:
            return None
        k = self.regs.irq_edges_delivered + 1
        if self._effective_mode(ch.mode) == MODE_TERMINAL_COUNT:
            if k > 1:
                return None
            return ns_of_tick(ch.load_ns, ch.reload)
        return ns_of_tick(ch.load_ns, k * ch.reload)

    def advance(self, now_ns: int) -> int:
        """Raise IRQ0 for OUT0 edges up to now_ns, one pulse however many
        were missed.  Returns the number of periods that expired."""
        edges = self._rising_edges(self.regs.channels[COUNTER0], now_ns)
        expired = edges - self.regs.irq_edges_delivered
        if expired <= 0:
            return 0
        self.regs.irq_edges_delivered = edges
        if expired > 1:
            self.log("pit_ticks_coalesced", missed=expired - 1)
        # A pulse: both the edge-triggered PIC input and IOAPIC pin see 0->1.
        self.irq.set_level(True)
        self.irq.set_level(False)
        return expired

    # --- snapshot -------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "channels": [asdict(ch) for ch in self.regs.channels],
            "irq_edges_delivered": self.regs.irq_edges_delivered,
        }

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        clock: Callable[[], int],
        irq: IrqLine | None = None,
        log: Callable[..., None] = no_log,
    ) -> "Pit8254":
        """Rebuild; the clock must be the same timeline (load times are
        absolute clock() values)."""
        pit = cls(clock=clock, irq=irq, log=log)
        pit.regs = PitRegisters(
            channels=[PitChannel(**{**ch, "latched": list(ch["latched"])}) for ch in state["channels"]],
            irq_edges_delivered=state["irq_edges_delivered"],
        )
        return pit


@dataclass
class PortBRegisters:
    """The writable bits of port 0x61 and the refresh toggle."""

    control: int = 0  # PORTB_WRITABLE bits; gate 2 is mirrored into the PIT
    refresh: bool = False


class SystemControlPortB:
    """Port 0x61 (one port, offset 0): channel 2 gate, speaker enable, OUT2
    status, and the refresh bit that flips on every read."""

    def __init__(self, pit: Pit8254, log: Callable[..., None] = no_log) -> None:
        self.pit = pit
        self.log = log
        self.regs = PortBRegisters()

    def read(self, offset: int, size: int) -> int:
        if offset != 0 or size != 1:
            self.log("portb_bad_access", op="read", offset=offset, size=size)
            if offset != 0:
                return UNMAPPED_READ
        r = self.regs
        # Linux's and BIOS delay loops wait for this bit to change.
        r.refresh = not r.refresh
        value = r.control
        if r.refresh:
            value |= PORTB_REFRESH
        if self.pit.out(COUNTER2):
            value |= PORTB_OUT2
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if offset != 0 or size != 1:
            self.log("portb_bad_access", op="write", offset=offset, size=size, value=value)
            if offset != 0:
                return
        self.regs.control = value & PORTB_WRITABLE
        self.pit.set_gate(COUNTER2, bool(value & PORTB_GATE2))

    def state(self) -> dict[str, Any]:
        return asdict(self.regs)

    @classmethod
    def from_state(
        cls, state: dict[str, Any], pit: Pit8254, log: Callable[..., None] = no_log
    ) -> "SystemControlPortB":
        dev = cls(pit, log=log)
        dev.regs = PortBRegisters(**state)
        return dev


# --- the actor: the model hosted in its own process ---------------------------


class PitHost(DeviceHost):
    """8254 at `port` (0x40) + port B at 0x61.  IRQ0 edges come from the
    runtime's timer hook."""

    def setup(self) -> None:
        self.irq = self.connect_irq(self.cfg.options["irq"])
        self.ticks = 0

    def model_args(self) -> dict:
        return {"clock": time.monotonic_ns, "irq": self.irq, "log": self.log}

    def build_model(self, state=None):
        model = super().build_model(state)
        self.portb = SystemControlPortB(model, log=self.log)
        return model

    def port_target(self, port):
        if port == PORTB_PORT:
            return self.portb, 0
        return self.model, port - self.port_base

    def next_deadline(self):
        ns = self.model.next_event_ns()
        return None if ns is None else ns / 1e9

    def on_timer(self, now):
        if self.model.advance(time.monotonic_ns()):
            self.ticks += 1
        self.runtime.commit()

    def state(self):
        return {**super().state(), "portb": self.portb.state(), "ticks": self.ticks}

    def restore(self, state):
        super().restore(state)
        self.portb = SystemControlPortB.from_state(state["portb"], self.model, log=self.log)
        self.ticks = state["ticks"]

    def counters(self):
        return {"irq0_ticks": self.ticks}
