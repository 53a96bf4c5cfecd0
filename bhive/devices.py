"""The catalogue of device types: what each claims and what it may be told.

One entry per device type.  `bhive.config` validates a VM's `[devices.*]`
tables against it, and `bhive.devices_worker` builds the model from it, so
a new device is added here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Option:
    kind: type                # int, str or bool
    default: object
    choices: tuple = ()
    minimum: int | None = None
    maximum: int | None = None


@dataclass(frozen=True)
class DeviceType:
    name: str
    port_count: int                     # consecutive I/O ports from `port`
    options: dict[str, Option] = field(default_factory=dict)


# Keys every device table accepts.
COMMON_OPTIONS = {
    "type": Option(str, None),
    "restart": Option(str, "always", choices=("always", "never")),
    "max_restarts": Option(int, 10, minimum=0, maximum=1000),
}

DEVICE_TYPES: dict[str, DeviceType] = {
    "uart": DeviceType("uart", 8, {
        "port": Option(int, 0x3F8, minimum=0, maximum=0xFFF8),
        "irq": Option(int, 4, minimum=0, maximum=23),
        "console": Option(bool, True),
    }),
    "debug_exit": DeviceType("debug_exit", 0, {
        "port": Option(int, 0xF4, minimum=0, maximum=0xFFFF),
        "iosize": Option(int, 4, choices=(1, 2, 4)),
    }),
}


def port_range(dtype: DeviceType, opts: dict) -> range:
    """The I/O ports a configured device claims."""
    count = dtype.port_count or opts.get("iosize", 1)
    return range(opts["port"], opts["port"] + count)
