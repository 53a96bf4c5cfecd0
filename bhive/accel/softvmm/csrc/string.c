/*
 * String instructions (MOVS/STOS/LODS/CMPS/SCAS/INS/OUTS with REP) and
 * port I/O.  A REP instruction commits each element (RCX/RSI/RDI) so a
 * fault or an I/O exit in the middle leaves a restartable state (SDM Vol 1
 * 7.3.9.2: "repeat string operations are interruptible").
 */
#include <string.h>
#include "mem.h"
#include "handlers.h"

#define REP_CHUNK 16384   /* elements per execution before re-checking events */

static inline int str_step(cpu_t *c, int sz) { return (c->rflags & F_DF) ? -sz : sz; }
static inline void idx_add(cpu_t *c, int r, int asz, int64_t d)
{
    setreg(c, r, asz, getreg(c, r, asz) + (uint64_t)d);
}
static inline void elem_done(cpu_t *c) { if (unlikely(c->io_n)) { c->io_n = 0; c->io_pos = 0; } }

/* Generic REP driver: runs `body` for each element; returns when done or the chunk ran out. */
#define REP_LOOP(c, i, BODY, TERMINATE)                                   \
    do {                                                                  \
        int asz_ = (i)->asz;                                              \
        if (!(i)->rep) { BODY; break; }                                   \
        for (int n_ = 0;; n_++) {                                         \
            if (getreg(c, R_RCX, asz_) == 0) {                            \
                /* ECX = 0 with a 32-bit address size: the CPU writes ECX \
                 * anyway, clearing RCX[63:32], and MOVS/STOS their index \
                 * registers (seen on KVM; h_movs, h_stos) */              \
                if (asz_ == 4) setreg(c, R_RCX, 4, 0);                    \
                break;                                                    \
            }                                                             \
            if (n_ == REP_CHUNK) { c->nrip = c->rip; c->brk = 1; break; } \
            BODY;                                                         \
            idx_add(c, R_RCX, asz_, -1);                                  \
            elem_done(c);                                                 \
            if (TERMINATE) break;                                         \
        }                                                                 \
    } while (0)

/* ---- REP MOVS / REP STOS in 64-bit mode, a page at a time ----------------
 * memcpy()/memset() of a kernel are REP MOVS/STOS: element by element
 * through the TLB costs ~10 ns each.  While source and destination pages
 * are in the TLB (the fast-path tags carry the access rights), a whole
 * page's worth of elements goes at once; what remains (a TLB miss, an
 * element that crosses a page, MMIO) takes one element the ordinary way,
 * which also refills the TLB, and the page loop resumes.  The elements of
 * a fast string operation may be stored out of order (SDM Vol 1 7.3.9.3),
 * which is what memcpy/memset do; an overlap that a forward copy must
 * replicate is copied forward. */
static inline uint8_t *tlb_host(cpu_t *c, uint64_t lin, int write, uint32_t *gidx)
{
    tlbe_t *e = &c->tlb[tlb_slot(lin)];
    if ((write ? e->tag_w : e->tag_r) != (lin & ~0xfffULL)) return NULL;
    if (gidx) *gidx = e->gidx;
    return (uint8_t *)(e->addend + lin);
}
static inline uint64_t page_elems(uint64_t lin, int sz)
{
    return (lin & (sz - 1)) ? 0 : (0x1000 - (lin & 0xfff)) / sz;
}
static void after_store(cpu_t *c, uint32_t gidx)
{
    __atomic_signal_fence(__ATOMIC_SEQ_CST);   /* store, then check (see mem_write) */
    if (unlikely(__atomic_load_n(&c->vm->gen[gidx], __ATOMIC_RELAXED) & 1)) code_written(c, gidx);
}
static uint64_t stos_pages(cpu_t *c, int sz, uint64_t v, uint64_t budget)
{
    uint64_t done = 0;
    while (c->r[R_RCX] && done < budget) {
        uint32_t gidx;
        uint64_t lin = c->r[R_RDI], n = page_elems(lin, sz);
        uint8_t *h = tlb_host(c, lin, 1, &gidx);
        if (!h || !n) break;
        if (n > c->r[R_RCX]) n = c->r[R_RCX];
        switch (sz) {
        case 1: memset(h, (int)v, n); break;
        case 2: for (uint64_t k = 0; k < n; k++) ((uint16_t *)h)[k] = (uint16_t)v; break;
        case 4: for (uint64_t k = 0; k < n; k++) ((uint32_t *)h)[k] = (uint32_t)v; break;
        default: for (uint64_t k = 0; k < n; k++) ((uint64_t *)h)[k] = v; break;
        }
        after_store(c, gidx);
        c->r[R_RDI] += n * sz; c->r[R_RCX] -= n; done += n;
    }
    return done;
}
static uint64_t movs_pages(cpu_t *c, int seg, int sz, uint64_t budget)
{
    uint64_t done = 0;
    while (c->r[R_RCX] && done < budget) {
        uint32_t gidx;
        uint64_t src = lin_addr(c, seg, c->r[R_RSI]), dst = c->r[R_RDI];
        uint64_t n = page_elems(src, sz), nd = page_elems(dst, sz);
        const uint8_t *hs = tlb_host(c, src, 0, NULL);
        uint8_t *hd = tlb_host(c, dst, 1, &gidx);
        if (!hs || !hd || !n || !nd) break;
        if (nd < n) n = nd;
        if (n > c->r[R_RCX]) n = c->r[R_RCX];
        size_t bytes = n * (size_t)sz;
        if (hd > hs && hd < hs + bytes) {
            for (size_t k = 0; k < bytes; k += sz) memcpy(hd + k, hs + k, sz);   /* forward, as the guest would */
        } else {
            memmove(hd, hs, bytes);
        }
        after_store(c, gidx);
        c->r[R_RSI] += bytes; c->r[R_RDI] += bytes; c->r[R_RCX] -= n; done += n;
    }
    return done;
}
/* the page-at-a-time path applies: REP, 64-bit addressing in 64-bit mode, DF = 0 */
static inline int rep_pages_ok(cpu_t *c, const insn_t *i)
{
    return i->rep && c->long64 && i->asz == 8 && !(c->rflags & F_DF);
}

HANDLER(h_movs)
{
    int sz = i->osz, as = i->asz;
    int64_t d = str_step(c, sz);
    if (rep_pages_ok(c, i)) {
        for (uint64_t n = 0; c->r[R_RCX]; n++) {
            if (n >= REP_CHUNK) { c->nrip = c->rip; c->brk = 1; return; }
            n += movs_pages(c, i->seg, sz, REP_CHUNK - n);
            if (!c->r[R_RCX]) break;
            uint64_t v = ld(c, i->seg, c->r[R_RSI], sz);
            st(c, S_ES, c->r[R_RDI], sz, v);
            c->r[R_RSI] += sz; c->r[R_RDI] += sz; c->r[R_RCX]--;
            elem_done(c);
        }
        return;
    }
    if (as == 4 && i->rep && !(uint32_t)c->r[R_RCX]) {   /* as the CPU does (REP_LOOP): ESI/EDI written too */
        setreg(c, R_RSI, 4, c->r[R_RSI]); setreg(c, R_RDI, 4, c->r[R_RDI]);
    }
    REP_LOOP(c, i, {
        uint64_t v = ld(c, i->seg, getreg(c, R_RSI, as), sz);
        st(c, S_ES, getreg(c, R_RDI, as), sz, v);
        idx_add(c, R_RSI, as, d); idx_add(c, R_RDI, as, d);
    }, 0);
}
HANDLER(h_stos)
{
    int sz = i->osz, as = i->asz;
    int64_t d = str_step(c, sz);
    uint64_t v = getreg(c, 0, sz);
    if (rep_pages_ok(c, i)) {
        for (uint64_t n = 0; c->r[R_RCX]; n++) {
            if (n >= REP_CHUNK) { c->nrip = c->rip; c->brk = 1; return; }
            n += stos_pages(c, sz, v, REP_CHUNK - n);
            if (!c->r[R_RCX]) break;
            st(c, S_ES, c->r[R_RDI], sz, v);
            c->r[R_RDI] += sz; c->r[R_RCX]--;
            elem_done(c);
        }
        return;
    }
    if (as == 4 && i->rep && !(uint32_t)c->r[R_RCX]) setreg(c, R_RDI, 4, c->r[R_RDI]);   /* EDI written too */
    REP_LOOP(c, i, {
        st(c, S_ES, getreg(c, R_RDI, as), sz, v);
        idx_add(c, R_RDI, as, d);
    }, 0);
}
HANDLER(h_lods)
{
    int sz = i->osz, as = i->asz;
    int64_t d = str_step(c, sz);
    REP_LOOP(c, i, {
        setreg(c, 0, sz, ld(c, i->seg, getreg(c, R_RSI, as), sz));
        idx_add(c, R_RSI, as, d);
    }, 0);
}
/* CMPS and SCAS.  With REPE/REPNE the flags are set once, when the loop
 * stops without a fault: "When a fault occurs during the execution of a
 * CMPS or SCAS instruction that is prefixed with REPE or REPNE, the EFLAGS
 * value is restored to the state prior to the execution of the
 * instruction" (SDM Vol 2B, REP/REPE/REPNE).  A fault is a longjmp out of
 * ld(), so flags not yet written are flags restored. */
static void compare_string(cpu_t *c, const insn_t *i, int cmps)
{
    int sz = i->osz, as = i->asz;
    int64_t d = str_step(c, sz);
    uint64_t a = cmps ? 0 : getreg(c, 0, sz), b = 0;
    int n = 0;
    for (;; n++) {
        if (i->rep && getreg(c, R_RCX, as) == 0) {
            if (as == 4) setreg(c, R_RCX, 4, 0);    /* as REP_LOOP: the CPU writes ECX anyway */
            break;
        }
        if (n == REP_CHUNK) { c->nrip = c->rip; c->brk = 1; break; }
        if (cmps) a = ld(c, i->seg, getreg(c, R_RSI, as), sz);
        b = ld(c, S_ES, getreg(c, R_RDI, as), sz);
        if (cmps) idx_add(c, R_RSI, as, d);
        idx_add(c, R_RDI, as, d);
        if (!i->rep) { n++; break; }
        idx_add(c, R_RCX, as, -1);
        elem_done(c);
        if ((i->rep == 0xf3) ? a != b : a == b) { n++; break; }   /* REPE stops on ZF=0, REPNE on ZF=1 */
    }
    if (n) lf_set(c, LF_SUB, sz, a, b, a - b);
}
HANDLER(h_cmps) { compare_string(c, i, 1); }
HANDLER(h_scas) { compare_string(c, i, 0); }
HANDLER(h_ins)
{
    int sz = i->osz, as = i->asz;
    int64_t d = str_step(c, sz);
    uint16_t port = (uint16_t)c->r[R_RDX];
    io_check(c, port, sz);
    REP_LOOP(c, i, {
        uint64_t v = 0;
        uint64_t lin = lin_wr(c, S_ES, getreg(c, R_RDI, as), sz);
        /* probe the destination first so a #PF is taken before the port is read */
        mem_write(c, lin, sz, mem_read(c, lin, sz));
        pio_access(c, port, sz, 0, &v);
        mem_write(c, lin, sz, v);
        idx_add(c, R_RDI, as, d);
    }, 0);
}
HANDLER(h_outs)
{
    int sz = i->osz, as = i->asz;
    int64_t d = str_step(c, sz);
    uint16_t port = (uint16_t)c->r[R_RDX];
    io_check(c, port, sz);
    REP_LOOP(c, i, {
        uint64_t v = ld(c, i->seg, getreg(c, R_RSI, as), sz);
        pio_access(c, port, sz, 1, &v);
        idx_add(c, R_RSI, as, d);
    }, 0);
}

/* IN/OUT: E4-E7 (imm8 port), EC-EF (DX) */
HANDLER(h_inout)
{
    int sz = i->osz;
    uint16_t port = (i->op & 8) ? (uint16_t)c->r[R_RDX] : (uint16_t)(i->imm & 0xff);
    io_check(c, port, sz);
    uint64_t v;
    if (i->op & 2) {
        v = getreg(c, 0, sz);
        pio_access(c, port, sz, 1, &v);
    } else {
        pio_access(c, port, sz, 0, &v);
        setreg(c, 0, sz, v);   /* AL/AX merge, EAX zero-extends into RAX */
    }
}
