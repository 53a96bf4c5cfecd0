/*
 * Local APIC (SDM Vol 3A chapter 11, xAPIC mode) living in the platform
 * shm so that every process of the VM can deliver to any vCPU: senders
 * atomically OR into the destination's IRR and FUTEX_WAKE it (non-private
 * futex: the waiter may be another process).  The owning vCPU moves
 * IRR -> ISR, handles EOI/TPR/PPR and its own MMIO page.
 */
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "mem.h"

#define APIC_VERSION 0x00050014u   /* version 0x14, max LVT entry 5 (6 LVTs) */

void lapic_wake(lapic_t *l)
{
    __atomic_store_n(&l->event, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &l->event, FUTEX_WAKE, 1, NULL, NULL, 0);
}

void lapic_reset(svm_vm_t *vm, int id, int bsp)
{
    lapic_t *l = vm_lapic(vm, id);
    l->id = (uint32_t)id;
    l->ldr = 0; l->dfr = 0xffffffffu; l->svr = 0xff; l->tpr = 0; l->esr = 0;
    l->icr_lo = l->icr_hi = 0;
    for (int k = 0; k < 7; k++) l->lvt[k] = 0x10000;
    l->timer_icr = l->timer_ccr = l->timer_dcr = 0;
    for (int k = 0; k < 8; k++) {
        __atomic_store_n(&l->irr[k], 0, __ATOMIC_RELAXED);
        l->isr[k] = 0;
        __atomic_store_n(&l->tmr[k], 0, __ATOMIC_RELAXED);
    }
    l->apic_base = 0xfee00000ULL | 0x800 | (bsp ? 0x100 : 0);
}

/* ---- delivery (any thread, any process) ------------------------------------ */
static void accept(svm_vm_t *vm, int id, int mode, int vec, int level_trig)
{
    lapic_t *l = vm_lapic(vm, id);
    switch (mode) {
    case 0: case 1: /* fixed, lowest priority */
        if (vec < 16) return;   /* illegal vector: ESR would be set (TODO) */
        if (level_trig) __atomic_fetch_or(&l->tmr[vec >> 5], 1u << (vec & 31), __ATOMIC_SEQ_CST);
        else __atomic_fetch_and(&l->tmr[vec >> 5], ~(1u << (vec & 31)), __ATOMIC_SEQ_CST);
        __atomic_fetch_or(&l->irr[vec >> 5], 1u << (vec & 31), __ATOMIC_SEQ_CST);
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
    if (dest == 0xff) return 1;
    uint32_t ldr = __atomic_load_n(&l->ldr, __ATOMIC_RELAXED) >> 24;
    uint32_t dfr = __atomic_load_n(&l->dfr, __ATOMIC_RELAXED);
    if ((dfr >> 28) == 0xf) return (ldr & dest) != 0;                 /* flat model */
    return (ldr >> 4) == (dest >> 4) && (ldr & dest & 0xf) != 0;       /* cluster model */
}

/* shorthand: 0 none, 1 self, 2 all including self, 3 all excluding self */
static void deliver(svm_vm_t *vm, int self, uint32_t dest, int logical, int mode, int vec,
                    int level_trig, int shorthand)
{
    int n = vm->ncpus;
    if (mode == 1 && shorthand == 0) {
        /* lowest priority: deterministic choice of the first matching APIC */
        for (int k = 0; k < n; k++)
            if (dest_match(vm, k, dest, logical)) { accept(vm, k, 0, vec, level_trig); return; }
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
    /* MSI format: SDM Vol 3A 11.11.1 / 11.11.2 */
    if ((addr >> 20) != 0xfee) return;
    uint32_t dest = (addr >> 12) & 0xff;
    int logical = !!(addr & 4);
    int mode = (data >> 8) & 7;
    int vec = data & 0xff;
    int level = !!(data & 0x8000);
    deliver(vm, -1, dest, logical, mode, vec, level, 0);
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

static uint32_t ppr(lapic_t *l)
{
    int isrv = highest(l->isr, 0);
    uint32_t tpr = l->tpr;
    if (isrv < 0) isrv = 0;
    return ((tpr & 0xf0) >= ((uint32_t)isrv & 0xf0)) ? tpr : ((uint32_t)isrv & 0xf0);
}

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
}

uint32_t lapic_mmio_read(cpu_t *c, uint32_t off)
{
    lapic_t *l = c->lapic;
    switch (off) {
    case 0x20: return l->id << 24;
    case 0x30: return APIC_VERSION;
    case 0x80: return l->tpr;
    case 0x90: return 0;          /* APR */
    case 0xa0: return ppr(l);
    case 0xd0: return l->ldr;
    case 0xe0: return l->dfr;
    case 0xf0: return l->svr;
    case 0x280: return l->esr;
    case 0x2f0: return l->lvt[0];
    case 0x300: return l->icr_lo & ~0x1000u;   /* delivery status: always idle */
    case 0x310: return l->icr_hi;
    case 0x320: case 0x330: case 0x340: case 0x350: case 0x360: case 0x370:
        return l->lvt[1 + ((off - 0x320) >> 4)];
    case 0x380: return l->timer_icr;
    case 0x390: return 0;         /* TODO(M2): LVT timer */
    case 0x3e0: return l->timer_dcr;
    }
    if (off >= 0x100 && off < 0x180) return l->isr[(off - 0x100) >> 4];
    if (off >= 0x180 && off < 0x200) return __atomic_load_n(&l->tmr[(off - 0x180) >> 4], __ATOMIC_RELAXED);
    if (off >= 0x200 && off < 0x280) return __atomic_load_n(&l->irr[(off - 0x200) >> 4], __ATOMIC_RELAXED);
    return 0;
}

void lapic_mmio_write(cpu_t *c, uint32_t off, uint32_t v)
{
    lapic_t *l = c->lapic;
    c->brk = 1;   /* TPR/EOI/self-IPI may make an interrupt deliverable at the next boundary */
    switch (off) {
    case 0x20: l->id = v >> 24; break;
    case 0x80: l->tpr = v & 0xff; c->irq_pending = 1; break;
    case 0xb0: { /* EOI (SDM 11.8.5) */
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
    case 0xf0: l->svr = v & 0x13ff; break;
    case 0x280: l->esr = 0; break;
    case 0x2f0: l->lvt[0] = v; break;
    case 0x310: l->icr_hi = v; break;
    case 0x300: { /* ICR low: send the IPI (SDM 11.6.1) */
        l->icr_lo = v;
        int mode = (v >> 8) & 7, vec = v & 0xff;
        int logical = !!(v & 0x800), level = !!(v & 0x4000), trig = !!(v & 0x8000);
        int sh = (v >> 18) & 3;
        if (mode == 5 && !level && trig) break;   /* INIT level de-assert: no-op */
        deliver(c->vm, c->vcpuid, l->icr_hi >> 24, logical, mode, vec, 0, sh);
        c->irq_pending = 1;
        break; }
    case 0x320: case 0x330: case 0x340: case 0x350: case 0x360: case 0x370:
        l->lvt[1 + ((off - 0x320) >> 4)] = v; break;
    case 0x380: l->timer_icr = v; break;   /* TODO(M2): timer */
    case 0x3e0: l->timer_dcr = v & 0xb; break;
    }
}
