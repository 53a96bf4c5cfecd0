/*
 * Inline fast paths shared by the instruction handlers: registers,
 * effective addresses, guest-memory access through the TLB, stack, flags.
 *
 * Guest RAM is shared with other vCPU processes: every access goes through
 * a volatile pointer so the C compiler never tears, merges or reorders a
 * guest store (x86-TSO is then what the host gives us).
 */
#ifndef SOFTVMM_MEM_H
#define SOFTVMM_MEM_H
#include "cpu.h"

/* a 48-bit linear address sign-extended to 64 bits (SDM Vol 1 3.3.7.1) */
static inline int canonical(uint64_t v) { return (uint64_t)(((int64_t)v << 16) >> 16) == v; }
static inline uint64_t szmask(int sz)
{
    return sz == 8 ? ~0ULL : ((1ULL << (sz * 8)) - 1);
}
static inline uint64_t sext(uint64_t v, int sz)
{
    switch (sz) {
    case 1: return (uint64_t)(int64_t)(int8_t)v;
    case 2: return (uint64_t)(int64_t)(int16_t)v;
    case 4: return (uint64_t)(int64_t)(int32_t)v;
    default: return v;
    }
}

/* ---- registers --------------------------------------------------------- */
/* byte registers: 0..15 low bytes, 0x10|n (n<4) = AH,CH,DH,BH */
static inline uint64_t getreg(cpu_t *c, int r, int sz)
{
    switch (sz) {
    case 1:
        if (r & 0x10) return (c->r[r & 3] >> 8) & 0xff;
        return c->r[r] & 0xff;
    case 2: return c->r[r] & 0xffff;
    case 4: return c->r[r] & 0xffffffff;
    default: return c->r[r];
    }
}
static inline void setreg(cpu_t *c, int r, int sz, uint64_t v)
{
    switch (sz) {
    case 1:
        if (r & 0x10) c->r[r & 3] = (c->r[r & 3] & ~0xff00ULL) | ((v & 0xff) << 8);
        else c->r[r] = (c->r[r] & ~0xffULL) | (v & 0xff);
        break;
    case 2: c->r[r] = (c->r[r] & ~0xffffULL) | (v & 0xffff); break;
    case 4: c->r[r] = (uint32_t)v; break;      /* 32-bit writes zero-extend */
    default: c->r[r] = v;
    }
}

/* ---- effective address ------------------------------------------------- */
static inline uint64_t ea_off(cpu_t *c, const insn_t *i)
{
    uint64_t a = (uint64_t)(int64_t)i->disp;
    if (i->base < 16) a += c->r[i->base];
    else if (i->base == EA_RIP) a += c->nrip;
    if (i->index < 16) a += c->r[i->index] << i->scale;
    if (i->asz == 4) a = (uint32_t)a;
    else if (i->asz == 2) a = (uint16_t)a;
    return a;
}
/* Linear address of seg:off without any segment check: for addresses that
 * are not accessed (INVLPG).  Every access goes through lin_acc(). */
static inline uint64_t lin_addr(cpu_t *c, int seg, uint64_t off)
{
    uint64_t l = c->segbase[seg] + off;
    return c->long64 ? l : (uint32_t)l;
}
/* Linear address of an access of `size` bytes at seg:off (w: a write).
 * Outside 64-bit mode the segment's limit and type are checked (SDM Vol 3A
 * 5.3, 5.4): one compare against a bound precomputed at the segment load,
 * seg_check() for anything unusual.  64-bit mode does no limit checks
 * (SDM Vol 3A 5.3.1), so its path is the same single branch as before. */
static inline __attribute__((always_inline)) uint64_t lin_acc(cpu_t *c, int seg, uint64_t off, int size, int w)
{
    if (likely(c->long64)) return c->segbase[seg] + off;
    if (unlikely(off + (uint64_t)size > c->seg_end[w][seg])) return seg_check(c, seg, off, size, w);
    return (uint32_t)(c->segbase[seg] + off);
}
#define lin_rd(c, seg, off, size) lin_acc((c), (seg), (off), (size), 0)
#define lin_wr(c, seg, off, size) lin_acc((c), (seg), (off), (size), 1)
/* Extra access bits for the slow path of an access through `seg`: which of
 * #SS or #GP a non-canonical address raises in 64-bit mode.  Exact when the
 * segment is a compile-time constant (stack operations); otherwise
 * ACC_SEGQ, resolved by decoding the instruction only when such a fault
 * happens (mmu.c), so the fast path never keeps the segment around. */
#define SEG_ACC(seg) (__builtin_constant_p(seg) ? ((seg) == S_SS ? ACC_SS : 0) : ACC_SEGQ)

/* ---- memory ------------------------------------------------------------ */
static inline int user_acc(cpu_t *c) { return c->cpl == 3 ? ACC_U : 0; }

static inline uint64_t host_ld(const void *p, int size)
{
    switch (size) {
    case 1: return *(const volatile uint8_t *)p;
    case 2: return *(const volatile uint16_t *)p;
    case 4: return *(const volatile uint32_t *)p;
    default: return *(const volatile uint64_t *)p;
    }
}
static inline void host_st(void *p, int size, uint64_t v)
{
    switch (size) {
    case 1: *(volatile uint8_t *)p = (uint8_t)v; break;
    case 2: *(volatile uint16_t *)p = (uint16_t)v; break;
    case 4: *(volatile uint32_t *)p = (uint32_t)v; break;
    default: *(volatile uint64_t *)p = v;
    }
}

/* The _x forms take extra ACC_* bits (ACC_SS) for the slow path only. */
static inline uint64_t mem_read_x(cpu_t *c, uint64_t lin, int size, int xacc)
{
    tlbe_t *e = &c->tlb[tlb_slot(lin)];
    if (likely(e->tag_r == (lin & ~0xfffULL) && (lin & 0xfff) <= 0x1000u - size))
        return host_ld((void *)(e->addend + lin), size);
    return mem_read_slow(c, lin, size, user_acc(c) | xacc);
}
static inline void mem_write_x(cpu_t *c, uint64_t lin, int size, uint64_t v, int xacc)
{
    tlbe_t *e = &c->tlb[tlb_slot(lin)];
    if (likely(e->tag_w == (lin & ~0xfffULL) && (lin & 0xfff) <= 0x1000u - size)) {
        host_st((void *)(e->addend + lin), size, v);
        __atomic_signal_fence(__ATOMIC_SEQ_CST);   /* store, then check (see decode_block) */
        /* self/cross-modifying code: bump the page generation if decoded code lives there */
        if (unlikely(__atomic_load_n(&c->vm->gen[e->gidx], __ATOMIC_RELAXED) & 1))
            code_written(c, e->gidx);
        return;
    }
    mem_write_slow(c, lin, size, v, ACC_W | user_acc(c) | xacc);
}
/* Read the destination of a read-modify-write: the access is checked (and
 * faults, with W=1 in the #PF error code) as a write, like hardware does. */
static inline uint64_t mem_read_rmw_x(cpu_t *c, uint64_t lin, int size, int xacc)
{
    tlbe_t *e = &c->tlb[tlb_slot(lin)];
    if (likely(e->tag_w == (lin & ~0xfffULL) && (lin & 0xfff) <= 0x1000u - size))
        return host_ld((void *)(e->addend + lin), size);
    return mem_read_slow(c, lin, size, ACC_W | user_acc(c) | xacc);
}
static inline uint64_t mem_read(cpu_t *c, uint64_t lin, int size) { return mem_read_x(c, lin, size, 0); }
static inline void mem_write(cpu_t *c, uint64_t lin, int size, uint64_t v) { mem_write_x(c, lin, size, v, 0); }
static inline uint64_t mem_read_rmw(cpu_t *c, uint64_t lin, int size) { return mem_read_rmw_x(c, lin, size, 0); }
static inline uint64_t ld(cpu_t *c, int seg, uint64_t off, int size)
{
    return mem_read_x(c, lin_rd(c, seg, off, size), size, SEG_ACC(seg));
}
static inline void st(cpu_t *c, int seg, uint64_t off, int size, uint64_t v)
{
    mem_write_x(c, lin_wr(c, seg, off, size), size, v, SEG_ACC(seg));
}

/* ---- ModRM operands ---------------------------------------------------- */
static inline __attribute__((always_inline)) uint64_t rd_rm(cpu_t *c, const insn_t *i, int sz)
{
    if (i->mod == 3) return getreg(c, i->rm, sz);
    return ld(c, i->seg, ea_off(c, i), sz);
}
static inline __attribute__((always_inline)) uint64_t rd_rm_w(cpu_t *c, const insn_t *i, int sz)
{
    if (i->mod == 3) return getreg(c, i->rm, sz);
    return mem_read_rmw_x(c, lin_wr(c, i->seg, ea_off(c, i), sz), sz, SEG_ACC(i->seg));
}
static inline __attribute__((always_inline)) void wr_rm(cpu_t *c, const insn_t *i, int sz, uint64_t v)
{
    if (i->mod == 3) setreg(c, i->rm, sz, v);
    else st(c, i->seg, ea_off(c, i), sz, v);
}

/* ---- stack ------------------------------------------------------------- */
static inline uint64_t sp_get(cpu_t *c)
{
    return c->ssz == 8 ? c->r[R_RSP] : c->ssz == 4 ? (uint32_t)c->r[R_RSP] : (uint16_t)c->r[R_RSP];
}
static inline void sp_set(cpu_t *c, uint64_t v)
{
    if (c->ssz == 8) c->r[R_RSP] = v;
    else if (c->ssz == 4) c->r[R_RSP] = (uint32_t)v;
    else c->r[R_RSP] = (c->r[R_RSP] & ~0xffffULL) | (uint16_t)v;
}
static inline uint64_t sp_wrap(cpu_t *c, uint64_t v)
{
    return c->ssz == 8 ? v : c->ssz == 4 ? (uint32_t)v : (uint16_t)v;
}
/* push without committing RSP (commit with sp_set once nothing can fault) */
static inline void push(cpu_t *c, int sz, uint64_t v)
{
    uint64_t sp = sp_wrap(c, sp_get(c) - sz);
    st(c, S_SS, sp, sz, v);
    sp_set(c, sp);
}
static inline uint64_t pop(cpu_t *c, int sz)
{
    uint64_t sp = sp_get(c);
    uint64_t v = ld(c, S_SS, sp, sz);
    sp_set(c, sp + sz);
    return v;
}

/* ---- lazy flags -------------------------------------------------------- */
static inline void lf_set(cpu_t *c, int op, int sz, uint64_t s1, uint64_t s2, uint64_t res)
{
    c->lf_op = op; c->lf_sz = sz; c->lf_s1 = s1; c->lf_s2 = s2; c->lf_res = res;
}
static inline void flags_set_exact(cpu_t *c, uint64_t oszapc)
{
    c->rflags = (c->rflags & ~(uint64_t)F_OSZAPC) | (oszapc & F_OSZAPC);
    c->lf_op = LF_NONE;
}
static inline uint64_t get_cf(cpu_t *c)
{
    uint64_t m = szmask(c->lf_sz);
    switch (c->lf_op) {
    case LF_ADD: return (c->lf_res & m) < (c->lf_s1 & m);
    case LF_SUB: return (c->lf_s1 & m) < (c->lf_s2 & m);
    case LF_LOGIC: return 0;
    case LF_INC: case LF_DEC: return c->lf_cf;
    default: return flags_materialize(c) & F_CF;
    }
}
/* condition codes (Jcc/SETcc/CMOVcc low nibble) */
static inline __attribute__((always_inline)) int cond(cpu_t *c, int cc)
{
    if (likely(c->lf_op == LF_SUB)) {
        uint64_t m = szmask(c->lf_sz), a = c->lf_s1 & m, b = c->lf_s2 & m;
        int64_t sa = (int64_t)sext(a, c->lf_sz), sb = (int64_t)sext(b, c->lf_sz);
        switch (cc) {
        case 2: return a < b;
        case 3: return a >= b;
        case 4: return a == b;
        case 5: return a != b;
        case 6: return a <= b;
        case 7: return a > b;
        case 0xc: return sa < sb;
        case 0xd: return sa >= sb;
        case 0xe: return sa <= sb;
        case 0xf: return sa > sb;
        }
    }
    if (c->lf_op != LF_NONE) {
        uint64_t m = szmask(c->lf_sz);
        if (cc == 4) return (c->lf_res & m) == 0;
        if (cc == 5) return (c->lf_res & m) != 0;
    }
    return cond_slow(c, cc);
}

#endif
