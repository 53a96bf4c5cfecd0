/*
 * Integer ALU: lazy flags, arithmetic/logic, shifts, multiply/divide, bit
 * operations, moves and conversions.  LOCKed read-modify-writes are host
 * compare-and-swap loops on the shared guest RAM.
 */
#include "mem.h"
#include "handlers.h"
#include "gp_extensions.h"

static inline int parity8(uint64_t v) { return !__builtin_parity((unsigned)(v & 0xff)); }

/* Compute OSZAPC from the lazy state (SDM Vol 1 3.4.3.1, Appendix A). */
uint64_t flags_materialize(cpu_t *c)
{
    if (c->lf_op == LF_NONE) return c->rflags;
    int sz = c->lf_sz;
    uint64_t m = szmask(sz), sb = 1ULL << (sz * 8 - 1);
    uint64_t a = c->lf_s1 & m, b = c->lf_s2 & m, r = c->lf_res & m;
    uint64_t f = 0;
    int cf = 0, of = 0;
    switch (c->lf_op) {
    case LF_ADD: cf = r < a; of = !!(((a ^ r) & (b ^ r)) & sb); break;
    case LF_ADC: cf = c->lf_cf ? r <= a : r < a; of = !!(((a ^ r) & (b ^ r)) & sb); break;
    case LF_SUB: cf = a < b; of = !!(((a ^ b) & (a ^ r)) & sb); break;
    case LF_SBB: cf = c->lf_cf ? a <= b : a < b; of = !!(((a ^ b) & (a ^ r)) & sb); break;
    case LF_LOGIC: cf = 0; of = 0; break;
    case LF_INC: cf = c->lf_cf; of = r == sb; break;
    case LF_DEC: cf = c->lf_cf; of = r == sb - 1; break;
    case LF_NEG: cf = r != 0; of = r == sb; break;
    }
    if (cf) f |= F_CF;
    if (of) f |= F_OF;
    if (parity8(r)) f |= F_PF;
    if (r == 0) f |= F_ZF;
    if (r & sb) f |= F_SF;
    if (c->lf_op != LF_LOGIC && ((a ^ b ^ r) & 0x10)) f |= F_AF;
    c->rflags = (c->rflags & ~(uint64_t)F_OSZAPC) | f;
    c->lf_op = LF_NONE;
    return c->rflags;
}

int cond_slow(cpu_t *c, int cc)
{
    uint64_t f = flags_materialize(c);
    int r;
    switch (cc >> 1) {
    case 0: r = !!(f & F_OF); break;
    case 1: r = !!(f & F_CF); break;
    case 2: r = !!(f & F_ZF); break;
    case 3: r = !!(f & (F_CF | F_ZF)); break;
    case 4: r = !!(f & F_SF); break;
    case 5: r = !!(f & F_PF); break;
    case 6: r = !!(f & F_SF) != !!(f & F_OF); break;
    default: r = (!!(f & F_SF) != !!(f & F_OF)) || (f & F_ZF); break;
    }
    return (cc & 1) ? !r : r;
}

/* ---- the eight classic ALU operations ---------------------------------- */
/* op: 0 add 1 or 2 adc 3 sbb 4 and 5 sub 6 xor 7 cmp */
static inline uint64_t alu(cpu_t *c, int op, int sz, uint64_t a, uint64_t b, int cfin)
{
    uint64_t r;
    switch (op) {
    case 0: r = a + b; lf_set(c, LF_ADD, sz, a, b, r); break;
    case 1: r = a | b; lf_set(c, LF_LOGIC, sz, a, b, r); break;
    case 2: r = a + b + cfin; lf_set(c, LF_ADC, sz, a, b, r); c->lf_cf = cfin; break;
    case 3: r = a - b - cfin; lf_set(c, LF_SBB, sz, a, b, r); c->lf_cf = cfin; break;
    case 4: r = a & b; lf_set(c, LF_LOGIC, sz, a, b, r); break;
    case 6: r = a ^ b; lf_set(c, LF_LOGIC, sz, a, b, r); break;
    default: r = a - b; lf_set(c, LF_SUB, sz, a, b, r); break;
    }
    return r & szmask(sz);
}

static inline int cas(void *p, int sz, uint64_t *old, uint64_t nw)
{
    switch (sz) {
    case 1: { uint8_t o = (uint8_t)*old; int ok = __atomic_compare_exchange_n((uint8_t *)p, &o, (uint8_t)nw, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); *old = o; return ok; }
    case 2: { uint16_t o = (uint16_t)*old; int ok = __atomic_compare_exchange_n((uint16_t *)p, &o, (uint16_t)nw, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); *old = o; return ok; }
    case 4: { uint32_t o = (uint32_t)*old; int ok = __atomic_compare_exchange_n((uint32_t *)p, &o, (uint32_t)nw, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); *old = o; return ok; }
    default: return __atomic_compare_exchange_n((uint64_t *)p, old, nw, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
}

/* Unary/binary RMW kinds for the locked path */
enum { K_ALU0 = 0 /* ..7 */, K_INC = 8, K_DEC, K_NOT, K_NEG, K_XADD, K_XCHG, K_BTS, K_BTR, K_BTC };

static uint64_t rmw_compute(cpu_t *c, int kind, int sz, uint64_t a, uint64_t b, int cfin)
{
    uint64_t r, m = szmask(sz);
    switch (kind) {
    case K_INC: r = (a + 1) & m; lf_set(c, LF_INC, sz, a, 1, r); c->lf_cf = cfin; return r;
    case K_DEC: r = (a - 1) & m; lf_set(c, LF_DEC, sz, a, 1, r); c->lf_cf = cfin; return r;
    case K_NOT: return ~a & m;
    case K_NEG: r = (0 - a) & m; lf_set(c, LF_NEG, sz, 0, a, r); return r;
    case K_XADD: r = (a + b) & m; lf_set(c, LF_ADD, sz, a, b, r); return r;
    case K_XCHG: return b & m;
    case K_BTS: return a | (1ULL << b);
    case K_BTR: return a & ~(1ULL << b);
    case K_BTC: return a ^ (1ULL << b);
    default: return alu(c, kind, sz, a, b, cfin);
    }
}

static uint64_t rmw_at(cpu_t *c, uint64_t lin, int sz, int kind, uint64_t b, int cfin, int atomic, int xacc);
/* Read-modify-write of the r/m operand; returns the old value.  LOCK (or
 * XCHG with memory) makes it a host atomic on shared RAM (SDM 8.1.2). */
static uint64_t rmw(cpu_t *c, const insn_t *i, int sz, int kind, uint64_t b, int cfin, int atomic)
{
    if (i->mod == 3) {
        uint64_t a = getreg(c, i->rm, sz);
        uint64_t r = rmw_compute(c, kind, sz, a, b, cfin);
        if (kind != K_ALU0 + 7) setreg(c, i->rm, sz, r);
        return a;
    }
    int cmp = kind == K_ALU0 + 7;
    uint64_t lin = lin_acc(c, i->seg, ea_off(c, i), sz, !cmp);
    if (cmp) {   /* CMP: read only */
        uint64_t a = mem_read_x(c, lin, sz, SEG_ACC(i->seg));
        alu(c, 7, sz, a, b, 0);
        return a;
    }
    return rmw_at(c, lin, sz, kind, b, cfin, atomic, SEG_ACC(i->seg));
}
static uint64_t rmw_at(cpu_t *c, uint64_t lin, int sz, int kind, uint64_t b, int cfin, int atomic, int xacc)
{
    if (atomic) {
        void *p = mem_host_rmw(c, lin, sz);
        if (p) {
            uint64_t old = host_ld(p, sz), nw;
            do {
                nw = rmw_compute(c, kind, sz, old, b, cfin);
            } while (!cas(p, sz, &old, nw));
            return old;
        }
    }
    uint64_t a = mem_read_rmw_x(c, lin, sz, xacc);
    uint64_t r = rmw_compute(c, kind, sz, a, b, cfin);
    mem_write(c, lin, sz, r);
    return a;
}

static inline int cf_now(cpu_t *c) { return (int)get_cf(c); }

/* 00-3F: ALU Eb,Gb / Ev,Gv / Gb,Eb / Gv,Ev / AL,Ib / rAX,Iz */
HANDLER(h_alu_rm_r)
{
    int op = (i->op >> 3) & 7, sz = i->osz;
    int cfin = (op == 2 || op == 3) ? cf_now(c) : 0;
    rmw(c, i, sz, op, getreg(c, i->reg, sz), cfin, i->lock);
}
HANDLER(h_alu_r_rm)
{
    int op = (i->op >> 3) & 7, sz = i->osz;
    uint64_t b = rd_rm(c, i, sz);
    int cfin = (op == 2 || op == 3) ? cf_now(c) : 0;
    uint64_t r = alu(c, op, sz, getreg(c, i->reg, sz), b, cfin);
    if (op != 7) setreg(c, i->reg, sz, r);
}
HANDLER(h_alu_a_imm)
{
    int op = (i->op >> 3) & 7, sz = i->osz;
    int cfin = (op == 2 || op == 3) ? cf_now(c) : 0;
    uint64_t r = alu(c, op, sz, getreg(c, 0, sz), i->imm & szmask(sz), cfin);
    if (op != 7) setreg(c, 0, sz, r);
}
/* 80/81/83 group 1 */
HANDLER(h_grp1)
{
    int op = i->ext, sz = i->osz;
    int cfin = (op == 2 || op == 3) ? cf_now(c) : 0;
    rmw(c, i, sz, op, i->imm & szmask(sz), cfin, i->lock);
}
/* TEST */
HANDLER(h_test_rm_r)
{
    int sz = i->osz;
    uint64_t r = rd_rm(c, i, sz) & getreg(c, i->reg, sz);
    lf_set(c, LF_LOGIC, sz, r, 0, r);
}
HANDLER(h_test_a_imm)
{
    int sz = i->osz;
    uint64_t r = getreg(c, 0, sz) & i->imm;
    lf_set(c, LF_LOGIC, sz, r, 0, r);
}
/* INC/DEC r (40-4F outside 64-bit mode) */
HANDLER(h_incdec_r)
{
    int sz = i->osz, r = i->op & 7;
    int cf = cf_now(c);
    uint64_t a = getreg(c, r, sz), res;
    if (i->op < 0x48) { res = (a + 1) & szmask(sz); lf_set(c, LF_INC, sz, a, 1, res); }
    else { res = (a - 1) & szmask(sz); lf_set(c, LF_DEC, sz, a, 1, res); }
    c->lf_cf = cf;
    setreg(c, r, sz, res);
}
/* FE/FF /0 /1 */
HANDLER(h_incdec_rm)
{
    int cf = cf_now(c);
    rmw(c, i, i->osz, i->ext == 0 ? K_INC : K_DEC, 0, cf, i->lock);
}

/* ---- group 3: F6/F7 ---------------------------------------------------- */
static void divide(cpu_t *c, const insn_t *i, int sz, int is_signed)
{
    uint64_t d = rd_rm(c, i, sz);
    if (d == 0) raise_exc(c, EX_DE, 0, 0);
    if (sz == 8) {
        unsigned __int128 n = ((unsigned __int128)c->r[R_RDX] << 64) | c->r[R_RAX];
        if (!is_signed) {
            unsigned __int128 q = n / d;
            if (q >> 64) raise_exc(c, EX_DE, 0, 0);
            c->r[R_RAX] = (uint64_t)q;
            c->r[R_RDX] = (uint64_t)(n % d);
        } else {
            __int128 sn = (__int128)n, sd = (int64_t)d;
            if (sd == -1 && sn == (__int128)((unsigned __int128)1 << 127)) raise_exc(c, EX_DE, 0, 0);
            __int128 q = sn / sd, rm = sn % sd;
            if (q > INT64_MAX || q < INT64_MIN) raise_exc(c, EX_DE, 0, 0);
            c->r[R_RAX] = (uint64_t)(int64_t)q;
            c->r[R_RDX] = (uint64_t)(int64_t)rm;
        }
        return;
    }
    int bits = sz * 8;
    uint64_t n;
    if (sz == 1) n = c->r[R_RAX] & 0xffff;
    else n = (getreg(c, R_RDX, sz) << bits) | getreg(c, R_RAX, sz);
    uint64_t m = szmask(sz);
    uint64_t q, rmd;
    if (!is_signed) {
        q = n / d; rmd = n % d;
        if (q > m) raise_exc(c, EX_DE, 0, 0);
    } else {
        int64_t sn = (int64_t)sext(n, sz * 2), sd = (int64_t)sext(d, sz);
        int64_t sq = sn / sd, sr = sn % sd;
        int64_t lim = (int64_t)1 << (bits - 1);
        if (sq >= lim || sq < -lim) raise_exc(c, EX_DE, 0, 0);
        q = (uint64_t)sq & m; rmd = (uint64_t)sr & m;
    }
    if (sz == 1) c->r[R_RAX] = (c->r[R_RAX] & ~0xffffULL) | (q & 0xff) | ((rmd & 0xff) << 8);
    else { setreg(c, R_RAX, sz, q); setreg(c, R_RDX, sz, rmd); }
}

static void mul_flags(cpu_t *c, int sz, int overflow, uint64_t low)
{
    uint64_t f = overflow ? (F_CF | F_OF) : 0;
    uint64_t m = szmask(sz);
    if (parity8(low)) f |= F_PF;      /* SF/ZF/AF/PF undefined; be deterministic */
    if ((low & m) == 0) f |= F_ZF;
    if (low & (1ULL << (sz * 8 - 1))) f |= F_SF;
    flags_set_exact(c, f);
}

HANDLER(h_grp3)
{
    int sz = i->osz;
    switch (i->ext) {
    case 0: case 1: { uint64_t r = rd_rm(c, i, sz) & i->imm; lf_set(c, LF_LOGIC, sz, r, 0, r); break; }
    case 2: rmw(c, i, sz, K_NOT, 0, 0, i->lock); break;
    case 3: rmw(c, i, sz, K_NEG, 0, 0, i->lock); break;
    case 4: case 5: {
        uint64_t b = rd_rm(c, i, sz);
        int sgn = i->ext == 5;
        if (sz == 8) {
            if (!sgn) {
                unsigned __int128 p = (unsigned __int128)c->r[R_RAX] * b;
                c->r[R_RAX] = (uint64_t)p; c->r[R_RDX] = (uint64_t)(p >> 64);
                mul_flags(c, 8, c->r[R_RDX] != 0, c->r[R_RAX]);
            } else {
                __int128 p = (__int128)(int64_t)c->r[R_RAX] * (int64_t)b;
                c->r[R_RAX] = (uint64_t)p; c->r[R_RDX] = (uint64_t)((unsigned __int128)p >> 64);
                mul_flags(c, 8, p != (__int128)(int64_t)c->r[R_RAX], c->r[R_RAX]);
            }
            break;
        }
        uint64_t a = getreg(c, R_RAX, sz), p;
        int ovf;
        if (!sgn) { p = a * b; ovf = (p >> (sz * 8)) != 0; }
        else {
            int64_t sp = (int64_t)sext(a, sz) * (int64_t)sext(b, sz);
            p = (uint64_t)sp; ovf = sp != (int64_t)sext(p & szmask(sz), sz);
        }
        if (sz == 1) setreg(c, R_RAX, 2, p & 0xffff);
        else { setreg(c, R_RAX, sz, p); setreg(c, R_RDX, sz, p >> (sz * 8)); }
        mul_flags(c, sz, ovf, p);
        break;
    }
    case 6: divide(c, i, sz, 0); break;
    case 7: divide(c, i, sz, 1); break;
    }
}

/* IMUL Gv,Ev(,imm) */
HANDLER(h_imul)
{
    int sz = i->osz;
    uint64_t b = rd_rm(c, i, sz);
    uint64_t a = (i->map == 1) ? getreg(c, i->reg, sz) : i->imm;
    uint64_t r; int ovf;
    if (sz == 8) {
        __int128 p = (__int128)(int64_t)a * (int64_t)b;
        r = (uint64_t)p; ovf = p != (__int128)(int64_t)r;
    } else {
        int64_t p = (int64_t)sext(a & szmask(sz), sz) * (int64_t)sext(b, sz);
        r = (uint64_t)p & szmask(sz); ovf = p != (int64_t)sext(r, sz);
    }
    setreg(c, i->reg, sz, r);
    mul_flags(c, sz, ovf, r);
}

/* ---- shifts and rotates: C0/C1/D0-D3 (SDM Vol 2B SAL/SAR/SHL/SHR, RCL/RCR/ROL/ROR) */
HANDLER(h_shift)
{
    int sz = i->osz, bits = sz * 8;
    unsigned cnt;
    if (i->op == 0xd0 || i->op == 0xd1) cnt = 1;
    else if (i->op == 0xd2 || i->op == 0xd3) cnt = c->r[R_RCX] & 0xff;
    else cnt = i->imm & 0xff;
    cnt &= (sz == 8) ? 63 : 31;
    uint64_t m = szmask(sz), sb = 1ULL << (bits - 1);
    uint64_t a = rd_rm_w(c, i, sz);
    if (cnt == 0) {
        /* flags unchanged; a 32-bit register destination is still zero-extended */
        if (i->mod == 3 && sz == 4) setreg(c, i->rm, 4, a);
        return;
    }
    uint64_t f = flags_materialize(c) & F_OSZAPC, r = a;
    int cf = 0, of = 0, setszp = 1;
    switch (i->ext) {
    case 0: { /* ROL */
        unsigned n = cnt % bits;
        r = n ? ((a << n) | (a >> (bits - n))) & m : a;
        cf = r & 1; of = !!(r & sb) ^ cf; setszp = 0; break; }
    case 1: { /* ROR */
        unsigned n = cnt % bits;
        r = n ? ((a >> n) | (a << (bits - n))) & m : a;
        cf = !!(r & sb); of = !!(r & sb) ^ !!(r & (sb >> 1)); setszp = 0; break; }
    case 2: case 3: { /* RCL / RCR through CF */
        unsigned n = (sz == 8 || sz == 4) ? cnt : cnt % (bits + 1);
        int c0 = !!(f & F_CF);
        r = a;
        for (unsigned k = 0; k < n; k++) {
            if (i->ext == 2) { int nc = !!(r & sb); r = ((r << 1) | c0) & m; c0 = nc; }
            else { int nc = r & 1; r = (r >> 1) | (c0 ? sb : 0); c0 = nc; }
        }
        cf = c0;
        of = (i->ext == 2) ? (!!(r & sb) ^ cf) : (!!(r & sb) ^ !!(r & (sb >> 1)));
        setszp = 0; break; }
    case 4: case 6: /* SHL/SAL */
        r = (a << cnt) & m; cf = (cnt <= (unsigned)bits) ? !!((a << (cnt - 1)) & sb) : 0;
        of = !!(r & sb) ^ cf; break;
    case 5: /* SHR */
        r = a >> cnt; cf = (a >> (cnt - 1)) & 1; of = !!(a & sb); break;
    case 7: { /* SAR */
        int64_t s = (int64_t)sext(a, sz);
        r = (uint64_t)(s >> cnt) & m; cf = (s >> (cnt - 1)) & 1; of = 0; break; }
    }
    wr_rm(c, i, sz, r);
    f &= ~(uint64_t)(F_CF | F_OF);
    if (cf) f |= F_CF;
    if (of) f |= F_OF;
    if (setszp) {
        f &= ~(uint64_t)(F_SF | F_ZF | F_PF | F_AF);
        if (r == 0) f |= F_ZF;
        if (r & sb) f |= F_SF;
        if (parity8(r)) f |= F_PF;
    }
    flags_set_exact(c, f);
}

/* SHLD/SHRD 0F A4/A5/AC/AD */
HANDLER(h_shld)
{
    int sz = i->osz, bits = sz * 8;
    unsigned cnt = ((i->op & 1) ? c->r[R_RCX] : i->imm) & ((sz == 8) ? 63 : 31);
    uint64_t a = rd_rm_w(c, i, sz), b = getreg(c, i->reg, sz), m = szmask(sz), sb = 1ULL << (bits - 1), r;
    if (cnt == 0) {
        if (i->mod == 3 && sz == 4) setreg(c, i->rm, 4, a);
        return;
    }
    int cf;
    if (i->op < 0xa8) {  /* SHLD */
        r = cnt >= (unsigned)bits ? (b << (cnt - bits)) : ((a << cnt) | (cnt ? b >> (bits - cnt) : 0));
        r &= m; cf = (a >> (bits - cnt)) & 1;
    } else {
        r = ((a >> cnt) | (b << (bits - cnt))) & m; cf = (a >> (cnt - 1)) & 1;
    }
    wr_rm(c, i, sz, r);
    uint64_t f = 0;
    if (cf) f |= F_CF;
    if ((r ^ a) & sb) f |= F_OF;
    if (r == 0) f |= F_ZF;
    if (r & sb) f |= F_SF;
    if (parity8(r)) f |= F_PF;
    flags_set_exact(c, f);
}

/* ---- bit tests ---------------------------------------------------------- */
HANDLER(h_bt)
{
    /* 0F A3/AB/B3/BB (register bit offset) or 0F BA /4-7 (imm8) */
    int sz = i->osz, kind;
    int64_t off;
    int which;
    if (i->op == 0xba) { if (i->ext < 4) raise_ud(c); off = i->imm & (sz * 8 - 1); which = i->ext - 4; }
    else { off = (int64_t)sext(getreg(c, i->reg, sz), sz); which = (i->op >> 3) & 3; }
    if (i->lock && which == 0) raise_ud(c);   /* LOCK BT: #UD (only BTS/BTR/BTC are lockable) */
    kind = which == 0 ? -1 : which == 1 ? K_BTS : which == 2 ? K_BTR : K_BTC;
    uint64_t bit, old;
    if (i->mod == 3 || i->op == 0xba) {
        bit = (uint64_t)off & (sz * 8 - 1);
        if (i->mod == 3) {
            old = getreg(c, i->rm, sz);
            if (kind >= 0) setreg(c, i->rm, sz, rmw_compute(c, kind, sz, old, bit, 0));
        } else if (kind < 0) {
            old = rd_rm(c, i, sz);
        } else {
            old = rmw(c, i, sz, kind, bit, 0, i->lock);
        }
    } else {
        /* register bit offset addresses memory beyond the operand: the
         * operand at EA + (offset SAR log2(bits)) * size, wrapping at the
         * address size (SDM Vol 2A BT "bit base / bit offset", Vol 1 3.4.3) */
        int64_t bytes = (off >> 3) & ~(int64_t)(sz - 1);
        bit = (uint64_t)off & (sz * 8 - 1);
        uint64_t lin = lin_acc(c, i->seg, (ea_off(c, i) + (uint64_t)bytes) & szmask(i->asz), sz, kind >= 0);
        if (kind < 0) old = mem_read_x(c, lin, sz, SEG_ACC(i->seg));
        else old = rmw_at(c, lin, sz, kind, bit, 0, i->lock, SEG_ACC(i->seg));
    }
    uint64_t f = flags_materialize(c);
    flags_set_exact(c, (f & ~(uint64_t)F_CF) | ((old >> bit) & 1 ? F_CF : 0));
}

HANDLER(h_bsf_bsr)
{
    if (i->rep == 0xf3) { h_lzcnt_tzcnt(c, i); return; }   /* TZCNT / LZCNT (CPUID advertises them) */
    int sz = i->osz;
    uint64_t v = rd_rm(c, i, sz);
    uint64_t f = flags_materialize(c) & ~(uint64_t)F_ZF;
    if (v == 0) { flags_set_exact(c, f | F_ZF); return; }   /* dest unchanged (as hardware does) */
    int r = (i->op == 0xbc) ? __builtin_ctzll(v) : 63 - __builtin_clzll(v);
    setreg(c, i->reg, sz, r);
    flags_set_exact(c, f);
}

/* ---- moves ------------------------------------------------------------- */
HANDLER(h_mov_rm_r) { wr_rm(c, i, i->osz, getreg(c, i->reg, i->osz)); }
HANDLER(h_mov_r_rm) { setreg(c, i->reg, i->osz, rd_rm(c, i, i->osz)); }
HANDLER(h_mov_rm_imm) { wr_rm(c, i, i->osz, i->imm); }
HANDLER(h_mov_r_imm) { setreg(c, i->rm, i->osz, i->imm); }
HANDLER(h_lea) { setreg(c, i->reg, i->osz, ea_off(c, i)); }
HANDLER(h_movzx) { int ssz = (i->op & 1) ? 2 : 1; setreg(c, i->reg, i->osz, rd_rm(c, i, ssz)); }
HANDLER(h_movsx) { int ssz = (i->op & 1) ? 2 : 1; setreg(c, i->reg, i->osz, sext(rd_rm(c, i, ssz), ssz)); }
HANDLER(h_movsxd) { setreg(c, i->reg, i->osz, sext(rd_rm(c, i, 4), 4)); }
HANDLER(h_mov_moffs)
{
    /* A0-A3: the offset is the immediate */
    uint64_t off = i->imm;
    if (i->op & 2) st(c, i->seg, off, i->osz, getreg(c, 0, i->osz));
    else setreg(c, 0, i->osz, ld(c, i->seg, off, i->osz));
}
HANDLER(h_xchg_rm_r)
{
    int sz = i->osz;
    uint64_t b = getreg(c, i->reg, sz);
    uint64_t old = rmw(c, i, sz, K_XCHG, b, 0, 1);  /* XCHG with memory is always locked */
    setreg(c, i->reg, sz, old);
}
HANDLER(h_xchg_a_r)
{
    int sz = i->osz, r = i->rm;
    uint64_t a = getreg(c, 0, sz), b = getreg(c, r, sz);
    setreg(c, 0, sz, b);
    setreg(c, r, sz, a);
}
HANDLER(h_xadd)
{
    int sz = i->osz;
    if (i->mod == 3) {
        /* SRC <- DEST, then DEST <- sum (so XADD r,r with the same register keeps the sum) */
        uint64_t a = getreg(c, i->rm, sz), b = getreg(c, i->reg, sz), r = (a + b) & szmask(sz);
        lf_set(c, LF_ADD, sz, a, b, r);
        setreg(c, i->reg, sz, a);
        setreg(c, i->rm, sz, r);
        return;
    }
    uint64_t b = getreg(c, i->reg, sz);
    uint64_t old = rmw(c, i, sz, K_XADD, b, 0, i->lock);
    setreg(c, i->reg, sz, old);
}
HANDLER(h_cmpxchg)
{
    int sz = i->osz;
    uint64_t acc = getreg(c, 0, sz), src = getreg(c, i->reg, sz), old;
    if (i->mod == 3) {
        old = getreg(c, i->rm, sz);
        if (old == acc) setreg(c, i->rm, sz, src);
    } else {
        uint64_t lin = lin_wr(c, i->seg, ea_off(c, i), sz);
        void *p = i->lock ? mem_host_rmw(c, lin, sz) : NULL;
        if (p) {
            old = acc;
            cas(p, sz, &old, src);
        } else {
            old = mem_read_rmw_x(c, lin, sz, SEG_ACC(i->seg));
            /* the destination is always written (SDM CMPXCHG) */
            mem_write(c, lin, sz, old == acc ? src : old);
        }
    }
    alu(c, 7, sz, acc, old, 0);
    if (old != acc) setreg(c, 0, sz, old);
}
HANDLER(h_cmpxchg8b)
{
    /* 0F C7 /1: CMPXCHG8B / CMPXCHG16B (REX.W) */
    if (i->mod == 3) raise_ud(c);
    uint64_t lin = lin_wr(c, i->seg, ea_off(c, i), i->osz == 8 ? 16 : 8);
    if (i->osz == 8) {
        if (lin & 15) raise_gp(c, 0);
        unsigned __int128 exp = ((unsigned __int128)c->r[R_RDX] << 64) | c->r[R_RAX];
        unsigned __int128 nw = ((unsigned __int128)c->r[R_RCX] << 64) | c->r[R_RBX];
        unsigned __int128 old;
        void *p = mem_host_rmw(c, lin, 16);
        if (p) {
            /* -mcx16: inline LOCK CMPXCHG16B on the host */
            old = __sync_val_compare_and_swap((unsigned __int128 *)p, exp, nw);
        } else {
            old = mem_read(c, lin, 8) | ((unsigned __int128)mem_read(c, lin + 8, 8) << 64);
        }
        uint64_t f = flags_materialize(c) & ~(uint64_t)F_ZF;
        if (old == exp) f |= F_ZF;
        else { c->r[R_RAX] = (uint64_t)old; c->r[R_RDX] = (uint64_t)(old >> 64); }
        flags_set_exact(c, f);
        return;
    }
    uint64_t exp = ((c->r[R_RDX] & 0xffffffff) << 32) | (c->r[R_RAX] & 0xffffffff);
    uint64_t nw = ((c->r[R_RCX] & 0xffffffff) << 32) | (c->r[R_RBX] & 0xffffffff);
    uint64_t old;
    void *p = mem_host_rmw(c, lin, 8);
    if (p) { old = exp; cas(p, 8, &old, nw); }
    else { old = mem_read(c, lin, 8); mem_write(c, lin, 8, old == exp ? nw : old); }
    uint64_t f = flags_materialize(c) & ~(uint64_t)F_ZF;
    if (old == exp) f |= F_ZF;
    else { c->r[R_RAX] = (uint32_t)old; c->r[R_RDX] = old >> 32; }
    flags_set_exact(c, f);
}
HANDLER(h_bswap)
{
    int r = i->rm;
    if (i->osz == 8) c->r[r] = __builtin_bswap64(c->r[r]);
    else if (i->osz == 4) c->r[r] = __builtin_bswap32((uint32_t)c->r[r]);
    else setreg(c, r, 2, 0);   /* undefined; real CPUs give 0 */
}
HANDLER(h_setcc) { wr_rm(c, i, 1, cond(c, i->op & 15)); }
HANDLER(h_cmovcc)
{
    uint64_t v = rd_rm(c, i, i->osz);   /* source is always read */
    if (cond(c, i->op & 15)) setreg(c, i->reg, i->osz, v);
    else if (i->osz == 4) setreg(c, i->reg, 4, getreg(c, i->reg, 4));  /* 32-bit form zero-extends */
}
HANDLER(h_cbw)
{
    /* 98: CBW/CWDE/CDQE */
    int sz = i->osz;
    setreg(c, 0, sz, sext(getreg(c, 0, sz / 2), sz / 2));
}
HANDLER(h_cwd)
{
    /* 99: CWD/CDQ/CQO */
    int sz = i->osz;
    setreg(c, R_RDX, sz, (getreg(c, 0, sz) >> (sz * 8 - 1)) & 1 ? ~0ULL : 0);
}
HANDLER(h_flagop)
{
    uint64_t f = flags_materialize(c);
    switch (i->op) {
    case 0xf5: f ^= F_CF; break;
    case 0xf8: f &= ~(uint64_t)F_CF; break;
    case 0xf9: f |= F_CF; break;
    case 0xfc: f &= ~(uint64_t)F_DF; break;
    case 0xfd: f |= F_DF; break;
    case 0x9e: f = (f & ~0xffULL) | ((c->r[R_RAX] >> 8) & (F_SF | F_ZF | F_AF | F_PF | F_CF)) | 2; break; /* SAHF */
    case 0x9f: c->r[R_RAX] = (c->r[R_RAX] & ~0xff00ULL) | ((f & 0xff) << 8); break; /* LAHF */
    }
    c->rflags = f;
}
HANDLER(h_nop) { (void)c; (void)i; }

/* ---- legacy (not in 64-bit mode): PUSHA/POPA, XLAT, BCD adjust ------------ */
HANDLER(h_pusha)
{
    int sz = i->osz;
    uint64_t sp0 = sp_get(c), sp = sp0;
    static const int order[8] = { R_RAX, R_RCX, R_RDX, R_RBX, R_RSP, R_RBP, R_RSI, R_RDI };
    for (int k = 0; k < 8; k++) {
        sp = sp_wrap(c, sp - sz);
        st(c, S_SS, sp, sz, order[k] == R_RSP ? (sp0 & szmask(sz)) : getreg(c, order[k], sz));
    }
    sp_set(c, sp);
}
HANDLER(h_popa)
{
    int sz = i->osz;
    uint64_t sp = sp_get(c), v[8];
    for (int k = 7; k >= 0; k--) { v[k] = ld(c, S_SS, sp, sz); sp = sp_wrap(c, sp + sz); }
    static const int order[8] = { R_RAX, R_RCX, R_RDX, R_RBX, R_RSP, R_RBP, R_RSI, R_RDI };
    for (int k = 0; k < 8; k++) if (order[k] != R_RSP) setreg(c, order[k], sz, v[k]);
    sp_set(c, sp);
}
HANDLER(h_xlat)
{
    uint64_t off = (getreg(c, R_RBX, i->asz) + (c->r[R_RAX] & 0xff)) & szmask(i->asz);
    setreg(c, R_RAX, 1, ld(c, i->seg, off, 1));
}
static void szp8(cpu_t *c, uint64_t f, uint8_t r)
{
    f &= ~(uint64_t)(F_SF | F_ZF | F_PF);
    if (r == 0) f |= F_ZF;
    if (r & 0x80) f |= F_SF;
    if (parity8(r)) f |= F_PF;
    flags_set_exact(c, f);
}
HANDLER(h_bcd)
{
    /* SDM Vol 2A DAA/DAS/AAA/AAS/AAM/AAD pseudo-code */
    uint64_t f = flags_materialize(c);
    uint8_t al = c->r[R_RAX] & 0xff, old = al;
    int cf = !!(f & F_CF), af = !!(f & F_AF);
    switch (i->op) {
    case 0x27: case 0x2f: {
        int sub = i->op == 0x2f;
        int ncf = 0;
        if ((al & 0xf) > 9 || af) { al = sub ? al - 6 : al + 6; ncf = cf || (sub ? old < 6 : old > 0xf9); af = 1; }
        else af = 0;
        if (old > 0x99 || cf) { al = sub ? al - 0x60 : al + 0x60; ncf = 1; }
        cf = ncf;
        setreg(c, R_RAX, 1, al);
        f = (f & ~(uint64_t)(F_CF | F_AF)) | (cf ? F_CF : 0) | (af ? F_AF : 0);
        szp8(c, f, al);
        return; }
    case 0x37: case 0x3f: {
        uint16_t ax = c->r[R_RAX] & 0xffff;
        if ((al & 0xf) > 9 || af) {
            ax = (i->op == 0x37) ? ax + 0x106 : ax - 6;
            if (i->op == 0x3f) ax = (ax & 0xff) | (((ax >> 8) - 1) & 0xff) << 8;
            af = cf = 1;
        } else af = cf = 0;
        ax &= 0xff0f;
        setreg(c, R_RAX, 2, ax);
        f = (f & ~(uint64_t)(F_CF | F_AF)) | (cf ? F_CF : 0) | (af ? F_AF : 0);
        flags_set_exact(c, f);
        return; }
    case 0xd4: {
        uint8_t base = i->imm & 0xff;
        if (!base) raise_exc(c, EX_DE, 0, 0);
        uint8_t ah = al / base; al = al % base;
        setreg(c, R_RAX, 2, (uint16_t)(ah << 8 | al));
        szp8(c, f, al);
        return; }
    default: { /* D5 AAD */
        uint8_t ah = (c->r[R_RAX] >> 8) & 0xff;
        al = (uint8_t)(al + ah * (i->imm & 0xff));
        setreg(c, R_RAX, 2, al);
        szp8(c, f, al);
        return; }
    }
}
