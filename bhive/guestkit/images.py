"""Debian 12 and 13 disk images for the IDE disk, built with mmdebstrap.

    build_image("debian-13")  -> Image (disk, vmlinuz, initrd, info)

A raw 2 GiB sparse disk: an MBR partition table with one Linux partition
from sector 2048 to the end, ext4, root=/dev/sda1.  On it: systemd, udev,
a serial getty on ttyS0, root with an empty password (login as root at
`login:`, no password prompt), linux-image-amd64 of the suite and its
initramfs-tools initramfs (MODULES=list: ata_piix, sd_mod, ext4, see
guests/debian/setup-hook.sh).  The kernel and initramfs are also copied
beside the image for `--kernel/--initrd`: bhive and QEMU `-kernel` boot
them directly, there is no boot loader on the disk.

Built without loop devices or mounts of our own: mmdebstrap fills a
directory, `mkfs.ext4 -d` makes the file system from it in a
partition-sized file, sfdisk writes the partition table into the image
file, and the file system is copied in at 1 MiB (sparse).

mmdebstrap's mode (all three checked by hand on this sandbox, as root):
"unshare" first: as root mmdebstrap unshares no user namespace, only the
mount, pid, uts and ipc ones, so its mounts of /proc, /sys and /dev never
touch the host's mount table and the directory gets the right owners
(about 50 s for bookworm here).  Where no mount namespace can be made (an
unprivileged container), "fakechroot" (mmdebstrap's recommends bring it):
no mounts at all, the result as a tarball that we, as root, unpack with
its owners (same packages, same initrd bytes; slower, ~3 min).  "root"
works too where mounting is allowed but mounts in the host's namespace, so
it is only taken when forced.  $BHIVE_MMDEBSTRAP_MODE forces one;
"chrootless" is not offered: not every essential package supports it.

Cached under <guest-kit cache>/images/NAME-KEY/, KEY a hash of the recipe
(RECIPE_VERSION, the suite, the package list, the hook scripts, the sizes),
so any change to the recipe builds a new image; older ones of the same
name are removed once the new one is complete.  The mirror is the host's
(debian.mirror()), with the suite changed for trixie.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .debian import FetchError, mirror

REPO = Path(__file__).resolve().parent.parent.parent
HOOKS = REPO / "guests" / "debian"

RECIPE_VERSION = 1          # bump when the build changes in a way the key below does not see
IMAGES = {"debian-12": "bookworm", "debian-13": "trixie"}
PACKAGES = ("systemd", "systemd-sysv", "udev", "login", "passwd", "kmod",
            "linux-image-amd64", "initramfs-tools", "zstd")
DISK_SIZE = 2 << 30         # bytes, sparse: room for the 256 MiB write tests twice over
PART_START = 2048           # sectors: the first partition at 1 MiB, as fdisk puts it
SECTOR = 512
# A fixed time for every timestamp mmdebstrap and mke2fs write, so a rebuild
# of the same packages gives the same file system.
SOURCE_DATE_EPOCH = 1700000000
MODE_ENV = "BHIVE_MMDEBSTRAP_MODE"
MODES = ("unshare", "root", "fakechroot")

__all__ = ["IMAGES", "Image", "build_image", "cached_image", "image_dir", "recipe_key"]


@dataclass(frozen=True)
class Image:
    name: str           # debian-13
    disk: Path          # the raw image
    vmlinuz: Path       # its kernel, for --kernel
    initrd: Path        # its initramfs-tools initramfs, for --initrd
    info: dict = field(repr=False, compare=False)   # suite, release, packages {name: version}, mode, seconds


def recipe_key(name: str) -> str:
    h = hashlib.sha256()
    h.update(f"recipe{RECIPE_VERSION}\0{IMAGES[name]}\0{' '.join(PACKAGES)}\0{DISK_SIZE}\0{PART_START}\0"
             f"{SOURCE_DATE_EPOCH}\0".encode())
    for hook in sorted(HOOKS.glob("*.sh")):
        h.update(hook.name.encode() + b"\0" + hook.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def image_dir(name: str) -> Path:
    from . import cache_root
    return cache_root() / "images" / f"{name}-{recipe_key(name)}"


def _check_name(name: str) -> None:
    if name not in IMAGES:
        raise FetchError(f"unknown image {name!r}; known: {', '.join(IMAGES)}")


def cached_image(name: str) -> Image | None:
    """The image if it is built for the current recipe, else None."""
    _check_name(name)
    d = image_dir(name)
    try:
        info = json.loads((d / "info.json").read_text())
    except (OSError, ValueError):
        return None
    img = Image(name, d / "disk.img", d / "vmlinuz", d / "initrd.img", info)
    return img if all(p.is_file() for p in (img.disk, img.vmlinuz, img.initrd)) else None


def _progress(name: str, msg: str) -> None:
    print(f"guestkit: {name}: {msg}", file=sys.stderr, flush=True)


def _can_mount_in_namespace() -> bool:
    probe = tempfile.mkdtemp(prefix="bhive-mount-probe-")
    try:
        p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            f"mount -t tmpfs none {probe}"], capture_output=True, timeout=30)
        return p.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        os.rmdir(probe)


def choose_mode() -> str:
    forced = os.environ.get(MODE_ENV)
    if forced:
        if forced not in MODES:
            raise FetchError(f"${MODE_ENV}={forced!r}: expected one of {', '.join(MODES)}")
        return forced
    if os.geteuid() != 0:
        raise FetchError("building a disk image needs root (mkfs.ext4 -d keeps the owners it sees); "
                         "run as root")
    if _can_mount_in_namespace():
        return "unshare"
    if shutil.which("fakechroot"):
        return "fakechroot"
    raise FetchError("mmdebstrap can run here in no mode: no mount namespace can be made (unshare) and "
                     "fakechroot is not installed (apt-get install fakechroot fakeroot)")


def _need_tools() -> None:
    missing = [t for t in ("mmdebstrap", "mkfs.ext4", "sfdisk", "dd") if shutil.which(t) is None]
    if missing:
        raise FetchError(f"{', '.join(missing)} not installed (scripts/install-deps.sh installs "
                         "mmdebstrap, e2fsprogs, fdisk)")


def _run(name: str, argv: list[str], log: Path, env: dict | None = None, echo=None) -> None:
    """Run a build step, its output to `log`; lines `echo` matches are shown
    as progress.  A failure raises FetchError with the log's tail."""
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(argv)}\n")
        fh.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, errors="replace")
        for line in proc.stdout:
            fh.write(line)
            if echo and echo.search(line):
                _progress(name, line.strip())
        rc = proc.wait()
    if rc != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise FetchError(f"{argv[0]} failed (exit {rc}); the log is {log}; its tail:\n{tail}")


_MMDEBSTRAP_PROGRESS = re.compile(r"^(I: (running apt-get update|downloading packages|installing|"
                                  r"running --customize|success)|E: |W: (?!Download is performed unsandboxed))")


def _debootstrap(name: str, mode: str, work: Path, log: Path) -> Path:
    """mmdebstrap the suite into work/root (as directory, or through a tarball
    in the modes that cannot give a directory the right owners)."""
    suite = IMAGES[name]
    m = mirror()
    root = work / "root"
    target = root if mode in ("root", "unshare") else work / "root.tar"
    argv = ["mmdebstrap", f"--mode={mode}", "--variant=essential",
            f"--include={','.join(PACKAGES)}",
            "--aptopt=APT::Install-Recommends \"false\"",
            "--aptopt=Acquire::Languages \"none\"",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
            f"--setup-hook=sh {HOOKS / 'setup-hook.sh'} \"$1\"",
            f"--customize-hook=sh {HOOKS / 'customize-hook.sh'} \"$1\" bhive-{name}",
            suite, str(target), f"deb [signed-by={m.keyring}] {m.uri} {suite} main"]
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH), LC_ALL="C.UTF-8")
    _run(name, argv, log, env, _MMDEBSTRAP_PROGRESS)
    if target != root:
        root.mkdir()
        # we are root: the tarball's owners and modes are restored as recorded
        _run(name, ["tar", "--numeric-owner", "-xpf", str(target), "-C", str(root)], log)
        target.unlink()
    return root


def _mbr(disk: Path, key: str, log: Path, name: str) -> None:
    # a disk identifier from the recipe key: the same recipe, the same bytes
    script = (f"label: dos\nlabel-id: 0x{key[:8]}\nunit: sectors\n\n"
              f"start={PART_START}, type=83, bootable\n")
    with open(log, "a") as fh:
        fh.write(f"$ sfdisk {disk}\n{script}")
        p = subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(disk)], input=script,
                           text=True, stdout=fh, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise FetchError(f"sfdisk failed (exit {p.returncode}); see {log}")


def partition_table(disk: Path) -> list[tuple[int, int, int, bool]]:
    """The MBR's primary partitions: (type, first sector, sectors, bootable)."""
    with open(disk, "rb") as f:
        mbr = f.read(512)
    if mbr[510:512] != b"\x55\xaa":
        raise ValueError(f"{disk}: no MBR boot signature")
    out = []
    for i in range(4):
        e = mbr[446 + 16 * i:462 + 16 * i]
        status, ptype = e[0], e[4]
        lba, count = struct.unpack_from("<II", e, 8)
        if ptype:
            out.append((ptype, lba, count, status == 0x80))
    return out


def ext4_superblock(disk: Path, offset: int) -> dict:
    """The fields of the ext4 superblock at `offset` (the partition's start)
    the tests look at; ValueError when the magic is wrong."""
    with open(disk, "rb") as f:
        f.seek(offset + 1024)
        sb = f.read(1024)
    magic, = struct.unpack_from("<H", sb, 0x38)
    if magic != 0xEF53:
        raise ValueError(f"{disk}: no ext4 superblock at {offset} (magic {magic:#x})")
    blocks_lo, = struct.unpack_from("<I", sb, 0x4)
    log_block, = struct.unpack_from("<I", sb, 0x18)
    compat, incompat, ro_compat = struct.unpack_from("<III", sb, 0x5C)
    blocks_hi, = struct.unpack_from("<I", sb, 0x150)
    return {"block_size": 1024 << log_block, "blocks": blocks_lo | (blocks_hi << 32),
            "uuid": str(uuid.UUID(bytes=sb[0x68:0x78])), "label": sb[0x78:0x88].rstrip(b"\0").decode(),
            "feature_compat": compat, "feature_incompat": incompat, "feature_ro_compat": ro_compat}


def _assemble(name: str, root: Path, work: Path, key: str, log: Path) -> Path:
    part_bytes = DISK_SIZE - PART_START * SECTOR
    part = work / "part.img"
    disk = work / "disk.img"
    fs_uuid = str(uuid.UUID(hashlib.sha256(f"bhive-{name}-{key}".encode()).hexdigest()[:32]))
    with open(part, "wb") as f:
        f.truncate(part_bytes)
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(SOURCE_DATE_EPOCH), LC_ALL="C")
    _run(name, ["mkfs.ext4", "-q", "-F", "-L", "root", "-U", fs_uuid, "-E", f"hash_seed={fs_uuid}",
                "-d", str(root), str(part)], log, env)
    with open(disk, "wb") as f:
        f.truncate(DISK_SIZE)
    _mbr(disk, key, log, name)
    _run(name, ["dd", f"if={part}", f"of={disk}", "bs=1M", f"seek={PART_START * SECTOR >> 20}",
                "conv=notrunc,sparse", "status=none"], log)
    part.unlink()
    return disk


def _packages(root: Path) -> dict[str, str]:
    p = subprocess.run(["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W",
                        "-f", "${Package} ${Version}\n"], capture_output=True, text=True)
    return dict(l.split(" ", 1) for l in p.stdout.splitlines() if " " in l)


def build_image(name: str, rebuild: bool = False) -> Image:
    """The image `name` (a key of IMAGES) for the current recipe, built if
    it is not cached.  Progress goes to stderr; the full log of a build is
    kept beside the image (build.log)."""
    _check_name(name)
    if not rebuild:
        img = cached_image(name)
        if img:
            return img
    _need_tools()
    final = image_dir(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    # one build of an image at a time (two test runs sharing a cache): the
    # second waits, then finds the first one's image
    with open(final.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not rebuild:
            img = cached_image(name)
            if img:
                return img
        return _build_locked(name, final)


def _build_locked(name: str, final: Path) -> Image:
    mode = choose_mode()
    key = recipe_key(name)
    for stale in final.parent.glob(f"build-{name}-*"):       # what a failed or killed build left
        shutil.rmtree(stale, ignore_errors=True)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f"build-{name}-", dir=final.parent))
    log = work / "build.log"
    try:
        _progress(name, f"building {IMAGES[name]} with mmdebstrap ({mode} mode), recipe {key}")
        root = _debootstrap(name, mode, work, log)
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        if len(kernels) != 1:
            raise FetchError(f"{name}: expected one /boot/vmlinuz-*, found {[k.name for k in kernels]}")
        release = kernels[0].name.removeprefix("vmlinuz-")
        initrd = root / "boot" / f"initrd.img-{release}"
        if not initrd.is_file():
            raise FetchError(f"{name}: the kernel's postinst made no /boot/initrd.img-{release}")
        shutil.copyfile(kernels[0], work / "vmlinuz")
        shutil.copyfile(initrd, work / "initrd.img")
        packages = _packages(root)
        _progress(name, f"{len(packages)} packages, kernel {release}; making the ext4 file system")
        _assemble(name, root, work, key, log)
        shutil.rmtree(root)
        info = {"name": name, "suite": IMAGES[name], "recipe": key, "recipe_version": RECIPE_VERSION,
                "release": release, "mode": mode, "disk_size": DISK_SIZE, "partition_start": PART_START,
                "seconds": round(time.monotonic() - t0, 1), "packages": packages}
        (work / "info.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    except BaseException:
        shutil.rmtree(work / "root", ignore_errors=True)
        raise
    for old in final.parent.glob(f"{name}-*"):
        if old != final and old.is_dir() and re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{12}}", old.name):
            shutil.rmtree(old, ignore_errors=True)
    _progress(name, f"done in {time.monotonic() - t0:.0f} s: {final / 'disk.img'}")
    return cached_image(name)
