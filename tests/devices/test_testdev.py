"""pc-testdev (bhive.actors.testdev) driven directly: IRQ lines, the latch
at 0xE0/0xE8, the flush port, the 64 KiB iomem window."""

from __future__ import annotations

import msgpack

from bhive.actors import testdev
from bhive.actors.testdev import FLUSH, IOPORT, IOPORT_BYTE, TestDev

from wiring import RecordingLine as Line


def test_latch_bytes_words_dwords():
    dev = TestDev()
    dev.write(IOPORT, 4, 0x12345678)
    assert dev.read(IOPORT, 4) == 0x12345678
    dev.write(IOPORT + 2, 2, 0xBEEF)
    assert dev.read(IOPORT, 4) == 0xBEEF5678
    assert dev.read(IOPORT + 1, 1) == 0x56 and dev.read(IOPORT + 2, 2) == 0xBEEF
    dev.write(IOPORT + 3, 1, 0x9A)
    assert dev.read(IOPORT, 4) == 0x9AEF5678


def test_byte_port_is_the_same_latch():
    dev = TestDev()
    dev.write(IOPORT, 4, 0x11223344)
    assert dev.read(IOPORT_BYTE, 4) == 0x11223344
    dev.write(IOPORT_BYTE + 1, 1, 0xAA)
    assert dev.read(IOPORT, 4) == 0x1122AA44
    dev.write(IOPORT_BYTE + 2, 2, 0x5566)
    assert dev.read(IOPORT, 4) == 0x5566AA44


def test_unaligned_latch_accesses_are_dropped_as_in_qemu():
    events = []
    dev = TestDev(log=lambda e, **f: events.append(e))
    dev.write(IOPORT, 4, 0x11223344)
    dev.write(IOPORT + 1, 2, 0xFFFF)
    dev.write(IOPORT_BYTE + 3, 2, 0xFFFF)
    assert dev.read(IOPORT, 4) == 0x11223344
    assert dev.read(IOPORT + 1, 4) == 0xFFFFFFFF
    assert events.count("testdev_unaligned_write") == 2 and "testdev_unaligned_read" in events


def test_flush_port_counts_and_reads_zero():
    dev = TestDev()
    dev.write(FLUSH, 4, 0x12345ABC)
    assert dev.flushes == 1 and dev.last_flush == 0x12345000
    assert dev.read(FLUSH, 4) == 0
    dev.write(FLUSH, 2, 0x1000)                 # QEMU: 4-byte writes only
    assert dev.flushes == 1


def test_irq_lines_at_their_base():
    lines = [Line() for _ in range(testdev.NUM_LINES)]
    dev = TestDev(lines, irq_base=0x3000)
    dev.write(0x3000 + 23, 1, 1)
    dev.write(0x3000 + 23, 1, 0)
    assert lines[23].levels == [True, False]
    dev.write(0x2000 + 5, 1, 1)                 # not our base: logged, ignored
    assert lines[5].levels == []


def test_iomem_plain_memory_any_width():
    dev = TestDev()
    assert dev.mmio_read(0x100, 4) == 0
    dev.mmio_write(0x100, 4, 0x11223344)
    assert dev.mmio_read(0x101, 1) == 0x33 and dev.mmio_read(0x100, 2) == 0x3344
    dev.mmio_write(0x102, 2, 0xAABB)
    assert dev.mmio_read(0x100, 4) == 0xAABB3344
    dev.mmio_write(0xFFF8, 8, 0x0102030405060708)
    assert dev.mmio_read(0xFFF8, 8) == 0x0102030405060708
    dev.mmio_write(0x0FFE, 4, 0xDDCCBBAA)       # across a page boundary
    assert dev.mmio_read(0x0FFE, 4) == 0xDDCCBBAA and dev.mmio_read(0x1000, 1) == 0xCC
    assert dev.mmio_read(0xFFFE, 4) == 0xFFFFFFFF   # past the window


def test_state_round_trip_keeps_latch_lines_and_iomem():
    dev = TestDev()
    dev.write(IOPORT, 4, 0xCAFEF00D)
    dev.write(0x2003, 1, 1)
    dev.write(FLUSH, 4, 0x5000)
    dev.mmio_write(0x4242, 2, 0xBEEF)
    again = TestDev.from_state(msgpack.unpackb(msgpack.packb(dev.state()), strict_map_key=False))
    assert again.read(IOPORT, 4) == 0xCAFEF00D and again.levels == 1 << 3
    assert again.flushes == 1 and again.last_flush == 0x5000
    assert again.mmio_read(0x4242, 2) == 0xBEEF and len(again.state()["iomem"]) == 1


def test_testdev_ports_raise_and_lower_line_n():
    lines = [Line() for _ in range(testdev.NUM_LINES)]
    dev = testdev.TestDev(lines)
    dev.write(0x2000 + 14, 1, 1)
    dev.write(0x2000 + 14, 1, 0)
    dev.write(0x2000 + 3, 1, 1)
    assert lines[14].levels == [True, False] and lines[3].levels == [True]
    assert dev.read(0x2003, 1) == 1 and dev.read(0x200E, 1) == 0
    dev.write(0x2000 + 40, 1, 1)                        # outside the 24 lines: logged, ignored
    assert dev.read(0x2000 + 40, 1) == 0xFF
    assert testdev.TestDev.from_state(dev.state()).levels == 1 << 3
