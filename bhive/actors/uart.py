"""16550A UART, modelled on rust-vmm vm-superio's serial.rs.

References are to the National Semiconductor PC16550D datasheet (June 1995).

Timing is not modelled: a byte written to THR goes to the console at once
(or waits, with THRE clear, while the console pushes back), and a received
byte is available at once.  Consequences, both invisible to a driver that
follows the datasheet:

* the 4-character-time RX timeout (IIR 0x0C) is treated as already expired
  whenever the FIFO holds fewer bytes than the trigger level;
* the THRE interrupt of a byte the console accepted is raised as soon as
  the THR write returns.

The IRQ output is a level: asserted while an enabled interrupt is pending
and OUT2 is set, because PC boards drive the IRQ through a buffer enabled by
the (active-low) OUT2 pin.  In loopback mode the modem outputs, OUT2 among
them, are forced inactive (datasheet section 8.6), so the IRQ is gated off
even though the interrupt logic keeps running and IIR still reports it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from bhive.actors.base import IrqLine, NullIrqLine, no_log
from bhive.actors.host import DeviceHost
from bhive.bus.shm import ConsoleRing

# Register offsets from the base port (section 8.1, table II).
RBR_THR = 0  # receiver buffer (read) / transmitter holding (write)
IER = 1  # interrupt enable
IIR_FCR = 2  # interrupt identification (read) / FIFO control (write)
LCR = 3  # line control
MCR = 4  # modem control
LSR = 5  # line status
MSR = 6  # modem status
SCR = 7  # scratch
DLL = 0  # divisor latch low, replaces RBR/THR while LCR.DLAB is set
DLM = 1  # divisor latch high, replaces IER while LCR.DLAB is set
REGISTER_COUNT = 8  # the UART decodes 8 ports

# IER bits.
IER_ERBFI = 0x01  # received data available (and RX timeout) interrupt
IER_ETBEI = 0x02  # transmitter holding register empty interrupt
IER_ELSI = 0x04  # receiver line status interrupt
IER_EDSSI = 0x08  # modem status interrupt
IER_MASK = 0x0F  # bits 4-7 are always zero on a 16550

# IIR values (section 8.5, table IV), highest priority first.
IIR_NO_INTERRUPT = 0x01  # bit 0 set: nothing pending
IIR_LINE_STATUS = 0x06  # OE/PE/FE/BI; cleared by reading LSR
IIR_RX_DATA = 0x04  # RX FIFO at trigger level; cleared when it drops below
IIR_RX_TIMEOUT = 0x0C  # data below trigger level, not read for a while
IIR_THR_EMPTY = 0x02  # cleared by reading IIR (when the source) or writing THR
IIR_MODEM_STATUS = 0x00  # MSR delta bits; cleared by reading MSR
IIR_FIFO_ENABLED = 0xC0  # bits 6-7 read 1 when FCR bit 0 is set

# FCR bits (section 8.4).
FCR_FIFO_ENABLE = 0x01  # enable both FIFOs; other bits ignored unless set
FCR_CLEAR_RX = 0x02  # clear RX FIFO (self-clearing)
FCR_CLEAR_TX = 0x04  # clear TX FIFO (self-clearing)
FCR_DMA_MODE = 0x08  # RXRDY/TXRDY pin mode; no pins here, only remembered
FCR_TRIGGER_SHIFT = 6  # bits 6-7 select the RX trigger level
FCR_STORED = FCR_FIFO_ENABLE | FCR_DMA_MODE | 0xC0  # bits that persist
RX_TRIGGER_LEVELS = (1, 4, 8, 14)  # bytes, indexed by FCR bits 6-7
FIFO_SIZE = 16  # both FIFOs hold 16 bytes

# LCR bits.
LCR_DLAB = 0x80  # divisor latch access

# MCR bits.
MCR_DTR = 0x01  # data terminal ready
MCR_RTS = 0x02  # request to send
MCR_OUT1 = 0x04  # user output 1
MCR_OUT2 = 0x08  # user output 2; gates the IRQ on PC boards
MCR_LOOP = 0x10  # loopback
MCR_MASK = 0x1F  # bits 5-7 are always zero on a 16550

# LSR bits.
LSR_DR = 0x01  # data ready
LSR_OE = 0x02  # overrun error
LSR_PE = 0x04  # parity error (never, the line is perfect)
LSR_FE = 0x08  # framing error (never)
LSR_BI = 0x10  # break interrupt (never)
LSR_THRE = 0x20  # transmitter holding register (or TX FIFO) empty
LSR_TEMT = 0x40  # transmitter empty: THR/FIFO and shift register
LSR_RX_FIFO_ERROR = 0x80  # PE/FE/BI in the FIFO (never)
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI  # sources of the line-status interrupt

# MSR bits.
MSR_DCTS = 0x01  # delta CTS
MSR_DDSR = 0x02  # delta DSR
MSR_TERI = 0x04  # trailing edge (1 -> 0) of RI
MSR_DDCD = 0x08  # delta DCD
MSR_DELTAS = 0x0F  # the bits whose setting raises the modem-status interrupt
MSR_CTS = 0x10  # clear to send (RTS in loopback)
MSR_DSR = 0x20  # data set ready (DTR in loopback)
MSR_RI = 0x40  # ring indicator (OUT1 in loopback)
MSR_DCD = 0x80  # data carrier detect (OUT2 in loopback)

# The console is always there: carrier, DSR and CTS asserted, no ring.
DEFAULT_MODEM_INPUTS = MSR_DCD | MSR_DSR | MSR_CTS
DEFAULT_DIVISOR = 12  # 9600 baud from the 1.8432 MHz clock, like vm-superio

UNMAPPED_READ = 0xFF  # an undecoded ISA port floats high


def _always_sent(byte: int) -> bool:
    return True


@dataclass
class Serial16550Registers:
    """The programmer-visible registers plus the FIFOs behind RBR and THR."""

    ier: int = 0
    lcr: int = 0
    mcr: int = 0
    fcr: int = 0  # only the FCR_STORED bits
    scr: int = 0
    divisor: int = DEFAULT_DIVISOR  # DLM:DLL
    overrun: bool = False  # LSR.OE, cleared by reading LSR
    msr_deltas: int = 0  # MSR bits 0-3, cleared by reading MSR
    modem_inputs: int = DEFAULT_MODEM_INPUTS  # MSR bits 4-7 outside loopback
    thr_interrupt: bool = False  # THRE interrupt latched (section 8.5)
    rx_fifo: deque[int] = field(default_factory=deque)
    # Bytes written to THR the console has not taken yet; the first is the
    # one the shift register is trying to send.
    tx_fifo: deque[int] = field(default_factory=deque)
    irq_asserted: bool = False  # last level driven onto the IRQ line


class Serial16550:
    """A 16550A UART occupying 8 I/O ports.

    Wiring:
      irq  -- the IRQ line (ISA IRQ4 for COM1), driven as a level;
      tx   -- sends one byte to the console; returns False when the console
              cannot take it now, in which case the byte stays queued, THRE
              stays clear, and the host calls tx_drained() once it has room;
      log  -- log(event, **fields) for guest misbehaviour and lost data.
    Host side: receive(data) for console input, rx_room() to hold input back
    instead of overrunning, tx_drained() to resume a stalled transmitter.
    """

    def __init__(
        self,
        irq: IrqLine | None = None,
        tx: Callable[[int], bool] = _always_sent,
        log: Callable[..., None] = no_log,
    ) -> None:
        self.irq = irq if irq is not None else NullIrqLine()
        self.tx = tx
        self.log = log
        self.regs = Serial16550Registers()

    # --- guest accesses -------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if size != 1:
            # A wide access to an 8-bit ISA device is split by the bus into
            # byte accesses at consecutive ports, side effects included.
            self.log("serial_wide_access", op="read", offset=offset, size=size)
        value = 0
        for i in range(max(size, 1)):
            value |= self._read_byte(offset + i) << (8 * i)
        self._update_irq()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 1:
            self.log("serial_wide_access", op="write", offset=offset, size=size)
        for i in range(max(size, 1)):
            self._write_byte(offset + i, (value >> (8 * i)) & 0xFF)
        self._update_irq()

    def _read_byte(self, offset: int) -> int:
        r = self.regs
        dlab = bool(r.lcr & LCR_DLAB)
        if offset == RBR_THR and dlab:
            return r.divisor & 0xFF
        if offset == IER and dlab:
            return r.divisor >> 8
        if offset == RBR_THR:
            return self._read_rbr()
        if offset == IER:
            return r.ier
        if offset == IIR_FCR:
            iir = self._interrupt_identification()
            # Reading IIR while it reports THRE is what acknowledges THRE.
            if iir == IIR_THR_EMPTY:
                r.thr_interrupt = False
            if r.fcr & FCR_FIFO_ENABLE:
                iir |= IIR_FIFO_ENABLED
            return iir
        if offset == LCR:
            return r.lcr
        if offset == MCR:
            return r.mcr
        if offset == LSR:
            lsr = self._line_status()
            r.overrun = False  # error bits clear on read (section 8.4)
            return lsr
        if offset == MSR:
            msr = r.msr_deltas | self._modem_status_inputs()
            r.msr_deltas = 0
            return msr
        if offset == SCR:
            return r.scr
        self.log("serial_unknown_read", offset=offset)
        return UNMAPPED_READ

    def _write_byte(self, offset: int, value: int) -> None:
        r = self.regs
        dlab = bool(r.lcr & LCR_DLAB)
        if offset == RBR_THR and dlab:
            r.divisor = (r.divisor & 0xFF00) | value
        elif offset == IER and dlab:
            r.divisor = (r.divisor & 0x00FF) | (value << 8)
        elif offset == RBR_THR:
            self._write_thr(value)
        elif offset == IER:
            self._write_ier(value)
        elif offset == IIR_FCR:
            self._write_fcr(value)
        elif offset == LCR:
            r.lcr = value
        elif offset == MCR:
            self._write_mcr(value)
        elif offset == LSR:
            # LSR is read-only in practice (writing it is a factory test).
            self.log("serial_write_read_only", register="LSR", value=value)
        elif offset == MSR:
            self.log("serial_write_read_only", register="MSR", value=value)
        elif offset == SCR:
            r.scr = value
        else:
            self.log("serial_unknown_write", offset=offset, value=value)

    def _read_rbr(self) -> int:
        r = self.regs
        if not r.rx_fifo:
            return 0  # RBR keeps no value once drained; 0 like vm-superio
        return r.rx_fifo.popleft()

    def _write_thr(self, byte: int) -> None:
        r = self.regs
        r.thr_interrupt = False  # writing THR acknowledges THRE
        if r.mcr & MCR_LOOP:
            # The transmitter output is wired back to the receiver.
            self._push_rx(bytes([byte]))
            self._thr_emptied()
            return
        if len(r.tx_fifo) >= self._fifo_capacity():
            self.log("serial_tx_overflow", dropped=byte)
            return
        r.tx_fifo.append(byte)
        if len(r.tx_fifo) == 1:
            self._transmit()

    def _write_ier(self, value: int) -> None:
        r = self.regs
        was_enabled = bool(r.ier & IER_ETBEI)
        r.ier = value & IER_MASK
        if r.ier & IER_ETBEI:
            # Enabling ETBEI with THR already empty raises THRE at once;
            # drivers (Linux's serial8250_start_tx) rely on it to kick TX.
            if not was_enabled and not r.tx_fifo:
                r.thr_interrupt = True
        else:
            r.thr_interrupt = False

    def _write_fcr(self, value: int) -> None:
        r = self.regs
        old_enabled = bool(r.fcr & FCR_FIFO_ENABLE)
        new_enabled = bool(value & FCR_FIFO_ENABLE)
        if old_enabled != new_enabled:
            # Changing FCR0 clears both FIFOs (section 8.4).
            r.rx_fifo.clear()
            self._clear_tx()
        if not new_enabled:
            # Other bits are only programmed together with FCR0 = 1.
            r.fcr = 0
            return
        if value & FCR_CLEAR_RX:
            r.rx_fifo.clear()
        if value & FCR_CLEAR_TX:
            self._clear_tx()
        r.fcr = value & FCR_STORED

    def _write_mcr(self, value: int) -> None:
        r = self.regs
        old_inputs = self._modem_status_inputs()
        r.mcr = value & MCR_MASK
        new_inputs = self._modem_status_inputs()
        self._record_modem_deltas(old_inputs, new_inputs)
        if not (r.mcr & MCR_LOOP) and r.tx_fifo:
            self._transmit()  # leaving loopback with a stalled byte

    # --- host side ------------------------------------------------------

    def receive(self, data: bytes) -> int:
        """Console input.  Returns how many bytes entered the RX FIFO; the
        rest hit a full FIFO and are lost, setting LSR.OE (an overrun).  A
        host that would rather hold input back sends at most rx_room()."""
        if self.regs.mcr & MCR_LOOP:
            # The serial input pin is disconnected in loopback (section 8.6).
            if data:
                self.log("serial_rx_in_loopback", dropped=len(data))
            return 0
        accepted = self._push_rx(data)
        self._update_irq()
        return accepted

    def rx_room(self) -> int:
        """Bytes receive() can take without an overrun."""
        if self.regs.mcr & MCR_LOOP:
            return 0
        return self._fifo_capacity() - len(self.regs.rx_fifo)

    def tx_drained(self) -> None:
        """The console has room again: resume sending queued bytes."""
        if self.regs.tx_fifo and not (self.regs.mcr & MCR_LOOP):
            self._transmit()
        self._update_irq()

    # --- internals ------------------------------------------------------

    def _fifo_capacity(self) -> int:
        # Without FIFOs the 16550 behaves as a 16450: one holding register.
        return FIFO_SIZE if self.regs.fcr & FCR_FIFO_ENABLE else 1

    def _push_rx(self, data: bytes) -> int:
        r = self.regs
        room = self._fifo_capacity() - len(r.rx_fifo)
        accepted = min(room, len(data))
        r.rx_fifo.extend(data[:accepted])
        if accepted < len(data):
            r.overrun = True
            self.log("serial_rx_overrun", dropped=len(data) - accepted)
        return accepted

    def _transmit(self) -> None:
        r = self.regs
        while r.tx_fifo:
            if not self.tx(r.tx_fifo[0]):
                return  # shift register busy: THRE stays clear
            r.tx_fifo.popleft()
        self._thr_emptied()

    def _clear_tx(self) -> None:
        r = self.regs
        if r.tx_fifo:
            r.tx_fifo.clear()
            self._thr_emptied()

    def _thr_emptied(self) -> None:
        if self.regs.ier & IER_ETBEI:
            self.regs.thr_interrupt = True

    def tx_fifo_full(self) -> bool:
        """A THR write now would be dropped (the host stalled the line)."""
        return len(self.regs.tx_fifo) >= self._fifo_capacity()

    def lsr_mirror(self) -> int | None:
        """LSR as a read would return it, when that read changes nothing and
        stays true until the next write or console input: not in loopback
        (posted THR writes would change it), no overrun (the read clears
        it), and the transmitter empty (a stalled one is restarted by the
        host on the next access, which a mirrored read would never make)."""
        r = self.regs
        if r.mcr & MCR_LOOP or r.overrun or r.tx_fifo:
            return None
        return self._line_status()

    def _line_status(self) -> int:
        r = self.regs
        lsr = 0
        if r.rx_fifo:
            lsr |= LSR_DR
        if r.overrun:
            lsr |= LSR_OE
        if not r.tx_fifo:
            lsr |= LSR_THRE | LSR_TEMT
        return lsr

    def _modem_status_inputs(self) -> int:
        r = self.regs
        if not (r.mcr & MCR_LOOP):
            return r.modem_inputs
        # Loopback wires the outputs to the inputs (section 8.6).
        inputs = 0
        if r.mcr & MCR_RTS:
            inputs |= MSR_CTS
        if r.mcr & MCR_DTR:
            inputs |= MSR_DSR
        if r.mcr & MCR_OUT1:
            inputs |= MSR_RI
        if r.mcr & MCR_OUT2:
            inputs |= MSR_DCD
        return inputs

    def _record_modem_deltas(self, old: int, new: int) -> None:
        changed = old ^ new
        if changed & MSR_CTS:
            self.regs.msr_deltas |= MSR_DCTS
        if changed & MSR_DSR:
            self.regs.msr_deltas |= MSR_DDSR
        if changed & MSR_DCD:
            self.regs.msr_deltas |= MSR_DDCD
        if (old & MSR_RI) and not (new & MSR_RI):
            self.regs.msr_deltas |= MSR_TERI  # trailing edge only

    def _interrupt_identification(self) -> int:
        """IIR bits 0-3: the highest-priority enabled pending interrupt."""
        r = self.regs
        if r.ier & IER_ELSI and r.overrun:
            return IIR_LINE_STATUS
        if r.ier & IER_ERBFI and r.rx_fifo:
            if r.fcr & FCR_FIFO_ENABLE:
                trigger = RX_TRIGGER_LEVELS[r.fcr >> FCR_TRIGGER_SHIFT]
                if len(r.rx_fifo) < trigger:
                    return IIR_RX_TIMEOUT
            return IIR_RX_DATA
        if r.ier & IER_ETBEI and r.thr_interrupt:
            return IIR_THR_EMPTY
        if r.ier & IER_EDSSI and r.msr_deltas:
            return IIR_MODEM_STATUS
        return IIR_NO_INTERRUPT

    def _update_irq(self) -> None:
        r = self.regs
        level = (
            self._interrupt_identification() != IIR_NO_INTERRUPT
            and bool(r.mcr & MCR_OUT2)
            and not (r.mcr & MCR_LOOP)
        )
        if level != r.irq_asserted:
            r.irq_asserted = level
            self.irq.set_level(level)

    # --- snapshot -------------------------------------------------------

    def state(self) -> dict[str, Any]:
        r = self.regs
        return {
            "ier": r.ier,
            "lcr": r.lcr,
            "mcr": r.mcr,
            "fcr": r.fcr,
            "scr": r.scr,
            "divisor": r.divisor,
            "overrun": r.overrun,
            "msr_deltas": r.msr_deltas,
            "modem_inputs": r.modem_inputs,
            "thr_interrupt": r.thr_interrupt,
            "rx_fifo": bytes(r.rx_fifo),
            "tx_fifo": bytes(r.tx_fifo),
            "irq_asserted": r.irq_asserted,
        }

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        irq: IrqLine | None = None,
        tx: Callable[[int], bool] = _always_sent,
        log: Callable[..., None] = no_log,
    ) -> "Serial16550":
        """Rebuild a device from state().  The IRQ line is not re-driven: the
        level recorded is the one the line was last left at."""
        dev = cls(irq=irq, tx=tx, log=log)
        dev.regs = Serial16550Registers(
            ier=state["ier"],
            lcr=state["lcr"],
            mcr=state["mcr"],
            fcr=state["fcr"],
            scr=state["scr"],
            divisor=state["divisor"],
            overrun=state["overrun"],
            msr_deltas=state["msr_deltas"],
            modem_inputs=state["modem_inputs"],
            thr_interrupt=state["thr_interrupt"],
            rx_fifo=deque(state["rx_fifo"]),
            tx_fifo=deque(state["tx_fifo"]),
            irq_asserted=state["irq_asserted"],
        )
        return dev


# --- the actor: the model hosted in its own process ---------------------------

TX_STALL_POLL = 0.005  # seconds between looks at a full console ring


class UartHost(DeviceHost):
    """A 16550 whose transmitter feeds the VM's console ring (`console`
    option), on the `irq` line."""

    def setup(self) -> None:
        self.irq = self.connect_irq(self.cfg.options["irq"])
        self.ring = None
        if self.cfg.options["console"]:
            self.ring = ConsoleRing(self.runtime.rundir.shm / f"{self.runtime.role}.console")
        self.written = 0  # console bytes produced, committed with the state
        self.tx_blocked = False

    def model_args(self) -> dict:
        return {"irq": self.irq, "tx": self._tx, "log": self.log}

    def _tx(self, byte: int) -> bool:
        if self.ring is None:
            return True
        if self.ring.space(self.written) <= 0:
            self.tx_blocked = True
            return False
        self.ring.put(self.written, byte)
        self.written += 1
        return True

    def _resume_tx(self) -> None:
        if self.tx_blocked and self.ring.space(self.written) > 0:
            self.tx_blocked = False
            self.model.tx_drained()

    def busy(self) -> bool:
        # Asked before each request from a channel.  The console is not
        # taking bytes and the TX FIFO is full: leave the guest's next writes
        # in the channel rather than drop them.
        self._resume_tx()
        return self.model.tx_fifo_full()

    def next_deadline(self):
        return time.monotonic() + TX_STALL_POLL if self.tx_blocked else None

    def on_timer(self, now):
        self._resume_tx()
        self.runtime.commit()
        self.runtime.serve_channels()

    def console_input(self, data: bytes) -> int:
        # The relay keeps what is not taken and sends it again: take only
        # what fits, so held-back input is never an overrun (LSR.OE, which
        # Linux turns into a NUL that makes agetty start over).
        return self.model.receive(data[:self.model.rx_room()])

    def state(self):
        return {**super().state(), "written": self.written}

    def restore(self, state):
        self.written = state["written"]
        super().restore(state)
        if self.ring is not None:
            self.ring.publish(self.written)

    def after_commit(self):
        if self.ring is not None:
            self.ring.publish(self.written)

    def mirror_value(self):
        return self.model.lsr_mirror()
