"""cffi builder for the softvmm CPU core (out-of-line API mode).

`setup.py` lists this as a cffi module, so `pip install -e .` builds it;
`python bhive/accel/softvmm/_build.py` builds it in place for development.
"""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
# Every C file of the core: a new concern is a new file, with no list to edit.
SOURCES = sorted(p.name for p in CSRC.glob("*.c"))

def public_api() -> str:
    """The cdef is softvmm.h itself, less its include guard and includes,
    so the C API is declared in exactly one place."""
    header = (CSRC / "softvmm.h").read_text()
    skip = ("#include", "#ifndef SOFTVMM_H", "#define SOFTVMM_H", "#endif")
    return "\n".join(line for line in header.splitlines() if not line.startswith(skip))


CDEF = public_api()

REPO = HERE.parent.parent.parent


def make_ffibuilder(absolute: bool = False) -> FFI:
    """setup.py (cffi_modules) runs from the repo root and wants relative
    source paths; the in-place developer build wants absolute ones."""
    def src(p: Path) -> str:
        return str(p) if absolute else os.path.relpath(p, REPO)
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        "bhive.accel.softvmm._softvmm",
        '#include "softvmm.h"\n',
        sources=[src(CSRC / s) for s in SOURCES],
        include_dirs=[src(CSRC)],
        extra_compile_args=["-O2", "-std=gnu11", "-mcx16", "-fno-strict-aliasing", "-Wall",
                            "-Wno-unused-function", "-fno-semantic-interposition"],
        depends=[src(p) for p in sorted(CSRC.glob("*.h"))],
    )
    return ffi


ffibuilder = make_ffibuilder()

if __name__ == "__main__":
    # Build in place: the extension lands next to this file.
    import shutil
    import tempfile

    os.chdir(REPO)
    with tempfile.TemporaryDirectory(prefix="softvmm-build-") as tmp:
        lib = Path(make_ffibuilder(absolute=True).compile(tmpdir=tmp, verbose=bool(os.environ.get("V"))))
        dest = HERE / lib.name
        shutil.copy2(lib, dest.with_suffix(".tmp"))
        os.replace(dest.with_suffix(".tmp"), dest)
        print(f"built {dest}")
