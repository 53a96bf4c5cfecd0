"""QEMU's firmware configuration device (fw_cfg), its I/O-port interface.

References: QEMU docs/specs/fw_cfg.rst; hw/nvram/fw_cfg.c (fw_cfg_select,
fw_cfg_read, the x86 "comb" port pair); include/standard-headers/linux/
qemu_fw_cfg.h for the keys and the file directory's layout.

A 16-bit write to the selector port (0x510) picks an item by key and
rewinds to its first byte; each byte read from the data port (0x511)
returns the next byte of the item, 0 past its end or for a key that holds
nothing.  Items are immutable blobs given at construction: the host builds
them from the VM's configuration (`machine_items`).  The write channel
(key bit 14) is gone from QEMU since 2.4; data-port writes are ignored, as
there.  There is no DMA interface: FW_CFG_ID says so (bit 1 clear) and the
DMA ports are not claimed.

Integers in items are little-endian, except the file directory's, which
are big-endian (fw_cfg.rst, "FW_CFG_FILE_DIR").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable

from bhive.actors.base import no_log
from bhive.actors.host import DeviceHost
from bhive.firmware import tables

PORT_BASE = 0x510  # QEMU's FW_CFG_IO_BASE on a PC

# Port offsets from PORT_BASE.
SELECTOR = 0  # 0x510: 16-bit write selects an item and rewinds it
DATA = 1  # 0x511: 8-bit read returns the selected item's next byte
PORT_COUNT = 2

# Item keys (qemu_fw_cfg.h)
FW_CFG_SIGNATURE = 0x00  # "QEMU"
FW_CFG_ID = 0x01  # u32 feature bitmap: bit 0 traditional interface, bit 1 DMA
FW_CFG_UUID = 0x02  # 16 bytes
FW_CFG_RAM_SIZE = 0x03  # u64: bytes of guest RAM
FW_CFG_NOGRAPHIC = 0x04  # u16
FW_CFG_NB_CPUS = 0x05  # u16: vCPUs present at boot
FW_CFG_MACHINE_ID = 0x06  # u32
FW_CFG_NUMA = 0x0D  # u64 node count, then u64 per CPU and per node
FW_CFG_BOOT_MENU = 0x0E  # u16
FW_CFG_MAX_CPUS = 0x0F  # u16: vCPUs the machine may ever have
FW_CFG_CMDLINE_SIZE = 0x15  # u32: kernel command line bytes, NUL included
FW_CFG_CMDLINE_DATA = 0x16  # the command line, NUL terminated
FW_CFG_FILE_DIR = 0x19  # u32 count (BE), then FwCfgFile entries
FW_CFG_FILE_FIRST = 0x20  # the first key given to a file
FW_CFG_WRITE_CHANNEL = 0x4000  # key bit: write access (obsolete)
FW_CFG_ARCH_LOCAL = 0x8000  # key bit: architecture-specific item
FW_CFG_ENTRY_MASK = 0x3FFF
FW_CFG_INVALID = 0xFFFF

ID_TRADITIONAL = 1 << 0  # selector/data ports
ID_DMA = 1 << 1  # the DMA interface (not provided)
SIGNATURE = b"QEMU"
FILE_NAME_SIZE = 56
FILE_ENTRY = struct.Struct(">IHH56s")  # size, select, reserved, name
UNMAPPED_READ = 0xFF


def file_dir(files: list[tuple[str, bytes]]) -> tuple[bytes, dict[int, bytes]]:
    """(the FW_CFG_FILE_DIR blob, {key: contents}) for named files, given
    keys from FW_CFG_FILE_FIRST in name order, as QEMU sorts them."""
    entries = b""
    items = {}
    for i, (name, contents) in enumerate(sorted(files)):
        raw = name.encode()
        if len(raw) >= FILE_NAME_SIZE:
            raise ValueError(f"fw_cfg file name {name!r} is longer than {FILE_NAME_SIZE - 1} bytes")
        key = FW_CFG_FILE_FIRST + i
        entries += FILE_ENTRY.pack(len(contents), key, 0, raw)
        items[key] = bytes(contents)
    return struct.pack(">I", len(files)) + entries, items


def machine_items(cpus: int, max_cpus: int, ram_size: int, cmdline: str = "",
                  files: list[tuple[str, bytes]] = ()) -> dict[int, bytes]:
    """The items of a PC machine: what QEMU's fw_cfg_arch_create and
    x86_load_linux put there, as far as they describe this VM."""
    directory, file_items = file_dir(list(files))
    cmd = cmdline.encode() + b"\0"
    items = {
        FW_CFG_SIGNATURE: SIGNATURE,
        FW_CFG_ID: struct.pack("<I", ID_TRADITIONAL),
        FW_CFG_UUID: bytes(16),
        FW_CFG_RAM_SIZE: struct.pack("<Q", ram_size),
        FW_CFG_NOGRAPHIC: struct.pack("<H", 1),
        FW_CFG_NB_CPUS: struct.pack("<H", cpus),
        FW_CFG_MACHINE_ID: struct.pack("<I", 0),
        FW_CFG_NUMA: bytes(8 * (1 + max_cpus)),    # no NUMA nodes
        FW_CFG_BOOT_MENU: struct.pack("<H", 0),
        FW_CFG_MAX_CPUS: struct.pack("<H", max_cpus),
        FW_CFG_CMDLINE_SIZE: struct.pack("<I", len(cmd)),
        FW_CFG_CMDLINE_DATA: cmd,
        FW_CFG_FILE_DIR: directory,
    }
    items.update(file_items)
    return items


@dataclass
class FwCfgRegisters:
    selector: int = FW_CFG_INVALID  # the selected key (FW_CFG_INVALID: none)
    offset: int = 0  # next byte of the item the data port returns


class FwCfg:
    """Wiring: items {key: bytes} (see machine_items), log(event, **fields)."""

    def __init__(self, items: dict[int, bytes], log: Callable[..., None] = no_log) -> None:
        self.items = dict(items)
        self.log = log
        self.regs = FwCfgRegisters()

    def read(self, offset: int, size: int) -> int:
        if offset == DATA and size == 1:
            return self._next_byte()
        # QEMU accepts only byte reads here (fw_cfg_comb_valid)
        self.log("fw_cfg_bad_read", offset=offset, size=size)
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == SELECTOR and size == 2:
            self._select(value & 0xFFFF)
        elif offset == DATA and size == 1:
            self.log("fw_cfg_data_write_ignored", selector=self.regs.selector, value=value)
        else:
            self.log("fw_cfg_bad_write", offset=offset, size=size, value=value)

    def _select(self, key: int) -> None:
        key &= FW_CFG_ARCH_LOCAL | FW_CFG_ENTRY_MASK     # the write-channel bit picks the same item
        self.regs.selector = key if key in self.items else FW_CFG_INVALID
        self.regs.offset = 0
        if self.regs.selector == FW_CFG_INVALID:
            self.log("fw_cfg_no_item", key=key)

    def _next_byte(self) -> int:
        item = self.items.get(self.regs.selector, b"")
        if self.regs.offset >= len(item):
            return 0
        value = item[self.regs.offset]
        self.regs.offset += 1
        return value

    def state(self) -> dict[str, Any]:
        return {"selector": self.regs.selector, "offset": self.regs.offset}

    @classmethod
    def from_state(cls, state: dict[str, Any], items: dict[int, bytes],
                   log: Callable[..., None] = no_log) -> "FwCfg":
        dev = cls(items, log)
        dev.regs = FwCfgRegisters(state["selector"], state["offset"])
        return dev


# --- the actor: the model hosted in its own process ---------------------------


def fw_cfg_items(cfg, vm) -> dict[int, bytes]:
    """What the VM's fw_cfg serves: its CPU count and RAM size, the
    command line, and the files etc/e820 (the memory map, as the Multiboot
    and PVH loaders describe it) and etc/boot-fail-wait (QEMU's default,
    -1: never reboot)."""
    e820 = b"".join(e.pack() for e in tables.e820(vm.memory))
    files = [("etc/e820", e820), ("etc/boot-fail-wait", struct.pack("<i", -1))]
    return machine_items(cpus=vm.cpus, max_cpus=cfg.options["max_cpus"] or vm.cpus,
                         ram_size=vm.memory, cmdline=vm.append, files=files)


class FwCfgHost(DeviceHost):
    """QEMU's fw_cfg at `port` (0x510) and port+1, serving `fw_cfg_items`."""

    def setup(self) -> None:
        self.items = fw_cfg_items(self.cfg, self.vm)

    def model_args(self) -> dict:
        return {"items": self.items, "log": self.log}
