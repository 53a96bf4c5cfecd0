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
SOURCES = ["run.c", "decode.c", "alu.c", "control.c", "string.c", "system.c",
           "cpuid.c", "mmu.c", "exceptions.c", "lapic.c", "fast.c",
           "x87.c", "sse.c", "mmx.c"]

CDEF = """
typedef struct svm_exit {
    int32_t code;
    uint32_t inst_length;
    uint64_t rip;
    uint64_t data;
    uint64_t gpa;
    uint32_t port, size, is_in, is_write;
    uint32_t msr, vector, how, insn_len;
    uint8_t insn[16];
} svm_exit_t;

struct svm_vm;
struct svm_cpu;

uint64_t svm_shm_size(int ncpus, uint64_t ram_size);
struct svm_vm *svm_vm_open(void *ram, uint64_t ram_size, const uint64_t *slots, int nslots,
                           void *shm, int ncpus, uint32_t flags);
void svm_vm_close(struct svm_vm *vm);
struct svm_cpu *svm_cpu_open(struct svm_vm *vm, int vcpuid);
void svm_cpu_close(struct svm_cpu *c);
void svm_activate(struct svm_cpu *c);
int svm_run(struct svm_cpu *c, svm_exit_t *exit);
void svm_complete_io(struct svm_cpu *c, uint64_t value);
void svm_complete_msr(struct svm_cpu *c, uint64_t value, int gp);
uint64_t svm_get_reg(struct svm_cpu *c, int reg);
int svm_set_reg(struct svm_cpu *c, int reg, uint64_t value);
int svm_get_desc(struct svm_cpu *c, int reg, uint64_t *base, uint32_t *limit, uint32_t *access, uint16_t *sel);
int svm_set_desc(struct svm_cpu *c, int reg, uint64_t base, uint32_t limit, uint32_t access, uint16_t sel);
int svm_inject_exception(struct svm_cpu *c, int vector, int has_err, uint32_t err);
void svm_lapic_msi(struct svm_vm *vm, uint64_t addr, uint32_t data);
void svm_kick(struct svm_vm *vm, int vcpuid);
void svm_invalidate(struct svm_vm *vm, uint64_t gpa, uint64_t len);
void svm_set_mp_state(struct svm_cpu *c, int runnable);
void svm_stats(struct svm_cpu *c, uint64_t *instructions, uint64_t *exits);
void svm_cpuid(struct svm_cpu *c, uint32_t leaf, uint32_t sub, uint32_t *out4);
"""

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
