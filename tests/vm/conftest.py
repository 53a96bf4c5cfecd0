"""Whole VMs through the real `bhive run`: one process per vCPU and per
device actor, over the real bus; nothing is mocked.  Every VM runs on
softvmm (the default accelerator).

Fixtures: `vm_config` writes a config for a flat guest image, `spin` is a
guest that runs until stopped, `run_guest` runs a self-checking guest
(it prints FAIL lines and exits through isa-debug-exit with 0)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import require_softvmm

require_softvmm()

DEVICE_TABLES = {   # the usual devices of a flat test guest
    "uart": "[devices.uart]\nport = 0x3f8\n",
    "debug_exit": "[devices.debug_exit]\nport = 0xf4\niosize = 4\n",
}


@pytest.fixture
def vm_config(tmp_path):
    """write(image, cpus=1, memory="64M", devices=("uart", "debug_exit"),
    extra="", stem=None) -> the path of a VM config that boots `image`
    (nasm source or binary, real mode at 0x8000) with those devices, plus
    the TOML text `extra`."""

    def write(image, cpus: int = 1, memory: str = "64M", devices=("uart", "debug_exit"),
              extra: str = "", stem: str | None = None) -> Path:
        path = tmp_path / f"{stem or Path(image).stem}-{cpus}.toml"
        path.write_text(f'[vm]\ncpus = {cpus}\nmemory = "{memory}"\n[boot]\nimage = "{image}"\n'
                        + "".join(DEVICE_TABLES[d] for d in devices) + extra)
        return path

    return write


@pytest.fixture
def run_guest(bhive, vm_config):
    """run(image, cpus, name, extra="") -> the console output of a
    self-checking guest, which must exit `bhive run` with 1 (it wrote 0 to
    isa-debug-exit) and print no FAIL line."""

    def run(image, cpus: int, name: str, extra: str = "") -> str:
        proc = bhive.run("run", vm_config(image, cpus, extra=extra), "--name", name, timeout=120)
        out = proc.stdout.decode(errors="replace")
        assert proc.returncode == 1, (proc.returncode, out, proc.stderr.decode(errors="replace"))
        assert "FAIL" not in out, out
        return out

    return run


@pytest.fixture(scope="module")
def spin(tmp_path_factory) -> Path:
    """A guest that runs until it is stopped."""
    d = tmp_path_factory.mktemp("spin")
    (d / "spin.asm").write_text("bits 16\norg 0x8000\n.l: pause\njmp .l\n")
    cfg = d / "spin.toml"
    cfg.write_text('[boot]\nimage = "spin.asm"\n[devices.uart]\nport = 0x3f8\n'
                   '[devices.debug_exit]\nport = 0xf4\n')
    return cfg
