"""A stand-in for FreeBSD's libvmmapi + vmm.ko, driven by softvmm.

The bhyve backend (bhive.accel.bhyve) cannot run here: vmm.ko is
FreeBSD's.  What it does with an exit (decode the `struct vm_exit`, finish
an IN by writing RAX, an MMIO read by writing the register the kernel's
`struct vie` names, an RDMSR by writing EDX:EAX, #GP by
vm_inject_exception with restart) can: this object offers the libvmmapi
functions the backend calls, with the same signatures, over the same cffi
structures (bhive.accel.bhyve._abi.CDEF), and makes its exits by running
real guest instructions on softvmm and writing what softvmm reports into
`struct vm_exit` the way the kernel does:

* INOUT: u.inout bytes/in/port/eax; INST_EMUL: u.inst_emul.gpa and a
  `struct vie` decoded here from the instruction bytes (prefixes, opcode,
  ModRM reg, immediate, as the kernel's vmm_decode_instruction fills it);
  RDMSR/WRMSR: u.msr; HLT: u.hlt.rflags; SUSPENDED: u.suspended.how.
* The next vm_run resumes "at nextrip" as vmm.c does: softvmm finishes the
  instruction (RIP moves), then every register the VMM set while the exit
  was pending is applied again, so what lands in the guest is the
  backend's value, never softvmm's.
"""

from __future__ import annotations

import cffi

from bhive.accel.base import ExitCode, VmReg
from bhive.accel.bhyve import _abi as A

ffi = cffi.FFI()
ffi.cdef(A.CDEF)


def decode_vie(code: bytes, vie) -> None:
    """Fill `vie` for one MOV-family instruction of 64-bit code (the part of
    the kernel's decoder the tests need: legacy 0x66, REX, 0x0F, ModRM with
    SIB/displacement, immediates of C6/C7)."""
    i = 0
    opsize_override = False
    rex = 0
    while code[i] in (0x66, 0x67, 0x2E, 0x3E, 0x26, 0x64, 0x65, 0x36):
        opsize_override |= code[i] == 0x66
        i += 1
    if 0x40 <= code[i] <= 0x4F:
        rex = code[i]
        i += 1
    two = code[i] == 0x0F
    if two:
        i += 1
    op = code[i]
    i += 1
    opsize = 8 if rex & 8 else (2 if opsize_override else 4)
    reg = 0
    if op not in (0xA1, 0xA3):
        modrm = code[i]
        i += 1
        mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7
        reg |= (rex >> 2 & 1) << 3
        if mod != 3 and rm == 4:
            i += 1                              # SIB
        if mod == 1:
            i += 1
        elif mod == 2 or (mod == 0 and rm == 5):
            i += 4
        vie.prefix_bits[1] = (mod << 2) | (reg << 4)
    else:
        i += 8                                  # moffs64
    imm = 0
    if not two and op in (0xC6, 0xC7):
        n = 1 if op == 0xC6 else min(opsize, 4)
        imm = int.from_bytes(code[i:i + n], "little", signed=True)
        i += n
    vie.size_bits = (opsize << 4) | 8
    # rex_w, rex_r, rex_x, rex_b, rex_present at bits 0..4 (REX is 0100WRXB)
    vie.prefix_bits[0] = ((rex >> 3 & 1) | (rex >> 2 & 1) << 1 | (rex >> 1 & 1) << 2 | (rex & 1) << 3
                          | bool(rex) << 4)
    vie.immediate = imm
    vie.num_valid = vie.num_processed = i
    for k in range(i):
        vie.inst[k] = code[k]
    vie.op.op_byte = op
    if two:
        vie.op.op_type = A.VIE_OP_TYPE_MOVZX if op in (0xB6, 0xB7) else A.VIE_OP_TYPE_MOVSX
    else:
        vie.op.op_type = A.VIE_OP_TYPE_MOV if op in (0x88, 0x89, 0x8A, 0x8B, 0xA1, 0xA3, 0xC6, 0xC7) else 0
    vie.decoded = 1


class SoftvmmLibvmmapi:
    """libvmmapi's functions (the subset the backend calls) over one softvmm
    machine (bhive.accel.softvmm.harness.Machine)."""

    def __init__(self, machine):
        self.m = machine
        self.ctx = ffi.cast("struct vmctx *", 1)
        self.handles = {}                      # struct vcpu * (as int) -> vcpuid
        self.pending = {}                      # vcpuid -> (ExitCode, exit)
        self.set_regs = {}                     # vcpuid -> {VmReg: value} set while an exit is pending
        self.injected = {}                     # vcpuid -> (vector, restart)
        self.calls: list[str] = []

    # -- VM and vCPU handles ---------------------------------------------------
    def vm_open(self, name):
        self.calls.append("vm_open")
        return self.ctx

    def vm_vcpu_open(self, ctx, vcpuid):
        h = ffi.cast("struct vcpu *", 0x1000 + vcpuid)
        self.handles[int(ffi.cast("uintptr_t", h))] = vcpuid
        return h

    def _cpu(self, vcpu):
        vid = self.handles[int(ffi.cast("uintptr_t", vcpu))]
        return vid, self.m.cpus[vid]

    def vm_set_capability(self, vcpu, cap, val):
        self.calls.append(f"cap {cap}={val}")
        return 0

    def vm_lapic_msi(self, ctx, addr, msg):
        self.calls.append("vm_lapic_msi")
        self.m.vm.vm_lapic_msi(addr, msg)
        return 0

    def vm_lapic_irq(self, *args):             # what the backend must never call (seed bug #7)
        raise AssertionError("vm_lapic_irq called")

    # -- registers --------------------------------------------------------------
    def vm_get_register(self, vcpu, reg, out):
        vid, c = self._cpu(vcpu)
        out[0] = self.set_regs.get(vid, {}).get(reg, c.vm_get_register(VmReg(reg)))
        return 0

    def vm_set_register(self, vcpu, reg, value):
        vid, c = self._cpu(vcpu)
        if vid in self.pending:
            self.set_regs.setdefault(vid, {})[VmReg(reg)] = value
        else:
            c.vm_set_register(VmReg(reg), value)
        return 0

    def vm_inject_exception(self, vcpu, vector, errcode_valid, errcode, restart):
        vid, _ = self._cpu(vcpu)
        self.injected[vid] = (vector, restart)
        return 0

    # -- running ------------------------------------------------------------------
    def _resume(self, vid, c) -> None:
        """What the kernel does at the next VM_RUN: finish the instruction at
        nextrip with the registers the VMM left."""
        code, ex = self.pending.pop(vid)
        regs = self.set_regs.pop(vid, {})
        inj = self.injected.pop(vid, None)
        if code in (ExitCode.RDMSR, ExitCode.WRMSR):
            if inj is not None:
                assert inj == (13, 1), inj     # #GP, instruction restarted
                c.vm_complete_msr(ex, 0, gp=True)
                return
            value = regs.get(VmReg.RDX, 0) << 32 | regs.get(VmReg.RAX, 0)
            c.vm_complete_msr(ex, value if code == ExitCode.RDMSR else 0)
        elif code == ExitCode.INOUT:
            c.vm_complete_inout(ex, regs.get(VmReg.RAX, 0))
        elif code == ExitCode.INST_EMUL:
            c.vm_complete_mmio(ex, 0)
        for reg, value in regs.items():
            c.vm_set_register(reg, value)

    def vm_run(self, vcpu, vmrun):
        vid, c = self._cpu(vcpu)
        if vid in self.pending:
            self._resume(vid, c)
        while True:
            ex = c.vm_run()
            if ex.code != ExitCode.BOGUS:
                break
        vme = vmrun.vm_exit
        ffi.memmove(vme, b"\0" * ffi.sizeof("struct vm_exit"), ffi.sizeof("struct vm_exit"))
        vme.rip = ex.rip
        vme.inst_length = ex.inst_length
        if ex.code == ExitCode.INOUT:
            vme.exitcode = A.EXIT["INOUT"]
            vme.u.inout.bits = A.make_inout_bits(bytes=ex.size, is_in=ex.is_in)
            vme.u.inout.port = ex.port
            vme.u.inout.eax = c.vm_get_register(VmReg.RAX) & 0xFFFFFFFF
        elif ex.code == ExitCode.INST_EMUL:
            vme.exitcode = A.EXIT["INST_EMUL"]
            vme.u.inst_emul.gpa = ex.gpa
            rip = ex.rip                       # identity-mapped 64-bit code
            decode_vie(self.m.read(rip, 15), vme.u.inst_emul.vie)
        elif ex.code in (ExitCode.RDMSR, ExitCode.WRMSR):
            vme.exitcode = A.EXIT[ex.code.name]
            vme.u.msr.code = ex.msr
            vme.u.msr.wval = ex.data
        elif ex.code == ExitCode.HLT:
            vme.exitcode = A.EXIT["HLT"]
            vme.u.hlt.rflags = c.vm_get_register(VmReg.RFLAGS)
        elif ex.code == ExitCode.SUSPENDED:
            vme.exitcode = A.EXIT["SUSPENDED"]
            vme.u.suspended.how = int(ex.how)
        elif ex.code == ExitCode.IOAPIC_EOI:
            vme.exitcode = A.EXIT["IOAPIC_EOI"]
            vme.u.ioapic_eoi.vector = ex.vector
        else:
            raise AssertionError(f"stand-in: softvmm exit {ex.code!r} has no bhyve form here")
        if ex.code in (ExitCode.INOUT, ExitCode.INST_EMUL, ExitCode.RDMSR, ExitCode.WRMSR):
            self.pending[vid] = (ex.code, ex)
        return 0
