"""Entry point of every device actor process.

    python -m bhive.devices_worker RUN_DIR ACTOR

Reads the VM's validated config from the run directory, builds the device
named ACTOR through its `HostedDevice` glue below, and runs it on the
shared actor runtime.  One process per device: a crash or a `bhive kill`
takes out that device alone, and the supervisor restarts it from the state
it committed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import zmq

from . import config as config_mod
from .actors.debug_exit import DebugExit
from .actors.runtime import ActorRuntime, HostedDevice
from .actors.uart import Serial16550
from .bus import schema
from .bus.schema import IrqLineLevel, VmEvent
from .bus.shm import ConsoleRing
from .rundir import RunDir


class BusIrqLine:
    """An IRQ line that reaches the interrupt-controller actors as messages.

    Sending never blocks: a controller that is down misses the message, and
    the level is sent again when it changes or when this actor restarts.
    """

    def __init__(self, runtime: ActorRuntime, line: int, controllers: list[str]):
        self.runtime = runtime
        self.line = line
        self.level = False
        self.sockets = []
        for role in controllers:
            sock = runtime.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 1000)
            sock.connect(runtime.rundir.endpoint(role))
            self.sockets.append(sock)

    def set_level(self, asserted: bool) -> None:
        asserted = bool(asserted)
        if asserted == self.level:
            return
        self.level = asserted
        self.resend()

    def resend(self) -> None:
        raw = schema.encode(IrqLineLevel(self.runtime.role, self.line, self.level))
        for sock in self.sockets:
            try:
                sock.send(raw, zmq.NOBLOCK)
            except zmq.Again:
                self.runtime.log("irq-dropped", line=self.line, level=self.level)


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

    def pio(self, port, size, is_write, data):
        if self.tx_blocked and self.ring.space(self.written) > 0:
            self.tx_blocked = False
            self.model.tx_drained()
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


HOSTS = {
    "uart": UartHost,
    "debug_exit": DebugExitHost,
}

INTERRUPT_CONTROLLER_TYPES = ("ioapic", "pic")


def interrupt_controllers(vm: config_mod.VmConfig) -> list[str]:
    return [d.name for d in vm.devices.values() if d.type in INTERRUPT_CONTROLLER_TYPES]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m bhive.devices_worker RUN_DIR ACTOR", file=sys.stderr)
        return 2
    run_path, role = Path(argv[0]), argv[1]
    rundir = RunDir(run_path.name, run_path.parent)
    vm = config_mod.from_json(rundir.read_json("supervisor.json")["config"])
    dev_cfg = vm.devices[role]
    host_cls = HOSTS[dev_cfg.type]
    runtime = ActorRuntime(rundir, role)
    return runtime.run(lambda rt: host_cls(rt, dev_cfg, vm))


if __name__ == "__main__":
    sys.exit(main())
