"""The decompressed kernel, cached on the host by the content of the
bzImage's compressed payload, so that the decompression (about 1 s for an
xz kernel) is paid once per kernel rather than at every launch.  The one
part of bhive.linux that touches the filesystem.

    $BHIVE_CACHE/vmlinux/vmlinux-<sha256 of the payload, 24 hex digits>

The same file is what QEMU boots through PVH (`-kernel vmlinux`) in
benchmarks/linux_boot.py.  A cache that cannot be written only costs the
decompression: the kernel is still returned.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .bzimage import BzImage


def vmlinux_path(image: BzImage) -> Path:
    """Where `image`'s decompressed kernel is (or goes) in the cache."""
    from ..guestbuild import cache_dir
    key = hashlib.sha256(image.payload).hexdigest()[:24]
    return cache_dir("vmlinux") / f"vmlinux-{key}"


def cached_vmlinux(image: BzImage) -> bytes:
    """`image.vmlinux()`, from the cache when an earlier launch put it there."""
    try:
        path = vmlinux_path(image)
        return path.read_bytes()
    except FileNotFoundError:
        pass
    except OSError:
        return image.vmlinux()
    data = image.vmlinux()
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)            # whole or absent: a concurrent launch reads one or the other
    except OSError:
        tmp.unlink(missing_ok=True)
    return data


def vmlinux_file(image: BzImage) -> Path:
    """The decompressed kernel as a file (for a peer VMM to boot)."""
    path = vmlinux_path(image)
    if not path.exists():
        cached_vmlinux(image)
        if not path.exists():
            raise OSError(f"cannot write the decompressed kernel to {path}")
    return path
