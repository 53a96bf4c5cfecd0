"""The interrupt wiring between actor processes.

Every interrupt source drives a line (`BusIrqLine`); its level travels as
an `IrqLineLevel` message to every interrupt-controller actor (the IOAPIC
and the PIC, whose device types say `irq_controller`).  A controller ORs
the devices that share an input (`LineInputs`), maps ISA IRQs to GSIs
(`isa_to_gsi`) and turns what it delivers into MSIs for the vCPU processes
(`MsiOut`), which inject them with vm_lapic_msi.  `MsiOut` also counts
each delivery, per (pin, vector, vCPU), for `bhive stats`.
"""

from __future__ import annotations

import time

import zmq

from ..bus import schema
from ..bus.schema import Ack, IrqLineLevel, Msi
from .base import MSI_ADDR_DEST_LOGICAL

MSI_QUEUE = 1024          # MSIs queued per vCPU before we drop (and log) instead of waiting
ISA_OVERRIDES = {0: 2}    # ISA IRQ -> GSI, as the MADT's interrupt source overrides say
STATS_INTERVAL = 0.25     # seconds between stats-ROLE.json refreshes


def isa_to_gsi(line: int) -> int:
    return ISA_OVERRIDES.get(line, line)


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

    def __init__(self, runtime, controllers: list[str]):
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
    """An IRQ line (an `IrqLine` for a model) that reaches the
    interrupt-controller actors as messages over an `IrqBus`.  Its level
    is part of the host's committed state (with the bus's sequence number,
    which controllers use to recognise a change made again after a
    restart)."""

    def __init__(self, bus: IrqBus, line: int):
        self.bus = bus
        self.line = line
        self.level = False

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


class LineInputs:
    """A controller's inputs: the wire-OR of the devices driving each line
    (a line is asserted while any source asserts it: two devices may share
    an ISA IRQ)."""

    def __init__(self):
        self.levels: dict[str, bool] = {}   # "source:line" -> level

    def set(self, source: str, line: int, level: bool) -> bool:
        key = f"{source}:{line}"
        if level:
            self.levels[key] = True
        else:
            self.levels.pop(key, None)
        return any(k.endswith(f":{line}") for k in self.levels)


class MsiOut:
    """A controller's MSI sender (`MsiSender`): PUSH sockets to every vCPU
    process's MSI endpoint (`vcpuN`), and the count of what it delivered.

    Never blocks: every send is NOBLOCK into a bounded per-vCPU queue
    (SNDHWM).  A vCPU whose process is gone, or whose control thread is
    stuck, fills its own queue and from then on its MSIs are dropped,
    counted and logged; every other vCPU is unaffected.  Nothing here
    depends on what the destination is doing (running, halted, dead).
    (Not ZMQ_IMMEDIATE: that would also drop the MSIs sent in the few ms
    between a vCPU binding its socket and the reconnect reaching it.)

    Deliveries are counted as {"chip;pin;vector;cpu": n} (cpu "-": dropped);
    the host commits them with its state and `write_stats` publishes them
    as RUN_DIR/stats-ROLE.json for `bhive stats`.
    """

    def __init__(self, runtime, ncpus: int, chip: str):
        self.runtime = runtime
        self.ncpus = ncpus
        self.chip = chip
        self.socks = []
        for i in range(ncpus):
            sock = runtime.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, MSI_QUEUE)
            sock.setsockopt(zmq.RECONNECT_IVL, 10)
            sock.connect(runtime.rundir.endpoint(f"vcpu{i}"))
            self.socks.append(sock)
        self.dropped = 0
        self.deliveries: dict[str, int] = {}
        self.seq = 0                  # MSIs generated, committed with the host's state (schema.Msi)
        self.stats_written = 0.0

    def send_msi(self, addr: int, data: int, pin: int = -1) -> int | None:
        """Send to the destination's process and count it under `pin`;
        the vCPU index that took it, or None."""
        cpu = self._send(addr, data)
        key = f"{self.chip};{pin};{data & 0xFF};{'-' if cpu is None else cpu}"
        self.deliveries[key] = self.deliveries.get(key, 0) + 1
        return cpu

    def _send(self, addr: int, data: int) -> int | None:
        self.seq += 1
        raw = schema.encode(Msi(addr, data, self.runtime.role, self.seq))
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

    def write_stats(self, force: bool = False) -> None:
        """Refresh stats-ROLE.json, at most every STATS_INTERVAL unless forced."""
        now = time.monotonic()
        if not force and now - self.stats_written < STATS_INTERVAL:
            return
        self.stats_written = now
        try:
            self.runtime.rundir.write_json(f"stats-{self.runtime.role}.json",
                                           {"role": self.runtime.role, "deliveries": self.deliveries})
        except OSError:
            pass


def interrupt_controllers(vm) -> list[str]:
    """The roles of the VM's interrupt-controller actors (the IOAPIC, the PIC)."""
    from ..devices import DEVICE_TYPES   # here: the registry imports every actor module, this one too
    return [d.name for d in vm.devices.values() if DEVICE_TYPES[d.type].irq_controller]
