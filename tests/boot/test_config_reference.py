"""docs/config.md cannot drift from the validator and the device registry:
it is what bhive.config_reference renders from them, it documents exactly
the keys the validator accepts, its [vm] defaults are the validator's, and
each device option's documented range is the one the validator enforces."""

from __future__ import annotations

import pytest

from bhive import config as C
from bhive import config_reference
from bhive.devices import DEVICE_TYPES

from support import REPO


def test_docs_config_md_is_generated_from_the_code():
    doc = (REPO / "docs" / "config.md").read_text()
    assert doc.strip() == config_reference.render().strip(), \
        "docs/config.md is stale: python -m bhive.config_reference > docs/config.md"


def test_every_accepted_key_is_documented_and_no_other():
    assert set(config_reference.SECTIONS) | {"devices"} == C._TOP
    assert set(config_reference.SECTIONS["vm"]) == C._VM_KEYS
    assert set(config_reference.SECTIONS["boot"]) == C._BOOT_KEYS
    assert set(config_reference.SECTIONS["msr"]) == C._MSR_KEYS
    assert set(config_reference.SECTIONS["cpu"]) == C._CPU_KEYS
    assert set(config_reference.SECTIONS["drive"]) == C._DRIVE_KEYS
    from bhive.chaos import CHAOS_KEYS
    assert set(config_reference.SECTIONS["chaos"]) == CHAOS_KEYS


def test_documented_vm_defaults_are_the_validators(tmp_path):
    cfg = C.from_dict({"boot": {"image": str(REPO / "guests" / "echo" / "echo.asm")}}, base_dir=tmp_path)
    vm = config_reference.SECTIONS["vm"]
    assert str(cfg.cpus) == str(vm["cpus"][0])
    assert f'"{cfg.memory >> 20}M"' == vm["memory"][0]
    assert f'"{cfg.accel}"' == vm["accel"][0] and f'"{cfg.exit_transport}"' == vm["exit_transport"][0]
    assert cfg.watchdog == vm["watchdog"][0] and str(cfg.no_reboot).lower() == vm["no_reboot"][0]
    assert f'"{cfg.serial}"' == vm["serial"][0] and f'"{cfg.unknown_msr}"' == config_reference.SECTIONS["msr"]["unknown"][0]
    assert hex(cfg.load_address) == config_reference.SECTIONS["boot"]["load_address"][0]


@pytest.mark.parametrize("name", sorted(DEVICE_TYPES))
def test_each_device_options_documented_range_is_enforced(name, tmp_path):
    """For every option with bounds: the bound validates, one past it is refused."""
    image = str(REPO / "guests" / "echo" / "echo.asm")
    for key, opt in DEVICE_TYPES[name].options.items():
        for edge, ok in ((opt.minimum, True), (opt.maximum, True),
                         (None if opt.minimum is None else opt.minimum - 1, False),
                         (None if opt.maximum is None else opt.maximum + 1, False)):
            if edge is None:
                continue
            raw = {"vm": {"cpus": 1}, "boot": {"image": image}, "devices": {name: {key: edge}}}
            if ok:
                try:
                    C.from_dict(raw, base_dir=tmp_path)
                except C.ConfigError as exc:   # another rule (port overlap, a window) may refuse it
                    assert f"{key}: {edge}" not in str(exc) and "outside" not in str(exc), exc
            else:
                with pytest.raises(C.ConfigError):
                    C.from_dict(raw, base_dir=tmp_path)
