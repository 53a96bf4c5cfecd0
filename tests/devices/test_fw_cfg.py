"""FwCfg (QEMU's fw_cfg, I/O-port interface) driven directly."""

from __future__ import annotations

import struct

import msgpack
import pytest

from bhive.actors import fw_cfg as fc
from bhive.actors.fw_cfg import DATA, SELECTOR, FwCfg


class Recorder:
    def __init__(self):
        self.events = []

    def log(self, event, **fields):
        self.events.append(event)


def device(rec=None, cpus=4, max_cpus=8, ram=512 << 20, cmdline="console=ttyS0", files=None):
    files = files if files is not None else [("etc/e820", b"E" * 40), ("bootorder", b"/x\n")]
    items = fc.machine_items(cpus=cpus, max_cpus=max_cpus, ram_size=ram, cmdline=cmdline, files=files)
    return FwCfg(items, log=rec.log if rec else fc.no_log)


def select(dev, key):
    dev.write(SELECTOR, 2, key)


def read(dev, n):
    return bytes(dev.read(DATA, 1) for _ in range(n))


def test_signature_and_id():
    dev = device()
    select(dev, fc.FW_CFG_SIGNATURE)
    assert read(dev, 4) == b"QEMU"
    select(dev, fc.FW_CFG_ID)
    assert struct.unpack("<I", read(dev, 4))[0] == fc.ID_TRADITIONAL      # no DMA bit


@pytest.mark.parametrize("cpus,max_cpus,ram", [(1, 1, 64 << 20), (4, 8, 512 << 20), (64, 255, 5 << 30)])
def test_cpu_count_ram_size_max_cpus(cpus, max_cpus, ram):
    dev = device(cpus=cpus, max_cpus=max_cpus, ram=ram)
    select(dev, fc.FW_CFG_NB_CPUS)
    assert struct.unpack("<H", read(dev, 2))[0] == cpus
    select(dev, fc.FW_CFG_MAX_CPUS)
    assert struct.unpack("<H", read(dev, 2))[0] == max_cpus
    select(dev, fc.FW_CFG_RAM_SIZE)
    assert struct.unpack("<Q", read(dev, 8))[0] == ram
    select(dev, fc.FW_CFG_NUMA)
    assert read(dev, 8 * (1 + max_cpus)) == bytes(8 * (1 + max_cpus))   # no NUMA nodes


def test_file_directory_big_endian_sorted_and_files_read_by_selector():
    dev = device()
    select(dev, fc.FW_CFG_FILE_DIR)
    count = struct.unpack(">I", read(dev, 4))[0]
    assert count == 2
    entries = [fc.FILE_ENTRY.unpack(read(dev, 64)) for _ in range(count)]
    names = [e[3].rstrip(b"\0").decode() for e in entries]
    assert names == ["bootorder", "etc/e820"]                   # sorted by name
    assert [e[1] for e in entries] == [fc.FW_CFG_FILE_FIRST, fc.FW_CFG_FILE_FIRST + 1]
    assert [e[0] for e in entries] == [3, 40]
    select(dev, entries[1][1])
    assert read(dev, 40) == b"E" * 40
    select(dev, entries[0][1])
    assert read(dev, 3) == b"/x\n"


def test_reads_past_the_end_and_of_missing_keys_return_zero():
    rec = Recorder()
    dev = device(rec)
    select(dev, fc.FW_CFG_SIGNATURE)
    assert read(dev, 6) == b"QEMU\0\0"
    select(dev, 0x1234)
    assert read(dev, 2) == b"\0\0" and "fw_cfg_no_item" in rec.events


def test_select_rewinds_and_the_write_channel_bit_selects_the_same_item():
    dev = device()
    select(dev, fc.FW_CFG_SIGNATURE)
    read(dev, 3)
    select(dev, fc.FW_CFG_SIGNATURE)
    assert read(dev, 1) == b"Q"
    select(dev, fc.FW_CFG_NB_CPUS | fc.FW_CFG_WRITE_CHANNEL)
    assert read(dev, 2) == struct.pack("<H", 4)


def test_cmdline_items():
    dev = device(cmdline="hello fw")
    select(dev, fc.FW_CFG_CMDLINE_SIZE)
    assert struct.unpack("<I", read(dev, 4))[0] == 9
    select(dev, fc.FW_CFG_CMDLINE_DATA)
    assert read(dev, 9) == b"hello fw\0"


def test_data_writes_ignored_and_bad_widths_logged():
    rec = Recorder()
    dev = device(rec)
    select(dev, fc.FW_CFG_SIGNATURE)
    dev.write(DATA, 1, 0x55)                        # the write channel is gone (QEMU >= 2.4)
    assert read(dev, 1) == b"Q"
    assert dev.read(DATA, 2) == 0xFFFF              # only byte reads at the data port
    assert dev.read(SELECTOR, 1) == 0xFF
    dev.write(SELECTOR, 1, 0x05)                    # a byte write does not select
    assert read(dev, 1) == b"E"                     # still QEMU's second byte
    assert {"fw_cfg_data_write_ignored", "fw_cfg_bad_read", "fw_cfg_bad_write"} <= set(rec.events)


def test_state_round_trip_mid_item():
    dev = device()
    select(dev, fc.FW_CFG_SIGNATURE)
    read(dev, 2)
    blob = msgpack.packb(dev.state())
    again = FwCfg.from_state(msgpack.unpackb(blob), dev.items)
    assert read(again, 2) == b"MU"


def test_long_file_names_refused():
    with pytest.raises(ValueError, match="longer than"):
        fc.file_dir([("x" * 56, b"")])


def test_host_items_describe_the_vm():
    """The actor's glue: CPU count, RAM and the e820 file from the VM config."""
    from bhive import config as config_mod
    from bhive.actors.fw_cfg import fw_cfg_items
    from bhive.firmware import tables
    from support import REPO
    vm = config_mod.load(REPO / "configs" / "platform.toml", {"cpus": 3, "memory": "96M"})
    dev = FwCfg(fw_cfg_items(vm.devices["fw_cfg"], vm))
    select(dev, fc.FW_CFG_NB_CPUS)
    assert read(dev, 2) == struct.pack("<H", 3)
    select(dev, fc.FW_CFG_MAX_CPUS)
    assert read(dev, 2) == struct.pack("<H", 3)
    select(dev, fc.FW_CFG_RAM_SIZE)
    assert read(dev, 8) == struct.pack("<Q", 96 << 20)
    select(dev, fc.FW_CFG_FILE_DIR)
    count = struct.unpack(">I", read(dev, 4))[0]
    files = {e[3].rstrip(b"\0").decode(): e for e in (fc.FILE_ENTRY.unpack(read(dev, 64)) for _ in range(count))}
    size, key = files["etc/e820"][:2]
    select(dev, key)
    assert read(dev, size) == b"".join(e.pack() for e in tables.e820(96 << 20))
    size, key = files["etc/boot-fail-wait"][:2]
    select(dev, key)
    assert read(dev, size) == struct.pack("<i", -1)


def test_config_max_cpus_below_the_vcpu_count_is_an_error(tmp_path):
    from bhive import config as config_mod
    from support import REPO
    cfg = tmp_path / "bad.toml"
    cfg.write_text((REPO / "configs" / "platform.toml").read_text().replace(
        "[devices.fw_cfg]\nport = 0x510\n", "[devices.fw_cfg]\nport = 0x510\nmax_cpus = 2\n").replace(
        '"../guests/', f'"{REPO}/guests/'))
    with pytest.raises(config_mod.ConfigError, match="max_cpus: 2 is below the 4 vCPUs"):
        config_mod.load(cfg, {"cpus": 4})
    assert config_mod.load(cfg, {"cpus": 2}).devices["fw_cfg"].options["max_cpus"] == 2
