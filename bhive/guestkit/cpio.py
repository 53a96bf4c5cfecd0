"""The "newc" cpio format (070701) the Linux initramfs unpacker reads.

Written in Python so the kit needs no host cpio.  Layout of one entry
(Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte
ASCII header of "070701" and 13 eight-digit hex fields, the NUL-terminated
name, padding to 4 bytes, the data, padding to 4 bytes.  The archive ends
with an entry named "TRAILER!!!".
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
          "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")


@dataclass
class Entry:
    name: str
    mode: int                 # includes the file type bits (stat.S_IFREG, ...)
    data: bytes = b""         # file contents, or the symlink target
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    rdevmajor: int = 0
    rdevminor: int = 0
    nlink: int = 1
    ino: int = 0

    @property
    def kind(self) -> str:
        return {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
                stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo"}.get(stat.S_IFMT(self.mode), "?")


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


class CpioWriter:
    """Builds a newc archive in memory; entries keep the order given."""

    def __init__(self, mtime: int = 0):
        self.mtime = mtime
        self._parts: list[bytes] = []
        self._names: set[str] = set()
        self._ino = 721          # like gen_init_cpio, start away from 0

    def _add(self, e: Entry) -> None:
        name = e.name.strip("/") or "."
        if name in self._names:
            raise ValueError(f"duplicate cpio entry {name!r}")
        self._names.add(name)
        self._ino += 1
        bname = name.encode() + b"\0"
        vals = (e.ino or self._ino, e.mode, e.uid, e.gid, e.nlink, e.mtime or self.mtime,
                len(e.data), 0, 0, e.rdevmajor, e.rdevminor, len(bname), 0)
        hdr = MAGIC + b"".join(b"%08X" % v for v in vals)
        self._parts += [hdr, bname, _pad(len(hdr) + len(bname)), e.data, _pad(len(e.data))]

    def dir(self, name: str, mode: int = 0o755) -> None:
        self._add(Entry(name, stat.S_IFDIR | mode, nlink=2))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(Entry(name, stat.S_IFREG | mode, data))

    def symlink(self, name: str, target: str) -> None:
        self._add(Entry(name, stat.S_IFLNK | 0o777, target.encode()))

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(Entry(name, stat.S_IFCHR | mode, rdevmajor=major, rdevminor=minor))

    def has(self, name: str) -> bool:
        return name.strip("/") in self._names

    def getvalue(self) -> bytes:
        bname = TRAILER.encode() + b"\0"
        hdr = MAGIC + b"".join(b"%08X" % v for v in (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(bname), 0))
        tail = hdr + bname + _pad(len(hdr) + len(bname))
        body = b"".join(self._parts) + tail
        return body + _pad(len(body))


def parse(data: bytes) -> list[Entry]:
    """Read a newc archive back (uncompressed or gzip), up to the trailer.
    Raises ValueError on anything malformed."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    out: list[Entry] = []
    pos = 0
    while True:
        if data[pos:pos + 6] != MAGIC:
            raise ValueError(f"bad cpio magic at {pos}: {data[pos:pos + 6]!r}")
        if pos % 4:
            raise ValueError(f"cpio header at {pos} is not 4-byte aligned")
        vals = {}
        for i, f in enumerate(FIELDS):
            vals[f] = int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16)
        pos += 110
        nb = data[pos:pos + vals["namesize"]]
        if not nb.endswith(b"\0"):
            raise ValueError(f"cpio name at {pos} is not NUL-terminated")
        name = nb[:-1].decode()
        pos += vals["namesize"]
        pos += -pos % 4
        if name == TRAILER:
            return out
        body = data[pos:pos + vals["filesize"]]
        if len(body) != vals["filesize"]:
            raise ValueError(f"cpio entry {name!r} truncated")
        pos += vals["filesize"]
        pos += -pos % 4
        out.append(Entry(name, vals["mode"], bytes(body), vals["uid"], vals["gid"], vals["mtime"],
                         vals["rdevmajor"], vals["rdevminor"], vals["nlink"], vals["ino"]))
