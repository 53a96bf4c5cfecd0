"""CPU test guests (guests/cpu/*.asm) through the real `bhive run`: real
vCPU processes, real UART and isa-debug-exit actors.  Each guest reports
PASS/FAIL/SKIP lines over the UART and exits with its failure count."""

from __future__ import annotations

import re

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


def test_smp_atomics_eight_vcpu_processes(bhive):
    proc = bhive.run("run", "configs/cpu-smp-atomics.toml", "--name", "cpu-smp", timeout=180)
    out = proc.stdout.decode(errors="replace")
    assert "smp_atomics: counter=1600000 expected=1600000 PASS" in out, out
    assert proc.returncode == 1, (proc.returncode, out, proc.stderr)
