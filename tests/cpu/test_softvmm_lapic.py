"""softvmm local APIC, driven directly through the harness: register
semantics (SDM Vol 3A ch. 11), the timer in its three modes, priorities,
destinations, software disable and INIT reset."""

from __future__ import annotations

import struct
import threading
import time

import pytest

from bhive.accel.base import ExitCode, VmReg
from bhive.accel.softvmm.harness import Machine
from bhive.guestbuild import assemble

from test_softvmm_smp import setup_idt  # IDT at 0x20000 in both

CODE = 0x10000
IDT = 0x20000
LOG = 0x30000
BUS_HZ = 128 * 1024 * 1024        # APIC timer input clock (bhyve's VLAPIC_BUS_FREQ)

ID, TPR, EOI, PPR, LDR, DFR, SVR, ISR, TMR, IRR, ESR = (0x20, 0x80, 0xB0, 0xA0, 0xD0, 0xE0, 0xF0,
                                                        0x100, 0x180, 0x200, 0x280)
ICR_LO, ICR_HI, LVT_TIMER, LVT_LINT0, LVT_LINT1, LVT_ERR = 0x300, 0x310, 0x320, 0x350, 0x360, 0x370
TICR, TCCR, TDCR = 0x380, 0x390, 0x3E0


def irr_has(v, vec: int) -> bool:
    return bool(v.lapic_read(IRR + (vec >> 5) * 0x10) & (1 << (vec & 31)))


def guest(m: Machine, text: str, cpu: int = 0, handlers: dict[int, str] | None = None) -> bytes:
    """Assemble `text` at CODE (labels named in `handlers` become IDT gates)."""
    code = assemble(text, 64, CODE)
    m.write(CODE, code)
    m.long_mode(cpu)
    marks = {}
    for vec, label in (handlers or {}).items():
        # each handler starts with `mov r8d, <vec>` so we can find it
        marks[vec] = CODE + code.index(bytes.fromhex("41b8") + struct.pack("<I", vec))
    setup_idt(m, cpu, marks)
    return code


def run_to_port(m: Machine, cpu: int, port: int, limit: float = 10.0):
    v = m.cpus[cpu]
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        e = v.vm_run()
        if e.code == ExitCode.INOUT:
            v.vm_complete_inout(e)
            if e.port == port:
                return e
        elif e.code in (ExitCode.HLT, ExitCode.UNHANDLED, ExitCode.SUSPENDED):
            raise AssertionError(f"unexpected exit {e}")
    raise TimeoutError(f"no OUT {port:#x} within {limit}s")


# ------------------------------------------------------------------ registers

def test_power_up_values_and_cpuid():
    m = Machine(2)
    for k, v in enumerate(m.cpus):
        assert v.lapic_read(ID) == k << 24
        assert v.lapic_read(0x30) & 0xFF == 0x14
        assert v.lapic_read(SVR) == 0xFF and v.lapic_read(DFR) == 0xFFFFFFFF
        for off in (LVT_TIMER, 0x330, 0x340, LVT_LINT0, LVT_LINT1, LVT_ERR):
            assert v.lapic_read(off) == 0x10000
    _, _, ecx, edx = m.cpus[0].cpuid(1)
    assert ecx & (1 << 24), "TSC-deadline timer is implemented and advertised"
    assert not ecx & (1 << 21), "x2APIC is not implemented, so not advertised"
    assert edx & (1 << 9)


def test_svr_software_disable_drops_fixed_and_masks_lvts():
    m = Machine(1)
    v = m.cpus[0]
    m.vm.vm_lapic_msi(0xFEE00000, 0x40)
    assert not irr_has(v, 0x40), "fixed interrupt accepted by a software-disabled APIC"
    v.lapic_write(LVT_TIMER, 0x30)                 # cannot unmask while disabled
    assert v.lapic_read(LVT_TIMER) == 0x10030
    v.lapic_write(SVR, 0x1FF)
    m.vm.vm_lapic_msi(0xFEE00000, 0x40)
    assert irr_has(v, 0x40)
    v.lapic_write(LVT_TIMER, 0x30)
    v.lapic_write(LVT_LINT0, 0x700)
    assert v.lapic_read(LVT_TIMER) == 0x30 and v.lapic_read(LVT_LINT0) == 0x700
    v.lapic_write(SVR, 0xFF)                       # disable: every LVT gets masked
    assert v.lapic_read(LVT_TIMER) == 0x10030 and v.lapic_read(LVT_LINT0) == 0x10700
    assert irr_has(v, 0x40), "pending IRR bits are held across a software disable"


def test_esr_illegal_vector_and_latching():
    m = Machine(2)
    v0, v1 = m.cpus
    for v in m.cpus:
        v.lapic_write(SVR, 0x1FF)
    v0.lapic_write(LVT_ERR, 0xE0)
    v0.lapic_write(ICR_HI, 1 << 24)
    v0.lapic_write(ICR_LO, 0x05)                   # fixed IPI with vector 5: send illegal vector
    assert v0.lapic_read(ESR) == 0                 # not visible until ESR is written
    v0.lapic_write(ESR, 0)
    assert v0.lapic_read(ESR) == 0x20
    assert irr_has(v0, 0xE0), "LVT error interrupt"
    assert not irr_has(v1, 0x05)
    m.vm.vm_lapic_msi(0xFEE01000, 0x07)            # receive illegal vector on APIC 1
    v1.lapic_write(ESR, 0)
    assert v1.lapic_read(ESR) == 0x40
    v1.lapic_write(ESR, 0)
    assert v1.lapic_read(ESR) == 0


# ------------------------------------------------------------------ destinations

def _enabled(n):
    m = Machine(n)
    for v in m.cpus:
        v.lapic_write(SVR, 0x1FF)
    return m


def _hits(m, vec):
    return [k for k, v in enumerate(m.cpus) if irr_has(v, vec)]


def test_msi_destinations_physical_flat_cluster_and_rh_dm():
    m = _enabled(8)
    # physical, and physical broadcast
    m.vm.vm_lapic_msi(0xFEE03000, 0x31)
    assert _hits(m, 0x31) == [3]
    m.vm.vm_lapic_msi(0xFEEFF000, 0x32)
    assert _hits(m, 0x32) == list(range(8))
    # flat logical: LDR bit k on vCPU k
    for k, v in enumerate(m.cpus):
        v.lapic_write(LDR, (1 << k) << 24)
    m.vm.vm_lapic_msi(0xFEE0000C | (0x05 << 12), 0x33)     # RH+DM: logical 0b101
    assert _hits(m, 0x33) == [0, 2]
    m.vm.vm_lapic_msi(0xFEE00004 | (0x05 << 12), 0x34)     # DM alone: bhyve reads it as physical 5
    assert _hits(m, 0x34) == [5]
    m.vm.vm_lapic_msi(0xFEE00008 | (0x05 << 12), 0x35)     # RH alone: physical too
    assert _hits(m, 0x35) == [5]
    # cluster model: cluster k//4, member bit k%4
    for k, v in enumerate(m.cpus):
        v.lapic_write(DFR, 0x0FFFFFFF)
        v.lapic_write(LDR, (((k // 4) << 4) | (1 << (k % 4))) << 24)
    m.vm.vm_lapic_msi(0xFEE0000C | (0x16 << 12), 0x36)     # cluster 1, members 1 and 2
    assert _hits(m, 0x36) == [5, 6]
    m.vm.vm_lapic_msi(0xFEE0000C | (0x01 << 12), 0x37)     # cluster 0, member 0
    assert _hits(m, 0x37) == [0]
    m.vm.vm_lapic_msi(0xFEE0000C | (0xFF << 12), 0x38)     # broadcast
    assert _hits(m, 0x38) == list(range(8))


def test_lowest_priority_picks_lowest_tpr_deterministically():
    m = _enabled(4)
    for k, v in enumerate(m.cpus):
        v.lapic_write(LDR, (1 << k) << 24)
        v.lapic_write(TPR, [0x40, 0x20, 0x20, 0x10][k])
    m.vm.vm_lapic_msi(0xFEE0700C, 0x141)           # lowest priority among {0,1,2}: TPR 0x20, lowest id = 1
    assert _hits(m, 0x41) == [1]
    m.vm.vm_lapic_msi(0xFEE0F00C, 0x142)           # {0..3}: vCPU 3 has TPR 0x10
    assert _hits(m, 0x42) == [3]
    m.cpus[3].lapic_write(SVR, 0xFF)               # a disabled APIC is not a candidate
    m.vm.vm_lapic_msi(0xFEE0F00C, 0x143)
    assert _hits(m, 0x43) == [1]


def test_icr_shorthands():
    m = _enabled(4)
    v = m.cpus[2]
    v.lapic_write(ICR_LO, (1 << 18) | 0x51)        # self
    v.lapic_write(ICR_LO, (2 << 18) | 0x52)        # all including self
    v.lapic_write(ICR_LO, (3 << 18) | 0x53)        # all excluding self
    v.lapic_write(ICR_HI, 0x03 << 24)
    v.lapic_write(ICR_LO, 0x800 | 0x54)            # logical (flat LDR 0 everywhere): nobody
    assert _hits(m, 0x51) == [2]
    assert _hits(m, 0x52) == [0, 1, 2, 3]
    assert _hits(m, 0x53) == [0, 1, 3]
    assert _hits(m, 0x54) == []
    assert v.lapic_read(ICR_LO) & 0x1000 == 0      # delivery status idle


# ------------------------------------------------------------------ timer

def _ccr_rate(v, dcr):
    v.lapic_write(TDCR, dcr)
    v.lapic_write(LVT_TIMER, 0x10030)              # masked one-shot
    v.lapic_write(TICR, 0xFFFFFFFF)
    t0, c0 = time.monotonic(), v.lapic_read(TCCR)
    time.sleep(0.03)
    t1, c1 = time.monotonic(), v.lapic_read(TCCR)
    return (c0 - c1) / (t1 - t0)


@pytest.mark.parametrize("dcr,div", [(0xB, 1), (0x0, 2), (0x3, 16), (0xA, 128)])
def test_timer_current_count_follows_divide_configuration(dcr, div):
    m = _enabled(1)
    rate = _ccr_rate(m.cpus[0], dcr)
    assert rate == pytest.approx(BUS_HZ / div, rel=0.15)


def test_one_shot_fires_once_and_stops_at_zero():
    m = _enabled(1)
    v = m.cpus[0]
    v.lapic_write(TDCR, 0xB)
    v.lapic_write(LVT_TIMER, 0x30)                 # one-shot, vector 0x30
    v.lapic_write(TICR, BUS_HZ // 100)             # 10 ms
    assert v.lapic_read(TICR) == BUS_HZ // 100
    assert 0 < v.lapic_read(TCCR) <= BUS_HZ // 100
    assert v.lapic_timer_poll() is not None and not irr_has(v, 0x30)
    time.sleep(0.012)
    assert v.lapic_timer_poll() is None            # fired, disarmed
    assert irr_has(v, 0x30) and v.lapic_read(TCCR) == 0
    v.lapic_write(TICR, 0)
    assert v.lapic_read(TCCR) == 0


def test_masked_timer_counts_without_interrupt():
    m = _enabled(1)
    v = m.cpus[0]
    v.lapic_write(TDCR, 0xB)
    v.lapic_write(LVT_TIMER, 0x10030)
    v.lapic_write(TICR, BUS_HZ // 1000)
    time.sleep(0.003)
    v.lapic_timer_poll()
    assert not irr_has(v, 0x30) and v.lapic_read(TCCR) == 0


TICKS_GUEST = """
        mov rsp, 0x80000
        mov rbx, 0xfee00000
        mov dword [rbx + 0xf0], 0x1ff       ; SVR enable
        mov dword [rbx + 0x3e0], 0xb        ; divide by 1
        mov dword [rbx + 0x320], {lvt}      ; LVT timer
        xor r14, r14
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov r12, rax                        ; start TSC
        {arm}
        sti
    idle:
        hlt
        cmp r14, {n}
        jb idle
        cli
        rdtsc
        shl rdx, 32
        or rax, rdx
        sub rax, r12
        mov [{log}], rax                    ; elapsed TSC
        out 0x80, al
        hlt
    handler:
        mov r8d, 0x30
        inc r14
        mov dword [rbx + 0xb0], 0           ; EOI
        iretq
"""


def test_periodic_timer_wakes_halted_vcpu_at_its_rate():
    m = Machine(1)
    hz = m.vm.tsc_hz()
    n = 20
    guest(m, TICKS_GUEST.format(lvt=0x20030, arm=f"mov dword [rbx + 0x380], {BUS_HZ // 500}",
                                n=n, log=LOG), handlers={0x30: "handler"})
    run_to_port(m, 0, 0x80)
    elapsed = m.r64(LOG) / hz
    assert m.cpus[0].vm_get_register(VmReg.R14) == n
    assert 0.8 * n * 0.002 <= elapsed <= 5 * n * 0.002, elapsed   # 2 ms period
    # it slept between ticks instead of spinning on HLT
    assert m.cpus[0].stats()["instructions"] < 40 * n


def test_tsc_deadline_timer_and_msr():
    m = Machine(1)
    hz = m.vm.tsc_hz()
    v = m.cpus[0]
    delay = hz // 100                                  # 10 ms
    guest(m, TICKS_GUEST.format(lvt=0x40030, n=1, log=LOG, arm=f"""
        mov ecx, 0x6e0
        mov rax, r12
        mov rsi, {delay}
        add rax, rsi
        mov rdx, rax
        shr rdx, 32
        wrmsr                               ; IA32_TSC_DEADLINE = now + 10 ms
        rdmsr
        shl rdx, 32
        or rax, rdx
        mov [{LOG + 8}], rax"""), handlers={0x30: "handler"})
    run_to_port(m, 0, 0x80)
    assert m.r64(LOG + 8) != 0
    assert delay <= m.r64(LOG) <= 50 * delay
    assert v.vm_get_register(VmReg.R14) == 1
    # after firing the MSR reads 0 (SDM 11.5.4.1); ICR is ignored in this mode
    v.lapic_write(TICR, 1000)
    assert v.lapic_read(TICR) == 0 and v.lapic_read(TCCR) == 0


def test_tsc_deadline_msr_ignored_outside_deadline_mode():
    m = _enabled(1)
    v = m.cpus[0]
    guest(m, """
        mov ecx, 0x6e0
        mov eax, 0x1000
        xor edx, edx
        wrmsr
        rdmsr
        mov [0x30000], eax
        out 0x80, al
        hlt
    """)
    run_to_port(m, 0, 0x80)
    assert m.r32(LOG) == 0 and v.lapic_timer_poll() is None


# ------------------------------------------------------------------ priorities

def test_tpr_ppr_masking_and_eoi_order_with_nested_isr():
    """Vector 0x31 is taken; its handler re-enables interrupts and sends a
    self-IPI 0x61 (higher class: nests) and 0x32 (same class as 0x31: held by
    PPR until the EOI).  Expected order: 31 61 /61 /31 32 /32."""
    m = Machine(1)
    guest(m, """
        mov rsp, 0x80000
        mov rbx, 0xfee00000
        mov dword [rbx + 0xf0], 0x1ff
        mov rdi, 0x30000
        mov dword [rbx + 0x80], 0x30        ; TPR: class 3 masked
        mov dword [rbx + 0x300], 0x40031    ; self-IPI 0x31: held by TPR
        sti
        nop
        nop
        mov eax, [rbx + 0xa0]               ; PPR = TPR
        mov [rdi], al
        inc rdi
        mov byte [rdi], 0xee                ; marker: TPR released here
        inc rdi
        mov dword [rbx + 0x80], 0
        nop
        nop
        cli
        out 0x80, al
        hlt
    h31:
        mov r8d, 0x31
        mov byte [rdi], 0x31
        inc rdi
        mov dword [rbx + 0x300], 0x40032    ; same class: must wait for our EOI
        mov dword [rbx + 0x300], 0x40061    ; higher class: nests now
        sti
        nop
        nop
        cli
        mov eax, [rbx + 0x100 + 0x10]       ; ISR[63:32] after the nested one finished
        shr eax, 16                         ; 0x31 is bit 17
        mov [rdi], al
        inc rdi
        mov byte [rdi], 0xf1                ; EOI 0x31
        inc rdi
        mov dword [rbx + 0xb0], 0
        iretq
    h61:
        mov r8d, 0x61
        mov byte [rdi], 0x61
        inc rdi
        mov eax, [rbx + 0xa0]               ; PPR while both are in service
        mov [rdi], al
        inc rdi
        mov eax, [rbx + 0x100 + 0x30]       ; ISR[127:96]: 0x61 is bit 1
        mov [rdi], al
        inc rdi
        mov byte [rdi], 0xf6
        inc rdi
        mov dword [rbx + 0xb0], 0           ; EOI retires 0x61 (the highest), not 0x31
        iretq
    h32:
        mov r8d, 0x32
        mov byte [rdi], 0x32
        inc rdi
        mov byte [rdi], 0xf3
        inc rdi
        mov dword [rbx + 0xb0], 0
        iretq
    """, handlers={0x31: "h31", 0x61: "h61", 0x32: "h32"})
    run_to_port(m, 0, 0x80)
    log = m.read(LOG, 11)
    assert list(log) == [0x30, 0xEE, 0x31, 0x61, 0x60, 0x02, 0xF6, 0x02, 0xF1, 0x32, 0xF3], log.hex()
    v = m.cpus[0]
    assert all(v.lapic_read(ISR + 0x10 * k) == 0 for k in range(8))


def test_level_eoi_sets_tmr_and_reports_vector():
    m = _enabled(1)
    v = m.cpus[0]
    m.vm.vm_lapic_msi(0xFEE00000, 0x8045)          # level-triggered vector 0x45
    m.vm.vm_lapic_msi(0xFEE00000, 0x0046)          # edge-triggered 0x46
    assert v.lapic_read(TMR + 0x20) & (1 << 5) and not v.lapic_read(TMR + 0x20) & (1 << 6)
    assert v.lapic_write(EOI, 0) is None           # nothing in service: ignored


# ------------------------------------------------------------------ INIT / SIPI / NMI / LINT

def test_init_resets_apic_and_waits_for_sipi():
    m = Machine(2)
    v = m.cpus[1]
    v.vm_activate_cpu()
    v.lapic_write(SVR, 0x1FF)
    v.lapic_write(TPR, 0x20)
    v.lapic_write(LDR, 0x04000000)
    v.lapic_write(DFR, 0x0FFFFFFF)
    v.lapic_write(LVT_TIMER, 0x20040)
    v.lapic_write(TICR, 12345678)
    m.vm.vm_lapic_msi(0xFEE01000, 0x50)
    assert irr_has(v, 0x50)
    m.vm.vm_lapic_msi(0xFEE01000, 0x4609)          # SIPI before INIT: ignored
    assert v.vm_run().code == ExitCode.BOGUS
    m.vm.vm_lapic_msi(0xFEE01000, 0x4500)          # INIT
    assert v.vm_run().code == ExitCode.BOGUS       # now waiting for SIPI
    assert v.lapic_read(ID) == 1 << 24             # kept
    assert (v.lapic_read(SVR), v.lapic_read(TPR), v.lapic_read(LDR), v.lapic_read(DFR)) == \
        (0xFF, 0, 0, 0xFFFFFFFF)
    assert v.lapic_read(LVT_TIMER) == 0x10000 and v.lapic_read(TICR) == 0
    assert not irr_has(v, 0x50) and v.lapic_timer_poll() is None
    m.write(0x9000, assemble("out 0x80, al\nhlt\n", 16, 0))
    m.vm.vm_lapic_msi(0xFEE01000, 0x4609)
    e = v.vm_run()
    assert e.code == ExitCode.INOUT and e.port == 0x80
    assert v.vm_get_desc(VmReg.CS).base == 0x9000


def test_lint1_nmi_blocked_until_iret_and_lint0_extint():
    m = Machine(1)
    v = m.cpus[0]
    guest(m, """
        mov rsp, 0x80000
        mov rbx, 0xfee00000
        mov dword [rbx + 0xf0], 0x1ff
        mov dword [rbx + 0x360], 0x400      ; LINT1: NMI
        mov dword [rbx + 0x350], 0x700      ; LINT0: ExtINT
        out 0x81, al                        ; ready
        sti
    spin:
        cmp r14, 2
        jb spin
        cmp r15, 1
        jb spin
        out 0x80, al
        cli
        hlt
    nmi:
        mov r8d, 2
        inc r14
        mov r9, r14
        out 0x82, al                        ; NMI handler running: the VMM sends another NMI
        mov [0x30000 + r9 * 8], r14         ; slot 1 stays 1: NMIs are blocked until IRET
        iretq
    ext:
        mov r8d, 0x77
        inc r15
        iretq
    """, handlers={2: "nmi", 0x77: "ext"})
    seen = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        e = v.vm_run()
        if e.code != ExitCode.INOUT:
            continue
        v.vm_complete_inout(e)
        seen.append(e.port)
        if e.port == 0x81:
            m.vm.vm_lapic_local_irq(0, 1)
        elif e.port == 0x82 and seen.count(0x82) == 1:
            m.vm.vm_lapic_local_irq(0, 1)
            m.vm.vm_lapic_local_irq(0, 0, 0x77)
        elif e.port == 0x80:
            break
    assert seen.count(0x82) == 2 and seen[-1] == 0x80, seen
    assert v.vm_get_register(VmReg.R14) == 2 and v.vm_get_register(VmReg.R15) == 1
    assert (m.r64(LOG + 8), m.r64(LOG + 16)) == (1, 2)
    # masked LINT: nothing
    v.lapic_write(LVT_LINT0, 0x10730)
    m.vm.vm_lapic_local_irq(0, 0, 0x30)


# ------------------------------------------------------------------ never blocking

def test_msi_to_busy_and_halted_vcpus_never_blocks():
    m = _enabled(2)
    guest(m, "spin: pause\njmp spin\n", cpu=0)            # IF=0: IRR just fills
    m.write(0x18000, assemble("sti\nidle: hlt\njmp idle\n", 64, 0x18000))
    m.long_mode(1, rip=0x18000, rsp=0x70000, paging=False)
    m.cpus[1].lapic_write(TPR, 0xF0)                         # halted, nothing deliverable
    stop = threading.Event()

    def body(k):
        while not stop.is_set():
            m.cpus[k].vm_run()
    ts = [threading.Thread(target=body, args=(k,), daemon=True) for k in range(2)]
    for t in ts:
        t.start()
    time.sleep(0.05)
    worst = 0.0
    for _ in range(2000):
        t0 = time.perf_counter()
        m.vm.vm_lapic_msi(0xFEEFF000, 0x20)        # both, no handler run needed
        worst = max(worst, time.perf_counter() - t0)
    stop.set()
    for k in range(2):
        m.vm.kick(k)
    for t in ts:
        t.join(5)
    assert worst < 0.05, worst
