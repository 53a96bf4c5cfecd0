"""The BIOS state that legacy real-mode code assumes, written by the loader.

bhive has no BIOS: the loader puts the guest's image in RAM and starts the
CPU at it.  Test kernels written for PCs (and for QEMU, whose SeaBIOS runs
first) still expect what a BIOS leaves behind when they are, or drop back
into, real mode:

* an interrupt vector table at 0 whose 256 entries point at a default
  handler that just IRETs (SeaBIOS and the IBM PC BIOS put one at
  F000:FF53), so an `int n` or a stray interrupt returns;
* the BIOS data area at 0x400: the COM/LPT port table, the equipment word,
  the base-memory size and the EBDA segment (IBM PC/AT Technical
  Reference; RBIL MEMORY.LST "Format of BIOS Data Segment").

The 8259A pair is left programmed as a BIOS leaves it (IRQ0-7 at vectors
0x08-0x0F, IRQ8-15 at 0x70-0x77) by the PIC actor itself
(bhive.actors.pic.DualPic.bios_setup).
"""

from __future__ import annotations

import struct

IVT_ADDR = 0x0
IVT_ENTRIES = 256
BDA_ADDR = 0x400
BDA_SIZE = 0x100
IRET_SEGMENT = 0xF000
IRET_OFFSET = 0xFF53              # where the PC BIOS keeps its dummy IRET
IRET_ADDR = (IRET_SEGMENT << 4) + IRET_OFFSET
IRET = 0xCF

EBDA_ADDR = 0x9FC00               # bhive.linux.boot.EBDA_START: reserved in the e820 map
BASE_MEMORY_KIB = EBDA_ADDR // 1024   # 639

# BIOS data area offsets (from 0x400)
BDA_COM_PORTS = 0x00              # 4 words: COM1-COM4 I/O bases (0: absent)
BDA_LPT_PORTS = 0x08              # 3 words: LPT1-LPT3
BDA_EBDA_SEGMENT = 0x0E           # word: EBDA segment
BDA_EQUIPMENT = 0x10              # word: equipment list
BDA_MEMORY_KIB = 0x13             # word: KiB of conventional memory
EQUIP_X87 = 1 << 1                # math coprocessor present
EQUIP_VIDEO_80X25_COLOR = 2 << 4
EQUIP_SERIAL_SHIFT = 9            # bits 9-11: number of serial ports


def ivt() -> bytes:
    """256 far pointers (offset, segment), all to the dummy IRET."""
    return struct.pack("<HH", IRET_OFFSET, IRET_SEGMENT) * IVT_ENTRIES


def bda(com_ports: list[int]) -> bytes:
    data = bytearray(BDA_SIZE)
    ports = (list(com_ports) + [0, 0, 0, 0])[:4]
    struct.pack_into("<4H", data, BDA_COM_PORTS, *ports)
    struct.pack_into("<H", data, BDA_EBDA_SEGMENT, EBDA_ADDR >> 4)
    serial = sum(1 for p in ports if p)
    struct.pack_into("<H", data, BDA_EQUIPMENT, EQUIP_X87 | EQUIP_VIDEO_80X25_COLOR | serial << EQUIP_SERIAL_SHIFT)
    struct.pack_into("<H", data, BDA_MEMORY_KIB, BASE_MEMORY_KIB)
    return bytes(data)


def build(com_ports: list[int]) -> list[tuple[int, bytes]]:
    """Everything to copy into guest RAM: [(gpa, bytes)]."""
    return [(IVT_ADDR, ivt()), (BDA_ADDR, bda(com_ports)), (IRET_ADDR, bytes([IRET]))]
