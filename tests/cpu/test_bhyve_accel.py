"""The bhyve accelerator without FreeBSD: its ABI, its conversions, and its
exit decoding and completion fed with exits that softvmm produces from real
guest instructions (tests/cpu/bhyve_standin.py), compared with softvmm's own
handling of the same program."""

from __future__ import annotations

import inspect
import itertools
import subprocess
import sys

import pytest

from bhive.accel import bhyve
from bhive.accel.base import ExitCode, SuspendHow, VmReg
from bhive.accel.bhyve import _abi as A
from bhive.accel.bhyve import accel as B
from bhive.accel.segdesc import (AR_UNUSABLE, ar_to_descriptor, ar_to_fields, descriptor_to_ar, fields_to_ar,
                                 real_mode_ar)
from bhive.accel.softvmm.harness import Machine
from bhive.guestbuild import build_nasm

from bhyve_standin import SoftvmmLibvmmapi, ffi
from support import REPO


# -- the ABI, as read from FreeBSD 14/15's headers ---------------------------------
@pytest.mark.parametrize("key", list(A.LAYOUT), ids=lambda k: f"{k[0]}.{k[1] or 'sizeof'}")
def test_struct_layout_matches_the_freebsd_headers(key):
    struct, field = key
    got = ffi.sizeof(struct) if field is None else ffi.offsetof(struct, field)
    assert got == A.LAYOUT[key]


def test_enums_follow_the_freebsd_order():
    # enum vm_reg_name: RAX first, FS_BASE 45, then GS_BASE, KGS_BASE, TPR
    assert [r.value for r in VmReg] == list(range(46))
    assert (A.VM_REG_GUEST_GS_BASE, A.VM_REG_GUEST_TPR, A.VM_REG_LAST) == (46, 48, 49)
    # the shared exit codes are FreeBSD's numbers
    for code in ExitCode:
        if code.name in A.EXIT:
            assert A.EXIT[code.name] == code.value, code
    assert A.EXIT["INST_EMUL"] == 9 and A.EXIT["SPINUP_AP"] == 10 and A.EXIT["IPI"] == 24
    assert A.VM_CAP_IPI_EXIT == 8
    assert [h.value for h in SuspendHow] == [0, 1, 2, 3, 4]


def test_interrupts_only_through_vm_lapic_msi():
    """Seed bug #7: vm_lapic_irq locks the target vCPU; the backend cannot call it."""
    src = inspect.getsource(B)
    assert "lib.vm_lapic_irq" not in src and "vm_lapic_irq(" not in A.CDEF
    m = Machine(ncpus=1)
    lib = SoftvmmLibvmmapi(m)
    vm = B.BhyveVm(lib, ffi, "msi", None, 1)
    vm.vm_lapic_msi(0xFEE00000, 0x41)
    assert lib.calls[-1] == "vm_lapic_msi"


# -- VMX access rights ------------------------------------------------------------
def test_access_rights_round_trip_every_descriptor_type():
    n = 0
    for typ, s, dpl, p, avl, l, db, g in itertools.product(range(16), (0, 1), range(4), (0, 1), (0, 1), (0, 1),
                                                           (0, 1), (0, 1)):
        access = fields_to_ar(type=typ, s=s, dpl=dpl, present=p, avl=avl, l=l, db=db, g=g, unusable=0)
        limit = 0xABCDE if not g else (0xABCDE << 12) | 0xFFF
        raw = ar_to_descriptor(0x12345678, limit, access)
        assert descriptor_to_ar(raw) == (0x12345678, limit, access)
        assert fields_to_ar(**ar_to_fields(access)) == access
        n += 1
    assert n == 16 * 2 * 4 * 2 * 2 * 2 * 2 * 2


def test_access_rights_of_known_descriptors():
    # the flat 64-bit code and data descriptors of our guests' GDTs
    assert descriptor_to_ar(0x00AF9A000000FFFF) == (0, 0xFFFFFFFF, 0xA09A)
    assert descriptor_to_ar(0x00CF92000000FFFF) == (0, 0xFFFFFFFF, 0xC092)
    # a 64-bit TSS, busy: type 11, S=0
    assert descriptor_to_ar(0x00008B0010000067)[2] == 0x8B
    assert real_mode_ar(code=True) == 0x9B and real_mode_ar(code=False) == 0x93
    with pytest.raises(ValueError):
        ar_to_descriptor(0, 0, 0x93 | AR_UNUSABLE)     # the seed's null-selector case has no descriptor
    with pytest.raises(ValueError):
        ar_to_descriptor(0, 0x1000, 0x8093)             # G=1 with a limit that is not page-granular


# -- names -----------------------------------------------------------------------------
def test_names_longer_than_vmm_accepts_are_refused_up_front():
    assert A.VM_MAX_NAMELEN == 229
    B.check_vm_name("x" * 229)
    with pytest.raises(ValueError, match="longer than vmm.ko accepts"):
        B.check_vm_name("x" * 230)
    with pytest.raises(ValueError, match="longer than vmm.ko accepts"):
        B.BhyveAccelerator.check_config("é" * 115, 1, 1 << 20)      # bytes, not characters
    with pytest.raises(ValueError):
        B.BhyveVm(None, ffi, "y" * 300, None, 1)                     # before any library call


def test_accel_bhyve_without_vmm_is_one_line_and_status_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bhive", "run", str(REPO / "configs" / "hello.toml"),
                           "--accel", "bhyve", "--name", "nobhyve"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bhyve is not available here" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# -- decoding exits ------------------------------------------------------------------
def test_decode_inout_str_and_spinup_and_suspend():
    vme = ffi.new("struct vm_exit *")
    vme.exitcode = A.EXIT["INOUT_STR"]
    vme.rip = 0x1234
    vme.u.inout_str.inout.bits = A.make_inout_bits(bytes=2, is_in=True, string=True, rep=True)
    vme.u.inout_str.inout.port = 0x1F0
    ex = B.decode_exit(vme)
    assert (ex.code, ex.port, ex.size, ex.is_in, ex.rip) == (ExitCode.INOUT_STR, 0x1F0, 2, True, 0x1234)
    vme.exitcode = A.EXIT["SUSPENDED"]
    vme.u.suspended.how = 4
    assert B.decode_exit(vme).how == SuspendHow.TRIPLEFAULT
    vme.exitcode = A.EXIT["SPINUP_AP"]
    assert B.decode_exit(vme).code == ExitCode.SPINUP_AP
    vme.exitcode = A.EXIT["HLT"]
    vme.u.hlt.rflags = 0x202                 # IF set: the kernel waits, nothing for the VMM
    assert B.decode_exit(vme).code == ExitCode.BOGUS
    vme.u.hlt.rflags = 0x2
    assert B.decode_exit(vme).code == ExitCode.HLT
    vme.exitcode = A.EXIT["TASK_SWITCH"]
    assert B.decode_exit(vme).code == ExitCode.UNHANDLED


def test_register_merges_as_the_cpu_does():
    assert B.merge_register(0x1122334455667788, 0xAB, 1) == 0x11223344556677AB
    assert B.merge_register(0x1122334455667788, 0xABCD, 2) == 0x112233445566ABCD
    assert B.merge_register(0x1122334455667788, 0xABCDEF01, 4) == 0xABCDEF01


# -- exits made by softvmm from real guest code, decoded and completed by the backend -----
GUEST = r"""
bits 64
org 0x10000
    mov rax, 0x1111111111111111
    mov dx, 0x60
    in al, dx                       ; IN merges into AL only
    mov r12, rax
    mov rax, 0x2222222222222222
    in eax, dx                      ; IN EAX zero-extends
    mov r13, rax
    mov al, 'A'
    mov dx, 0x3f8
    out dx, al
    mov rbx, 0xFEC00000
    mov eax, [rbx]                  ; 8B: MMIO read, 4 bytes
    mov r14, rax
    mov rcx, 0x0123456789ABCDEF
    mov [rbx + 0x10], rcx           ; REX.W 89: MMIO write, 8 bytes
    mov byte [rbx + 0x20], 0x7F     ; C6: immediate
    mov dword [rbx + 0x24], -2      ; C7: immediate, sign-extended
    mov r9, -1
    mov r9d, [rbx + 0x30]           ; REX.R 8B, zero-extends r9
    mov rdx, -1
    mov ah, [rbx + 0x40]            ; 8A into AH (no REX: a high-byte register)
    mov r10, rax
    movzx esi, byte [rbx + 0x51]
    movsx rdi, byte [rbx + 0x52]    ; REX.W 0F BE: sign-extends
    movzx r11d, word [rbx + 0x54]
    mov ecx, 0x4B564D01
    rdmsr                           ; an MSR softvmm does not implement: the [msr] policy
    mov r15, rdx
    shl r15, 32
    or r15, rax
    mov ecx, 0x4B564D02
    mov eax, 0x55
    xor edx, edx
    wrmsr
    cli
    hlt
"""


def port_value(port, size):
    return (0xA5C3E781 ^ port) & ((1 << (8 * size)) - 1)


def mmio_value(gpa, size):
    return ((gpa & 0xFF) * 0x0101010101010101 ^ 0x8000000000000080) & ((1 << (8 * size)) - 1)


def guest_machine(tmp_path):
    m = Machine(ncpus=1)
    m.write(0x10000, build_nasm(_write(tmp_path, GUEST)).read_bytes())
    m.long_mode(0, rip=0x10000)
    return m


def _write(tmp_path, text):
    p = tmp_path / "bhyve_exits.asm"
    p.write_text(text)
    return p


def drive(vcpu, log):
    """The worker's dispatch (bhive.vcpu_worker.VcpuWorker.loop) in miniature,
    with deterministic devices."""
    while True:
        ex = vcpu.vm_run()
        if ex.code == ExitCode.INOUT:
            log.append(("pio", ex.port, ex.size, ex.is_in, ex.data))
            vcpu.vm_complete_inout(ex, port_value(ex.port, ex.size) if ex.is_in else 0)
        elif ex.code == ExitCode.INST_EMUL:
            log.append(("mmio", ex.gpa, ex.size, ex.is_write, ex.data))
            vcpu.vm_complete_mmio(ex, 0 if ex.is_write else mmio_value(ex.gpa, ex.size))
        elif ex.code == ExitCode.RDMSR:
            log.append(("rdmsr", ex.msr))
            vcpu.vm_complete_msr(ex, 0x0000BEEF00C0FFEE)
        elif ex.code == ExitCode.WRMSR:
            log.append(("wrmsr", ex.msr, ex.data))
            vcpu.vm_complete_msr(ex, 0)
        elif ex.code == ExitCode.BOGUS:
            continue
        else:
            return ex


REGS = (VmReg.RAX, VmReg.RBX, VmReg.RCX, VmReg.RDX, VmReg.RSI, VmReg.RDI, VmReg.R9, VmReg.R10, VmReg.R11,
        VmReg.R12, VmReg.R13, VmReg.R14, VmReg.R15, VmReg.RIP)


def test_softvmm_exits_through_the_bhyve_backend_match_softvmm(tmp_path):
    ref = guest_machine(tmp_path)
    ref_log: list = []
    last = drive(ref.cpus[0], ref_log)
    assert last.code == ExitCode.HLT
    expected = {r: ref.cpus[0].vm_get_register(r) for r in REGS}

    m = guest_machine(tmp_path)
    lib = SoftvmmLibvmmapi(m)
    vm = B.BhyveVm(lib, ffi, "bhyve-exits", None, 1)
    vcpu = vm.vcpu_open(0)
    log: list = []
    last = drive(vcpu, log)
    assert last.code == ExitCode.HLT
    got = {r: vcpu.vm_get_register(r) for r in REGS}

    assert log == ref_log
    assert got == expected
    # and what the program says it saw, independently of softvmm
    assert got[VmReg.R12] == 0x1111111111111100 | port_value(0x60, 1)
    assert got[VmReg.R13] == port_value(0x60, 4)
    assert got[VmReg.R14] == mmio_value(0xFEC00000, 4)
    assert got[VmReg.R9] == mmio_value(0xFEC00030, 4)
    assert (got[VmReg.R10] >> 8) & 0xFF == mmio_value(0xFEC00040, 1)
    assert got[VmReg.RSI] == mmio_value(0xFEC00051, 1)
    assert got[VmReg.RDI] == (mmio_value(0xFEC00052, 1) | ~0xFF) & 0xFFFFFFFFFFFFFFFF
    assert got[VmReg.R11] == mmio_value(0xFEC00054, 2)
    assert got[VmReg.R15] == 0x0000BEEF00C0FFEE
    assert ("mmio", 0xFEC00010, 8, True, 0x0123456789ABCDEF) in log
    assert ("mmio", 0xFEC00020, 1, True, 0x7F) in log
    assert ("mmio", 0xFEC00024, 4, True, 0xFFFFFFFE) in log
    assert ("pio", 0x3F8, 1, False, ord("A")) in log
    assert ("wrmsr", 0x4B564D02, 0x55) in log
    assert "cap 0=1" in lib.calls                 # VM_CAP_HALT_EXIT


def test_msr_gp_is_injected_with_the_instruction_restarted(tmp_path):
    src = tmp_path / "gp.asm"
    src.write_text("bits 64\norg 0x10000\nmov ecx, 0x4B564D03\nrdmsr\nhlt\n")
    m = Machine(ncpus=1)
    m.write(0x10000, build_nasm(src).read_bytes())
    m.long_mode(0, rip=0x10000)
    lib = SoftvmmLibvmmapi(m)
    vcpu = B.BhyveVm(lib, ffi, "gp", None, 1).vcpu_open(0)
    ex = vcpu.vm_run()
    assert ex.code == ExitCode.RDMSR and ex.msr == 0x4B564D03
    vcpu.vm_complete_msr(ex, 0, gp=True)
    # no IDT: the #GP becomes a triple fault, which is what a real CPU would do
    while (ex := vcpu.vm_run()).code == ExitCode.BOGUS:
        pass
    assert ex.code == ExitCode.SUSPENDED and ex.how == SuspendHow.TRIPLEFAULT


def test_an_mmio_instruction_outside_the_mov_family_is_unhandled(tmp_path):
    src = tmp_path / "add.asm"
    src.write_text("bits 64\norg 0x10000\nmov rbx, 0xFEC00000\nadd [rbx], eax\nhlt\n")
    m = Machine(ncpus=1)
    m.write(0x10000, build_nasm(src).read_bytes())
    m.long_mode(0, rip=0x10000)
    vcpu = B.BhyveVm(SoftvmmLibvmmapi(m), ffi, "add", None, 1).vcpu_open(0)
    ex = vcpu.vm_run()
    assert ex.code == ExitCode.UNHANDLED and ex.insn[:1] == b"\x01"


def test_package_import_loads_no_library():
    assert bhyve.ACCELERATOR.name == "bhyve"
    ok, why = bhyve.ACCELERATOR.available()
    assert not ok and ("FreeBSD" in why or "vmm.ko" in why)
