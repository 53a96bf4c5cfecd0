"""Helpers every level of the tests may import (`from support import ...`);
the fixtures are in the conftest.py of each folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def require_softvmm() -> None:
    """Skip the calling module or folder (its conftest) with the reason
    when the softvmm CPU core cannot run here (`make deps` builds it)."""
    softvmm = pytest.importorskip("bhive.accel.softvmm")
    ok, why = softvmm.ACCELERATOR.available()
    if not ok:
        pytest.skip(why, allow_module_level=True)


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


def run_dir(name: str) -> Path:
    """The run directory of the test VM `name` (under the private run root)."""
    return Path(os.environ["BHIVE_RUN_ROOT"]) / name


def wait_for(predicate, timeout: float = 30, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
