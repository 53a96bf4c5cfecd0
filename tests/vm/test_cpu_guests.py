"""CPU test guests (guests/cpu/*.asm) through the real `bhive run`: real
vCPU processes, real UART and isa-debug-exit actors.  Each guest reports
PASS/FAIL/SKIP lines over the UART and exits with its failure count."""

from __future__ import annotations

import re

import pytest

EXPECTED_SYS64 = [
    "#DE divide error", "#DB single-step (TF)", "#BP int3", "#UD for INTO in 64-bit mode", "#UD ud2",
    "#NM SSE with CR0.TS (64-bit)", "#MF unmasked x87 zero-divide (64-bit)",
    "#XM unmasked SSE zero-divide (64-bit)",
    "#GP non-canonical", "#NP segment not present", "#SS not-present stack segment",
    "#GP(sel) SS with RPL != CPL",
    "#SS(0) delivering through a non-canonical IST pointer",
    "#SS(0) push with a non-canonical RSP (IST1)", "#SS(0) PUSHFQ with a non-canonical RSP", "#SS(0) non-canonical RBP-based access",
    "#SS(0) non-canonical access with an SS override",
    "#PF not present read (err 0)",
    "#PF write to read-only at CPL0 with CR0.WP (err 3)", "#PF reserved bit (err 9)",
    "#PF NX fetch (err 0x11)", "#PF user read of supervisor page (err 5)",
    "#PF user write to read-only page (err 7)",
    "#GP INT 0x80 through a DPL0 gate from CPL3 (err 0x402)",
    "IRETQ to CPL3 and #BP back through a DPL3 gate",
    "#AC misaligned access at CPL3 with CR0.AM and EFLAGS.AC",
    "SYSCALL -> SYSRET -> SYSCALL round trip",
    "64-bit call gate CPL3 -> CPL0 and RETF (REX.W) back",
    "64-bit call gate: TSS RSP0, null SS, 8-byte frame; RETF restores CS:RIP, SS:RSP",
    "#DF for #NP while delivering #GP",
    "#GP(0) MOV SS with a null selector whose RPL 3 != CPL 0 (64-bit mode)",
    "MOV SS with a null selector, RPL = CPL = 0, is allowed in 64-bit mode",
    "#GP(0) LGDT with a non-canonical base",
    "#GP(0) LIDT with a non-canonical base",
    "#GP(sel) LLDT of a descriptor with a non-canonical base",
    "#GP(0) WRMSR IA32_FS_BASE non-canonical",
    "#GP(0) WRMSR IA32_GS_BASE non-canonical",
    "#GP(0) WRMSR IA32_KERNEL_GS_BASE non-canonical",
    "#GP(0) WRMSR IA32_LSTAR non-canonical",
    "#GP(0) WRMSR IA32_SYSENTER_EIP non-canonical",
    "NMI while an NMI handler runs: exactly one more, right after its IRETQ (IF = 0)",
    "IA32_APIC_BASE.EN = 0 clears CPUID.1:EDX.APIC; re-enabled, the xAPIC ID is reset",
    "#GP(0) IA32_APIC_BASE.EXTD without x2APIC in CPUID",
    "#GP(0) IA32_APIC_BASE bit 40 (at MAXPHYADDR)",
    "#GP(0) IA32_APIC_BASE reserved bit 9",
    "APIC timer: TMCCT counts down from TMICT, a TMICT write restarts it, 0 stops it",
    "IA32_MCG_CAP and IA32_MCG_STATUS read (MCA advertised)",
    "CPUID.1:EDX.MCE/MCA set, IA32_MCG_CAP = 0 banks, IA32_MCG_STATUS = 0",
    "#GP(0) IA32_MCG_CTL without MCG_CAP.MCG_CTL_P",
    "#GP(0) WRMSR IA32_MCG_CAP (read-only)",
    "#UD STAC at CPL3",
    "CPUID.7:EBX.SMEP and SMAP set",
    "#PF SMEP: supervisor fetch from a user page (err 0x11)",
    "#PF SMAP: supervisor read of a user page with EFLAGS.AC = 0 (err 1)",
    "#PF SMAP: supervisor write to a user page with EFLAGS.AC = 0 (err 3)",
    "SMAP: STAC opens user pages to supervisor reads and writes",
    "#PF SMAP: CLAC closes them again (the cached translation too)",
    "SMAP: EFLAGS.AC = 1 set by POPF allows the access",
    "#PF SMAP in a hot (translated) loop once STAC is skipped",
    "SMAP: the fault comes on the iteration without STAC, not before",
    "DR0 execute breakpoint: #DB fault before it, DR6.B0, RF lets it run once",
    "DR1 write breakpoint: #DB trap after an overlapping write, DR6.B1; reads pass",
    "DR3 read/write breakpoint (8 bytes): a read traps, DR6.B3",
    "DR2 I/O breakpoint with CR4.DE: OUT traps, DR6.B2",
    "#UD MOV from DR4 with CR4.DE = 1",
    "MOV from DR5 without CR4.DE reads DR7",
    "DR7.GD: MOV DR is a #DB fault with DR6.BD, GD cleared",
    "TF and a write breakpoint in one instruction: one #DB with DR6.BS and B1",
    "#GP(sel) LTR of a TSS descriptor with a non-canonical base",
]


# 32-bit protected mode (guests/cpu/sys32.asm)
EXPECTED_SYS32 = [
    "#OF INTO with OF=1 (32-bit)",
    "#OF is a trap: saved EIP after INTO",
    "#BR BOUND index above the upper bound",
    "BOUND index within the bounds",
    "#NM x87 with CR0.TS",
    "#NM x87 with CR0.EM",
    "#NM SSE with CR0.TS",
    "#UD SSE with CR0.EM",
    "#MF unmasked x87 zero-divide at the next FWAIT (CR0.NE)",
    "#MF is delayed to the next waiting x87 instruction",
    "#XM unmasked SSE zero-divide (CR4.OSXMMEXCPT)",
    "#UD unmasked SSE zero-divide without CR4.OSXMMEXCPT",
    "dword read at the end of a 4K data segment",
    "#GP(0) dword read crossing the data segment limit",
    "#GP(0) byte write just past the limit (ES)",
    "read through a read-only data segment",
    "#GP(0) write through a read-only data segment",
    "read through a readable code segment (CS override)",
    "#GP(0) write through a code segment (CS override)",
    "#GP(0) access through a null segment (FS)",
    "expand-down data segment: offsets above the limit",
    "#GP(0) expand-down data segment: offset at/below the limit",
    "#SS(0) SS access beyond the stack segment limit",
    "#SS(0) EBP-based access crossing the stack segment limit",
    "#SS(0) expand-down stack segment below its limit",
    "#GP(0) near JMP beyond the CS limit",
    "#GP(0) near CALL beyond the CS limit",
    "near CALL beyond the CS limit pushes nothing",
    "#GP(sel) execute-only code segment into DS",
    "#GP(sel) read-only data segment into SS",
    "#GP(sel) SS with RPL/DPL != CPL",
    "#NP(sel) not-present data segment into ES",
    "#GP(sel) selector beyond the GDT limit",
    "IRETD to CPL3 and INT back through a DPL3 gate",
    "CPL3 -> CPL0 interrupt frame on the TSS ESP0 stack (SS:ESP, CS)",
    "#TS(sel) INT from CPL3 whose TSS SS1 has RPL/DPL != 1",
    "#SS(sel) INT from CPL3 whose TSS SS2 is not present",
    "CALL through a call gate CPL3 -> CPL0 and RETF 8 back",
    "call gate: TSS stack, 2 parameters copied, old SS:ESP and CS:EIP",
    "RETF 8 to CPL3: CS, SS, ESP with the parameters released",
    "RETF to CPL3 nulls a DS with DPL 0",
    "CALL through a call gate at the same privilege level",
    "same-privilege call gate: CS:EIP pushed on the current stack",
    "far JMP through a call gate",
    "far JMP through a call gate lands in the gate's code segment",
    "#GP(sel) CALL from CPL3 through a DPL0 call gate",
    "#GP(sel) far JMP from CPL3 to non-conforming DPL0 code",
    "SYSENTER -> SYSEXIT round trip",
    "SYSENTER/SYSEXIT selectors and stacks from the MSRs",
    "#GP(0) SYSENTER with IA32_SYSENTER_CS = 0",
    "self-IPI after STI",
    "STI shadow: the interrupt is taken after the next instruction",
    "single-step #DB over MOV SS",
    "MOV SS shadow: the single-step trap comes after the next instruction",
    "far JMP to a TSS and a far JMP back",
    "JMP task switch: TR, CR0.TS, NT clear, registers saved and restored, busy bits",
    "CALL through a task gate and IRET (NT) back",
    "nested task: NT = 1, previous-task link, busy bit cleared by IRET",
    "INT n through an IDT task gate",
    "INT n task gate: TR and the previous-task link",
    "#GP(sel) through an IDT task gate, error code on the new task's stack",
    "#SS(0) interrupt frame beyond the stack segment limit (via a task gate)",
    "#SS for the interrupt frame is raised at the INT, before any push",
    "#GP(sel) far JMP to a busy TSS",
]


# every mode switch, up and back down (guests/cpu/modes.asm)
EXPECTED_MODES = [
    "real mode: 16-bit operand size",
    "real mode: CR0.PE = 0",
    "real mode: segment base = selector * 16",
    "real mode: INT through the IVT, 3-word frame, IRET",
    "real mode: far CALL and RETF",
    "16-bit protected mode: 16-bit operand size",
    "16-bit protected mode: CR0.PE = 1",
    "16-bit protected mode: segment base from the descriptor",
    "16-bit protected mode: INT through a 16-bit gate, 3-word frame, IRET",
    "32-bit protected mode: 32-bit operand size",
    "32-bit protected mode: INT through a 32-bit gate, 3-dword frame, IRETD",
    "32-bit protected mode: far CALL and RETF",
    "2-level paging: linear 0x400000 -> the marker page",
    "2-level paging: #PF through the 32-bit IDT (err 0, CR2)",
    "2-level paging: still 32-bit code",
    "PAE paging: linear 0x40000000 (PDPTE 1) -> the marker page",
    "PAE paging: NX fetch #PF through the 32-bit IDT (err 0x11, CR2)",
    "EFER.LMA after CR0.PG with EFER.LME (compatibility mode)",
    "compatibility mode after activation: 32-bit operand size",
    "64-bit mode: REX.W prefix, 64-bit code",
    "4-level paging: linear 0x8000000000 (PML4 entry 1) -> the marker page",
    "64-bit mode: INT through a 64-bit gate, aligned 40-byte frame, IRETQ",
    "IRETQ to compatibility mode: 32-bit operand size",
    "compatibility mode: EFER.LMA = 1",
    "compatibility mode: INT through the 64-bit IDT, aligned 40-byte frame, IRETQ back",
    "RETF from compatibility mode back to 64-bit mode",
    "far JMP from 64-bit to compatibility mode",
    "CR0.PG = 0 in compatibility mode clears EFER.LMA",
    "32-bit protected mode: 32-bit operand size",
    "32-bit protected mode: INT through a 32-bit gate, 3-dword frame, IRETD",
    "16-bit protected mode: 16-bit operand size",
    "16-bit protected mode: CR0.PE = 1",
    "16-bit protected mode: segment base from the descriptor",
    "16-bit protected mode: INT through a 16-bit gate, 3-word frame, IRET",
    "back in real mode: 16-bit operand size",
    "real mode: CR0.PE = 0",
    "real mode: segment base = selector * 16",
    "real mode: INT through the IVT, 3-word frame, IRET",
    "real mode: far CALL and RETF",
    "real mode: a word at offset 0xFFFF is #GP through the IVT (no error code)",
    "real mode: FS keeps the 4G limit cached in protected mode (unreal mode)",
]


# the features opcodes.asm executes under the CPU model (-cpu) and reports as "cpuid NAME BIT"
CPU_MODEL_FEATURES = ["popcnt", "movbe", "cx16", "bmi1", "bmi2", "adx", "rdtscp", "lahf-lm", "smep", "smap", "nx",
                      "tsc-deadline", "pdpe1gb"]

# unknown and unimplemented opcodes raise #UD in every mode (guests/cpu/opcodes.asm)
EXPECTED_OPCODES = [
    "real mode: every unassigned opcode raises #UD",
    "32-bit protected mode: every unassigned opcode raises #UD",
    "64-bit mode: every unassigned opcode raises #UD",
    "64-bit mode: every opcode invalid in 64-bit mode raises #UD",
    "#UD INVPCID (CPUID.7:EBX.INVPCID = 0)",
    "#UD RDPRU (AMD only)",
    "#UD RDFSBASE (CPUID.7:EBX.FSGSBASE = 0)",
    "#UD XGETBV (CPUID.1:ECX.XSAVE = 0)",
    "#UD XSAVE (CPUID.1:ECX.XSAVE = 0)",
    "#UD PSHUFB (CPUID.1:ECX.SSSE3 = 0)",
    "#UD PTEST (CPUID.1:ECX.SSE4_1 = 0)",
    "#UD AESENC (CPUID.1:ECX.AES = 0)",
    "#UD RDRAND (CPUID.1:ECX.RDRAND = 0)",
    "#UD XBEGIN (CPUID.7:EBX.RTM = 0)",
    "#UD MONITOR (CPUID.1:ECX.MONITOR = 0)",
    "#UD GETSEC with CR4.SMXE = 0",
    "#UD VMREAD outside VMX operation",
    "#UD RSM outside SMM",
    "#UD 3DNow! (0F 0F)",
    "#GP(0) RDPMC at CPL0: no counters in CPUID leaf 0xA",
    "#GP(0) RDPMC with CR4.PCE = 1 and no counters",
] + [f"{f} runs iff CPUID has it" for f in CPU_MODEL_FEATURES] + [
    "LZCNT iff CPUID.80000001H:ECX.ABM, else BSR",
]


def run_checks(bhive, name: str, expected: list[str], timeout: float = 120) -> str:
    """Run configs/cpu-<name>.toml; every check must report PASS, in order,
    and the guest must end with isa-debug-exit 0 (`bhive run` status 1)."""
    proc = bhive.run("run", f"configs/cpu-{name}.toml", "--name", f"cpu-{name}", timeout=timeout)
    out = proc.stdout.decode(errors="replace")
    fails = re.findall(r"^FAIL .*$", out, re.M)
    assert not fails, out
    passed = re.findall(r"^PASS (.*?)\r?$", out, re.M)
    assert passed == expected, out
    assert re.search(rf"^{name}: failures=0+\r?$", out, re.M), out
    assert proc.returncode == 1, (proc.returncode, out, proc.stderr)
    return out


def test_sys64_exceptions_paging_user_mode_syscall(bhive):
    run_checks(bhive, "sys64", EXPECTED_SYS64)


def test_sys32_exceptions_segments_call_gates_sysenter_tasks(bhive):
    run_checks(bhive, "sys32", EXPECTED_SYS32)


def test_modes_every_switch_up_to_64_bit_and_back_to_real_mode(bhive):
    run_checks(bhive, "modes", EXPECTED_MODES)


def test_opcodes_unassigned_and_unadvertised_raise_ud_in_every_mode(bhive):
    run_checks(bhive, "opcodes", EXPECTED_OPCODES)


@pytest.mark.parametrize("spec", ["qemu64", "max,-popcnt,-bmi1,-nx,vendor=AuthenticAMD", "qemu64,+smep,+bmi2"])
def test_cpu_model_applies_to_cpuid_and_to_what_runs(bhive, spec):
    """-cpu as QEMU spells it: the guest sees the model's vendor and feature
    bits, and every gated instruction runs exactly when its bit is set (the
    guest checks that itself: all PASS)."""
    from bhive import cpumodel
    model = cpumodel.parse(spec)
    proc = bhive.run("run", "configs/cpu-opcodes.toml", "--name", "cpu-model", "-cpu", spec, timeout=120)
    out = proc.stdout.decode(errors="replace")
    assert not re.findall(r"^FAIL .*$", out, re.M), out
    assert re.findall(r"^PASS (.*?)\r?$", out, re.M) == EXPECTED_OPCODES, out
    assert proc.returncode == 1, (proc.returncode, out, proc.stderr)
    assert re.search(rf"^vendor {model.vendor}\r?$", out, re.M), out
    seen = dict(re.findall(r"^cpuid (\S+) ([01])\r?$", out, re.M))
    assert seen == {f: str(int(model.has(f))) for f in CPU_MODEL_FEATURES}, out
    assert seen["popcnt"] == "0" and (seen["smep"] == "1") == ("+smep" in spec or spec.startswith("max"))


@pytest.mark.parametrize("spec,msg", [("pentium", "unknown CPU model 'pentium'"),
                                      ("max,+avx", "CPU feature 'avx' is unknown or not implemented"),
                                      ("max,vendor=Cyrix", "unknown vendor 'Cyrix'"),
                                      ("max,popcnt", "bad CPU feature 'popcnt'")])
def test_cpu_model_errors_are_one_line_and_status_2(bhive, spec, msg):
    proc = bhive.run("run", "configs/cpu-opcodes.toml", "--name", "cpu-model-bad", "-cpu", spec, timeout=60)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 2, (proc.returncode, err)
    assert msg in err and len(err.strip().splitlines()) == 1, err


def test_smp_atomics_eight_vcpu_processes(bhive):
    proc = bhive.run("run", "configs/cpu-smp-atomics.toml", "--name", "cpu-smp", timeout=180)
    out = proc.stdout.decode(errors="replace")
    assert "smp_atomics: counter=1600000 expected=1600000 PASS" in out, out
    assert proc.returncode == 1, (proc.returncode, out, proc.stderr)
