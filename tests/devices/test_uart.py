"""Serial16550 driven register by register, as a guest driver would."""

from __future__ import annotations

import msgpack
import pytest

from wiring import RecordingLine as Line

from bhive.actors.uart import (
    DLL,
    DLM,
    FCR_CLEAR_RX,
    FCR_CLEAR_TX,
    FCR_FIFO_ENABLE,
    IER,
    IER_EDSSI,
    IER_ELSI,
    IER_ERBFI,
    IER_ETBEI,
    IIR_FCR,
    IIR_FIFO_ENABLED,
    IIR_LINE_STATUS,
    IIR_MODEM_STATUS,
    IIR_NO_INTERRUPT,
    IIR_RX_DATA,
    IIR_RX_TIMEOUT,
    IIR_THR_EMPTY,
    LCR,
    LCR_DLAB,
    LSR,
    LSR_DR,
    LSR_OE,
    LSR_TEMT,
    LSR_THRE,
    MCR,
    MCR_DTR,
    MCR_LOOP,
    MCR_OUT1,
    MCR_OUT2,
    MCR_RTS,
    MSR,
    MSR_CTS,
    MSR_DCD,
    MSR_DCTS,
    MSR_DDCD,
    MSR_DDSR,
    MSR_DSR,
    MSR_RI,
    MSR_TERI,
    RBR_THR,
    SCR,
    Serial16550,
)



class Console:
    """A console that can be told to push back."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.full = False

    def tx(self, byte: int) -> bool:
        if self.full:
            return False
        self.out.append(byte)
        return True


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def __call__(self, event: str, **fields) -> None:
        self.events.append((event, fields))

    def names(self) -> list[str]:
        return [e for e, _ in self.events]


@pytest.fixture
def parts():
    line, console, log = Line(), Console(), Log()
    uart = Serial16550(irq=line, tx=console.tx, log=log)
    return uart, line, console, log


def rd(uart: Serial16550, offset: int) -> int:
    return uart.read(offset, 1)


def wr(uart: Serial16550, offset: int, value: int) -> None:
    uart.write(offset, 1, value)


def iir(uart: Serial16550) -> int:
    return rd(uart, IIR_FCR) & 0x0F


# --- reset values -----------------------------------------------------------


def test_reset_values(parts):
    uart, line, _, _ = parts
    assert rd(uart, IER) == 0
    assert rd(uart, IIR_FCR) == IIR_NO_INTERRUPT
    assert rd(uart, LCR) == 0
    assert rd(uart, MCR) == 0
    assert rd(uart, LSR) == LSR_THRE | LSR_TEMT
    assert rd(uart, MSR) == MSR_DCD | MSR_DSR | MSR_CTS
    assert rd(uart, SCR) == 0
    assert line.levels == []  # nothing driven until something is pending


# --- data path --------------------------------------------------------------


def test_thr_write_goes_to_console(parts):
    uart, _, console, _ = parts
    for b in b"hi\n":
        wr(uart, RBR_THR, b)
    assert bytes(console.out) == b"hi\n"
    assert rd(uart, LSR) & (LSR_THRE | LSR_TEMT) == LSR_THRE | LSR_TEMT


def test_receive_then_read_rbr(parts):
    uart, _, _, _ = parts
    wr(uart, IIR_FCR, FCR_FIFO_ENABLE)
    assert uart.receive(b"ab") == 2
    assert rd(uart, LSR) & LSR_DR
    assert rd(uart, RBR_THR) == ord("a")
    assert rd(uart, RBR_THR) == ord("b")
    assert not rd(uart, LSR) & LSR_DR
    assert rd(uart, RBR_THR) == 0  # empty FIFO


def test_rx_without_fifo_holds_one_byte_and_overruns(parts):
    uart, _, _, log = parts
    assert uart.rx_room() == 1
    assert uart.receive(b"xy") == 1
    lsr = rd(uart, LSR)
    assert lsr & LSR_OE and lsr & LSR_DR
    assert not rd(uart, LSR) & LSR_OE  # OE clears on read
    assert rd(uart, RBR_THR) == ord("x")
    assert "serial_rx_overrun" in log.names()


def test_rx_fifo_holds_16_then_overruns(parts):
    uart, _, _, _ = parts
    wr(uart, IIR_FCR, FCR_FIFO_ENABLE)
    assert uart.rx_room() == 16
    assert uart.receive(bytes(range(20))) == 16
    assert uart.rx_room() == 0
    assert rd(uart, LSR) & LSR_OE
    assert [rd(uart, RBR_THR) for _ in range(16)] == list(range(16))


def test_divisor_latch_shadows_rbr_and_ier(parts):
    uart, _, console, _ = parts
    wr(uart, IER, IER_ERBFI)
    wr(uart, LCR, LCR_DLAB | 0x03)
    assert rd(uart, DLL) == 12 and rd(uart, DLM) == 0  # 9600 baud at reset
    wr(uart, DLL, 0x01)
    wr(uart, DLM, 0x02)
    assert rd(uart, DLL) == 0x01 and rd(uart, DLM) == 0x02
    assert console.out == b""  # the DLL write did not transmit
    wr(uart, LCR, 0x03)
    assert rd(uart, IER) == IER_ERBFI  # IER untouched by the DLM write
    assert rd(uart, LCR) == 0x03


def test_scratch_register(parts):
    uart, _, _, _ = parts
    wr(uart, SCR, 0x5A)
    assert rd(uart, SCR) == 0x5A


def test_ier_upper_bits_read_zero(parts):
    uart, _, _, _ = parts
    wr(uart, IER, 0xFF)
    assert rd(uart, IER) == 0x0F


# --- FIFO control -----------------------------------------------------------


def test_iir_fifo_bits(parts):
    uart, _, _, _ = parts
    wr(uart, IIR_FCR, FCR_FIFO_ENABLE)
    assert rd(uart, IIR_FCR) == IIR_FIFO_ENABLED | IIR_NO_INTERRUPT
    wr(uart, IIR_FCR, 0)
    assert rd(uart, IIR_FCR) == IIR_NO_INTERRUPT


def test_fcr_clear_rx(parts):
    uart, _, _, _ = parts
    wr(uart, IIR_FCR, FCR_FIFO_ENABLE)
    uart.receive(b"abc")
    wr(uart, IIR_FCR, FCR_FIFO_ENABLE | FCR_CLEAR_RX)
    assert not rd(uart, LSR) & LSR_DR
    assert rd(uart, IIR_FCR) & IIR_FIFO_ENABLED  # clear bits self-clear, FIFO stays on


def test_fcr_bits_ignored_without_fifo_enable(parts):
    uart, _, _, _ = parts
    uart.receive(b"a")  # 16450 mode
    # Section 8.4: other FCR bits are only programmed along with FCR0 = 1.
    wr(uart, IIR_FCR, FCR_CLEAR_RX | 0xC0)
    assert rd(uart, LSR) & LSR_DR
    assert rd(uart, IIR_FCR) == IIR_NO_INTERRUPT
    wr(uart, IIR_FCR, FCR_FIFO_ENABLE | 0xC0)  # now trigger 14, no clear
    assert uart.rx_room() == 16


def test_toggling_fifo_enable_clears_fifos(parts):
    uart, _, _, _ = parts
    wr(uart, IIR_FCR, FCR_FIFO_ENABLE)
    uart.receive(b"abc")
    wr(uart, IIR_FCR, 0)
    assert not rd(uart, LSR) & LSR_DR


def test_rx_trigger_level_and_timeout(parts):
    uart, line, _, _ = parts
    wr(uart, MCR, MCR_OUT2)
    wr(uart, IER, IER_ERBFI)
    wr(uart, IIR_FCR, FCR_FIFO_ENABLE | 0x80)  # trigger level 8
    uart.receive(b"1234")
    assert iir(uart) == IIR_RX_TIMEOUT  # below trigger: timeout indication
    assert line.level
    uart.receive(b"5678")
    assert iir(uart) == IIR_RX_DATA  # at trigger level
    for _ in range(8):
        rd(uart, RBR_THR)
    assert iir(uart) == IIR_NO_INTERRUPT
    assert not line.level


# --- interrupts -------------------------------------------------------------


def test_rx_interrupt_raised_and_cleared(parts):
    uart, line, _, _ = parts
    wr(uart, MCR, MCR_OUT2)
    wr(uart, IER, IER_ERBFI)
    assert not line.level
    uart.receive(b"a")
    assert line.level
    assert iir(uart) == IIR_RX_DATA
    assert line.level  # reading IIR does not acknowledge RX data
    rd(uart, RBR_THR)
    assert not line.level
    assert iir(uart) == IIR_NO_INTERRUPT


def test_irq_gated_by_out2(parts):
    uart, line, _, _ = parts
    wr(uart, IER, IER_ERBFI)
    uart.receive(b"a")
    assert iir(uart) == IIR_RX_DATA  # pending internally...
    assert not line.level  # ...but OUT2 is clear
    wr(uart, MCR, MCR_OUT2)
    assert line.level
    wr(uart, MCR, 0)
    assert not line.level


def test_thre_raised_when_etbei_set_while_empty(parts):
    uart, line, _, _ = parts
    wr(uart, MCR, MCR_OUT2)
    wr(uart, IER, IER_ETBEI)
    assert line.level
    assert iir(uart) == IIR_THR_EMPTY
    # Reading IIR with THRE as the source acknowledges it.
    assert not line.level
    assert iir(uart) == IIR_NO_INTERRUPT
    # Rewriting IER with ETBEI still set is not a new enable.
    wr(uart, IER, IER_ETBEI)
    assert iir(uart) == IIR_NO_INTERRUPT


def test_thre_reraised_after_thr_write(parts):
    uart, line, console, _ = parts
    wr(uart, MCR, MCR_OUT2)
    wr(uart, IER, IER_ETBEI)
    assert iir(uart) == IIR_THR_EMPTY
    assert line.levels == [True, False]
    wr(uart, RBR_THR, ord("x"))
    # The console took the byte, THR emptied again: a fresh edge.
    assert line.levels == [True, False, True]
    assert console.out == b"x"
    assert iir(uart) == IIR_THR_EMPTY


def test_thr_write_acknowledges_thre(parts):
    uart, line, console, _ = parts
    wr(uart, MCR, MCR_OUT2)
    wr(uart, IER, IER_ETBEI)
    console.full = True
    wr(uart, RBR_THR, ord("x"))
    assert not line.level  # acknowledged by the write; THR not empty yet
    assert not rd(uart, LSR) & LSR_THRE


def test_disabling_etbei_drops_thre(parts):
    uart, line, _, _ = parts
    wr(uart, MCR, MCR_OUT2)
    wr(uart, IER, IER_ETBEI)
    assert line.level
    wr(uart, IER, 0)
    assert not line.level
    assert iir(uart) == IIR_NO_INTERRUPT


def test_console_backpressure_holds_thre_clear(parts):
    uart, line, console, _ = parts
    wr(uart, MCR, MCR_OUT2)
    wr(uart, IER, IER_ETBEI)
    rd(uart, IIR_FCR)  # ack initial THRE
    console.full = True
    wr(uart, RBR_THR, ord("a"))
    lsr = rd(uart, LSR)
    assert not lsr & LSR_THRE and not lsr & LSR_TEMT
    assert not line.level
    # Without FIFOs there is one holding register: the next byte is lost.
    wr(uart, RBR_THR, ord("b"))
    console.full = False
    uart.tx_drained()
    assert console.out == b"a"
    assert rd(uart, LSR) & LSR_THRE
    assert line.level
    assert iir(uart) == IIR_THR_EMPTY


def test_backpressure_with_fifo_keeps_order(parts):
    uart, _, console, log = parts
    wr(uart, IIR_FCR, FCR_FIFO_ENABLE)
    console.full = True
    for b in b"0123456789abcdefXYZ":  # 19 bytes, FIFO holds 16
        wr(uart, RBR_THR, b)
    assert log.names().count("serial_tx_overflow") == 3
    console.full = False
    uart.tx_drained()
    assert bytes(console.out) == b"0123456789abcdef"


def test_console_partially_drains(parts):
    uart, _, console, _ = parts
    wr(uart, IIR_FCR, FCR_FIFO_ENABLE)
    console.full = True
    for b in b"abc":
        wr(uart, RBR_THR, b)
    budget = [1]

    def tx(byte: int) -> bool:
        if budget[0] == 0:
            return False
        budget[0] -= 1
        console.out.append(byte)
        return True

    uart.tx = tx
    uart.tx_drained()
    assert console.out == b"a"
    assert not rd(uart, LSR) & LSR_THRE
    budget[0] = 5
    uart.tx_drained()
    assert console.out == b"abc"
    assert rd(uart, LSR) & LSR_THRE


def test_fcr_clear_tx_empties_stalled_transmitter(parts):
    uart, _, console, _ = parts
    wr(uart, IIR_FCR, FCR_FIFO_ENABLE)
    console.full = True
    wr(uart, RBR_THR, ord("a"))
    wr(uart, IER, IER_ETBEI)  # THR not empty: no THRE yet
    assert iir(uart) == IIR_NO_INTERRUPT
    wr(uart, IIR_FCR, FCR_FIFO_ENABLE | FCR_CLEAR_TX)
    assert rd(uart, LSR) & LSR_THRE
    assert iir(uart) == IIR_THR_EMPTY
    console.full = False
    uart.tx_drained()
    assert console.out == b""


def test_line_status_interrupt_on_overrun(parts):
    uart, line, _, _ = parts
    wr(uart, MCR, MCR_OUT2)
    wr(uart, IER, IER_ELSI)
    uart.receive(b"ab")  # 16450 mode: second byte overruns
    assert line.level
    assert iir(uart) == IIR_LINE_STATUS
    assert rd(uart, LSR) & LSR_OE
    assert not line.level


def test_interrupt_priorities(parts):
    uart, _, _, _ = parts
    wr(uart, MCR, MCR_OUT2 | MCR_LOOP)
    wr(uart, IER, IER_ELSI | IER_ERBFI | IER_ETBEI | IER_EDSSI)
    wr(uart, MCR, MCR_OUT2 | MCR_LOOP | MCR_RTS)  # modem status delta
    wr(uart, RBR_THR, 0x41)  # loops back as RX data, THR empties
    wr(uart, RBR_THR, 0x42)  # overruns the 1-byte RBR
    assert iir(uart) == IIR_LINE_STATUS
    rd(uart, LSR)
    assert iir(uart) == IIR_RX_DATA
    rd(uart, RBR_THR)
    assert iir(uart) == IIR_THR_EMPTY  # this read acknowledges it
    assert iir(uart) == IIR_MODEM_STATUS
    rd(uart, MSR)
    assert iir(uart) == IIR_NO_INTERRUPT


# --- modem control and loopback ----------------------------------------------


def test_loopback_echoes_and_mirrors_modem_lines(parts):
    uart, _, console, _ = parts
    wr(uart, MCR, MCR_LOOP)
    msr = rd(uart, MSR)
    # Entering loopback drops CTS, DSR, DCD (now driven by clear outputs).
    assert msr == MSR_DCTS | MSR_DDSR | MSR_DDCD
    wr(uart, MCR, MCR_LOOP | MCR_DTR | MCR_RTS | MCR_OUT1 | MCR_OUT2)
    msr = rd(uart, MSR)
    assert msr & 0xF0 == MSR_CTS | MSR_DSR | MSR_RI | MSR_DCD
    assert msr & MSR_TERI == 0  # RI rose: not a trailing edge
    wr(uart, MCR, MCR_LOOP | MCR_DTR | MCR_RTS | MCR_OUT2)
    assert rd(uart, MSR) & MSR_TERI  # RI fell
    wr(uart, RBR_THR, 0x55)
    assert console.out == b""
    assert rd(uart, RBR_THR) == 0x55


def test_loopback_gates_irq_but_iir_still_reports(parts):
    uart, line, _, _ = parts
    wr(uart, MCR, MCR_OUT2 | MCR_LOOP)
    wr(uart, IER, IER_ERBFI)
    wr(uart, RBR_THR, 0x55)
    assert iir(uart) == IIR_RX_DATA
    assert not line.level


def test_receive_ignored_in_loopback(parts):
    uart, _, _, log = parts
    wr(uart, MCR, MCR_LOOP)
    assert uart.receive(b"z") == 0
    assert not rd(uart, LSR) & LSR_DR
    assert "serial_rx_in_loopback" in log.names()


def test_modem_status_interrupt(parts):
    uart, line, _, _ = parts
    wr(uart, MCR, MCR_OUT2 | MCR_LOOP)
    wr(uart, IER, IER_EDSSI)
    wr(uart, MCR, MCR_OUT2 | MCR_LOOP | MCR_DTR)
    assert iir(uart) == IIR_MODEM_STATUS
    assert rd(uart, MSR) & MSR_DDSR
    assert iir(uart) == IIR_NO_INTERRUPT


def test_leaving_loopback_resumes_stalled_byte(parts):
    uart, _, console, _ = parts
    console.full = True
    wr(uart, RBR_THR, ord("q"))
    wr(uart, MCR, MCR_LOOP)
    console.full = False
    uart.tx_drained()  # in loopback the transmitter is off the line
    assert console.out == b""
    wr(uart, MCR, 0)
    assert console.out == b"q"


# --- garbage ----------------------------------------------------------------


def test_unknown_offsets_float_high_and_log(parts):
    uart, _, _, log = parts
    assert rd(uart, 8) == 0xFF
    wr(uart, 9, 0x12)
    assert log.names() == ["serial_unknown_read", "serial_unknown_write"]


def test_writes_to_status_registers_ignored(parts):
    uart, _, _, log = parts
    wr(uart, LSR, 0)
    wr(uart, MSR, 0)
    assert rd(uart, LSR) == LSR_THRE | LSR_TEMT
    assert rd(uart, MSR) == MSR_DCD | MSR_DSR | MSR_CTS
    assert log.names().count("serial_write_read_only") == 2


def test_wide_access_splits_into_bytes(parts):
    uart, _, _, log = parts
    uart.write(SCR - 1, 2, 0xAB_00)  # MSR (ignored) then SCR
    assert rd(uart, SCR) == 0xAB
    assert uart.read(LSR, 2) == (MSR_DCD | MSR_DSR | MSR_CTS) << 8 | LSR_THRE | LSR_TEMT
    assert "serial_wide_access" in log.names()


# --- snapshot ---------------------------------------------------------------


def test_state_round_trip(parts):
    uart, line, console, _ = parts
    wr(uart, LCR, LCR_DLAB)
    wr(uart, DLL, 3)
    wr(uart, LCR, 0x1B)
    wr(uart, IIR_FCR, FCR_FIFO_ENABLE | 0x40)
    wr(uart, MCR, MCR_OUT2 | MCR_DTR)
    wr(uart, IER, IER_ERBFI | IER_ETBEI | IER_ELSI)
    wr(uart, SCR, 0x77)
    uart.receive(b"hello")
    console.full = True
    wr(uart, RBR_THR, ord("w"))
    state = uart.state()
    packed = msgpack.unpackb(msgpack.packb(state))
    twin = Serial16550.from_state(packed, irq=Line(), tx=console.tx)
    assert twin.state() == state
    # Identical behaviour afterwards, not just identical dicts.
    for offset in (IIR_FCR, LSR, MSR, SCR, LCR, MCR, IER):
        assert rd(twin, offset) == rd(uart, offset)
    console.full = False
    twin.tx_drained()
    assert console.out == b"w"
    assert bytes(rd(twin, RBR_THR) for _ in range(5)) == b"hello"


def test_console_input_held_back_is_no_overrun(host_for):
    """Typed input waits in the host's backlog and enters the receive FIFO
    only as it has room (each RBR read makes some): no LSR.OE, which Linux
    turns into a NUL that makes agetty start the login prompt over."""
    from bhive.devices import DEVICE_TYPES

    class Vm:
        devices: dict = {}
        cpus = 1
    host = host_for(DEVICE_TYPES["uart"], {"console": False}, Vm())
    assert host.console_input(b"root\n") == 5          # all taken, one byte in the holding register
    got = b""
    for _ in range(5):
        assert host.pio(0x3F8 + LSR, 1, False, 0) & LSR_OE == 0
        got += bytes([host.pio(0x3F8, 1, False, 0)])
    assert got == b"root\n" and not host.model.regs.overrun