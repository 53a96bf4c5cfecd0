"""The device registry and the hosts it names: a device is its model file
and one registry entry; a host without glue of its own dispatches port and
MMIO accesses to its model at the offset from its base, and commits and
restores the model's state."""

from __future__ import annotations

import inspect

from bhive import config as config_mod
from bhive.actors.host import DeviceHost
from bhive.bus.schema import VmEvent
from bhive.devices import DEVICE_TYPES, DeviceType, Option

from support import REPO


class ScratchRegisters:
    """A toy device: four byte registers, and what it was asked."""

    def __init__(self, log=None) -> None:
        self.regs = [0] * 4
        self.log = log

    def read(self, offset: int, size: int) -> int:
        return self.regs[offset]

    def write(self, offset: int, size: int, value: int) -> None:
        self.regs[offset] = value & 0xFF

    def state(self) -> dict:
        return {"regs": list(self.regs)}

    @classmethod
    def from_state(cls, state: dict, log=None) -> "ScratchRegisters":
        dev = cls(log)
        dev.regs = list(state["regs"])
        return dev


SCRATCH = DeviceType("scratch", ScratchRegisters, DeviceHost, 4, {"port": Option(int, 0x300)})


def test_every_entry_names_a_model_and_its_host_from_the_same_file():
    for name, dtype in DEVICE_TYPES.items():
        assert dtype.name == name
        assert issubclass(dtype.host, DeviceHost), name
        assert dtype.host.__module__ == dtype.model.__module__, name   # one device, one place
        assert dtype.model.__module__ == f"bhive.actors.{name}", name
        for method in ("state", "from_state"):      # read/write: the model or its port_target's
            assert callable(getattr(dtype.model, method, None)), (name, method)


def test_a_device_without_glue_is_served_at_the_offset_from_its_base(host_for):
    host = host_for(SCRATCH, {"port": 0x2F0})
    assert host.pio(0x2F2, 1, True, 0x1A5) == 0
    assert host.model.regs == [0, 0, 0xA5, 0]
    assert host.pio(0x2F2, 1, False, 0) == 0xA5
    # No MMIO window: an MMIO access is logged and reads all ones.
    assert host.mmio(0xFE000000, 2, False, 0) == 0xFFFF
    assert host.runtime.logged[-1][0] == "unexpected-mmio"


def test_the_committed_state_rebuilds_the_model(host_for):
    host = host_for(SCRATCH)
    host.pio(0x303, 1, True, 7)
    saved = host.state()
    again = host_for(SCRATCH)
    again.restore(saved)
    assert again.model is not host.model and again.pio(0x303, 1, False, 0) == 7


def test_debug_exit_glue_only_wires_the_model(host_for):
    """isa-debug-exit's host says what its model is given (the exit
    callback, the configured width); the dispatch is the default one."""
    dtype = DEVICE_TYPES["debug_exit"]
    assert "pio" not in vars(dtype.host) and "state" not in vars(dtype.host)
    host = host_for(dtype, {"port": 0x501, "iosize": 2})
    host.pio(0x501, 2, True, 0x10)
    assert host.runtime.events == [VmEvent("debug_exit", "exit", 0x21, "isa-debug-exit write")]


def test_fw_cfg_glue_serves_the_vms_items(host_for):
    vm = config_mod.load(REPO / "configs" / "platform.toml", {"cpus": 3})
    host = host_for(DEVICE_TYPES["fw_cfg"], vm.devices["fw_cfg"].options, vm)
    host.pio(0x510, 2, True, 0x0000)              # FW_CFG_SIGNATURE
    assert bytes(host.pio(0x511, 1, False, 0) for _ in range(4)) == b"QEMU"
    host.pio(0x510, 2, True, 0x0005)              # FW_CFG_NB_CPUS
    assert host.pio(0x511, 1, False, 0) == 3


def test_hosts_override_only_hooks_of_the_base():
    hooks = {name for name, _ in inspect.getmembers(DeviceHost, inspect.isfunction)}
    for dtype in DEVICE_TYPES.values():
        public = {name for name in vars(dtype.host) if not name.startswith("_")}
        assert public <= hooks | {"setup"}, (dtype.name, public - hooks)
