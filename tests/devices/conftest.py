"""Device models driven directly, in-process: register reads and writes,
interrupt lines, state round trips.  No actor process, no bus; the glue
that hosts a model (`bhive.actors.host.DeviceHost`) is driven with a
stand-in runtime (`host_for`).

Fixtures: `line`, an IrqLine that records every level (wiring.RecordingLine);
`host_for`, which builds a registry entry's host the way the actor process
does, on a runtime that records events instead of sending them."""

from __future__ import annotations

import pytest

from wiring import RecordingLine, StandInRuntime


@pytest.fixture
def line() -> RecordingLine:
    return RecordingLine()


@pytest.fixture
def host_for():
    """host_for(dtype, options, vm=None) -> the host of a device of registry
    entry `dtype` with config `options` (the type's defaults filled in)."""
    from bhive.config import DeviceConfig

    def build(dtype, options: dict | None = None, vm=None):
        opts = {name: opt.default for name, opt in dtype.options.items()}
        opts.update(options or {})
        cfg = DeviceConfig(dtype.name, dtype.name, opts, [])
        return dtype.host(StandInRuntime(dtype.name), dtype, cfg, vm)

    return build
