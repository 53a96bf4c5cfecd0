"""ACPI (RSDP, XSDT, RSDT, MADT, FADT, FACS, DSDT) and MP 1.4 tables.

References: ACPI 6.5 chapter 5 (5.2.5 RSDP, 5.2.8 XSDT, 5.2.9 FADT, 5.2.10
FACS, 5.2.12 MADT with 5.2.12.2 local APIC, 5.2.12.3 I/O APIC, 5.2.12.5
interrupt source override), 19.6.134 for the \\_S5 package; Intel
MultiProcessor Specification 1.4, chapter 4.

Layout: everything lives in FIRMWARE_BASE .. +FIRMWARE_SIZE (0xE0000,
128 KiB: the BIOS area that both the RSDP scan (0xE0000-0xFFFFF) and the
MP floating-pointer scan (0xF0000-0xFFFFF) cover), reserved in the e820
map by `bhive.linux.boot.e820_table`.  RSDP at 0xE0000, ACPI tables after
it, the MP floating pointer at 0xF0000 and its configuration table right
after.  APIC ID of CPU n is n (softvmm's convention).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..actors import acpi_pm, ioapic

FIRMWARE_BASE = 0xE0000
FIRMWARE_SIZE = 0x20000
RSDP_ADDR = 0xE0000
MP_FLOAT_ADDR = 0xF0000
OEM_ID = b"BHIVE "
OEM_TABLE_ID = b"BHIVEVM "
LAPIC_ADDR = 0xFEE00000
SCI_IRQ = 9
S5_SLP_TYP = 5          # bhive.actors.acpi_pm.S5_SLP_TYP
MP_PCI_BUS = 1          # MP bus id of PCI bus 0 (ISA is MP bus 0)


def checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def _fix(data: bytearray, offset: int, start: int = 0, end: int | None = None) -> bytes:
    data[offset] = 0
    data[offset] = checksum(bytes(data[start:end]))
    return bytes(data)


def sdt(signature: bytes, body: bytes, revision: int = 1) -> bytes:
    """A system description table: the 36-byte header, body, checksum."""
    length = 36 + len(body)
    hdr = struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID, OEM_TABLE_ID, 1,
                      b"BHIV", 1)
    return _fix(bytearray(hdr + body), 9)


@dataclass
class Platform:
    cpus: int
    ioapic_addr: int = ioapic.MMIO_BASE
    ioapic_id: int = 0
    pm_base: int = acpi_pm.PM_BASE
    reset_via_i8042: bool = True
    pci: bool = False           # an i440FX host bridge on bus 0 (bhive.actors.pci)


# --- AML for the DSDT -----------------------------------------------------------

def _pkg_length(n: int) -> bytes:
    """PkgLength encoding of a body of n bytes (the length counts itself)."""
    if n + 1 < 0x40:
        return bytes([n + 1])
    total = n + 2
    if total < 0x1000:
        return bytes([0x40 | (total & 0xF), total >> 4])
    total = n + 3
    return bytes([0x80 | (total & 0xF), (total >> 4) & 0xFF, total >> 12])


def aml_s5() -> bytes:
    """Name (\\_S5, Package (4) {5, 5, 0, 0}): SLP_TYPa/b for soft-off."""
    elements = bytes([0x0A, S5_SLP_TYP, 0x0A, S5_SLP_TYP, 0x00, 0x00])   # BytePrefix n, Zero
    body = bytes([4]) + elements                                           # NumElements
    package = b"\x12" + _pkg_length(len(body)) + body
    return b"\x08" + b"\\_S5_" + package


# AML opcodes (ACPI 6.5 chapter 20.2).
AML_ZERO, AML_ONE = 0x00, 0x01
AML_BYTE, AML_WORD, AML_DWORD = 0x0A, 0x0B, 0x0C
AML_NAME, AML_SCOPE, AML_BUFFER, AML_PACKAGE = 0x08, 0x10, 0x11, 0x12
AML_DEVICE = b"\x5B\x82"


def aml_int(n: int) -> bytes:
    if n in (0, 1):
        return bytes([n])
    for op, fmt, limit in ((AML_BYTE, "<B", 0xFF), (AML_WORD, "<H", 0xFFFF), (AML_DWORD, "<I", 0xFFFFFFFF)):
        if n <= limit:
            return bytes([op]) + struct.pack(fmt, n)
    return b"\x0E" + struct.pack("<Q", n)


def aml_name(name: str, value: bytes) -> bytes:
    return bytes([AML_NAME]) + name.encode() + value


def aml_package(elements: list[bytes]) -> bytes:
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([AML_PACKAGE]) + _pkg_length(len(body)) + body


def aml_buffer(data: bytes) -> bytes:
    body = aml_int(len(data)) + data
    return bytes([AML_BUFFER]) + _pkg_length(len(body)) + body


def aml_scope(name: str, body: bytes) -> bytes:
    return bytes([AML_SCOPE]) + _pkg_length(len(name) + len(body)) + name.encode() + body


def aml_device(name: str, body: bytes) -> bytes:
    return AML_DEVICE + _pkg_length(len(name) + len(body)) + name.encode() + body


def eisa_id(text: str) -> int:
    """EisaId("PNP0A03"): three 5-bit letters and a 16-bit product, big-endian in a dword."""
    vendor = (ord(text[0]) - 0x40) << 10 | (ord(text[1]) - 0x40) << 5 | (ord(text[2]) - 0x40)
    return int.from_bytes(struct.pack(">HH", vendor, int(text[3:], 16)), "little")


# PCI root bridge resources (ACPI 6.5 6.4.3: word/dword address space descriptors).
PCI_IO_HOLE = (0x0CF8, 8)                 # the config mechanism's own ports
PCI_MMIO_WINDOW = (0xC0000000, 0xFEBFFFFF)  # bhive.loader.LOW_MEMORY_TOP up to the IOAPIC
VGA_WINDOW = (0x000A0000, 0x000BFFFF)


def _word_space(kind: int, lo: int, hi: int, type_flags: int = 0) -> bytes:
    # tag 0x88, length 13, resource type, flags: MinFixed|MaxFixed, producer
    return struct.pack("<BHBBBHHHHH", 0x88, 13, kind, 0x0C, type_flags, 0, lo, hi, 0, hi - lo + 1)


def _dword_memory(lo: int, hi: int, cacheable: bool) -> bytes:
    flags = 0x01 | (0x02 if cacheable else 0)          # read/write, cacheability
    return struct.pack("<BHBBBIIIII", 0x87, 23, 0, 0x0C, flags, 0, lo, hi, 0, hi - lo + 1)


def pci_crs() -> bytes:
    """_CRS of the root bridge: bus 0-255, the 0xCF8 ports, I/O 0-0xCF7 and
    0xD00-0xFFFF, the VGA window and the 32-bit MMIO hole."""
    io_lo, io_n = PCI_IO_HOLE
    out = _word_space(2, 0, 0xFF)                                             # bus numbers
    out += struct.pack("<BBHHBB", 0x47, 1, io_lo, io_lo, 1, io_n)            # IO(Decode16, 0xCF8, 8)
    out += _word_space(1, 0, io_lo - 1, 3)                                    # I/O below, entire range
    out += _word_space(1, 0x0D00, 0xFFFF, 3)
    out += _dword_memory(*VGA_WINDOW, cacheable=True)
    out += _dword_memory(*PCI_MMIO_WINDOW, cacheable=False)
    return out + b"\x79\x00"                                                 # end tag


def pci_prt() -> bytes:
    """_PRT: INTx of slot s, pin p wired to GSI 16 + (s + p) % 4 (p: 0 = INTA)
    (bhive.actors.pci.intx_gsi), no link devices."""
    from ..actors.pci import intx_gsi
    entries = [aml_package([aml_int((slot << 16) | 0xFFFF), aml_int(pin), aml_int(0),
                            aml_int(intx_gsi(slot, pin + 1))])
               for slot in range(1, 32) for pin in range(4)]
    return aml_package(entries)


def aml_pci_root() -> bytes:
    """Scope (\\_SB) { Device (PCI0) { _HID PNP0A03, _UID, _BBN, _CRS, _PRT } }"""
    body = (aml_name("_HID", aml_int(eisa_id("PNP0A03"))) + aml_name("_UID", aml_int(0)) +
            aml_name("_BBN", aml_int(0)) + aml_name("_CRS", aml_buffer(pci_crs())) +
            aml_name("_PRT", pci_prt()))
    return aml_scope("\\_SB_", aml_device("PCI0", body))


def dsdt(p: Platform | None = None) -> bytes:
    body = aml_s5()
    if p is not None and p.pci:
        body += aml_pci_root()
    return sdt(b"DSDT", body, revision=2)


def facs() -> bytes:
    f = bytearray(64)
    f[0:4] = b"FACS"
    struct.pack_into("<I", f, 4, 64)
    return bytes(f)


def gas(space: int, bits: int, addr: int, access: int = 0) -> bytes:
    """Generic Address Structure (ACPI 5.2.3.2)."""
    return struct.pack("<BBBBQ", space, bits, 0, access, addr)


def fadt(p: Platform, facs_addr: int, dsdt_addr: int) -> bytes:
    body = bytearray(276 - 36)
    def put(off, fmt, *v):
        struct.pack_into(fmt, body, off - 36, *v)
    put(36, "<I", facs_addr)                 # FIRMWARE_CTRL
    put(40, "<I", dsdt_addr)                 # DSDT
    put(45, "<B", 0)                         # preferred PM profile: unspecified
    put(46, "<H", SCI_IRQ)                   # SCI_INT
    put(48, "<I", 0)                         # SMI_CMD: none, ACPI always on
    put(56, "<I", p.pm_base)                 # PM1a_EVT_BLK
    put(64, "<I", p.pm_base + 4)             # PM1a_CNT_BLK
    put(76, "<I", p.pm_base + 8)             # PM_TMR_BLK
    put(88, "<B", 4)                         # PM1_EVT_LEN
    put(89, "<B", 2)                         # PM1_CNT_LEN
    put(91, "<B", 4)                         # PM_TMR_LEN
    put(108, "<B", 0x32)                     # CENTURY (CMOS index)
    put(109, "<H", 0x0003)                   # IAPC_BOOT_ARCH: LEGACY_DEVICES | 8042
    flags = (1 << 0) | (1 << 4) | (1 << 10)  # WBINVD, PWR_BUTTON (control method), RESET_REG_SUP
    put(112, "<I", flags)                    # HW_REDUCED_ACPI (bit 20) = 0
    if p.reset_via_i8042:
        reset = gas(1, 8, 0x64)              # system I/O, the i8042 command port
        value = 0xFE
    else:
        reset = gas(1, 8, 0xCF9)
        value = 0x06
    body[116 - 36:128 - 36] = reset           # RESET_REG
    put(128, "<B", value)                    # RESET_VALUE
    put(131, "<B", 5)                        # FADT minor version (6.5)
    put(132, "<Q", facs_addr)                # X_FIRMWARE_CTRL
    put(140, "<Q", dsdt_addr)                # X_DSDT
    body[148 - 36:160 - 36] = gas(1, 32, p.pm_base, 2)        # X_PM1a_EVT_BLK
    body[172 - 36:184 - 36] = gas(1, 16, p.pm_base + 4, 2)    # X_PM1a_CNT_BLK
    body[208 - 36:220 - 36] = gas(1, 32, p.pm_base + 8, 3)    # X_PM_TMR_BLK
    return sdt(b"FACP", bytes(body), revision=6)


def madt(p: Platform) -> bytes:
    body = struct.pack("<II", LAPIC_ADDR, 1)             # PCAT_COMPAT: dual 8259s present
    for cpu in range(p.cpus):
        body += struct.pack("<BBBBI", 0, 8, cpu, cpu, 1)  # processor local APIC, enabled
    body += struct.pack("<BBBBII", 1, 12, p.ioapic_id, 0, p.ioapic_addr, 0)   # I/O APIC, GSI base 0
    body += struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)     # ISA IRQ0 -> GSI2, conforming
    body += struct.pack("<BBBBIH", 2, 10, 0, SCI_IRQ, SCI_IRQ, 0x000D)   # SCI: level, active high
    body += struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1)     # local APIC NMI: all CPUs, LINT1
    return sdt(b"APIC", body, revision=5)


def acpi_tables(p: Platform, base: int = RSDP_ADDR) -> tuple[bytes, int]:
    """(blob to copy at `base`, RSDP address)."""
    out = bytearray(b"\0" * 64)              # RSDP lives in the first 36 bytes
    def place(table: bytes) -> int:
        while len(out) % 16:
            out.append(0)
        addr = base + len(out)
        out.extend(table)
        return addr
    facs_addr = place(facs())
    dsdt_addr = place(dsdt(p))
    fadt_addr = place(fadt(p, facs_addr, dsdt_addr))
    madt_addr = place(madt(p))
    entries = [fadt_addr, madt_addr]
    xsdt_addr = place(sdt(b"XSDT", b"".join(struct.pack("<Q", a) for a in entries)))
    rsdt_addr = place(sdt(b"RSDT", b"".join(struct.pack("<I", a) for a in entries)))
    rsdp = bytearray(struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, rsdt_addr, 36, xsdt_addr, 0))
    rsdp[8] = checksum(bytes(rsdp[:20]))
    rsdp[32] = checksum(bytes(rsdp))
    out[0:36] = rsdp
    return bytes(out), base


def mp_table(p: Platform, base: int = MP_FLOAT_ADDR) -> bytes:
    """MP floating pointer at `base`, configuration table right after."""
    entries = b""
    count = 0
    for cpu in range(p.cpus):
        flags = 0x01 | (0x02 if cpu == 0 else 0)          # enabled, BSP
        entries += struct.pack("<BBBBIII8x", 0, cpu, 0x14, flags, 0x000606A0, 0x0201, 0)[:20]
        count += 1
    entries += struct.pack("<BB6s", 1, 0, b"ISA   ")        # bus 0: ISA
    count += 1
    if p.pci:
        entries += struct.pack("<BB6s", 1, MP_PCI_BUS, b"PCI   ")   # bus 1: PCI bus 0
        count += 1
    entries += struct.pack("<BBBBI", 2, p.ioapic_id, 0x20, 1, p.ioapic_addr)
    count += 1
    for irq in range(16):                                   # ISA IRQ n -> pin n (IRQ0 -> pin 2)
        if irq == 2:
            continue
        pin = 2 if irq == 0 else irq
        flags = 0x000D if irq == SCI_IRQ else 0             # SCI: level, active high
        entries += struct.pack("<BBHBBBB", 3, 0, flags, 0, irq, p.ioapic_id, pin)
        count += 1
    if p.pci:
        from ..actors.pci import intx_gsi
        for slot in range(1, 32):                          # INTx: level, active low, PIRQ -> GSI 16-19
            for pin in range(4):
                entries += struct.pack("<BBHBBBB", 3, 0, 0x000F, MP_PCI_BUS, slot << 2 | pin, p.ioapic_id,
                                       intx_gsi(slot, pin + 1))
                count += 1
    entries += struct.pack("<BBHBBBB", 3, 3, 0, 0, 0, p.ioapic_id, 0)   # ExtINT: PIC on pin 0
    entries += struct.pack("<BBHBBBB", 4, 3, 0, 0, 0, 0xFF, 0)          # LINT0: ExtINT, all CPUs
    entries += struct.pack("<BBHBBBB", 4, 1, 0, 0, 0, 0xFF, 1)          # LINT1: NMI, all CPUs
    count += 3
    cfg_addr = base + 16
    header = bytearray(struct.pack("<4sHBB8s12sIHHIHB", b"PCMP", 44 + len(entries), 4, 0,
                                   b"BHIVE   ", b"BHIVEVM     ", 0, 0, count, LAPIC_ADDR, 0, 0) + b"\0")
    table = bytearray(header + entries)
    table[7] = checksum(bytes(table))
    fp = bytearray(struct.pack("<4sIBBB5x", b"_MP_", cfg_addr, 1, 4, 0))
    fp[10] = checksum(bytes(fp))
    return bytes(fp) + bytes(table)


def build(p: Platform) -> list[tuple[int, bytes]]:
    """Everything to copy into guest RAM: [(gpa, bytes)]."""
    acpi, _ = acpi_tables(p)
    assert len(acpi) <= MP_FLOAT_ADDR - RSDP_ADDR
    return [(RSDP_ADDR, acpi), (MP_FLOAT_ADDR, mp_table(p))]


def e820(memory: int):
    """The e820 map of a VM: bhive.linux.boot's, with the firmware area reserved."""
    from ..linux.boot import default_ram_slots, e820_table
    return e820_table(default_ram_slots(memory), [(FIRMWARE_BASE, FIRMWARE_SIZE)])
