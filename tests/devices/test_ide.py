"""The PIIX3 IDE model driven directly: IDENTIFY, PIO and DMA against a
temp image and a bytearray standing in for guest RAM, every bad-input
case, nIEN, and a state()/from_state() round trip in mid-command."""

from __future__ import annotations

import os
import struct

import pytest

from bhive.actors import ide
from bhive.actors.ide import (BM_CMD_START, BM_CMD_WRITE_MEMORY, BM_ST_ACTIVE, BM_ST_ERROR, BM_ST_INTERRUPT,
                              ERR_ABRT, ERR_IDNF, PRD_EOT, ST_BSY, ST_DRDY, ST_DRQ, ST_ERR)

SECTORS = 2048                 # a 1 MiB image
RAM = 4 << 20


class RawImage:
    """Test-only stand-in with block.open_image's API (bhive/block.py is
    helper "block"'s): a raw file, readinto/write on memoryviews."""

    def __init__(self, path, readonly=False):
        self.fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        self.size = os.fstat(self.fd).st_size
        self.readonly = readonly
        self.flushes = 0

    def readinto(self, offset, buf):
        return os.preadv(self.fd, [buf], offset)

    def write(self, offset, buf):
        return os.pwritev(self.fd, [buf], offset)

    def flush(self):
        self.flushes += 1
        os.fsync(self.fd)


class Line:
    def __init__(self):
        self.level = False
        self.changes = []

    def set_level(self, asserted):
        self.level = bool(asserted)
        self.changes.append(self.level)


def pattern(lba: int, count: int) -> bytes:
    return b"".join(struct.pack("<I", lba + i) * 128 for i in range(count))


@pytest.fixture
def rig(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(pattern(0, SECTORS))
    img = RawImage(path)
    ram = bytearray(RAM)
    lines = [Line(), Line()]
    logs = []
    dev = ide.PiixIde([img], lines, ide.GuestRam(memoryview(ram), [(0, RAM, 0)]),
                      log=lambda ev, **f: logs.append((ev, f)))
    class Rig:
        pass
    r = Rig()
    r.dev, r.img, r.ram, r.lines, r.logs, r.path = dev, img, ram, lines, logs, path
    return r


def issue(dev, cmd, lba=0, count=1, ext=False, feature=0, drive=0, ch=0):
    if ext:
        dev.write(ch, 1, 1, feature >> 8)
        dev.write(ch, 2, 1, count >> 8)
        dev.write(ch, 3, 1, (lba >> 24) & 0xFF)
        dev.write(ch, 4, 1, (lba >> 32) & 0xFF)
        dev.write(ch, 5, 1, (lba >> 40) & 0xFF)
    dev.write(ch, 1, 1, feature & 0xFF)
    dev.write(ch, 2, 1, count & 0xFF)
    dev.write(ch, 3, 1, lba & 0xFF)
    dev.write(ch, 4, 1, (lba >> 8) & 0xFF)
    dev.write(ch, 5, 1, (lba >> 16) & 0xFF)
    dev.write(ch, 6, 1, 0xE0 | drive << 4 | (0 if ext else (lba >> 24) & 0xF))
    dev.write(ch, 7, 1, cmd)


def pio_in(dev, nbytes, ch=0):
    return b"".join(struct.pack("<H", dev.read(ch, 0, 2)) for _ in range(nbytes // 2))


def status(dev, ch=0):
    return dev.read(ch, 7, 1)


def prd(ram, at, entries):
    for i, (base, count, last) in enumerate(entries):
        struct.pack_into("<IHH", ram, at + 8 * i, base, count & 0xFFFF, PRD_EOT if last else 0)


def start_dma(dev, table, to_memory, ch=0):
    dev.bm_write(8 * ch + 4, 4, table)
    dev.bm_write(8 * ch + 0, 1, (BM_CMD_WRITE_MEMORY if to_memory else 0) | BM_CMD_START)


def test_signature_and_identify(rig):
    dev = rig.dev
    assert [dev.read(0, off, 1) for off in (2, 3, 4, 5)] == [1, 1, 0, 0]
    issue(dev, ide.CMD_IDENTIFY)
    assert rig.lines[0].level                                   # interrupt: data ready
    assert status(dev) & (ST_DRQ | ST_DRDY) == ST_DRQ | ST_DRDY
    assert not rig.lines[0].level                               # status read deasserts
    data = pio_in(dev, 512)
    w = struct.unpack("<256H", data)
    assert sum(data) & 0xFF == 0 and data[510] == 0xA5
    model = bytes(data[54 + (i ^ 1)] for i in range(40)).decode().strip()
    assert model == "BHIVE HARDDISK"
    assert w[60] | w[61] << 16 == SECTORS
    assert w[100] | w[101] << 16 | w[102] << 32 == SECTORS
    assert w[83] & (1 << 10) and w[83] & (1 << 13) and w[49] & (1 << 8) and w[49] & (1 << 9)
    assert w[63] & 0x07 == 0x07 and w[88] & 0x3F == 0x3F
    # the selected DMA mode is reported, exactly one, in the right word
    issue(dev, ide.CMD_SET_FEATURES, count=ide.XFER_UDMA | 5, feature=ide.FEAT_XFER_MODE)
    assert status(dev) == ST_DRDY | ide.ST_DSC
    issue(dev, ide.CMD_IDENTIFY)
    status(dev)
    w = struct.unpack("<256H", pio_in(dev, 512))
    assert w[88] >> 8 == 1 << 5 and w[63] >> 8 == 0
    issue(dev, ide.CMD_SET_FEATURES, count=ide.XFER_MWDMA | 1, feature=ide.FEAT_XFER_MODE)
    issue(dev, ide.CMD_IDENTIFY)
    status(dev)
    w = struct.unpack("<256H", pio_in(dev, 512))
    assert w[63] >> 8 == 1 << 1 and w[88] >> 8 == 0
    assert status(dev) & ST_DRQ == 0


def test_pio_read_write_sectors_lba28_and_lba48(rig):
    dev = rig.dev
    issue(dev, ide.CMD_READ_SECTORS, lba=7, count=3)
    got = b""
    for _ in range(3):
        assert status(dev) & ST_DRQ
        got += pio_in(dev, 512)
    assert got == pattern(7, 3) and not status(dev) & ST_DRQ
    issue(dev, ide.CMD_WRITE_SECTORS_EXT, lba=100, count=2, ext=True)
    assert status(dev) & ST_DRQ and not rig.lines[0].level      # no interrupt before the first block
    payload = bytes(range(256)) * 4
    for i in range(0, 1024, 4):                                  # 32-bit PIO
        dev.write(0, 0, 4, struct.unpack_from("<I", payload, i)[0])
    assert rig.lines[0].level and status(dev) == ST_DRDY | ide.ST_DSC
    assert rig.path.read_bytes()[100 * 512:102 * 512] == payload
    issue(dev, ide.CMD_READ_SECTORS_EXT, lba=100, count=2, ext=True)
    status(dev)
    assert pio_in(dev, 512) == payload[:512]


def test_read_write_multiple(rig):
    dev = rig.dev
    issue(dev, ide.CMD_READ_MULTIPLE, lba=0, count=4)
    assert status(dev) & ST_ERR and dev.read(0, 1, 1) == ERR_ABRT       # multiple mode not set
    issue(dev, ide.CMD_SET_MULTIPLE, count=3)
    assert status(dev) & ST_ERR                                          # not a power of two
    issue(dev, ide.CMD_SET_MULTIPLE, count=4)
    assert status(dev) == ST_DRDY | ide.ST_DSC
    issue(dev, ide.CMD_READ_MULTIPLE_EXT, lba=10, count=6, ext=True)
    status(dev)
    assert pio_in(dev, 4 * 512) == pattern(10, 4)                        # one block: 4 sectors
    assert rig.lines[0].level                                            # next block ready
    status(dev)
    assert pio_in(dev, 2 * 512) == pattern(14, 2)
    issue(dev, ide.CMD_WRITE_MULTIPLE, lba=20, count=4)
    for _ in range(4 * 256):
        dev.write(0, 0, 2, 0xBEEF)
    assert rig.path.read_bytes()[20 * 512:24 * 512] == b"\xef\xbe" * 1024


def test_dma_read_and_write_zero_copy(rig):
    dev, ram = rig.dev, rig.ram
    prd(ram, 0x1000, [(0x10000, 1024, False), (0x30000, 0, True)])       # 1 KiB + 64 KiB (count 0)
    issue(dev, ide.CMD_READ_DMA, lba=3, count=130)
    assert status(dev) & ST_DRQ and not rig.lines[0].level
    start_dma(dev, 0x1000, to_memory=True)
    assert rig.lines[0].level
    bm = dev.bm_read(2, 1)
    assert bm & BM_ST_INTERRUPT and not bm & BM_ST_ACTIVE and not bm & BM_ST_ERROR
    assert ram[0x10000:0x10400] == pattern(3, 2) and ram[0x30000:0x40000] == pattern(5, 128)
    assert status(dev) == ST_DRDY | ide.ST_DSC and not rig.lines[0].level
    dev.bm_write(2, 1, BM_ST_INTERRUPT)                                  # W1C
    dev.bm_write(0, 1, 0)
    assert not dev.bm_read(2, 1) & BM_ST_INTERRUPT
    # WRITE DMA EXT, start before the command: runs when the command arrives
    ram[0x50000:0x50400] = b"\x5a" * 1024
    prd(ram, 0x2000, [(0x50000, 1024, True)])
    start_dma(dev, 0x2000, to_memory=False)
    issue(dev, ide.CMD_WRITE_DMA_EXT, lba=1 << 10, count=2, ext=True)
    assert rig.lines[0].level and dev.bm_read(2, 1) & BM_ST_INTERRUPT
    assert rig.path.read_bytes()[1024 * 512:1026 * 512] == b"\x5a" * 1024
    # a PRD table larger than the transfer: interrupt with Active still set
    prd(ram, 0x3000, [(0x60000, 4096, True)])
    issue(dev, ide.CMD_READ_DMA, lba=0, count=1)
    start_dma(dev, 0x3000, to_memory=True)
    assert dev.bm_read(2, 1) & (BM_ST_INTERRUPT | BM_ST_ACTIVE) == BM_ST_INTERRUPT | BM_ST_ACTIVE


def test_flush_cache_and_power_commands(rig):
    dev = rig.dev
    issue(dev, ide.CMD_FLUSH_CACHE_EXT)
    assert rig.img.flushes == 1 and rig.lines[0].level
    issue(dev, ide.CMD_STANDBY_IMMEDIATE)
    issue(dev, ide.CMD_CHECK_POWER)
    assert dev.read(0, 2, 1) == 0x00
    issue(dev, ide.CMD_IDLE_IMMEDIATE)
    issue(dev, ide.CMD_CHECK_POWER)
    assert dev.read(0, 2, 1) == 0xFF
    dev.write(0, 2, 1, 32)                                      # 32 sectors per track
    dev.write(0, 6, 1, 0xAF)                                    # 16 heads (max head 15)
    dev.write(0, 7, 1, ide.CMD_INITIALIZE_PARAMS)
    assert status(dev) == ST_DRDY | ide.ST_DSC
    # CHS read with the new geometry (16 heads, 32 sectors): C0/H1/S1 = LBA 32
    dev.write(0, 2, 1, 1)
    dev.write(0, 3, 1, 1)
    dev.write(0, 4, 1, 0)
    dev.write(0, 5, 1, 0)
    dev.write(0, 6, 1, 0xA1)
    dev.write(0, 7, 1, ide.CMD_READ_SECTORS)
    status(dev)
    assert pio_in(dev, 512) == pattern(32, 1)
    issue(dev, ide.CMD_EXECUTE_DIAGNOSTIC)
    assert dev.read(0, 1, 1) == 0x01 and [dev.read(0, o, 1) for o in (2, 3, 4, 5)] == [1, 1, 0, 0]


def test_nien_gates_intrq_exactly(rig):
    dev, line = rig.dev, rig.lines[0]
    dev.control_write(0, 1, ide.DEVCTL_NIEN)
    issue(dev, ide.CMD_FLUSH_CACHE)
    assert not line.level and line.changes == []                # never raised while nIEN is set
    assert not dev.bm_read(2, 1) & BM_ST_INTERRUPT
    dev.control_write(0, 1, 0)                                  # the pending interrupt now shows
    assert line.level
    assert dev.control_read(0, 1) == ST_DRDY | ide.ST_DSC and line.level   # alt status: no side effect
    status(dev)
    assert not line.level
    # polled command with nIEN: status read clears the pending interrupt
    dev.control_write(0, 1, ide.DEVCTL_NIEN)
    issue(dev, ide.CMD_IDENTIFY)
    status(dev)
    pio_in(dev, 512)
    dev.control_write(0, 1, 0)
    assert not line.level


def test_software_reset(rig):
    dev = rig.dev
    issue(dev, ide.CMD_READ_SECTORS, lba=5, count=2)
    dev.control_write(0, 1, ide.DEVCTL_SRST)
    assert status(dev) & ST_BSY
    dev.control_write(0, 1, 0)
    assert status(dev) == ST_DRDY | ide.ST_DSC and dev.read(0, 1, 1) == 0x01
    assert [dev.read(0, o, 1) for o in (2, 3, 4, 5)] == [1, 1, 0, 0]
    assert not rig.lines[0].level                               # a reset does not interrupt
    assert dev.read(0, 0, 2) == 0                               # the aborted transfer is gone


def test_hob_readback(rig):
    dev = rig.dev
    dev.write(0, 3, 1, 0x11)
    dev.write(0, 3, 1, 0x22)
    dev.control_write(0, 1, ide.DEVCTL_HOB)
    assert dev.read(0, 3, 1) == 0x11
    dev.control_write(0, 1, 0)
    assert dev.read(0, 3, 1) == 0x22


@pytest.mark.parametrize("case", ["lba-past-end", "lba48-past-end", "absent-drive", "busy",
                                  "prd-table-outside-ram", "prd-entry-outside-ram", "prd-no-eot",
                                  "prd-too-short", "unknown-command", "bad-feature", "readonly"])
def test_bad_guest_input(rig, tmp_path, case):
    dev, ram, line = rig.dev, rig.ram, rig.lines[0]
    if case == "lba-past-end":
        issue(dev, ide.CMD_READ_DMA, lba=SECTORS - 1, count=2)
        assert status(dev) & ST_ERR and dev.read(0, 1, 1) == ERR_IDNF
    elif case == "lba48-past-end":
        issue(dev, ide.CMD_READ_SECTORS_EXT, lba=1 << 40, count=1, ext=True)
        assert status(dev) & ST_ERR and dev.read(0, 1, 1) == ERR_IDNF
    elif case == "absent-drive":
        issue(dev, ide.CMD_IDENTIFY, drive=1)
        assert status(dev) == 0 and not line.level
        issue(dev, ide.CMD_IDENTIFY, ch=1)
        assert dev.read(1, 7, 1) == 0 and not rig.lines[1].level
    elif case == "busy":
        issue(dev, ide.CMD_READ_SECTORS, lba=1, count=1)
        issue(dev, ide.CMD_WRITE_SECTORS, lba=50, count=1)      # DRQ set: ignored
        status(dev)
        assert pio_in(dev, 512) == pattern(1, 1)
    elif case == "prd-table-outside-ram":
        issue(dev, ide.CMD_READ_DMA, lba=0, count=1)
        start_dma(dev, 0xF0000000, True)
    elif case == "prd-entry-outside-ram":
        prd(ram, 0x1000, [(RAM - 512, 1024, True)])             # straddles the end of RAM
        issue(dev, ide.CMD_READ_DMA, lba=0, count=2)
        start_dma(dev, 0x1000, True)
    elif case == "prd-no-eot":
        prd(ram, 0x1000, [(0x10000, 2, False)] * 9000)          # 8192 entries, no end bit
        issue(dev, ide.CMD_READ_DMA_EXT, lba=0, count=64, ext=True)
        start_dma(dev, 0x1000, True)
    elif case == "prd-too-short":
        prd(ram, 0x1000, [(0x10000, 512, True)])
        issue(dev, ide.CMD_READ_DMA, lba=0, count=2)
        start_dma(dev, 0x1000, True)
        bm = dev.bm_read(2, 1)
        assert not bm & (BM_ST_ACTIVE | BM_ST_INTERRUPT | BM_ST_ERROR) and not line.level
        assert status(dev) & ST_DRQ                             # the drive still waits
        dev.control_write(0, 1, ide.DEVCTL_SRST)                # what a driver does next
        dev.control_write(0, 1, 0)
        assert status(dev) == ST_DRDY | ide.ST_DSC
    elif case == "unknown-command":
        issue(dev, 0xFF)
        assert line.level and status(dev) & ST_ERR and dev.read(0, 1, 1) == ERR_ABRT
    elif case == "bad-feature":
        issue(dev, ide.CMD_SET_FEATURES, count=ide.XFER_UDMA | 7, feature=ide.FEAT_XFER_MODE)
        assert status(dev) & ST_ERR and dev.read(0, 1, 1) == ERR_ABRT
    elif case == "readonly":
        ro = ide.PiixIde([RawImage(rig.path, readonly=True)], rig.lines)
        issue(ro, ide.CMD_WRITE_DMA, lba=0, count=1)
        assert status(ro) & ST_ERR and ro.read(0, 1, 1) == ERR_ABRT
    if case.startswith("prd-") and case != "prd-too-short":
        bm = dev.bm_read(2, 1)
        assert bm & BM_ST_ERROR and not bm & BM_ST_ACTIVE and line.level
        assert status(dev) & ST_ERR and dev.read(0, 1, 1) == ERR_ABRT
    assert any(ev.startswith(("ata-", "bm-")) for ev, _ in rig.logs) or case == "readonly"
    # the device still works afterwards
    issue(dev, ide.CMD_IDENTIFY)
    status(dev)
    assert len(pio_in(dev, 512)) == 512


def test_state_round_trip_mid_command(rig):
    dev, ram = rig.dev, rig.ram
    issue(dev, ide.CMD_READ_SECTORS, lba=40, count=2)
    status(dev)
    first = pio_in(dev, 256)
    dev2 = ide.PiixIde.from_state(dev.state(), [rig.img], rig.lines,
                                  ide.GuestRam(memoryview(ram), [(0, RAM, 0)]))
    assert first + pio_in(dev2, 256 + 512) == pattern(40, 2)
    # a DMA command issued, the successor starts it
    prd(ram, 0x1000, [(0x20000, 1024, True)])
    issue(dev2, ide.CMD_READ_DMA, lba=60, count=2)
    dev2.bm_write(4, 4, 0x1000)
    dev3 = ide.PiixIde.from_state(dev2.state(), [rig.img], rig.lines,
                                  ide.GuestRam(memoryview(ram), [(0, RAM, 0)]))
    dev3.bm_write(0, 1, BM_CMD_WRITE_MEMORY | BM_CMD_START)
    assert ram[0x20000:0x20400] == pattern(60, 2) and dev3.bm_read(2, 1) & BM_ST_INTERRUPT
    import msgpack
    assert msgpack.unpackb(msgpack.packb(dev3.state()), strict_map_key=False) == dev3.state()


def test_guest_ram_above_the_pci_hole():
    ram = bytearray(3 * 4096)
    g = ide.GuestRam(memoryview(ram), [(0, 8192, 0), (1 << 32, 4096, 8192)])
    spans = g.spans(1 << 32, 16)
    spans[0][:] = b"x" * 16
    assert ram[8192:8208] == b"x" * 16
    assert g.spans(8192, 1) is None and g.spans(8000, 500) is None
