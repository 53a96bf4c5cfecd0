"""Builds our own test guests (nasm or freestanding C) at test time.

Binaries are never committed: they are built into a cache directory keyed
by the source's content, so a rebuild happens only when the source changes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUESTS = REPO / "guests"


class GuestBuildError(RuntimeError):
    pass


def cache_dir(kind: str = "guests") -> Path:
    """$BHIVE_CACHE/<kind> (default .cache/ in the repository), created."""
    d = Path(os.environ.get("BHIVE_CACHE", REPO / ".cache")) / kind
    d.mkdir(parents=True, exist_ok=True)
    return d


_INCLUDE = re.compile(rb'^\s*%include\s+"([^"]+)"', re.M)


def _sources(src: Path) -> list[Path]:
    """`src` and every file it %includes, recursively (resolved the way
    build_nasm's -I makes nasm resolve them): all of them key the cache."""
    seen: list[Path] = []
    todo = [src]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.append(path)
        for name in _INCLUDE.findall(path.read_bytes()):
            todo.append((src.parent / name.decode()).resolve())
    return seen


def build_nasm(source: str | os.PathLike, fmt: str = "bin", defines: dict[str, object] | None = None) -> Path:
    """Assemble `source` (a path, absolute or relative to guests/) with nasm.

    Returns the path of the output, cached by the hash of the source, the
    format and the defines.
    """
    src = Path(source)
    if not src.is_absolute():
        src = GUESTS / src
    if shutil.which("nasm") is None:
        raise GuestBuildError("nasm is not installed (make deps installs it)")
    args = [f"-D{k}={v}" for k, v in sorted((defines or {}).items())]
    digest = hashlib.sha256(fmt.encode() + " ".join(args).encode())
    for part in _sources(src):
        digest.update(part.read_bytes())
    key = digest.hexdigest()[:16]
    out = cache_dir() / f"{src.stem}-{key}.{fmt}"
    if not out.exists():
        tmp = out.with_suffix(out.suffix + f".tmp{os.getpid()}")
        proc = subprocess.run(["nasm", "-f", fmt, *args, "-I", f"{src.parent}/", "-o", str(tmp), str(src)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise GuestBuildError(f"nasm {src}: {proc.stderr.strip()}")
        os.replace(tmp, out)
    return out


def build_elf32(source: str | os.PathLike, script: str | os.PathLike = "lib/kernel32.ld",
                defines: dict[str, object] | None = None, text_address: int | None = None) -> Path:
    """A 32-bit ELF kernel (Multiboot, PVH) from a nasm source: `nasm -f
    elf32`, then `ld -m elf_i386` with the linker script `script` (relative
    to guests/), or, with `text_address`, with ld's own default script and
    `-Ttext=ADDR` as kernels built without a script are (the ELF headers
    then get a read-only segment of their own in the page below the text:
    GNU ld's default `-z separate-code`).  Cached like build_nasm, keyed by
    the object and how it is linked."""
    obj = build_nasm(source, fmt="elf32", defines=defines)
    if shutil.which("ld") is None:
        raise GuestBuildError("ld is not installed (make deps installs binutils)")
    if text_address is None:
        lds = Path(script)
        if not lds.is_absolute():
            lds = GUESTS / lds
        link = ["-T", str(lds)]
        key = lds.read_bytes()
    else:
        link = [f"-Ttext={text_address:#x}", "-e", "_start"]
        key = " ".join(link).encode()
    digest = hashlib.sha256(obj.read_bytes() + key).hexdigest()[:16]
    out = cache_dir() / f"{Path(source).stem}-{digest}.elf"
    if not out.exists():
        tmp = out.with_suffix(out.suffix + f".tmp{os.getpid()}")
        proc = subprocess.run(["ld", "-m", "elf_i386", *link, "-nostdlib", "--build-id=none",
                               "-z", "max-page-size=0x1000", "--no-warn-rwx-segments", "-o", str(tmp),
                               str(obj)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise GuestBuildError(f"ld {obj}: {proc.stderr.strip()}")
        os.replace(tmp, out)
    return out


def assemble(text: str, bits: int = 64, org: int = 0) -> bytes:
    """Assemble a snippet of nasm text to flat bytes (for CPU unit tests)."""
    d = cache_dir() / "snippets"
    d.mkdir(exist_ok=True)
    body = f"bits {bits}\norg {org:#x}\n{text}\n"
    key = hashlib.sha256(body.encode()).hexdigest()[:20]
    src = d / f"{key}.asm"
    if not src.exists():
        src.write_text(body)
    return build_nasm(src).read_bytes()
