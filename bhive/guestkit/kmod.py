"""Kernel modules for the busybox initramfs: the IDE disk path (PIIX IDE ->
libata -> SCSI disk) and ext4, taken from a kit kernel's .deb.

A .deb carries no modules.dep (depmod writes it at install time), so the
dependencies are read where depmod's own come from: each module's
`.modinfo` section, whose `depends=` the kernel build (modpost) computes
from the symbols the module imports.  From those we write a modules.dep in
depmod's format and a load order (every module after what it depends on)
that /init feeds to insmod.

ext4 needs crc32c through the crypto API (a soft dependency, `softdep=pre:
crc32c`, which modules.dep does not list), so crc32c_generic is asked for
by name.  A module the kernel has built in (modules.builtin) is simply not
there to load.
"""

from __future__ import annotations

import lzma
import os
import struct
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .debian import FetchError

# What the initramfs loads, by module name; their dependencies come along.
DISK_MODULES = ("crc32c_generic", "ext4", "ata_piix", "sd_mod")
# Names worth keeping on the first pass over the .deb (the dependencies as
# of Linux 6.1 and 6.12); a dependency not in here costs a second pass.
LIKELY_DEPENDENCIES = ("libata", "scsi_mod", "scsi_common", "jbd2", "mbcache", "crc16", "libcrc32c")
LOAD_LIST = "modules.bhive"       # our file beside modules.dep: the insmod order, one path a line


def module_name(path: str) -> str:
    """'kernel/drivers/ata/ata_piix.ko.xz' -> 'ata_piix' (modules are named with '_' for '-')."""
    base = os.path.basename(path)
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(ext):
            base = base[:-len(ext)]
            break
    return base.replace("-", "_")


def decompress(data: bytes, path: str) -> bytes:
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".zst"):
        p = subprocess.run(["zstd", "-dc"], input=data, capture_output=True)
        if p.returncode != 0:
            raise FetchError(f"{path}: zstd -d failed: {p.stderr.decode(errors='replace').strip()}")
        return p.stdout
    if path.endswith(".gz"):
        import gzip
        return gzip.decompress(data)
    return data


def modinfo(elf: bytes) -> dict[str, list[str]]:
    """The key=value strings of an ELF64 module's .modinfo section."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(i: int) -> tuple[int, int, int]:      # name offset, file offset, size
        name, _type, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, off, size

    _n, stroff, _s = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = elf.index(b"\0", stroff + name)
        if elf[stroff + name:end] == b".modinfo":
            out: dict[str, list[str]] = {}
            for item in elf[off:off + size].split(b"\0"):
                if b"=" in item:
                    k, _, v = item.decode(errors="replace").partition("=")
                    out.setdefault(k, []).append(v)
            return out
    raise ValueError("no .modinfo section")


def depends(info: dict[str, list[str]]) -> list[str]:
    """The module names it depends on, '-' written '_' as the kernel does."""
    return [d.replace("-", "_") for v in info.get("depends", []) for d in v.split(",") if d]


@dataclass
class ModuleSet:
    release: str                    # uname -r
    files: dict[str, bytes]         # path under lib/modules/<release>/ -> the module, uncompressed
    deps: dict[str, list[str]]      # path -> the paths it depends on (directly, or its closure)

    def load_order(self) -> list[str]:
        """Every module after all it depends on (a depth-first topological
        order, stable for a given set)."""
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(p: str) -> None:
            if state.get(p) == 2:
                return
            if state.get(p) == 1:
                raise FetchError(f"module dependency cycle through {p}")
            state[p] = 1
            for d in sorted(self.deps[p]):
                visit(d)
            state[p] = 2
            order.append(p)

        for p in sorted(self.files):
            visit(p)
        return order

    def modules_dep(self) -> str:
        """depmod's format: `path: dep dep ...`, the full dependency list with
        the one to load first last (as modprobe reads it)."""
        lines = []
        for p in sorted(self.files):
            closure: list[str] = []

            def walk(q: str) -> None:
                for d in sorted(self.deps[q]):
                    if d not in closure:
                        closure.append(d)
                        walk(d)
            walk(p)
            first_to_last = [q for q in self.load_order() if q in closure]
            lines.append(f"{p}: {' '.join(reversed(first_to_last))}".rstrip())
        return "\n".join(lines) + "\n"


def _scan(deb: Path, names: set[str]) -> tuple[str, dict[str, bytes], set[str]]:
    """One streaming pass over the .deb: (release, {path: module} for the
    modules named, the names modules.builtin lists)."""
    release = ""
    files: dict[str, bytes] = {}
    builtin: set[str] = set()
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                path = member.name.removeprefix("./").removeprefix("usr/")
                if not member.isfile() or not path.startswith("lib/modules/"):
                    continue
                rel_release, _, rel = path.removeprefix("lib/modules/").partition("/")
                if rel == "modules.builtin":
                    release = rel_release
                    builtin = {module_name(l) for l in tar.extractfile(member).read().decode().split()}
                elif rel.startswith("kernel/") and module_name(rel) in names:
                    release = rel_release
                    data = tar.extractfile(member).read()
                    plain = rel.rsplit(".ko", 1)[0] + ".ko"
                    files[plain] = decompress(data, rel)
    finally:
        proc.stdout.close()
        rc = proc.wait()
    if rc != 0:
        raise FetchError(f"dpkg-deb --fsys-tarfile {deb} exited {rc}")
    return release, files, builtin


def from_deb(deb: Path, wanted=DISK_MODULES) -> ModuleSet:
    """The modules `wanted` and everything they depend on, from a
    linux-image .deb.  Built-in ones are left out; one that is neither
    built in nor shipped is an error."""
    names = set(wanted) | set(LIKELY_DEPENDENCIES)
    for _ in range(8):
        release, files, builtin = _scan(deb, names)
        by_name = {module_name(p): p for p in files}
        deps: dict[str, list[str]] = {}
        need = [n for n in wanted if n not in builtin]
        missing: set[str] = set()
        while need:
            n = need.pop()
            if n in (module_name(p) for p in deps):
                continue
            if n not in by_name:
                missing.add(n)
                continue
            p = by_name[n]
            try:
                ds = depends(modinfo(files[p]))
            except ValueError as exc:
                raise FetchError(f"{deb.name}: {p}: {exc}") from None
            deps[p] = []
            for d in ds:
                need.append(d)
                if d in by_name:
                    deps[p].append(by_name[d])
                else:
                    missing.add(d)
        if not missing:
            return ModuleSet(release, {p: files[p] for p in deps}, deps)
        if missing <= names:
            raise FetchError(f"{deb.name}: modules {', '.join(sorted(missing))} are neither shipped nor built in")
        names |= missing            # a dependency we did not expect: read the .deb again for it
    raise FetchError(f"{deb.name}: module dependencies do not settle")


def write(ms: ModuleSet, dest: Path) -> None:
    """Lay the set out as lib/modules/<release>/ is: kernel/..., modules.dep,
    and our load list."""
    for p, data in ms.files.items():
        (dest / p).parent.mkdir(parents=True, exist_ok=True)
        (dest / p).write_bytes(data)
    (dest / "modules.dep").write_text(ms.modules_dep())
    (dest / LOAD_LIST).write_text("\n".join(ms.load_order()) + "\n")


def read(src: Path, release: str) -> ModuleSet:
    """A set laid out by write(), read back (deps from its modules.dep)."""
    files, deps = {}, {}
    for line in (src / "modules.dep").read_text().splitlines():
        p, _, rest = line.partition(":")
        files[p] = (src / p).read_bytes()
        deps[p] = rest.split()
    # modules.dep lists each module's whole closure, not only its direct
    # dependencies: load_order() and modules_dep() come out the same from it
    return ModuleSet(release, files, deps)
