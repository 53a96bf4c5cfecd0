"""Disk images: raw files, sparse, read and written straight from guest RAM.

The IDE actor uses only this API:

    img = open_image(path, readonly=False, snapshot_dir=None)
    img.size, img.readonly
    img.readinto(offset, buf)   # buf: a writable memoryview (e.g. shared guest RAM); returns len(buf)
    img.write(offset, buf)      # buf: bytes-like; applied in call order, durable after flush()
    img.flush()                 # fdatasync: what the guest's FLUSH CACHE promises
    img.close()

(`open_drive(drive, rundir)` opens a config's DriveConfig that way.)
Every failure is an `ImageError` whose message is one line.

Raw images stay sparse: holes read as zeros without being filled, and a
write of zeros onto a hole is not applied (it would only allocate zeros).

`snapshot_dir` (QEMU's -snapshot): the base image is opened read-only and
never written; writes go to a throw-away overlay in that directory, two
files that a restarted actor process reopens to see its predecessor's
writes: `overlay.data`, a sparse file as large as the image holding the
written sectors at their own offsets, and `overlay.map`, a header and a
bitmap with one bit per 512-byte sector written (mapped shared, so a bit
is in the page cache the moment it is set, even if the process is then
killed).  Data is written before its bits are set: a process killed in
between leaves the sectors reading as before, which a retried command
writes again.  One directory holds one image's overlay.

Locking: two VMs may not open one writable image.  The supervisor (not the
actor, whose restart must never race its own lock) takes `lock_image()`
for each drive before any worker starts and holds it for the VM's life:
an exclusive lock for a writable image, a shared one for a read-only or
snapshot drive (shared locks do not conflict with each other).  The locks
are Linux open-file-description locks (fcntl F_OFD_SETLK) on the image
file itself: they belong to the open file, not the process, are released
when it is closed or its holder dies, and are not inherited by exec'd
workers (the descriptor is close-on-exec).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import struct
from pathlib import Path

SECTOR = 512                       # the overlay's allocation unit (one ATA sector)

OVERLAY_DATA = "overlay.data"
OVERLAY_MAP = "overlay.map"
# overlay.map header: magic, version, sector size, image size, the base
# image's st_dev and st_ino (an overlay belongs to one image); the bitmap
# follows at MAP_HEADER, bit n of byte n // 8 (LSB first) = sector n written.
MAP_MAGIC = b"BHIVEOVL"
MAP_VERSION = 1
MAP_HEADER_FMT = "<8sIIQQQ"
MAP_HEADER = 4096

# struct flock on Linux x86-64/aarch64: l_type, l_whence, l_start, l_len, l_pid (+ padding)
_FLOCK = "hhqqi4x"


class ImageError(Exception):
    """An image that cannot be used as asked; str() is one line."""


def _oserror(path, exc: OSError, doing: str) -> ImageError:
    return ImageError(f"{path}: cannot {doing}: {exc.strerror or exc}")


def _open_regular(path: Path, flags: int) -> tuple[int, os.stat_result]:
    """Open an image file: a regular file, not a directory or a device."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not a disk image") from None
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except PermissionError:
        mode = "writing" if flags & os.O_RDWR else "reading"
        hint = " (attach it read-only: readonly=on, or use -snapshot)" if flags & os.O_RDWR else ""
        raise ImageError(f"{path}: permission denied for {mode}{hint}") from None
    except OSError as exc:
        raise _oserror(path, exc, "open") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ImageError(f"{path}: not a regular file (bhive reads raw image files)")
    return fd, st


def _check_range(img, offset: int, length: int) -> None:
    if offset < 0 or offset + length > img.size:
        raise ImageError(f"{img.path}: access of {length} bytes at {offset} is outside the "
                         f"image ({img.size} bytes)")


def _pread_full(fd: int, view: memoryview, offset: int, path) -> None:
    """Fill `view` from `fd` at `offset` (preadv straight into it)."""
    done = 0
    while done < len(view):
        try:
            n = os.preadv(fd, [view[done:]], offset + done)
        except InterruptedError:
            continue
        except OSError as exc:
            raise _oserror(path, exc, "read") from None
        if n == 0:
            # The file shrank under us: what is past its end reads as zeros.
            view[done:] = bytes(len(view) - done)
            return
        done += n


def _pwrite_full(fd: int, view: memoryview, offset: int, path) -> None:
    done = 0
    while done < len(view):
        try:
            n = os.pwritev(fd, [view[done:]], offset + done)
        except InterruptedError:
            continue
        except OSError as exc:
            raise _oserror(path, exc, "write") from None
        done += n


def _byte_view(buf, writable: bool) -> memoryview:
    view = memoryview(buf)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if writable and view.readonly:
        raise ImageError("readinto needs a writable buffer")
    return view


def _is_hole(fd: int, offset: int, length: int) -> bool:
    """True if [offset, offset + length) holds no data (a hole or past EOF)."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) >= offset + length
    except OSError as exc:
        if exc.errno == errno.ENXIO:        # no data at or after offset
            return True
        return False                        # SEEK_DATA unsupported: assume data


class RawImage:
    """A raw image file, read and written in place."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        self.fd, st = _open_regular(path, os.O_RDONLY if readonly else os.O_RDWR)
        self.size = st.st_size

    def readinto(self, offset: int, buf) -> int:
        view = _byte_view(buf, writable=True)
        _check_range(self, offset, len(view))
        _pread_full(self.fd, view, offset, self.path)
        return len(view)

    def write(self, offset: int, buf) -> int:
        if self.readonly:
            raise ImageError(f"{self.path}: the image is read-only")
        view = _byte_view(buf, writable=False)
        _check_range(self, offset, len(view))
        # Zeros onto a hole change nothing a reader sees: skipping them keeps
        # the image sparse (e.g. mkfs zeroing a fresh image).  Earlier writes
        # are already in the file (pwritev is synchronous), so order holds.
        if view and view[0] == 0 and _is_hole(self.fd, offset, len(view)) and \
                view.tobytes() == bytes(len(view)):
            return len(view)
        _pwrite_full(self.fd, view, offset, self.path)
        return len(view)

    def flush(self) -> None:
        if self.readonly:
            return
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise _oserror(self.path, exc, "flush") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SnapshotImage:
    """A read-only base image under a writable overlay in `snapshot_dir`."""

    readonly = False

    def __init__(self, path: Path, snapshot_dir: Path):
        self.path = path
        self.base = RawImage(path, readonly=True)
        self.size = self.base.size
        self.sectors = (self.size + SECTOR - 1) // SECTOR
        st = os.fstat(self.base.fd)
        header = struct.pack(MAP_HEADER_FMT, MAP_MAGIC, MAP_VERSION, SECTOR, self.size, st.st_dev, st.st_ino)
        snapshot_dir = Path(snapshot_dir)
        try:
            snapshot_dir.mkdir(parents=True, exist_ok=True)
            self.map_fd = os.open(snapshot_dir / OVERLAY_MAP, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self.base.close()
            raise _oserror(snapshot_dir, exc, "create the snapshot overlay") from None
        self.data_fd = -1
        self.map = None
        try:
            self._lock_overlay(snapshot_dir)
            map_size = MAP_HEADER + (self.sectors + 7) // 8
            old = os.pread(self.map_fd, len(header), 0)
            if old.strip(b"\0") and old != header:
                raise ImageError(f"{snapshot_dir}: holds the snapshot overlay of another image")
            self.data_fd = os.open(snapshot_dir / OVERLAY_DATA, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if old != header:
                # New (or its creator died before writing the header, so
                # before any data): start from nothing.
                for fd, size in ((self.data_fd, self.size), (self.map_fd, map_size)):
                    os.ftruncate(fd, 0)
                    os.ftruncate(fd, size)
                os.pwrite(self.map_fd, header, 0)
            self.map = mmap.mmap(self.map_fd, map_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except ImageError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise _oserror(snapshot_dir, exc, "open the snapshot overlay") from None

    def _lock_overlay(self, snapshot_dir: Path) -> None:
        """One process at a time uses an overlay (a restarted actor's
        predecessor is dead, so its lock is gone)."""
        try:
            fcntl.fcntl(self.map_fd, fcntl.F_OFD_SETLK, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise ImageError(f"{snapshot_dir}: the snapshot overlay is open in another process") from None
            raise

    # -- the allocation bitmap ------------------------------------------------
    def _allocated(self, sector: int) -> bool:
        return bool(self.map[MAP_HEADER + (sector >> 3)] & (1 << (sector & 7)))

    def _runs(self, first: int, last: int):
        """(start sector, end sector, in overlay?) runs covering [first, last)."""
        lo, hi = MAP_HEADER + (first >> 3), MAP_HEADER + ((last + 7) >> 3)
        chunk = self.map[lo:hi]
        if not chunk.strip(b"\0"):
            yield first, last, False
            return
        if not chunk.strip(b"\xff"):
            yield first, last, True
            return
        start, state = first, self._allocated(first)
        for s in range(first + 1, last):
            now = self._allocated(s)
            if now != state:
                yield start, s, state
                start, state = s, now
        yield start, last, state

    def _mark(self, first: int, last: int) -> None:
        s = first
        while s < last:
            if s & 7 == 0 and s + 8 <= last:
                n = (last - s) >> 3
                self.map[MAP_HEADER + (s >> 3):MAP_HEADER + (s >> 3) + n] = b"\xff" * n
                s += n << 3
            else:
                self.map[MAP_HEADER + (s >> 3)] |= 1 << (s & 7)
                s += 1

    # -- I/O --------------------------------------------------------------------
    def readinto(self, offset: int, buf) -> int:
        view = _byte_view(buf, writable=True)
        _check_range(self, offset, len(view))
        if not view:
            return 0
        end = offset + len(view)
        for s0, s1, in_overlay in self._runs(offset // SECTOR, (end + SECTOR - 1) // SECTOR):
            a, b = max(offset, s0 * SECTOR), min(end, s1 * SECTOR)
            fd = self.data_fd if in_overlay else self.base.fd
            _pread_full(fd, view[a - offset:b - offset], a, self.path)
        return len(view)

    def write(self, offset: int, buf) -> int:
        view = _byte_view(buf, writable=False)
        _check_range(self, offset, len(view))
        if not view:
            return 0
        end = offset + len(view)
        first, last = offset // SECTOR, (end + SECTOR - 1) // SECTOR
        a, b = first * SECTOR, min(last * SECTOR, self.size)
        if a == offset and b == end:
            _pwrite_full(self.data_fd, view, offset, self.path)
        else:
            # A partly written sector enters the overlay whole: what the
            # guest sees of it now, with the new bytes over it.
            merged = bytearray(b - a)
            self.readinto(a, memoryview(merged)[:min(SECTOR, b - a)])
            tail = (last - 1) * SECTOR
            if last - 1 > first:
                self.readinto(tail, memoryview(merged)[tail - a:])
            merged[offset - a:end - a] = view
            _pwrite_full(self.data_fd, memoryview(merged), a, self.path)
        self._mark(first, last)        # after the data: a kill in between loses the write, never tears it
        return len(view)

    def flush(self) -> None:
        try:
            os.fdatasync(self.data_fd)
            self.map.flush()
        except OSError as exc:
            raise _oserror(self.path, exc, "flush the snapshot overlay") from None

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None
        for name in ("data_fd", "map_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
        self.base.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_image(path, readonly: bool = False, snapshot_dir=None) -> RawImage | SnapshotImage:
    """Open a raw image: in place, read-only, or under a snapshot overlay
    kept in `snapshot_dir` (then `readonly` means the guest may not write
    either)."""
    path = Path(path)
    if snapshot_dir is not None and not readonly:
        return SnapshotImage(path, Path(snapshot_dir))
    return RawImage(path, readonly=readonly)


def open_drive(drive, rundir) -> RawImage | SnapshotImage:
    """Open a VM's drive (a `config.DriveConfig`) as its config says: a
    snapshot drive's overlay is the run directory's (`RunDir.snapshot_dir`),
    so the actor's successor reopens the same one."""
    return open_image(drive.file, readonly=drive.readonly,
                      snapshot_dir=rundir.snapshot_dir(drive.index) if drive.snapshot else None)


# -- locks held by the supervisor -----------------------------------------------

class ImageLock:
    """An OFD lock on an image file, held until release() (or the holder's death)."""

    def __init__(self, path: Path, fd: int, shared: bool):
        self.path, self.fd, self.shared = path, fd, shared

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)        # closing the open file description drops its lock
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _holder(path: Path) -> str | None:
    """The running VM whose config attaches `path`, for the error message."""
    from .rundir import all_vms
    try:
        target = os.stat(path)
    except OSError:
        return None
    for rd in all_vms():
        if not rd.is_live():
            continue
        info = rd.read_json("supervisor.json") or {}
        for drive in (info.get("config") or {}).get("drives", []):
            try:
                st = os.stat(drive["file"])
            except (OSError, KeyError, TypeError):
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                return rd.name
    return None


def lock_image(path, shared: bool = False) -> ImageLock:
    """Lock `path` for a VM: exclusively (a writable drive) or shared (a
    read-only or snapshot drive).  ImageError if another holder conflicts."""
    path = Path(path)
    fd, _ = _open_regular(path, os.O_RDONLY if shared else os.O_RDWR)
    kind = fcntl.F_RDLCK if shared else fcntl.F_WRLCK
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0))
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise _oserror(path, exc, "lock") from None
        vm = _holder(path)
        who = f"VM {vm!r}" if vm else "another process"
        how = "read-only" if shared else "read-write"
        raise ImageError(f"{path}: is in use by {who} (cannot open it {how}; "
                         f"another VM may share it only with readonly=on or -snapshot on both)") from None
    return ImageLock(path, fd, shared)


def lock_drives(drives) -> list[ImageLock]:
    """The locks for a VM's drives (`config.DriveConfig`s), all or none."""
    locks: list[ImageLock] = []
    try:
        for drive in drives:
            locks.append(lock_image(drive.file, shared=drive.readonly or drive.snapshot))
    except BaseException:
        release_all(locks)
        raise
    return locks


def release_all(locks) -> None:
    for lock in locks:
        lock.release()
