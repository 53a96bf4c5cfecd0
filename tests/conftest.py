"""Shared fixtures: every test VM runs under a private run root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def run_root():
    """Private BHIVE_RUN_ROOT on tmpfs, short enough for ipc:// paths."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    root = base / f"bhive-test-{os.getpid()}"
    root.mkdir(exist_ok=True)
    os.environ["BHIVE_RUN_ROOT"] = str(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


class Bhive:
    """Runs the real `bhive` CLI in a subprocess."""

    def __init__(self):
        self.env = dict(os.environ)

    def argv(self, *args) -> list[str]:
        return [sys.executable, "-m", "bhive", *map(str, args)]

    def run(self, *args, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), capture_output=True, timeout=timeout, env=self.env,
                              cwd=REPO, **kw)

    def popen(self, *args, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=self.env, cwd=REPO, **kw)


@pytest.fixture
def bhive() -> Bhive:
    return Bhive()


def wait_for(predicate, timeout: float = 30, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def spin(tmp_path_factory) -> Path:
    """A guest that runs until it is stopped."""
    d = tmp_path_factory.mktemp("spin")
    (d / "spin.asm").write_text("bits 16\norg 0x8000\n.l: pause\njmp .l\n")
    cfg = d / "spin.toml"
    cfg.write_text('[boot]\nimage = "spin.asm"\n[devices.uart]\nport = 0x3f8\n'
                   '[devices.debug_exit]\nport = 0xf4\n')
    return cfg
