"""Config validation: each mistake is one line on stderr and exit status 2,
before any process starts."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bhive import config

from support import REPO

HELLO = REPO / "configs" / "hello.toml"
IMAGE = (HELLO.parent.parent / "guests" / "hello" / "hello.asm").resolve()


def write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "vm.toml"
    p.write_text(textwrap.dedent(body))
    return p


GOOD = f"""
[vm]
cpus = 2
memory = "64M"
[boot]
image = "{IMAGE}"
[devices.uart]
port = 0x3f8
[devices.debug_exit]
port = 0xf4
"""


def test_good_config_loads(tmp_path):
    cfg = config.load(write(tmp_path, GOOD))
    assert cfg.cpus == 2 and cfg.memory == 64 << 20 and cfg.accel == "softvmm"
    assert cfg.name == "vm"
    assert cfg.port_owners()[0x3FD] == "uart"
    assert cfg.port_owners()[0xF7] == "debug_exit"
    assert config.from_json(config.to_json(cfg)) == cfg


def test_shipped_hello_config_loads():
    cfg = config.load(HELLO)
    assert cfg.name == "hello" and cfg.image == IMAGE


@pytest.mark.parametrize("size,expected", [("512M", 512 << 20), ("1G", 1 << 30), ("64MiB", 64 << 20),
                                           (16 << 20, 16 << 20)])
def test_sizes(size, expected):
    assert config.parse_size(size, "x") == expected


ERRORS = {
    "unknown-key": (GOOD.replace("cpus = 2", "cpus = 2\ncpuz = 3"), "[vm]: unknown key 'cpuz'"),
    "unknown-device-key": (GOOD.replace("port = 0x3f8", "port = 0x3f8\nbaud = 9600"),
                           "[devices.uart]: unknown key 'baud'"),
    "bad-size": (GOOD.replace('"64M"', '"lots"'), "[vm] memory: bad size 'lots'"),
    "size-not-page-multiple": (GOOD.replace('"64M"', '1000000'), "must be a multiple of 4K"),
    "missing-image": (GOOD.replace(str(IMAGE), "/nonexistent/guest.bin"),
                      "[boot] image: /nonexistent/guest.bin: no such file"),
    "port-claimed-twice": (GOOD + "[devices.uart2]\ntype = \"uart\"\nport = 0x3fc\n",
                           "[devices.uart2] port: 0x3fc is already claimed by [devices.uart]"),
    "unknown-device-type": (GOOD + "[devices.nic]\nport = 0x300\n", "unknown device type 'nic'"),
    "too-many-cpus": (GOOD.replace("cpus = 2", "cpus = 999"), "[vm] cpus: 999 is outside"),
    "wrong-type": (GOOD.replace("cpus = 2", 'cpus = "two"'), "[vm] cpus: expected an integer"),
    "bad-accel": (GOOD.replace("cpus = 2", 'cpus = 2\naccel = "hyperv"'), "unknown accelerator 'hyperv'"),
    "bad-toml": ("[vm\n", "invalid TOML"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_config_error_library(tmp_path, case):
    body, expected = ERRORS[case]
    with pytest.raises(config.ConfigError) as exc:
        config.load(write(tmp_path, body))
    assert expected in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_config_error_cli(tmp_path, bhive, case):
    body, expected = ERRORS[case]
    proc = bhive.run("run", write(tmp_path, body), timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("bhive: error: ") and expected in lines[0]
    assert proc.stdout == b""


def test_missing_config_file(bhive):
    proc = bhive.run("run", "/nonexistent.toml", timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == "bhive: error: /nonexistent.toml: no such config file"
