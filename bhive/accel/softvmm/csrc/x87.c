/*
 * x87 FPU (D8-DF, WAIT) for softvmm.
 *
 * The register stack, tags, TOP, FCW/FSW and the stack-fault rules (SDM Vol 1
 * 8.5.1.1: #IS sets IE+SF, C1 = 1 on overflow / 0 on underflow; the masked
 * response writes the real indefinite) are modelled here.  Every numeric
 * operation runs on the host's x87 unit inside one asm block:
 *
 *     fnstcw save; fnclex; fldcw guest_fcw; fld operands; <the instruction>;
 *     fnstsw sw; fnclex; fldcw save; fstp results; fninit; fldcw save
 *
 * so precision control, rounding control and the masked responses are the
 * hardware's own (bit-exact, transcendentals included), and the host x87 is
 * left empty, clean and with its own control word: an exception the guest
 * unmasked is cleared (FNCLEX is non-waiting) before any waiting instruction
 * could deliver it to the host.  The status word decides what is committed
 * (SDM Vol 1 8.5, 4.9.2): an unmasked IE/DE/ZE leaves destination and stack
 * unchanged; unmasked OE/UE still write a register destination (with the
 * biased exponent the host produced) but not a memory one; ES and B are set
 * for any unmasked exception and the next waiting instruction takes #MF.
 */
#include "fpuint.h"
#include "handlers.h"

/* ---- host execution ------------------------------------------------------ */
typedef struct xop {
    f80_t a, b, r0, r1;
    uint8_t m[16];
    uint16_t cw, sw;
} xop_t;

#define XF(name, pre, insn, post) \
    static void x_##name(xop_t *o) { \
        uint16_t save = 0; \
        __asm__ volatile("fnstcw %[save]\n\tfnclex\n\tfldcw %[cw]\n\t" pre insn "\n\t" \
                         "fnstsw %[sw]\n\tfnclex\n\tfldcw %[save]\n\t" post "fninit\n\tfldcw %[save]" \
                         : [save] "+m"(save), [sw] "=m"(o->sw), [r0] "=m"(o->r0), [r1] "=m"(o->r1), [m] "+m"(o->m) \
                         : [cw] "m"(o->cw), [a] "m"(o->a), [b] "m"(o->b) \
                         : "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)", "memory"); }
#define P0 ""
#define P1 "fldt %[a]\n\t"
#define P2 "fldt %[b]\n\tfldt %[a]\n\t"
#define S0 ""
#define S1 "fstpt %[r0]\n\t"
#define S2 "fstpt %[r0]\n\tfstpt %[r1]\n\t"
typedef void (*xfn_t)(xop_t *);

/* a op b -> r0 (a = ST(0) of the host, b = ST(1)) */
XF(fadd, P2, "fadd %%st(1), %%st", S1) XF(fmul, P2, "fmul %%st(1), %%st", S1)
XF(fsub, P2, "fsub %%st(1), %%st", S1) XF(fsubr, P2, "fsubr %%st(1), %%st", S1)
XF(fdiv, P2, "fdiv %%st(1), %%st", S1) XF(fdivr, P2, "fdivr %%st(1), %%st", S1)
XF(fscale, P2, "fscale", S1) XF(fprem, P2, "fprem", S1) XF(fprem1, P2, "fprem1", S1)
XF(fpatan, P2, "fpatan", S1) XF(fyl2x, P2, "fyl2x", S1) XF(fyl2xp1, P2, "fyl2xp1", S1)
XF(fcom, P2, "fcom %%st(1)", S0) XF(fucom, P2, "fucom %%st(1)", S0)
XF(fsqrt, P1, "fsqrt", S1) XF(fabs, P1, "fabs", S1) XF(fchs, P1, "fchs", S1) XF(frndint, P1, "frndint", S1)
XF(fsin, P1, "fsin", S1) XF(fcos, P1, "fcos", S1) XF(f2xm1, P1, "f2xm1", S1)
XF(fxtract, P1, "fxtract", S2) XF(fsincos, P1, "fsincos", S2) XF(fptan, P1, "fptan", S2)
XF(ftst, P1, "ftst", S0) XF(fxam, P1, "fxam", S0)
XF(fld1, P0, "fld1", S1) XF(fldl2t, P0, "fldl2t", S1) XF(fldl2e, P0, "fldl2e", S1) XF(fldpi, P0, "fldpi", S1)
XF(fldlg2, P0, "fldlg2", S1) XF(fldln2, P0, "fldln2", S1) XF(fldz, P0, "fldz", S1)
XF(flds, P0, "flds %[m]", S1) XF(fldl, P0, "fldl %[m]", S1)
XF(filds, P0, "filds %[m]", S1) XF(fildl, P0, "fildl %[m]", S1) XF(fildll, P0, "fildll %[m]", S1)
XF(fbld, P0, "fbld %[m]", S1) XF(fbstp, P1, "fbstp %[m]", S0)
XF(fsts, P1, "fsts %[m]", S0) XF(fstl, P1, "fstl %[m]", S0)
XF(fists, P1, "fists %[m]", S0) XF(fistl, P1, "fistl %[m]", S0) XF(fistpll, P1, "fistpll %[m]", S0)
XF(fisttps, P1, "fisttps %[m]", S0) XF(fisttpl, P1, "fisttpl %[m]", S0) XF(fisttpll, P1, "fisttpll %[m]", S0)
/* memory operand arithmetic: ST(0) op m -> r0 */
#define XM(sfx) XF(fadd##sfx, P1, "fadd" #sfx " %[m]", S1) XF(fmul##sfx, P1, "fmul" #sfx " %[m]", S1) \
    XF(fcom##sfx, P1, "fcom" #sfx " %[m]", S0) XF(fsub##sfx, P1, "fsub" #sfx " %[m]", S1) \
    XF(fsubr##sfx, P1, "fsubr" #sfx " %[m]", S1) XF(fdiv##sfx, P1, "fdiv" #sfx " %[m]", S1) \
    XF(fdivr##sfx, P1, "fdivr" #sfx " %[m]", S1)
#define XMI(sfx) XF(fiadd##sfx, P1, "fiadd" #sfx " %[m]", S1) XF(fimul##sfx, P1, "fimul" #sfx " %[m]", S1) \
    XF(ficom##sfx, P1, "ficom" #sfx " %[m]", S0) XF(fisub##sfx, P1, "fisub" #sfx " %[m]", S1) \
    XF(fisubr##sfx, P1, "fisubr" #sfx " %[m]", S1) XF(fidiv##sfx, P1, "fidiv" #sfx " %[m]", S1) \
    XF(fidivr##sfx, P1, "fidivr" #sfx " %[m]", S1)
XM(s) XM(l) XMI(s) XMI(l)
#define MT(p, s) { x_##p##add##s, x_##p##mul##s, x_##p##com##s, x_##p##com##s, \
                   x_##p##sub##s, x_##p##sub##r##s, x_##p##div##s, x_##p##div##r##s }
/* D8 (m32fp), DA (m32int), DC (m64fp), DE (m16int) by /digit */
static const xfn_t mem_arith[4][8] = { MT(f, s), MT(fi, l), MT(f, l), MT(fi, s) };
static const int mem_arith_size[4] = { 4, 4, 8, 2 };
/* register arithmetic by /digit (a op b) */
static const xfn_t reg_arith[8] = { x_fadd, x_fmul, x_fcom, x_fcom, x_fsub, x_fsubr, x_fdiv, x_fdivr };

/* ---- stack model ----------------------------------------------------------- */
static const f80_t INDEF = { 0xC000000000000000ULL, 0xFFFF, { 0, 0, 0 } };

static inline int top(cpu_t *c) { return (c->fpu.fsw >> 11) & 7; }
static inline void set_top(cpu_t *c, int t) { c->fpu.fsw = (uint16_t)((c->fpu.fsw & ~0x3800) | ((t & 7) << 11)); }
static inline int phys(cpu_t *c, int k) { return (top(c) + k) & 7; }
static inline int valid(cpu_t *c, int k) { return (c->fpu.ftw >> phys(c, k)) & 1; }
static inline f80_t *ST(cpu_t *c, int k) { return &c->fpu.st[phys(c, k)]; }
static inline void set_st(cpu_t *c, int k, const f80_t *v)
{
    int p = phys(c, k);
    c->fpu.st[p].m = v->m; c->fpu.st[p].e = v->e;
    c->fpu.ftw |= (uint8_t)(1u << p);
}
static inline void fpop(cpu_t *c) { c->fpu.ftw &= (uint8_t)~(1u << top(c)); set_top(c, top(c) + 1); }
static inline void fpush(cpu_t *c, const f80_t *v) { set_top(c, top(c) - 1); set_st(c, 0, v); }

void x87_update_es(cpu_t *c)
{
    if (c->fpu.fsw & ~c->fpu.fcw & 0x3f) c->fpu.fsw |= FSW_ES | FSW_B;
    else c->fpu.fsw &= (uint16_t)~(FSW_ES | FSW_B);
}

/* Stack overflow/underflow (#IS).  Returns 1 when masked: the caller then
 * applies the masked response (write the indefinite). */
static int stack_fault(cpu_t *c, int overflow)
{
    c->fpu.fsw = (uint16_t)((c->fpu.fsw & ~FSW_C1) | (overflow ? FSW_C1 : 0) | FSW_IE | FSW_SF);
    if (!(c->fpu.fcw & FSW_IE)) { c->fpu.fsw |= FSW_ES | FSW_B; return 0; }
    return 1;
}

/* Merge the host status of one operation.  ccmask: condition bits taken from
 * the host.  Returns 1 if the result is to be committed. */
static int status(cpu_t *c, uint16_t hsw, uint16_t ccmask, int memdst)
{
    uint16_t exc = hsw & 0x3f;
    uint16_t unm = exc & ~c->fpu.fcw & 0x3f;
    c->fpu.fsw = (uint16_t)((c->fpu.fsw & ~ccmask) | (hsw & ccmask) | exc);
    if (unm) c->fpu.fsw |= FSW_ES | FSW_B;
    if (unm & (FSW_IE | FSW_DE | FSW_ZE)) return 0;
    if (memdst && (unm & (FSW_OE | FSW_UE))) return 0;
    return 1;
}

static inline void run(cpu_t *c, xfn_t fn, xop_t *o)
{
    o->cw = c->fpu.fcw;
    fn(o);
}

/* Condition-code bits an operation defines.  The SDM calls C0/C2/C3
 * "undefined" after most arithmetic; real CPUs leave them unchanged. */
static uint16_t ccm(xfn_t fn)
{
    if (fn == x_fprem || fn == x_fprem1 || fn == x_fcom || fn == x_fucom || fn == x_ftst || fn == x_fxam ||
        fn == x_fcoms || fn == x_fcoml || fn == x_ficoms || fn == x_ficoml)
        return FSW_CC;
    if (fn == x_fsin || fn == x_fcos || fn == x_fsincos || fn == x_fptan) return FSW_C1 | FSW_C2;
    return FSW_C1;
}

uint16_t x87_full_tag(cpu_t *c)
{
    uint16_t t = 0;
    for (int p = 0; p < 8; p++) {
        int tag;
        const f80_t *r = &c->fpu.st[p];
        uint16_t e = r->e & 0x7fff;
        if (!((c->fpu.ftw >> p) & 1)) tag = 3;
        else if (e == 0x7fff) tag = 2;
        else if (e == 0) tag = r->m ? 2 : 1;
        else tag = (r->m >> 63) ? 0 : 2;
        t |= (uint16_t)(tag << (2 * p));
    }
    return t;
}

void fpu_reset(cpu_t *c)
{
    memset(&c->fpu, 0, sizeof(c->fpu));
    c->fpu.fcw = 0x40;          /* power-up value (SDM Vol 3A Table 10-1) */
    c->fpu.mxcsr = 0x1f80;
}

static void finit(cpu_t *c)
{
    c->fpu.fcw = 0x37f; c->fpu.fsw = 0; c->fpu.ftw = 0;
    c->fpu.fop = 0; c->fpu.fip = c->fpu.fdp = 0;
}

/* ---- environment (FLDENV/FNSTENV/FRSTOR/FNSAVE; protected-mode layouts,
 *      SDM Vol 1 8.1.10 Figures 8-9/8-10) -------------------------------- */
static int env_store(cpu_t *c, const insn_t *i, uint64_t off)
{
    uint8_t b[28];
    memset(b, 0, sizeof(b));
    uint16_t tag = x87_full_tag(c);
    if (i->osz == 2) {
        memcpy(b + 0, &c->fpu.fcw, 2); memcpy(b + 2, &c->fpu.fsw, 2); memcpy(b + 4, &tag, 2);
        memcpy(b + 6, &c->fpu.fip, 2); memcpy(b + 10, &c->fpu.fdp, 2);
        fmem_write(c, i->seg, off, b, 14);
        return 14;
    }
    uint32_t v;
    v = 0xffff0000u | c->fpu.fcw; memcpy(b + 0, &v, 4);
    v = 0xffff0000u | c->fpu.fsw; memcpy(b + 4, &v, 4);
    v = 0xffff0000u | tag; memcpy(b + 8, &v, 4);
    v = (uint32_t)c->fpu.fip; memcpy(b + 12, &v, 4);
    v = (uint32_t)(c->fpu.fop & 0x7ff) << 16; memcpy(b + 16, &v, 4);
    v = (uint32_t)c->fpu.fdp; memcpy(b + 20, &v, 4);
    v = 0xffff0000u; memcpy(b + 24, &v, 4);
    fmem_write(c, i->seg, off, b, 28);
    return 28;
}
static void env_apply(cpu_t *c, const uint8_t *b, int n16)
{
    uint16_t cw, sw, tag;
    memcpy(&cw, b, 2); memcpy(&sw, b + (n16 ? 2 : 4), 2); memcpy(&tag, b + (n16 ? 4 : 8), 2);
    c->fpu.fcw = cw; c->fpu.fsw = sw;
    c->fpu.ftw = 0;
    for (int p = 0; p < 8; p++) if (((tag >> (2 * p)) & 3) != 3) c->fpu.ftw |= (uint8_t)(1u << p);
    x87_update_es(c);
}

/* ---- helpers for the instruction forms ------------------------------------- */
static inline void load_f80(f80_t *d, const f80_t *s) { d->m = s->m; d->e = s->e; }

static void do_push_result(cpu_t *c, xfn_t fn, xop_t *o)
{
    if ((c->fpu.ftw >> ((top(c) + 7) & 7)) & 1) {
        if (stack_fault(c, 1)) fpush(c, &INDEF);
        return;
    }
    run(c, fn, o);
    if (status(c, o->sw, ccm(fn), 0)) fpush(c, &o->r0);
}

static int cond_fcmov(cpu_t *c, int k)
{
    uint64_t f = flags_materialize(c);
    switch (k) {
    case 0: return !!(f & F_CF);
    case 1: return !!(f & F_ZF);
    case 2: return !!(f & (F_CF | F_ZF));
    default: return !!(f & F_PF);
    }
}

/* compare ST(0) with a register; mode 0 = FCOM (C0/C2/C3), 1 = FCOMI (EFLAGS) */
static void compare_reg(cpu_t *c, int k, int unordered, int eflags, int pops)
{
    int ok;
    uint16_t cc;
    if (!valid(c, 0) || !valid(c, k)) {
        ok = stack_fault(c, 0);
        cc = FSW_C0 | FSW_C2 | FSW_C3;
    } else {
        xop_t o;
        load_f80(&o.a, ST(c, 0)); load_f80(&o.b, ST(c, k));
        run(c, unordered ? x_fucom : x_fcom, &o);
        ok = status(c, o.sw, eflags ? 0 : FSW_C1, 0);   /* FCOMI leaves C1 alone (as measured) */
        cc = o.sw & (FSW_C0 | FSW_C2 | FSW_C3);
    }
    /* the condition codes / EFLAGS are written even when the exception is
     * unmasked (there is no destination to protect) */
    if (eflags)
        flags_set_exact(c, ((cc & FSW_C3) ? F_ZF : 0) | ((cc & FSW_C2) ? F_PF : 0) | ((cc & FSW_C0) ? F_CF : 0));
    else
        c->fpu.fsw = (uint16_t)((c->fpu.fsw & ~(FSW_C0 | FSW_C2 | FSW_C3)) | cc);
    if (!ok) return;
    while (pops--) fpop(c);
}

/* binary register arithmetic: dst = ST(dk), operands (a, b) = (ST(dk), ST(sk)) */
static void arith_reg(cpu_t *c, xfn_t fn, int dk, int sk, int pop)
{
    if (!valid(c, dk) || !valid(c, sk)) {
        if (fn == x_fprem || fn == x_fprem1) c->fpu.fsw &= (uint16_t)~FSW_C2;
        if (!stack_fault(c, 0)) return;
        set_st(c, dk, &INDEF);
    } else {
        xop_t o;
        load_f80(&o.a, ST(c, dk)); load_f80(&o.b, ST(c, sk));
        run(c, fn, &o);
        uint16_t m = ccm(fn);
        /* FPREM/FPREM1 with a NaN result or #IA leave C0/C3 alone (measured) */
        if (m == FSW_CC && (((o.r0.e & 0x7fff) == 0x7fff && (o.r0.m << 1)) || (o.sw & FSW_IE))) m = FSW_C1 | FSW_C2;
        if (!status(c, o.sw, m, 0)) return;
        set_st(c, dk, &o.r0);
    }
    if (pop) fpop(c);
}

/* store ST(0) to memory through a host store instruction */
static void store_mem(cpu_t *c, const insn_t *i, xfn_t fn, int size, uint64_t indef, int pop)
{
    uint64_t off = ea_off(c, i);
    xop_t o;
    memset(o.m, 0, sizeof(o.m));
    if (!valid(c, 0)) {
        if (!stack_fault(c, 0)) return;
        memcpy(o.m, &indef, 8);
    } else {
        load_f80(&o.a, ST(c, 0));
        run(c, fn, &o);
        if (!status(c, o.sw, ccm(fn), 1)) return;
    }
    fmem_write(c, i->seg, off, o.m, size);
    if (pop) fpop(c);
}

static void load_mem(cpu_t *c, const insn_t *i, xfn_t fn, int size)
{
    xop_t o;
    memset(o.m, 0, sizeof(o.m));
    fmem_read(c, i->seg, ea_off(c, i), o.m, size);
    do_push_result(c, fn, &o);
}

static inline void x87_check(cpu_t *c, int waiting)
{
    if (unlikely(c->cr0 & (CR0_EM | CR0_TS))) raise_exc(c, EX_NM, 0, 0);
    if (waiting && unlikely(c->fpu.fsw & FSW_ES)) raise_exc(c, EX_MF, 0, 0);
}

HANDLER(h_fwait)
{
    if ((c->cr0 & (CR0_TS | CR0_MP)) == (CR0_TS | CR0_MP)) raise_exc(c, EX_NM, 0, 0);
    if (c->fpu.fsw & FSW_ES) raise_exc(c, EX_MF, 0, 0);
}

/* ---- memory forms ------------------------------------------------------------------ */
static void x87_mem(cpu_t *c, const insn_t *i)
{
    int op = i->op, ext = i->ext;
    uint64_t off;
    if (op == 0xd8 || op == 0xda || op == 0xdc || op == 0xde) {
        int t = (op - 0xd8) >> 1;
        xop_t o;
        memset(o.m, 0, sizeof(o.m));
        fmem_read(c, i->seg, ea_off(c, i), o.m, mem_arith_size[t]);
        if (!valid(c, 0)) {
            int masked = stack_fault(c, 0);
            if (ext == 2 || ext == 3) c->fpu.fsw |= FSW_C0 | FSW_C2 | FSW_C3;
            if (!masked) return;
            if (ext != 2 && ext != 3) set_st(c, 0, &INDEF);
        } else {
            load_f80(&o.a, ST(c, 0));
            run(c, mem_arith[t][ext], &o);
            if (!status(c, o.sw, ccm(mem_arith[t][ext]), 0)) return;
            if (ext != 2 && ext != 3) set_st(c, 0, &o.r0);
        }
        if (ext == 3) fpop(c);
        return;
    }
    switch (op << 3 | ext) {
    case 0xd9 << 3 | 0: load_mem(c, i, x_flds, 4); return;
    case 0xd9 << 3 | 2: store_mem(c, i, x_fsts, 4, 0xffc00000u, 0); return;
    case 0xd9 << 3 | 3: store_mem(c, i, x_fsts, 4, 0xffc00000u, 1); return;
    case 0xd9 << 3 | 4: {                                   /* FLDENV */
        uint8_t b[28];
        int n16 = i->osz == 2;
        fmem_read(c, i->seg, ea_off(c, i), b, n16 ? 14 : 28);
        env_apply(c, b, n16);
        return;
    }
    case 0xd9 << 3 | 5:                                     /* FLDCW */
        c->fpu.fcw = (uint16_t)ld(c, i->seg, ea_off(c, i), 2);
        x87_update_es(c);
        return;
    case 0xd9 << 3 | 6:                                     /* FNSTENV: then masks all exceptions */
        env_store(c, i, ea_off(c, i));
        c->fpu.fcw |= 0x3f;
        x87_update_es(c);
        return;
    case 0xd9 << 3 | 7: st(c, i->seg, ea_off(c, i), 2, c->fpu.fcw); return;   /* FNSTCW */
    case 0xdb << 3 | 0: load_mem(c, i, x_fildl, 4); return;
    case 0xdb << 3 | 1: store_mem(c, i, x_fisttpl, 4, 0x80000000u, 1); return;
    case 0xdb << 3 | 2: store_mem(c, i, x_fistl, 4, 0x80000000u, 0); return;
    case 0xdb << 3 | 3: store_mem(c, i, x_fistl, 4, 0x80000000u, 1); return;
    case 0xdb << 3 | 5: {                                   /* FLD m80: no exceptions but #IS */
        f80_t v = { 0, 0, { 0, 0, 0 } };
        fmem_read(c, i->seg, ea_off(c, i), &v, 10);
        if ((c->fpu.ftw >> ((top(c) + 7) & 7)) & 1) { if (stack_fault(c, 1)) fpush(c, &INDEF); return; }
        c->fpu.fsw &= (uint16_t)~FSW_C1;
        fpush(c, &v);
        return;
    }
    case 0xdb << 3 | 7:                                     /* FSTP m80 */
        off = ea_off(c, i);
        if (!valid(c, 0)) {
            if (!stack_fault(c, 0)) return;
            fmem_write(c, i->seg, off, &INDEF, 10);
        } else {
            fmem_write(c, i->seg, off, ST(c, 0), 10);
            c->fpu.fsw &= (uint16_t)~FSW_C1;
        }
        fpop(c);
        return;
    case 0xdd << 3 | 0: load_mem(c, i, x_fldl, 8); return;
    case 0xdd << 3 | 1: store_mem(c, i, x_fisttpll, 8, 0x8000000000000000ull, 1); return;
    case 0xdd << 3 | 2: store_mem(c, i, x_fstl, 8, 0xfff8000000000000ull, 0); return;
    case 0xdd << 3 | 3: store_mem(c, i, x_fstl, 8, 0xfff8000000000000ull, 1); return;
    case 0xdd << 3 | 4: {                                   /* FRSTOR */
        uint8_t b[108];
        int n16 = i->osz == 2, el = n16 ? 14 : 28;
        fmem_read(c, i->seg, ea_off(c, i), b, el + 80);
        env_apply(c, b, n16);
        for (int k = 0; k < 8; k++) { f80_t *r = ST(c, k); memcpy(r, b + el + 10 * k, 10); }
        x87_update_es(c);
        return;
    }
    case 0xdd << 3 | 6: {                                   /* FNSAVE, then FNINIT */
        off = ea_off(c, i);
        uint8_t regs[80];
        for (int k = 0; k < 8; k++) memcpy(regs + 10 * k, ST(c, k), 10);
        fmem_probe_w(c, i->seg, off, i->osz == 2 ? 94 : 108);
        int el = env_store(c, i, off);
        fmem_write(c, i->seg, off + el, regs, 80);
        finit(c);
        return;
    }
    case 0xdd << 3 | 7: st(c, i->seg, ea_off(c, i), 2, c->fpu.fsw); return;   /* FNSTSW m16 */
    case 0xdf << 3 | 0: load_mem(c, i, x_filds, 2); return;
    case 0xdf << 3 | 1: store_mem(c, i, x_fisttps, 2, 0x8000u, 1); return;
    case 0xdf << 3 | 2: store_mem(c, i, x_fists, 2, 0x8000u, 0); return;
    case 0xdf << 3 | 3: store_mem(c, i, x_fists, 2, 0x8000u, 1); return;
    case 0xdf << 3 | 4: load_mem(c, i, x_fbld, 10); return;
    case 0xdf << 3 | 5: load_mem(c, i, x_fildll, 8); return;
    case 0xdf << 3 | 6: {                                   /* FBSTP: indefinite is FFFF C000... */
        static const uint8_t bcd_indef[10] = { 0, 0, 0, 0, 0, 0, 0, 0xc0, 0xff, 0xff };
        off = ea_off(c, i);
        xop_t o;
        memset(o.m, 0, sizeof(o.m));
        if (!valid(c, 0)) {
            if (!stack_fault(c, 0)) return;
            memcpy(o.m, bcd_indef, 10);
        } else {
            load_f80(&o.a, ST(c, 0));
            run(c, x_fbstp, &o);
            if (!status(c, o.sw, FSW_C1, 1)) return;
        }
        fmem_write(c, i->seg, off, o.m, 10);
        fpop(c);
        return;
    }
    case 0xdf << 3 | 7: store_mem(c, i, x_fistpll, 8, 0x8000000000000000ull, 1); return;
    }
    raise_ud(c);
}

/* ---- register forms ----------------------------------------------------------------- */
static void unary(cpu_t *c, xfn_t fn)
{
    if (!valid(c, 0)) {
        if (fn == x_fsin || fn == x_fcos) c->fpu.fsw &= (uint16_t)~FSW_C2;
        if (stack_fault(c, 0)) set_st(c, 0, &INDEF);
        return;
    }
    xop_t o;
    load_f80(&o.a, ST(c, 0));
    run(c, fn, &o);
    if (status(c, o.sw, ccm(fn), 0)) set_st(c, 0, &o.r0);
}

/* ST(1) = f(ST(0), ST(1)), pop (FPATAN, FYL2X, FYL2XP1) */
static void binpop(cpu_t *c, xfn_t fn)
{
    if (!valid(c, 0) || !valid(c, 1)) {
        if (!stack_fault(c, 0)) return;
        set_st(c, 1, &INDEF);
    } else {
        xop_t o;
        load_f80(&o.a, ST(c, 0)); load_f80(&o.b, ST(c, 1));
        run(c, fn, &o);
        if (!status(c, o.sw, ccm(fn), 0)) return;
        set_st(c, 1, &o.r0);
    }
    fpop(c);
}

/* ST(0) = r1 then push r0 (FXTRACT, FSINCOS, FPTAN) */
static void one_to_two(cpu_t *c, xfn_t fn)
{
    if (fn != x_fxtract && (!valid(c, 0) || ((c->fpu.ftw >> ((top(c) + 7) & 7)) & 1)))
        c->fpu.fsw &= (uint16_t)~FSW_C2;     /* #IS: "C2 = 0" of FSINCOS/FPTAN (measured) */
    if (!valid(c, 0)) {
        if (!stack_fault(c, 0)) return;
        set_st(c, 0, &INDEF);
        fpush(c, &INDEF);
        return;
    }
    if ((c->fpu.ftw >> ((top(c) + 7) & 7)) & 1) {
        if (!stack_fault(c, 1)) return;
        set_st(c, 0, &INDEF);
        fpush(c, &INDEF);
        return;
    }
    xop_t o;
    load_f80(&o.a, ST(c, 0));
    run(c, fn, &o);
    if (!status(c, o.sw, ccm(fn), 0)) return;
    if (fn != x_fxtract && (o.sw & FSW_C2)) return;   /* FSINCOS/FPTAN: operand out of range, nothing changes */
    set_st(c, 0, &o.r1);
    fpush(c, &o.r0);
}

static void x87_reg(cpu_t *c, const insn_t *i)
{
    int op = i->op, ext = i->ext, k = i->rm & 7;
    switch (op) {
    case 0xd8:
        if (ext == 2 || ext == 3) { compare_reg(c, k, 0, 0, ext == 3); return; }
        arith_reg(c, reg_arith[ext], 0, k, 0);
        return;
    case 0xdc: case 0xde:
        if (op == 0xde && ext == 3) { if (k != 1) break; compare_reg(c, 1, 0, 0, 2); return; }   /* FCOMPP */
        if (ext == 2 || ext == 3) { compare_reg(c, k, 0, 0, op == 0xde || ext == 3); return; }   /* FCOM(P) aliases */
        /* DC/DE: ST(i) = ST(i) op ST(0), with SUB/SUBR and DIV/DIVR swapped */
        arith_reg(c, reg_arith[ext >= 4 ? ext ^ 1 : ext], k, 0, op == 0xde);
        return;
    case 0xd9:
        switch (ext) {
        case 0: {                                   /* FLD ST(i) */
            /* the source is checked before the push (measured: underflow wins) */
            if (!valid(c, k)) { if (stack_fault(c, 0)) fpush(c, &INDEF); return; }
            if ((c->fpu.ftw >> ((top(c) + 7) & 7)) & 1) { if (stack_fault(c, 1)) fpush(c, &INDEF); return; }
            f80_t v = *ST(c, k);
            c->fpu.fsw &= (uint16_t)~FSW_C1;
            fpush(c, &v);
            return;
        }
        case 1: {                                   /* FXCH */
            if (!valid(c, 0) || !valid(c, k)) {
                if (!stack_fault(c, 0)) return;
                if (!valid(c, 0)) set_st(c, 0, &INDEF);
                if (!valid(c, k)) set_st(c, k, &INDEF);
            } else c->fpu.fsw &= (uint16_t)~FSW_C1;
            f80_t a = *ST(c, 0), b = *ST(c, k);
            set_st(c, 0, &b); set_st(c, k, &a);
            return;
        }
        case 2: if (k == 0) return; break;           /* FNOP */
        case 3: goto fstp_reg;                       /* FSTP1 alias */
        case 4:
            switch (k) {
            case 0: unary(c, x_fchs); return;
            case 1: unary(c, x_fabs); return;
            case 4: case 5: {                        /* FTST, FXAM */
                if (k == 5 && !valid(c, 0)) {
                    uint16_t sgn = (ST(c, 0)->e & 0x8000) ? FSW_C1 : 0;
                    c->fpu.fsw = (uint16_t)((c->fpu.fsw & ~FSW_CC) | FSW_C3 | FSW_C0 | sgn);
                    return;
                }
                if (!valid(c, 0)) { (void)stack_fault(c, 0); c->fpu.fsw |= FSW_C0 | FSW_C2 | FSW_C3; return; }
                xop_t o;
                load_f80(&o.a, ST(c, 0));
                run(c, k == 4 ? x_ftst : x_fxam, &o);
                (void)status(c, o.sw, FSW_CC, 0);
                return;
            }
            }
            break;
        case 5: {
            static const xfn_t consts[8] = { x_fld1, x_fldl2t, x_fldl2e, x_fldpi, x_fldlg2, x_fldln2, x_fldz, 0 };
            if (!consts[k]) break;
            xop_t o;
            do_push_result(c, consts[k], &o);
            return;
        }
        case 6:
            switch (k) {
            case 0: unary(c, x_f2xm1); return;
            case 1: binpop(c, x_fyl2x); return;
            case 2: one_to_two(c, x_fptan); return;
            case 3: binpop(c, x_fpatan); return;
            case 4: one_to_two(c, x_fxtract); return;
            case 5: arith_reg(c, x_fprem1, 0, 1, 0); return;
            case 6: set_top(c, top(c) - 1); c->fpu.fsw &= (uint16_t)~FSW_C1; return;   /* FDECSTP */
            case 7: set_top(c, top(c) + 1); c->fpu.fsw &= (uint16_t)~FSW_C1; return;   /* FINCSTP */
            }
            break;
        case 7:
            switch (k) {
            case 0: arith_reg(c, x_fprem, 0, 1, 0); return;
            case 1: binpop(c, x_fyl2xp1); return;
            case 2: unary(c, x_fsqrt); return;
            case 3: one_to_two(c, x_fsincos); return;
            case 4: unary(c, x_frndint); return;
            case 5: arith_reg(c, x_fscale, 0, 1, 0); return;
            case 6: unary(c, x_fsin); return;
            case 7: unary(c, x_fcos); return;
            }
            break;
        }
        break;
    case 0xda: case 0xdb:
        if (ext < 4) {                               /* FCMOVcc */
            int cc = cond_fcmov(c, ext) ^ (op == 0xdb);
            if (!valid(c, 0) || !valid(c, k)) {
                if (!stack_fault(c, 0)) return;
                set_st(c, 0, &INDEF);               /* whatever the condition (measured) */
                return;
            }
            if (cc) { f80_t v = *ST(c, k); set_st(c, 0, &v); }   /* C1 unchanged (measured) */
            return;
        }
        if (op == 0xda && ext == 5 && k == 1) { compare_reg(c, 1, 1, 0, 2); return; }   /* FUCOMPP */
        if (op == 0xdb && ext == 4) {
            if (k == 2) { c->fpu.fsw &= 0x7f00; return; }    /* FNCLEX: flags, SF, ES, B */
            if (k == 3) { finit(c); return; }                /* FNINIT */
            if (k == 0 || k == 1 || k == 4) return;          /* FENI/FDISI/FSETPM: no-ops */
            break;
        }
        if (op == 0xdb && (ext == 5 || ext == 6)) { compare_reg(c, k, ext == 5, 1, 0); return; }   /* FUCOMI/FCOMI */
        break;
    case 0xdd:
        switch (ext) {
        case 0: c->fpu.ftw &= (uint8_t)~(1u << phys(c, k)); c->fpu.fsw &= (uint16_t)~FSW_C1; return;   /* FFREE */
        case 1: { f80_t a = *ST(c, 0), b = *ST(c, k); int v0 = valid(c, 0), vk = valid(c, k);
                  if (!v0 || !vk) { if (!stack_fault(c, 0)) return; if (!v0) a = INDEF; if (!vk) b = INDEF; }
                  else c->fpu.fsw &= (uint16_t)~FSW_C1;
                  set_st(c, 0, &b); set_st(c, k, &a); return; }
        case 2: case 3:
        fstp_reg:
            if (!valid(c, 0)) {
                if (!stack_fault(c, 0)) return;
                set_st(c, k, &INDEF);
            } else {
                f80_t v = *ST(c, 0);
                set_st(c, k, &v);
                c->fpu.fsw &= (uint16_t)~FSW_C1;
            }
            if (ext != 2 || op != 0xdd) fpop(c);
            return;
        case 4: compare_reg(c, k, 1, 0, 0); return;   /* FUCOM */
        case 5: compare_reg(c, k, 1, 0, 1); return;   /* FUCOMP */
        }
        break;
    case 0xdf:
        switch (ext) {
        case 0: c->fpu.ftw &= (uint8_t)~(1u << phys(c, k)); c->fpu.fsw &= (uint16_t)~FSW_C1; fpop(c); return;   /* FFREEP */
        case 2: case 3: goto fstp_reg;
        case 4: if (k == 0) { setreg(c, R_RAX, 2, c->fpu.fsw); return; } break;   /* FNSTSW AX */
        case 5: compare_reg(c, k, 1, 1, 1); return;   /* FUCOMIP */
        case 6: compare_reg(c, k, 0, 1, 1); return;   /* FCOMIP */
        }
        break;
    }
    raise_ud(c);
}

/* control instructions that do not check for pending exceptions (FN*) */
static int nonwaiting(const insn_t *i)
{
    if (i->mod != 3)
        return (i->op == 0xd9 && (i->ext == 6 || i->ext == 7)) || (i->op == 0xdd && (i->ext == 6 || i->ext == 7));
    return (i->op == 0xdb && i->ext == 4 && ((i->rm & 7) == 2 || (i->rm & 7) == 3)) ||
           (i->op == 0xdf && i->ext == 4 && (i->rm & 7) == 0);
}

HANDLER(h_x87)
{
    x87_check(c, !nonwaiting(i));
    if (i->mod == 3) x87_reg(c, i);
    else x87_mem(c, i);
}
