/*
 * Local APIC (SDM Vol 3A chapter 11 "Advanced Programmable Interrupt
 * Controller (APIC)", xAPIC mode) living in the platform shm so that every
 * process of the VM can deliver to any vCPU: senders atomically OR into the
 * destination's IRR and FUTEX_WAKE it (non-private futex: the waiter may be
 * another process).  Delivery never blocks and never needs the target to be
 * alive: a dead vCPU's APIC is just memory.  The owning vCPU moves
 * IRR -> ISR, handles EOI/TPR/PPR, its timer and its own MMIO page.
 *
 * The counterpart of FreeBSD's sys/amd64/vmm/io/vlapic.c; where bhyve's
 * behaviour and the SDM differ, the comment says which one we follow.
 * x2APIC is not implemented (and not advertised in CPUID).
 */
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <x86intrin.h>
#include "mem.h"

#define APIC_VERSION 0x00050014u   /* version 0x14, max LVT entry 5 (6 LVTs), no EOI-broadcast suppression */

enum { LVT_CMCI = 0, LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR };
#define LVT_MASKED 0x10000u
#define SVR_ENABLE 0x100u
/* ESR bits (SDM 11.5.3) */
#define ESR_SEND_ILLEGAL 0x20u
#define ESR_RECV_ILLEGAL 0x40u
#define ESR_ILLEGAL_REG  0x80u

void lapic_wake(lapic_t *l)
{
    __atomic_store_n(&l->event, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &l->event, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* Power-up / INIT state of everything but the APIC ID and IA32_APIC_BASE
 * (SDM 11.4.7.3 "Local APIC State After an INIT Reset (Wait-for-SIPI
 * State)": same as after power-up except the APIC ID and arbitration ID). */
void lapic_init_reset(lapic_t *l)
{
    l->ldr = 0; l->dfr = 0xffffffffu; l->svr = 0xff; l->tpr = 0; l->esr = 0;
    __atomic_store_n(&l->esr_pending, 0, __ATOMIC_RELAXED);
    l->icr_lo = l->icr_hi = 0;
    for (int k = 0; k < 7; k++) l->lvt[k] = LVT_MASKED;
    l->timer_icr = l->timer_ccr = l->timer_dcr = 0;
    __atomic_store_n(&l->timer_next, LAPIC_NEVER, __ATOMIC_RELAXED);
    l->tsc_deadline = 0;
    for (int k = 0; k < 8; k++) {
        __atomic_store_n(&l->irr[k], 0, __ATOMIC_RELAXED);
        l->isr[k] = 0;
        __atomic_store_n(&l->tmr[k], 0, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&l->extint, 0, __ATOMIC_RELAXED);
}

void lapic_reset(svm_vm_t *vm, int id, int bsp)
{
    lapic_t *l = vm_lapic(vm, id);
    l->id = (uint32_t)id;
    lapic_init_reset(l);
    l->apic_base = 0xfee00000ULL | 0x800 | (bsp ? 0x100 : 0);
}

static inline int sw_enabled(lapic_t *l) { return (__atomic_load_n(&l->svr, __ATOMIC_RELAXED) & SVR_ENABLE) != 0; }

static void set_irr(lapic_t *l, int vec, int level_trig)
{
    if (level_trig) __atomic_fetch_or(&l->tmr[vec >> 5], 1u << (vec & 31), __ATOMIC_SEQ_CST);
    else __atomic_fetch_and(&l->tmr[vec >> 5], ~(1u << (vec & 31)), __ATOMIC_SEQ_CST);
    __atomic_fetch_or(&l->irr[vec >> 5], 1u << (vec & 31), __ATOMIC_SEQ_CST);
}

/* An APIC error (SDM 11.5.3): latch it and raise the LVT error interrupt. */
static void lapic_error(lapic_t *l, uint32_t bit)
{
    uint32_t old = __atomic_fetch_or(&l->esr_pending, bit, __ATOMIC_SEQ_CST);
    if (old & bit) return;
    uint32_t lvt = __atomic_load_n(&l->lvt[LVT_ERROR], __ATOMIC_RELAXED);
    int vec = lvt & 0xff;
    if (!(lvt & LVT_MASKED) && sw_enabled(l) && vec >= 16) set_irr(l, vec, 0);
    lapic_wake(l);
}

/* ---- delivery (any thread, any process, never blocks) ------------------------- */
static void accept(svm_vm_t *vm, int id, int mode, int vec, int level_trig)
{
    lapic_t *l = vm_lapic(vm, id);
    switch (mode) {
    case 0: case 1: /* fixed, lowest priority */
        if (vec < 16) { lapic_error(l, ESR_RECV_ILLEGAL); return; }
        /* software-disabled APIC (SVR bit 8 clear): fixed interrupts are not
         * accepted (SDM 11.4.7.2; bhyve vlapic_set_intr_ready drops them too) */
        if (!sw_enabled(l)) return;
        set_irr(l, vec, level_trig);
        break;
    case 4: __atomic_store_n(&l->nmi, 1, __ATOMIC_SEQ_CST); break;
    case 5: __atomic_store_n(&l->init, 1, __ATOMIC_SEQ_CST); break;
    case 6: __atomic_store_n(&l->sipi, 0x100u | (uint32_t)vec, __ATOMIC_SEQ_CST); break;
    case 7: __atomic_store_n(&l->extint, 0x100u | (uint32_t)vec, __ATOMIC_SEQ_CST); break;
    default: return;  /* SMI, reserved */
    }
    lapic_wake(l);
}

static int dest_match(svm_vm_t *vm, int id, uint32_t dest, int logical)
{
    lapic_t *l = vm_lapic(vm, id);
    if (!logical) return dest == 0xff || dest == __atomic_load_n(&l->id, __ATOMIC_RELAXED);
    if (dest == 0xff) return 1;   /* broadcast in both logical models */
    uint32_t ldr = __atomic_load_n(&l->ldr, __ATOMIC_RELAXED) >> 24;
    uint32_t dfr = __atomic_load_n(&l->dfr, __ATOMIC_RELAXED);
    /* SDM 11.6.2.2: flat model = bitmap of 8; cluster model = cluster in
     * [7:4] (0xf is not a cluster but broadcast to all), members in [3:0] */
    if ((dfr >> 28) == 0xf) return (ldr & dest) != 0;
    if ((dest >> 4) == 0xf) return (ldr & dest & 0xf) != 0;
    return (ldr >> 4) == (dest >> 4) && (ldr & dest & 0xf) != 0;
}

/* shorthand: 0 none, 1 self, 2 all including self, 3 all excluding self */
static void deliver(svm_vm_t *vm, int self, uint32_t dest, int logical, int mode, int vec,
                    int level_trig, int shorthand)
{
    int n = vm->ncpus;
    if (mode == 1 && (shorthand == 0 || shorthand == 3)) {
        /* Lowest priority (SDM 11.6.2.4): the matching, enabled APIC with the
         * lowest TPR; ties go to the lowest APIC ID.  Deterministic for a given
         * state, unlike hardware's focus/arbitration ID rotation. */
        int best = -1;
        uint32_t best_tpr = 0x100;
        for (int k = 0; k < n; k++) {
            int hit = shorthand == 3 ? k != self : dest_match(vm, k, dest, logical);
            if (!hit || !sw_enabled(vm_lapic(vm, k))) continue;
            uint32_t tpr = __atomic_load_n(&vm_lapic(vm, k)->tpr, __ATOMIC_RELAXED) & 0xf0;
            if (tpr < best_tpr) { best = k; best_tpr = tpr; }
        }
        if (best >= 0) accept(vm, best, 0, vec, level_trig);
        return;
    }
    for (int k = 0; k < n; k++) {
        int hit;
        switch (shorthand) {
        case 1: hit = k == self; break;
        case 2: hit = 1; break;
        case 3: hit = k != self; break;
        default: hit = dest_match(vm, k, dest, logical); break;
        }
        if (hit) accept(vm, k, mode, vec, level_trig);
    }
}

void lapic_msi(svm_vm_t *vm, uint64_t addr, uint32_t data)
{
    /* MSI format: SDM 11.11.1 (address) / 11.11.2 (data) */
    if ((addr >> 20) != 0xfee) return;
    uint32_t dest = (addr >> 12) & 0xff;
    /* bhyve (vmm_lapic.c lapic_intr_msi): the destination is logical only
     * when both the redirection hint (bit 3) and destination mode (bit 2)
     * are set, physical otherwise. */
    int logical = (addr & 0xc) == 0xc;
    int mode = (data >> 8) & 7;
    int vec = data & 0xff;
    int level = !!(data & 0x8000);   /* the IOAPIC actor sends level RTEs this way */
    deliver(vm, -1, dest, logical, mode, vec, level, 0);
}

/* LINT0/LINT1 asserted (bhyve vm_lapic_local_irq); id -1 = every vCPU.
 * ExtINT takes its vector from the interrupt controller, given here. */
void lapic_local_irq(svm_vm_t *vm, int id, int pin, int extint_vec)
{
    if (pin < 0 || pin > 1) return;
    for (int k = 0; k < vm->ncpus; k++) {
        if (id >= 0 && k != id) continue;
        lapic_t *l = vm_lapic(vm, k);
        uint32_t lvt = __atomic_load_n(&l->lvt[LVT_LINT0 + pin], __ATOMIC_RELAXED);
        if (lvt & LVT_MASKED) continue;
        int mode = (lvt >> 8) & 7;
        switch (mode) {
        case 0: accept(vm, k, 0, lvt & 0xff, !!(lvt & 0x8000)); break;
        case 4: accept(vm, k, 4, 0, 0); break;
        case 7: accept(vm, k, 7, extint_vec & 0xff, 0); break;
        default: break;   /* SMI, INIT via LINT: not modelled */
        }
    }
}

/* ---- owner side ---------------------------------------------------------------- */
static int highest(const uint32_t *v, int atomic)
{
    for (int k = 7; k >= 0; k--) {
        uint32_t w = atomic ? __atomic_load_n(&v[k], __ATOMIC_RELAXED) : v[k];
        if (w) return k * 32 + 31 - __builtin_clz(w);
    }
    return -1;
}

/* SDM 11.8.3.1: PPR = TPR if TPR[7:4] >= ISRV[7:4], else ISRV[7:4] << 4 */
static uint32_t ppr(lapic_t *l)
{
    int isrv = highest(l->isr, 0);
    uint32_t tpr = l->tpr;
    if (isrv < 0) isrv = 0;
    return ((tpr & 0xf0) >= ((uint32_t)isrv & 0xf0)) ? tpr : ((uint32_t)isrv & 0xf0);
}

/* The highest IRR vector whose priority class is above PPR's (SDM 11.8.3). */
int lapic_pending_vector(cpu_t *c)
{
    lapic_t *l = c->lapic;
    int v = highest(l->irr, 1);
    if (v < 0) return -1;
    if (((uint32_t)v & 0xf0) <= (ppr(l) & 0xf0)) return -1;
    return v;
}

void lapic_accept(cpu_t *c, int vec)
{
    lapic_t *l = c->lapic;
    __atomic_fetch_and(&l->irr[vec >> 5], ~(1u << (vec & 31)), __ATOMIC_SEQ_CST);
    l->isr[vec >> 5] |= 1u << (vec & 31);
    l->accepted[vec]++;
}

/* ---- timer (SDM 11.5.4) -------------------------------------------------------- */
static uint32_t timer_div(lapic_t *l)
{
    /* DCR bits 3,1:0 (SDM Figure 11-10): 000 = /2 ... 110 = /128, 111 = /1 */
    uint32_t v = ((l->timer_dcr & 8) >> 1) | (l->timer_dcr & 3);
    return v == 7 ? 1 : 2u << v;
}

static inline int timer_mode(lapic_t *l) { return (l->lvt[LVT_TIMER] >> 17) & 3; }   /* 0 one-shot, 1 periodic, 2 TSC-deadline */

static uint64_t counts_to_tsc(cpu_t *c, uint64_t counts)
{
    unsigned __int128 t = (unsigned __int128)counts * timer_div(c->lapic) * host_tsc_hz(c->vm);
    uint64_t r = (uint64_t)(t / APIC_BUS_HZ);
    return r ? r : 1;
}

static void timer_start(cpu_t *c, uint64_t now, uint32_t count)
{
    lapic_t *l = c->lapic;
    uint64_t next = count ? now + counts_to_tsc(c, count) : LAPIC_NEVER;
    __atomic_store_n(&l->timer_next, next, __ATOMIC_RELAXED);
}

static uint32_t timer_ccr(cpu_t *c)
{
    lapic_t *l = c->lapic;
    if (timer_mode(l) == 2) return 0;
    uint64_t next = l->timer_next, now = __rdtsc();
    if (next == LAPIC_NEVER || next <= now) return 0;
    unsigned __int128 t = (unsigned __int128)(next - now) * APIC_BUS_HZ;
    uint64_t counts = (uint64_t)(t / ((uint64_t)timer_div(l) * host_tsc_hz(c->vm)));
    return counts > l->timer_icr ? l->timer_icr : (uint32_t)counts;
}

static void timer_deliver(cpu_t *c)
{
    lapic_t *l = c->lapic;
    uint32_t lvt = l->lvt[LVT_TIMER];
    int vec = lvt & 0xff;
    if (lvt & LVT_MASKED) return;        /* counts on, interrupt suppressed */
    if (vec < 16) { lapic_error(l, ESR_RECV_ILLEGAL); return; }
    if (!sw_enabled(l)) return;
    set_irr(l, vec, 0);
    c->irq_pending = 1;
}

/* Called by the owner whenever host TSC >= timer_next (block boundaries, HLT). */
void lapic_timer_poll(cpu_t *c)
{
    lapic_t *l = c->lapic;
    uint64_t next = l->timer_next, now = __rdtsc();
    if (next == LAPIC_NEVER || now < next) return;
    timer_deliver(c);
    switch (timer_mode(l)) {
    case 1: {   /* periodic: reload from the initial count; missed periods coalesce (one IRR bit) */
        uint64_t period = counts_to_tsc(c, l->timer_icr ? l->timer_icr : 1);
        next += period;
        if (next <= now) next += ((now - next) / period + 1) * period;
        __atomic_store_n(&l->timer_next, next, __ATOMIC_RELAXED);
        break; }
    case 2:     /* TSC-deadline: one shot, the MSR reads 0 afterwards (SDM 11.5.4.1) */
        l->tsc_deadline = 0;
        /* fallthrough */
    default:
        __atomic_store_n(&l->timer_next, LAPIC_NEVER, __ATOMIC_RELAXED);
        break;
    }
}

int lapic_msr_read(cpu_t *c, uint32_t msr, uint64_t *v)
{
    if (msr != 0x6e0) return -1;
    /* IA32_TSC_DEADLINE reads 0 outside TSC-deadline mode */
    *v = timer_mode(c->lapic) == 2 ? c->lapic->tsc_deadline : 0;
    return 0;
}

int lapic_msr_write(cpu_t *c, uint32_t msr, uint64_t v)
{
    if (msr != 0x6e0) return -1;
    lapic_t *l = c->lapic;
    if (timer_mode(l) != 2) return 0;    /* ignored in the other modes */
    l->tsc_deadline = v;
    /* the deadline is in guest TSC; our clock is the host TSC */
    uint64_t host = v ? v - (uint64_t)c->tsc_offset : LAPIC_NEVER;
    if (v && host == LAPIC_NEVER) host--;
    __atomic_store_n(&l->timer_next, host, __ATOMIC_RELAXED);
    c->brk = 1;   /* a past deadline fires at the next boundary */
    return 0;
}

/* ---- MMIO page ------------------------------------------------------------------- */
uint32_t lapic_mmio_read(cpu_t *c, uint32_t off)
{
    lapic_t *l = c->lapic;
    switch (off) {
    case 0x20: return l->id << 24;
    case 0x30: return APIC_VERSION;
    case 0x80: return l->tpr;
    case 0x90: return 0;          /* APR: arbitration is not modelled */
    case 0xa0: return ppr(l);
    case 0xd0: return l->ldr;
    case 0xe0: return l->dfr;
    case 0xf0: return l->svr;
    case 0x280: return l->esr;
    case 0x2f0: return l->lvt[LVT_CMCI];
    case 0x300: return l->icr_lo & ~0x1000u;   /* delivery status: always idle (delivery is synchronous) */
    case 0x310: return l->icr_hi;
    case 0x320: case 0x330: case 0x340: case 0x350: case 0x360: case 0x370:
        return l->lvt[1 + ((off - 0x320) >> 4)];
    case 0x380: return timer_mode(l) == 2 ? 0 : l->timer_icr;
    case 0x390: return timer_ccr(c);
    case 0x3e0: return l->timer_dcr;
    }
    if (off >= 0x100 && off < 0x180) return l->isr[(off - 0x100) >> 4];
    if (off >= 0x180 && off < 0x200) return __atomic_load_n(&l->tmr[(off - 0x180) >> 4], __ATOMIC_RELAXED);
    if (off >= 0x200 && off < 0x280) return __atomic_load_n(&l->irr[(off - 0x200) >> 4], __ATOMIC_RELAXED);
    return 0;
}

/* writable bits of each LVT (SDM Figure 11-8); delivery status / remote IRR are read-only */
static const uint32_t lvt_wmask[7] = {
    0x107ff,   /* CMCI: vector, delivery mode, mask */
    0x700ff,   /* timer: vector, mask, timer mode */
    0x107ff,   /* thermal */
    0x107ff,   /* perf */
    0x1a7ff,   /* LINT0: vector, mode, polarity, trigger, mask */
    0x1a7ff,   /* LINT1 */
    0x100ff,   /* error: vector, mask */
};

void lapic_mmio_write(cpu_t *c, uint32_t off, uint32_t v)
{
    lapic_t *l = c->lapic;
    c->brk = 1;   /* TPR/EOI/self-IPI may make an interrupt deliverable at the next boundary */
    switch (off) {
    case 0x20: l->id = v >> 24; break;
    case 0x80: l->tpr = v & 0xff; c->irq_pending = 1; break;
    case 0xb0: { /* EOI (SDM 11.8.5): retire the highest-priority ISR bit */
        int vec = highest(l->isr, 0);
        if (vec < 0) break;
        l->isr[vec >> 5] &= ~(1u << (vec & 31));
        c->irq_pending = 1;
        if (__atomic_load_n(&l->tmr[vec >> 5], __ATOMIC_RELAXED) & (1u << (vec & 31))) {
            /* level-triggered: tell the VMM so the IOAPIC can clear Remote IRR */
            c->exit.code = SVM_EXIT_IOAPIC_EOI;
            c->exit.vector = (uint32_t)vec;
            c->exit.rip = c->rip;
            c->post_exit = 1;
        }
        break; }
    case 0xd0: __atomic_store_n(&l->ldr, v & 0xff000000u, __ATOMIC_RELAXED); break;
    case 0xe0: __atomic_store_n(&l->dfr, v | 0x0fffffffu, __ATOMIC_RELAXED); break;
    case 0xf0: {
        __atomic_store_n(&l->svr, v & 0x11ff, __ATOMIC_RELAXED);   /* vector, enable, focus check */
        if (!(v & SVR_ENABLE))   /* software disable masks every LVT (SDM 11.4.7.2) */
            for (int k = 0; k < 7; k++) __atomic_fetch_or(&l->lvt[k], LVT_MASKED, __ATOMIC_RELAXED);
        c->irq_pending = 1;
        break; }
    case 0x280:  /* a write latches the errors seen since the previous write (SDM 11.5.3) */
        l->esr = __atomic_exchange_n(&l->esr_pending, 0, __ATOMIC_SEQ_CST);
        break;
    case 0x310: l->icr_hi = v & 0xff000000u; break;
    case 0x300: { /* ICR low: send the IPI (SDM 11.6.1) */
        l->icr_lo = v & ~0x1000u;
        int mode = (v >> 8) & 7, vec = v & 0xff;
        int logical = !!(v & 0x800), level = !!(v & 0x4000), trig = !!(v & 0x8000);
        int sh = (v >> 18) & 3;
        if (mode == 5 && !level && trig) break;   /* INIT level de-assert: no-op */
        if ((mode == 0 || mode == 1) && vec < 16) { lapic_error(l, ESR_SEND_ILLEGAL); break; }
        if (mode == 2 || mode == 3 || mode == 7) break;   /* SMI / reserved / ExtINT IPIs: not supported */
        deliver(c->vm, c->vcpuid, l->icr_hi >> 24, logical, mode, vec, 0, sh);
        c->irq_pending = 1;
        break; }
    case 0x2f0: case 0x320: case 0x330: case 0x340: case 0x350: case 0x360: case 0x370: {
        int k = off == 0x2f0 ? LVT_CMCI : 1 + (int)((off - 0x320) >> 4);
        uint32_t nv = (l->lvt[k] & ~lvt_wmask[k]) | (v & lvt_wmask[k]);
        if (!sw_enabled(l)) nv |= LVT_MASKED;   /* cannot unmask while software-disabled */
        if (k == LVT_TIMER) {
            int oldmode = timer_mode(l);
            __atomic_store_n(&l->lvt[k], nv, __ATOMIC_RELAXED);
            if (timer_mode(l) != oldmode) {
                /* a mode change disarms the timer (KVM/bhyve behaviour; SDM 11.5.4.1
                 * for switches to and from TSC-deadline mode) */
                __atomic_store_n(&l->timer_next, LAPIC_NEVER, __ATOMIC_RELAXED);
                l->timer_icr = 0;
                l->tsc_deadline = 0;
            }
        } else {
            __atomic_store_n(&l->lvt[k], nv, __ATOMIC_RELAXED);
        }
        break; }
    case 0x380:   /* initial count: (re)starts one-shot/periodic; ignored in TSC-deadline mode */
        if (timer_mode(l) == 2) break;
        l->timer_icr = v;
        timer_start(c, __rdtsc(), v);
        break;
    case 0x3e0: {   /* divide configuration: a running count continues at the new rate */
        uint32_t left = timer_ccr(c);
        int running = timer_mode(l) != 2 && l->timer_next != LAPIC_NEVER;
        l->timer_dcr = v & 0xb;
        if (running) timer_start(c, __rdtsc(), left ? left : 1);
        break; }
    case 0x30: case 0x90: case 0xa0: case 0x390:
        break;   /* read-only */
    default:
        if (off < 0x400 && !(off >= 0x100 && off < 0x280)) lapic_error(l, ESR_ILLEGAL_REG);
        break;
    }
}

/* ---- public helpers (for tests, loaders and the VMM) -------------------------------- */
uint32_t svm_lapic_read(struct svm_cpu *c, uint32_t off) { return lapic_mmio_read(c, off & 0xff0); }

/* Owner-thread register write, as if the guest wrote it.  Returns the vector
 * of a level-triggered EOI (the VMM must forward it to the IOAPIC) or -1. */
int svm_lapic_write(struct svm_cpu *c, uint32_t off, uint32_t v)
{
    c->post_exit = 0;
    lapic_mmio_write(c, off & 0xff0, v);
    int r = -1;
    if (c->post_exit && c->exit.code == SVM_EXIT_IOAPIC_EOI) r = (int)c->exit.vector;
    c->post_exit = 0;
    c->exit.code = 0;
    c->brk = 0;
    return r;
}

void svm_lapic_local_irq(struct svm_vm *vm, int vcpuid, int pin, int extint_vec)
{
    lapic_local_irq(vm, vcpuid, pin, extint_vec);
}

/* Owner thread: fire the timer if it is due (for unit tests); returns the
 * host TSC of the next expiry or ~0. */
uint64_t svm_lapic_timer_poll(struct svm_cpu *c)
{
    lapic_timer_poll(c);
    return c->lapic->timer_next;
}

/* ---- for an accelerator that runs guest code itself (kvm) ---------------------------
 * Its vCPU process keeps this local APIC (no in-kernel irqchip): senders
 * reach it exactly as they reach a softvmm vCPU, and the owner asks here,
 * before each entry, what to inject.  The counterpart of run.c's
 * handle_events for a CPU that softvmm does not execute. */
int svm_lapic_next_event(struct svm_cpu *c, int can_intr, uint32_t *vectors)
{
    lapic_t *l = c->lapic;
    int ev = 0;
    lapic_timer_poll(c);
    if (__atomic_load_n(&l->event, __ATOMIC_SEQ_CST)) {
        __atomic_store_n(&l->event, 0, __ATOMIC_SEQ_CST);
        if (__atomic_exchange_n(&l->kick, 0, __ATOMIC_SEQ_CST)) ev |= SVM_EV_KICK;
        if (__atomic_exchange_n(&l->init, 0, __ATOMIC_SEQ_CST)) {
            /* INIT (SDM Vol 3A 11.4.4): the caller resets the CPU; APs wait for SIPI */
            lapic_init_reset(l);
            c->init_seen = 1;
            if (c->vcpuid != 0) __atomic_store_n(&l->state, LS_WAIT_SIPI, __ATOMIC_SEQ_CST);
            ev |= SVM_EV_INIT;
        }
        uint32_t sipi = __atomic_exchange_n(&l->sipi, 0, __ATOMIC_SEQ_CST);
        if (sipi && __atomic_load_n(&l->state, __ATOMIC_SEQ_CST) == LS_WAIT_SIPI && c->init_seen) {
            vectors[0] = sipi & 0xff;
            c->init_seen = 0;
            __atomic_store_n(&l->state, LS_RUN, __ATOMIC_SEQ_CST);
            ev |= SVM_EV_SIPI;
        }
    }
    if (__atomic_load_n(&l->state, __ATOMIC_SEQ_CST) != LS_RUN) return ev | SVM_EV_WAIT_SIPI;
    if (__atomic_exchange_n(&l->nmi, 0, __ATOMIC_SEQ_CST)) ev |= SVM_EV_NMI;   /* KVM blocks NMIs itself */
    uint32_t ext = __atomic_load_n(&l->extint, __ATOMIC_RELAXED);
    int v = ext ? -1 : lapic_pending_vector(c);
    if (ext || v >= 0) {
        if (!can_intr) return ev | SVM_EV_PENDING;
        if (ext) {
            __atomic_store_n(&l->extint, 0, __ATOMIC_SEQ_CST);
            v = (int)(ext & 0xff);
        } else {
            lapic_accept(c, v);   /* IRR -> ISR only when the vector really goes in */
        }
        vectors[1] = (uint32_t)v;
        ev |= SVM_EV_INTR;
    }
    return ev;
}

/* Block until something arrives for vCPU c or its LAPIC timer is due, at
 * most max_ns: 1 if so, 0 on timeout.  Any thread (the kvm vCPU process
 * waits here on a helper thread while KVM_RUN runs). */
int svm_lapic_wait(struct svm_cpu *c, int64_t max_ns)
{
    lapic_t *l = c->lapic;
    uint64_t now = __rdtsc(), hz = host_tsc_hz(c->vm);
    uint64_t tn = __atomic_load_n(&l->timer_next, __ATOMIC_RELAXED);
    if (__atomic_load_n(&l->event, __ATOMIC_SEQ_CST) || (tn != LAPIC_NEVER && tn <= now)) return 1;
    int64_t ns = max_ns;
    if (tn != LAPIC_NEVER) {
        uint64_t left = (uint64_t)((unsigned __int128)(tn - now) * 1000000000u / hz);
        if ((uint64_t)ns > left) ns = (int64_t)left;
    }
    if (ns > 0) {
        struct timespec ts = { ns / 1000000000L, ns % 1000000000L };
        syscall(SYS_futex, &l->event, FUTEX_WAIT, 0, &ts, NULL, 0);
    }
    tn = __atomic_load_n(&l->timer_next, __ATOMIC_RELAXED);
    return __atomic_load_n(&l->event, __ATOMIC_SEQ_CST) || (tn != LAPIC_NEVER && __rdtsc() >= tn);
}

/* Wake whoever waits in svm_lapic_wait on vCPU c without posting an event
 * (the owner re-armed the timer: the waiter must look at the new deadline). */
void svm_lapic_nudge(struct svm_cpu *c)
{
    syscall(SYS_futex, &c->lapic->event, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* bhive stats: how often this CPU took each vector (IRR -> ISR; the owner
 * counts, a reader in another thread sees a count at most one behind) and
 * the vector its timer LVT names, so the local timer gets its own row. */
void svm_lapic_counts(struct svm_cpu *c, uint32_t *accepted, uint32_t *timer_vector)
{
    lapic_t *l = c->lapic;
    for (int v = 0; v < 256; v++) accepted[v] = __atomic_load_n(&l->accepted[v], __ATOMIC_RELAXED);
    *timer_vector = l->lvt[LVT_TIMER] & 0xff;
}
