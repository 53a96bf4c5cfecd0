"""The message schema: every type round-trips; bad input is refused."""

from __future__ import annotations

import msgpack
import pytest

from bhive.bus import schema
from bhive.bus.schema import (Ack, ConsoleInput, Control, Heartbeat, Hello, IrqLineLevel,
                              MmioRequest, MmioResponse, Msi, PioRequest, PioResponse, VmEvent)

SAMPLES = [
    PioRequest("vcpu3", 7, 0x3F8, 1, True, 0x41),
    PioResponse(7, 0x60),
    MmioRequest("vcpu0", 1, 0xFEC00010, 4, False, 0),
    MmioResponse(1, 0xDEADBEEF),
    Msi(0xFEE03000, 0x4031, "ioapic"),
    IrqLineLevel("uart", 9, 4, True),
    schema.EoiRequest("vcpu1", 7, 0x31),
    schema.PicOutput("ioapic", False),
    Control("stop"),
    Hello("uart", 1234, True),
    schema.VcpuGo(["uart", "debug_exit"]),
    Heartbeat("vcpu0", 99, {"instructions": 10**12}),
    VmEvent("debug_exit", "exit", 1, "isa-debug-exit write"),
    ConsoleInput("supervisor", 3, b"ls\r"),
    Ack(3, 3),
    schema.ZygoteBind("/dev/shm/bhive-0/vm", "softvmm", [5, 6]),
    schema.ZygoteSpawn("uart", "bhive.devices_worker", ["/dev/shm/bhive-0/vm", "uart"], {"BHIVE_FDS": "door.uart=5"}),
    schema.ZygoteSpawned("uart", 4242, ""),
]


def test_every_type_has_a_sample():
    assert {type(m) for m in SAMPLES} == set(schema.message_types().values())


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    assert schema.decode(schema.encode(msg)) == msg


@pytest.mark.parametrize("retired", [7, 8])
def test_unknown_type_rejected(retired):
    """An unknown type, and the numbers of the retired Eoi and InitSipi
    messages, which are never given to another message."""
    assert retired not in {int(t) for t in schema.MsgType}
    for kind in (250, retired):
        with pytest.raises(schema.SchemaError, match="unknown message type"):
            schema.decode(msgpack.packb([kind, 1]))


def test_version_mismatch_rejected():
    raw = msgpack.packb([int(schema.MsgType.PIO_RESPONSE), 99, 1, 2])
    with pytest.raises(schema.SchemaError, match="version 99"):
        schema.decode(raw)


@pytest.mark.parametrize("raw", [b"", b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([2, 1, 1])])
def test_garbage_rejected(raw):
    with pytest.raises(schema.SchemaError):
        schema.decode(raw)
