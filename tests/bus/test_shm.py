"""Shared-memory primitives: crash-consistent state and the console ring."""

from __future__ import annotations

import struct

from bhive.bus.shm import PAGE, ConsoleRing, SharedRegion, StateStore


def test_shared_region_is_shared(tmp_path):
    a = SharedRegion(tmp_path / "r", 8192, create=True)
    b = SharedRegion(tmp_path / "r")
    a.view[100] = 0x5A
    assert b.view[100] == 0x5A and b.size == 8192 and a.address != 0


def test_state_store_commit_and_reload(tmp_path):
    s = StateStore(tmp_path / "s", 1 << 16)
    assert s.load() is None
    s.commit(b"one")
    s.commit(b"two")
    assert s.load() == b"two" and s.commits == 2
    assert StateStore(tmp_path / "s").load() == b"two"


def test_state_store_survives_a_torn_commit(tmp_path):
    s = StateStore(tmp_path / "s", 1 << 16)
    s.commit(b"good")
    # A writer killed mid-commit has scribbled over the idle slot but not
    # flipped the header: the last complete snapshot must still load.
    live = struct.unpack_from("<I", s.region.map, 4)[0]
    idle_off = PAGE + (1 - live) * s.slot_size
    s.region.map[idle_off:idle_off + 16] = b"\xff" * 16
    assert StateStore(tmp_path / "s").load() == b"good"


def test_console_ring_wraps_and_tracks_space(tmp_path):
    w = ConsoleRing(tmp_path / "c", capacity=8, create=True)
    r = ConsoleRing(tmp_path / "c")
    data = b"abcdefghijkl"
    written = 0
    for i, byte in enumerate(data[:8]):
        assert w.space(written) > 0
        w.put(written, byte)
        written += 1
    assert w.space(written) == 0
    w.publish(written)
    assert r.read(0, r.published) == data[:8]
    r.consume(8)
    for byte in data[8:]:
        w.put(written, byte)
        written += 1
    w.publish(written)
    assert r.read(8, r.published) == data[8:]
