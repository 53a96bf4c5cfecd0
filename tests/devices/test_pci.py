"""The PCI host bridge model driven directly: configuration mechanism #1,
absent functions, BAR sizing and moving, COMMAND, PIRQRC, garbage."""

from __future__ import annotations

import pytest

from bhive.actors import ide, pci
from bhive.actors.base import no_log


def host(logs=None):
    table = pci.ConfigTable.in_memory()
    pci.build_table(table, [(pci.HOST_BRIDGE, "pci"), (pci.ISA_BRIDGE, "pci"), (ide.pci_function(), "ide")])
    log = (lambda ev, **f: logs.append((ev, f))) if logs is not None else no_log
    return pci.PciHost(table, log=log)


def cfg_read(h, dev, fn, reg, size=4, bus=0):
    h.write(0, 4, 0x80000000 | bus << 16 | dev << 11 | fn << 8 | (reg & 0xFC))
    return h.read(4 + (reg & 3), size)


def cfg_write(h, dev, fn, reg, value, size=4):
    h.write(0, 4, 0x80000000 | dev << 11 | fn << 8 | (reg & 0xFC))
    h.write(4 + (reg & 3), size, value)


def test_config_address_reads_back_and_type1_probe():
    h = host()
    h.write(0, 4, 0x80000000)
    assert h.read(0, 4) == 0x80000000
    h.write(0, 4, 0xFFFFFFFF)            # reserved bits 30-24 and 1-0 read as 0
    assert h.read(0, 4) == 0x80FFFFFC


def test_identities_of_the_three_functions():
    h = host()
    assert cfg_read(h, 0, 0, 0) == 0x12378086
    assert cfg_read(h, 1, 0, 0) == 0x70008086
    assert cfg_read(h, 1, 1, 0) == 0x70108086
    assert cfg_read(h, 0, 0, 0x08) >> 8 == 0x060000
    assert cfg_read(h, 1, 0, 0x08) >> 8 == 0x060100
    assert cfg_read(h, 1, 1, 0x08) >> 8 == 0x010180
    assert cfg_read(h, 1, 0, 0x0E, 1) & 0x80          # multi-function: scan 00:01.1
    assert cfg_read(h, 1, 1, 0x3D, 1) == 0            # no INTx: legacy IRQ 14/15
    # byte and word reads of the same dword
    assert cfg_read(h, 1, 1, 0x02, 2) == 0x7010 and cfg_read(h, 1, 1, 0x03, 1) == 0x70


def test_absent_functions_and_disabled_cycles_read_all_ones():
    h = host()
    assert cfg_read(h, 2, 0, 0) == 0xFFFFFFFF
    assert cfg_read(h, 0, 1, 0, 2) == 0xFFFF
    assert cfg_read(h, 0, 0, 0, bus=1) == 0xFFFFFFFF
    h.write(0, 4, 0x00000000)                          # enable bit clear
    assert h.read(4, 4) == 0xFFFFFFFF
    cfg_write(h, 2, 0, 0x04, 0x7)                      # a write nobody claims vanishes
    assert cfg_read(h, 2, 0, 0x04) == 0xFFFFFFFF


def test_bar4_sizing_moving_and_routing():
    h = host()
    t = h.table
    slot = t.slot_of(pci.devfn(1, 1))
    assert cfg_read(h, 1, 1, 0x20) == 0xC001                     # firmware: 0xC000, I/O
    assert t.port_owner(0xC000) == "ide" and t.port_owner(0xC00F) == "ide"
    assert t.port_owner(0xC010) is None
    gen = t.generation
    cfg_write(h, 1, 1, 0x20, 0xFFFFFFFF)
    size_mask = cfg_read(h, 1, 1, 0x20)
    assert size_mask & 1 == 1 and (~(size_mask & ~3) & 0xFFFFFFFF) + 1 == 16
    cfg_write(h, 1, 1, 0x20, 0xD040)
    assert cfg_read(h, 1, 1, 0x20) == 0xD041 and t.generation > gen
    assert t.bar_base(slot, 4) == 0xD040
    assert t.port_owner(0xD04F) == "ide" and t.port_owner(0xC000) is None
    # BARs 0-3 are not implemented: read 0 whatever is written
    cfg_write(h, 1, 1, 0x10, 0xFFFFFFFF)
    assert cfg_read(h, 1, 1, 0x10) == 0
    # I/O decode off: nothing routed
    cfg_write(h, 1, 1, 0x04, 0x0004, 2)
    assert t.port_owner(0xD040) is None and t.bar_base(slot, 4) is None
    cfg_write(h, 1, 1, 0x04, 0x0005, 2)
    assert t.port_owner(0xD040) == "ide"
    assert t.command(slot) & pci.CMD_BUS_MASTER


def test_command_status_and_interrupt_line():
    h = host()
    cfg_write(h, 1, 1, 0x04, 0xFFFF, 2)
    assert cfg_read(h, 1, 1, 0x04, 2) == pci.CMD_WRITABLE
    status = cfg_read(h, 1, 1, 0x06, 2)
    cfg_write(h, 1, 1, 0x06, 0xFFFF, 2)                # W1C: only the error bits clear
    assert cfg_read(h, 1, 1, 0x06, 2) == status & ~pci.STATUS_W1C
    cfg_write(h, 1, 1, 0x3C, 14, 1)
    assert cfg_read(h, 1, 1, 0x3C, 1) == 14
    cfg_write(h, 1, 1, 0x3D, 3, 1)                     # the pin is read-only
    assert cfg_read(h, 1, 1, 0x3D, 1) == 0


def test_piix3_pirq_routing_registers():
    h = host()
    assert [cfg_read(h, 1, 0, 0x60 + n, 1) for n in range(4)] == [10, 10, 11, 11]
    assert h.pirq_isa_irq(0) == 10 and h.pirq_isa_irq(3) == 11
    cfg_write(h, 1, 0, 0x60, 0x80808005)
    assert h.pirq_isa_irq(0) == 5 and h.pirq_isa_irq(1) is None
    assert pci.intx_gsi(3, 1) == 19 and pci.intx_gsi(3, 2) == 16


def test_garbage_is_logged_and_harmless():
    logs = []
    h = host(logs)
    cfg_write(h, 1, 1, 0x00, 0x12345678)               # vendor/device are read-only
    assert cfg_read(h, 1, 1, 0x00) == 0x70108086
    h.write(0, 4, 0x80000000 | 1 << 11 | 1 << 8)
    assert h.read(4 + 1, 2) == 0x1080                  # unaligned: bytes 1-2, as the bus gives them
    command = cfg_read(h, 1, 1, 0x04, 2)
    h.write(0, 4, 0x80000000 | 1 << 11 | 1 << 8)
    h.write(4 + 3, 2, 0xFFFF)                          # straddles 0xCFF: the high byte is port 0xD00
    assert h.read(4 + 3, 2) == 0xFF70                   # device ID high byte, then nothing
    assert cfg_read(h, 1, 1, 0x04, 2) == command        # COMMAND (offset 4) untouched
    assert h.read(1, 1) == 0 and h.read(2, 2) == 0xFFFF   # not the address register
    kinds = {ev for ev, _ in logs}
    assert {"pci-readonly-write", "pci-unaligned-read", "pci-unaligned-write",
            "pci-address-partial-read"} <= kinds


def test_reset_control_register():
    resets = []
    h = host()
    h.reset = lambda: resets.append(1)
    h.write(1, 1, 0x02)
    assert not resets
    h.write(1, 1, 0x06)
    assert resets == [1] and h.read(1, 1) == 0x06


def test_state_round_trip_keeps_config_in_the_table():
    h = host()
    cfg_write(h, 1, 1, 0x20, 0xB000)
    h2 = pci.PciHost.from_state(h.state(), h.table)
    assert cfg_read(h2, 1, 1, 0x20) == 0xB001


def test_shared_table_survives_a_new_process_view(tmp_path):
    path = tmp_path / "pci.config"
    t = pci.ConfigTable.create(path)
    pci.build_table(t, [(pci.HOST_BRIDGE, "pci"), (ide.pci_function(), "ide")])
    assert pci.ConfigTable.open(path) is None           # not sealed: readers wait
    t.seal()
    h = pci.PciHost(t)
    cfg_write(h, 1, 1, 0x20, 0xE000)
    reader = pci.ConfigTable.open(path)
    assert reader.port_owner(0xE008) == "ide"
    assert pci.ConfigTable.open(tmp_path / "missing") is None
