"""DebugExit: the isa-debug-exit status encoding and its decoded width."""

from __future__ import annotations

import msgpack
import pytest

from bhive.actors.debug_exit import DATA, DebugExit


class Recorder:
    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.events: list[str] = []

    def exit(self, status: int) -> None:
        self.statuses.append(status)

    def log(self, event: str, **fields) -> None:
        self.events.append(event)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.mark.parametrize("value,status", [(0, 1), (1, 3), (0x10, 0x21), (0x7F, 0xFF)])
def test_write_exits_with_shifted_status(rec, value, status):
    dev = DebugExit(exit=rec.exit)
    dev.write(DATA, 4, value)
    assert rec.statuses == [status]


def test_status_of_full_width_value(rec):
    dev = DebugExit(exit=rec.exit)
    dev.write(DATA, 4, 0xFFFF_FFFF)
    assert rec.statuses == [0x1_FFFF_FFFF]


def test_narrow_write_inside_wide_port(rec):
    dev = DebugExit(exit=rec.exit)  # iosize 4
    dev.write(DATA, 1, 0x31)
    dev.write(DATA + 2, 2, 0x1234)
    assert rec.statuses == [0x63, 0x2469]


def test_value_truncated_to_access_width(rec):
    dev = DebugExit(exit=rec.exit, iosize=1)
    dev.write(DATA, 1, 0x1FF)
    assert rec.statuses == [0x1FF]  # (0xFF << 1) | 1


@pytest.mark.parametrize("iosize", [1, 2, 4])
def test_reads_return_all_ones(rec, iosize):
    dev = DebugExit(exit=rec.exit, iosize=iosize, log=rec.log)
    assert dev.read(DATA, 1) == 0xFF
    if iosize >= 2:
        assert dev.read(DATA, 2) == 0xFFFF
    if iosize == 4:
        assert dev.read(DATA, 4) == 0xFFFF_FFFF
    assert rec.statuses == []
    assert rec.events == []


def test_write_outside_iosize_is_ignored_and_logged(rec):
    dev = DebugExit(exit=rec.exit, iosize=1, log=rec.log)
    dev.write(DATA, 2, 5)  # wider than the port
    dev.write(DATA + 1, 1, 5)  # beyond it
    dev.write(DATA, 3, 5)  # no such access width
    assert rec.statuses == []
    assert rec.events == ["debug_exit_bad_write"] * 3


def test_bad_read_logged_still_floats_high(rec):
    dev = DebugExit(exit=rec.exit, iosize=2, log=rec.log)
    assert dev.read(DATA + 1, 2) == 0xFFFF
    assert rec.events == ["debug_exit_bad_read"]


def test_invalid_iosize_is_a_configuration_error(rec):
    with pytest.raises(ValueError):
        DebugExit(exit=rec.exit, iosize=3)


def test_state_round_trip(rec):
    dev = DebugExit(exit=rec.exit, iosize=2)
    state = msgpack.unpackb(msgpack.packb(dev.state()))
    twin = DebugExit.from_state(state, exit=rec.exit, log=rec.log)
    assert twin.state() == dev.state()
    twin.write(DATA, 4, 1)  # still only 2 bytes wide
    twin.write(DATA, 2, 1)
    assert rec.statuses == [3]
