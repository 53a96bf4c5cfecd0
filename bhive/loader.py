"""Puts a guest image into RAM and says where the boot CPU starts.

The supervisor calls `load()` once, before any vCPU runs; the boot vCPU's
process applies the returned `BootState` with vm_set_register/vm_set_desc.
APs start in wait-for-SIPI, as on real hardware.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .accel.base import SegDesc, VmReg
from .config import ConfigError, VmConfig
from .firmware.tables import FIRMWARE_BASE, FIRMWARE_SIZE, RSDP_ADDR as FIRMWARE_RSDP

# VMX access rights of a real-mode segment: present, accessed, read/write
# data (0x93) or execute/read code (0x9B); SDM Vol. 3 §24.4.1.
REAL_MODE_DATA = 0x93
REAL_MODE_CODE = 0x9B

LOW_MEMORY_TOP = 0xC000_0000     # RAM above this is remapped above 4 GiB
HIGH_MEMORY_BASE = 0x1_0000_0000


@dataclass
class BootState:
    registers: dict[int, int] = field(default_factory=dict)
    descriptors: dict[int, SegDesc] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"registers": {str(k): v for k, v in self.registers.items()},
                "descriptors": {str(k): [d.base, d.limit, d.access, d.selector]
                                for k, d in self.descriptors.items()}}

    @classmethod
    def from_json(cls, data: dict) -> "BootState":
        return cls({int(k): v for k, v in data["registers"].items()},
                   {int(k): SegDesc(*v) for k, v in data["descriptors"].items()})


def ram_slots(memory: int) -> list[tuple[int, int, int]]:
    """Guest-physical slots (gpa, size, offset) of `memory` bytes of RAM,
    leaving 3-4 GiB free for MMIO (local APIC, IOAPIC, PCI) like a PC."""
    low = min(memory, LOW_MEMORY_TOP)
    slots = [(0, low, 0)]
    if memory > low:
        slots.append((HIGH_MEMORY_BASE, memory - low, low))
    return slots


def image_bytes(cfg: VmConfig) -> bytes:
    """The image, assembled first if the config names a nasm source."""
    if cfg.boot_kind == "flat" and cfg.image.suffix == ".asm":
        from .guestbuild import GuestBuildError, build_nasm   # here: vCPU processes import this module
        try:
            return build_nasm(cfg.image).read_bytes()
        except GuestBuildError as exc:
            raise ConfigError(f"[boot] image: {exc}") from None
    return cfg.image.read_bytes()


def real_mode_state(entry: int) -> BootState:
    segment, offset = (entry >> 4) & 0xF000, entry & 0xFFFF
    state = BootState()
    for reg in (VmReg.DS, VmReg.ES, VmReg.SS, VmReg.FS, VmReg.GS):
        state.descriptors[reg] = SegDesc(0, 0xFFFF, REAL_MODE_DATA, 0)
    state.descriptors[VmReg.CS] = SegDesc(segment << 4, 0xFFFF, REAL_MODE_CODE, segment)
    state.registers[VmReg.RIP] = offset
    state.registers[VmReg.RFLAGS] = 0x2
    state.registers[VmReg.RSP] = 0x7000
    return state


def kernel_format(data: bytes) -> str:
    """What a --kernel image is, from its bytes, in QEMU's order: "linux"
    (a bzImage: "HdrS" at 0x202, boot.rst), "multiboot" (the magic
    0x1BADB002 in the first 8 KiB, Multiboot 0.6.96 §3.1.1), "pvh" (an
    ELF with the XEN_ELFNOTE_PHYS32_ENTRY note), else "unknown"."""
    from .firmware import multiboot, pvh
    from .linux.bzimage import HDRS_MAGIC
    if len(data) >= 0x206 and struct.unpack_from("<I", data, 0x202)[0] == HDRS_MAGIC:
        return "linux"
    if multiboot.has_header(data):
        return "multiboot"
    if pvh.pvh_entry(data) is not None:
        return "pvh"
    return "unknown"


def load_kernel(cfg: VmConfig, data: bytes, ram: memoryview) -> BootState:
    fmt = kernel_format(data)
    if fmt == "linux":
        return load_linux(cfg, data, ram)
    if fmt in ("multiboot", "pvh"):
        return load_bare(cfg, data, ram, fmt)
    raise ConfigError(f"[boot] kernel: {cfg.kernel}: not a Linux bzImage, a Multiboot image or a PVH ELF")


def modules(cfg: VmConfig) -> list:
    """The --initrd files as Multiboot/PVH modules: (string, bytes), the
    string being the path as given plus any arguments after it."""
    from .firmware.multiboot import Module
    out = []
    for i, path in enumerate(cfg.initrd):
        args = cfg.initrd_args[i] if i < len(cfg.initrd_args) else ""
        out.append(Module(f"{path} {args}".rstrip(), path.read_bytes()))
    return out


def copy_segments(ram: memoryview, segments: list[tuple[int, bytes]], memory: int) -> None:
    """Write (gpa, bytes) pieces into the RAM mapping, through ram_slots."""
    slots = ram_slots(memory)
    for gpa, body in segments:
        for sgpa, ssize, soff in slots:
            if sgpa <= gpa and gpa + len(body) <= sgpa + ssize:
                ram[soff + gpa - sgpa:soff + gpa - sgpa + len(body)] = body
                break
        else:
            raise ConfigError(f"[boot] kernel: {len(body)} bytes at {gpa:#x} are not inside guest RAM")


def load_bare(cfg: VmConfig, data: bytes, ram: memoryview, fmt: str) -> BootState:
    """A Multiboot or PVH kernel: the BIOS data of a PC (IVT, BDA), the
    ACPI/MP tables, the image, its boot information; entered in 32-bit
    protected mode."""
    from .firmware import multiboot, pvh, tables
    low_end = min(cfg.memory, LOW_MEMORY_TOP)
    e820 = tables.e820(cfg.memory)
    place_bios(cfg, ram)
    firmware = place_firmware(cfg, ram)
    rsdp = FIRMWARE_RSDP if firmware else 0
    try:
        mods = modules(cfg)
        if fmt == "multiboot":
            plan = multiboot.plan(data, low_end=low_end, e820=e820, cmdline=f"{cfg.kernel} {cfg.append}",
                                  modules=mods, reserved=firmware)
        else:
            plan = pvh.plan(data, low_end=low_end, e820=e820, cmdline=cfg.append, modules=mods, rsdp=rsdp,
                            reserved=firmware)
    except (multiboot.MultibootError, pvh.PvhError) as exc:
        raise ConfigError(f"[boot] kernel: {cfg.kernel}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"[boot] initrd: {exc}") from None
    copy_segments(ram, plan.segments, cfg.memory)
    return BootState(dict(plan.registers), dict(plan.descriptors))


def place_bios(cfg: VmConfig, ram: memoryview) -> None:
    """The real-mode IVT and BIOS data area (bhive.firmware.bios)."""
    from .firmware import bios
    com = sorted(d.options["port"] for d in cfg.devices.values() if d.type == "uart")
    for gpa, blob in bios.build(com):
        ram[gpa:gpa + len(blob)] = blob


def load_linux(cfg: VmConfig, data: bytes, ram: memoryview) -> BootState:
    """A bzImage: payload decompressed here (or found in the cache), vmlinux entered at startup_64
    (the 64-bit boot protocol), ACPI tables in the BIOS area."""
    from . import linux
    if len(cfg.initrd) > 1:
        raise ConfigError("[boot] initrd: Linux takes one initrd, not a list")
    if any(cfg.initrd_args):
        raise ConfigError("[boot] initrd: arguments after the path are for Multiboot/PVH modules, not Linux")
    firmware = place_firmware(cfg, ram)
    rsdp = next((gpa for gpa, _ in firmware if gpa == FIRMWARE_RSDP), 0)
    try:
        image = linux.parse_bzimage(data)
        initrd = cfg.initrd[0].read_bytes() if cfg.initrd else b""
        vmlinux = linux.parse_vmlinux(linux.cached_vmlinux(image))   # decompressed once per kernel
        plan = linux.plan_load(image, cfg.memory, cfg.append, initrd, acpi_rsdp_addr=rsdp, vmlinux=vmlinux,
                               reserved=[(FIRMWARE_BASE, FIRMWARE_SIZE)] if firmware else [])
        plan.copy_into(ram, ram_slots(cfg.memory))
    except (linux.BzImageError, linux.ElfError, ValueError) as exc:
        raise ConfigError(f"[boot] kernel: {cfg.kernel}: {exc}") from None
    return BootState(dict(plan.registers), dict(plan.descriptors))


def place_firmware(cfg: VmConfig, ram: memoryview) -> list[tuple[int, int]]:
    """ACPI and MP tables for a VM with an IOAPIC; returns the (gpa, size) written."""
    from .firmware import tables
    ioapics = [d for d in cfg.devices.values() if d.type == "ioapic"]
    if not ioapics:
        return []
    pm = [d for d in cfg.devices.values() if d.type == "acpi_pm"]
    plat = tables.Platform(cpus=cfg.cpus, ioapic_addr=ioapics[0].options["mmio"],
                           ioapic_id=ioapics[0].options["id"],
                           pm_base=pm[0].options["port"] if pm else 0x600,
                           reset_via_i8042=any(d.type == "i8042" for d in cfg.devices.values()),
                           pci=any(d.type == "pci" for d in cfg.devices.values()))
    written = []
    for gpa, blob in tables.build(plat):
        ram[gpa:gpa + len(blob)] = blob
        written.append((gpa, len(blob)))
    return written


def load(cfg: VmConfig, ram: memoryview) -> BootState:
    """Copy the image into `ram` (the whole shared RAM mapping)."""
    data = image_bytes(cfg)
    if cfg.boot_kind == "kernel":
        return load_kernel(cfg, data, ram)
    if cfg.boot_kind == "flat":
        end = cfg.load_address + len(data)
        if end > min(cfg.memory, LOW_MEMORY_TOP):
            raise ConfigError(f"[boot] image: {len(data)} bytes at {cfg.load_address:#x} do not fit in RAM")
        place_bios(cfg, ram)
        place_firmware(cfg, ram)
        ram[cfg.load_address:end] = data
        return real_mode_state(cfg.entry)
    raise ConfigError(f"[boot] kind: {cfg.boot_kind!r} is not supported")
