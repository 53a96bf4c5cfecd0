"""The kvm accelerator: small guest snippets with known results, and the
INOUT/MMIO completion rules.  Skips (with the reason) only when /dev/kvm is
missing or unusable."""

from __future__ import annotations

import struct

import pytest

from bhive.accel import get
from bhive.accel.base import ExitCode, SegDesc, SuspendHow, VmReg
from bhive.guestbuild import assemble

pytestmark = pytest.mark.kvm

KVM = get("kvm")
_ok, _why = KVM.available()
if not _ok:
    pytest.skip(f"kvm accelerator unavailable: {_why}", allow_module_level=True)

from bhive.difftest import machine as M  # noqa: E402  (after the skip)

KCODE = SegDesc(base=0, limit=0xFFFFFFFF, access=0xA09B, selector=M.SEL_KCODE)
KDATA = SegDesc(base=0, limit=0xFFFFFFFF, access=0xC093, selector=M.SEL_KDATA)


@pytest.fixture
def mach():
    m = M.Machine("kvm")
    yield m
    m.close()


def _load(m, text: str) -> int:
    m.load_code_at(M.CODE, assemble(text, org=M.CODE))
    return M.CODE


def _enter(m, rip: int, cpl0: bool = False, **regs):
    v = m.vcpu
    if cpl0:
        v.vm_set_desc(VmReg.CS, KCODE)
        v.vm_set_desc(VmReg.SS, KDATA)
    for name, val in regs.items():
        v.vm_set_register(VmReg[name.upper()], val)
    v.vm_set_register(VmReg.RSP, regs.get("rsp", M.KSTACK_TOP - 0x100 if cpl0 else M.STACK_PTR))
    v.vm_set_register(VmReg.RFLAGS, 2)
    v.vm_set_register(VmReg.RIP, rip)


def test_available_and_name():
    assert KVM.name == "kvm"
    assert KVM.available() == (True, "")
    assert KVM.platform_shm_size(1, 1 << 20) == 0


def test_cpl3_arithmetic(mach):
    rip = _load(mach, "add rax, rbx\nimul rcx, rax, 3\nint3")
    mach.run_case(rip, M.CaseInput([5, 0, 0, 7] + [M.STACK_PTR] + [0] * 11, 2, bytes(M.SCRATCH_SIZE)))
    o = mach.run_case(rip, M.CaseInput([40, 0, 0, 2] + [M.STACK_PTR] + [0] * 11, 2, bytes(M.SCRATCH_SIZE)))
    assert o.kind == "ok"
    assert o.regs[0] == 42 and o.regs[1] == 126
    assert o.rip == rip + len(assemble("add rax, rbx\nimul rcx, rax, 3\nint3", org=M.CODE))


def test_cpl3_divide_error_reports_vector(mach):
    rip = _load(mach, "div rcx\nint3")
    o = mach.run_case(rip, M.CaseInput([1, 0, 0, 0, M.STACK_PTR] + [0] * 11, 2, bytes(M.SCRATCH_SIZE)))
    assert (o.kind, o.vector, o.rip) == ("exc", 0, rip)


def test_registers_and_descriptors_roundtrip(mach):
    v = mach.vcpu
    for i, r in enumerate((VmReg.RAX, VmReg.R15, VmReg.RBP)):
        v.vm_set_register(r, 0x1122334455667788 + i)
    assert v.vm_get_register(VmReg.R15) == 0x1122334455667789
    assert v.vm_get_register(VmReg.CR3) == M.PML4
    assert v.vm_get_register(VmReg.EFER) & 0x500 == 0x500
    d = v.vm_get_desc(VmReg.CS)
    assert (d.selector, d.access & 0xE0FF) == (M.SEL_UCODE, 0xA0FB)
    assert v.vm_get_desc(VmReg.GDTR).base == M.GDT
    assert v.vm_get_register(VmReg.CS) == M.SEL_UCODE


def test_inout_completion_in_and_out(mach):
    """IN data lands in AL/EAX, and KVM (the accelerator) moves RIP past the
    instruction on the next run: the worker never touches RIP."""
    text = "in al, 0x70\nmov rbx, rax\nmov dx, 0x1234\nin eax, dx\nout 0x71, al\nhlt"
    rip = _load(mach, text)
    v = mach.vcpu
    _enter(mach, rip, cpl0=True, rax=0xFFFFFFFFFFFFFF00)
    ex = v.vm_run()
    assert (ex.code, ex.port, ex.size, ex.is_in, ex.rip) == (ExitCode.INOUT, 0x70, 1, True, rip)
    v.vm_complete_inout(ex, 0x5A)
    ex = v.vm_run()
    assert (ex.code, ex.port, ex.size, ex.is_in) == (ExitCode.INOUT, 0x1234, 4, True)
    assert v.vm_get_register(VmReg.RBX) == 0xFFFFFFFFFFFFFF5A
    v.vm_complete_inout(ex, 0xDEADBEEF)
    ex = v.vm_run()
    assert (ex.code, ex.port, ex.is_in, ex.data) == (ExitCode.INOUT, 0x71, False, 0xEF)
    assert v.vm_get_register(VmReg.RAX) == 0xDEADBEEF          # 32-bit IN zero-extends
    v.vm_complete_inout(ex)
    ex = v.vm_run()
    assert ex.code == ExitCode.HLT


def test_setting_rip_after_out_restarts_there(mach):
    """The difftest relies on this: after an OUT exit, a RIP set by the VMM
    wins over the pending completion (no instruction is skipped)."""
    rip = _load(mach, "out 0x72, al\nmov ecx, 1\nhlt\nmov ecx, 2\nhlt")
    v = mach.vcpu
    _enter(mach, rip, cpl0=True)
    ex = v.vm_run()
    assert (ex.code, ex.port) == (ExitCode.INOUT, 0x72)
    v.vm_complete_inout(ex)
    v.vm_set_register(VmReg.RIP, rip + len(assemble("out 0x72, al\nmov ecx, 1\nhlt", org=M.CODE)))
    assert v.vm_run().code == ExitCode.HLT
    assert v.vm_get_register(VmReg.RCX) == 2


def test_mmio_read_and_write(mach):
    # Map linear 0x1FF000 to guest-physical 0x800000, outside RAM.
    struct.pack_into("<Q", mach.mem, M.PT + 8 * 0x1FF, 0x800000 | 0x7)
    rip = _load(mach, "mov dword [0x1ff010], 0x12345678\nmov rax, [0x1ff018]\nhlt")
    v = mach.vcpu
    _enter(mach, rip, cpl0=True)
    ex = v.vm_run()
    assert (ex.code, ex.gpa, ex.is_write, ex.size, ex.data) == (ExitCode.INST_EMUL, 0x800010, True, 4, 0x12345678)
    v.vm_complete_mmio(ex)
    ex = v.vm_run()
    assert (ex.code, ex.gpa, ex.is_write, ex.size) == (ExitCode.INST_EMUL, 0x800018, False, 8)
    v.vm_complete_mmio(ex, 0x0102030405060708)
    assert v.vm_run().code == ExitCode.HLT
    assert v.vm_get_register(VmReg.RAX) == 0x0102030405060708


def test_triple_fault_is_suspended(mach):
    rip = _load(mach, "ud2")
    v = mach.vcpu
    v.vm_set_desc(VmReg.IDTR, SegDesc(0, 0, 0))
    _enter(mach, rip, cpl0=True)
    ex = v.vm_run()
    assert (ex.code, ex.how) == (ExitCode.SUSPENDED, SuspendHow.TRIPLEFAULT)


def test_fpu_and_xsave_access(mach):
    """KVM_GET/SET_FPU and KVM_GET_XSAVE plumbing.  (The nested KVM of the
    development host reports MXCSR=0 through KVM_GET_FPU, so the difftest
    reads FPU/SSE state with an in-guest FXSAVE instead.)"""
    v = mach.vcpu
    f = v.kvm_get_fpu()
    assert f.fcw == 0x37F
    f.xmm[16] = 0xAB
    v.kvm_set_fpu(f)
    assert v.kvm_get_fpu().xmm[16] == 0xAB
    x = v.kvm_get_xsave()
    if x is not None:
        assert len(x) == 4096


def test_one_vcpu_per_vm():
    m = M.Machine("kvm")
    try:
        with pytest.raises(ValueError):
            m.vm.vcpu_open(1)
    finally:
        m.close()
