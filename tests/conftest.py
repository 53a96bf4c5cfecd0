"""Fixtures for every level: each test VM runs under a private run root,
and `bhive` runs the real CLI.  Each folder's conftest.py adds its own:

    devices/  device models driven directly
    cpu/      the softvmm CPU core driven directly
    kvm/      the kvm accelerator and the differential CPU oracle
    bus/      messages, shared memory, exit channels, one actor process
    boot/     configs, image loaders, firmware tables, the guest kit
    vm/       whole VMs through `bhive run`
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from support import Bhive


@pytest.fixture(scope="session", autouse=True)
def run_root():
    """Private BHIVE_RUN_ROOT on tmpfs, short enough for ipc:// paths."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    root = base / f"bhive-test-{os.getpid()}"
    root.mkdir(exist_ok=True)
    os.environ["BHIVE_RUN_ROOT"] = str(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def bhive() -> Bhive:
    return Bhive()

