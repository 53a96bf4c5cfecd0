/*
 * The run loop and the public API.  vm_run executes predecoded blocks
 * (looked up by guest-physical address, validated against the shared page
 * generation counters) until an exit that needs the VMM; events from other
 * vCPUs/devices arrive through the platform shm and are checked at block
 * boundaries.  Waits (HLT, wait-for-SIPI) are bounded futex waits.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sys/mman.h>
#include <linux/membarrier.h>
#include <x86intrin.h>
#include "mem.h"
#include "handlers.h"

#define WAIT_NS 50000000L   /* bounded internal waits: return BOGUS after 50 ms */

/* ---- VM ---------------------------------------------------------------------- */
uint64_t svm_shm_size(int ncpus, uint64_t ram_size)
{
    uint64_t pages = (ram_size + 4095) / 4096;
    uint64_t sz = 4096 + (uint64_t)ncpus * LAPIC_STRIDE + pages * 4;
    return (sz + 4095) & ~4095ULL;
}

svm_vm_t *svm_vm_open(void *ram, uint64_t ram_size, const uint64_t *slots, int nslots,
                      void *shm, int ncpus, uint32_t flags)
{
    if (nslots > MAX_SLOTS || ncpus < 1 || ncpus > 255) return NULL;
    svm_vm_t *vm = calloc(1, sizeof(*vm));
    if (!vm) return NULL;
    vm->ram = ram; vm->ram_size = ram_size; vm->nslots = nslots;
    for (int k = 0; k < nslots; k++) {
        vm->slots[k].gpa = slots[3 * k]; vm->slots[k].size = slots[3 * k + 1]; vm->slots[k].off = slots[3 * k + 2];
    }
    vm->shm = shm; vm->ncpus = ncpus; vm->flags = flags;
    for (int k = 0; k < 7; k++) vm->cpuid_mask[k] = ~0u;   /* "max": all that cpuid.c advertises */
    shm_hdr_t *h = (shm_hdr_t *)shm;
    /* the first process to open the VM lays out the shm; the others wait for it */
    uint32_t zero = 0;
    if (__atomic_compare_exchange_n(&h->magic, &zero, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
        h->ncpus = (uint32_t)ncpus;
        h->ram_pages = (ram_size + 4095) / 4096;
        h->lapic_off = 4096;
        h->gen_off = 4096 + (uint64_t)ncpus * LAPIC_STRIDE;
        h->tsc_hz = tsc_calibrate();   /* one factor for every process (tsc.c) */
        for (int k = 0; k < ncpus; k++) lapic_reset(vm, k, k == 0);
        __atomic_store_n(&h->magic, SHM_MAGIC, __ATOMIC_SEQ_CST);
    } else {
        while (__atomic_load_n(&h->magic, __ATOMIC_SEQ_CST) != SHM_MAGIC) __builtin_ia32_pause();
    }
    /* cross-modifying code: a decoder marking a page as code uses an
     * asymmetric barrier (membarrier) so that guest stores, which only
     * check the page's code bit after a compiler barrier, never miss it */
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0)
        vm->membarrier_cmd = MEMBARRIER_CMD_GLOBAL_EXPEDITED;
    else
        vm->membarrier_cmd = 0;
    vm->gen = (uint32_t *)((uint8_t *)shm + h->gen_off);
    vm->ram_pages = h->ram_pages;
    return vm;
}

void svm_vm_close(svm_vm_t *vm) { free(vm); }

/* ---- vCPU ----------------------------------------------------------------------- */
svm_cpu_t *svm_cpu_open(svm_vm_t *vm, int vcpuid)
{
    if (vcpuid < 0 || vcpuid >= vm->ncpus) return NULL;
    svm_cpu_t *c = aligned_alloc(64, (sizeof(svm_cpu_t) + 63) & ~63UL);
    if (!c) return NULL;
    memset(c, 0, sizeof(*c));
    c->bhash = calloc(BHASH_SIZE, sizeof(block_t *));
    c->scratch = calloc(1, sizeof(block_t) + BLK_MAX * sizeof(insn_t));
    c->barena = mmap(NULL, BARENA_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
    if (!c->bhash || !c->scratch || c->barena == MAP_FAILED) {
        if (c->barena != MAP_FAILED) munmap(c->barena, BARENA_BYTES);
        free(c->bhash); free(c->scratch); free(c);
        return NULL;
    }
    c->scratch->gpa = ~0ULL;
    c->vm = vm; c->vcpuid = vcpuid; c->lapic = vm_lapic(vm, vcpuid);
    c->exc_vec = -1;
    c->prof_next = ~0ULL;
    epoch_bump(c);   /* distinct epochs for the two CPL classes from the start */
    cpu_reset(c);
    jit_open(c);
    return c;
}

void svm_cpu_close(svm_cpu_t *c)
{
    if (!c) return;
    munmap(c->barena, BARENA_BYTES);
    jit_close(c);
    pio_lanes_free(c);
    free(c->bhash); free(c->scratch); free(c);
}

void svm_activate(svm_cpu_t *c)
{
    lapic_t *l = c->lapic;
    if (c->vcpuid == 0) __atomic_store_n(&l->state, LS_RUN, __ATOMIC_SEQ_CST);
    else {
        uint32_t off = LS_OFF;
        __atomic_compare_exchange_n(&l->state, &off, LS_WAIT_SIPI, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
}

/* Guest RAM was written from outside a vCPU (DMA, loader): drop decoded
 * code for [gpa, gpa+len).  Callable from any thread of any process. */
void svm_invalidate(svm_vm_t *vm, uint64_t gpa, uint64_t len)
{
    if (!len) return;
    for (uint64_t p = gpa & ~0xfffULL; p < gpa + len; p += 4096) {
        uint32_t gidx;
        if (!gpa_host(vm, p, &gidx)) continue;
        uint32_t *g = &vm->gen[gidx];
        uint32_t v = __atomic_load_n(g, __ATOMIC_RELAXED);
        while (v & 1) {
            if (__atomic_compare_exchange_n(g, &v, v + 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) break;
        }
    }
}

/* KVM_SET_MP_STATE-like: 1 = runnable now, 0 = wait-for-SIPI (for loaders and tests) */
void svm_set_mp_state(svm_cpu_t *c, int runnable)
{
    __atomic_store_n(&c->lapic->state, runnable ? LS_RUN : LS_WAIT_SIPI, __ATOMIC_SEQ_CST);
    c->halted = 0;
}

void svm_kick(svm_vm_t *vm, int vcpuid)
{
    if (vcpuid < 0 || vcpuid >= vm->ncpus) return;
    lapic_t *l = vm_lapic(vm, vcpuid);
    __atomic_store_n(&l->kick, 1, __ATOMIC_SEQ_CST);
    lapic_wake(l);
}

void svm_lapic_msi(svm_vm_t *vm, uint64_t addr, uint32_t data) { lapic_msi(vm, addr, data); }

/* PAUSE (SDM Vol 2B) with pause-loop detection, like VMX PAUSE-loop exiting:
 * a vCPU that keeps spinning on PAUSE gives its host CPU away for a short,
 * growing interval (10 us .. 500 us), waking at once on any event for it
 * (IPI, MSI, kick) and never past its own timer deadline.  Without this, a
 * few spinning APs starve the other vCPU processes of host CPU (seed #4). */
static int futex_wait(uint32_t *addr, uint32_t val, long ns);
#define PAUSE_SPIN 64            /* PAUSEs in a row before backing off */
void cpu_pause(cpu_t *c)
{
    __builtin_ia32_pause();
    uint64_t now = __rdtsc();
    uint64_t hz = host_tsc_hz(c->vm);
    if (now - c->pause_last > hz / 50000) {   /* > 20 us since the last PAUSE: a new spin */
        c->pause_n = 0;
        c->pause_sleep_ns = 10000;
    }
    c->pause_last = now;
    if (++c->pause_n < PAUSE_SPIN) return;
    c->pause_n = 0;
    lapic_t *l = c->lapic;
    long ns = c->pause_sleep_ns ? c->pause_sleep_ns : 10000;
    uint64_t tn = __atomic_load_n(&l->timer_next, __ATOMIC_RELAXED);
    if (tn != LAPIC_NEVER) {
        if (tn <= now) ns = 0;
        else {
            uint64_t left = (uint64_t)((unsigned __int128)(tn - now) * 1000000000u / hz);
            if ((uint64_t)ns > left) ns = (long)left;
        }
    }
    if (ns > 0 && !__atomic_load_n(&l->event, __ATOMIC_SEQ_CST)) futex_wait(&l->event, 0, ns);
    if (c->pause_sleep_ns < 500000) c->pause_sleep_ns *= 2;
    c->pause_last = __rdtsc();
    c->brk = 1;   /* look at events / the timer now */
}

void svm_stats(svm_cpu_t *c, uint64_t *insns, uint64_t *exits) { *insns = c->icount; *exits = c->nexits; }

void svm_cache_stats(svm_cpu_t *c, uint64_t *out)
{
    out[0] = c->nlookups; out[1] = c->ndecodes; out[2] = c->bflushes; out[3] = c->barena_used;
    out[4] = c->epoch;
    jit_stats(c, out + 5);
}

void svm_profile(svm_cpu_t *c, uint64_t *buf, uint32_t cap, uint64_t period)
{
    c->prof_buf = buf; c->prof_cap = cap; c->prof_period = period ? period : 1; c->prof_n = 0;
    c->prof_next = buf && cap ? c->icount + c->prof_period : ~0ULL;
}
uint64_t svm_profile_count(svm_cpu_t *c) { return c->prof_n; }

static void profile_sample(cpu_t *c)
{
    c->prof_buf[c->prof_n++ % c->prof_cap] = c->rip;
    c->prof_next = c->icount + c->prof_period;
}
void svm_cpuid(svm_cpu_t *c, uint32_t leaf, uint32_t sub, uint32_t *o) { do_cpuid(c, leaf, sub, o); }

static int futex_wait(uint32_t *addr, uint32_t val, long ns)
{
    struct timespec ts = { ns / 1000000000L, ns % 1000000000L };
    return (int)syscall(SYS_futex, addr, FUTEX_WAIT, val, &ts, NULL, 0);
}

/* ---- block lookup and execution ------------------------------------------------- */
static block_t *lookup_block(cpu_t *c);

/* Drop every decoded block (and the native code made from them). */
void block_cache_flush(cpu_t *c)
{
    memset(c->bhash, 0, BHASH_SIZE * sizeof(block_t *));
    c->barena_used = 0;
    c->bflushes++;
    epoch_bump(c);   /* every chain link pointed into the arena */
    jit_reset(c);
}

/* Copy a freshly decoded block from the scratch block into the arena and
 * hash it; a full arena drops the whole cache first. */
static block_t *cache_block(cpu_t *c, block_t **bucket)
{
    block_t *s = c->scratch;
    size_t size = (sizeof(block_t) + s->n * sizeof(insn_t) + 15) & ~(size_t)15;
    if (unlikely(c->barena_used + size > BARENA_BYTES || jit_flush_needed(c))) block_cache_flush(c);
    block_t *b = (block_t *)(c->barena + c->barena_used);
    c->barena_used += size;
    c->ndecodes++;
    memcpy(b, s, sizeof(block_t) + s->n * sizeof(insn_t));
    b->link[0].blk = b->link[1].blk = NULL;
    b->link[0].rip = b->link[1].rip = ~0ULL;
    b->hits = 0; b->jit_next = 0; b->jit[0] = b->jit[1] = NULL;
    b->next = *bucket;
    *bucket = b;
    return b;
}

static inline block_t *get_block(cpu_t *c)
{
    c->nrip = c->rip;
    /* the jump cache: a return or indirect jump to a recent target costs
     * one probe (QEMU's tb_jmp_cache) */
    jcache_ent_t *j = &c->jcache[(c->rip ^ (c->rip >> 12)) & (JCACHE_SIZE - 1)];
    if (likely(j->rip == c->rip && j->epoch == c->epoch && block_current(c, j->blk))) return j->blk;
    block_t *b = lookup_block(c);
    j->rip = c->rip; j->blk = b; j->epoch = c->epoch;
    return b;
}

/* A block whose last instruction runs into the next page: that page must
 * still hold the same bytes and be mapped where it was when decoded. */
static int second_page_ok(cpu_t *c, const block_t *b, uint64_t lin)
{
    if (b->gen2 != __atomic_load_n(&c->vm->gen[b->gidx2], __ATOMIC_RELAXED)) return 0;
    uint64_t lin2 = (lin & ~0xfffULL) + 0x1000, gpa2;
    if (!c->long64) lin2 = (uint32_t)lin2;
    tlbe_t *e = &c->tlb[tlb_slot(lin2)];
    if (e->tag_x == lin2) gpa2 = e->gpa;
    else if (fetch_translate(c, lin2, &gpa2, 0) != 0) return 0;
    return (gpa2 & ~0xfffULL) == b->gpa2;
}

/* Remember whether this epoch runs code from a non-global translation
 * (see tlb_flush_nonglobal); the TLB holds the translation just used. */
static inline void note_code_pages(cpu_t *c, const block_t *b, uint64_t lin)
{
    const tlbe_t *e = &c->tlb[tlb_slot(lin)];
    if (!e->glob || e->page != (lin & ~0xfffULL)) c->code_local_epoch = c->epoch;
    note_code_page(c, lin, b->gpa);
    if (b->gpa2 != ~0ULL) {
        uint64_t lin2 = (lin & ~0xfffULL) + 0x1000;
        const tlbe_t *e2 = &c->tlb[tlb_slot(lin2)];
        if (!e2->glob || e2->page != lin2) c->code_local_epoch = c->epoch;
        note_code_page(c, lin2, b->gpa2);
    }
}

static block_t *lookup_block(cpu_t *c)
{
    c->nlookups++;
    uint64_t lin = c->segbase[S_CS] + c->rip;
    if (!c->long64) lin = (uint32_t)lin;
    tlbe_t *e = &c->tlb[tlb_slot(lin)];
    uint64_t gpa;
    if (likely(e->tag_x == (lin & ~0xfffULL))) gpa = e->gpa | (lin & 0xfff);
    else fetch_translate(c, lin, &gpa, 1);
    block_t **bucket = &c->bhash[(uint32_t)((gpa * 0x9E3779B97F4A7C15ULL) >> 40) & (BHASH_SIZE - 1)];
    for (block_t **pp = bucket, *b; (b = *pp) != NULL; pp = &b->next) {
        if (b->gpa == gpa && b->key == c->csz) {
            if (likely(b->gen == __atomic_load_n(&c->vm->gen[b->gidx], __ATOMIC_RELAXED)) &&
                (b->gpa2 == ~0ULL || second_page_ok(c, b, lin))) {
                note_code_pages(c, b, lin);
                return b;
            }
            *pp = b->next;   /* stale: its page was written; the arena space is reclaimed at the next flush */
            break;
        }
    }
    decode_block(c, c->scratch, lin, gpa, 0);
    block_t *nb = cache_block(c, bucket);
    note_code_pages(c, nb, lin);
    return nb;
}

static inline void exec_block(cpu_t *c, const block_t *b, int max)
{
    int n = b->n;
    const insn_t *in = b->insns;
    if (unlikely(max < n)) {
        n = max;
        for (int k = 0; k < n; k++, in++) {
            c->nrip = c->rip + in->len;
            in->fn(c, in);
            c->rip = c->nrip;
            c->icount += in->ninsn;
            if (unlikely(c->brk)) return;
        }
        return;
    }
    for (int k = 0; k < n; k++, in++) {
        c->nrip = c->rip + in->len;
        in->fn(c, in);
        c->rip = c->nrip;
        if (unlikely(c->brk)) { c->icount += k + 1; return; }
    }
    c->icount += b->ninsn;
}

enum { EV_CONTINUE = 0, EV_BOGUS = 1 };

/* Events at an instruction boundary: kick, INIT/SIPI, NMI, interrupts, HLT waits. */
static int handle_events(cpu_t *c)
{
    lapic_t *l = c->lapic;
    uint64_t wait_end = 0;
    for (;;) {
        int kicked = 0;
        if (__atomic_load_n(&l->event, __ATOMIC_SEQ_CST)) {
            __atomic_store_n(&l->event, 0, __ATOMIC_SEQ_CST);
            c->irq_pending = 1;
            if (__atomic_exchange_n(&l->kick, 0, __ATOMIC_SEQ_CST)) kicked = 1;
            if (__atomic_exchange_n(&l->init, 0, __ATOMIC_SEQ_CST)) {
                /* INIT (SDM Vol 3A 11.4.4 / Table 10-1): APs go to wait-for-SIPI */
                cpu_reset(c);
                lapic_init_reset(l);   /* SDM 11.4.7.3: all but APIC ID / base */
                c->init_seen = 1;
                c->halted = 0;
                if (c->vcpuid != 0) __atomic_store_n(&l->state, LS_WAIT_SIPI, __ATOMIC_SEQ_CST);
            }
            uint32_t st = __atomic_load_n(&l->state, __ATOMIC_SEQ_CST);
            uint32_t sipi = __atomic_exchange_n(&l->sipi, 0, __ATOMIC_SEQ_CST);
            if (sipi && st == LS_WAIT_SIPI && c->init_seen) {
                cpu_do_sipi(c, sipi & 0xff);
                c->init_seen = 0;
                __atomic_store_n(&l->state, LS_RUN, __ATOMIC_SEQ_CST);
            }
        }
        if (kicked) return EV_BOGUS;
        uint32_t st = __atomic_load_n(&l->state, __ATOMIC_SEQ_CST);
        if (st != LS_RUN) {
            if (futex_wait(&l->event, 0, WAIT_NS) != 0 && !__atomic_load_n(&l->event, __ATOMIC_SEQ_CST))
                return EV_BOGUS;
            continue;
        }
        /* NMI */
        if (__atomic_load_n(&l->nmi, __ATOMIC_RELAXED) && !c->nmi_blocked) {
            if (!c->shadow) {
                __atomic_store_n(&l->nmi, 0, __ATOMIC_SEQ_CST);
                deliver_event(c, EX_NMI, EV_NMI, 0, 0, c->rip);
                return EV_CONTINUE;
            }
            /* held by a MOV SS / STI shadow: look again after that instruction */
            __atomic_store_n(&l->event, 1, __ATOMIC_SEQ_CST);
        }
        if (c->irq_pending && (c->rflags & F_IF) && !c->shadow) {
            uint32_t ext = __atomic_load_n(&l->extint, __ATOMIC_RELAXED);
            if (ext) {
                __atomic_store_n(&l->extint, 0, __ATOMIC_SEQ_CST);
                deliver_event(c, ext & 0xff, EV_EXT, 0, 0, c->rip);
                return EV_CONTINUE;
            }
            int v = lapic_pending_vector(c);
            if (v >= 0) {
                lapic_accept(c, v);
                deliver_event(c, v, EV_EXT, 0, 0, c->rip);
                return EV_CONTINUE;
            }
            c->irq_pending = 0;
        }
        if (!c->halted) return EV_CONTINUE;
        /* HLT: wait for something deliverable, bounded by WAIT_NS and by the
         * LAPIC timer's next expiry (the timer wakes a halted vCPU) */
        uint64_t now = __rdtsc();
        if (!wait_end) wait_end = now + WAIT_NS / 1000 * (host_tsc_hz(c->vm) / 1000000);
        if (now >= wait_end) return EV_BOGUS;
        uint64_t until = wait_end, tn = __atomic_load_n(&l->timer_next, __ATOMIC_RELAXED);
        int timer_wait = 0;
        if (tn < until) { until = tn; timer_wait = 1; }
        if (until > now) {
            long ns = (long)((unsigned __int128)(until - now) * 1000000000u / host_tsc_hz(c->vm));
            futex_wait(&l->event, 0, ns > 0 ? ns : 1);
        }
        if (timer_wait) lapic_timer_poll(c);
    }
}

static int finish_exit(cpu_t *c, svm_exit_t *out)
{
    *out = c->exit;
    c->nexits++;
    return out->code;
}

int svm_run(svm_cpu_t *c, svm_exit_t *out)
{
    lapic_t *l = c->lapic;
    if (c->exit_queued) {
        c->exit_queued = 0;
        return finish_exit(c, out);
    }
    memset(&c->exit, 0, sizeof(c->exit));
    int r = setjmp(c->jb);
    if (r) jit_account(c);   /* a fault or exit from inside native code */
    if (r == AB_EXIT) {
        c->brk = 0;
        return finish_exit(c, out);
    }
    if (r == AB_FAULT) {   /* reuse as "fault pending" */
        c->exc_soft = 1; c->tf_trap = 0; c->dbg_hits = 0;
    }
    for (;;) {
        c->brk = 0;
        if (unlikely(c->exc_soft)) {
            c->exc_soft = 0;
            deliver_pending_fault(c);
            if (c->exit_queued) { c->exit_queued = 0; return finish_exit(c, out); }
            continue;
        }
        if (unlikely(__atomic_load_n(&l->timer_next, __ATOMIC_RELAXED) <= __rdtsc()))
            lapic_timer_poll(c);   /* LAPIC timer due: IRR + irq_pending */
        if (unlikely(__atomic_load_n(&l->event, __ATOMIC_RELAXED) || c->halted ||
                     (c->irq_pending && (c->rflags & F_IF) && !c->shadow) ||
                     __atomic_load_n(&l->state, __ATOMIC_RELAXED) != LS_RUN)) {
            if (handle_events(c) == EV_BOGUS) {
                c->exit.code = SVM_EXIT_BOGUS;
                c->exit.rip = c->rip;
                return finish_exit(c, out);
            }
            c->brk = 0;
        }
        int sh = c->shadow;
        if (unlikely((c->rflags & (F_TF | F_RF)) || c->dbg_step)) {
            /* single-step (SDM Vol 3A 18.3.1.4), armed breakpoints (debug.c)
             * or RF: one instruction, decoded alone (no macro-fused pairs).
             * An instruction breakpoint is a fault before it unless RF is set */
            if (c->dbg_exec && !(c->rflags & F_RF)) {
                uint64_t lin = c->segbase[S_CS] + c->rip;
                int hits = dbg_exec_hits(c, c->long64 ? lin : (uint32_t)lin);
                if (hits) {
                    c->dr[6] = (c->dr[6] & ~0xfULL) | (uint64_t)hits;
                    deliver_event(c, EX_DB, EV_HWEXC, 0, 0, c->rip);
                    continue;
                }
            }
            block_t *sb = get_block(c);
            if (sb->n > 1 || sb->insns[0].ninsn > 1) {
                uint64_t lin = c->segbase[S_CS] + c->rip, gpa;
                if (!c->long64) lin = (uint32_t)lin;
                fetch_translate(c, lin, &gpa, 1);
                decode_block(c, c->scratch, lin, gpa, 1);
                sb = c->scratch;
            }
            c->tf_trap = !!(c->rflags & F_TF); c->sw_event = 0; c->dbg_hits = 0;
            exec_block(c, sb, 1);
            if (sh) c->shadow = 0;
            /* RF ends with the instruction, unless it was an IRET that loaded it (SDM 17.3.1.1) */
            if (sb->insns[0].fn != h_iret) c->rflags &= ~(uint64_t)F_RF;
            /* single-step (then a #DB trap with DR6.BS unless the instruction
             * delivered a software interrupt, which clears TF; MOV SS / POP SS
             * hold it to the next instruction, SDM Vol 3A 6.8.3) and data/I/O
             * breakpoint hits: one #DB trap */
            int bs = c->tf_trap && !c->sw_event && c->shadow != SHADOW_MOVSS;
            if (bs || c->dbg_hits) {
                c->dr[6] = (c->dr[6] & ~0xfULL) | c->dbg_hits | (bs ? 0x4000 : 0);
                c->tf_trap = 0; c->dbg_hits = 0;
                deliver_event(c, EX_DB, EV_HWEXC, 0, 0, c->rip);
            }
            c->tf_trap = 0;
            if (unlikely(c->post_exit)) { c->post_exit = 0; return finish_exit(c, out); }
            continue;
        }
        block_t *b = get_block(c);
        if (unlikely(sh)) {
            exec_block(c, b, 1);
            c->shadow = 0;
        } else {
            /* run chained blocks while nothing needs attention */
            for (int chain = 0;; chain++) {
                void *site = NULL;   /* the native exit to patch once the successor is known */
                void *code = block_jit(b, c->rip);
                /* hot enough: translate it (jit.c) */
                if (unlikely(!code) && c->jit && ++b->hits >= c->jit_threshold)
                    code = jit_compile(c, b);
                if (code && jit_may_enter(c)) site = jit_exec(c, code);
                else exec_block(c, b, BLK_MAX);
                if (unlikely(c->icount >= c->prof_next)) profile_sample(c);
                if (unlikely(c->brk) || chain == 256 ||
                    __atomic_load_n(&l->event, __ATOMIC_RELAXED))
                    break;
                /* a cheap deadline check: one load when the timer is disarmed */
                uint64_t tn = __atomic_load_n(&l->timer_next, __ATOMIC_RELAXED);
                if (unlikely(tn != LAPIC_NEVER) && __rdtsc() >= tn)
                    break;
                struct blink *k = &b->link[0];
                if (k->rip != c->rip) k = &b->link[1];
                block_t *nb = k->blk;
                if (likely(k->rip == c->rip && k->epoch == c->epoch && block_current(c, nb))) {
                    if (site) jit_link(c, site, nb);
                    b = nb;
                    continue;
                }
                /* slow path: look the successor up and remember it */
                block_t *from = b;
                b = get_block(c);
                if (site) jit_link(c, site, b);
                else jit_jc_insert(c, b);
                struct blink *w = &from->link[from->link[0].blk && from->link[0].epoch == c->epoch ? 1 : 0];
                w->rip = c->rip; w->blk = b; w->epoch = c->epoch;
            }
        }
        if (unlikely(c->post_exit)) {
            c->post_exit = 0;
            return finish_exit(c, out);
        }
    }
}

/* ---- completion ------------------------------------------------------------------ */
/* Re-execute the instruction at RIP with the logged I/O values (exactly once). */
static void replay(cpu_t *c)
{
    int r = setjmp(c->jb);
    if (r) jit_account(c);   /* a fault or exit from inside native code */
    if (r == AB_EXIT) { c->exit_queued = 1; return; }
    if (r == AB_FAULT) { c->io_n = c->io_pos = 0; c->exc_soft = 1; return; }
    c->io_pos = 0;
    c->nrip = c->rip;
    uint64_t lin = c->segbase[S_CS] + c->rip;
    if (!c->long64) lin = (uint32_t)lin;
    uint64_t gpa;
    fetch_translate(c, lin, &gpa, 1);
    decode_block(c, c->scratch, lin, gpa, 1);
    c->brk = 0;
    exec_block(c, c->scratch, 1);
    c->io_n = c->io_pos = 0;
    c->brk = 0;
    if (c->tf_trap || c->dbg_hits) {   /* stepped instruction completed by the VMM: #DB trap */
        c->dr[6] = (c->dr[6] & ~0xfULL) | c->dbg_hits | (c->tf_trap ? 0x4000 : 0);
        c->tf_trap = 0; c->dbg_hits = 0;
        c->exc_vec = EX_DB; c->exc_has_err = 0; c->exc_err = 0; c->exc_soft = 1;
    }
    if (c->post_exit) { c->post_exit = 0; c->exit_queued = 1; }
}

void svm_complete_io(svm_cpu_t *c, uint64_t value)
{
    if (c->io_n >= IOLOG_MAX) return;
    ioent_t *e = &c->io[c->io_n];
    if (!e->is_write) e->val = value & szmask(e->size);
    c->io_n++;
    memset(&c->exit, 0, sizeof(c->exit));
    replay(c);
}

void svm_complete_msr(svm_cpu_t *c, uint64_t value, int gp)
{
    if (!c->msr_pending) return;
    c->msr_pending = 0;
    if (gp) {
        c->exc_vec = EX_GP; c->exc_has_err = 1; c->exc_err = 0; c->exc_soft = 1;
        return;
    }
    if (c->exit.code == SVM_EXIT_RDMSR) {
        c->r[R_RAX] = (uint32_t)value; c->r[R_RDX] = value >> 32;
    }
    c->rip += c->exit.inst_length;
}

int svm_inject_exception(svm_cpu_t *c, int vector, int has_err, uint32_t err)
{
    if (vector < 0 || vector > 31) return -1;
    c->exc_vec = vector; c->exc_has_err = (uint8_t)has_err; c->exc_err = err; c->exc_soft = 1;
    c->exc_cr2 = c->cr2;
    return 0;
}

/* ---- registers (FreeBSD vm_reg_name numbering) ---------------------------------- */
static const int8_t gpr_map[] = { R_RAX, R_RBX, R_RCX, R_RDX, R_RSI, R_RDI, R_RBP, 8, 9, 10, 11, 12, 13, 14, 15 };

uint64_t svm_get_reg(svm_cpu_t *c, int reg)
{
    if (reg >= 0 && reg <= 14) return c->r[gpr_map[reg]];
    switch (reg) {
    case 15: return c->cr0;
    case 16: return c->cr3;
    case 17: return c->cr4;
    case 18: return c->dr[7];
    case 19: return c->r[R_RSP];
    case 20: return c->rip;
    case 21: return get_rflags(c);
    case 22: case 23: case 24: case 25: case 26: case 27: case 28: case 29:
        return c->seg[reg - 22].sel;
    case 32: return c->efer;
    case 33: return c->cr2;
    case 38: return c->shadow;
    case 39: case 40: case 41: case 42: return c->dr[reg - 39];
    case 43: return c->dr[6];
    case 45: return c->seg[S_FS].base;
    }
    return 0;
}

int svm_set_reg(svm_cpu_t *c, int reg, uint64_t v)
{
    if (reg >= 0 && reg <= 14) { c->r[gpr_map[reg]] = v; return 0; }
    switch (reg) {
    case 15: c->cr0 = v | CR0_ET; break;
    case 16: c->cr3 = v; c->pdpte_valid = 0; break;
    case 17: c->cr4 = v; c->pdpte_valid = 0; break;
    case 18: c->dr[7] = v; dbg_update(c); break;
    case 19: c->r[R_RSP] = v; return 0;
    case 20: c->rip = v; c->io_n = c->io_pos = 0; return 0;
    case 21: set_rflags(c, v); c->irq_pending = 1; return 0;
    case 22: case 23: case 24: case 25: case 26: case 27: case 28: case 29:
        c->seg[reg - 22].sel = (uint16_t)v; break;
    case 32: c->efer = v; break;
    case 33: c->cr2 = v; return 0;
    case 38: c->shadow = v ? 1 : 0; return 0;
    case 39: case 40: case 41: case 42: c->dr[reg - 39] = v; dbg_update(c); return 0;
    case 43: c->dr[6] = v; return 0;
    case 45: c->seg[S_FS].base = v; break;
    default: return -1;
    }
    tlb_flush(c);
    update_mode(c);
    return 0;
}

int svm_get_desc(svm_cpu_t *c, int reg, uint64_t *base, uint32_t *limit, uint32_t *access, uint16_t *sel)
{
    if (reg >= 22 && reg <= 29) {
        seg_t *s = &c->seg[reg - 22];
        *base = s->base; *limit = s->limit; *access = s->access; *sel = s->sel;
        return 0;
    }
    if (reg == 30 || reg == 31) {
        *base = reg == 30 ? c->idtr.base : c->gdtr.base;
        *limit = reg == 30 ? c->idtr.limit : c->gdtr.limit;
        *access = 0; *sel = 0;
        return 0;
    }
    return -1;
}

int svm_set_desc(svm_cpu_t *c, int reg, uint64_t base, uint32_t limit, uint32_t access, uint16_t sel)
{
    if (reg >= 22 && reg <= 29) {
        seg_t *s = &c->seg[reg - 22];
        s->base = base; s->limit = limit; s->access = access; s->sel = sel;
    } else if (reg == 30) { c->idtr.base = base; c->idtr.limit = limit; }
    else if (reg == 31) { c->gdtr.base = base; c->gdtr.limit = limit; }
    else return -1;
    tlb_flush(c);
    update_mode(c);
    return 0;
}
