"""Entry point of every device actor process.

    python -m bhive.devices_worker RUN_DIR ACTOR

Reads the VM's validated config from the run directory, builds the device
named ACTOR through its `HostedDevice` glue below, and runs it on the
shared actor runtime.  One process per device: a crash or a `bhive kill`
takes out that device alone, and the supervisor restarts it from the state
it committed.
"""

from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

import zmq

from . import config as config_mod
from . import worker
from .actors import fw_cfg, ide, pci
from .actors.acpi_pm import AcpiPm
from .actors.debug_exit import DebugExit
from .actors.i8042 import I8042
from .actors.ioapic import (DELIVERY_EXTINT, MMIO_SIZE as IOAPIC_MMIO_SIZE, MSI_ADDR_BASE,
                            MSI_ADDR_DEST_LOGICAL, RTE_MASKED, IoApic)
from .actors.pic import DualPic, Elcr
from .actors.pit import Pit8254, SystemControlPortB
from .actors.rtc import Rtc
from .actors.runtime import ActorRuntime, HostedDevice
from .actors.testdev import TestDev
from .actors.uart import Serial16550
from .bus import schema
from .bus.schema import Ack, EoiRequest, IrqLineLevel, Msi, PicOutput, VmEvent
from .devices import DEVICE_TYPES, TESTDEV_LINES
from .bus.shm import ConsoleRing, SharedRegion
from .rundir import RunDir


class IrqBus:
    """This actor's connection to the interrupt-controller actors: one
    DEALER per controller, shared by all of the actor's lines.

    A line change is acknowledged: `send` returns once every controller
    has applied it, like a wire, so the guest access that caused it cannot
    complete first and be overtaken by the guest's next exit (e.g. an RTE
    write reaching the IOAPIC before an earlier pulse).  The wait is
    bounded: a controller that is down is retried for LINE_ACK_GIVE_UP
    seconds, then the change is logged as unacknowledged (the controller
    re-reads its committed input levels when it restarts).  Controllers
    never wait on devices or vCPUs, so there is no cycle to deadlock on.
    """

    RETRY_S = 0.1
    LINE_ACK_GIVE_UP = 2.0

    def __init__(self, runtime: ActorRuntime, controllers: list[str]):
        self.runtime = runtime
        self.sockets = []
        self.dropped = 0
        self.seq = 0
        for role in controllers:
            sock = runtime.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 1000)
            sock.setsockopt(zmq.RECONNECT_IVL, 20)
            sock.connect(runtime.rundir.endpoint(role))
            self.sockets.append(sock)

    def send(self, line: int, level: bool, wait: bool = True) -> None:
        """Drive `line`; with wait=False the ack is collected by the next send
        on the same sockets (a pulse: up, then down and wait)."""
        self.seq += 1
        raw = schema.encode(IrqLineLevel(self.runtime.role, self.seq, line, level))
        for sock in self.sockets:
            try:
                sock.send(raw, zmq.NOBLOCK)
            except zmq.Again:
                self.dropped += 1
                self.runtime.log("irq-dropped", line=line, level=level)
        if wait:
            for sock in self.sockets:
                self._await_ack(sock, raw, self.seq, line)

    def _await_ack(self, sock, raw: bytes, seq: int, line: int) -> None:
        started = time.monotonic()
        while time.monotonic() - started < self.LINE_ACK_GIVE_UP:
            if sock.poll(int(self.RETRY_S * 1000)):
                try:
                    reply = schema.decode(sock.recv())
                except schema.SchemaError:
                    continue
                if isinstance(reply, Ack) and reply.req_id >= seq:
                    return
                continue                  # an older ack
            try:
                sock.send(raw, zmq.NOBLOCK)   # the controller may have restarted
            except zmq.Again:
                pass
        self.runtime.log("irq-unacknowledged", line=line, seq=seq)


class BusIrqLine:
    """An IRQ line that reaches the interrupt-controller actors as messages.

    Sending never blocks: a controller that is down misses the message, and
    the level is sent again when it changes or when this actor restarts.
    `controllers` is a list of controller roles or a shared `IrqBus`.
    """

    def __init__(self, runtime: ActorRuntime, line: int, controllers):
        self.runtime = runtime
        self.line = line
        self.level = False
        self.bus = controllers if isinstance(controllers, IrqBus) else IrqBus(runtime, controllers)

    def set_level(self, asserted: bool) -> None:
        asserted = bool(asserted)
        if asserted == self.level:
            return
        self.level = asserted
        self.resend()

    def pulse(self) -> None:
        """An edge: up then down (the PIT's OUT0 as edge-triggered inputs see it)."""
        if self.level:
            self.set_level(False)
        self.bus.send(self.line, True, wait=False)
        self.bus.send(self.line, False)
        self.level = False

    def resend(self) -> None:
        self.bus.send(self.line, self.level)


TX_STALL_POLL = 0.005     # seconds between looks at a full console ring


class UartHost(HostedDevice):
    """A 16550 whose transmitter feeds the VM console ring."""

    def __init__(self, runtime: ActorRuntime, cfg: config_mod.DeviceConfig, vm: config_mod.VmConfig):
        super().__init__(runtime)
        self.base = cfg.options["port"]
        self.irq = BusIrqLine(runtime, cfg.options["irq"], interrupt_controllers(vm))
        self.ring = None
        if cfg.options["console"]:
            self.ring = ConsoleRing(runtime.rundir.shm / f"{runtime.role}.console")
        self.written = 0          # console bytes produced, committed with the state
        self.tx_blocked = False
        self.model = Serial16550(irq=self.irq, tx=self._tx, log=self.log)

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

    def busy(self):
        # The console is not taking bytes and the TX FIFO is full: leave the
        # guest's next writes in the channel rather than drop them.
        self._resume_tx()
        return self.model.tx_fifo_full()

    def next_deadline(self):
        return time.monotonic() + TX_STALL_POLL if self.tx_blocked else None

    def on_timer(self, now):
        self._resume_tx()
        self.runtime.commit()
        self.runtime.serve_channels()

    def pio(self, port, size, is_write, data):
        self._resume_tx()
        offset = port - self.base
        if is_write:
            self.model.write(offset, size, data)
            return 0
        return self.model.read(offset, size)

    def console_input(self, data: bytes) -> int:
        return self.model.receive(data)

    def state(self):
        return {"uart": self.model.state(), "written": self.written, "irq": self.irq.level}

    def restore(self, state):
        self.written = state["written"]
        self.model = Serial16550.from_state(state["uart"], irq=self.irq, tx=self._tx, log=self.log)
        self.irq.level = state["irq"]
        self.irq.resend()
        if self.ring is not None:
            self.ring.publish(self.written)

    def after_commit(self):
        if self.ring is not None:
            self.ring.publish(self.written)

    def mirror_value(self):
        return self.model.lsr_mirror()


class DebugExitHost(HostedDevice):
    """isa-debug-exit: a guest write ends the VM with status (V << 1) | 1."""

    def __init__(self, runtime: ActorRuntime, cfg: config_mod.DeviceConfig, vm: config_mod.VmConfig):
        super().__init__(runtime)
        self.base = cfg.options["port"]
        self.model = DebugExit(exit=self._exit, iosize=cfg.options["iosize"], log=self.log)

    def _exit(self, status: int) -> None:
        self.log("guest-exit", status=status)
        self.runtime.event(VmEvent(self.runtime.role, "exit", status, "isa-debug-exit write"))

    def pio(self, port, size, is_write, data):
        offset = port - self.base
        if is_write:
            self.model.write(offset, size, data)
            return 0
        return self.model.read(offset, size)

    def state(self):
        return self.model.state()

    def restore(self, state):
        self.model = DebugExit.from_state(state, exit=self._exit, log=self.log)


# --- interrupt delivery towards the vCPU processes ---------------------------

MSI_QUEUE = 1024          # MSIs queued per vCPU before we drop (and log) instead of waiting
ISA_OVERRIDES = {0: 2}    # ISA IRQ -> GSI, as the MADT's interrupt source overrides say
STATS_INTERVAL = 0.25     # seconds between stats-ROLE.json refreshes


def isa_to_gsi(line: int) -> int:
    return ISA_OVERRIDES.get(line, line)


class MsiOut:
    """PUSH sockets to every vCPU process's MSI endpoint (`vcpuN`).

    Never blocks: every send is NOBLOCK into a bounded per-vCPU queue
    (SNDHWM).  A vCPU whose process is gone, or whose control thread is
    stuck, fills its own queue and from then on its MSIs are dropped,
    counted and logged; every other vCPU is unaffected.  Nothing here
    depends on what the destination is doing (running, halted, dead).
    (Not ZMQ_IMMEDIATE: that would also drop the MSIs sent in the few ms
    between a vCPU binding its socket and the reconnect reaching it.)
    """

    def __init__(self, runtime: ActorRuntime, ncpus: int):
        self.runtime = runtime
        self.ncpus = ncpus
        self.socks = []
        for i in range(ncpus):
            sock = runtime.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, MSI_QUEUE)
            sock.setsockopt(zmq.RECONNECT_IVL, 10)
            sock.connect(runtime.rundir.endpoint(f"vcpu{i}"))
            self.socks.append(sock)
        self.dropped = 0

    def send(self, addr: int, data: int) -> int | None:
        """Send to the destination's process; the vCPU index that took it, or None."""
        raw = schema.encode(Msi(addr, data, self.runtime.role))
        dest = (addr >> 12) & 0xFF
        if not addr & MSI_ADDR_DEST_LOGICAL and dest != 0xFF:
            order = [dest] if dest < self.ncpus else []
        else:
            # Logical or broadcast: vm_lapic_msi in any vCPU process reaches
            # every matching local APIC (they live in shared memory).
            order = list(range(self.ncpus))
        for cpu in order:
            try:
                self.socks[cpu].send(raw, zmq.NOBLOCK)
                return cpu
            except zmq.Again:
                continue
        self.dropped += 1
        if self.dropped <= 20 or self.dropped % 1000 == 0:
            self.runtime.log("msi-dropped", addr=addr, data=data, dest=dest, dropped=self.dropped)
        return None


class LineInputs:
    """Wire-OR of the devices driving each line: a line is asserted while
    any source asserts it (two devices may share an ISA IRQ)."""

    def __init__(self):
        self.levels: dict[str, bool] = {}   # "source:line" -> level

    def set(self, source: str, line: int, level: bool) -> bool:
        key = f"{source}:{line}"
        if level:
            self.levels[key] = True
        else:
            self.levels.pop(key, None)
        return any(k.endswith(f":{line}") for k in self.levels)


class StatsFile:
    """Delivery counts of one actor, written to RUN_DIR/stats-ROLE.json."""

    def __init__(self, runtime: ActorRuntime):
        self.runtime = runtime
        self.last = 0.0

    def maybe_write(self, data: dict, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= STATS_INTERVAL:
            self.last = now
            try:
                self.runtime.rundir.write_json(f"stats-{self.runtime.role}.json", data)
            except OSError:
                pass


class StatsHost(HostedDevice):
    """A host that counts deliveries: {"source;pin;vector;cpu": n}."""

    def __init__(self, runtime):
        super().__init__(runtime)
        self.deliveries: dict[str, int] = {}
        self.stats_file = StatsFile(runtime)

    def count(self, name: str, pin: int, vector: int, cpu) -> None:
        key = f"{name};{pin};{vector};{'-' if cpu is None else cpu}"
        self.deliveries[key] = self.deliveries.get(key, 0) + 1

    def after_commit(self):
        self.stats_file.maybe_write({"role": self.runtime.role, "deliveries": self.deliveries})

    def flush_stats(self):
        self.stats_file.maybe_write({"role": self.runtime.role, "deliveries": self.deliveries}, force=True)


class _CountingIoApic(IoApic):
    """The model, with each delivery reported to the host (pin included)."""

    host: "IoApicHost"

    def _deliver(self, pin: int) -> None:
        self.host.delivering_pin = pin
        super()._deliver(pin)


class IoApicHost(StatsHost):
    """The I/O APIC actor: GSI lines in, MSIs out to the vCPU processes.

    Every delivery is built from the RTE as it is at that moment (the
    model never caches a destination: seed bug #5).  Each asserted line is
    serviced when its message arrives, whatever other lines do (no
    lowest-pin-wins loop: seed bug #6).  Sends never block (seed bug #7).
    """

    def __init__(self, runtime, cfg, vm):
        super().__init__(runtime)
        self.base = cfg.options["mmio"]
        self.msi_out = MsiOut(runtime, vm.cpus)
        self.inputs = LineInputs()
        self.delivering_pin = -1
        self.pic_roles = [d.name for d in vm.devices.values() if d.type == "pic"]
        self.pic_socks = []
        for role in self.pic_roles:
            sock = runtime.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 100)
            sock.connect(runtime.rundir.endpoint(role))
            self.pic_socks.append(sock)
        self.pic_enabled = True
        self.model = self._build(None, cfg.options["id"])

    def _build(self, state, apic_id=0):
        if state is None:
            model = _CountingIoApic(msi=self, apic_id=apic_id, log=self.log)
        else:
            model = _CountingIoApic.from_state(state, msi=self, log=self.log)
        model.host = self
        return model

    # MsiSender
    def send_msi(self, addr: int, data: int) -> None:
        cpu = self.msi_out.send(addr, data)
        self.count("ioapic", self.delivering_pin, data & 0xFF, cpu)

    def mmio(self, gpa, size, is_write, data):
        offset = gpa - self.base
        if not 0 <= offset < IOAPIC_MMIO_SIZE:
            self.log("ioapic-unclaimed-offset", offset=offset, write=is_write)
            return 0
        if is_write:
            self.model.write(offset, size, data)
            self._update_pic_output()
            return 0
        return self.model.read(offset, size)

    def irq_line(self, source, line, level):
        gsi = isa_to_gsi(line) if line < 16 else line
        self.model.set_irq(gsi, self.inputs.set(source, gsi, level))

    def eoi(self, vector: int) -> int:
        self.model.eoi(vector & 0xFF)
        return 1

    def _update_pic_output(self, force: bool = False) -> None:
        """The PIC delivers ExtINT only while every RTE is masked."""
        enabled = all(rte & RTE_MASKED for rte in self.model.regs.rtes)
        if enabled == self.pic_enabled and not force:
            return
        self.pic_enabled = enabled
        raw = schema.encode(PicOutput(self.runtime.role, enabled))
        for sock in self.pic_socks:
            try:
                sock.send(raw, zmq.NOBLOCK)
            except zmq.Again:
                self.log("pic-output-dropped", enabled=enabled)

    def state(self):
        return {"ioapic": self.model.state(), "inputs": self.inputs.levels,
                "pic_enabled": self.pic_enabled, "deliveries": self.deliveries}

    def restore(self, state):
        self.model = self._build(state["ioapic"])
        self.inputs.levels = dict(state["inputs"])
        self.deliveries = dict(state["deliveries"])
        self.pic_enabled = state["pic_enabled"]
        self._update_pic_output(force=True)

    def counters(self):
        return {"msi_dropped": self.msi_out.dropped}


class PicHost(StatsHost):
    """Dual 8259A + ELCR.  Acknowledged vectors go to the BSP as ExtINT MSIs
    (delivery mode 7), while the IOAPIC says the PIC's output is in use."""

    MASTER, SLAVE, ELCR = 0x20, 0xA0, 0x4D0

    def __init__(self, runtime, cfg, vm):
        super().__init__(runtime)
        self.msi_out = MsiOut(runtime, vm.cpus)
        self.inputs = LineInputs()
        self.model = DualPic(deliver_extint=self._extint, log=self.log)
        self.model.bios_setup()     # we are the firmware: leave it as a BIOS would
        self.elcr = Elcr(self.model, log=self.log)

    def _extint(self, vector: int) -> None:
        data = vector | (DELIVERY_EXTINT << 8)
        cpu = self.msi_out.send(MSI_ADDR_BASE, data)   # physical destination 0: the BSP
        self.count("pic", vector - self.model.master.regs.vector_base if
                   (vector & 0xF8) == self.model.master.regs.vector_base else
                   8 + (vector & 7), vector, cpu)

    def pio(self, port, size, is_write, data):
        if self.MASTER <= port < self.MASTER + 2:
            dev, off = self.model.master_io, port - self.MASTER
        elif self.SLAVE <= port < self.SLAVE + 2:
            dev, off = self.model.slave_io, port - self.SLAVE
        else:
            dev, off = self.elcr, port - self.ELCR
        if is_write:
            dev.write(off, size, data)
            return 0
        return dev.read(off, size)

    def irq_line(self, source, line, level):
        if 0 <= line < 16:
            self.model.set_irq(line, self.inputs.set(source, line, level))

    def pic_output(self, enabled: bool) -> None:
        self.model.set_output_enabled(enabled)

    def state(self):
        return {"pic": self.model.state(), "inputs": self.inputs.levels, "deliveries": self.deliveries}

    def restore(self, state):
        self.model = DualPic.from_state(state["pic"], deliver_extint=self._extint, log=self.log)
        self.elcr = Elcr(self.model, log=self.log)
        self.inputs.levels = dict(state["inputs"])
        self.deliveries = dict(state["deliveries"])

    def counters(self):
        return {"msi_dropped": self.msi_out.dropped}


def _mono_ns() -> int:
    return time.monotonic_ns()


class PitHost(HostedDevice):
    """8254 + port 0x61.  IRQ0 edges come from the runtime's timer hook."""

    def __init__(self, runtime, cfg, vm):
        super().__init__(runtime)
        self.irq = BusIrqLine(runtime, cfg.options["irq"], interrupt_controllers(vm))
        self.model = Pit8254(clock=_mono_ns, irq=self.irq, log=self.log)
        self.portb = SystemControlPortB(self.model, log=self.log)
        self.ticks = 0

    def pio(self, port, size, is_write, data):
        if port == 0x61:
            dev, off = self.portb, 0
        else:
            dev, off = self.model, port - 0x40
        if is_write:
            dev.write(off, size, data)
            return 0
        return dev.read(off, size)

    def next_deadline(self):
        ns = self.model.next_event_ns()
        return None if ns is None else ns / 1e9

    def on_timer(self, now):
        if self.model.advance(time.monotonic_ns()):
            self.ticks += 1
        self.runtime.commit()

    def state(self):
        return {"pit": self.model.state(), "portb": self.portb.state(), "ticks": self.ticks}

    def restore(self, state):
        self.model = Pit8254.from_state(state["pit"], clock=_mono_ns, irq=self.irq, log=self.log)
        self.portb = SystemControlPortB.from_state(state["portb"], self.model, log=self.log)
        self.ticks = state["ticks"]

    def counters(self):
        return {"irq0_ticks": self.ticks}


class RtcHost(HostedDevice):
    """MC146818 at 0x70/0x71, IRQ8 driven as a level."""

    def __init__(self, runtime, cfg, vm):
        super().__init__(runtime)
        self.base = cfg.options["port"]
        self.irq = BusIrqLine(runtime, cfg.options["irq"], interrupt_controllers(vm))
        self.ram_size = vm.memory
        self.model = Rtc(wallclock=time.time_ns, irq=self.irq, ram_size=vm.memory, log=self.log)

    def pio(self, port, size, is_write, data):
        if is_write:
            self.model.write(port - self.base, size, data)
            return 0
        return self.model.read(port - self.base, size)

    def next_deadline(self):
        ns = self.model.next_event_ns()
        if ns is None:
            return None
        return time.monotonic() + max(0, ns - time.time_ns()) / 1e9

    def on_timer(self, now):
        self.model.advance(time.time_ns())
        self.runtime.commit()

    def state(self):
        return {"rtc": self.model.state(), "irq": self.irq.level}

    def restore(self, state):
        self.model = Rtc.from_state(state["rtc"], wallclock=time.time_ns, irq=self.irq, log=self.log)
        self.irq.level = state["irq"]
        self.irq.resend()


class I8042Host(HostedDevice):
    """Keyboard controller: the keyboard's line (IRQ1) and the AUX port's
    (IRQ12) on one connection to the controllers; its reset line ends the VM
    with a "reset" event."""

    def __init__(self, runtime, cfg, vm):
        super().__init__(runtime)
        bus = IrqBus(runtime, interrupt_controllers(vm))
        self.irq = BusIrqLine(runtime, cfg.options["irq"], bus)
        self.aux_irq = BusIrqLine(runtime, cfg.options["aux_irq"], bus)
        self.model = I8042(reset=self._reset, kbd_irq=self.irq, aux_irq=self.aux_irq, log=self.log)

    def _reset(self):
        self.runtime.event(VmEvent(self.runtime.role, "reset", 0, "i8042 reset line pulsed"))

    def pio(self, port, size, is_write, data):
        off = port - 0x60
        if is_write:
            self.model.write(off, size, data)
            return 0
        return self.model.read(off, size)

    def state(self):
        return {"i8042": self.model.state(), "irq": self.irq.level, "aux_irq": self.aux_irq.level}

    def restore(self, state):
        self.model = I8042.from_state(state["i8042"], reset=self._reset, kbd_irq=self.irq,
                                      aux_irq=self.aux_irq, log=self.log)
        for line, key in ((self.irq, "irq"), (self.aux_irq, "aux_irq")):
            line.level = state[key]
            line.resend()


class AcpiPmHost(HostedDevice):
    """PM1a event/control and the PM timer; SLP_TYP=5 + SLP_EN powers off."""

    def __init__(self, runtime, cfg, vm):
        super().__init__(runtime)
        self.base = cfg.options["port"]
        self.irq = BusIrqLine(runtime, cfg.options["sci"], interrupt_controllers(vm))
        self.model = AcpiPm(clock=_mono_ns, sci=self.irq, poweroff=self._poweroff, log=self.log)

    def _poweroff(self):
        self.runtime.event(VmEvent(self.runtime.role, "poweroff", 0, "ACPI S5 (SLP_EN)"))

    def pio(self, port, size, is_write, data):
        if is_write:
            self.model.write(port - self.base, size, data)
            return 0
        return self.model.read(port - self.base, size)

    def next_deadline(self):
        ns = self.model.next_event_ns()
        return None if ns is None else ns / 1e9

    def on_timer(self, now):
        self.model.advance(time.monotonic_ns())
        self.runtime.commit()

    def state(self):
        return {"pm": self.model.state(), "irq": self.irq.level}

    def restore(self, state):
        self.model = AcpiPm.from_state(state["pm"], clock=_mono_ns, sci=self.irq,
                                       poweroff=self._poweroff, log=self.log)
        self.irq.level = state["irq"]
        self.irq.resend()


class TestDevHost(HostedDevice):
    """pc-testdev: IRQ lines at port+n, the latch/flush ports at 0xE0-0xEB,
    and the 64 KiB iomem window."""

    def __init__(self, runtime, cfg, vm):
        super().__init__(runtime)
        self.irq_base = cfg.options["port"]
        self.mmio_base = cfg.options["mmio"]
        bus = IrqBus(runtime, interrupt_controllers(vm))
        self.lines = [BusIrqLine(runtime, n, bus) for n in range(TESTDEV_LINES)]
        self.model = TestDev(self.lines, log=self.log, irq_base=self.irq_base)

    def pio(self, port, size, is_write, data):
        if is_write:
            self.model.write(port, size, data)
            return 0
        return self.model.read(port, size)

    def mmio(self, gpa, size, is_write, data):
        if is_write:
            self.model.mmio_write(gpa - self.mmio_base, size, data)
            return 0
        return self.model.mmio_read(gpa - self.mmio_base, size)

    def state(self):
        return self.model.state()

    def restore(self, state):
        self.model = TestDev.from_state(state, self.lines, log=self.log, irq_base=self.irq_base)
        for n, line in enumerate(self.lines):
            line.level = bool(state["levels"] >> n & 1)
            if line.level:
                line.resend()


def fw_cfg_items(cfg: config_mod.DeviceConfig, vm: config_mod.VmConfig) -> dict[int, bytes]:
    """What the VM's fw_cfg serves: its CPU count and RAM size, the
    command line, and the files etc/e820 (the memory map, as the Multiboot
    and PVH loaders describe it) and etc/boot-fail-wait (QEMU's default,
    -1: never reboot)."""
    from .firmware import tables
    e820 = b"".join(e.pack() for e in tables.e820(vm.memory))
    files = [("etc/e820", e820), ("etc/boot-fail-wait", struct.pack("<i", -1))]
    return fw_cfg.machine_items(cpus=vm.cpus, max_cpus=cfg.options["max_cpus"] or vm.cpus,
                                ram_size=vm.memory, cmdline=vm.append, files=files)


class FwCfgHost(HostedDevice):
    """QEMU's fw_cfg at port (0x510) and port+1."""

    def __init__(self, runtime, cfg, vm):
        super().__init__(runtime)
        self.base = cfg.options["port"]
        self.items = fw_cfg_items(cfg, vm)
        self.model = fw_cfg.FwCfg(self.items, log=self.log)

    def pio(self, port, size, is_write, data):
        if is_write:
            self.model.write(port - self.base, size, data)
            return 0
        return self.model.read(port - self.base, size)

    def state(self):
        return self.model.state()

    def restore(self, state):
        self.model = fw_cfg.FwCfg.from_state(state, self.items, log=self.log)


# PCI functions other device types put on bus 0 (their config header).
PCI_FUNCTIONS = {"ide": ide.pci_function}


class PciHostDevice(HostedDevice):
    """The i440FX host bridge and the PIIX3 ISA bridge.  Bus 0's config
    spaces are the shared table (run directory shm/pci.config): built once,
    re-attached by a restarted actor."""

    def __init__(self, runtime, cfg, vm):
        super().__init__(runtime)
        self.base = cfg.options["port"]
        path = runtime.rundir.shm / pci.TABLE_FILE
        table = pci.ConfigTable.open(path)
        if table is None:                  # first start (or killed while building it)
            table = pci.ConfigTable.create(path)
            functions = [(pci.HOST_BRIDGE, runtime.role), (pci.ISA_BRIDGE, runtime.role)]
            functions += [(PCI_FUNCTIONS[d.type](), d.name) for d in vm.devices.values()
                          if d.type in PCI_FUNCTIONS]
            pci.build_table(table, functions)
            table.seal()
        self.table = table
        self.model = pci.PciHost(table, reset=self._reset, log=self.log)

    def _reset(self):
        self.runtime.event(VmEvent(self.runtime.role, "reset", 0, "PIIX3 reset control register"))

    def pio(self, port, size, is_write, data):
        if is_write:
            self.model.write(port - self.base, size, data)
            return 0
        return self.model.read(port - self.base, size)

    def state(self):
        return self.model.state()

    def restore(self, state):
        self.model = pci.PciHost.from_state(state, self.table, reset=self._reset, log=self.log)


class IdeHost(HostedDevice):
    """PIIX3 IDE: legacy ports on IRQ 14/15, the bus-master registers at
    wherever BAR4 is now (the vCPUs route them here), DMA straight between
    the images (vm.drives) and shared guest RAM."""

    def __init__(self, runtime, cfg, vm):
        super().__init__(runtime)
        from . import block
        from .loader import ram_slots
        bus = IrqBus(runtime, interrupt_controllers(vm))
        self.irqs = [BusIrqLine(runtime, irq, bus) for _, _, irq in ide.CHANNELS]
        self.ram_region = SharedRegion(runtime.rundir.shm / "ram")
        self.ram = ide.GuestRam(self.ram_region.view, ram_slots(vm.memory))
        self.images: list = [None] * 4
        for d in getattr(vm, "drives", []):
            if d.interface != "ide" or not 0 <= d.index < 4:
                continue
            snap = runtime.rundir.snapshot_dir(d.index) if d.snapshot else None
            try:
                self.images[d.index] = block.open_image(d.file, readonly=d.readonly, snapshot_dir=snap)
            except block.ImageError as exc:       # the supervisor checked it; it went away since
                self.log("image-unavailable", index=d.index, error=str(exc))
        self.table: pci.ConfigTable | None = None
        self.model = ide.PiixIde(self.images, self.irqs, self.ram, self._bus_master, log=self.log)

    def _pci(self) -> tuple[pci.ConfigTable, int] | tuple[None, None]:
        if self.table is None:
            self.table = pci.ConfigTable.open(self.runtime.rundir.shm / pci.TABLE_FILE)
        if self.table is None:
            return None, None
        return self.table, self.table.slot_of(pci.devfn(1, 1))

    def _bus_master(self) -> bool:
        table, slot = self._pci()
        return table is None or slot is None or bool(table.command(slot) & pci.CMD_BUS_MASTER)

    def pio(self, port, size, is_write, data):
        for ch, (cmd, ctl, _) in enumerate(ide.CHANNELS):
            if cmd <= port < cmd + ide.CMD_BLOCK_SIZE:
                if is_write:
                    self.model.write(ch, port - cmd, size, data)
                    return 0
                return self.model.read(ch, port - cmd, size)
            if port == ctl:
                if is_write:
                    self.model.control_write(ch, size, data)
                    return 0
                return self.model.control_read(ch, size)
        table, slot = self._pci()
        base = table.bar_base(slot, ide.BAR4) if slot is not None else None
        if base is not None and base <= port < base + ide.BM_SIZE:
            if is_write:
                self.model.bm_write(port - base, size, data)
                return 0
            return self.model.bm_read(port - base, size)
        self.log("ide-unclaimed-port", port=port, write=is_write)     # BAR4 moved under a retried access
        return 0 if is_write else (1 << (8 * size)) - 1

    def state(self):
        return {"ide": self.model.state()}

    def restore(self, state):
        self.model = ide.PiixIde.from_state(state["ide"], self.images, self.irqs, self.ram, self._bus_master,
                                            log=self.log)
        for line, ch in zip(self.irqs, self.model.channels):
            line.level = ch.line
            line.resend()

    def counters(self):
        out = {}
        for ch in self.model.channels:
            for k, v in ch.counters.items():
                out[f"{k}{ch.number}"] = v
        return out


class PlatformRuntime(ActorRuntime):
    """The actor runtime plus the platform's own messages: acknowledged
    EOIs (exactly once, like a PIO request) and the PIC output gate."""

    def handle(self, msg):
        if isinstance(msg, EoiRequest):
            eoi = getattr(self.device, "eoi", None)
            if eoi is None:
                self.log("unexpected-eoi", source=msg.source)
                return Ack(msg.req_id, 0)
            done = self._apply_once(msg.source, msg.req_id, lambda: eoi(msg.vector))
            return None if done is None else Ack(msg.req_id, done)
        if isinstance(msg, PicOutput):
            gate = getattr(self.device, "pic_output", None)
            if gate is not None:
                gate(msg.enabled)
                self.commit()
            return None
        return super().handle(msg)


HOSTS = {
    "uart": UartHost,
    "debug_exit": DebugExitHost,
    "ioapic": IoApicHost,
    "pic": PicHost,
    "pit": PitHost,
    "rtc": RtcHost,
    "i8042": I8042Host,
    "acpi_pm": AcpiPmHost,
    "testdev": TestDevHost,
    "fw_cfg": FwCfgHost,
    "pci": PciHostDevice,
    "ide": IdeHost,
}

INTERRUPT_CONTROLLER_TYPES = tuple(name for name, t in DEVICE_TYPES.items() if t.irq_controller)


def interrupt_controllers(vm: config_mod.VmConfig) -> list[str]:
    return [d.name for d in vm.devices.values() if d.type in INTERRUPT_CONTROLLER_TYPES]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m bhive.devices_worker RUN_DIR ACTOR", file=sys.stderr)
        return 2
    run_path, role = Path(argv[0]), argv[1]
    worker.name_process(role)
    rundir = RunDir(run_path.name, run_path.parent)
    vm = config_mod.from_json(rundir.read_json("supervisor.json")["config"])
    dev_cfg = vm.devices[role]
    host_cls = HOSTS[dev_cfg.type]
    runtime = PlatformRuntime(rundir, role)
    status = runtime.run(lambda rt: host_cls(rt, dev_cfg, vm))
    flush = getattr(runtime.device, "flush_stats", None)
    if flush is not None:
        flush()
    return status


if __name__ == "__main__":
    worker.exit_now(main())     # without the interpreter's teardown
