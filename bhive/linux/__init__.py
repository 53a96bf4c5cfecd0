"""Linux loader, the pure parts: bzImage header, payload decompression on
the host (cached by content: cache.py), vmlinux program headers,
boot_params and the 64-bit entry state.  Nothing here touches a CPU; `plan_load` returns what to copy where and the
boot vCPU's registers (keyed by bhive.accel.base.VmReg)."""

from __future__ import annotations

from pathlib import Path

from .boot import (BOOT_CS, BOOT_DS, BOOT_PARAMS_ADDR, CMDLINE_ADDR, GDT_ADDR, PML4_ADDR, E820Entry,
                   LoadPlan, boot_params, cpu_state, default_ram_slots, e820_table, gdt, page_tables,
                   plan_load)
from .bzimage import (FIELD_OFFSETS, XLF_CAN_BE_LOADED_ABOVE_4G, XLF_KERNEL_64, BzImage, BzImageError,
                      SetupHeader, compression, decompress, parse_bzimage)
from .cache import cached_vmlinux, vmlinux_file
from .elf import ElfError, Note, Phdr, Vmlinux, parse_vmlinux

__all__ = ["BOOT_CS", "BOOT_DS", "BOOT_PARAMS_ADDR", "CMDLINE_ADDR", "GDT_ADDR", "PML4_ADDR",
           "E820Entry", "LoadPlan", "boot_params", "cpu_state", "default_ram_slots", "e820_table", "gdt",
           "page_tables", "plan_load", "FIELD_OFFSETS", "XLF_CAN_BE_LOADED_ABOVE_4G", "XLF_KERNEL_64",
           "BzImage", "BzImageError", "SetupHeader", "compression", "decompress", "parse_bzimage",
           "ElfError", "Note", "Phdr", "Vmlinux", "parse_vmlinux", "load_linux", "cached_vmlinux",
           "vmlinux_file"]


def load_linux(kernel: str | Path, memory: int, cmdline: str, initrd: str | Path | bytes | None = None,
               **kw) -> LoadPlan:
    """plan_load for files: a bzImage path and an initrd path (or bytes)."""
    image = parse_bzimage(Path(kernel).read_bytes())
    if isinstance(initrd, (str, Path)):
        initrd = Path(initrd).read_bytes()
    return plan_load(image, memory, cmdline, initrd or b"", **kw)
