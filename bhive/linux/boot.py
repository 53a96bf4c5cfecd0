"""The 64-bit Linux boot protocol: boot_params, e820, page tables, GDT,
and the initial CPU state (Documentation/arch/x86/boot.rst, "64-bit BOOT
PROTOCOL"; Documentation/arch/x86/zero-page.rst).

Guest-physical layout the plan uses (all below 1 MiB is reserved by Linux
anyway; the e820 table marks it usable except the EBDA/BIOS areas):

    0x00500  GDT: null, null, __BOOT_CS (0x10, 64-bit code), __BOOT_DS (0x18)
    0x07000  boot_params (the "zero page", 4 KiB)
    0x08ff0  initial stack top (the kernel switches to its own at once)
    0x09000  PML4; 0x0a000 PDPT; 0x0b000-0x0efff four page directories:
             2 MiB pages identity-mapping the first 4 GiB
    0x20000  kernel command line (up to cmdline_size bytes)
    0x9fc00  EBDA (reserved) ... 0xa0000-0xfffff legacy hole / BIOS (reserved)
    pref_address (16 MiB)  the kernel: vmlinux PT_LOADs at their physical
             addresses ("vmlinux" mode) or the bzImage's protected-mode
             part ("bzimage" mode, entry = load address + 0x200)
    below min(initrd_addr_max, end of low RAM): the initrd, page aligned
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..accel.base import SegDesc, VmReg
from .bzimage import (CAN_USE_HEAP, HDR_OFFSET, LOADED_HIGH, XLF_KERNEL_64, BzImage, BzImageError,
                      compression)
from .elf import Vmlinux, parse_vmlinux

GDT_ADDR = 0x500
BOOT_PARAMS_ADDR = 0x7000
STACK_TOP = 0x8FF0
PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000               # four pages
CMDLINE_ADDR = 0x20000
EBDA_START = 0x9FC00
HIGH_MEMORY_START = 0x100000

BOOT_CS = 0x10
BOOT_DS = 0x18

# Same split as bhive.loader.ram_slots: RAM above 3 GiB is remapped to 4 GiB.
LOW_MEMORY_TOP = 0xC000_0000
HIGH_MEMORY_BASE = 0x1_0000_0000

E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4
E820_MAX_ENTRIES_ZEROPAGE = 128

# boot_params offsets (zero-page.rst) outside the setup header
BP_ACPI_RSDP_ADDR = 0x070
BP_EXT_RAMDISK_IMAGE = 0x0C0
BP_EXT_RAMDISK_SIZE = 0x0C4
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_E820_ENTRIES = 0x1E8
BP_SENTINEL = 0x1EF
BP_HDR = HDR_OFFSET
BP_E820_TABLE = 0x2D0
# setup header fields the loader writes (boot.rst)
BP_TYPE_OF_LOADER = 0x210
BP_LOADFLAGS = 0x211
BP_RAMDISK_IMAGE = 0x218
BP_RAMDISK_SIZE = 0x21C
BP_HEAP_END_PTR = 0x224
BP_CMD_LINE_PTR = 0x228

# VMX access rights (SDM Vol. 3 §24.4.1): type | S<<4 | DPL<<5 | P<<7 |
# AVL<<12 | L<<13 | D/B<<14 | G<<15 | unusable<<16
AR_CODE64 = 0xB | 0x10 | 0x80 | 0x2000 | 0x8000          # 0xA09B
AR_DATA = 0x3 | 0x10 | 0x80 | 0x4000 | 0x8000             # 0xC093
AR_TSS64_BUSY = 0xB | 0x80                                # 0x008B
AR_LDT_UNUSABLE = 0x10000 | 0x82

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_PG = 1, 2, 0x10, 0x20, 0x8000_0000
CR4_PAE = 0x20
EFER_LME, EFER_LMA = 0x100, 0x400


@dataclass(frozen=True)
class E820Entry:
    addr: int
    size: int
    type: int

    def pack(self) -> bytes:
        return struct.pack("<QQI", self.addr, self.size, self.type)


def default_ram_slots(memory: int) -> list[tuple[int, int]]:
    low = min(memory, LOW_MEMORY_TOP)
    slots = [(0, low)]
    if memory > low:
        slots.append((HIGH_MEMORY_BASE, memory - low))
    return slots


def e820_table(ram: list[tuple[int, int]], reserved: list[tuple[int, int]] = ()) -> list[E820Entry]:
    """The e820 map of RAM slots (gpa, size): the slot at 0 is split
    around the EBDA and the 640K-1M hole; `reserved` (gpa, size) ranges,
    e.g. ACPI tables, are added as reserved and cut out of RAM."""
    out: list[E820Entry] = []
    for gpa, size in sorted(ram):
        if gpa == 0:
            if size < HIGH_MEMORY_START + 0x100000:
                raise ValueError(f"{size:#x} bytes of low RAM: too little for Linux")
            out.append(E820Entry(0, EBDA_START, E820_RAM))
            out.append(E820Entry(EBDA_START, 0xA0000 - EBDA_START, E820_RESERVED))
            out.append(E820Entry(0xF0000, 0x10000, E820_RESERVED))
            out.append(E820Entry(HIGH_MEMORY_START, size - HIGH_MEMORY_START, E820_RAM))
        else:
            out.append(E820Entry(gpa, size, E820_RAM))
    for rgpa, rsize in reserved:
        cut: list[E820Entry] = []
        for e in out:
            lo, hi = e.addr, e.addr + e.size
            if rgpa >= hi or rgpa + rsize <= lo:
                cut.append(e)
                continue
            if e.type != E820_RAM:
                if not (rgpa <= lo and hi <= rgpa + rsize):
                    cut.append(e)       # (a reserved entry inside the new one goes: no overlaps)
                continue
            if lo < rgpa:
                cut.append(E820Entry(lo, rgpa - lo, E820_RAM))
            if rgpa + rsize < hi:
                cut.append(E820Entry(rgpa + rsize, hi - rgpa - rsize, E820_RAM))
        out = cut + [E820Entry(rgpa, rsize, E820_RESERVED)]
    out.sort(key=lambda e: e.addr)
    if len(out) > E820_MAX_ENTRIES_ZEROPAGE:
        raise ValueError("too many e820 entries for the zero page")
    return out


def boot_params(image: BzImage, *, cmdline_addr: int, cmdline_len: int, initrd_addr: int = 0,
                initrd_size: int = 0, e820: list[E820Entry], acpi_rsdp_addr: int = 0) -> bytes:
    """The 4 KiB zero page: the image's setup header, then the fields a
    boot loader fills in (boot.rst "64-bit BOOT PROTOCOL")."""
    h = image.header
    if cmdline_len + 1 > (h.cmdline_size or 255):
        raise BzImageError(f"command line of {cmdline_len} bytes > cmdline_size {h.cmdline_size - 1}")
    bp = bytearray(4096)
    hdr = image.header_bytes
    bp[BP_HDR:BP_HDR + len(hdr)] = hdr
    bp[BP_TYPE_OF_LOADER] = 0xFF                       # "undefined" boot loader
    bp[BP_LOADFLAGS] = (h.loadflags | LOADED_HIGH | CAN_USE_HEAP) & 0xFF
    struct.pack_into("<H", bp, BP_HEAP_END_PTR, 0xFE00)
    struct.pack_into("<I", bp, BP_CMD_LINE_PTR, cmdline_addr & 0xFFFFFFFF)
    struct.pack_into("<I", bp, BP_EXT_CMD_LINE_PTR, cmdline_addr >> 32)
    struct.pack_into("<I", bp, BP_RAMDISK_IMAGE, initrd_addr & 0xFFFFFFFF)
    struct.pack_into("<I", bp, BP_RAMDISK_SIZE, initrd_size & 0xFFFFFFFF)
    struct.pack_into("<I", bp, BP_EXT_RAMDISK_IMAGE, initrd_addr >> 32)
    struct.pack_into("<I", bp, BP_EXT_RAMDISK_SIZE, initrd_size >> 32)
    struct.pack_into("<Q", bp, BP_ACPI_RSDP_ADDR, acpi_rsdp_addr)
    bp[BP_E820_ENTRIES] = len(e820)
    for i, e in enumerate(e820):
        bp[BP_E820_TABLE + 20 * i:BP_E820_TABLE + 20 * (i + 1)] = e.pack()
    return bytes(bp)


def page_tables() -> bytes:
    """PML4, PDPT and four page directories (6 pages, to be placed at
    PML4_ADDR) identity-mapping 0-4 GiB with 2 MiB pages, present+RW."""
    pml4 = struct.pack("<Q", PDPT_ADDR | 0x3).ljust(4096, b"\0")
    pdpt = b"".join(struct.pack("<Q", (PD_ADDR + i * 4096) | 0x3) for i in range(4)).ljust(4096, b"\0")
    pds = b"".join(struct.pack("<Q", (i << 21) | 0x83) for i in range(2048))
    assert PDPT_ADDR == PML4_ADDR + 4096 and PD_ADDR == PDPT_ADDR + 4096
    return pml4 + pdpt + pds


def gdt() -> bytes:
    """null, null, __BOOT_CS (flat 64-bit code), __BOOT_DS (flat data)."""
    return struct.pack("<4Q", 0, 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF)


def cpu_state(entry: int) -> tuple[dict[VmReg, int], dict[VmReg, SegDesc]]:
    """Registers and segments for the 64-bit entry: long mode, paging on
    with our identity map, CS=__BOOT_CS, the rest __BOOT_DS, interrupts
    off, rsi = boot_params."""
    regs = {r: 0 for r in (VmReg.RAX, VmReg.RBX, VmReg.RCX, VmReg.RDX, VmReg.RDI, VmReg.RBP,
                           VmReg.R8, VmReg.R9, VmReg.R10, VmReg.R11, VmReg.R12, VmReg.R13,
                           VmReg.R14, VmReg.R15)}
    regs.update({
        VmReg.RIP: entry,
        VmReg.RSI: BOOT_PARAMS_ADDR,
        VmReg.RSP: STACK_TOP,
        VmReg.RFLAGS: 0x2,                   # IF clear
        VmReg.CR0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG,
        VmReg.CR3: PML4_ADDR,
        VmReg.CR4: CR4_PAE,
        VmReg.EFER: EFER_LME | EFER_LMA,
    })
    code = SegDesc(0, 0xFFFFFFFF, AR_CODE64, BOOT_CS)
    data = SegDesc(0, 0xFFFFFFFF, AR_DATA, BOOT_DS)
    descs = {VmReg.CS: code, VmReg.DS: data, VmReg.ES: data, VmReg.SS: data, VmReg.FS: data,
             VmReg.GS: data,
             VmReg.TR: SegDesc(0, 0xFFFF, AR_TSS64_BUSY, 0),
             VmReg.LDTR: SegDesc(0, 0, AR_LDT_UNUSABLE, 0),
             VmReg.GDTR: SegDesc(GDT_ADDR, len(gdt()) - 1, 0, 0),
             VmReg.IDTR: SegDesc(0, 0, 0, 0)}
    return regs, descs


@dataclass
class LoadPlan:
    mode: str                                   # "vmlinux" or "bzimage"
    segments: list[tuple[int, bytes]]           # (gpa, bytes) to copy, in order
    boot_params_addr: int
    entry: int                                  # = registers[VmReg.RIP]
    registers: dict[VmReg, int]
    descriptors: dict[VmReg, SegDesc]
    kernel_start: int
    kernel_end: int                             # start + init_size (vmlinux: max of that and phys_end)
    cmdline_addr: int
    initrd_addr: int
    initrd_size: int
    e820: list[E820Entry]
    pvh_entry: int | None = None
    notes: dict[str, object] = field(default_factory=dict)

    def copy_into(self, ram, slots: list[tuple[int, int, int]]) -> None:
        """Write the segments into `ram` (a writable buffer of the whole
        guest RAM mapping), translating guest-physical addresses with
        `slots` = [(gpa, size, offset_in_mapping), ...]."""
        mv = memoryview(ram)
        for gpa, body in self.segments:
            for sgpa, ssize, soff in slots:
                if sgpa <= gpa and gpa + len(body) <= sgpa + ssize:
                    off = soff + gpa - sgpa
                    mv[off:off + len(body)] = body
                    break
            else:
                raise ValueError(f"{len(body)} bytes at {gpa:#x} are not inside one RAM slot")


def _align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def plan_load(image: BzImage, memory: int, cmdline: str, initrd: bytes = b"", *,
              mode: str = "vmlinux", vmlinux: Vmlinux | None = None,
              ram_slots: list[tuple[int, int]] | None = None,
              reserved: list[tuple[int, int]] = (), acpi_rsdp_addr: int = 0) -> LoadPlan:
    """Everything to copy into guest RAM and the boot CPU's state.

    mode "vmlinux": the payload is decompressed here, on the host, and the
      CPU enters vmlinux's startup_64 (its e_entry, a physical address)
      with the PT_LOADs at their physical addresses.
    mode "bzimage": the protected-mode kernel goes to pref_address and the
      CPU enters the in-kernel decompressor's 64-bit entry (+0x200).
    `vmlinux` may be given to skip decompressing again.
    """
    h = image.header
    if not h.xloadflags & XLF_KERNEL_64:
        raise BzImageError("the kernel has no 64-bit entry (XLF_KERNEL_64 clear)")
    slots = ram_slots or default_ram_slots(memory)
    low_end = next((gpa + size for gpa, size in slots if gpa == 0), 0)
    e820 = e820_table(slots, list(reserved))

    segments: list[tuple[int, bytes]] = []
    pvh = None
    if mode == "vmlinux":
        v = vmlinux or parse_vmlinux(image.vmlinux())
        segments += v.segments()
        kstart = v.phys_start
        kend = max(v.phys_end, kstart + h.init_size)
        entry = v.entry
        if not (v.phys_start <= entry < v.phys_end):
            raise BzImageError(f"vmlinux e_entry {entry:#x} is not a physical address inside its PT_LOADs")
        pvh = v.pvh_entry
    elif mode == "bzimage":
        align = h.kernel_alignment or 0x200000
        kstart = _align_up(h.pref_address or 0x1000000, align)
        kernel = image.kernel
        segments.append((kstart, kernel))
        kend = kstart + max(h.init_size, len(kernel))
        entry = kstart + 0x200
    else:
        raise ValueError(f"mode must be 'vmlinux' or 'bzimage', not {mode!r}")
    if kend > low_end:
        raise BzImageError(f"the kernel needs RAM up to {kend:#x}; low RAM ends at {low_end:#x}")

    initrd_addr = 0
    if initrd:
        # Below initrd_addr_max (and so below 4 GiB, even when
        # XLF_CAN_BE_LOADED_ABOVE_4G would allow more): the 32-bit fields
        # suffice, and every kernel accepts it.
        limit = min(low_end, h.initrd_addr_max + 1)
        initrd_addr = (limit - len(initrd)) & ~0xFFF
        if initrd_addr < _align_up(kend, 0x1000):
            raise BzImageError(f"initrd of {len(initrd)} bytes does not fit between the kernel's end "
                               f"{kend:#x} and {limit:#x}")
        segments.append((initrd_addr, bytes(initrd)))

    cmd = cmdline.encode() + b"\0"
    bp = boot_params(image, cmdline_addr=CMDLINE_ADDR, cmdline_len=len(cmd) - 1, initrd_addr=initrd_addr,
                     initrd_size=len(initrd), e820=e820, acpi_rsdp_addr=acpi_rsdp_addr)
    segments += [(GDT_ADDR, gdt()), (BOOT_PARAMS_ADDR, bp), (PML4_ADDR, page_tables()),
                 (CMDLINE_ADDR, cmd)]
    regs, descs = cpu_state(entry)
    return LoadPlan(mode, segments, BOOT_PARAMS_ADDR, entry, regs, descs, kstart, kend, CMDLINE_ADDR,
                    initrd_addr, len(initrd), e820, pvh,
                    {"version": image.version_string, "compression": compression(image.payload)})
