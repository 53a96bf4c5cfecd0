"""PVH boot (Xen's docs/misc/pvh.pandoc, xen/include/public/arch-x86/hvm/
start_info.h): the loader's pure part.

A PVH kernel is an ELF (32- or 64-bit) carrying the note
XEN_ELFNOTE_PHYS32_ENTRY: the physical address of its 32-bit entry.  Its
PT_LOADs go to their physical addresses; the CPU enters in 32-bit
protected mode with paging off and EBX = the physical address of an
`hvm_start_info` (version 1: command line, modules, RSDP and the memory
map).  Linux's vmlinux has this entry with CONFIG_PVH.

Layout (below 1 MiB, like QEMU's PVH option ROM):

    0x06000  hvm_start_info, then the module list and the memory map
    0x20000  the command line
    the modules: page aligned, as high in RAM below 4 GiB as they fit
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..accel.base import SegDesc, VmReg
from ..linux.elf import ElfError, Vmlinux, parse_elf
from . import entry32
from .multiboot import Module, off_limits

START_INFO_MAGIC = 0x336EC578
START_INFO_VERSION = 1
# magic, version, flags, nr_modules, modlist_paddr, cmdline_paddr, rsdp_paddr,
# memmap_paddr, memmap_entries, reserved
START_INFO = struct.Struct("<IIIIQQQQII")
MODLIST_ENTRY = struct.Struct("<QQQQ")       # paddr, size, cmdline_paddr, reserved
MEMMAP_ENTRY = struct.Struct("<QQII")        # addr, size, type, reserved

START_INFO_ADDR = 0x6000
INFO_AREA = (0x6000, 0x8000)
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 0x10000
PAGE = 4096


class PvhError(ValueError):
    """An image the loader cannot boot; str() is one line."""


@dataclass
class Plan:
    segments: list[tuple[int, bytes]]
    entry: int
    registers: dict[VmReg, int]
    descriptors: dict[VmReg, SegDesc]
    start_info_addr: int
    kernel_start: int
    kernel_end: int
    modules: list[Module] = field(default_factory=list)


def pvh_entry(data: bytes) -> int | None:
    """The PVH entry of an ELF image, or None (not an ELF, or no note)."""
    if data[:4] != b"\x7fELF":
        return None
    try:
        return parse_elf(data).pvh_entry
    except ElfError:
        return None


def plan(data: bytes, *, low_end: int, e820: list, cmdline: str, modules: list[Module] = (),
         rsdp: int = 0, reserved: list[tuple[int, int]] = ()) -> Plan:
    """Everything to copy and the entry state (see multiboot.plan for
    `low_end`, `e820` and `reserved`)."""
    try:
        elf: Vmlinux = parse_elf(data)
    except ElfError as exc:
        raise PvhError(f"ELF: {exc}") from None
    entry = elf.pvh_entry
    if entry is None:
        raise PvhError("no XEN_ELFNOTE_PHYS32_ENTRY note: not a PVH kernel")
    segments = []
    for p in elf.loads:
        if p.memsz == 0:
            continue
        end = p.paddr + p.memsz
        if end > low_end:
            raise PvhError(f"segment {p.paddr:#x}-{end:#x} is outside RAM (RAM below 4 GiB ends at "
                           f"{low_end:#x})")
        areas = [(INFO_AREA, "the start-info area"),
                 ((CMDLINE_ADDR, CMDLINE_ADDR + CMDLINE_MAX), "the command-line area")]
        for area, what in areas + off_limits(reserved):
            if p.paddr < area[1] and area[0] < end:
                raise PvhError(f"segment {p.paddr:#x}-{end:#x} overlaps {what} {area[0]:#x}-{area[1]:#x}")
        segments.append((p.paddr, data[p.offset:p.offset + p.filesz] + bytes(p.memsz - p.filesz)))
    if not any(gpa <= entry < gpa + len(body) for gpa, body in segments):
        raise PvhError(f"PVH entry {entry:#x} is not inside the loaded image")
    kstart = min(gpa for gpa, _ in segments)
    kend = max(gpa + len(body) for gpa, body in segments)

    cmd = cmdline.encode() + b"\0"
    if len(cmd) > CMDLINE_MAX:
        raise PvhError(f"command line of {len(cmd)} bytes is too long")
    strings = bytearray(cmd)
    # Modules: highest first, below the end of low RAM, each page aligned.
    modules = [Module(m.string, bytes(m.data)) for m in modules]
    top = low_end
    for m in modules:
        m.addr = (top - len(m.data)) & ~(PAGE - 1)
        top = m.addr
    if modules and top < (kend + PAGE - 1) // PAGE * PAGE:
        raise PvhError(f"the modules do not fit between the kernel's end {kend:#x} and {low_end:#x}")
    mod_cmdlines = []
    for m in modules:
        mod_cmdlines.append(CMDLINE_ADDR + len(strings))
        strings += m.string.encode() + b"\0"
    if len(strings) > CMDLINE_MAX:
        raise PvhError("the command lines are too long")
    modlist_addr = START_INFO_ADDR + START_INFO.size
    modlist = b"".join(MODLIST_ENTRY.pack(m.addr, len(m.data), c, 0) for m, c in zip(modules, mod_cmdlines))
    memmap_addr = (modlist_addr + len(modlist) + 7) & ~7
    memmap = b"".join(MEMMAP_ENTRY.pack(e.addr, e.size, e.type, 0) for e in e820)
    if memmap_addr + len(memmap) > INFO_AREA[1]:
        raise PvhError("too many modules or memory-map entries for the start-info area")
    info = START_INFO.pack(START_INFO_MAGIC, START_INFO_VERSION, 0, len(modules),
                           modlist_addr if modules else 0, CMDLINE_ADDR, rsdp, memmap_addr, len(e820), 0)
    out = [(entry32.GDT_ADDR, entry32.gdt())] + list(segments)      # a kernel over the GDT wins
    out += [(START_INFO_ADDR, info), (modlist_addr, modlist),
            (memmap_addr, memmap), (CMDLINE_ADDR, bytes(strings))]
    out += [(m.addr, m.data) for m in modules if m.data]
    regs, descs = entry32.protected_mode_state(entry, {VmReg.RBX: START_INFO_ADDR}, tss_limit=0x67)
    return Plan(out, entry, regs, descs, START_INFO_ADDR, kstart, kend, modules)
