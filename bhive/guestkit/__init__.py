"""The guest kit: stock Debian kernels and a busybox initramfs.

    fetch_kernel("bookworm-cloud")  -> Kernel (vmlinuz, config, version)
    fetch_busybox()                 -> path of a static busybox
    fetch_modules("trixie-generic") -> the kernel's IDE disk and ext4 modules (kmod.ModuleSet)
    build_initramfs()               -> path of a gzip newc cpio with /init and
                                       every kit kernel's disk modules

Everything is cached under $BHIVE_CACHE/guestkit (default
<repo>/.cache/guestkit); a second call costs nothing.  See `debian.py` for
how packages are fetched without touching the host's apt state.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import exithelper, kmod
from .cpio import CpioWriter
from .debian import AptSuite, FetchError, extract_members, mirror_reachable

REPO = Path(__file__).resolve().parent.parent.parent
INIT_SOURCE = REPO / "guests" / "initramfs" / "init"

# name -> (suite, metapackage)
KERNELS: dict[str, tuple[str, str]] = {
    "bookworm-generic": ("bookworm", "linux-image-amd64"),
    "bookworm-cloud": ("bookworm", "linux-image-cloud-amd64"),
    "trixie-generic": ("trixie", "linux-image-amd64"),
}
BUSYBOX = ("bookworm", "busybox-static")
INITRAMFS_LAYOUT = 3        # bump when initramfs_bytes changes: it is part of the cache key
MODULES_LAYOUT = 1          # bump when kmod's selection changes: kernels/NAME/modules is rebuilt

__all__ = ["KERNELS", "Kernel", "FetchError", "cache_root", "fetch_kernel", "fetch_busybox",
           "build_initramfs", "initramfs_bytes", "kernel_path", "mirror_reachable", "fetch_modules"]


def cache_root() -> Path:
    d = Path(os.environ.get("BHIVE_CACHE", REPO / ".cache")) / "guestkit"
    d.mkdir(parents=True, exist_ok=True)
    return d


@dataclass(frozen=True)
class Kernel:
    name: str          # bookworm-cloud, ...
    package: str       # linux-image-6.1.0-35-cloud-amd64
    version: str       # the package version
    release: str       # uname -r: 6.1.0-35-cloud-amd64
    vmlinuz: Path
    config: Path


def _kernel_from_info(d: Path) -> Kernel | None:
    try:
        info = json.loads((d / "info.json").read_text())
        k = Kernel(info["name"], info["package"], info["version"], info["release"],
                   d / info["vmlinuz"], d / info["config"])
    except (OSError, ValueError, KeyError):
        return None
    return k if k.vmlinuz.is_file() and k.config.is_file() else None


def fetch_kernel(name: str, refresh: bool = False) -> Kernel:
    """The kernel `name` (a key of KERNELS), fetched once and cached.
    `refresh` re-reads the suite's package list and fetches again if the
    metapackage now points elsewhere."""
    if name not in KERNELS:
        raise FetchError(f"unknown kernel {name!r}; known: {', '.join(KERNELS)}")
    d = cache_root() / "kernels" / name
    if not refresh:
        k = _kernel_from_info(d)
        if k:
            return k
    suite, meta = KERNELS[name]
    apt = AptSuite(cache_root(), suite)
    apt.update(force=refresh)
    package = apt.resolve_kernel(meta)
    version = apt.show(package)["version"]
    old = _kernel_from_info(d)
    if old and old.package == package and old.version == version:
        return old
    deb = apt.download(package)
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        got = extract_members(deb, lambda p: p.startswith("boot/vmlinuz-") or p.startswith("boot/config-"),
                              Path(tmp))
        vmlinuz = [p for p in got if p.name.startswith("vmlinuz-")]
        config = [p for p in got if p.name.startswith("config-")]
        if len(vmlinuz) != 1 or len(config) != 1:
            raise FetchError(f"{deb.name}: expected one /boot/vmlinuz-* and one /boot/config-*, got {got}")
        release = vmlinuz[0].name.removeprefix("vmlinuz-")
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        for p in got:
            os.replace(p, d / p.name)
    info = {"name": name, "suite": suite, "metapackage": meta, "package": package, "version": version,
            "release": release, "vmlinuz": vmlinuz[0].name, "config": config[0].name, "deb": deb.name}
    (d / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    _extract_modules(d, deb)
    deb.unlink()          # the kernel .deb is ~70 MB of modules, of which we keep a few
    return _kernel_from_info(d)


def _extract_modules(d: Path, deb: Path) -> kmod.ModuleSet:
    ms = kmod.from_deb(deb)
    mdir = d / "modules"
    if mdir.exists():
        shutil.rmtree(mdir)
    tmp = d / "modules.part"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    kmod.write(ms, tmp)
    (tmp / "info.json").write_text(json.dumps({"layout": MODULES_LAYOUT, "release": ms.release,
                                               "wanted": list(kmod.DISK_MODULES)}) + "\n")
    os.replace(tmp, mdir)
    return ms


def fetch_modules(name: str) -> kmod.ModuleSet:
    """The IDE disk and ext4 modules of kernel `name` with their
    dependencies (see kmod.py), cached in kernels/NAME/modules.  A kernel
    cached before the kit kept modules has its .deb fetched once more."""
    k = fetch_kernel(name)
    mdir = k.vmlinuz.parent / "modules"
    try:
        info = json.loads((mdir / "info.json").read_text())
        if info["layout"] == MODULES_LAYOUT and info["release"] == k.release:
            return kmod.read(mdir, k.release)
    except (OSError, ValueError, KeyError):
        pass
    apt = AptSuite(cache_root(), KERNELS[name][0])
    deb = _download_version(apt, k)
    ms = _extract_modules(k.vmlinuz.parent, deb)
    deb.unlink()
    return ms


def _download_version(apt: AptSuite, k: Kernel) -> Path:
    if apt.show(k.package)["version"] != k.version:
        raise FetchError(f"{k.package} {k.version} is no longer in the suite; refresh the kernel "
                         f"(python -m bhive.guestkit fetch --refresh {k.name})")
    return apt.download(k.package)


def kallsyms(name: str) -> Path:
    """The kernel's /proc/kallsyms (as loaded without KASLR, the way bhive
    loads it), read once under QEMU TCG and cached beside the kernel."""
    k = fetch_kernel(name)
    out = k.vmlinuz.parent / "kallsyms"
    if out.is_file():
        return out
    from .bootrun import BootError, boot_once, qemu_argv
    append = "console=ttyS0 panic=-1 nokaslr bhive.kallsyms=1 bhive.test=1"
    try:
        run = boot_once(qemu_argv(k.vmlinuz, build_initramfs(), 1, 512, append), timeout=300)
    except BootError as exc:
        raise FetchError(f"kallsyms of {name}: {exc}") from None
    text = run.console
    begin, end = text.find("bhive: kallsyms begin\n"), text.find("bhive: kallsyms end")
    if begin < 0 or end < 0:
        raise FetchError(f"kallsyms of {name}: the guest printed no symbol table")
    tmp = out.with_suffix(".part")
    tmp.write_text(text[begin + len("bhive: kallsyms begin\n"):end])
    os.replace(tmp, out)
    return out


def kernel_path(name: str) -> Path:
    return fetch_kernel(name).vmlinuz


def fetch_busybox(refresh: bool = False) -> Path:
    """A static x86-64 busybox from Debian's busybox-static, cached."""
    d = cache_root() / "busybox"
    bb = d / "busybox"
    if bb.is_file() and not refresh:
        return bb
    suite, package = BUSYBOX
    apt = AptSuite(cache_root(), suite)
    apt.update(force=refresh)
    deb = apt.download(package)
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        got = extract_members(deb, lambda p: p == "bin/busybox", Path(tmp))
        if not got:
            raise FetchError(f"{deb.name} has no /bin/busybox")
        d.mkdir(parents=True, exist_ok=True)
        os.replace(got[0], bb)
    os.chmod(bb, 0o755)
    (d / "info.json").write_text(json.dumps({"package": package, "version": apt.show(package)["version"],
                                             "deb": deb.name}, indent=1) + "\n")
    return bb


# Used when the host cannot run the busybox binary to ask it for its list.
FALLBACK_APPLETS = (
    "bin/sh", "bin/ash", "bin/cat", "bin/echo", "bin/ls", "bin/mount", "bin/umount", "bin/mkdir",
    "bin/grep", "bin/dd", "bin/sleep", "bin/sync", "bin/uname", "bin/dmesg", "bin/ps", "bin/cp",
    "bin/mv", "bin/rm", "bin/ln", "bin/date", "bin/true", "bin/false", "bin/printf", "bin/cut",
    "bin/tr", "bin/head", "bin/tail", "bin/wc", "bin/sed", "bin/stty", "bin/vi", "bin/mknod",
    "sbin/poweroff", "sbin/reboot", "sbin/halt", "sbin/mdev", "usr/bin/setsid", "bin/cttyhack",
    "usr/bin/nproc", "usr/bin/env", "usr/bin/test", "usr/bin/[", "usr/bin/free", "usr/bin/top",
    "usr/bin/uptime", "bin/devmem",
)


def applets(busybox: Path) -> list[str]:
    """busybox's applets as paths ("bin/sh", "sbin/poweroff", ...)."""
    try:
        out = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
        names = [l.strip().lstrip("/") for l in out.splitlines() if l.strip()]
    except (OSError, subprocess.SubprocessError):
        names = []
    return names or list(FALLBACK_APPLETS)


def initramfs_bytes(busybox: Path, init: bytes, compress: bool = True,
                    modules: list[kmod.ModuleSet] = ()) -> bytes:
    """A newc cpio: /bin/busybox, its applets as symlinks, /init, the
    directories and device nodes an early init needs, and for each module
    set lib/modules/<release>/ with the modules, modules.dep and the load
    list /init reads."""
    w = CpioWriter()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp",
              "root", "etc", "mnt", "run", "var", "lib", "lib/modules"):
        w.dir(d, 0o1777 if d == "tmp" else 0o755)
    for ms in sorted(modules, key=lambda m: m.release):
        base = f"lib/modules/{ms.release}"
        w.dir(base)
        for p in sorted(ms.files):
            parts = p.split("/")
            for i in range(1, len(parts)):
                if not w.has(f"{base}/{'/'.join(parts[:i])}"):
                    w.dir(f"{base}/{'/'.join(parts[:i])}")
            w.file(f"{base}/{p}", ms.files[p])
        w.file(f"{base}/modules.dep", ms.modules_dep().encode())
        w.file(f"{base}/{kmod.LOAD_LIST}", ("\n".join(ms.load_order()) + "\n").encode())
    w.chardev("dev/console", 5, 1)
    w.chardev("dev/null", 1, 3, 0o666)
    w.chardev("dev/ttyS0", 4, 64)
    w.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
    for path in applets(busybox):
        if path == "bin/busybox" or w.has(path):
            continue
        w.symlink(path, "busybox" if path.startswith("bin/") and path.count("/") == 1 else "/bin/busybox")
    if not w.has("bin/cttyhack"):
        w.symlink("bin/cttyhack", "busybox")
    w.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    w.file("etc/group", b"root:x:0:\n")
    w.file("bin/bhive-exit", exithelper.elf(), 0o755)
    w.file("init", init, 0o755)
    raw = w.getvalue()
    # mtime=0 keeps the gzip stream, and so the cache key, reproducible
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


def build_initramfs(init: Path | None = None, compress: bool = True, out: Path | None = None,
                    modules_for: tuple[str, ...] | None = None) -> Path:
    """Build (or reuse) the initramfs; returns its path.  It carries the
    disk modules of the kernels `modules_for` (default: every kit kernel;
    () for none), so one initramfs serves them all.  Cached by the hash of
    everything in it."""
    busybox = fetch_busybox()
    init_bytes = Path(init or INIT_SOURCE).read_bytes()
    sets = [fetch_modules(n) for n in (KERNELS if modules_for is None else modules_for)]
    mod_key = hashlib.sha256()
    for ms in sorted(sets, key=lambda m: m.release):
        mod_key.update(ms.release.encode() + b"\0" + ms.modules_dep().encode())
        for p in sorted(ms.files):
            mod_key.update(hashlib.sha256(ms.files[p]).digest())
    h = hashlib.sha256(b"layout%d\0" % INITRAMFS_LAYOUT + busybox.read_bytes() + b"\0" + init_bytes + b"\0" + exithelper.elf()
                       + mod_key.digest() + (b"gz" if compress else b"raw")).hexdigest()[:16]
    d = cache_root() / "initramfs"
    d.mkdir(parents=True, exist_ok=True)
    cached = d / f"initramfs-{h}.cpio{'.gz' if compress else ''}"
    if not cached.is_file():
        tmp = cached.with_suffix(".part")
        tmp.write_bytes(initramfs_bytes(busybox, init_bytes, compress, sets))
        os.replace(tmp, cached)
    if out:
        shutil.copyfile(cached, out)
        return Path(out)
    return cached


# -- the Debian disk images (images.py) -----------------------------------------

IMAGE_ASSET_SUFFIXES = {"": "vmlinuz", "-initrd": "initrd", "-disk": "disk"}


def image_asset_names() -> list[str]:
    from .images import IMAGES
    return [n + sfx for n in IMAGES for sfx in IMAGE_ASSET_SUFFIXES]


def image_asset(name: str) -> Path | None:
    """guestkit:debian-13 (the image's kernel), guestkit:debian-13-initrd
    (its initramfs-tools initramfs), guestkit:debian-13-disk (the image
    itself: attach it with snapshot, or every boot changes the cached
    image); built on first use.  None if `name` is no image asset."""
    from .images import IMAGES, build_image
    for sfx, field in IMAGE_ASSET_SUFFIXES.items():
        base = name.removesuffix(sfx) if sfx else name
        if (not sfx or name.endswith(sfx)) and base in IMAGES:
            return getattr(build_image(base), field)
    return None
