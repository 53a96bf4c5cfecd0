/*
 * String instructions (MOVS/STOS/LODS/CMPS/SCAS/INS/OUTS with REP) and
 * port I/O.  A REP instruction commits each element (RCX/RSI/RDI) so a
 * fault or an I/O exit in the middle leaves a restartable state (SDM Vol 1
 * 7.3.9.2: "repeat string operations are interruptible").
 */
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
            if (getreg(c, R_RCX, asz_) == 0) break;                       \
            if (n_ == REP_CHUNK) { c->nrip = c->rip; c->brk = 1; break; } \
            BODY;                                                         \
            idx_add(c, R_RCX, asz_, -1);                                  \
            elem_done(c);                                                 \
            if (TERMINATE) break;                                         \
        }                                                                 \
    } while (0)

HANDLER(h_movs)
{
    int sz = i->osz, as = i->asz;
    int64_t d = str_step(c, sz);
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
HANDLER(h_cmps)
{
    int sz = i->osz, as = i->asz;
    int64_t d = str_step(c, sz);
    REP_LOOP(c, i, {
        uint64_t a = ld(c, i->seg, getreg(c, R_RSI, as), sz);
        uint64_t b = ld(c, S_ES, getreg(c, R_RDI, as), sz);
        lf_set(c, LF_SUB, sz, a, b, a - b);
        idx_add(c, R_RSI, as, d); idx_add(c, R_RDI, as, d);
    }, (i->rep == 0xf3) ? !cond(c, 4) : cond(c, 4));
}
HANDLER(h_scas)
{
    int sz = i->osz, as = i->asz;
    int64_t d = str_step(c, sz);
    uint64_t a = getreg(c, 0, sz);
    REP_LOOP(c, i, {
        uint64_t b = ld(c, S_ES, getreg(c, R_RDI, as), sz);
        lf_set(c, LF_SUB, sz, a, b, a - b);
        idx_add(c, R_RDI, as, d);
    }, (i->rep == 0xf3) ? !cond(c, 4) : cond(c, 4));
}
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
