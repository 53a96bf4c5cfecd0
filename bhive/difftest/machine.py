"""The difftest guest: one memory image and CPU state, run through the
common accelerator interface so that every accelerator executes the
*identical* guest.

Guest-physical (= linear, identity-mapped) layout, 2 MiB of RAM::

    0x01000  PML4            0x02000  PDPT         0x03000  PD
    0x04000  PT (4 KiB pages for the first 2 MiB)
    0x05000  GDT             0x06000  IDT (256 x 16 bytes)
    0x07000  TSS (RSP0)      0x07800  exception stubs (CPL0, 32 bytes each); 0x7FF0 FPU_FLAG
    0x08000 .. 0x0FFFF  kernel stack, RSP0 = 0x10000
    0x10000 .. 0x107FF  SCRATCH (user RW): data area + user stack,
                        rewritten before every case
    0x11000  FPU_IN  (512-byte FXSAVE image loaded by fxrstor at case start)
    0x11200  FPU_OUT (FXSAVE image stored by the case's epilogue)
    0x20000 .. 0x1FFFFF CODE (user read-only): the assembled batch of cases

Only SCRATCH and the FPU pages are user-writable; kernel pages are
supervisor-only and everything else is not present, so a wild access by a
case is a #PF that both accelerators must report identically, never a
corruption of the harness.

A case runs at CPL3 and ends with ``int3`` (a DPL3 gate) whose CPL0 stub
does ``out MARKER_PORT, al; iretq``.  An exception enters the IDT stub for
its vector, a CPL0 ``[fxsave [FPU_OUT] if FPU_FLAG;] out EXC_PORT_BASE+vector,
al; [add rsp, 8;] iretq``.  Either way the harness reads the user's RIP, RFLAGS
and RSP (and the error code) from the frame on the kernel stack; no GPR is
touched by the stubs.  To start the next case the harness rewrites that
frame (RIP, CS, RFLAGS, RSP, SS), sets the GPRs, and completes the pending
OUT with `vm_complete_inout`: the accelerator moves RIP past the `out` and
the stub's `iretq` enters the case at CPL3.  That costs three KVM ioctls per
case (GET_REGS, SET_REGS, RUN) and exercises the INOUT completion rule on
both accelerators.  The first case (and any after an unexpected exit) is
entered by setting RIP/RFLAGS/CS/SS directly instead.

Why not ``out`` at CPL3 with IOPL=3: the KVM on the development host is a
paging-based nested hypervisor that runs guest CPL3 natively, and it forces
RFLAGS.IOPL to 0 there (an ``out`` at CPL3 gets #GP(0) whatever RFLAGS says),
so cases run with IOPL=0 and leave through a software interrupt instead.
``int3`` it is, because that hypervisor also turns ``int n`` (n != 3) at CPL3
into #UD (and runs ``syscall`` with EFER.SCE=0): the difftest generator must
never emit ``int n``/``syscall``/``sysenter``.
That also keeps the exit path the same for the ok and the exception case.
Cases run with IF=1: that hypervisor runs CPL3 with the real IF set, so a
``pushf`` there always shows IF=1 whatever the VMM put in RFLAGS.  Neither
accelerator has an interrupt source in this VM, so IF=1 changes nothing else.
Also, that hypervisor sometimes raises #UD on the ``int3`` when RSP is
non-canonical (RSP is architecturally irrelevant there: the CPL change loads
RSP0), so cases that write RSP save it to memory and reload a sane one
before the ``int3`` (see `gen.SP_SAVE`), and POPF values keep AC and NT
clear (AC would be honoured natively; NT is lost).
"""

from __future__ import annotations

import ctypes as C
import mmap
import struct
from dataclasses import dataclass

from ..accel import get as get_accelerator
from ..accel.base import ExitCode, GuestMemory, SegDesc, VmReg

RAM_SIZE = 2 << 20
PML4, PDPT, PD, PT = 0x1000, 0x2000, 0x3000, 0x4000
GDT, IDT, TSS, STUBS = 0x5000, 0x6000, 0x7000, 0x7800
STUB_SIZE = 32
FPU_FLAG = 0x7FF0           # 1 while an x87/SSE case runs: exception stubs fxsave
KSTACK_TOP = 0x10000
SCRATCH, SCRATCH_SIZE = 0x10000, 0x800
DATA_PTR = 0x10200          # where memory-operand base registers point
STACK_PTR = 0x10600         # user RSP for cases that use the stack
FPU_IN, FPU_OUT = 0x11000, 0x11200
CODE, CODE_END = 0x20000, 0x200000

MARKER_PORT = 0xE0
MARKER_VECTOR = 3           # cases end with `int3` (DPL3 gate); its stub outs MARKER_PORT
MARKER_INSN = "int3"
EXC_PORT_BASE = 0xC0        # 0xC0 + vector, vectors 0..31

SEL_KCODE, SEL_KDATA, SEL_UDATA, SEL_UCODE, SEL_TSS = 0x08, 0x10, 0x1B, 0x23, 0x28

CR0_VAL = 0x80050033        # PG WP NE ET MP PE
CR4_VAL = 0x620             # OSXMMEXCPT OSFXSR PAE
EFER_VAL = 0x500            # LMA LME
RFLAGS_BASE = 0x0202        # IF and reserved bit 1 (IOPL=0, IF=1: see the module docstring)

UCODE_DESC = SegDesc(base=0, limit=0xFFFFFFFF, access=0xA0FB, selector=SEL_UCODE)
UDATA_DESC = SegDesc(base=0, limit=0xFFFFFFFF, access=0xC0F3, selector=SEL_UDATA)
TSS_DESC = SegDesc(base=TSS, limit=0x67, access=0x8B, selector=SEL_TSS)
LDT_DESC = SegDesc(base=0, limit=0, access=0x10000, selector=0)

ERRCODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})

# GPRs in x86 encoding order (rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..r15).
GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
GPR_REGS = (VmReg.RAX, VmReg.RCX, VmReg.RDX, VmReg.RBX, VmReg.RSP, VmReg.RBP, VmReg.RSI,
            VmReg.RDI, VmReg.R8, VmReg.R9, VmReg.R10, VmReg.R11, VmReg.R12, VmReg.R13,
            VmReg.R14, VmReg.R15)


def alloc_memory(size: int = RAM_SIZE) -> tuple[mmap.mmap, GuestMemory]:
    m = mmap.mmap(-1, size, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, mmap.PROT_READ | mmap.PROT_WRITE)
    addr = C.addressof(C.c_char.from_buffer(m))
    return m, GuestMemory(addr, size, [(0, size, 0)])


def _seg_desc(base: int, limit: int, typ: int, s: int, dpl: int, l: int, db: int, g: int) -> int:
    return ((limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | typ << 40 | s << 44 | dpl << 45
            | 1 << 47 | ((limit >> 16) & 0xF) << 48 | l << 53 | db << 54 | g << 55
            | ((base >> 24) & 0xFF) << 56)


def build_image(buf: mmap.mmap) -> None:
    """Write page tables, GDT, IDT, TSS and exception stubs into `buf`."""
    buf[:CODE] = bytes(CODE)
    # Paging: PML4[0] -> PDPT[0] -> PD[0] -> PT (4 KiB pages).
    struct.pack_into("<Q", buf, PML4, PDPT | 0x7)
    struct.pack_into("<Q", buf, PDPT, PD | 0x7)
    struct.pack_into("<Q", buf, PD, PT | 0x7)
    for page in range(512):
        a = page << 12
        if a < SCRATCH:
            pte = a | 0x3                       # kernel: P RW, supervisor
        elif a < SCRATCH + 0x2000:
            pte = a | 0x7                       # scratch + FPU areas: P RW U
        elif a >= CODE:
            pte = a | 0x5                       # code: P U, read-only
        else:
            pte = 0
        struct.pack_into("<Q", buf, PT + 8 * page, pte)
    # GDT
    gdt = [0,
           _seg_desc(0, 0xFFFFF, 0xB, 1, 0, 1, 0, 1),   # 0x08 kernel code64
           _seg_desc(0, 0xFFFFF, 0x3, 1, 0, 0, 1, 1),   # 0x10 kernel data
           _seg_desc(0, 0xFFFFF, 0x3, 1, 3, 0, 1, 1),   # 0x18 user data
           _seg_desc(0, 0xFFFFF, 0xB, 1, 3, 1, 0, 1)]   # 0x20 user code64
    tss_lo = _seg_desc(TSS, 0x67, 0xB, 0, 0, 0, 0, 0)
    gdt += [tss_lo, TSS >> 32]                          # 0x28 TSS (16 bytes)
    for i, d in enumerate(gdt):
        struct.pack_into("<Q", buf, GDT + 8 * i, d)
    # TSS: RSP0 at offset 4, IST unused, I/O map base beyond the limit.
    struct.pack_into("<Q", buf, TSS + 4, KSTACK_TOP)
    struct.pack_into("<H", buf, TSS + 0x66, 0x68)
    # Exception stubs and IDT (interrupt gates, DPL0).
    for v in range(256):
        if v == MARKER_VECTOR:
            stub, port, dpl = STUBS + STUB_SIZE * 32, MARKER_PORT, 3
        elif v < 32:
            stub, port, dpl = STUBS + STUB_SIZE * v, EXC_PORT_BASE + v, 0
        else:
            stub, port, dpl = STUBS + STUB_SIZE * 33, MARKER_PORT + 1, 0
        # Exceptions of x87/SSE cases (FPU_FLAG set) save the FPU state first
        # so that cases that fault are compared too:
        #   cmp byte [FPU_FLAG], 0; je 1f; fxsave [FPU_OUT]; 1:
        # Then `out`, drop the error code, and `iretq`: the harness rewrites
        # the frame to start the next case (see Machine.run_case).
        save = b""
        if v != MARKER_VECTOR:
            save = (bytes([0x80, 0x3C, 0x25]) + FPU_FLAG.to_bytes(4, "little") + b"\x00"
                    + bytes([0x74, 0x08, 0x0F, 0xAE, 0x04, 0x25]) + FPU_OUT.to_bytes(4, "little"))
        pop = bytes([0x48, 0x83, 0xC4, 0x08]) if v in ERRCODE_VECTORS else b""
        body = save + bytes([0xE6, port]) + pop + bytes([0x48, 0xCF])
        assert len(body) <= STUB_SIZE
        buf[stub:stub + STUB_SIZE] = body.ljust(STUB_SIZE, b"\xF4")
        gate = 0x8E | dpl << 5
        lo = (stub & 0xFFFF) | SEL_KCODE << 16 | gate << 40 | ((stub >> 16) & 0xFFFF) << 48
        struct.pack_into("<QQ", buf, IDT + 16 * v, lo, stub >> 32)


GDT_LIMIT = 7 * 8 - 1
IDT_LIMIT = 256 * 16 - 1


@dataclass(slots=True)
class Outcome:
    """What one case left behind."""

    kind: str                   # "ok", "exc", or "exit:<reason>"
    regs: list[int]             # GPRs in encoding order (user values)
    rflags: int
    rip: int                    # marker/faulting RIP
    scratch: bytes
    fpu: bytes | None = None
    vector: int = -1
    error_code: int = 0
    cr2: int = 0
    detail: str = ""


@dataclass(slots=True)
class CaseInput:
    """Initial state of one case, as the harness loads it."""

    regs: list[int]
    rflags: int
    scratch: bytes
    fpu: bytes | None = None


class Machine:
    """One accelerator's VM with the difftest image, reused for every case."""

    def __init__(self, acc_name: str):
        self.acc_name = acc_name
        acc = get_accelerator(acc_name)
        ok, why = acc.available()
        if not ok:
            raise RuntimeError(f"accelerator {acc_name} unavailable: {why}")
        self.mem, self.gm = alloc_memory()
        build_image(self.mem)
        shm_size = acc.platform_shm_size(1, RAM_SIZE)
        self.shm = None
        shm_addr = 0
        if shm_size:
            self.shm = mmap.mmap(-1, shm_size, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
            shm_addr = C.addressof(C.c_char.from_buffer(self.shm))
        self.vm = acc.vm_open(self.gm, 1, shm_addr, {})
        self.vcpu = self.vm.vcpu_open(0)
        self.vcpu.vm_activate_cpu()
        self._code_next = CODE
        self._resume = None      # the stub's OUT exit still to be completed
        self.reset_cpu()

    # -- state -----------------------------------------------------------
    def reset_cpu(self) -> None:
        v = self.vcpu
        v.vm_set_register(VmReg.CR3, PML4)
        v.vm_set_register(VmReg.CR4, CR4_VAL)
        v.vm_set_register(VmReg.EFER, EFER_VAL)
        v.vm_set_register(VmReg.CR0, CR0_VAL)
        v.vm_set_desc(VmReg.GDTR, SegDesc(GDT, GDT_LIMIT, 0))
        v.vm_set_desc(VmReg.IDTR, SegDesc(IDT, IDT_LIMIT, 0))
        v.vm_set_desc(VmReg.TR, TSS_DESC)
        v.vm_set_desc(VmReg.LDTR, LDT_DESC)
        for r in (VmReg.DS, VmReg.ES, VmReg.FS, VmReg.GS):
            v.vm_set_desc(r, UDATA_DESC)
        self._set_user_segments()

    def _set_user_segments(self) -> None:
        self.vcpu.vm_set_desc(VmReg.CS, UCODE_DESC)
        self.vcpu.vm_set_desc(VmReg.SS, UDATA_DESC)

    def load_code(self, code: bytes) -> int:
        """Place a batch's code in the code area; returns its address.

        Batches go to fresh addresses (wrapping around) so that an
        accelerator caching translated code sees new pages."""
        n = (len(code) + 0xFFF) & ~0xFFF
        if n > CODE_END - CODE:
            raise ValueError("batch too large for the code area")
        if self._code_next + n > CODE_END:
            self._code_next = CODE
        addr = self._code_next
        self.load_code_at(addr, code)
        self._code_next += n
        return addr

    def load_code_at(self, addr: int, code: bytes) -> None:
        if addr < CODE or addr + len(code) > CODE_END:
            raise ValueError("code outside the code area")
        self.mem[addr:addr + len(code)] = code
        self._code_written(addr, len(code))

    def _code_written(self, gpa: int, size: int) -> None:
        """Tell an accelerator that caches decoded code that the host wrote
        guest code.  Uses a `vm_memory_written(gpa, size)` hook if the Vm has
        one; otherwise, for softvmm's platform shm ("SVM1" header), bumps the
        odd (= decoded) per-page generation counters like its own writes do.
        The vCPU is stopped (same process), so no atomics are needed."""
        hook = getattr(self.vm, "vm_memory_written", None)
        if hook is not None:
            hook(gpa, size)
            return
        if self.shm is None or len(self.shm) < 32:
            return
        magic, _ncpus, ram_pages, _lapic_off, gen_off = struct.unpack_from("<IIQQQ", self.shm, 0)
        if magic != 0x53564D31:
            return
        for page in range(gpa >> 12, (gpa + size + 0xFFF) >> 12):  # one slot: offset == gpa
            if page < ram_pages:
                off = gen_off + 4 * page
                g = struct.unpack_from("<I", self.shm, off)[0]
                if g & 1:
                    struct.pack_into("<I", self.shm, off, (g + 1) & 0xFFFFFFFF)

    # -- one case --------------------------------------------------------
    def run_case(self, rip: int, inp: CaseInput, max_exits: int = 64) -> Outcome:
        v = self.vcpu
        mem = self.mem
        mem[SCRATCH:SCRATCH + SCRATCH_SIZE] = inp.scratch
        if inp.fpu is not None:
            mem[FPU_IN:FPU_IN + 512] = inp.fpu
            mem[FPU_OUT:FPU_OUT + 512] = bytes(512)
            mem[FPU_FLAG] = 1
        else:
            mem[FPU_FLAG] = 0
        set_reg = v.vm_set_register
        if self._resume:
            # The vCPU sits in a stub after its `out`: completing the exit lets
            # it `iretq` through the frame we write, straight into the case.
            struct.pack_into("<5Q", mem, KSTACK_TOP - 40, rip, SEL_UCODE, inp.rflags,
                             inp.regs[4], SEL_UDATA)
            v.vm_complete_inout(self._resume)
            for r, val in zip(GPR_REGS, inp.regs):
                if r != VmReg.RSP:
                    set_reg(r, val)
        else:
            self._set_user_segments()
            for r, val in zip(GPR_REGS, inp.regs):
                set_reg(r, val)
            set_reg(VmReg.RFLAGS, inp.rflags)
            set_reg(VmReg.RIP, rip)
        self._resume = None
        for _ in range(max_exits):
            ex = v.vm_run()
            if ex.code != ExitCode.BOGUS:
                break
        get_reg = v.vm_get_register
        regs = [get_reg(r) for r in GPR_REGS]
        if ex.code == ExitCode.INOUT and not ex.is_in and ex.port == MARKER_PORT:
            self._resume = ex
            frip, cs, fl, rsp, ss = struct.unpack_from("<5Q", mem, KSTACK_TOP - 40)
            regs[4] = rsp
            return Outcome("ok", regs, fl, frip, bytes(mem[SCRATCH:SCRATCH + SCRATCH_SIZE]),
                           bytes(mem[FPU_OUT:FPU_OUT + 512]) if inp.fpu is not None else None)
        if (ex.code == ExitCode.INOUT and not ex.is_in
                and EXC_PORT_BASE <= ex.port < EXC_PORT_BASE + 32):
            self._resume = ex
            vec = ex.port - EXC_PORT_BASE
            if vec in ERRCODE_VECTORS:
                err, frip, cs, fl, rsp, ss = struct.unpack_from("<6Q", mem, KSTACK_TOP - 48)
            else:
                err = 0
                frip, cs, fl, rsp, ss = struct.unpack_from("<5Q", mem, KSTACK_TOP - 40)
            regs[4] = rsp
            cr2 = get_reg(VmReg.CR2) if vec == 14 else 0
            return Outcome("exc", regs, fl, frip, bytes(mem[SCRATCH:SCRATCH + SCRATCH_SIZE]),
                           bytes(mem[FPU_OUT:FPU_OUT + 512]) if inp.fpu is not None else None,
                           vector=vec, error_code=err, cr2=cr2)
        detail = f"{ex.code.name} port={ex.port:#x} gpa={ex.gpa:#x} {ex.insn!r}"
        self.reset_cpu()
        return Outcome(f"exit:{ex.code.name}", regs, get_reg(VmReg.RFLAGS), ex.rip,
                       bytes(mem[SCRATCH:SCRATCH + SCRATCH_SIZE]), None, detail=detail)

    def close(self) -> None:
        close = getattr(self.vm, "close", None)
        if close:
            close()
