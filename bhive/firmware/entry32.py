"""The 32-bit protected-mode entry state shared by the Multiboot and PVH
loaders: flat 4 GiB code and data segments, paging off, interrupts off.

Multiboot 0.6.96 §3.2 ("Machine state") and the Xen PVH ABI
(docs/misc/pvh.pandoc, "Initial state") both say: CS a 32-bit read/execute
segment with base 0 and limit 4 GiB, DS/ES/SS (and FS/GS) 32-bit
read/write with base 0 and limit 4 GiB, CR0.PE set and CR0.PG clear,
EFLAGS.IF and EFLAGS.VM clear; GDTR and IDTR undefined.  We still point
GDTR at a real GDT holding those descriptors (QEMU's multiboot option ROM
does too, with the same selectors), so a kernel that reloads a segment
register before its own LGDT gets what it had.
"""

from __future__ import annotations

import struct

from ..accel.base import SegDesc, VmReg

GDT_ADDR = 0x500                 # after the BIOS data area (bhive.firmware.bios)
CODE32_SEL = 0x08
DATA32_SEL = 0x10
STACK_TOP = 0x7000               # ESP is undefined at entry; this is a harmless place

# VMX access rights (SDM Vol. 3 §24.4.1): type | S<<4 | DPL<<5 | P<<7 | D/B<<14 | G<<15
AR_CODE32 = 0xB | 0x10 | 0x80 | 0x4000 | 0x8000     # 0xC09B: execute/read, accessed
AR_DATA32 = 0x3 | 0x10 | 0x80 | 0x4000 | 0x8000     # 0xC093: read/write, accessed
AR_TSS32_BUSY = 0xB | 0x80                          # 0x008B
AR_UNUSABLE = 0x10000 | 0x82

CR0_PE, CR0_ET = 0x1, 0x10


def gdt() -> bytes:
    """null, flat 32-bit code (0x08), flat 32-bit data (0x10)."""
    return struct.pack("<3Q", 0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF)


def protected_mode_state(entry: int, regs: dict[VmReg, int] | None = None,
                         tss_limit: int = 0xFFFF) -> tuple[dict[VmReg, int], dict[VmReg, SegDesc]]:
    """Registers and segments to enter `entry` in 32-bit protected mode
    with paging off; `regs` sets the registers the protocol defines
    (e.g. EAX/EBX), every other general register is 0."""
    out = {r: 0 for r in (VmReg.RAX, VmReg.RBX, VmReg.RCX, VmReg.RDX, VmReg.RSI, VmReg.RDI,
                          VmReg.RBP, VmReg.R8, VmReg.R9, VmReg.R10, VmReg.R11, VmReg.R12,
                          VmReg.R13, VmReg.R14, VmReg.R15)}
    out.update({VmReg.RIP: entry, VmReg.RSP: STACK_TOP, VmReg.RFLAGS: 0x2,
                VmReg.CR0: CR0_PE | CR0_ET, VmReg.CR3: 0, VmReg.CR4: 0, VmReg.EFER: 0})
    out.update(regs or {})
    code = SegDesc(0, 0xFFFFFFFF, AR_CODE32, CODE32_SEL)
    data = SegDesc(0, 0xFFFFFFFF, AR_DATA32, DATA32_SEL)
    descs = {VmReg.CS: code, VmReg.DS: data, VmReg.ES: data, VmReg.SS: data, VmReg.FS: data,
             VmReg.GS: data,
             VmReg.TR: SegDesc(0, tss_limit, AR_TSS32_BUSY, 0),
             VmReg.LDTR: SegDesc(0, 0, AR_UNUSABLE, 0),
             VmReg.GDTR: SegDesc(GDT_ADDR, len(gdt()) - 1, 0, 0),
             VmReg.IDTR: SegDesc(0, 0x3FF, 0, 0)}     # the real-mode IVT, as a BIOS leaves it
    return out, descs
