"""Shared memory: guest RAM, accelerator platform state, actor state, console.

Every region is a file in the VM's run directory (which lives on tmpfs), so
any process of the VM maps it by path and a restarted actor finds what its
predecessor left.  Nothing here copies guest data through messages.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from pathlib import Path

PAGE = 4096


class SharedRegion:
    """A MAP_SHARED mapping of a file; `address` is its host address."""

    def __init__(self, path: str | os.PathLike, size: int | None = None, create: bool = False):
        self.path = Path(path)
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            elif size is None:
                size = os.fstat(fd).st_size
            self.size = size
            self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.view = memoryview(self.map)
        self._anchor = ctypes.c_char.from_buffer(self.map)
        self.address = ctypes.addressof(self._anchor)

    def close(self) -> None:
        self._anchor = None
        self.view.release()
        self.map.close()


class StateStore:
    """Crash-consistent snapshots of an actor's state in shared memory.

    Two slots and a header word naming the live one: a commit writes the
    idle slot, then flips the header with a single aligned 4-byte store, so
    SIGKILL at any instant leaves either the old or the new snapshot intact.
    """

    MAGIC = 0x42485354  # "BHST"
    _HEADER = struct.Struct("<IIQ")  # magic, live slot (0/1, or 2 = empty), commit count
    _LEN = struct.Struct("<I")

    def __init__(self, path: str | os.PathLike, capacity: int = 1 << 20):
        path = Path(path)
        fresh = not path.exists()
        self.region = SharedRegion(path, capacity, create=fresh) if fresh else SharedRegion(path)
        self.slot_size = (self.region.size - PAGE) // 2
        if fresh or self._HEADER.unpack_from(self.region.map, 0)[0] != self.MAGIC:
            self._HEADER.pack_into(self.region.map, 0, self.MAGIC, 2, 0)

    def load(self) -> bytes | None:
        magic, live, _ = self._HEADER.unpack_from(self.region.map, 0)
        if magic != self.MAGIC or live not in (0, 1):
            return None
        off = PAGE + live * self.slot_size
        (n,) = self._LEN.unpack_from(self.region.map, off)
        return bytes(self.region.map[off + 4: off + 4 + n])

    def commit(self, blob: bytes) -> None:
        if len(blob) + 4 > self.slot_size:
            raise ValueError(f"state of {len(blob)} bytes exceeds the {self.slot_size}-byte slot")
        _, live, count = self._HEADER.unpack_from(self.region.map, 0)
        idle = 0 if live != 0 else 1
        off = PAGE + idle * self.slot_size
        self._LEN.pack_into(self.region.map, off, len(blob))
        self.region.map[off + 4: off + 4 + len(blob)] = blob
        # Count first, then the live-slot word: readers trust only the latter.
        struct.pack_into("<Q", self.region.map, 8, count + 1)
        struct.pack_into("<I", self.region.map, 4, idle)

    @property
    def commits(self) -> int:
        return self._HEADER.unpack_from(self.region.map, 0)[2]


class ConsoleRing:
    """Single-producer byte ring from the console device to the supervisor.

    Header: published write count (u64), then the reader's consumed count
    (u64), which is what lets the producer apply back-pressure (a full
    ring keeps the UART's THRE clear).  Bytes up to the published count are
    final; the producer may have written further bytes that are not yet
    committed (see `bhive.actors.runtime`), and a restarted producer
    republishes from its committed count, so nothing is lost or doubled.
    """

    HEADER = 64

    def __init__(self, path: str | os.PathLike, capacity: int = 1 << 16, create: bool = False):
        if create:
            self.region = SharedRegion(path, self.HEADER + capacity, create=True)
        else:
            self.region = SharedRegion(path)
        self.capacity = self.region.size - self.HEADER

    @property
    def published(self) -> int:
        return struct.unpack_from("<Q", self.region.map, 0)[0]

    def publish(self, count: int) -> None:
        struct.pack_into("<Q", self.region.map, 0, count)

    @property
    def consumed(self) -> int:
        return struct.unpack_from("<Q", self.region.map, 8)[0]

    def consume(self, count: int) -> None:
        struct.pack_into("<Q", self.region.map, 8, count)

    def space(self, written: int) -> int:
        """Free bytes for a producer that has written `written` bytes."""
        return self.capacity - (written - self.consumed)

    def put(self, position: int, byte: int) -> None:
        self.region.map[self.HEADER + position % self.capacity] = byte

    def read(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the stream (end - start <= capacity)."""
        out = bytearray()
        while start < end:
            i = start % self.capacity
            n = min(end - start, self.capacity - i)
            out += self.region.map[self.HEADER + i: self.HEADER + i + n]
            start += n
        return bytes(out)
