"""Dual Intel 8259A PIC (the PC/AT master/slave pair) and the PIIX ELCR.

References: Intel 8259A datasheet (order 231468-003), "Initialization
command words" and "Operation command words"; Intel 82371AB (PIIX4)
datasheet section 4.1.2 for the ELCR.

Acknowledge at delivery.  On hardware the CPU answers INTR with an INTA
cycle, during which the 8259A picks the vector and moves the request from
IRR to ISR.  A vCPU here is another process, so no synchronous INTA is
possible: instead, as soon as INTR would rise (and the host has the output
enabled), the PIC performs the INTA itself -- resolves the vector, moves
IRR->ISR (or, in auto-EOI mode, only clears IRR) -- and hands the vector to
`deliver_extint(vector)`, which the vCPU injects as an ExtINT when it can.
bhyve's vatpic makes the same split with vatpic_pending_intr() and
vatpic_intr_accepted().  The lower-priority requests stay in IRR, blocked
by the ISR bit, exactly as on hardware until the guest's EOI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from bhive.actors.base import MSI_ADDR_BASE, MSI_DATA_DELIVERY_MODE_SHIFT, no_log
from bhive.actors.host import DeviceHost
from bhive.actors.interrupts import LineInputs
from bhive.actors.ioapic import DELIVERY_EXTINT

# Port offsets within each chip (A0 line).
COMMAND = 0  # ICW1, OCW2, OCW3 (write); IRR/ISR/poll word (read)
DATA = 1  # ICW2-4, OCW1 (write); IMR (read)
MASTER_BASE = 0x20  # ISA port of the master chip
SLAVE_BASE = 0xA0  # ISA port of the slave chip
CASCADE_IRQ = 2  # the master input the slave's INTR drives

# ICW1 (written to COMMAND with bit 4 set).
ICW1_INIT = 0x10  # marks a COMMAND write as ICW1
ICW1_IC4 = 0x01  # ICW4 will follow
ICW1_SNGL = 0x02  # single chip, no ICW3
ICW1_LTIM = 0x08  # all inputs level triggered

# ICW4.
ICW4_8086 = 0x01  # 8086 mode (8080 mode is meaningless on x86)
ICW4_AEOI = 0x02  # automatic end of interrupt
ICW4_SFNM = 0x10  # special fully nested mode (not modelled)

# OCW2 (COMMAND with bits 3 and 4 clear): bits 7-5 select the command.
OCW2_LEVEL_MASK = 0x07  # L2-L0, the IR level for specific commands
OCW2_CLEAR_ROTATE_AEOI = 0x00  # rotate in AEOI mode: clear
OCW2_NONSPECIFIC_EOI = 0x20  # clear the highest-priority ISR bit
OCW2_NOP = 0x40  # no operation
OCW2_SPECIFIC_EOI = 0x60  # clear ISR bit L
OCW2_SET_ROTATE_AEOI = 0x80  # rotate in AEOI mode: set
OCW2_ROTATE_NONSPECIFIC_EOI = 0xA0  # EOI, then the level served becomes lowest
OCW2_SET_PRIORITY = 0xC0  # level L becomes lowest priority
OCW2_ROTATE_SPECIFIC_EOI = 0xE0  # EOI L, then L becomes lowest

# OCW3 (COMMAND with bit 3 set, bit 4 clear).
OCW3_SELECT = 0x08  # marks a COMMAND write as OCW3
OCW3_RIS = 0x01  # read ISR (rather than IRR) ...
OCW3_RR = 0x02  # ... if this bit is set too
OCW3_POLL = 0x04  # next COMMAND read is the poll word
OCW3_SMM = 0x20  # special mask mode value ...
OCW3_ESMM = 0x40  # ... applied only if this bit is set
POLL_INTERRUPT = 0x80  # poll word: an interrupt was pending

# Initialization sequence position.
READY = 0  # accepting OCWs
WANT_ICW2 = 1  # ICW1 seen
WANT_ICW3 = 2
WANT_ICW4 = 3

# ELCR (edge/level control), PIIX: one byte per chip at 0x4D0/0x4D1.
ELCR_BASE = 0x4D0  # ISA port of the ELCR pair
ELCR_MASTER = 0  # offset of the master chip's ELCR
ELCR_SLAVE = 1  # offset of the slave chip's ELCR
# IRQ0, 1, 2, 8 and 13 are always edge (PIIX4 4.1.2.2): bits read back 0.
ELCR_WRITABLE = (0xF8, 0xDE)

BIOS_MASTER_VECTOR = 0x08  # IRQ0-7 -> INT 08h-0Fh
BIOS_SLAVE_VECTOR = 0x70  # IRQ8-15 -> INT 70h-77h
BIOS_IRQ_MASK = 0xFFFB  # SeaBIOS: everything masked but the cascade

UNMAPPED_READ = 0xFF  # an undecoded ISA port floats high


def _no_delivery(vector: int) -> None:
    pass


@dataclass
class I8259Registers:
    """One 8259A: its three 8-bit registers and its mode latches."""

    irr: int = 0  # interrupt request
    isr: int = 0  # in service
    imr: int = 0  # mask (OCW1)
    input_levels: int = 0  # current level of IR0-7, for edge detection
    elcr: int = 0  # level-triggered inputs (from the ELCR)
    vector_base: int = 0  # ICW2 & 0xF8
    init_step: int = READY
    needs_icw4: bool = False
    single: bool = False  # ICW1.SNGL
    ltim: bool = False  # ICW1.LTIM: all inputs level triggered
    icw3: int = 0  # master: slave bitmap; slave: its ID
    auto_eoi: bool = False
    rotate_on_auto_eoi: bool = False
    highest_priority: int = 0  # IR level with highest priority (rotation)
    read_isr: bool = False  # COMMAND reads return ISR instead of IRR
    poll: bool = False  # next COMMAND read is a poll
    special_mask: bool = False  # OCW3 special mask mode


class I8259:
    """One chip.  Cascading and delivery are the DualPic's business."""

    def __init__(self, name: str, log: Callable[..., None]) -> None:
        self.name = name
        self.log = log
        self.regs = I8259Registers()

    # --- inputs ---------------------------------------------------------

    def level_mask(self) -> int:
        return 0xFF if self.regs.ltim else self.regs.elcr

    def set_input(self, irq: int, level: bool) -> None:
        r = self.regs
        bit = 1 << irq
        was = bool(r.input_levels & bit)
        if level:
            r.input_levels |= bit
        else:
            r.input_levels &= ~bit
        if self.level_mask() & bit:
            # Level mode: IRR follows the input.
            if level:
                r.irr |= bit
            else:
                r.irr &= ~bit
        elif level and not was:
            r.irr |= bit  # edge mode latches the rising edge

    # --- priority resolution (datasheet "Priority resolver") ----------------

    def _priority(self, mask: int) -> int:
        """0 for the highest-priority level in `mask`, 8 if it is empty."""
        if mask == 0:
            return 8
        priority = 0
        while not mask & (1 << ((priority + self.regs.highest_priority) & 7)):
            priority += 1
        return priority

    def pending_irq(self) -> int | None:
        """The IR level INTR is raised for, or None."""
        r = self.regs
        if r.init_step != READY:
            # Mid-initialization the vector base may be stale; since we
            # acknowledge at delivery, hold requests until ICWs are done.
            return None
        priority = self._priority(r.irr & ~r.imr)
        if priority == 8:
            return None
        in_service = r.isr
        if r.special_mask:
            # Special mask mode: masked levels in service don't block others.
            in_service &= ~r.imr
        if priority < self._priority(in_service):
            return (priority + r.highest_priority) & 7
        return None

    def acknowledge(self, irq: int) -> None:
        """What the INTA pulses do to the registers."""
        r = self.regs
        bit = 1 << irq
        if r.auto_eoi:
            if r.rotate_on_auto_eoi:
                r.highest_priority = (irq + 1) & 7
        else:
            r.isr |= bit
        if not self.level_mask() & bit:
            r.irr &= ~bit  # a level request stays while the input is high

    def _highest_in_service(self) -> int | None:
        priority = self._priority(self.regs.isr)
        if priority == 8:
            return None
        return (priority + self.regs.highest_priority) & 7

    # --- guest accesses -------------------------------------------------

    def read(self, offset: int) -> int:
        r = self.regs
        if offset == COMMAND:
            if r.poll:
                r.poll = False
                irq = self.pending_irq()
                if irq is None:
                    return 0
                self.acknowledge(irq)
                return POLL_INTERRUPT | irq
            return r.isr if r.read_isr else r.irr
        if offset == DATA:
            return r.imr
        self.log("pic_unknown_read", chip=self.name, offset=offset)
        return UNMAPPED_READ

    def write(self, offset: int, value: int) -> None:
        r = self.regs
        if offset == COMMAND:
            if value & ICW1_INIT:
                self._icw1(value)
            elif value & OCW3_SELECT:
                self._ocw3(value)
            else:
                self._ocw2(value)
        elif offset == DATA:
            if r.init_step == WANT_ICW2:
                r.vector_base = value & 0xF8
                if not r.single:
                    r.init_step = WANT_ICW3
                else:
                    r.init_step = WANT_ICW4 if r.needs_icw4 else READY
            elif r.init_step == WANT_ICW3:
                r.icw3 = value
                r.init_step = WANT_ICW4 if r.needs_icw4 else READY
            elif r.init_step == WANT_ICW4:
                if not value & ICW4_8086:
                    self.log("pic_8080_mode", chip=self.name, icw4=value)
                if value & ICW4_SFNM:
                    self.log("pic_sfnm_unsupported", chip=self.name, icw4=value)
                r.auto_eoi = bool(value & ICW4_AEOI)
                r.init_step = READY
            else:
                r.imr = value  # OCW1
        else:
            self.log("pic_unknown_write", chip=self.name, offset=offset, value=value)

    def _icw1(self, value: int) -> None:
        r = self.regs
        if r.init_step != READY:
            self.log("pic_icw1_restart", chip=self.name, step=r.init_step)
        if value & ICW1_SNGL:
            self.log("pic_single_mode", chip=self.name)
        # ICW1 resets the edge-sense latches, clears IMR, gives IR7 lowest
        # priority, selects IRR for reads and leaves special mask mode.
        # ISR and the ICW4 modes are cleared too, as QEMU and bhyve do.
        level = self.level_mask() if not (value & ICW1_LTIM) else 0xFF
        r.irr &= level & r.input_levels
        r.isr = 0
        r.imr = 0
        r.highest_priority = 0
        r.read_isr = False
        r.poll = False
        r.special_mask = False
        r.auto_eoi = False
        r.rotate_on_auto_eoi = False
        r.needs_icw4 = bool(value & ICW1_IC4)
        r.single = bool(value & ICW1_SNGL)
        r.ltim = bool(value & ICW1_LTIM)
        r.init_step = WANT_ICW2

    def _ocw2(self, value: int) -> None:
        r = self.regs
        command = value & 0xE0
        level = value & OCW2_LEVEL_MASK
        if command in (OCW2_NONSPECIFIC_EOI, OCW2_ROTATE_NONSPECIFIC_EOI):
            irq = self._highest_in_service()
            if irq is None:
                self.log("pic_eoi_nothing_in_service", chip=self.name)
                return
            r.isr &= ~(1 << irq)
            if command == OCW2_ROTATE_NONSPECIFIC_EOI:
                r.highest_priority = (irq + 1) & 7
        elif command in (OCW2_SPECIFIC_EOI, OCW2_ROTATE_SPECIFIC_EOI):
            r.isr &= ~(1 << level)
            if command == OCW2_ROTATE_SPECIFIC_EOI:
                r.highest_priority = (level + 1) & 7
        elif command == OCW2_SET_PRIORITY:
            r.highest_priority = (level + 1) & 7
        elif command == OCW2_SET_ROTATE_AEOI:
            r.rotate_on_auto_eoi = True
        elif command == OCW2_CLEAR_ROTATE_AEOI:
            r.rotate_on_auto_eoi = False
        # OCW2_NOP: nothing.

    def _ocw3(self, value: int) -> None:
        r = self.regs
        if value & OCW3_POLL:
            r.poll = True
        if value & OCW3_RR:
            r.read_isr = bool(value & OCW3_RIS)
        if value & OCW3_ESMM:
            r.special_mask = bool(value & OCW3_SMM)


class _ChipPorts:
    """The two ports of one chip as a DeviceModel (offsets COMMAND/DATA)."""

    def __init__(self, pic: "DualPic", chip: I8259) -> None:
        self.pic = pic
        self.chip = chip

    def read(self, offset: int, size: int) -> int:
        if size != 1:
            self.pic.log("pic_wide_access", chip=self.chip.name, offset=offset, size=size)
        value = self.chip.read(offset)
        self.pic._update()
        return value | (((1 << (8 * size)) - 1) & ~0xFF)  # upper bytes float

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 1:
            self.pic.log("pic_wide_access", chip=self.chip.name, offset=offset, size=size)
        self.chip.write(offset, value & 0xFF)
        self.pic._update()

    def state(self) -> dict[str, Any]:
        return self.pic.state()


class DualPic:
    """Master and slave 8259A cascaded on master IR2.

    Wiring:
      deliver_extint(vector) -- the acknowledged vector, for the vCPU to
                                inject as ExtINT (see module docstring);
      log(event, **fields)   -- guest misbehaviour.
    Guest ports: `master_io` at MASTER_BASE and `slave_io` at SLAVE_BASE,
    each a DeviceModel with offsets COMMAND and DATA; the ELCR is the
    separate `Elcr(pic)` model.
    Host side: set_irq(line 0-15, level); set_output_enabled(bool) to hold
    delivery (e.g. while LINT0 is masked); intr() tells whether INTR is up;
    bios_setup() programs the chips as a PC BIOS leaves them.
    """

    def __init__(
        self,
        deliver_extint: Callable[[int], None] = _no_delivery,
        log: Callable[..., None] = no_log,
    ) -> None:
        self.deliver_extint = deliver_extint
        self.log = log
        self.master = I8259("master", log)
        self.slave = I8259("slave", log)
        self.output_enabled = True
        self.master_io = _ChipPorts(self, self.master)
        self.slave_io = _ChipPorts(self, self.slave)

    # --- host side ------------------------------------------------------

    def set_irq(self, line: int, level: bool) -> None:
        if not 0 <= line < 16:
            self.log("pic_bad_irq", line=line)
            return
        if line == CASCADE_IRQ:
            # IR2 of the master carries the slave; nothing else may drive it.
            self.log("pic_cascade_irq_driven", level=level)
            return
        chip = self.master if line < 8 else self.slave
        chip.set_input(line & 7, bool(level))
        self._update()

    def irq_line(self, line: int) -> "PicIrqLine":
        """An IrqLine driving input `line`, for in-process wiring."""
        return PicIrqLine(self, line)

    def set_output_enabled(self, enabled: bool) -> None:
        self.output_enabled = bool(enabled)
        self._update()

    def intr(self) -> bool:
        """The master's INTR output (a request waiting for acknowledge)."""
        self._cascade()
        return self.master.pending_irq() is not None

    def bios_setup(self, irq_mask: int = BIOS_IRQ_MASK) -> None:
        """Program both chips the way a PC BIOS leaves them: edge triggered,
        8086 mode, IRQ0-7 at 0x08, IRQ8-15 at 0x70, `irq_mask` in the IMRs."""
        for io, base, cascade in (
            (self.master_io, BIOS_MASTER_VECTOR, 1 << CASCADE_IRQ),
            (self.slave_io, BIOS_SLAVE_VECTOR, CASCADE_IRQ),
        ):
            io.write(COMMAND, 1, ICW1_INIT | ICW1_IC4)
            io.write(DATA, 1, base)
            io.write(DATA, 1, cascade)
            io.write(DATA, 1, ICW4_8086)
        self.master_io.write(DATA, 1, irq_mask & 0xFF)
        self.slave_io.write(DATA, 1, irq_mask >> 8)

    # --- internals ------------------------------------------------------

    def _cascade(self) -> None:
        self.master.set_input(CASCADE_IRQ, self.slave.pending_irq() is not None)

    def _update(self) -> None:
        """Propagate the slave's INTR and deliver what the master raises."""
        self._cascade()
        if not self.output_enabled:
            return
        # Each request is delivered at most once per update: in auto-EOI
        # mode with a level input held high, hardware would interrupt the
        # CPU again and again; here the next event re-delivers instead.
        delivered: set[int] = set()
        while True:
            irq = self.master.pending_irq()
            if irq is None:
                return
            vector = self._acknowledge(irq)
            if vector in delivered:
                return
            delivered.add(vector)
            self.deliver_extint(vector)
            self._cascade()

    def _acknowledge(self, irq: int) -> int:
        """One INTA cycle: the vector for the master's pending `irq`."""
        self.master.acknowledge(irq)
        if irq != CASCADE_IRQ:
            return self.master.regs.vector_base | irq
        slave_irq = self.slave.pending_irq()
        if slave_irq is None:
            # The slave's request went away before INTA: it answers with
            # its IR7 vector without setting ISR (a spurious interrupt).
            self.log("pic_spurious", chip="slave")
            return self.slave.regs.vector_base | 7
        self.slave.acknowledge(slave_irq)
        return self.slave.regs.vector_base | slave_irq

    # --- snapshot -------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "master": asdict(self.master.regs),
            "slave": asdict(self.slave.regs),
            "output_enabled": self.output_enabled,
        }

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        deliver_extint: Callable[[int], None] = _no_delivery,
        log: Callable[..., None] = no_log,
    ) -> "DualPic":
        """Rebuild without delivering anything: whatever was acknowledged
        before the snapshot was already handed to the vCPU."""
        pic = cls(deliver_extint=deliver_extint, log=log)
        pic.master.regs = I8259Registers(**state["master"])
        pic.slave.regs = I8259Registers(**state["slave"])
        pic.output_enabled = state["output_enabled"]
        return pic


class PicIrqLine:
    """IrqLine adapter: one of the sixteen ISA inputs."""

    def __init__(self, pic: DualPic, line: int) -> None:
        self.pic = pic
        self.line = line

    def set_level(self, asserted: bool) -> None:
        self.pic.set_irq(self.line, asserted)


class Elcr:
    """PIIX edge/level control registers at ELCR_BASE (2 ports)."""

    def __init__(self, pic: DualPic, log: Callable[..., None] = no_log) -> None:
        self.pic = pic
        self.log = log

    def _chip(self, offset: int) -> I8259 | None:
        if offset == ELCR_MASTER:
            return self.pic.master
        if offset == ELCR_SLAVE:
            return self.pic.slave
        return None

    def read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(max(size, 1)):
            chip = self._chip(offset + i)
            if chip is None:
                self.log("elcr_unknown_read", offset=offset + i)
                byte = UNMAPPED_READ
            else:
                byte = chip.regs.elcr
            value |= byte << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(max(size, 1)):
            chip = self._chip(offset + i)
            byte = (value >> (8 * i)) & 0xFF
            if chip is None:
                self.log("elcr_unknown_write", offset=offset + i, value=byte)
                continue
            writable = ELCR_WRITABLE[offset + i]
            if byte & ~writable:
                self.log("elcr_reserved_bits", offset=offset + i, value=byte)
            chip.regs.elcr = byte & writable
            # A line switched to level mode with its input high is a request.
            chip.regs.irr |= chip.level_mask() & chip.regs.input_levels
        self.pic._update()

    def state(self) -> dict[str, Any]:
        return {"master": self.pic.master.regs.elcr, "slave": self.pic.slave.regs.elcr}

    @classmethod
    def from_state(
        cls, state: dict[str, Any], pic: DualPic, log: Callable[..., None] = no_log
    ) -> "Elcr":
        pic.master.regs.elcr = state["master"] & ELCR_WRITABLE[ELCR_MASTER]
        pic.slave.regs.elcr = state["slave"] & ELCR_WRITABLE[ELCR_SLAVE]
        return cls(pic, log=log)


# --- the actor: the model hosted in its own process ---------------------------


class PicHost(DeviceHost):
    """Dual 8259A + ELCR.  Acknowledged vectors go to the BSP as ExtINT MSIs
    (delivery mode 7), while the IOAPIC says the PIC's output is in use."""

    def setup(self) -> None:
        self.connect_msi("pic")
        self.inputs = LineInputs()

    def model_args(self) -> dict:
        return {"deliver_extint": self._extint, "log": self.log}

    def build_model(self, state=None):
        model = super().build_model(state)
        if state is None:
            model.bios_setup()  # we are the firmware: leave it as a BIOS would
        self.elcr = Elcr(model, log=self.log)
        return model

    def _extint(self, vector: int) -> None:
        base = self.model.master.regs.vector_base
        pin = vector - base if (vector & 0xF8) == base else 8 + (vector & 7)
        # Physical destination 0: the BSP.
        self.msi_out.send_msi(MSI_ADDR_BASE, vector | (DELIVERY_EXTINT << MSI_DATA_DELIVERY_MODE_SHIFT), pin)

    def port_target(self, port):
        if MASTER_BASE <= port < MASTER_BASE + 2:
            return self.model.master_io, port - MASTER_BASE
        if SLAVE_BASE <= port < SLAVE_BASE + 2:
            return self.model.slave_io, port - SLAVE_BASE
        return self.elcr, port - ELCR_BASE

    def irq_input(self, source, line, level):
        if 0 <= line < 16:
            self.model.set_irq(line, self.inputs.set(source, line, level))

    def pic_output(self, enabled: bool) -> None:
        self.model.set_output_enabled(enabled)

    def state(self):
        return {**super().state(), "inputs": self.inputs.levels}

    def restore(self, state):
        super().restore(state)
        self.inputs.levels = dict(state["inputs"])
