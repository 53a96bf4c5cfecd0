"""What hosts a device model in its actor process: `DeviceHost`.

Each device's module under `bhive/actors/` holds its model and, below it,
its host: a `DeviceHost` subclass named in the device's registry entry
(`bhive.devices.DEVICE_TYPES`).  The base class does what most devices
need, so a simple host only says what its model is given:

* the model is built from the registry entry's `model` class, with
  `model_args()` (lines, callbacks, the log: given at reset and restore)
  and `reset_args()` (configuration: given at reset only);
* a port access goes to `port_target(port)`, by default the model at
  the offset from the `port` option; an MMIO access to `mmio_target(gpa)`,
  by default the model at the offset from the `mmio` option; then to
  that target's `read(offset, size)` / `write(offset, size, value)`;
* interrupt lines come from `connect_irq(n)` (ISA IRQ or GSI n, towards
  the interrupt-controller actors), MSIs go out through `connect_msi(chip)`
  (the controllers); their levels and delivery counts are committed with
  the model's state and restored with it.

The runtime (`bhive.actors.runtime`) calls the hooks below; a host
overrides the ones its device has (timers, console input, EOIs, ...).
"""

from __future__ import annotations

from .interrupts import BusIrqLine, IrqBus, MsiOut, interrupt_controllers


class DeviceHost:
    """Glue between one device model and the actor runtime."""

    def __init__(self, runtime, dtype, cfg, vm):
        """`dtype`: the device's registry entry; `cfg`: its validated
        `[devices.NAME]` table; `vm`: the whole VM's config."""
        self.runtime = runtime
        self.log = runtime.log
        self.dtype = dtype
        self.cfg = cfg
        self.vm = vm
        self.port_base = cfg.options.get("port", 0)
        self.mmio_base = cfg.options.get("mmio", 0)
        self.lines: list[BusIrqLine] = []
        self.msi_out: MsiOut | None = None
        self._irq_bus: IrqBus | None = None
        self.setup()
        self.model = self.build_model()

    # Building the model ----------------------------------------------------
    def setup(self) -> None:
        """Before the model is built: connect lines, open what callbacks use."""

    def model_args(self) -> dict:
        """Keyword arguments of both the model's constructor and its from_state."""
        return {"log": self.log}

    def reset_args(self) -> dict:
        """Keyword arguments of the model's constructor only (configuration)."""
        return {}

    def build_model(self, state: dict | None = None):
        model = self.dtype.model
        if state is None:
            return model(**self.reset_args(), **self.model_args())
        return model.from_state(state, **self.model_args())

    # Interrupts ------------------------------------------------------------
    def connect_irq(self, line: int) -> BusIrqLine:
        """An interrupt line to the VM's interrupt controllers (all of this
        actor's lines share one connection)."""
        if self._irq_bus is None:
            self._irq_bus = IrqBus(self.runtime, interrupt_controllers(self.vm))
        irq = BusIrqLine(self._irq_bus, line)
        self.lines.append(irq)
        return irq

    def connect_msi(self, chip: str) -> MsiOut:
        """The MSI sender of an interrupt controller (`chip` names it in
        `bhive stats`)."""
        self.msi_out = MsiOut(self.runtime, self.vm.cpus, chip)
        return self.msi_out

    # Requests --------------------------------------------------------------
    def port_target(self, port: int):
        """The register block that answers `port`, and the offset in it."""
        return self.model, port - self.port_base

    def mmio_target(self, gpa: int):
        """The register block that answers `gpa`, and the offset in it."""
        return self.model, gpa - self.mmio_base

    def pio(self, port: int, size: int, is_write: bool, data: int) -> int:
        target, offset = self.port_target(port)
        if is_write:
            target.write(offset, size, data)
            return 0
        return target.read(offset, size)

    def mmio(self, gpa: int, size: int, is_write: bool, data: int) -> int:
        if not self.dtype.mmio_size:
            self.log("unexpected-mmio", gpa=gpa, size=size, write=is_write)
            return (1 << (8 * size)) - 1 if not is_write else 0
        target, offset = self.mmio_target(gpa)
        if is_write:
            target.write(offset, size, data)
            return 0
        return target.read(offset, size)

    def console_input(self, data: bytes) -> int:
        self.log("unexpected-console-input", bytes=len(data))
        return 0

    def irq_input(self, source: str, line: int, level: bool) -> None:
        """A device drove `line` (interrupt controllers only)."""
        self.log("unexpected-irq-line", source=source, line=line)

    def eoi(self, vector: int) -> int:
        """A vCPU EOId level-triggered `vector` (the IOAPIC only)."""
        self.log("unexpected-eoi", vector=vector)
        return 0

    def pic_output(self, enabled: bool) -> None:
        """The IOAPIC gates the PIC's output (the PIC only)."""
        self.log("unexpected-pic-output", enabled=enabled)

    # State -----------------------------------------------------------------
    def state(self) -> dict:
        """What is committed after each request: the model's state, the
        levels of this actor's lines, the sequence number of its last line
        change its MSI delivery counts and the number of its last MSI."""
        out = {"model": self.model.state(), "lines": [irq.level for irq in self.lines],
               "irq_seq": self._irq_bus.seq if self._irq_bus is not None else 0}
        if self.msi_out is not None:
            out["deliveries"] = self.msi_out.deliveries
            out["msi_seq"] = self.msi_out.seq
        return out

    def restore(self, state: dict) -> None:
        """Rebuild from a committed state (a restart).  The line levels are
        not sent again: a line change made after the last commit is made
        again, with the same sequence number, by the request or timer that
        made it (replayed from the channel, or due again), and a controller
        that applied it already ignores it (`ActorRuntime.line_seqs`).  Sending the
        committed level instead would undo such a change and let the
        replay raise a second edge."""
        self.model = self.build_model(state["model"])
        if self.msi_out is not None:
            self.msi_out.deliveries = dict(state["deliveries"])
            self.msi_out.seq = state.get("msi_seq", 0)
        for irq, level in zip(self.lines, state["lines"]):
            irq.level = level
        if self._irq_bus is not None:
            self._irq_bus.seq = state.get("irq_seq", 0)

    def after_commit(self) -> None:
        """Runs once the state that covers the last request is durable."""
        if self.msi_out is not None:
            self.msi_out.write_stats()

    def on_stop(self) -> None:
        """The actor is stopping: publish what must outlive it."""
        if self.msi_out is not None:
            self.msi_out.write_stats(force=True)

    def busy(self) -> bool:
        """True while the device cannot take another request: the rest stay
        in the channel (flow control; the vCPU waits when its ring fills)
        until a timer (next_deadline) finds it ready and calls
        runtime.serve_channels()."""
        return False

    def mirror_value(self) -> int | None:
        """The register the device type mirrors (`DeviceType.mirror_offset`),
        if a guest read of it now would have no side effect; else None."""
        return None

    # Time ------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When on_timer should run next (time.monotonic() seconds), or None."""
        return None

    def on_timer(self, now: float) -> None:
        pass

    def counters(self) -> dict:
        """Sent with each heartbeat (`bhive ps --json`)."""
        return {"msi_dropped": self.msi_out.dropped} if self.msi_out is not None else {}
