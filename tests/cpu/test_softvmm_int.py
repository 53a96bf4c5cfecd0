"""softvmm general-purpose instructions, directed: REP string faults part-way,
CMPXCHG16B, BT memory bit offsets, ENTER nesting, the BMI1/BMI2/ADX/POPCNT/
LZCNT/TZCNT/MOVBE/CRC32 extensions and their CPUID bits, legacy-mode BCD,
BOUND, ARPL, INTO, and the #UD encodings.  (Random coverage against the
native CPU: tests/kvm/test_difftest.py, `python -m bhive.difftest --group int`.)"""

from __future__ import annotations

import struct

import pytest

from bhive.accel.base import ExitCode, SegDesc, VmReg
from bhive.accel.softvmm.harness import Machine
from bhive.guestbuild import assemble

CODE, STUBS, IDT, GDT, DATA = 0x10000, 0x18000, 0x20000, 0x40000, 0x30000
PT = 0x1000                     # harness page tables: PD for 0..1G at PT + 0x2000
ERRCODE = {8, 10, 11, 12, 13, 14, 17}
R = VmReg


def _stubs(bits: int) -> tuple[bytes, list[int]]:
    """One stub per vector 0..31: r15 = vector, r14 = error code (or -1),
    r13 = faulting RIP; then HLT.  32-bit: edi/esi/ebp instead."""
    if bits == 64:
        vec, err, rip, pop = "r15", "r14", "r13", "pop r14"
    else:
        vec, err, rip, pop = "edi", "esi", "ebp", "pop esi"
    lines = [f"bits {bits}"]
    for v in range(32):
        lines += [f"s{v}:", f"mov {vec}, {v}", f"mov {err}, -1"]
        if v in ERRCODE:
            lines.append(pop)
        lines += [f"mov {rip}, [{'rsp' if bits == 64 else 'esp'}]", "cli", "hlt", "align 32"]
    code = assemble("\n".join(lines), bits, STUBS)
    return code, [STUBS + 32 * v for v in range(32)]


def run64(asm: str, data: bytes = b"", expect=ExitCode.HLT) -> Machine:
    m = Machine(1)
    m.write(CODE, assemble(asm, 64, CODE))
    if data:
        m.write(DATA, data)
    code, addrs = _stubs(64)
    m.write(STUBS, code)
    for v, a in enumerate(addrs):
        m.write(IDT + 16 * v, struct.pack("<IIII", (a & 0xFFFF) | (0x08 << 16), 0x8E00 | (a & 0xFFFF0000), 0, 0))
    m.write(GDT, struct.pack("<QQQ", 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF))
    m.long_mode()
    v = m.cpus[0]
    v.vm_set_desc(R.IDTR, SegDesc(IDT, 256 * 16 - 1, 0))
    v.vm_set_desc(R.GDTR, SegDesc(GDT, 23, 0))
    assert m.run().code == expect
    return m


def run32(asm: str) -> Machine:
    m = Machine(1)
    m.write(CODE, assemble("bits 32\n" + asm, 32, CODE))
    code, addrs = _stubs(32)
    m.write(STUBS, code)
    for v, a in enumerate(addrs):
        m.write(IDT + 8 * v, struct.pack("<II", (a & 0xFFFF) | (0x08 << 16), 0x8E00 | (a & 0xFFFF0000)))
    m.write(GDT, struct.pack("<3Q", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF))
    m.protected_mode()
    v = m.cpus[0]
    v.vm_set_desc(R.GDTR, SegDesc(GDT, 23, 0))
    v.vm_set_desc(R.IDTR, SegDesc(IDT, 256 * 8 - 1, 0))
    assert m.run().code == ExitCode.HLT
    return m


def g(m: Machine, r: VmReg) -> int:
    return m.cpus[0].vm_get_register(r)


def fault(m: Machine) -> tuple[int, int, int]:
    """(vector, error code or -1, faulting RIP); vector -1 if none was taken."""
    return g(m, R.R15), g(m, R.R14), g(m, R.R13)


NOFAULT = "mov r15, -1\n"


# ---------------------------------------------------------------- REP strings

def test_rep_string_faults_part_way_and_resume():
    """rep movsb (upwards) and rep stosd (downwards) run into a not-present
    2M page: #PF with RCX/RDI showing exactly the elements done; the handler
    maps the page and IRETQ restarts the REP, which finishes."""
    log = 0x50000
    m = Machine(1, ram_size=8 << 20)
    m.write(CODE, assemble(f"""
        mov rsp, 0x80000
        xor r14, r14
        mov rsi, {DATA}
        mov rdi, 0x400000 - 5               ; PD[2] (4M..6M) is not present
        mov rcx, 12
        rep movsb
        mov r12, rcx
        mov r13, rdi
        mov rbx, [0x400000 - 5]
        mov [{DATA + 0x80}], rbx
        mov ebx, [0x400000 + 3]
        mov [{DATA + 0x88}], ebx
        mov qword [{PT + 0x2000 + 8}], 0    ; unmap PD[1] (2M..4M)
        invlpg [0x3ffffc]
        std
        mov rdi, 0x400008
        mov eax, 0x11223344
        mov rcx, 6
        rep stosd                           ; 0x400008, 4, 0 then 0x3ffffc faults
        cld
        cli
        hlt
    pf: mov rax, r14
        shl rax, 5
        mov r9, cr2
        mov [{log} + rax], r9
        mov r9, [rsp]
        mov [{log} + rax + 8], r9
        mov [{log} + rax + 16], rcx
        mov [{log} + rax + 24], rdi
        inc r14
        mov rax, cr2                        ; map the 2M page at CR2 again
        shr rax, 21
        mov rbx, rax
        shl rbx, 21
        or rbx, 0x83
        mov [{PT + 0x2000} + rax*8], rbx
        mov eax, 0x11223344
        add rsp, 8
        iretq
    """, 64, CODE))
    m.write(DATA, bytes(range(1, 13)))
    m.long_mode()
    m.w64(PT + 0x2000 + 8 * 2, 0)
    code = m.read(CODE, 0x200)
    pf = CODE + code.index(bytes.fromhex("4c89f0"))        # mov rax, r14
    m.write(IDT + 16 * 14, struct.pack("<IIII", (pf & 0xFFFF) | (0x08 << 16), 0x8E00 | (pf & 0xFFFF0000), 0, 0))
    m.write(GDT, struct.pack("<QQQ", 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF))
    v = m.cpus[0]
    v.vm_set_desc(R.IDTR, SegDesc(IDT, 256 * 16 - 1, 0))
    v.vm_set_desc(R.GDTR, SegDesc(GDT, 23, 0))
    assert m.run().code == ExitCode.HLT
    assert g(m, R.R14) == 2                                     # two faults, each resumed
    # (CR2, error code = write|not present, RCX left, RDI) at each fault
    assert struct.unpack("<4Q", m.read(log, 32)) == (0x400000, 0b10, 7, 0x400000)
    assert struct.unpack("<4Q", m.read(log + 32, 32)) == (0x3FFFFC, 0b10, 3, 0x3FFFFC)
    assert m.read(DATA + 0x80, 12) == bytes(range(1, 13))
    assert g(m, R.R12) == 0 and g(m, R.R13) == 0x400000 + 7
    assert g(m, R.RCX) == 0 and g(m, R.RDI) == 0x400008 - 24
    assert m.read(0x400008 - 20, 24) == struct.pack("<I", 0x11223344) * 6


def test_rep_cmps_scas_termination_and_a32_counters():
    m = run64(f"""
        {NOFAULT}
        mov rsi, {DATA}
        mov rdi, {DATA + 0x10}
        mov rcx, 8
        repe cmpsb                           ; stops after the first difference (index 3)
        mov r8, rcx
        setnz r9b
        mov rdi, {DATA}
        mov al, 4
        mov rcx, -1
        repne scasb                          ; finds 4 at index 3
        mov r10, rcx
        mov r11, rdi
        mov rcx, 0xdead00000002              ; a32: ECX counts, RCX upper half cleared
        mov rsi, 0xbeef00000000 + {DATA}
        mov rdi, 0xf00d00000000 + {DATA + 0x80}
        a32 rep movsw
        mov r12, rcx
        mov rbx, rsi
        mov rbp, rdi
        cli
        hlt
    """, bytes([1, 2, 3, 4, 5, 6, 7, 8]) + bytes(8) + bytes([1, 2, 3, 9, 5]))
    assert fault(m)[0] == 2**64 - 1
    assert g(m, R.R8) == 4 and g(m, R.R9) & 0xFF == 1
    assert g(m, R.R10) == 2**64 - 1 - 4 and g(m, R.R11) == DATA + 4
    assert g(m, R.R12) == 0 and g(m, R.RBX) == DATA + 4 and g(m, R.RBP) == DATA + 0x84
    assert m.read(DATA + 0x80, 4) == bytes([1, 2, 3, 4])


# ---------------------------------------------------------------- CMPXCHG8B/16B

def test_cmpxchg16b_success_failure_and_alignment_gp():
    m = run64(f"""
        {NOFAULT}
        mov rax, 1
        mov rdx, 2
        mov rbx, 0x1111
        mov rcx, 0x2222
        lock cmpxchg16b [{DATA}]             ; equal: stores RCX:RBX, ZF=1
        setz r8b
        mov rax, 5
        cmpxchg16b [{DATA}]                  ; differs: loads RDX:RAX, ZF=0
        setz r9b
        mov r10, rax
        mov r11, rdx
        mov eax, 7
        mov edx, 8
        mov ebx, 0xaaaa
        mov ecx, 0xbbbb
        cmpxchg8b [{DATA + 0x18}]            ; CMPXCHG8B needs no alignment
        setz r12b
        lock cmpxchg16b [{DATA + 8}]         ; misaligned: #GP(0)
        cli
        hlt
    """, struct.pack("<QQQQ", 1, 2, 0, 0x800000007))
    assert m.read(DATA, 16) == struct.pack("<QQ", 0x1111, 0x2222)
    assert g(m, R.R8) & 0xFF == 1 and g(m, R.R9) & 0xFF == 0
    assert (g(m, R.R10), g(m, R.R11)) == (0x1111, 0x2222)
    assert g(m, R.R12) & 0xFF == 1 and m.read(DATA + 0x18, 8) == struct.pack("<II", 0xAAAA, 0xBBBB)
    vec, err, rip = fault(m)
    assert (vec, err) == (13, 0)
    assert m.read(rip, 1) == b"\xf0"


# ---------------------------------------------------------------- BT family

def test_bt_register_offsets_address_beyond_the_operand():
    m = run64(f"""
        {NOFAULT}
        mov rbx, {DATA + 0x100}
        mov rax, -1
        bts qword [rbx], rax                 ; bit -1: byte DATA+0xFF bit 7 (qword at DATA+0xF8)
        mov eax, 75
        bts dword [rbx], eax                 ; dword at +8, bit 11
        mov ax, -17
        btr word [rbx + 4], ax               ; word at +4 -4 = +0, bit 15
        mov rax, 0x1000 * 8 + 3
        lock btc qword [rbx - 0x1000], rax   ; back at +0, bit 3
        setc r8b
        bt dword [rbx], 3                    ; immediate: masked to the operand
        setc r9b
        bt word [rbx + 8], 27                ; 27 & 15 = 11 in the word at +8
        setc r10b
        mov rax, 0x4000000000000000          ; a 64-bit offset far beyond 2^32 bytes
        bt qword [rbx], rax                  ; -> linear DATA+0x100 + 2^59: non-canonical, #GP
        cli
        hlt
    """, b"\0" * 0x100 + b"\x00\x80" + b"\0" * 14)
    assert m.read(DATA + 0xFF, 1) == b"\x80"
    assert m.read(DATA + 0x100, 2) == b"\x08\x00"          # bit 15 cleared, bit 3 set
    assert m.read(DATA + 0x108, 2) == b"\x00\x08"
    assert g(m, R.R8) & 0xFF == 0 and g(m, R.R9) & 0xFF == 1 and g(m, R.R10) & 0xFF == 1
    assert fault(m)[:2] == (13, 0)


# ---------------------------------------------------------------- ENTER / LEAVE

def test_enter_nesting_levels_and_leave():
    m = run64(f"""
        {NOFAULT}
        mov rsp, 0x80000
        mov rbp, 0x90000
        mov qword [0x90000 - 8], 0xaaaa
        mov qword [0x90000 - 16], 0xbbbb
        enter 0x20, 3
        mov r8, rsp
        mov r9, rbp
        lea rsi, [rsp + 0x20]                ; save the frame before the next ENTERs overwrite it
        mov rdi, {DATA}
        mov ecx, 4
        rep movsq
        leave
        mov r10, rsp
        mov r11, rbp
        enter 0, 0
        mov r12, rbp
        leave
        enter 8, 33                          ; level 33 mod 32 = 1
        mov rbx, rsp
        cli
        hlt
    """)
    # push rbp; copy [rbp-8], [rbp-16]; push the frame pointer; allocate 0x20
    frame = 0x80000 - 8
    assert g(m, R.R9) == frame and g(m, R.R8) == frame - 3 * 8 - 0x20
    assert struct.unpack("<4Q", m.read(DATA, 32)) == (frame, 0xBBBB, 0xAAAA, 0x90000)
    assert (g(m, R.R10), g(m, R.R11)) == (0x80000, 0x90000)
    assert g(m, R.R12) == frame
    assert g(m, R.RBX) == 0x80000 - 16 - 8 and m.r64(0x80000 - 16) == frame


def test_enter_32bit_nesting():
    m = run32("""
        mov edi, -1
        mov esp, 0x80000
        mov ebp, 0x90000
        mov dword [0x90000 - 4], 0x1234
        enter 4, 2
        mov ebx, esp
        mov ecx, ebp
        cli
        hlt
    """)
    frame = 0x80000 - 4
    assert g(m, R.RCX) == frame and g(m, R.RBX) == frame - 8 - 4
    assert struct.unpack("<3I", m.read(frame - 8, 12)) == (frame, 0x1234, 0x90000)


# ---------------------------------------------------------------- extensions

def cpuid(m_asm_leaf: int, sub: int = 0) -> tuple[int, int, int, int]:
    m = run64(f"""
        mov eax, {m_asm_leaf}
        mov ecx, {sub}
        cpuid
        cli
        hlt
    """)
    return g(m, R.RAX), g(m, R.RBX), g(m, R.RCX), g(m, R.RDX)


def test_cpuid_advertises_the_implemented_extensions():
    _, _, c1, _ = cpuid(1)
    assert c1 & (1 << 23) and c1 & (1 << 22)               # POPCNT, MOVBE
    assert not c1 & (1 << 30)                              # RDRAND: not implemented, not advertised
    _, b7, _, _ = cpuid(7)
    assert b7 & (1 << 3) and b7 & (1 << 8) and b7 & (1 << 19)   # BMI1 BMI2 ADX
    assert not b7 & (1 << 18)                              # RDSEED
    _, _, c81, _ = cpuid(0x80000001)
    assert c81 & 1 and c81 & (1 << 5)                      # LAHF/SAHF in 64-bit, LZCNT


def test_bmi_adx_popcnt_lzcnt_movbe_crc32_values():
    m = run64(f"""
        {NOFAULT}
        mov rax, 0xF0F0
        mov rcx, 0xFF00
        andn r8, rax, rcx                    ; ~rax & rcx = 0x0F00
        blsr r9, rcx                         ; 0xFE00
        blsmsk r10d, ecx                     ; 0x1FF
        blsi r11, rcx                        ; 0x100
        mov edx, 0x0804                      ; start 4, length 8
        bextr r12, rax, rdx                  ; (0xF0F0 >> 4) & 0xFF = 0x0F
        mov edx, 12
        bzhi r13, rax, rdx                   ; 0x0F0
        mov rdx, 0xFF
        mov rbx, 0x8000000080000001
        pdep rsi, rdx, rbx                   ; low 3 bits of 0xFF spread: 0x8000000080000001
        pext rdi, rbx, rbx                   ; 0b111
        mov [{DATA}], rsi
        mov [{DATA + 8}], rdi
        mov rdx, -1
        mov rax, 3
        mulx rsi, rdi, rax                   ; 3 * (2^64-1): hi 2, lo 2^64-3
        mov [{DATA + 0x10}], rsi
        mov [{DATA + 0x18}], rdi
        mov eax, 0x80000001
        mov cl, 33
        rorx esi, eax, 1                     ; 0xC0000000
        shlx edi, eax, ecx                   ; count 33 & 31 = 1 -> 2
        sarx ebx, eax, ecx                   ; 0xC0000000
        mov [{DATA + 0x20}], esi
        mov [{DATA + 0x24}], edi
        mov [{DATA + 0x28}], ebx
        popcnt rax, [{DATA}]                 ; 2
        mov [{DATA + 0x30}], rax
        mov eax, 1
        lzcnt ecx, eax                       ; 31
        tzcnt dx, [{DATA + 0x100}]           ; zero source: 16, CF=1
        setc bl
        mov [{DATA + 0x38}], ecx
        mov [{DATA + 0x3c}], dx
        mov [{DATA + 0x3e}], bl
        movbe eax, [{DATA + 0x40}]
        movbe [{DATA + 0x44}], eax
        mov [{DATA + 0x48}], eax
        xor ebx, ebx                         ; CF = OF = 0
        stc
        mov rax, -1
        mov rcx, 0
        adcx rcx, rax                        ; 0 + -1 + CF = 0, CF=1; OF untouched
        seto bl
        setc bh
        mov [{DATA + 0x50}], rcx
        mov [{DATA + 0x58}], bx
        mov eax, -1
        crc32 eax, byte [{DATA + 0x60}]
        crc32 eax, word [{DATA + 0x61}]
        crc32 eax, dword [{DATA + 0x63}]
        crc32 eax, word [{DATA + 0x67}]
        mov [{DATA + 0x70}], rax
        mov rbx, 0x0123456789abcdef
        mov [{DATA + 0x78}], rbx
        mov ecx, 0xffffffff
        crc32 rcx, qword [{DATA + 0x78}]
        mov esi, 0xffffffff
        crc32 esi, dword [{DATA + 0x78}]
        crc32 esi, dword [{DATA + 0x7c}]
        cli
        hlt
    """, b"\0" * 0x40 + bytes([1, 2, 3, 4]) + b"\0" * 0x1C + b"123456789" + b"\0" * 0x20)
    gr = lambda r: g(m, r)
    assert gr(R.R8) == 0x0F00 and gr(R.R9) == 0xFE00 and gr(R.R10) == 0x1FF and gr(R.R11) == 0x100
    assert gr(R.R12) == 0x0F and gr(R.R13) == 0x0F0
    q = lambda off: struct.unpack_from("<Q", m.read(DATA + off, 8))[0]
    d = lambda off: struct.unpack_from("<I", m.read(DATA + off, 4))[0]
    assert q(0) == 0x8000000080000001 and q(8) == 0b111
    assert q(0x10) == 2 and q(0x18) == 2**64 - 3
    assert d(0x20) == 0xC0000000 and d(0x24) == 2 and d(0x28) == 0xC0000000
    assert q(0x30) == 3
    assert d(0x38) == 31 and m.read(DATA + 0x3C, 3) == b"\x10\x00\x01"
    assert d(0x44) == 0x04030201 and d(0x48) == 0x01020304
    assert q(0x50) == 0 and m.read(DATA + 0x58, 2) == b"\x00\x01"
    # CRC-32C("123456789") = 0xE3069283 after the final inversion
    assert q(0x70) == 0xE3069283 ^ 0xFFFFFFFF
    assert g(m, R.RCX) == g(m, R.RSI) == _crc32c(struct.pack("<Q", 0x0123456789ABCDEF))


def _crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc


# ---------------------------------------------------------------- legacy modes

def test_legacy_bcd_bound_arpl():
    m = run32("""
        mov edi, -1
        mov al, 0x35
        sub al, 0x47
        das                                  ; 35 - 47 = -12 BCD: AL=0x88, CF=1
        setc ah
        mov [0x30000], ax
        mov ax, 0x0009
        add al, 5
        aaa                                  ; AX = 0x0104, CF=AF=1
        mov [0x30002], ax
        mov ax, 0x0102
        sub al, 5
        aas                                  ; AX = 0x0007, CF=1
        mov [0x30004], ax
        mov al, 79
        aam                                  ; AH=7 AL=9
        mov [0x30006], ax
        aad                                  ; back to 79
        mov [0x30008], ax
        mov al, 0x2c
        aam 16                               ; AAM imm8: AH=2 AL=0xC
        mov [0x3000a], ax
        mov ax, 0x0013
        mov bx, 0x0002
        arpl ax, bx                          ; RPL 3 >= 2: ZF=0, unchanged
        setz cl
        mov bx, 0x0010
        arpl bx, ax                          ; RPL 0 < 3: BX=0x13, ZF=1
        setz ch
        mov [0x3000c], cx
        mov [0x3000e], bx
        mov dword [0x30010], 10
        mov dword [0x30014], 20
        mov eax, 20
        bound eax, [0x30010]                 ; in range
        mov eax, 21
        bound eax, [0x30010]                 ; #BR (vector 5, a fault)
        cli
        hlt
    """)
    assert m.read(0x30000, 16) == bytes([0x88, 1, 0x04, 0x01, 0x07, 0x00, 9, 7, 79, 0, 0xC, 2,
                                         0, 1, 0x13, 0])
    assert g(m, R.RDI) == 5 and g(m, R.RSI) == 2**32 - 1 and g(m, R.RAX) == 21
    assert m.read(g(m, R.RBP), 1) == b"\x62"               # the BOUND faulted, not completed


def test_into_and_int3_in_32bit_mode():
    m = run32("""
        mov edi, -1
        xor eax, eax
        add al, 1                            ; OF=0 -> INTO does nothing
        into
        mov al, 0x7f
        inc al                               ; OF=1 -> #OF (vector 4, a trap)
        into
        mov ebx, 1
        cli
        hlt
    """)
    assert g(m, R.RDI) == 4 and g(m, R.RBX) != 1
    # #OF is a trap: the saved EIP points after INTO
    assert m.read(g(m, R.RBP) - 1, 1) == b"\xce"


@pytest.mark.parametrize("insn", [
    "ud2", "db 0x0f, 0xb9, 0x00", "db 0x0f, 0xff, 0xc0",       # UD2 / UD1 / UD0
    "db 0xce", "db 0x27", "db 0xd4, 0x0a", "db 0x62, 0xc0",   # INTO, DAA, AAM, BOUND: not in 64-bit mode
    "db 0x0f, 0xb8, 0xc0",                                     # JMPE (POPCNT without F3)
    "db 0xf0, 0x0f, 0xa3, 0x08", "db 0x0f, 0xba, 0xc0, 0x01",  # LOCK BT; 0F BA /0 (only /4-/7 exist)
    "db 0x0f, 0xc7, 0xc8",                                     # CMPXCHG8B with a register
    "db 0x66, 0xc4, 0xe2, 0x78, 0xf2, 0xc0",                   # 66 before VEX
    "db 0xc4, 0xe2, 0x7c, 0xf2, 0xc0",                         # ANDN with VEX.L = 1
    "db 0x0f, 0xc7, 0xf0",                                     # RDRAND: not advertised
])
def test_ud_encodings(insn):
    m = run64(f"""
        mov rax, {DATA}
        {insn}
        cli
        hlt
    """)
    vec, err, rip = fault(m)
    assert (vec, err, rip) == (6, 2**64 - 1, CODE + len(assemble(f"mov rax, {DATA}", 64, CODE)))


def test_nops_hints_fences():
    m = run64(f"""
        {NOFAULT}
        mov rax, 0x7000000000                ; unmapped: hints and NOP operands never fault
        nop dword [rax + rax*1 + 0]
        db 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00
        prefetcht0 [rax]
        prefetchnta [rax]
        prefetchw [rax]
        pause
        lfence
        mfence
        sfence
        clflush [{DATA}]
        xlatb
        mov ebx, 1
        cli
        hlt
    """)
    assert fault(m)[0] == 2**64 - 1 and g(m, R.RBX) == 1


def test_locked_rmw_are_atomic_across_vcpus():
    """Two vCPUs (threads over the same shared RAM) hammer one counter with
    LOCK INC, LOCK XADD and a LOCK CMPXCHG16B retry loop: no update is lost."""
    import threading
    n = 500000
    m = Machine(2)
    m.write(CODE, assemble(f"""
        mov r9, {n}
        mov r10d, 1
    l:  lock inc qword [{DATA}]
        lock xadd [{DATA + 8}], r10
        mov r10d, 1
        mov rax, [{DATA + 16}]
        mov rdx, [{DATA + 24}]
    r:  lea rbx, [rax + 1]
        lea rcx, [rdx + 1]
        lock cmpxchg16b [{DATA + 16}]        ; both halves +1, atomically
        jnz r
        dec r9
        jnz l
        cli
        hlt
    """, 64, CODE))
    m.long_mode(0)
    m.long_mode(1, rsp=0x70000, paging=False)
    t = threading.Thread(target=m.run, args=(1,))
    t.start()
    assert m.run(0).code == ExitCode.HLT
    t.join(60)
    assert not t.is_alive()
    assert struct.unpack("<4Q", m.read(DATA, 32)) == (2 * n,) * 4
