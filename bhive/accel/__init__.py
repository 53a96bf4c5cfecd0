"""Accelerators behind one libvmmapi-shaped interface (see `base`)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:                 # device actors import this module (via config), not the interface
    from .base import Accelerator

_MODULES = {
    "softvmm": "bhive.accel.softvmm",
    "kvm": "bhive.accel.kvm",
    "bhyve": "bhive.accel.bhyve",
}

NAMES = tuple(_MODULES)


def get(name: str) -> type[Accelerator]:
    """The accelerator class called `name` (imported on first use)."""
    if name not in _MODULES:
        raise KeyError(f"unknown accelerator {name!r} (known: {', '.join(NAMES)})")
    return importlib.import_module(_MODULES[name]).ACCELERATOR
