"""PIIX3 IDE (PCI 00:01.1) with bus-master DMA, and ATA hard drives.

References: ATA/ATAPI-6 (T13 1410D rev 3b): 6.x register and protocol
descriptions, 8.x commands, 8.15 IDENTIFY DEVICE words; ACS-2 for the
48-bit and FLUSH CACHE EXT details; SFF-8038i rev 1.0 (bus master
programming interface: command/status/PRD registers, table 1 for the
Interrupt/Active bit combinations); Intel 82371SB (PIIX3) datasheet 290550,
2.4 (IDE configuration registers IDETIM at 0x40/0x42).

Both channels run in compatibility mode: primary at 0x1F0-0x1F7 + 0x3F6 on
IRQ 14, secondary at 0x170-0x177 + 0x376 on IRQ 15.  The bus-master
registers (8 per channel) sit behind BAR4, wherever the guest puts it.

Each channel has one INTRQ wire (`IrqLine`, a level): asserted while the
selected drive has an interrupt pending and nIEN is clear; a read of the
status register (not the alternate status) clears the pending interrupt,
and so does writing a command.  A DMA command runs to completion inside the
guest access that makes it startable (the command with the bus-master start
bit set, in either order): the data goes straight between the image and
guest RAM (memoryviews of the shared mapping, no copy), then the drive
interrupts.  The drive's registers and the command in flight are the
model's state(): a restarted actor re-applies the access that was not
committed, from the state before it, so the transfer is done again (same
data, same place) and completed once.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from .base import IrqLine, NullIrqLine, no_log
from .host import DeviceHost

# --- command block registers (offsets from 0x1F0 / 0x170), ATA-6 7.x -----------
REG_DATA = 0            # 16-bit PIO data (32-bit accesses move two words)
REG_ERROR = 1           # read: error; write: features
REG_FEATURE = 1
REG_NSECT = 2           # sector count
REG_LBAL = 3            # LBA 7:0 (CHS sector number)
REG_LBAM = 4            # LBA 15:8 (CHS cylinder low)
REG_LBAH = 5            # LBA 23:16 (CHS cylinder high)
REG_DEVICE = 6          # bit 4 DEV, bit 6 LBA, bits 3-0 LBA 27:24 / head
REG_STATUS = 7          # read: status (clears INTRQ); write: command
REG_COMMAND = 7
CMD_BLOCK_SIZE = 8
# control block (0x3F6 / 0x376)
REG_ALTSTATUS = 0       # read: alternate status (no side effect); write: device control
REG_DEVCTL = 0

DEVICE_DEV = 0x10       # selects device 1
DEVICE_LBA = 0x40       # LBA addressing (else CHS)

# Device control bits (ATA-6 7.9).
DEVCTL_NIEN = 0x02      # INTRQ disabled
DEVCTL_SRST = 0x04      # software reset of both devices
DEVCTL_HOB = 0x80       # reads return the previous ("high order") register contents

# Status bits (ATA-6 7.15).
ST_ERR = 0x01           # error: see the error register
ST_DRQ = 0x08           # data request: PIO data or DMA transfer pending
ST_DSC = 0x10           # obsolete "seek complete"; set as drives do
ST_DF = 0x20            # device fault
ST_DRDY = 0x40          # device ready
ST_BSY = 0x80           # busy
ST_READY = ST_DRDY | ST_DSC

# Error bits (ATA-6 7.11).
ERR_AMNF = 0x01         # after reset/diagnostic: 0x01 = device 0 passed
ERR_ABRT = 0x04         # command aborted
ERR_IDNF = 0x10         # address not found (outside the medium)
ERR_UNC = 0x40          # uncorrectable data error
DIAG_PASSED = 0x01

# Commands (ATA-6 8.x, ACS-2).
CMD_NOP = 0x00
CMD_RECALIBRATE = 0x10          # 0x10-0x1F
CMD_READ_SECTORS = 0x20
CMD_READ_SECTORS_NORETRY = 0x21
CMD_READ_SECTORS_EXT = 0x24
CMD_READ_DMA_EXT = 0x25
CMD_READ_MULTIPLE_EXT = 0x29
CMD_WRITE_SECTORS = 0x30
CMD_WRITE_SECTORS_NORETRY = 0x31
CMD_WRITE_SECTORS_EXT = 0x34
CMD_WRITE_DMA_EXT = 0x35
CMD_WRITE_MULTIPLE_EXT = 0x39
CMD_READ_VERIFY = 0x40
CMD_READ_VERIFY_NORETRY = 0x41
CMD_READ_VERIFY_EXT = 0x42
CMD_SEEK = 0x70
CMD_EXECUTE_DIAGNOSTIC = 0x90
CMD_INITIALIZE_PARAMS = 0x91
CMD_STANDBY_IMMEDIATE_OLD = 0x94
CMD_IDLE_IMMEDIATE_OLD = 0x95
CMD_STANDBY_OLD = 0x96
CMD_IDLE_OLD = 0x97
CMD_CHECK_POWER_OLD = 0x98
CMD_READ_MULTIPLE = 0xC4
CMD_WRITE_MULTIPLE = 0xC5
CMD_SET_MULTIPLE = 0xC6
CMD_READ_DMA = 0xC8
CMD_READ_DMA_NORETRY = 0xC9
CMD_WRITE_DMA = 0xCA
CMD_WRITE_DMA_NORETRY = 0xCB
CMD_STANDBY_IMMEDIATE = 0xE0
CMD_IDLE_IMMEDIATE = 0xE1
CMD_STANDBY = 0xE2
CMD_IDLE = 0xE3
CMD_CHECK_POWER = 0xE5
CMD_FLUSH_CACHE = 0xE7
CMD_FLUSH_CACHE_EXT = 0xEA
CMD_IDENTIFY = 0xEC
CMD_IDENTIFY_PACKET = 0xA1
CMD_SET_FEATURES = 0xEF

# SET FEATURES subcommands (ATA-6 8.36).
FEAT_WCACHE_ON = 0x02
FEAT_XFER_MODE = 0x03           # mode in the sector count register
FEAT_RLA_OFF = 0x55
FEAT_REVERT_OFF = 0x66
FEAT_WCACHE_OFF = 0x82
FEAT_RLA_ON = 0xAA
FEAT_REVERT_ON = 0xCC
XFER_PIO_DEFAULT = 0x00         # 0x00/0x01: PIO default (IORDY on/off)
XFER_PIO = 0x08                 # | mode
XFER_MWDMA = 0x20               # | mode
XFER_UDMA = 0x40                # | mode
PIO_MODES = 0x03                # word 64: PIO 3 and 4
MWDMA_MODES = 0x07              # word 63: multiword DMA 0-2
UDMA_MODES = 0x3F               # word 88: UDMA 0-5

SECTOR = 512
MAX_MULTIPLE = 16               # sectors per DRQ block for READ/WRITE MULTIPLE
DEFAULT_HEADS, DEFAULT_SECTORS = 16, 63
LBA28_LIMIT = 1 << 28

# --- bus-master IDE registers (SFF-8038i), 8 per channel behind BAR4 -----------
BM_COMMAND = 0          # bit 0 start/stop, bit 3 direction (1: the controller writes memory)
BM_STATUS = 2           # bit 0 active, 1 error (W1C), 2 interrupt (W1C), 5/6 drive DMA capable
BM_PRD = 4              # physical region descriptor table address (dword aligned)
BM_CHANNEL_SIZE = 8
BM_SIZE = 16            # BAR4's size

BM_CMD_START = 0x01
BM_CMD_WRITE_MEMORY = 0x08      # direction: device -> memory (a disk read)
BM_ST_ACTIVE = 0x01
BM_ST_ERROR = 0x02
BM_ST_INTERRUPT = 0x04
BM_ST_DMA_CAPABLE = 0x60        # bits 5 (drive 0) and 6 (drive 1): firmware says so
BM_ST_SIMPLEX = 0x80            # read-only 0: both channels may DMA at once

PRD_EOT = 0x8000                # flags word bit 15: last entry
PRD_MAX_ENTRIES = 8192          # a table may not cross a 64 KiB boundary: 8192 entries at most
PRD_BYTES = 0x10000             # a count of 0 means 64 KiB

# PCI identity of the function (00:01.1), PIIX3 datasheet 2.4.
PIIX3_IDE_DEVICE = 0x7010
IDE_CLASS = 0x010180            # mass storage, IDE, prog-if 0x80: bus master, both channels legacy
BAR4 = 4
BAR4_FIRMWARE_BASE = 0xC000     # what the firmware (we, as SeaBIOS would) assigns
IDETIM_PRIMARY = 0x40           # IDETIM; bit 15 enables the channel's decode
IDETIM_SECONDARY = 0x42
IDETIM_DECODE_ENABLE = 0x8000

# Legacy resources of the two channels.
CHANNELS = ((0x1F0, 0x3F6, 14), (0x170, 0x376, 15))

MODEL = "BHIVE HARDDISK"
FIRMWARE = "0.1"


class Image(Protocol):
    """What the IDE model needs from an image (bhive.block.open_image)."""
    size: int
    readonly: bool

    def readinto(self, offset: int, buf) -> int: ...
    def write(self, offset: int, buf) -> int: ...
    def flush(self) -> None: ...


class GuestRam:
    """Guest-physical addresses onto the shared RAM mapping, through the
    loader's slots (gpa, size, file offset); the PCI hole is not RAM."""

    def __init__(self, view: memoryview, slots: list[tuple[int, int, int]]):
        self.view = view
        self.slots = slots

    def spans(self, gpa: int, length: int) -> list[memoryview] | None:
        """Views covering [gpa, gpa+length), or None if any byte is not RAM."""
        out = []
        while length > 0:
            for sgpa, ssize, soff in self.slots:
                if sgpa <= gpa < sgpa + ssize:
                    n = min(length, sgpa + ssize - gpa)
                    start = soff + gpa - sgpa
                    out.append(self.view[start:start + n])
                    gpa += n
                    length -= n
                    break
            else:
                return None
        return out

    def read(self, gpa: int, length: int) -> bytes | None:
        spans = self.spans(gpa, length)
        return None if spans is None else b"".join(bytes(s) for s in spans)


def ata_string(text: str, length: int) -> bytes:
    """An IDENTIFY string: space padded, two characters per word with the
    first in the high byte (ATA-6 3.2.9)."""
    raw = text.encode("ascii")[:length].ljust(length, b" ")
    return bytes(raw[i ^ 1] for i in range(length))


def serial_number(index: int, size: int) -> str:
    """A stable serial: the drive's index and its capacity."""
    return f"BH{index:02d}{hashlib.sha1(str(size).encode()).hexdigest()[:12].upper()}"


@dataclass
class Transfer:
    """A data command in progress on one drive."""
    command: int
    lba: int                    # next sector to transfer
    remaining: int              # sectors still to transfer
    block: int                  # sectors per DRQ block (PIO)
    write: bool                 # host -> device
    dma: bool
    buf: bytearray = field(default_factory=bytearray)   # PIO block
    pos: int = 0                # bytes of `buf` already moved

    def state(self) -> dict:
        return {"command": self.command, "lba": self.lba, "remaining": self.remaining, "block": self.block,
                "write": self.write, "dma": self.dma, "buf": bytes(self.buf), "pos": self.pos}

    @classmethod
    def from_state(cls, s: dict) -> "Transfer":
        return cls(s["command"], s["lba"], s["remaining"], s["block"], s["write"], s["dma"],
                   bytearray(s["buf"]), s["pos"])


@dataclass
class DriveRegisters:
    """One ATA device's registers (each device latches every task-file
    write; reads come from the selected one) and its settings."""
    feature: int = 0
    nsect: int = 0
    lbal: int = 0
    lbam: int = 0
    lbah: int = 0
    hob_feature: int = 0
    hob_nsect: int = 0
    hob_lbal: int = 0
    hob_lbam: int = 0
    hob_lbah: int = 0
    device: int = 0
    status: int = ST_READY
    error: int = DIAG_PASSED
    intrq: bool = False         # interrupt pending (INTRQ asserted unless nIEN)
    multiple: int = 0           # sectors per block for READ/WRITE MULTIPLE (0: not set)
    xfer_mode: int = XFER_MWDMA | 2     # the mode SET FEATURES selected (or the default)
    heads: int = DEFAULT_HEADS
    sectors: int = DEFAULT_SECTORS
    write_cache: bool = True
    standby: bool = False
    transfer: Transfer | None = None


REG_FIELDS = ("feature", "nsect", "lbal", "lbam", "lbah", "hob_feature", "hob_nsect", "hob_lbal",
              "hob_lbam", "hob_lbah", "device", "status", "error", "intrq", "multiple", "xfer_mode",
              "heads", "sectors", "write_cache", "standby")


class AtaDrive:
    """An ATA hard drive on an image; `image` None: no device there."""

    def __init__(self, index: int, image: Image | None):
        self.index = index
        self.image = image
        self.regs = DriveRegisters()
        if image is None:
            self.regs.status = 0
            self.regs.error = 0

    @property
    def present(self) -> bool:
        return self.image is not None

    @property
    def total_sectors(self) -> int:
        return self.image.size // SECTOR if self.image is not None else 0

    def set_signature(self) -> None:
        """Registers after a reset or EXECUTE DEVICE DIAGNOSTIC (ATA-6 9.12):
        count 1, LBA 1/0/0 (an ATA device), device 0."""
        r = self.regs
        r.nsect, r.lbal, r.lbam, r.lbah, r.device = 1, 1, 0, 0, 0
        r.hob_nsect = r.hob_lbal = r.hob_lbam = r.hob_lbah = r.hob_feature = 0

    def identify(self) -> bytes:
        """IDENTIFY DEVICE data (ATA-6 8.15, table 14; ACS-2 7.16)."""
        r = self.regs
        total = self.total_sectors
        w = [0] * 256
        cyls = min(total // (DEFAULT_HEADS * DEFAULT_SECTORS), 16383)
        w[0] = 0x0040                               # fixed, not removable, ATA
        w[1], w[3], w[6] = cyls, DEFAULT_HEADS, DEFAULT_SECTORS
        w[47] = 0x8000 | MAX_MULTIPLE               # READ/WRITE MULTIPLE: up to 16 sectors
        w[49] = (1 << 11) | (1 << 9) | (1 << 8)     # IORDY, LBA, DMA
        w[50] = 0x4000
        w[51] = 0x0200                              # obsolete PIO timing mode 2
        w[53] = 0x0007                              # words 54-58, 64-70 and 88 valid
        cur_cyls = min(total // (r.heads * r.sectors), 65535) if r.heads and r.sectors else 0
        w[54], w[55], w[56] = cur_cyls, r.heads, r.sectors
        chs = cur_cyls * r.heads * r.sectors
        w[57], w[58] = chs & 0xFFFF, chs >> 16
        w[59] = (0x100 | r.multiple) if r.multiple else 0
        lba28 = min(total, LBA28_LIMIT - 1)
        w[60], w[61] = lba28 & 0xFFFF, lba28 >> 16
        mwdma_sel = (1 << (r.xfer_mode & 7)) if r.xfer_mode & 0xF8 == XFER_MWDMA else 0
        udma_sel = (1 << (r.xfer_mode & 7)) if r.xfer_mode & 0xF8 == XFER_UDMA else 0
        w[63] = MWDMA_MODES | (mwdma_sel << 8)
        w[64] = PIO_MODES
        w[65] = w[66] = w[67] = w[68] = 120         # cycle times (ns)
        w[80] = 0x00F0                              # ATA/ATAPI-4 to -7
        w[81] = 0x0016
        w[82] = (1 << 14) | (1 << 5)                # NOP, write cache
        w[83] = (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10)   # FLUSH CACHE EXT, FLUSH CACHE, 48-bit
        w[84] = 0x4000
        w[85] = (1 << 14) | ((1 << 5) if r.write_cache else 0)
        w[86] = (1 << 13) | (1 << 12) | (1 << 10)
        w[87] = 0x4000
        w[88] = UDMA_MODES | (udma_sel << 8)
        w[93] = 0x6001 if self.index % 2 == 0 else 0x4100   # reset results, 80-wire cable detected
        w[100:104] = [(total >> s) & 0xFFFF for s in (0, 16, 32, 48)]
        data = bytearray(struct.pack("<256H", *w))
        data[20:40] = ata_string(serial_number(self.index, total), 20)
        data[46:54] = ata_string(FIRMWARE, 8)
        data[54:94] = ata_string(MODEL, 40)
        data[510] = 0xA5                            # integrity word: signature, then checksum
        data[511] = (-sum(data[:511])) & 0xFF
        return bytes(data)

    def state(self) -> dict:
        s = {k: getattr(self.regs, k) for k in REG_FIELDS}
        s["transfer"] = self.regs.transfer.state() if self.regs.transfer else None
        return s

    def restore(self, s: dict) -> None:
        for k in REG_FIELDS:
            setattr(self.regs, k, s[k])
        self.regs.transfer = Transfer.from_state(s["transfer"]) if s["transfer"] else None


class IdeChannel:
    """One channel: two devices sharing the task-file registers and INTRQ,
    the device control register, and its bus-master registers."""

    def __init__(self, number: int, drives: list[AtaDrive], irq: IrqLine, ram: GuestRam | None,
                 bus_master_enabled: Callable[[], bool], log: Callable[..., None]):
        self.number = number
        self.drives = drives
        self.irq = irq
        self.ram = ram
        self.bus_master_enabled = bus_master_enabled
        self.log = log
        self.devctl = 0
        self.select = 0             # DEV bit of the last device register write
        self.line = False           # what INTRQ is driven to
        self.bm_command = 0
        self.bm_status = sum(0x20 << i for i, d in enumerate(drives) if d.present)
        self.bm_prd = 0
        self.counters = {"dma": 0, "pio_sectors": 0, "errors": 0}

    # -- helpers -------------------------------------------------------------
    @property
    def selected(self) -> AtaDrive:
        return self.drives[self.select]

    @property
    def empty(self) -> bool:
        return not any(d.present for d in self.drives)

    def update_irq(self) -> None:
        """INTRQ follows the selected device's pending interrupt, gated by nIEN."""
        level = self.selected.regs.intrq and not self.devctl & DEVCTL_NIEN
        if level and not self.line:
            self.bm_status |= BM_ST_INTERRUPT      # the controller latches the rising edge
        if level != self.line:
            self.line = level
            self.irq.set_level(level)

    def _interrupt(self, drive: AtaDrive) -> None:
        drive.regs.intrq = True
        self.update_irq()

    def _error(self, drive: AtaDrive, error: int, why: str, **fields) -> None:
        """End the command with ERR: status DRDY|ERR, the error bits, an interrupt."""
        r = drive.regs
        r.error = error
        r.status = ST_READY | ST_ERR
        r.transfer = None
        self.counters["errors"] += 1
        self.log("ata-error", channel=self.number, drive=drive.index, error=f"{error:#x}", why=why,
                 **fields)
        self._interrupt(drive)

    def _status_of(self, drive: AtaDrive) -> int:
        # QEMU's convention for missing devices: 0 with no drive on the
        # channel or when the missing device 1 is selected.
        if self.empty or not drive.present:
            return 0
        return drive.regs.status

    # -- command block -----------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == REG_DATA:
            return self._data_read(size)
        drive = self.selected
        r = drive.regs
        hob = bool(self.devctl & DEVCTL_HOB)
        if offset == REG_STATUS:
            value = self._status_of(drive)
            if drive.present and r.intrq:
                r.intrq = False
                self.update_irq()
            return value
        if self.empty:
            return 0
        if offset == REG_ERROR:
            if not drive.present:
                return 0
            return r.hob_feature if hob else r.error
        if offset == REG_DEVICE:
            return r.device
        name = {REG_NSECT: "nsect", REG_LBAL: "lbal", REG_LBAM: "lbam", REG_LBAH: "lbah"}[offset]
        return getattr(r, f"hob_{name}" if hob else name)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == REG_DATA:
            self._data_write(size, value)
            return
        value &= 0xFF
        if offset == REG_COMMAND:
            self._command(value)
            return
        self.devctl &= ~DEVCTL_HOB        # a task-file write clears HOB (ATA-6 7.9)
        for drive in self.drives:
            r = drive.regs
            if offset == REG_DEVICE:
                r.device = value
                continue
            name = {REG_FEATURE: "feature", REG_NSECT: "nsect", REG_LBAL: "lbal",
                    REG_LBAM: "lbam", REG_LBAH: "lbah"}[offset]
            setattr(r, f"hob_{name}", getattr(r, name))      # the 48-bit two-deep FIFO
            setattr(r, name, value)
        if offset == REG_DEVICE:
            self.select = (value & DEVICE_DEV) >> 4
            self.update_irq()

    # -- control block -----------------------------------------------------
    def read_control(self, size: int) -> int:
        return self._status_of(self.selected)     # alternate status: no side effect

    def write_control(self, size: int, value: int) -> None:
        old, self.devctl = self.devctl, value & (DEVCTL_NIEN | DEVCTL_SRST | DEVCTL_HOB)
        if value & DEVCTL_SRST and not old & DEVCTL_SRST:
            for drive in self.drives:
                if drive.present:
                    drive.regs.status = ST_BSY | ST_DSC
                    drive.regs.transfer = None
                    drive.regs.intrq = False
        elif old & DEVCTL_SRST and not value & DEVCTL_SRST:
            self._reset_done()
        self.update_irq()

    def _reset_done(self) -> None:
        """End of a software reset: every device shows its signature,
        diagnostics passed, ready; no interrupt (ATA-6 9.2)."""
        self.select = 0
        for drive in self.drives:
            r = drive.regs
            r.transfer = None
            r.intrq = False
            if drive.present:
                drive.set_signature()
                r.status = ST_READY
                r.error = DIAG_PASSED
            else:
                r.status, r.error = 0, 0

    # -- PIO data ------------------------------------------------------------
    def _data_read(self, size: int) -> int:
        drive = self.selected
        t = drive.regs.transfer
        if not drive.regs.status & ST_DRQ or t is None or t.write or t.dma:
            self.log("ata-data-read-without-drq", channel=self.number, drive=drive.index)
            return 0xFFFFFFFF >> (32 - 8 * size) if self.empty else 0
        n = min(size, len(t.buf) - t.pos)
        value = int.from_bytes(t.buf[t.pos:t.pos + n], "little")
        t.pos += n
        if t.pos >= len(t.buf):
            self._pio_block_done(drive)
        return value

    def _data_write(self, size: int, value: int) -> None:
        drive = self.selected
        t = drive.regs.transfer
        if not drive.regs.status & ST_DRQ or t is None or not t.write or t.dma:
            self.log("ata-data-write-without-drq", channel=self.number, drive=drive.index)
            return
        n = min(size, len(t.buf) - t.pos)
        t.buf[t.pos:t.pos + n] = (value & ((1 << (8 * n)) - 1)).to_bytes(n, "little")
        t.pos += n
        if t.pos >= len(t.buf):
            self._pio_block_done(drive)

    def _pio_block_done(self, drive: AtaDrive) -> None:
        r = drive.regs
        t = r.transfer
        sectors = len(t.buf) // SECTOR
        if t.command == CMD_IDENTIFY:
            r.transfer = None
            r.status = ST_READY
            return
        if t.write:
            try:
                drive.image.write(t.lba * SECTOR, t.buf)
            except Exception as exc:  # ImageError / OSError: the medium failed
                self._error(drive, ERR_ABRT, "image-write", detail=str(exc))
                return
        t.lba += sectors
        t.remaining -= sectors
        self.counters["pio_sectors"] += sectors
        if t.remaining <= 0:
            r.transfer = None
            r.status = ST_READY
            if t.write:
                self._interrupt(drive)          # writes interrupt after the last block
            return
        if not self._pio_load_block(drive):
            return
        self._interrupt(drive)                  # the next block is ready

    def _pio_load_block(self, drive: AtaDrive) -> bool:
        r = drive.regs
        t = r.transfer
        n = min(t.block, t.remaining)
        t.pos = 0
        t.buf = bytearray(n * SECTOR)
        if not t.write:
            try:
                got = drive.image.readinto(t.lba * SECTOR, memoryview(t.buf))
            except Exception as exc:
                self._error(drive, ERR_UNC, "image-read", detail=str(exc))
                return False
            if got < len(t.buf):
                t.buf[got:] = bytes(len(t.buf) - got)
        r.status = ST_READY | ST_DRQ
        return True

    # -- commands ----------------------------------------------------------
    def _command(self, cmd: int) -> None:
        drive = self.selected
        r = drive.regs
        if not drive.present:
            # Nothing answers for a missing device (QEMU ignores it too).
            self.log("ata-command-to-absent-drive", channel=self.number, drive=drive.index,
                     command=f"{cmd:#x}")
            return
        if r.status & (ST_BSY | ST_DRQ) and cmd != CMD_EXECUTE_DIAGNOSTIC:
            # ATA-6 6.x: a command written while BSY or DRQ is set is not
            # accepted; the one in progress goes on.
            self.log("ata-command-while-busy", channel=self.number, drive=drive.index,
                     command=f"{cmd:#x}", status=f"{r.status:#x}")
            return
        r.intrq = False                 # writing the command register negates INTRQ
        self.update_irq()
        r.error = 0
        handler = COMMANDS.get(cmd)
        if handler is None:
            self._error(drive, ERR_ABRT, "unsupported-command", command=f"{cmd:#x}")
            return
        handler(self, drive, cmd)

    def _address(self, drive: AtaDrive, ext: bool) -> tuple[int, int] | None:
        """(first LBA, sector count) of a data command, or None (IDNF given)."""
        r = drive.regs
        if ext:
            lba = (r.hob_lbah << 40 | r.hob_lbam << 32 | r.hob_lbal << 24 | r.lbah << 16 | r.lbam << 8
                   | r.lbal)
            count = (r.hob_nsect << 8 | r.nsect) or 65536
        elif r.device & DEVICE_LBA:
            lba = (r.device & 0x0F) << 24 | r.lbah << 16 | r.lbam << 8 | r.lbal
            count = r.nsect or 256
        else:
            cyl, head, sector = r.lbah << 8 | r.lbam, r.device & 0x0F, r.lbal
            if not 1 <= sector <= r.sectors or head >= r.heads:
                self._error(drive, ERR_IDNF, "bad-chs", cyl=cyl, head=head, sector=sector)
                return None
            lba = (cyl * r.heads + head) * r.sectors + sector - 1
            count = r.nsect or 256
        if lba + count > drive.total_sectors:
            self._error(drive, ERR_IDNF, "lba-out-of-range", lba=lba, count=count,
                        sectors=drive.total_sectors)
            return None
        return lba, count

    def cmd_pio(self, drive: AtaDrive, cmd: int) -> None:
        ext = cmd in (CMD_READ_SECTORS_EXT, CMD_WRITE_SECTORS_EXT, CMD_READ_MULTIPLE_EXT,
                      CMD_WRITE_MULTIPLE_EXT)
        write = cmd in (CMD_WRITE_SECTORS, CMD_WRITE_SECTORS_NORETRY, CMD_WRITE_SECTORS_EXT,
                        CMD_WRITE_MULTIPLE, CMD_WRITE_MULTIPLE_EXT)
        multiple = cmd in (CMD_READ_MULTIPLE, CMD_READ_MULTIPLE_EXT, CMD_WRITE_MULTIPLE,
                           CMD_WRITE_MULTIPLE_EXT)
        if multiple and not drive.regs.multiple:
            self._error(drive, ERR_ABRT, "multiple-mode-not-set", command=f"{cmd:#x}")
            return
        if write and drive.image.readonly:
            self._error(drive, ERR_ABRT, "read-only-image", command=f"{cmd:#x}")
            return
        where = self._address(drive, ext)
        if where is None:
            return
        lba, count = where
        drive.regs.transfer = Transfer(cmd, lba, count, drive.regs.multiple if multiple else 1, write, False)
        if not self._pio_load_block(drive):
            return
        if not write:
            self._interrupt(drive)        # data in: interrupt when each block is ready

    def cmd_dma(self, drive: AtaDrive, cmd: int) -> None:
        ext = cmd in (CMD_READ_DMA_EXT, CMD_WRITE_DMA_EXT)
        write = cmd in (CMD_WRITE_DMA, CMD_WRITE_DMA_NORETRY, CMD_WRITE_DMA_EXT)
        if write and drive.image.readonly:
            self._error(drive, ERR_ABRT, "read-only-image", command=f"{cmd:#x}")
            return
        where = self._address(drive, ext)
        if where is None:
            return
        lba, count = where
        drive.regs.transfer = Transfer(cmd, lba, count, count, write, True)
        drive.regs.status = ST_READY | ST_DRQ
        if self.bm_command & BM_CMD_START:
            self.run_dma()

    def cmd_identify(self, drive: AtaDrive, cmd: int) -> None:
        r = drive.regs
        r.transfer = Transfer(cmd, 0, 1, 1, False, False, bytearray(drive.identify()))
        r.status = ST_READY | ST_DRQ
        self._interrupt(drive)

    def cmd_identify_packet(self, drive: AtaDrive, cmd: int) -> None:
        # An ATA device aborts IDENTIFY PACKET DEVICE, leaving its signature.
        drive.set_signature()
        self._error(drive, ERR_ABRT, "not-atapi")

    def cmd_done(self, drive: AtaDrive, cmd: int) -> None:
        """Commands with nothing to transfer that a drive completes at once:
        RECALIBRATE, SEEK, READ VERIFY (the range is checked), IDLE."""
        if cmd in (CMD_READ_VERIFY, CMD_READ_VERIFY_NORETRY, CMD_READ_VERIFY_EXT):
            if self._address(drive, cmd == CMD_READ_VERIFY_EXT) is None:
                return
        if cmd in (CMD_IDLE, CMD_IDLE_IMMEDIATE, CMD_IDLE_OLD, CMD_IDLE_IMMEDIATE_OLD):
            drive.regs.standby = False
        if cmd in (CMD_STANDBY, CMD_STANDBY_IMMEDIATE, CMD_STANDBY_OLD, CMD_STANDBY_IMMEDIATE_OLD):
            drive.regs.standby = True
        drive.regs.status = ST_READY
        self._interrupt(drive)

    def cmd_check_power(self, drive: AtaDrive, cmd: int) -> None:
        drive.regs.nsect = 0x00 if drive.regs.standby else 0xFF    # standby / active or idle
        drive.regs.status = ST_READY
        self._interrupt(drive)

    def cmd_flush(self, drive: AtaDrive, cmd: int) -> None:
        try:
            drive.image.flush()
        except Exception as exc:
            self._error(drive, ERR_ABRT, "image-flush", detail=str(exc))
            return
        drive.regs.status = ST_READY
        self._interrupt(drive)

    def cmd_set_multiple(self, drive: AtaDrive, cmd: int) -> None:
        n = drive.regs.nsect
        if n == 0 or n > MAX_MULTIPLE or n & (n - 1):
            self._error(drive, ERR_ABRT, "bad-multiple-count", count=n)
            return
        drive.regs.multiple = n
        drive.regs.status = ST_READY
        self._interrupt(drive)

    def cmd_initialize_params(self, drive: AtaDrive, cmd: int) -> None:
        r = drive.regs
        r.heads, r.sectors = (r.device & 0x0F) + 1, r.nsect
        r.status = ST_READY
        self._interrupt(drive)

    def cmd_set_features(self, drive: AtaDrive, cmd: int) -> None:
        r = drive.regs
        feature = r.feature
        if feature == FEAT_XFER_MODE:
            mode = r.nsect
            kind, n = mode & 0xF8, mode & 7
            ok = (mode in (0, 1) or (kind == XFER_PIO and n <= 4) or
                  (kind == XFER_MWDMA and MWDMA_MODES >> n & 1) or (kind == XFER_UDMA and UDMA_MODES >> n & 1))
            if not ok:
                self._error(drive, ERR_ABRT, "bad-transfer-mode", mode=f"{mode:#x}")
                return
            if kind in (XFER_MWDMA, XFER_UDMA):
                r.xfer_mode = mode        # the DMA mode words 63/88 report as selected
            self.log("ata-transfer-mode", channel=self.number, drive=drive.index, mode=f"{mode:#x}")
        elif feature in (FEAT_WCACHE_ON, FEAT_WCACHE_OFF):
            r.write_cache = feature == FEAT_WCACHE_ON
        elif feature not in (FEAT_RLA_ON, FEAT_RLA_OFF, FEAT_REVERT_ON, FEAT_REVERT_OFF):
            self._error(drive, ERR_ABRT, "unsupported-feature", feature=f"{feature:#x}")
            return
        r.status = ST_READY
        self._interrupt(drive)

    def cmd_diagnostic(self, drive: AtaDrive, cmd: int) -> None:
        """EXECUTE DEVICE DIAGNOSTIC: both devices run it, device 0 reports."""
        self._reset_done()
        for d in self.drives:
            if d.present:
                d.regs.error = DIAG_PASSED
        self._interrupt(self.drives[0] if self.drives[0].present else drive)

    # -- bus master ---------------------------------------------------------
    def bm_read(self, offset: int, size: int) -> int:
        regs = bytearray(8)
        regs[BM_COMMAND] = self.bm_command
        regs[BM_STATUS] = self.bm_status
        struct.pack_into("<I", regs, BM_PRD, self.bm_prd)
        return int.from_bytes(regs[offset:offset + size].ljust(size, b"\xff"), "little")

    def bm_write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            at, byte = offset + i, (value >> (8 * i)) & 0xFF
            if at == BM_COMMAND:
                self._bm_command(byte)
            elif at == BM_STATUS:
                st = self.bm_status
                st &= ~(byte & (BM_ST_ERROR | BM_ST_INTERRUPT))          # write 1 to clear
                st = (st & ~BM_ST_DMA_CAPABLE) | (byte & BM_ST_DMA_CAPABLE)
                self.bm_status = st
            elif BM_PRD <= at < BM_PRD + 4:
                shift = 8 * (at - BM_PRD)
                prd = (self.bm_prd & ~(0xFF << shift)) | (byte << shift)
                self.bm_prd = prd & 0xFFFFFFFC          # dword aligned: bits 1-0 read 0
            # offsets 1, 3 and beyond are not decoded

    def _bm_command(self, byte: int) -> None:
        old = self.bm_command
        if old & BM_CMD_START and byte & BM_CMD_WRITE_MEMORY != old & BM_CMD_WRITE_MEMORY:
            self.log("bm-direction-change-while-active", channel=self.number)
            byte = (byte & ~BM_CMD_WRITE_MEMORY) | (old & BM_CMD_WRITE_MEMORY)
        self.bm_command = byte & (BM_CMD_START | BM_CMD_WRITE_MEMORY)
        if byte & BM_CMD_START and not self.bm_status & BM_ST_ACTIVE:
            # (re)starts the engine whenever it is not active (as QEMU does)
            self.bm_status |= BM_ST_ACTIVE
            self.run_dma()
        elif not byte & BM_CMD_START and old & BM_CMD_START:
            self.bm_status &= ~BM_ST_ACTIVE           # stopping aborts the engine's side

    def _dma_drive(self) -> AtaDrive | None:
        for d in self.drives:
            t = d.regs.transfer
            if t is not None and t.dma:
                return d
        return None

    def run_dma(self) -> None:
        """Move a started DMA command's data through the PRD table."""
        drive = self._dma_drive()
        if drive is None or not self.bm_status & BM_ST_ACTIVE:
            return
        t = drive.regs.transfer
        if not self.bus_master_enabled():
            self.log("bm-master-disabled", channel=self.number, detail="PCI COMMAND bit 2 clear: no DMA")
            return
        if self.ram is None:
            self.log("bm-no-ram", channel=self.number)
            return
        if bool(self.bm_command & BM_CMD_WRITE_MEMORY) == t.write:
            self.log("bm-direction-mismatch", channel=self.number, command=f"{t.command:#x}")
        total = t.remaining * SECTOR
        disk = t.lba * SECTOR
        done = 0
        exhausted = False
        entry = 0
        while done < total:
            if entry >= PRD_MAX_ENTRIES:
                return self._bm_fail(drive, "prd-no-end-of-table", prd=self.bm_prd, entries=entry)
            raw = self.ram.read(self.bm_prd + 8 * entry, 8)
            if raw is None:
                return self._bm_fail(drive, "prd-table-outside-ram", prd=self.bm_prd + 8 * entry)
            base, count, flags = struct.unpack("<IHH", raw)
            base &= ~1
            count = count or PRD_BYTES
            n = min(count, total - done)
            spans = self.ram.spans(base, n)
            if spans is None:
                return self._bm_fail(drive, "prd-entry-outside-ram", base=base, count=count)
            try:
                for span in spans:
                    if t.write:
                        drive.image.write(disk + done, span)
                    else:
                        got = drive.image.readinto(disk + done, span)
                        if got < len(span):
                            span[got:] = bytes(len(span) - got)
                    done += len(span)
            except Exception as exc:
                return self._bm_fail(drive, "image-io", detail=str(exc), unc=not t.write)
            entry += 1
            if flags & PRD_EOT:
                exhausted = n == count
                break
        if done < total:
            # SFF-8038i table 1: PRDs smaller than the transfer: Active and
            # Interrupt both clear, the drive still waits for its data.
            self.bm_status &= ~BM_ST_ACTIVE
            self.log("bm-prd-too-short", channel=self.number, bytes=done, wanted=total)
            t.lba += done // SECTOR
            t.remaining -= done // SECTOR
            return
        self.counters["dma"] += 1
        drive.regs.transfer = None
        drive.regs.status = ST_READY
        if exhausted:
            self.bm_status &= ~BM_ST_ACTIVE
        self._interrupt(drive)

    def _bm_fail(self, drive: AtaDrive, why: str, unc: bool = False, **fields) -> None:
        """A master abort on the PCI side: the bus-master error bit, the
        engine stops, and the drive ends the command with an error."""
        self.bm_status = (self.bm_status | BM_ST_ERROR) & ~BM_ST_ACTIVE
        self._error(drive, ERR_UNC if unc else ERR_ABRT, why, **fields)

    # -- state ---------------------------------------------------------------
    def state(self) -> dict:
        return {"devctl": self.devctl, "select": self.select, "line": self.line,
                "bm_command": self.bm_command, "bm_status": self.bm_status, "bm_prd": self.bm_prd,
                "drives": [d.state() for d in self.drives], "counters": dict(self.counters)}

    def restore(self, s: dict) -> None:
        self.devctl, self.select, self.line = s["devctl"], s["select"], s["line"]
        self.bm_command, self.bm_status, self.bm_prd = s["bm_command"], s["bm_status"], s["bm_prd"]
        for d, ds in zip(self.drives, s["drives"]):
            d.restore(ds)
        self.counters = dict(s["counters"])


COMMANDS: dict[int, Callable[[IdeChannel, AtaDrive, int], None]] = {}
for _c in (CMD_READ_SECTORS, CMD_READ_SECTORS_NORETRY, CMD_READ_SECTORS_EXT, CMD_WRITE_SECTORS,
           CMD_WRITE_SECTORS_NORETRY, CMD_WRITE_SECTORS_EXT, CMD_READ_MULTIPLE, CMD_READ_MULTIPLE_EXT,
           CMD_WRITE_MULTIPLE, CMD_WRITE_MULTIPLE_EXT):
    COMMANDS[_c] = IdeChannel.cmd_pio
for _c in (CMD_READ_DMA, CMD_READ_DMA_NORETRY, CMD_READ_DMA_EXT, CMD_WRITE_DMA, CMD_WRITE_DMA_NORETRY,
           CMD_WRITE_DMA_EXT):
    COMMANDS[_c] = IdeChannel.cmd_dma
for _c in [CMD_SEEK, CMD_READ_VERIFY, CMD_READ_VERIFY_NORETRY, CMD_READ_VERIFY_EXT, CMD_IDLE,
           CMD_IDLE_IMMEDIATE, CMD_IDLE_OLD, CMD_IDLE_IMMEDIATE_OLD, CMD_STANDBY, CMD_STANDBY_IMMEDIATE,
           CMD_STANDBY_OLD, CMD_STANDBY_IMMEDIATE_OLD] + list(range(0x10, 0x20)):
    COMMANDS[_c] = IdeChannel.cmd_done
COMMANDS.update({
    CMD_IDENTIFY: IdeChannel.cmd_identify,
    CMD_IDENTIFY_PACKET: IdeChannel.cmd_identify_packet,
    CMD_CHECK_POWER: IdeChannel.cmd_check_power,
    CMD_CHECK_POWER_OLD: IdeChannel.cmd_check_power,
    CMD_FLUSH_CACHE: IdeChannel.cmd_flush,
    CMD_FLUSH_CACHE_EXT: IdeChannel.cmd_flush,
    CMD_SET_MULTIPLE: IdeChannel.cmd_set_multiple,
    CMD_INITIALIZE_PARAMS: IdeChannel.cmd_initialize_params,
    CMD_SET_FEATURES: IdeChannel.cmd_set_features,
    CMD_EXECUTE_DIAGNOSTIC: IdeChannel.cmd_diagnostic,
})


class ControlBlock:
    """A channel's control block (0x3F6/0x376): alternate status / device control."""

    def __init__(self, channel: IdeChannel):
        self.channel = channel

    def read(self, offset: int, size: int) -> int:
        return self.channel.read_control(size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.channel.write_control(size, value)


class BusMasterBlock:
    """The 16 bus-master bytes behind BAR4 (channel 0 at 0, channel 1 at 8)."""

    def __init__(self, ide: "PiixIde"):
        self.ide = ide

    def read(self, offset: int, size: int) -> int:
        return self.ide.bm_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.ide.bm_write(offset, size, value)


class PiixIde:
    """The PIIX3 IDE function: two channels, four drive slots.

    Wiring: images[0..3] (None: no drive), irqs[0..1] (IRQ 14 and 15),
    ram (GuestRam for DMA), bus_master_enabled() (PCI COMMAND bit 2),
    log(event, **fields).  Guest accesses: read/write(channel, offset,
    size[, value]) for the command block, control_read/control_write for
    the device control register, bm_read/bm_write(offset, size[, value])
    for the 16 bytes behind BAR4.
    """

    def __init__(self, images: list[Image | None], irqs: list[IrqLine] | None = None,
                 ram: GuestRam | None = None, bus_master_enabled: Callable[[], bool] = lambda: True,
                 log: Callable[..., None] = no_log):
        images = list(images) + [None] * (4 - len(images))
        irqs = irqs or [NullIrqLine(), NullIrqLine()]
        self.log = log
        self.drives = [AtaDrive(i, images[i]) for i in range(4)]
        self.channels = [IdeChannel(n, self.drives[2 * n:2 * n + 2], irqs[n], ram, bus_master_enabled, log)
                         for n in range(2)]
        for drive in self.drives:
            if drive.present:
                drive.set_signature()
        self.controls = [ControlBlock(ch) for ch in self.channels]
        self.bus_master = BusMasterBlock(self)

    def read(self, channel: int, offset: int, size: int) -> int:
        return self.channels[channel].read(offset, size)

    def write(self, channel: int, offset: int, size: int, value: int) -> None:
        self.channels[channel].write(offset, size, value)

    def control_read(self, channel: int, size: int) -> int:
        return self.channels[channel].read_control(size)

    def control_write(self, channel: int, size: int, value: int) -> None:
        self.channels[channel].write_control(size, value)

    def bm_read(self, offset: int, size: int) -> int:
        if not 0 <= offset < BM_SIZE:
            return (1 << (8 * size)) - 1
        ch = self.channels[offset // BM_CHANNEL_SIZE]
        return ch.bm_read(offset % BM_CHANNEL_SIZE, size)

    def bm_write(self, offset: int, size: int, value: int) -> None:
        if not 0 <= offset < BM_SIZE:
            return
        self.channels[offset // BM_CHANNEL_SIZE].bm_write(offset % BM_CHANNEL_SIZE, size, value)

    def state(self) -> dict[str, Any]:
        return {"channels": [c.state() for c in self.channels]}

    @classmethod
    def from_state(cls, state: dict[str, Any], images, irqs=None, ram=None,
                   bus_master_enabled: Callable[[], bool] = lambda: True,
                   log: Callable[..., None] = no_log) -> "PiixIde":
        """Rebuild from state(); the lines are not re-driven (the host does)."""
        dev = cls(images, irqs, ram, bus_master_enabled, log)
        for ch, s in zip(dev.channels, state["channels"]):
            ch.restore(s)
        return dev


def pci_function():
    """The PIIX3 IDE function's configuration header (00:01.1)."""
    from .pci import BAR_KIND_IO, Bar, CMD_BUS_MASTER, CMD_IO, FunctionSpec, INTEL
    return FunctionSpec(
        1, 1, INTEL, PIIX3_IDE_DEVICE, IDE_CLASS,
        bars=(Bar(BAR4, BAR_KIND_IO, BM_SIZE, BAR4_FIRMWARE_BASE),),
        interrupt_pin=0,                       # legacy IRQ 14/15, no INTx
        command=CMD_IO | CMD_BUS_MASTER, status=0x0280,
        # IDETIM (primary, secondary) with decode enabled as firmware leaves
        # them, SIDETIM 0x44, the PIIX4 UDMA registers 0x48-0x4B.
        registers=((IDETIM_PRIMARY, 2, IDETIM_DECODE_ENABLE), (IDETIM_SECONDARY, 2, IDETIM_DECODE_ENABLE),
                   (0x44, 1, 0), (0x48, 4, 0)))


class IdeHost(DeviceHost):
    """PIIX3 IDE: legacy ports on IRQ 14/15, the bus-master registers
    wherever BAR4 is now (the vCPUs route them here from the pci actor's
    shared table), DMA straight between the images (vm.drives, opened with
    bhive.block) and shared guest RAM."""

    def setup(self) -> None:
        from .. import block
        from ..bus.shm import SharedRegion
        from ..loader import ram_slots
        self.irqs = [self.connect_irq(irq) for _, _, irq in CHANNELS]
        self.ram_region = SharedRegion(self.runtime.rundir.shm / "ram")
        self.ram = GuestRam(self.ram_region.view, ram_slots(self.vm.memory))
        self.images: list = [None] * 4
        for d in getattr(self.vm, "drives", []):
            if d.interface != "ide" or not 0 <= d.index < 4:
                continue
            try:
                self.images[d.index] = block.open_drive(d, self.runtime.rundir)
            except block.ImageError as exc:    # the supervisor checked it; it went away since
                self.log("image-unavailable", index=d.index, error=str(exc))
        self.table = None

    def model_args(self) -> dict:
        return {"images": self.images, "irqs": self.irqs, "ram": self.ram,
                "bus_master_enabled": self._bus_master, "log": self.log}

    def _function(self):
        """(the pci actor's shared table, our slot in it), once it exists."""
        from . import pci
        if self.table is None:
            self.table = pci.ConfigTable.open(self.runtime.rundir.shm / pci.TABLE_FILE)
        if self.table is None:
            return None, None
        return self.table, self.table.slot_of(pci.devfn(1, 1))

    def _bus_master(self) -> bool:
        from . import pci
        table, slot = self._function()
        return table is None or slot is None or bool(table.command(slot) & pci.CMD_BUS_MASTER)

    def port_target(self, port: int):
        for ch, (cmd, ctl, _) in enumerate(CHANNELS):
            if cmd <= port < cmd + CMD_BLOCK_SIZE:
                return self.model.channels[ch], port - cmd
            if port == ctl:
                return self.model.controls[ch], 0
        table, slot = self._function()
        base = table.bar_base(slot, BAR4) if slot is not None else None
        if base is not None and base <= port < base + BM_SIZE:
            return self.model.bus_master, port - base
        return None, 0

    def pio(self, port: int, size: int, is_write: bool, data: int) -> int:
        target, offset = self.port_target(port)
        if target is None:      # BAR4 moved away under a retried access
            self.log("ide-unclaimed-port", port=port, write=is_write)
            return 0 if is_write else (1 << (8 * size)) - 1
        return super().pio(port, size, is_write, data)

    def counters(self) -> dict:
        return {f"{k}{ch.number}": v for ch in self.model.channels for k, v in ch.counters.items()}
