"""bhive.block: raw images (sparse, in order, durable on flush, straight
into mapped guest RAM), the -snapshot overlay (a second process sees the
first one's writes; the base image is never touched) and the image locks
between processes, the last also through the real CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bhive import block
from bhive.bus.shm import SharedRegion

MiB = 1 << 20


def sparse_image(path: Path, size: int = 16 * MiB) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pattern(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed) & 0xFF or 1 for i in range(n))


def run_python(code: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    """Another process (as a restarted actor, or a second VM, would be)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc


# -- raw images ------------------------------------------------------------------

def test_holes_stay_holes(tmp_path):
    path = sparse_image(tmp_path / "disk.img")
    with block.open_image(path) as img:
        assert img.size == 16 * MiB and not img.readonly
        buf = bytearray(4 * MiB)
        buf[:] = b"\xaa" * len(buf)
        assert img.readinto(8 * MiB, buf) == len(buf)
        assert buf == bytes(len(buf))                         # holes read as zeros ...
        assert os.stat(path).st_blocks == 0                   # ... and are not filled
        img.write(0, bytes(2 * MiB))                          # zeros onto a hole: nothing allocated
        img.flush()
        assert os.stat(path).st_blocks == 0
        img.write(5 * MiB, pattern(4096, 1))
        img.flush()
    blocks = os.stat(path).st_blocks
    assert 0 < blocks * 512 <= 64 * 1024, blocks              # one block's worth, not the image
    data = path.read_bytes()
    assert data[5 * MiB:5 * MiB + 4096] == pattern(4096, 1)
    assert data.count(0) == len(data) - 4096


def test_zeros_over_data_are_written(tmp_path):
    """Skipping zeros is only for holes: zeros over data must land."""
    path = sparse_image(tmp_path / "disk.img", MiB)
    with block.open_image(path) as img:
        img.write(4096, pattern(8192, 3))
        img.write(4096, bytes(8192))
        out = bytearray(8192)
        img.readinto(4096, out)
        assert out == bytes(8192)
    assert path.read_bytes() == bytes(MiB)


def test_writes_apply_in_order_and_are_visible_at_once(tmp_path):
    path = sparse_image(tmp_path / "disk.img", MiB)
    with block.open_image(path) as img:
        img.write(0, b"A" * 4096)
        img.write(2048, b"B" * 4096)                          # overlaps the first: the later wins
        img.write(1024, memoryview(b"C" * 512))
        img.write(3 * 512, bytearray(b"D" * 512))
        expect = b"A" * 1024 + b"C" * 512 + b"D" * 512 + b"B" * 4096
        # another open file sees them before any flush (no buffering in bhive)
        with open(path, "rb") as f:
            assert f.read(len(expect)) == expect
        out = bytearray(len(expect))
        assert img.readinto(0, out) == len(expect) and out == expect


def test_flush_is_fdatasync_on_the_image(tmp_path, monkeypatch):
    path = sparse_image(tmp_path / "disk.img", MiB)
    synced = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(os.fstat(fd).st_ino), real(fd)))
    with block.open_image(path) as img:
        img.write(0, b"x" * 512)
        img.flush()
    assert synced == [os.stat(path).st_ino]


def test_readinto_and_write_through_mapped_guest_ram(tmp_path):
    """The DMA path: preadv straight into a MAP_SHARED region (guest RAM),
    pwritev straight out of it; nothing around the target is touched."""
    path = sparse_image(tmp_path / "disk.img", MiB)
    path.write_bytes(pattern(MiB, 5))
    ram = SharedRegion(tmp_path / "ram", 2 * MiB, create=True)
    try:
        ram.view[:] = b"\xee" * (2 * MiB)
        with block.open_image(path) as img:
            assert img.readinto(65536, ram.view[4096 + 3:4096 + 3 + 128 * 1024]) == 128 * 1024
            assert ram.view[4096 + 3:4096 + 3 + 128 * 1024] == pattern(MiB, 5)[65536:65536 + 128 * 1024]
            assert ram.view[4096 + 2] == 0xEE and ram.view[4096 + 3 + 128 * 1024] == 0xEE
            # another process mapping the same RAM sees the bytes the read put there
            peek = run_python("""
                import sys
                from bhive.bus.shm import SharedRegion
                r = SharedRegion(sys.argv[1])
                sys.stdout.write(bytes(r.view[4099:4099 + 16]).hex())
            """, tmp_path / "ram")
            assert bytes.fromhex(peek.stdout.decode()) == pattern(MiB, 5)[65536:65536 + 16]
            ram.view[MiB:MiB + 8192] = pattern(8192, 9)
            img.write(512 * 100, ram.view[MiB:MiB + 8192])
            img.flush()
        assert path.read_bytes()[51200:51200 + 8192] == pattern(8192, 9)
    finally:
        ram.close()


def test_readonly_and_out_of_range(tmp_path):
    path = sparse_image(tmp_path / "disk.img", MiB)
    before = digest(path)
    with block.open_image(path, readonly=True) as img:
        assert img.readonly
        with pytest.raises(block.ImageError, match="read-only"):
            img.write(0, b"x")
        with pytest.raises(block.ImageError, match="outside the image"):
            img.readinto(MiB - 512, bytearray(1024))
    with block.open_image(path) as img:
        with pytest.raises(block.ImageError, match="outside the image"):
            img.write(MiB, b"x")
        with pytest.raises(block.ImageError, match="outside the image"):
            img.readinto(-512, bytearray(512))
    assert digest(path) == before


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_open_errors_are_one_line(tmp_path, what):
    path = tmp_path / "nope.img" if what == "missing" else tmp_path
    with pytest.raises(block.ImageError) as exc:
        block.open_image(path)
    assert "\n" not in str(exc.value)
    assert ("no such file" if what == "missing" else "is a directory") in str(exc.value)


# -- the snapshot overlay -----------------------------------------------------------

def test_snapshot_overlay(tmp_path):
    path = sparse_image(tmp_path / "base.img", 4 * MiB)
    base = pattern(4 * MiB, 11)
    path.write_bytes(base)
    before, mtime = digest(path), os.stat(path).st_mtime_ns
    snap = tmp_path / "run" / "snapshot" / "drive0"
    with block.open_image(path, snapshot_dir=snap) as img:
        assert img.size == 4 * MiB and not img.readonly
        img.write(MiB, b"W" * 8192)
        img.write(MiB + 100, b"xyz")                          # inside a written sector
        img.write(3 * MiB + 700, b"u" * 1000)                 # unaligned, over unwritten sectors
        img.write(4 * MiB - 512, bytes(512))                  # zeros are data here: the base is not zero
        img.flush()
        out = bytearray(4 * MiB)
        img.readinto(0, out)
    expect = bytearray(base)
    expect[MiB:MiB + 8192] = b"W" * 8192
    expect[MiB + 100:MiB + 103] = b"xyz"
    expect[3 * MiB + 700:3 * MiB + 1700] = b"u" * 1000
    expect[4 * MiB - 512:] = bytes(512)
    assert out == expect
    assert digest(path) == before and os.stat(path).st_mtime_ns == mtime
    assert sorted(p.name for p in snap.iterdir()) == [block.OVERLAY_DATA, block.OVERLAY_MAP]
    # the overlay holds what was written, sparsely
    assert os.stat(snap / block.OVERLAY_DATA).st_blocks * 512 <= 256 * 1024

    # A new process (a restarted actor) reopens it: the same disk, and it
    # goes on writing; the base is still untouched.
    run_python("""
        import sys
        from bhive import block
        img = block.open_image(sys.argv[1], snapshot_dir=sys.argv[2])
        out = bytearray(img.size)
        img.readinto(0, out)
        assert out[1 << 20:(1 << 20) + 8192] == b"W" * 100 + b"xyz" + b"W" * 8089, "lost the first writes"
        assert out[3 * (1 << 20) + 700:3 * (1 << 20) + 1700] == b"u" * 1000
        img.write(2 * (1 << 20), b"second")
    """, path, snap)
    with block.open_image(path, snapshot_dir=snap) as img:
        out = bytearray(4 * MiB)
        img.readinto(0, out)
    expect[2 * MiB:2 * MiB + 6] = b"second"
    assert out == expect
    assert digest(path) == before


def test_snapshot_survives_sigkill_of_its_writer(tmp_path):
    """The map is shared memory backed by the file: bits set just before a
    SIGKILL are there for the successor."""
    path = sparse_image(tmp_path / "base.img", MiB)
    snap = tmp_path / "snap"
    proc = run_python("""
        import os, signal, sys
        from bhive import block
        img = block.open_image(sys.argv[1], snapshot_dir=sys.argv[2])
        img.write(4096, b"K" * 4096)
        os.kill(os.getpid(), signal.SIGKILL)
    """, path, snap, check=False)
    assert proc.returncode == -9
    with block.open_image(path, snapshot_dir=snap) as img:
        out = bytearray(4096)
        img.readinto(4096, out)
        assert out == b"K" * 4096
    assert path.read_bytes() == bytes(MiB)


def test_snapshot_drive_lives_and_goes_with_the_run_directory(tmp_path):
    from bhive.config import DriveConfig
    from bhive.rundir import RunDir
    path = sparse_image(tmp_path / "base.img", MiB)
    rd = RunDir("snapvm", base=tmp_path / "run")
    rd.create()
    with block.open_drive(DriveConfig(path, index=2, snapshot=True), rd) as img:
        img.write(0, b"s" * 512)
    assert (rd.shm / "snapshot" / "drive2" / block.OVERLAY_MAP).exists()
    with block.open_drive(DriveConfig(path, index=2, snapshot=True), rd) as img:
        out = bytearray(512)
        img.readinto(0, out)
        assert out == b"s" * 512
    with block.open_drive(DriveConfig(path, index=2), rd) as img:        # not a snapshot: the image itself
        img.readinto(0, out)
        assert out == bytes(512)
    rd.drop_shared_memory()                                  # the VM ended
    assert not (rd.shm / "snapshot").exists()
    assert path.read_bytes() == bytes(MiB)


def test_snapshot_overlay_belongs_to_one_image_and_one_process(tmp_path):
    a = sparse_image(tmp_path / "a.img", MiB)
    b = sparse_image(tmp_path / "b.img", MiB)
    snap = tmp_path / "snap"
    with block.open_image(a, snapshot_dir=snap) as img:
        img.write(0, b"a")
        with pytest.raises(block.ImageError, match="open in another process"):
            block.open_image(a, snapshot_dir=snap)
    with pytest.raises(block.ImageError, match="overlay of another image"):
        block.open_image(b, snapshot_dir=snap)


def test_snapshot_readonly_is_plain_readonly(tmp_path):
    path = sparse_image(tmp_path / "base.img", MiB)
    with block.open_image(path, readonly=True, snapshot_dir=tmp_path / "snap") as img:
        with pytest.raises(block.ImageError):
            img.write(0, b"x")


# -- locks between processes ----------------------------------------------------------

HOLD = """
    import sys, time
    from bhive import block
    lock = block.lock_image(sys.argv[1], shared=sys.argv[2] == "shared")
    print("locked", flush=True)
    sys.stdin.read()        # until the test closes our stdin
"""


def hold_lock(path: Path, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD), str(path), mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"locked\n", proc.stderr.read()
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(10)


def test_locks_between_processes(tmp_path):
    path = sparse_image(tmp_path / "disk.img", MiB)
    writer = hold_lock(path, "exclusive")
    try:
        for shared in (False, True):
            with pytest.raises(block.ImageError, match="is in use by another process") as exc:
                block.lock_image(path, shared=shared)
            assert "\n" not in str(exc.value)
    finally:
        release(writer)
    lock = block.lock_image(path)               # the holder is gone: free again
    lock.release()

    reader = hold_lock(path, "shared")
    try:
        with block.lock_image(path, shared=True):        # read-only and snapshot drives share
            pass
        with pytest.raises(block.ImageError, match="in use"):
            block.lock_image(path)
    finally:
        release(reader)


def test_lock_drives_is_all_or_nothing(tmp_path):
    from bhive.config import DriveConfig
    a = sparse_image(tmp_path / "a.img", MiB)
    b = sparse_image(tmp_path / "b.img", MiB)
    other = hold_lock(b, "exclusive")
    try:
        with pytest.raises(block.ImageError):
            block.lock_drives([DriveConfig(a, index=0), DriveConfig(b, index=1)])
        with block.lock_image(a):               # a's lock was given back
            pass
    finally:
        release(other)


def test_two_vms_one_image_through_the_cli(tmp_path, bhive, spin):
    """The supervisor holds a writable image's lock for the VM's life: a
    second VM gets one line and status 2, whichever way it asks, and the
    image is free again once the first VM is stopped."""
    path = sparse_image(tmp_path / "disk.img", MiB)
    first = bhive.run("run", spin, "--name", "lock-a", "-hda", path, "--detach", timeout=60)
    assert first.returncode == 0, first.stderr
    try:
        for how in (["-hda", path], ["-drive", f"file={path},readonly=on"], ["-hda", path, "-snapshot"]):
            # at once: the CLI sees the detached supervisor fail (not the 25 s start-up timeout)
            second = bhive.run("run", spin, "--name", "lock-b", *how, "--detach", timeout=15)
            assert second.returncode == 2, second.stderr
            lines = second.stderr.decode().strip().splitlines()
            assert lines == [f"bhive: error: {path}: is in use by VM 'lock-a' (cannot open it "
                             f"{'read-write' if how == ['-hda', path] else 'read-only'}; another VM may share "
                             f"it only with readonly=on or -snapshot on both)"], lines
    finally:
        assert bhive.run("stop", "lock-a", timeout=30).returncode == 0
    again = bhive.run("run", spin, "--name", "lock-b", "-hda", path, "--watchdog", "0.5", timeout=60)
    assert again.returncode == 124, again.stderr
