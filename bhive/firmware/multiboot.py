"""Multiboot v1 (Multiboot Specification 0.6.96): the loader's pure part.

`plan()` takes the image bytes, the command line, the modules and the e820
map, and returns what to copy where and the boot CPU's state; nothing here
touches guest RAM or a CPU (bhive.loader does the copying).

The image is an ELF32 executable (its PT_LOADs go to their physical
addresses) or, when header flag bit 16 is set, anything at all described
by the header's address fields (the "a.out kludge", §3.1.3).  The layout
follows QEMU's loader (hw/i386/multiboot.c), which the test kernels we
want to run were written against:

    0x09000  the memory map (mmap_addr)
    0x09500  the Multiboot information structure (EBX)
    kernel end, page aligned:
             module list, then the command lines and the boot loader name,
             then each module on its own page-aligned address

A kernel that loads over 0x9000-0x9FFF (one linked at 0x8000, say) gets the
memory map and the information structure after its modules instead: the
information goes where the kernel is not.  Below 1 MiB, a segment may use
any RAM but the VGA window and the firmware tables the loader actually
wrote there (`reserved`): GNU ld's default `-z separate-code` puts the ELF
headers in a read-only segment just below a kernel linked at 1 MiB, and
QEMU loads those.

The kernel's command line is "KERNEL-PATH APPEND", as QEMU and GRUB pass
it (argv[0] first); a module's is the string it was given by (path and
arguments).  Entry (§3.2): 32-bit protected mode, paging off, EAX =
0x2BADB002, EBX = the information structure.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..accel.base import SegDesc, VmReg
from ..linux.elf import EM_386, ElfError, parse_elf
from . import entry32

HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
HEADER_SEARCH = 8192            # the header lies in the first 8 KiB, 4-byte aligned
HEADER_ALIGN = 4

# Header flags (§3.1.2)
MB_PAGE_ALIGN = 1 << 0          # modules on page boundaries
MB_MEMORY_INFO = 1 << 1         # mem_* and mmap_* wanted
MB_VIDEO_MODE = 1 << 2          # a video mode wanted (we have none: ignored, as QEMU does)
MB_AOUT_KLUDGE = 1 << 16        # the address fields are valid: use them, not the ELF headers
MB_KNOWN_REQUIRED = MB_PAGE_ALIGN | MB_MEMORY_INFO | MB_VIDEO_MODE
MB_REQUIRED_MASK = 0xFFFF       # bits 0-15: the loader must fail on any it does not know

# Information structure flags and offsets (§3.3)
MBI_MEMORY = 1 << 0
MBI_BOOT_DEVICE = 1 << 1
MBI_CMDLINE = 1 << 2
MBI_MODS = 1 << 3
MBI_MMAP = 1 << 6
MBI_LOADER_NAME = 1 << 9

MBI_FLAGS = 0
MBI_MEM_LOWER = 4
MBI_MEM_UPPER = 8
MBI_BOOT_DEVICE_OFF = 12
MBI_CMDLINE_OFF = 16
MBI_MODS_COUNT = 20
MBI_MODS_ADDR = 24
MBI_MMAP_LENGTH = 44
MBI_MMAP_ADDR = 48
MBI_LOADER_NAME_OFF = 64
MBI_SIZE = 0x80                 # through the VBE fields (88 bytes) and the framebuffer ones

MB_MMAP_ADDR = 0x9000
MB_INFO_ADDR = 0x9500
MB_LOW_AREA = (0x9000, 0xA000)  # ours, unless a kernel segment overlaps it
VGA_WINDOW = (0xA0000, 0xC0000)  # legacy video memory: never RAM for a kernel
MMAP_ENTRY = struct.Struct("<IQQI")   # size (20: what follows), base, length, type
MOD_ENTRY = struct.Struct("<IIII")    # mod_start, mod_end, string, reserved
BOOT_DEVICE = 0x8000FFFF        # BIOS drive 0x80, no partition (QEMU's value)
LOADER_NAME = b"bhive\0"
PAGE = 4096
E820_RAM = 1


class MultibootError(ValueError):
    """An image the loader cannot boot; str() is one line."""


@dataclass(frozen=True)
class Header:
    offset: int                 # file offset of the magic
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


@dataclass
class Module:
    string: str                 # its command line: the path and any arguments
    data: bytes
    addr: int = 0


@dataclass
class Plan:
    segments: list[tuple[int, bytes]]       # (gpa, bytes) to copy, in order
    entry: int
    registers: dict[VmReg, int]
    descriptors: dict[VmReg, SegDesc]
    info_addr: int
    cmdline: str
    kernel_start: int
    kernel_end: int
    modules: list[Module] = field(default_factory=list)
    format: str = "elf"                      # "elf" or "aout-kludge"


def find_header(data: bytes) -> Header | None:
    """The Multiboot header: the first 4-byte aligned magic in the first
    8 KiB whose checksum is right.  A magic with a wrong checksum and no
    good header after it is an error (the image meant to be Multiboot)."""
    bad = None
    limit = min(len(data), HEADER_SEARCH)
    for off in range(0, limit - 11, HEADER_ALIGN):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic != HEADER_MAGIC:
            continue
        if (magic + flags + checksum) & 0xFFFFFFFF:
            bad = off if bad is None else bad
            continue
        if not flags & MB_AOUT_KLUDGE:
            return Header(off, flags)
        if off + 32 > len(data):
            raise MultibootError(f"Multiboot header at offset {off:#x}: the address fields are cut off "
                                 f"(truncated image)")
        return Header(off, flags, *struct.unpack_from("<5I", data, off + 12))
    if bad is not None:
        raise MultibootError(f"Multiboot header at offset {bad:#x}: checksum is wrong "
                             f"(magic + flags + checksum must be 0 mod 2^32)")
    return None


def has_header(data: bytes) -> bool:
    """A Multiboot magic in the first 8 KiB (right checksum or not)."""
    limit = min(len(data), HEADER_SEARCH)
    return any(struct.unpack_from("<I", data, off)[0] == HEADER_MAGIC
               for off in range(0, limit - 3, HEADER_ALIGN))


def _align(x: int, a: int = PAGE) -> int:
    return (x + a - 1) // a * a


def _overlaps(lo: int, hi: int, area: tuple[int, int]) -> bool:
    return lo < area[1] and area[0] < hi


def off_limits(reserved: list[tuple[int, int]]) -> list[tuple[tuple[int, int], str]]:
    """The areas no kernel segment may load over, whatever the boot
    protocol: the VGA window and each piece of firmware written below it."""
    return [(VGA_WINDOW, "the VGA window")] + [((gpa, gpa + size), "the firmware tables")
                                               for gpa, size in reserved]


def image_segments(data: bytes, hdr: Header) -> tuple[list[tuple[int, bytes]], int, str]:
    """(segments, entry, format) of the kernel image."""
    if hdr.flags & MB_AOUT_KLUDGE:
        if hdr.load_addr > hdr.header_addr:
            raise MultibootError(f"load_addr {hdr.load_addr:#x} is above header_addr {hdr.header_addr:#x}")
        start = hdr.offset - (hdr.header_addr - hdr.load_addr)
        if start < 0:
            raise MultibootError(f"header_addr - load_addr = {hdr.header_addr - hdr.load_addr:#x} reaches "
                                 f"before the start of the file")
        if hdr.load_end_addr:
            if hdr.load_end_addr < hdr.load_addr:
                raise MultibootError(f"load_end_addr {hdr.load_end_addr:#x} is below load_addr "
                                     f"{hdr.load_addr:#x}")
            size = hdr.load_end_addr - hdr.load_addr
            if start + size > len(data):
                raise MultibootError(f"load_end_addr {hdr.load_end_addr:#x} needs {start + size} bytes of "
                                     f"file; the image has {len(data)} (truncated)")
        else:
            size = len(data) - start
        body = data[start:start + size]
        if hdr.bss_end_addr:
            if hdr.bss_end_addr < hdr.load_addr + size:
                raise MultibootError(f"bss_end_addr {hdr.bss_end_addr:#x} is below the end of the loaded "
                                     f"image {hdr.load_addr + size:#x}")
            body += bytes(hdr.bss_end_addr - hdr.load_addr - size)
        return [(hdr.load_addr, body)], hdr.entry_addr, "aout-kludge"
    if data[:4] != b"\x7fELF":
        raise MultibootError("not an ELF image and header flag 16 (the a.out kludge's address fields) "
                             "is clear")
    if len(data) > 4 and data[4] == 2:
        raise MultibootError("an ELF64 image: Multiboot v1 loads ELF32 (or set the a.out kludge flag)")
    try:
        elf = parse_elf(data, machines=(EM_386,))
    except ElfError as exc:
        raise MultibootError(f"ELF: {exc}") from None
    segments = []
    entry = elf.entry
    for p in elf.loads:
        if p.memsz == 0:
            continue
        segments.append((p.paddr, data[p.offset:p.offset + p.filesz] + bytes(p.memsz - p.filesz)))
        # e_entry is virtual; a kernel linked high gives its physical twin (GRUB and QEMU do this)
        if p.vaddr <= elf.entry < p.vaddr + p.memsz:
            entry = elf.entry - p.vaddr + p.paddr
    return segments, entry, "elf"


def plan(data: bytes, *, low_end: int, e820: list, cmdline: str,
         modules: list[Module] = (), reserved: list[tuple[int, int]] = ()) -> Plan:
    """Everything to copy and the entry state.  `low_end` is the end of
    the RAM slot at 0; `e820` (E820Entry-like: addr, size, type) becomes
    the memory map and mem_lower/mem_upper; `reserved` lists the (gpa,
    size) pieces of firmware the kernel may not load over."""
    hdr = find_header(data)
    if hdr is None:
        raise MultibootError("no Multiboot header in the first 8 KiB")
    unknown = hdr.flags & MB_REQUIRED_MASK & ~MB_KNOWN_REQUIRED
    if unknown:
        raise MultibootError(f"header flags {hdr.flags:#x} require features this loader does not know "
                             f"({unknown:#x})")
    segments, entry, fmt = image_segments(data, hdr)
    if not segments:
        raise MultibootError("the image loads nothing")
    for gpa, body in segments:
        end = gpa + len(body)
        if end > low_end or gpa < 0:
            raise MultibootError(f"segment {gpa:#x}-{end:#x} is outside RAM (RAM below 4 GiB ends at "
                                 f"{low_end:#x})")
        for area, what in off_limits(reserved):
            if _overlaps(gpa, end, area):
                raise MultibootError(f"segment {gpa:#x}-{end:#x} overlaps {what} "
                                     f"{area[0]:#x}-{area[1]:#x}")
    if not any(gpa <= entry < gpa + len(body) for gpa, body in segments):
        raise MultibootError(f"entry point {entry:#x} is not inside the loaded image")
    kstart = min(gpa for gpa, _ in segments)
    kend = max(gpa + len(body) for gpa, body in segments)

    # After the kernel: module list, strings, then the modules.
    modules = [Module(m.string, bytes(m.data)) for m in modules]
    base = _align(kend)
    mods_addr = base
    strings = bytearray()
    def string(s: bytes) -> int:
        addr = mods_addr + MOD_ENTRY.size * len(modules) + len(strings)
        strings.extend(s)
        return addr
    cmdline_addr = string(cmdline.encode() + b"\0")
    mod_strings = [string(m.string.encode() + b"\0") for m in modules]
    loader_name = string(LOADER_NAME)
    pos = _align(mods_addr + MOD_ENTRY.size * len(modules) + len(strings))
    for m in modules:
        m.addr = pos
        pos = _align(pos + max(len(m.data), 1))
    if pos > low_end:
        raise MultibootError(f"the modules need RAM up to {pos:#x}; RAM below 4 GiB ends at {low_end:#x}")
    mod_table = b"".join(MOD_ENTRY.pack(m.addr, m.addr + len(m.data), s, 0)
                         for m, s in zip(modules, mod_strings))

    mmap = b"".join(MMAP_ENTRY.pack(MMAP_ENTRY.size - 4, e.addr, e.size, e.type) for e in e820)
    if MB_MMAP_ADDR + len(mmap) > MB_INFO_ADDR:
        raise MultibootError(f"{len(e820)} memory-map entries do not fit")
    mmap_addr, info_addr = MB_MMAP_ADDR, MB_INFO_ADDR
    if any(_overlaps(gpa, gpa + len(body), MB_LOW_AREA) for gpa, body in segments):
        mmap_addr = pos                                  # after the modules: where the kernel is not
        info_addr = _align(mmap_addr + len(mmap), 16)
        pos = _align(info_addr + MBI_SIZE)
        if pos > low_end:
            raise MultibootError(f"the boot information needs RAM up to {pos:#x}; RAM below 4 GiB "
                                 f"ends at {low_end:#x}")
    lower = next((e.size for e in e820 if e.addr == 0 and e.type == E820_RAM), 0)
    upper = next((e.size for e in e820 if e.addr == 0x100000 and e.type == E820_RAM), 0)

    mbi = bytearray(MBI_SIZE)
    struct.pack_into("<I", mbi, MBI_FLAGS, MBI_MEMORY | MBI_BOOT_DEVICE | MBI_CMDLINE | MBI_MODS | MBI_MMAP
                     | MBI_LOADER_NAME)
    struct.pack_into("<I", mbi, MBI_MEM_LOWER, lower // 1024)
    struct.pack_into("<I", mbi, MBI_MEM_UPPER, upper // 1024)
    struct.pack_into("<I", mbi, MBI_BOOT_DEVICE_OFF, BOOT_DEVICE)
    struct.pack_into("<I", mbi, MBI_CMDLINE_OFF, cmdline_addr)
    struct.pack_into("<I", mbi, MBI_MODS_COUNT, len(modules))
    struct.pack_into("<I", mbi, MBI_MODS_ADDR, mods_addr)
    struct.pack_into("<I", mbi, MBI_MMAP_LENGTH, len(mmap))
    struct.pack_into("<I", mbi, MBI_MMAP_ADDR, mmap_addr)
    struct.pack_into("<I", mbi, MBI_LOADER_NAME_OFF, loader_name)

    # The GDT first: a kernel loaded over it wins (GDTR is "undefined" at entry).
    out = [(entry32.GDT_ADDR, entry32.gdt())] + list(segments)
    out += [(mmap_addr, mmap), (info_addr, bytes(mbi)), (mods_addr, mod_table + bytes(strings))]
    out += [(m.addr, m.data) for m in modules if m.data]
    regs, descs = entry32.protected_mode_state(entry, {VmReg.RAX: BOOTLOADER_MAGIC,
                                                       VmReg.RBX: info_addr})
    return Plan(out, entry, regs, descs, info_addr, cmdline, kstart, kend, modules, fmt)
