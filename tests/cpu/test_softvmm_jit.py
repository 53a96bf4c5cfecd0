"""The softvmm JIT (csrc/jit.c), driven in-process.

Each test runs real guest code with the JIT translating every block before
its first run (threshold 0), and checks what only a correct translation
gets right: the same results as the interpreter, flags kept across memory
accesses and chained blocks, precise faults in the middle of a native
block, code written by the guest (its own block, another vCPU's, the second
page of a page-crossing instruction), MMIO from a hot loop, interrupts
reaching a vCPU spinning in native code, and chained jumps that must not
survive a switch of address space.  The random differential tester (kvm vs
softvmm, tests/kvm/test_difftest.py) covers the instruction semantics.
"""

from __future__ import annotations

import struct
import threading

import pytest

from bhive.accel.base import ExitCode, SegDesc, VmReg
from bhive.accel.softvmm.harness import CODE32, Machine
from bhive.guestbuild import assemble

from test_softvmm_smp import setup_idt
from test_softvmm_sys import machine as sys_machine, map_4k, setup_4k_region

CODE = 0x10000
DATA = 0x30000
GPRS = (VmReg.RAX, VmReg.RBX, VmReg.RCX, VmReg.RDX, VmReg.RSI, VmReg.RDI, VmReg.RBP, VmReg.RSP,
        VmReg.R8, VmReg.R9, VmReg.R10, VmReg.R11, VmReg.R12, VmReg.R13, VmReg.R14, VmReg.R15)


def run_program(asm: str, jit: int, ncpus: int = 1) -> tuple[dict, bytes, dict]:
    """Run `asm` (64-bit, ends in hlt) with the JIT at threshold `jit`
    (-1: off); returns (registers, 4 KiB of DATA, stats)."""
    m = Machine(ncpus, options={"jit_threshold": jit})
    m.write(CODE, assemble(asm, 64, CODE))
    m.long_mode()
    e = m.run()
    assert e.code == ExitCode.HLT, e
    v = m.cpus[0]
    regs = {r.name: v.vm_get_register(r) for r in GPRS + (VmReg.RFLAGS,)}
    return regs, m.read(DATA, 4096), v.stats()


# Programs whose every instruction the JIT either runs natively or hands
# to the interpreter; each loops so that flags, memory and registers
# accumulate through many chained native blocks.
PROGRAMS = {
    "alu and flags": f"""
        mov rsi, 0x123456789abcdef1
        mov rdi, 0x0fedcba987654321
        mov ecx, 300
    l:  add rsi, rdi
        adc rdi, rsi
        sbb eax, esi
        rcl rdx, 3
        setc bl
        cmovo r8, rsi
        cmovl r9d, edi
        bt rdi, 7
        rcr r10, 1
        shld r11, rsi, 5
        imul r12, rsi, -77
        neg r13
        not r14d
        xor ah, bl
        add ch, 3
        xadd r15, rsi
        bswap r9
        movsx edx, ah
        movzx r11d, di
        popcnt rbp, rsi
        lzcnt rax, rdi
        tzcnt rdx, rsi
        dec ecx
        jnz l
        hlt""",
    "mul and div": f"""
        mov ecx, 200
        mov rbx, 0x9e3779b97f4a7c15
        xor r8, r8
    l:  mov rax, rbx
        mul rcx
        add r8, rdx
        mov rax, rbx
        xor edx, edx
        div rcx
        add r8, rax
        add r8, rdx
        mov eax, ebx
        cdq
        mov r9d, ecx
        idiv r9d
        add r8, rax
        mov rax, rbx
        cqo
        idiv rcx
        xor r8, rax
        imul rbx, rbx, 13
        dec ecx
        jnz l
        hlt""",
    "memory and segments": f"""
        mov ecx, 0xc0000100             ; FS base
        mov eax, {DATA + 0x800}
        xor edx, edx
        wrmsr
        mov rbx, {DATA}
        mov ecx, 100
    l:  mov rax, [rbx + rcx*8]
        add [rbx + rcx*8 + 8], rax
        add dword [rbx + rcx*4 + 0x400], ecx
        adc byte [rbx + rcx], 0x11
        xor word [fs:rcx*2], cx
        mov rdx, [fs:8]
        sub [rbx + 0x200], rdx
        lock xadd [rbx + 0x208], r9
        cmpxchg [rbx + 0x210], rdx
        inc qword [rbx + 0x218]
        shl dword [rbx + 0x220], 1
        setnz byte [rbx + rcx + 0x300]
        mov [rbx + 0x228], ah
        movsx rsi, word [rbx + rcx*2]
        movzx edi, byte [rbx + rcx]
        mov [rbx + rcx*8 + 0x600], rsi
        dec ecx
        jnz l
        hlt""",
    "calls, returns, stack, indirect": f"""
        mov ecx, 150
        lea r12, [rel f2]
    l:  call f1
        call r12
        push rcx
        push 0x1234
        pop rdx
        pop rcx
        pushfq
        add r8, rdx
        popfq
        lea rax, [rel t]
        jmp rax
    t:  dec ecx
        jnz l
        hlt
    f1: add r9, rcx
        ret
    f2: sub r10, rcx
        cmp r10, r9
        ret""",
    "flags across memory and blocks": f"""
        mov rbx, {DATA}
        mov ecx, 250
        mov rax, -1
    l:  add rax, rcx                ; CF, OF, ZF from here ...
        mov rdx, [rbx + 16]         ; ... through a load (the TLB probe) ...
        mov [rbx + 24], rdx         ; ... and a store ...
        jmp m                       ; ... and a chained block
    m:  adc qword [rbx], 0          ; ... to here
        seto sil
        add [rbx + 8], rsi
        dec ecx
        jnz l
        hlt""",
}


def assert_native_matches_interpreter(run) -> None:
    """run(jit) -> (registers, memory, stats): interpreted only (jit=-1) and
    translated from the first run (jit=0) must end identically, with the
    same instruction count, and the second must have run native blocks."""
    ref, ref_mem, ref_stats = run(-1)
    got, got_mem, got_stats = run(0)
    assert ref_stats["jit_blocks"] == 0
    assert got_stats["jit_blocks"] > 0, got_stats
    assert got_stats["instructions"] == ref_stats["instructions"], (got_stats, ref_stats)
    diff = {k: (hex(ref[k]), hex(got[k])) for k in ref if ref[k] != got[k]}
    assert not diff, diff
    assert got_mem == ref_mem


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_native_code_computes_what_the_interpreter_does(name):
    assert_native_matches_interpreter(lambda jit: run_program(PROGRAMS[name], jit=jit))


def test_a_fault_in_the_middle_of_a_native_block_is_precise():
    """#PF on the fourth instruction of a translated block: the handler
    sees that instruction's RIP, the first three committed, the rest not,
    and the flags of the third (an ADD with CF and ZF set)."""
    m = sys_machine("""
        GATE 14, pf
        mov rbx, 0x40000000
        mov ecx, 20
    warm:                            ; run the block's code path translated, mapped
        call body
        dec ecx
        jnz warm
        mov qword [0x180000], 0      ; unmap the page
        invlpg [0x40000000]
        xor r8d, r8d
        mov r9, 5
        xor r11d, r11d
        call body
        hlt
    body:
        mov r8, 0x2222
        mov r9, -1
        add r9, 1                    ; CF=1 ZF=1
    fault:
        mov r10, [rbx]               ; #PF here
        mov r11, 0x3333
        ret
    pf: mov r12, [rsp + 8]           ; RIP of the faulting instruction
        mov r13, [rsp + 24]          ; RFLAGS
        lea r14, [rel fault]
        hlt
    """)
    m.cpus[0].jit_config(0)
    setup_4k_region(m)
    map_4k(m, 0, 0x200000, 0x3)
    e = m.run()
    assert e.code == ExitCode.HLT, e
    v = m.cpus[0]
    r = {x: v.vm_get_register(x) for x in (VmReg.R8, VmReg.R9, VmReg.R10, VmReg.R11, VmReg.R12,
                                           VmReg.R13, VmReg.R14)}
    assert v.stats()["jit_blocks"] > 0
    assert r[VmReg.R12] == r[VmReg.R14], {k.name: hex(x) for k, x in r.items()}
    assert r[VmReg.R8] == 0x2222 and r[VmReg.R9] == 0
    assert r[VmReg.R11] != 0x3333             # after the fault: not executed
    assert r[VmReg.R13] & 0x41 == 0x41        # CF and ZF of the ADD
    assert v.vm_get_register(VmReg.CR2) == 0x40000000


def test_divide_error_from_native_code_is_delivered_at_the_div():
    m = sys_machine("""
        GATE 0, de
        mov ecx, 40
    l:  mov eax, 100
        xor edx, edx
        mov rbx, rcx
        sub rbx, 1                   ; 0 on the last round
    d:  div rbx
        dec ecx
        jnz l
        hlt
    de: mov r12, [rsp]
        lea r13, [rel d]
        mov r14, rcx
        hlt
    """)
    m.cpus[0].jit_config(0)
    assert m.run().code == ExitCode.HLT
    v = m.cpus[0]
    assert v.vm_get_register(VmReg.R12) == v.vm_get_register(VmReg.R13)
    assert v.vm_get_register(VmReg.R14) == 1


def test_code_that_rewrites_its_own_block():
    """Each round patches the immediate of an instruction of the running
    (translated) block: every round must see the previous round's store."""
    regs, _, stats = run_program("""
        mov ecx, 100
        xor ebx, ebx
    l:
    patch:
        mov eax, 0                   ; B8 imm32: the immediate is patch + 1
        add ebx, eax
        inc dword [rel patch + 1]
        dec ecx
        jnz l
        hlt""", jit=0)
    assert regs["RBX"] == sum(range(100))
    assert stats["jit_blocks"] > 0


def test_an_instruction_that_crosses_a_page_sees_writes_to_the_second_page():
    page_end = CODE + 0x1000
    asm = f"""
        mov ecx, 64
        xor ebx, ebx
    l:  call {page_end - 2:#x}       ; mov eax, imm32 straddling the page boundary
        add ebx, eax
        inc byte [{page_end + 1:#x}]    ; byte 2 of the immediate, on the next page
        dec ecx
        jnz l
        hlt
        times {page_end - 2 - CODE} - ($ - $$) db 0xcc
        mov eax, 0x10000             ; B8 00 00 | 01 00 (imm32 = 0x00010000)
        ret
    """
    regs, _, stats = run_program(asm, jit=0)
    # round k reads the immediate (1 + k) << 16
    assert regs["RBX"] == sum((1 + k) << 16 for k in range(64))
    assert stats["jit_blocks"] > 0


def test_code_written_by_another_vcpu_is_seen_by_a_spinning_one():
    """vCPU 0 spins in translated code that reads an immediate; vCPU 1
    patches it.  vCPU 0 must leave the loop: it sees the new code within
    its instruction budget, with no exit or interrupt to help it."""
    m = Machine(2, options={"jit_threshold": 0})
    code = assemble("""
        mov byte [0x50000], 1        ; "spinning"
    spin:
    patch:
        mov eax, 0
        test eax, eax
        jz spin
        mov dx, 0xf4
        out dx, al
        hlt
        times 0x100 - ($ - $$) db 0xcc
    writer:                          ; vCPU 1
        cmp byte [0x50000], 1
        jne writer
        mov ecx, 30000000
    w:  dec ecx                      ; let vCPU 0 translate and chain its loop first
        jnz w
        mov dword [rel patch + 1], 7
        hlt
    """, 64, CODE)
    m.write(CODE, code)
    m.long_mode(0)
    m.long_mode(1, rip=CODE + 0x100, rsp=0x70000, paging=False)
    writer = threading.Thread(target=lambda: m.run(1), daemon=True)
    writer.start()
    spinner_exit = []
    spinner = threading.Thread(target=lambda: spinner_exit.append(m.run(0)), daemon=True)
    spinner.start()
    spinner.join(20)
    assert spinner_exit, "vCPU 0 never saw the patched code"
    assert spinner_exit[0].port == 0xF4
    assert m.cpus[0].vm_get_register(VmReg.RAX) == 7
    assert m.cpus[0].stats()["jit_blocks"] > 0
    assert m.cpus[0].stats()["instructions"] > 1000     # it did spin before the patch


def test_mmio_from_a_hot_native_loop_reaches_the_device_in_order():
    m = Machine(1, options={"jit_threshold": 0})
    m.write(CODE, assemble("""
        mov rbx, 0xd0000000          ; beyond RAM: MMIO
        xor ecx, ecx
    l:  mov [rbx + 8], ecx
        mov eax, [rbx]
        add r8, rax
        inc ecx
        cmp ecx, 50
        jne l
        hlt""", 64, CODE))
    m.long_mode()
    reads = iter(range(1000, 2000))
    m.mmio = lambda cpu, gpa, size, is_write, value: (m.mmio_log.append((gpa, is_write, value)),
                                                      0 if is_write else next(reads))[1]
    assert m.run().code == ExitCode.HLT
    writes = [v for gpa, w, v in m.mmio_log if w]
    assert writes == list(range(50))
    assert [gpa for gpa, w, _ in m.mmio_log if not w] == [0xD0000000] * 50
    assert m.cpus[0].vm_get_register(VmReg.R8) == sum(range(1000, 1050))
    assert m.cpus[0].stats()["jit_blocks"] > 0


def test_an_interrupt_reaches_a_vcpu_spinning_in_native_code():
    """A self-chained native loop never returns to the dispatcher on its
    own; its instruction budget must, so an MSI sent from another thread
    is delivered."""
    m = Machine(1, options={"jit_threshold": 0})
    code = assemble("""
        mov rax, 0xfee000f0          ; LAPIC SVR: enable
        mov dword [rax], 0x1ff
        sti
        mov dx, 0x81
        out dx, al                   ; "spinning now"
    spin:
        inc r8
        jmp spin
    handler:
        mov r15d, 0x40
        mov dx, 0x80
        out dx, al
        cli
        hlt
    """, 64, CODE)
    m.write(CODE, code)
    m.long_mode()
    setup_idt(m, 0, {0x40: CODE + code.index(bytes.fromhex("41bf40000000"))})
    v = m.cpus[0]
    sent = []
    done = threading.Event()

    def vcpu():
        while True:
            e = v.vm_run()
            if e.code == ExitCode.INOUT:
                v.vm_complete_inout(e)
                if e.port == 0x81:
                    threading.Timer(0.2, lambda: (sent.append(1), m.vm.vm_lapic_msi(0xFEE00000, 0x40))).start()
                if e.port == 0x80:
                    done.set()
                    return
            elif e.code != ExitCode.BOGUS:
                return

    threading.Thread(target=vcpu, daemon=True).start()
    assert done.wait(15), "the MSI never reached the spinning vCPU"
    assert sent and v.vm_get_register(VmReg.R15) == 0x40
    assert v.vm_get_register(VmReg.R8) > 1000       # it did spin
    assert v.stats()["jit_blocks"] > 0


def test_chained_code_does_not_survive_a_switch_of_address_space():
    """Linear 0x40000000 maps a different code page in each of two page
    table trees; the loop calls it and jumps to it (chained, direct and
    through the jump cache) while switching CR3 every round.  Every call
    must run the code of the current tree."""
    m = sys_machine("""
        mov ecx, 100
        mov r10, 0x1000              ; harness PML4 (tree A)
        mov r11, 0x190000            ; tree B
    l:  call 0x40000000              ; A: eax = 1, B: eax = 2
        add r8, rax
        xchg r10, r11
        mov cr3, r10                 ; the other tree, from here on
        lea rdx, [rel back]
        jmp 0x40000010               ; A: r9 += 10, B: r9 += 20; then jmp rdx
    back:
        dec ecx
        jnz l
        hlt
    """)
    m.cpus[0].jit_config(0)
    setup_4k_region(m)
    # tree B: a copy of the harness tree whose PDPT[1] leads to its own PD/PT
    pml4_b, pdpt_b, pd_b, pt_b = 0x190000, 0x191000, 0x192000, 0x193000
    m.write(pml4_b, m.read(0x1000, 4096))
    m.w64(pml4_b, pdpt_b | 3)
    m.write(pdpt_b, m.read(0x2000, 4096))
    m.w64(pdpt_b + 8, pd_b | 3)
    m.w64(pd_b, pt_b | 3)
    code_a, code_b = 0x194000, 0x195000
    map_4k(m, 0, code_a, 0x3)
    m.w64(pt_b, code_b | 0x3)
    for phys, n in ((code_a, 1), (code_b, 2)):
        m.write(phys, assemble(f"""
            mov eax, {n}
            ret
            times 0x10 - ($ - $$) db 0xcc
            add r9, {10 * n}
            jmp rdx""", 64, 0x40000000))
    e = m.run()
    assert e.code == ExitCode.HLT, e
    v = m.cpus[0]
    assert v.vm_get_register(VmReg.R8) == 50 * 1 + 50 * 2
    assert v.vm_get_register(VmReg.R9) == 50 * 10 + 50 * 20
    assert v.stats()["jit_blocks"] > 0


def test_the_jit_can_be_turned_off():
    _, _, stats = run_program("mov ecx, 1000\nl: dec ecx\njnz l\nhlt", jit=-1)
    assert stats["jit_blocks"] == 0 and stats["instructions"] == 2002
    _, _, stats = run_program("mov ecx, 1000\nl: dec ecx\njnz l\nhlt", jit=5)
    assert stats["jit_blocks"] > 0 and stats["instructions"] == 2002


# ---- 32-bit code: protected mode (paging off and on) and compatibility mode ----------------
# Native code outside 64-bit mode assumes flat 32-bit segments (jit_flat32 in cpu.h); these run
# the same programs natively and interpreted in each mode, then the cases the assumption must
# not hide: a segment that is not flat, a segment load in the middle of a hot loop, the 4 GiB
# wrap of a flat segment, a #PF in the middle of a block, and code that rewrites itself.
GDT32 = 0x40000
IDT32 = 0x41000
PD32 = 0x1000        # 32-bit paging: page directory (4 MiB pages), and one page table for 4K pages
PT32 = 0x2000
GDT32_ENTRIES = [
    0,
    0x00CF9B000000FFFF,              # 0x08: flat 32-bit code
    0x00CF93000000FFFF,              # 0x10: flat data
    0x00CF93030000FFFF,              # 0x18: data, base 0x30000, 4 GiB limit
    0x004093020000FFFF,              # 0x20: data, base 0x20000, limit 0xFFFF (byte granular)
]
PRELUDE32 = f"""
bits 32
%macro GATE 2                        ; 32-bit interrupt gate, vector %1 -> %2
        mov edi, {IDT32} + %1 * 8
        mov eax, %2
        mov word [edi], ax
        mov word [edi + 2], 0x08
        mov word [edi + 4], 0x8e00
        shr eax, 16
        mov word [edi + 6], ax
%endmacro
"""


def machine32(asm: str, mode: str, jit: int, ram_size: int = 8 << 20) -> Machine:
    """32-bit code at CODE with a flat GDT (GDT32_ENTRIES), the IDT at IDT32 and ESP = 0x80000;
    mode: "flat" (paging off), "paged" (32-bit paging, 4 MiB pages, linear 4M..8M in 4K pages
    through PT32) or "compat" (long mode, a 32-bit code segment)."""
    m = Machine(1, ram_size=ram_size, options={"jit_threshold": jit})
    m.write(CODE, assemble(PRELUDE32 + asm, 32, CODE))
    m.write(GDT32, b"".join(x.to_bytes(8, "little") for x in GDT32_ENTRIES))
    v = m.cpus[0]
    if mode == "compat":
        m.long_mode()
        v.vm_set_desc(VmReg.CS, SegDesc(0, 0xFFFFFFFF, CODE32, 0x08))
    else:
        m.protected_mode()
        if mode == "paged":
            for k in range(1024):
                m.w64(PD32 + 8 * (k // 2), 0)
            for k in range(256):
                struct.pack_into("<I", m.ram, PD32 + 4 * k, (k << 22) | 0x83)
            struct.pack_into("<I", m.ram, PD32 + 4, PT32 | 3)
            for k in range(1024):
                struct.pack_into("<I", m.ram, PT32 + 4 * k, (0x400000 + (k << 12)) | 3)
            v.vm_set_register(VmReg.CR4, 0x10)
            v.vm_set_register(VmReg.CR3, PD32)
            v.vm_set_register(VmReg.CR0, 0x80000011)
    v.vm_set_desc(VmReg.GDTR, SegDesc(GDT32, 8 * len(GDT32_ENTRIES) - 1, 0))
    v.vm_set_desc(VmReg.IDTR, SegDesc(IDT32, 256 * 8 - 1, 0))
    return m


def run32(asm: str, mode: str, jit: int) -> tuple[dict, bytes, dict]:
    m = machine32(asm, mode, jit)
    e = m.run()
    assert e.code == ExitCode.HLT, e
    v = m.cpus[0]
    regs = {r.name: v.vm_get_register(r) & 0xFFFFFFFF for r in GPRS[:8] + (VmReg.RFLAGS,)}
    return regs, m.read(DATA, 4096), v.stats()


PROGRAMS32 = {
    "alu and flags": """
        mov esi, 0x12345678
        mov edi, 0x0fedcba9
        mov ecx, 300
    l:  add esi, edi
        adc edi, esi
        sbb eax, esi
        rcl edx, 3
        setc bl
        cmovo ebp, esi
        bt edi, 7
        shld ebp, esi, 5
        imul edx, esi, -77
        neg ebp
        not ax
        xor ah, bl
        add ch, 3
        xadd ebp, esi
        bswap edx
        movsx edx, ah
        movzx ebp, di
        inc ebp                      ; 45: INC r32 (a REX prefix in 64-bit mode)
        dec si                       ; 66 4E
        inc bx
        popcnt eax, esi
        lzcnt edx, edi
        cwde
        cdq
        dec ecx
        jnz l
        hlt""",
    "mul and div": """
        mov ecx, 200
        mov ebx, 0x9e3779b9
        xor ebp, ebp
    l:  mov eax, ebx
        mul ecx
        add ebp, edx
        mov eax, ebx
        xor edx, edx
        div ecx
        add ebp, eax
        add ebp, edx
        mov eax, ebx
        cdq
        mov esi, ecx
        idiv esi
        add ebp, eax
        mov ax, bx
        xor dx, dx
        div cx
        add bp, dx
        imul ebx, ebx, 13
        dec ecx
        jnz l
        hlt""",
    "memory and segments": f"""
        mov ax, 0x18                 ; FS: base 0x30000 (not flat: its accesses are interpreted)
        mov fs, ax
        mov ebx, {DATA}
        mov ebp, {DATA + 0x800}
        mov ecx, 100
    l:  mov eax, [ebx + ecx*4]
        add [ebx + ecx*4 + 4], eax
        add dword [ebx + ecx*4 + 0x400], ecx
        adc byte [ebx + ecx], 0x11
        xor word [fs:ecx*2], cx
        mov edx, [fs:8]
        sub [ebx + 0x200], edx
        add [es:ebx + 0x204], ecx    ; ES: interpreted
        mov [ebp + ecx], cl          ; SS through EBP
        add esi, [ss:ebx + 0x204]
        mov [{DATA + 0x300}], esi    ; moffs-free absolute disp32
        lock xadd [ebx + 0x208], edi
        cmpxchg [ebx + 0x210], edx
        inc dword [ebx + 0x218]
        shl dword [ebx + 0x220], 1
        setnz byte [ebx + ecx + 0x300]
        mov [ebx + 0x228], ah
        movsx esi, word [ebx + ecx*2]
        movzx edi, byte [ebx + ecx]
        a16 mov [bx + si], ax        ; 16-bit addressing: interpreted
        mov [ebx + ecx*4 + 0x600], esi
        mov [0x{DATA + 0x340:x}], ds
        dec ecx
        jnz l
        hlt""",
    "calls, returns, stack, indirect": f"""
        mov ecx, 150
        mov ebx, f2
        mov dword [{DATA + 0x100}], f1
    l:  call f1
        call ebx
        call [{DATA + 0x100}]
        push ecx
        push 0x1234
        push byte -5
        pop eax
        pop edx
        pop ecx
        add esi, eax
        pushfd
        add edi, edx
        popfd
        mov eax, t
        jmp eax
    t:  dec ecx
        jnz l
        mov [{DATA}], esp
        hlt
    f1: add ebp, ecx
        ret
    f2: sub esi, ecx
        cmp esi, ebp
        ret 0""",
    "flags across memory and blocks": f"""
        mov ebx, {DATA}
        mov ecx, 250
        mov eax, -1
    l:  add eax, ecx
        mov edx, [ebx + 16]
        mov [ebx + 24], edx
        jmp m
    m:  adc dword [ebx], 0
        seto dl
        add [ebx + 8], edx
        dec ecx
        jnz l
        hlt""",
}


@pytest.mark.parametrize("mode", ["flat", "paged", "compat"])
@pytest.mark.parametrize("name", list(PROGRAMS32))
def test_native_32bit_code_computes_what_the_interpreter_does(name, mode):
    assert_native_matches_interpreter(lambda jit: run32(PROGRAMS32[name], mode, jit=jit))


def test_32bit_native_code_is_not_entered_under_a_segment_that_is_not_flat():
    """DS limited to 64 KiB (selector 0x20, base 0x20000): a hot loop
    stores below the limit, then one store beyond it must raise #GP at its
    instruction, as the interpreter does -- native code, which checks no
    limits, must not run while DS is not flat.  ES (flat) puts the page
    beyond the limit in the TLB first."""
    m = machine32(f"""
        GATE 13, gp
        mov ax, 0x20
        mov ds, ax
        mov ecx, 40
        mov ebx, 0xfff0
    l:  add eax, [es:{DATA + 0x10:#x}]   ; linear 0x30000 is DS offset 0x10000
    st: mov [ebx], eax               ; #GP when EBX = 0x10000
        dec ecx
        jnz l
        add ebx, 0x10
        mov ecx, 1
        jmp l
    gp: mov esi, [esp + 4]           ; EIP of the faulting instruction
        mov edi, st
        hlt
    """, "flat", jit=0)
    assert m.run().code == ExitCode.HLT
    v = m.cpus[0]
    assert v.vm_get_register(VmReg.RSI) == v.vm_get_register(VmReg.RDI)
    assert v.vm_get_register(VmReg.RBX) == 0x10000


@pytest.mark.parametrize("load", ["mov ds, ax", "lds edx, [esi]"])
def test_a_segment_load_in_a_hot_native_loop_takes_effect_at_once(load):
    """Each round reloads DS, alternating a flat segment and one based at
    0x30000, then stores through it: every store must land at base +
    offset, the based ones too (native code assumes a flat DS).  MOV DS
    ends a block; LDS does not, and the store after it is in the same
    translated block."""
    m = machine32(f"""
        mov ecx, 60
        mov ebx, 0x1000
    l:  mov ax, 0x18                 ; odd rounds: DS based at 0x30000
        mov esi, 0x2000              ; far pointers (the same in both segments' views)
        test cl, 1
        jnz load
        mov ax, 0x10                 ; even rounds: flat
        mov esi, 0x2008
    load:
        {load}                       ; the interpreter runs it; native code must see its effect
        mov [ebx], ecx
        add ebx, 4
        dec ecx
        jnz l
        hlt
    """, "flat", jit=0)
    for base in (0, 0x30000):
        m.write(base + 0x2000, struct.pack("<IHxxIH", 0, 0x18, 0, 0x10))
    assert m.run().code == ExitCode.HLT
    flat = struct.unpack("<60I", m.read(0x1000, 240))
    based = struct.unpack("<60I", m.read(0x31000, 240))
    for k in range(60):
        ecx = 60 - k
        assert (based if ecx & 1 else flat)[k] == ecx, k
        assert (flat if ecx & 1 else based)[k] == 0, k
    assert m.cpus[0].stats()["jit_blocks"] > 0


@pytest.mark.parametrize("insn, vec", [("mov eax, [ebx]", 13), ("add [ebx], eax", 13), ("mov eax, [ebp]", 12)])
def test_the_4gib_wrap_of_a_flat_segment_faults_in_native_code(insn, vec):
    """A flat 4 GiB segment still ends: a dword at offset 0xFFFFFFFE runs
    past DS's limit (#GP) or SS's (#SS, through EBP).  Native code checks no
    limit; its TLB probe sees the access span two pages and hands it to the
    interpreter, which raises the fault at that instruction.  The last 4 MiB
    of the address space are mapped, and the loop warms the TLB with
    accesses to the top page, so only the probe's page check stands between
    the access and host memory past the guest page."""
    m = machine32(f"""
        GATE {vec}, handler
        mov ecx, 40
        mov ebx, 0xfffffff0
        mov ebp, ebx
        xor esi, esi
    l:  add edx, ecx
    acc: {insn}
        dec ecx
        jnz l
        test esi, esi
        jnz nofault                  ; the second pass ended without the fault
        mov ebx, 0xfffffffe
        mov ebp, ebx
        mov ecx, 1
        inc esi
        jmp l
    nofault:
        hlt
    handler:
        mov esi, [esp + 4]           ; EIP after the error code
        mov edi, acc
        hlt
    """, "paged", jit=0)
    struct.pack_into("<I", m.ram, PD32 + 4 * 1023, 0x83)        # linear 0xFFC00000.. -> physical 0
    e = m.run()
    assert e.code == ExitCode.HLT, e
    v = m.cpus[0]
    assert v.vm_get_register(VmReg.RSI) == v.vm_get_register(VmReg.RDI)
    assert v.stats()["jit_blocks"] > 0


def test_a_fault_in_the_middle_of_a_native_32bit_block_is_precise():
    """32-bit paging: #PF on the fourth instruction of a translated block:
    the handler sees that instruction's EIP, the first three committed, the
    rest not, and the flags of the third (an ADD with CF and ZF set)."""
    m = machine32(f"""
        GATE 14, pf
        mov ebx, 0x400000            ; linear 4M: a 4K page of PT32
        mov ecx, 20
    warm:
        call body
        dec ecx
        jnz warm
        mov dword [{PT32}], 0        ; unmap it
        invlpg [0x400000]
        xor esi, esi
        mov edi, 5
        xor ebp, ebp
        call body
        hlt
    body:
        mov esi, 0x2222
        mov edi, -1
        add edi, 1                   ; CF=1 ZF=1
    fault:
        mov edx, [ebx]               ; #PF here
        mov ebp, 0x3333
        ret
    pf: mov eax, [esp + 4]           ; EIP of the faulting instruction
        mov ecx, [esp + 12]          ; EFLAGS
        mov edx, fault
        hlt
    """, "paged", jit=0)
    assert m.run().code == ExitCode.HLT
    v = m.cpus[0]
    r = {x: v.vm_get_register(x) for x in (VmReg.RAX, VmReg.RCX, VmReg.RDX, VmReg.RSI, VmReg.RDI, VmReg.RBP)}
    assert v.stats()["jit_blocks"] > 0
    assert r[VmReg.RAX] == r[VmReg.RDX], {k.name: hex(x) for k, x in r.items()}
    assert r[VmReg.RSI] == 0x2222 and r[VmReg.RDI] == 0
    assert r[VmReg.RBP] != 0x3333
    assert r[VmReg.RCX] & 0x41 == 0x41
    assert v.vm_get_register(VmReg.CR2) == 0x400000


@pytest.mark.parametrize("mode", ["flat", "compat"])
def test_32bit_code_that_rewrites_its_own_block(mode):
    regs, _, stats = run32("""
        mov ecx, 100
        xor ebx, ebx
    l:
    patch:
        mov eax, 0                   ; B8 imm32: the immediate is patch + 1
        add ebx, eax
        inc dword [patch + 1]
        dec ecx
        jnz l
        hlt""", mode, jit=0)
    assert regs["RBX"] == sum(range(100))
    assert stats["jit_blocks"] > 0


# ---- 16-bit code: real mode ------------------------------------------------------------------
# Segments are not flat here: native code adds the segment's base at run time and checks each
# access against the 64 KiB limit (jit_seg16 in cpu.h says every segment it uses has one).

def run16(asm: str, jit: int) -> tuple[dict, bytes, dict]:
    m = Machine(1, ram_size=2 << 20, options={"jit_threshold": jit})
    m.write(0x8000, assemble("bits 16\n" + asm, 16, 0x8000))
    m.real_mode()
    e = m.run()
    assert e.code == ExitCode.HLT, e
    v = m.cpus[0]
    regs = {r.name: v.vm_get_register(r) for r in GPRS[:8] + (VmReg.RFLAGS,)}
    return regs, m.read(0x20000, 0x20000), v.stats()


PROGRAMS16 = {
    "alu, memory through DS, ES and SS, stack, calls": """
        mov ax, 0x2000
        mov ds, ax
        mov ax, 0x3000
        mov es, ax
        mov ax, 0x1000
        mov ss, ax
        mov sp, 0xfff0
        mov si, 0x1234
        mov di, 0x0fed
        mov cx, 300
        mov bx, 0x100
        mov bp, 0x40
    l:  add si, di
        adc di, si
        inc dx
        dec bp
        xor ah, bl
        mov [bx + si], di
        add [bx + 8], si
        add word [bp + di], 3        ; SS
        sub [es:bx + di], cx
        mov [es:0xfffe], cx          ; the last word of the segment
        movzx eax, byte [bx + si + 1]
        imul ax, si, 7
        shl dx, cl
        push cx
        push 0x1234
        pop ax
        pop cx
        call f
        pushf
        popf
        lea ax, [bx + si + 7]
        dec cx
        jnz l
        mov ax, sp
        mov [0x10], ax
        hlt
    f:  add [bx + 16], cx
        ret""",
    "mul, div, 32-bit operands and addressing": """
        mov ax, 0x2000
        mov ds, ax
        mov cx, 200
        mov ebx, 0x9e3779b9
    l:  mov ax, bx
        mul cx
        add bp, dx
        mov ax, bx
        xor dx, dx
        div cx
        add bp, ax
        add ebx, ecx
        rol ebx, 3
        mov esi, ecx
        and esi, 0xff
        mov [esi*4 + 0x100], ebx     ; 32-bit addressing (67 prefix)
        add edi, [esi*2 + 0x100]
        dec cx
        jnz l
        hlt""",
}


@pytest.mark.parametrize("name", list(PROGRAMS16))
def test_native_16bit_code_computes_what_the_interpreter_does(name):
    assert_native_matches_interpreter(lambda jit: run16(PROGRAMS16[name], jit=jit))


@pytest.mark.parametrize("insn, vec", [("mov ax, [bx]", 13), ("add [bx], ax", 13), ("mov ax, [bp]", 12)])
def test_the_64kib_limit_of_a_real_mode_segment_faults_in_native_code(insn, vec):
    """A word at offset 0xFFFF runs past the 64 KiB limit: #GP through DS,
    #SS through SS (BP), at that instruction's IP, after the loop ran
    natively on the last whole word of the segment.  The segments' base is
    not page-aligned, so the word is within one page: only the limit check
    stands between it and the next segment's bytes."""
    m = Machine(1, ram_size=2 << 20, options={"jit_threshold": 0})
    code = assemble(f"""bits 16
        mov ax, 0x1008               ; base 0x10080
        mov ds, ax
        mov ss, ax
        mov sp, 0x8000
        xor si, si
        mov cx, 40
        mov bx, 0xfffe
        mov bp, bx
    l:  add dx, cx
    acc: {insn}
        dec cx
        jnz l
        test si, si
        jnz nofault                  ; the second pass ended without the fault
        mov bx, 0xffff
        mov bp, bx
        mov cx, 1
        inc si
        jmp l
    nofault:
        hlt
    handler:
        mov bp, sp
        mov dx, [bp]                 ; the IP the fault pushed
        mov di, acc
        hlt
    """, 16, 0x8000)
    m.write(0x8000, code)
    handler = 0x8000 + code.index(bytes.fromhex("89e58b5600"))
    m.write(vec * 4, struct.pack("<HH", handler & 0xFFFF, 0))     # IVT
    m.real_mode()
    v = m.cpus[0]
    e = m.run()
    assert e.code == ExitCode.HLT, e
    assert v.stats()["jit_blocks"] > 0
    assert v.vm_get_register(VmReg.RDI) & 0xFFFF == v.vm_get_register(VmReg.RDX) & 0xFFFF != 0


def test_16bit_native_code_is_not_entered_under_a_segment_limit_below_64kib():
    """Real mode keeps a segment's cached limit: DS allows 32 KiB here.  A
    word at 0x8000 must raise #GP, as the interpreter does, although native
    code (which checks against 64 KiB) ran the loop before, and ES, the
    same memory with a 64 KiB limit, put the page in the TLB."""
    m = Machine(1, ram_size=2 << 20, options={"jit_threshold": 0})
    code = assemble("""bits 16
        mov ax, 0x2000
        mov ss, ax
        mov sp, 0x100
        mov ax, 0x1000               ; ES: DS's base, a 64 KiB limit
        mov es, ax
        xor si, si
        mov cx, 40
        mov bx, 0x7ffe
    l:  add dx, [es:0x8010]
    acc: mov ax, [bx]
        dec cx
        jnz l
        test si, si
        jnz nofault
        mov bx, 0x8000
        mov cx, 1
        inc si
        jmp l
    nofault:
        hlt
    handler:
        mov bp, sp
        mov dx, [bp]
        mov di, acc
        hlt
    """, 16, 0x8000)
    m.write(0x8000, code)
    handler = 0x8000 + code.index(bytes.fromhex("89e58b5600"))
    m.write(13 * 4, struct.pack("<HH", handler & 0xFFFF, 0))
    m.real_mode()
    v = m.cpus[0]
    v.vm_set_desc(VmReg.DS, SegDesc(0x10000, 0x7FFF, 0x93, 0x1000))
    e = m.run()
    assert e.code == ExitCode.HLT, e
    assert v.vm_get_register(VmReg.RDI) & 0xFFFF == v.vm_get_register(VmReg.RDX) & 0xFFFF != 0
