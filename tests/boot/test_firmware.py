"""Firmware tables parsed back: RSDP scan, checksums, MADT, FADT, DSDT, MP."""

from __future__ import annotations

import struct
import subprocess

import pytest

from bhive import config as config_mod
from bhive import loader
from bhive.firmware import tables as t
from support import REPO


def ram_with_tables(cpus: int) -> bytearray:
    cfg = config_mod.load(REPO / "configs" / "platform.toml", {"cpus": cpus})
    ram = bytearray(cfg.memory)
    written = loader.place_firmware(cfg, memoryview(ram))
    assert written and all(t.FIRMWARE_BASE <= g and g + n <= t.FIRMWARE_BASE + t.FIRMWARE_SIZE
                           for g, n in written)
    return ram


def scan(ram: bytes, sig: bytes, lo: int, hi: int, step: int = 16) -> int:
    for a in range(lo, hi, step):
        if ram[a:a + len(sig)] == sig:
            return a
    raise AssertionError(f"{sig!r} not found")


def table_at(ram: bytes, addr: int) -> tuple[bytes, bytes]:
    sig, length = struct.unpack_from("<4sI", ram, addr)
    data = bytes(ram[addr:addr + length])
    assert sum(data) & 0xFF == 0, f"{sig!r} checksum"
    return sig, data


@pytest.mark.parametrize("cpus", [1, 4, 8])
def test_acpi_tables_parse_back(cpus):
    ram = ram_with_tables(cpus)
    rsdp = scan(ram, b"RSD PTR ", 0xE0000, 0x100000)
    assert sum(ram[rsdp:rsdp + 20]) & 0xFF == 0 and sum(ram[rsdp:rsdp + 36]) & 0xFF == 0
    rev, rsdt, length, xsdt = struct.unpack_from("<BIIQ", ram, rsdp + 15)
    assert rev == 2 and length == 36
    sig, x = table_at(ram, xsdt)
    assert sig == b"XSDT"
    addrs = struct.unpack_from(f"<{(len(x) - 36) // 8}Q", x, 36)
    sig, r = table_at(ram, rsdt)
    assert sig == b"RSDT" and struct.unpack_from(f"<{len(addrs)}I", r, 36) == addrs
    found = dict(table_at(ram, a) for a in addrs)
    madt, fadt = found[b"APIC"], found[b"FACP"]
    # MADT: every CPU, the IOAPIC, IRQ0 -> GSI2, SCI level/high
    lapics, ioapics, overrides = [], [], {}
    off = 44
    while off < len(madt):
        kind, ln = madt[off], madt[off + 1]
        if kind == 0:
            lapics.append(struct.unpack_from("<BBI", madt, off + 2))
        elif kind == 1:
            ioapics.append(struct.unpack_from("<BxII", madt, off + 2))
        elif kind == 2:
            bus, src, gsi, flags = struct.unpack_from("<BBIH", madt, off + 2)
            overrides[src] = (gsi, flags)
        off += ln
    assert off == len(madt)
    assert lapics == [(i, i, 1) for i in range(cpus)]
    assert ioapics == [(0, 0xFEC00000, 0)]
    assert overrides == {0: (2, 0), 9: (9, 0x000D)}
    # FADT: PM timer, SCI, reset register, not hardware-reduced, DSDT
    assert struct.unpack_from("<H", fadt, 46)[0] == 9
    assert struct.unpack_from("<I", fadt, 76)[0] == 0x608 and fadt[91] == 4
    assert struct.unpack_from("<I", fadt, 56)[0] == 0x600 and struct.unpack_from("<I", fadt, 64)[0] == 0x604
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert not flags & (1 << 20) and flags & (1 << 10)
    assert fadt[116] == 1 and struct.unpack_from("<Q", fadt, 120)[0] == 0x64 and fadt[128] == 0xFE
    dsdt_addr = struct.unpack_from("<Q", fadt, 140)[0]
    assert dsdt_addr == struct.unpack_from("<I", fadt, 40)[0]
    sig, dsdt = table_at(ram, dsdt_addr)
    assert sig == b"DSDT" and b"\\_S5_\x12" in dsdt
    facs_addr = struct.unpack_from("<I", fadt, 36)[0]
    assert ram[facs_addr:facs_addr + 4] == b"FACS"


@pytest.mark.parametrize("cpus", [1, 8])
def test_mp_table_parses_back(cpus):
    ram = ram_with_tables(cpus)
    fp = scan(ram, b"_MP_", 0xF0000, 0x100000)
    assert sum(ram[fp:fp + 16]) & 0xFF == 0 and ram[fp + 8] == 1 and ram[fp + 9] == 4
    cfg = struct.unpack_from("<I", ram, fp + 4)[0]
    sig, length, rev = struct.unpack_from("<4sHB", ram, cfg)
    assert sig == b"PCMP" and rev == 4 and sum(ram[cfg:cfg + length]) & 0xFF == 0
    count = struct.unpack_from("<H", ram, cfg + 34)[0]
    off, kinds, cpus_seen, ints = cfg + 44, [], [], {}
    sizes = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}
    for _ in range(count):
        kind = ram[off]
        kinds.append(kind)
        if kind == 0:
            cpus_seen.append((ram[off + 1], ram[off + 3]))
        if kind == 3:
            ints[ram[off + 5]] = ram[off + 7]
        off += sizes[kind]
    assert off == cfg + length
    assert cpus_seen == [(i, 1 | (2 if i == 0 else 0)) for i in range(cpus)]
    assert kinds.count(1) == 1 and kinds.count(2) == 1
    assert ints[0] == 0 and ints[1] == 1 and ints[14] == 14   # (ExtINT on pin 0 is listed first for IRQ0)


def test_e820_reuses_the_linux_loader_and_reserves_the_firmware():
    from bhive.linux.boot import E820_RESERVED
    entries = t.e820(64 << 20)
    assert any(e.addr == t.FIRMWARE_BASE and e.size == t.FIRMWARE_SIZE and e.type == E820_RESERVED
               for e in entries)


def test_dsdt_disassembles_with_iasl(tmp_path):
    dsdt = t.dsdt()
    (tmp_path / "dsdt.dat").write_bytes(dsdt)
    proc = subprocess.run(["iasl", "-d", "dsdt.dat"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "_S5" in (tmp_path / "dsdt.dsl").read_text()


def test_pci_root_bridge_in_the_dsdt_with_iasl(tmp_path):
    """With a pci device the DSDT has \\_SB.PCI0 (PNP0A03) with its
    resources and the hard-wired INTx routing (slot s, pin p -> GSI
    16 + (s + p) % 4); iasl disassembles it back."""
    dsdt = t.dsdt(t.Platform(cpus=1, pci=True))
    (tmp_path / "dsdt.dat").write_bytes(dsdt)
    proc = subprocess.run(["iasl", "-d", "dsdt.dat"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dsl = (tmp_path / "dsdt.dsl").read_text()
    assert 'EisaId ("PNP0A03")' in dsl and "Device (PCI0)" in dsl and "Name (_PRT, Package (0x7C)" in dsl
    assert "WordBusNumber" in dsl and "0x0CF8,             // Range Minimum" in dsl
    assert "0xC0000000,         // Range Minimum" in dsl and "0xFEBFFFFF,         // Range Maximum" in dsl
    # slot 3: INTA -> 19, INTB -> 16 (PIRQ[(3 + 1 - 1) % 4] = D, then A)
    flat = " ".join(dsl.split())
    assert "Package (0x04) { 0x0003FFFF, Zero, Zero, 0x13 }" in flat
    assert "Package (0x04) { 0x0003FFFF, One, Zero, 0x10 }" in flat
    assert t.dsdt() == t.dsdt(t.Platform(cpus=1)) and b"PCI0" not in t.dsdt()


def test_mp_table_has_the_pci_bus_and_intx_entries():
    table = t.mp_table(t.Platform(cpus=2, pci=True))
    cfg = table[16:]
    count = struct.unpack_from("<H", cfg, 34)[0]
    off, buses, pci_ints = 44, {}, {}
    for _ in range(count):
        kind = cfg[off]
        if kind == 1:
            buses[cfg[off + 1]] = cfg[off + 2:off + 8]
        if kind == 3 and cfg[off + 4] == t.MP_PCI_BUS:
            flags, src, pin = struct.unpack_from("<H", cfg, off + 2)[0], cfg[off + 5], cfg[off + 7]
            pci_ints[src] = (flags, pin)
        off += 20 if kind == 0 else 8
    assert off == len(cfg) and sum(cfg) & 0xFF == 0
    assert buses == {0: b"ISA   ", t.MP_PCI_BUS: b"PCI   "}
    assert len(pci_ints) == 31 * 4
    assert pci_ints[3 << 2 | 0] == (0x000F, 19) and pci_ints[3 << 2 | 1] == (0x000F, 16)
