/*
 * SSE, SSE2 and SSE3 (0F xx with the 66/F2/F3 mandatory prefixes), LDMXCSR,
 * STMXCSR, FXSAVE and FXRSTOR.
 *
 * Every computing instruction runs on the host's own SSE unit (same ISA, so
 * bit-exact): the operands are copied to xmm0/xmm1 inside one asm block that
 * executes the guest's instruction.  Around it the guest MXCSR is loaded into
 * the host with every exception masked and the flags cleared (rounding
 * control, DAZ and FTZ are the guest's), and the host MXCSR is put back
 * before any C code runs.  The exception flags the host raised are then
 * checked against the guest's masks (SDM Vol 1 11.5):
 *   - none unmasked: flags ORed into the guest MXCSR, result committed;
 *   - an unmasked pre-computation exception (IE/DE/ZE): only those flags are
 *     recorded, the destination is unchanged and #XM (CR4.OSXMMEXCPT=1) or
 *     #UD (=0) is raised (SDM Vol 1 11.5.2.1, Vol 3A 6.15 "#XM");
 *   - an unmasked post-computation exception (OE/UE/PE): flags recorded,
 *     destination unchanged, #XM/#UD.
 * Known approximation: with UE unmasked, a tiny but exact result raises #XM
 * on hardware but not here (the host ran with UE masked).
 */
#include "fpuint.h"
#include "handlers.h"

typedef void (*sop_t)(xmm_t *d, const xmm_t *s);
int mmx_opcode(int op);                 /* mmx.c */
void mmx_check(cpu_t *c);
void h_mmx(cpu_t *c, const insn_t *i);

/* ---- host MXCSR bracket ------------------------------------------------- */
static uint32_t host_mxcsr_mask = 0xffbf;

uint32_t fpu_mxcsr_mask(void) { return host_mxcsr_mask; }

__attribute__((constructor)) static void probe_mxcsr_mask(void)
{
    static uint8_t area[512] __attribute__((aligned(16)));
    memset(area, 0, sizeof(area));
    __asm__ volatile("fxsave %0" : "=m"(area));
    uint32_t m;
    memcpy(&m, area + 28, 4);
    host_mxcsr_mask = m ? m : 0xffbf;   /* SDM Vol 1 11.6.6: 0 means 0xFFBF */
}

static inline uint32_t run_op(cpu_t *c, sop_t fn, xmm_t *d, const xmm_t *s)
{
    uint32_t host, g = (c->fpu.mxcsr & ~0x3fu) | 0x1f80u, out;
    __asm__ volatile("stmxcsr %0\n\tldmxcsr %1" : "=m"(host) : "m"(g) : "memory");
    fn(d, s);
    __asm__ volatile("stmxcsr %0\n\tldmxcsr %1" : "=m"(out) : "m"(host) : "memory");
    return out & 0x3f;
}

static NORETURN void simd_exc(cpu_t *c)
{
    if (c->cr4 & CR4_OSXMMEXCPT) raise_exc(c, EX_XM, 0, 0);
    raise_ud(c);
}

/* Merge the flags of one operation; raises if an unmasked one occurred. */
static inline void mx_flags(cpu_t *c, uint32_t f)
{
    uint32_t unmasked = f & ~(c->fpu.mxcsr >> 7) & 0x3f;
    if (unlikely(unmasked)) {
        uint32_t pre = f & 0x7;
        /* unmasked OE/UE: PE is not recorded (measured; SDM Vol 1 11.5.2.2-3
         * deliver the exception before the inexact result is written) */
        c->fpu.mxcsr |= (pre & unmasked) ? pre : (unmasked & 0x18) ? (f & ~0x20u) : f;
        simd_exc(c);
    }
    c->fpu.mxcsr |= f;
}

/* ---- unmasked overflow/underflow (SDM Vol 1 11.5.2.2, 11.5.2.3) -----------
 * With OM or UM clear, OE/UE/PE follow the result rounded to the destination
 * precision with an unbounded exponent, and UE is raised for any tiny result
 * (exact or not).  The host ran with everything masked, so those flags are
 * recomputed lane by lane on the host x87 (15-bit exponent, precision
 * control 24/53 bits, the guest's rounding control). */
static uint16_t x87_lane(int op, int din, int pc, int rc, uint64_t a, uint64_t b, uint16_t *exp)
{
    struct { uint64_t m; uint16_t e; } __attribute__((packed, aligned(16))) r;
    uint16_t save = 0, sw, cw = (uint16_t)(0x3f | pc << 8 | rc << 10);
#define L(ld, insn) __asm__ volatile("fnstcw %[save]\n\tfnclex\n\tfldcw %[cw]\n\t" ld " %[b]\n\t" ld " %[a]\n\t" insn \
        "\n\tfstpt %[r]\n\tfnstsw %[sw]\n\tfninit\n\tfldcw %[save]" \
        : [save] "+m"(save), [sw] "=m"(sw), [r] "=m"(r) : [cw] "m"(cw), [a] "m"(a), [b] "m"(b) \
        : "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)", "memory")
#define OPS(ld) switch (op) { \
    case 0x58: L(ld, "fadd %%st(1), %%st"); break; case 0x59: L(ld, "fmul %%st(1), %%st"); break; \
    case 0x5c: L(ld, "fsub %%st(1), %%st"); break; case 0x5e: L(ld, "fdiv %%st(1), %%st"); break; \
    case 0x51: L(ld, "fsqrt"); break; default: L(ld, "fldz\n\tfaddp"); break; }
    if (din) { OPS("fldl") } else { OPS("flds") }
#undef OPS
#undef L
    *exp = r.e & 0x7fff;
    if (!(r.m >> 63)) *exp = 0;   /* zero */
    return sw;
}

static uint32_t scalar_lane_flags(cpu_t *c, int op, int din, uint64_t dv, uint64_t sv);

static uint32_t unbounded_flags(cpu_t *c, int op, int p, const xmm_t *d, const xmm_t *s, int *handled)
{
    int dout, din, n;
    uint64_t A[4], B[4];
    int OP[4];
    *handled = 0;
    if (op == 0x5a) {
        if (p != 1 && p != 3) return 0;
        din = 1; dout = 0; n = p == 1 ? 2 : 1;
    } else if (op == 0x51 || op == 0x58 || op == 0x59 || op == 0x5c || op == 0x5e) {
        din = dout = (p & 1); n = p == 0 ? 4 : p == 1 ? 2 : 1;
    } else if ((op == 0x7c || op == 0x7d || op == 0xd0) && (p == 1 || p == 3)) {
        din = dout = p == 1; n = p == 1 ? 2 : 4;
    } else return 0;
    *handled = 1;
#define LANE(v, k) (din ? (v)->q[k] : (uint64_t)(v)->d[k])
    for (int k = 0; k < n; k++) {
        if (op == 0x7c || op == 0x7d) {          /* HADD/HSUB: pairs of the destination, then of the source */
            const xmm_t *v = k < n / 2 ? d : s;
            int j = 2 * (k % (n / 2));
            A[k] = LANE(v, j); B[k] = LANE(v, j + 1); OP[k] = op == 0x7c ? 0x58 : 0x5c;
        } else {
            A[k] = LANE(d, k); B[k] = LANE(s, k);
            OP[k] = op == 0xd0 ? ((k & 1) ? 0x58 : 0x5c) : op;
            if (op == 0x51 || op == 0x5a) { A[k] = LANE(s, k); B[k] = 0; }   /* unary */
        }
    }
#undef LANE
    int rc = (c->fpu.mxcsr >> 13) & 3, daz = !!(c->fpu.mxcsr & MXCSR_DAZ);
    int emin = dout ? -1022 : -126, emax = dout ? 1023 : 127;
    int unary = op == 0x51 || op == 0x5a;
    uint32_t f = 0;
    for (int k = 0; k < n; k++) {
        uint64_t a = A[k], b = B[k];
        int nan = 0;
        for (int j = 0; j < (unary ? 1 : 2); j++) {
            uint64_t *v = j ? &b : &a;
            if (din) {
                if (((*v >> 52) & 0x7ff) == 0x7ff) nan = 1;
                if (daz && !((*v >> 52) & 0x7ff)) *v &= 1ull << 63;
            } else {
                if (((*v >> 23) & 0xff) == 0xff) nan = 1;
                if (daz && !((*v >> 23) & 0xff)) *v &= 1u << 31;
            }
        }
        if (nan) continue;
        uint16_t e;
        uint16_t sw = x87_lane(OP[k], din, dout ? 2 : 0, rc, a, b, &e);
        if (sw & 0x5) continue;                        /* invalid / divide by zero: no result */
        if (e && e != 0x7fff) {
            int ue = (int)e - 16383;
            if (ue > emax) f |= 0x08;
            else if (ue < emin) {
                /* UE masked: the lane's masked response (denormal or flushed
                 * result; UE only if inexact) comes from the host's SSE */
                if (c->fpu.mxcsr & 0x800) { f |= scalar_lane_flags(c, OP[k], din, A[k], B[k]) & 0x30; continue; }
                f |= 0x10;
            }
        }
        if (sw & 0x20) f |= 0x20;
    }
    return f;
}

/* ---- the host operations -------------------------------------------------- */
#define OP(name, insn) \
    static void s_##name(xmm_t *d, const xmm_t *s) { \
        __asm__ volatile("movdqa %0, %%xmm0\n\tmovdqa %1, %%xmm1\n\t" insn " %%xmm1, %%xmm0\n\tmovdqa %%xmm0, %0" \
                         : "+m"(*d) : "m"(*s) : "xmm0", "xmm1"); }
#define O(n) OP(n, #n)
#define OPS4(n) O(n##ps) O(n##pd) O(n##ss) O(n##sd)
OPS4(add) OPS4(sub) OPS4(mul) OPS4(div) OPS4(min) OPS4(max) OPS4(sqrt)
O(andps) O(andpd) O(andnps) O(andnpd) O(orps) O(orpd) O(xorps) O(xorpd)
O(rcpps) O(rcpss) O(rsqrtps) O(rsqrtss)
O(unpcklps) O(unpcklpd) O(unpckhps) O(unpckhpd)
O(cvtps2pd) O(cvtpd2ps) O(cvtss2sd) O(cvtsd2ss) O(cvtdq2ps) O(cvtps2dq) O(cvttps2dq)
O(cvttpd2dq) O(cvtdq2pd) O(cvtpd2dq)
O(haddps) O(haddpd) O(hsubps) O(hsubpd) O(addsubps) O(addsubpd)
O(movsldup) O(movshdup) O(movddup)
O(punpcklbw) O(punpcklwd) O(punpckldq) O(packsswb) O(pcmpgtb) O(pcmpgtw) O(pcmpgtd) O(packuswb)
O(punpckhbw) O(punpckhwd) O(punpckhdq) O(packssdw) O(punpcklqdq) O(punpckhqdq)
O(pcmpeqb) O(pcmpeqw) O(pcmpeqd)
O(psrlw) O(psrld) O(psrlq) O(paddq) O(pmullw)
O(psubusb) O(psubusw) O(pminub) O(pand) O(paddusb) O(paddusw) O(pmaxub) O(pandn)
O(pavgb) O(psraw) O(psrad) O(pavgw) O(pmulhuw) O(pmulhw)
O(psubsb) O(psubsw) O(pminsw) O(por) O(paddsb) O(paddsw) O(pmaxsw) O(pxor)
O(psllw) O(pslld) O(psllq) O(pmuludq) O(pmaddwd) O(psadbw)
O(psubb) O(psubw) O(psubd) O(psubq) O(paddb) O(paddw) O(paddd)
#define CMP8(n) OP(n##0, #n " $0,") OP(n##1, #n " $1,") OP(n##2, #n " $2,") OP(n##3, #n " $3,") \
                OP(n##4, #n " $4,") OP(n##5, #n " $5,") OP(n##6, #n " $6,") OP(n##7, #n " $7,")
CMP8(cmpps) CMP8(cmppd) CMP8(cmpss) CMP8(cmpsd)
#define CMPT(n) { s_##n##0, s_##n##1, s_##n##2, s_##n##3, s_##n##4, s_##n##5, s_##n##6, s_##n##7 }
static const sop_t cmp_tab[4][8] = { CMPT(cmpps), CMPT(cmppd), CMPT(cmpss), CMPT(cmpsd) };

/* prefix index: 0 none, 1 66, 2 F3, 3 F2 */
#define P4(a, b, c, d) { s_##a, s_##b, s_##c, s_##d }
#define PD(a, b) { s_##a, s_##b, 0, 0 }
#define I66(a) { 0, s_##a, 0, 0 }
static const sop_t bin_tab[256][4] = {
    [0x14] = PD(unpcklps, unpcklpd), [0x15] = PD(unpckhps, unpckhpd),
    [0x12] = { 0, 0, s_movsldup, s_movddup }, [0x16] = { 0, 0, s_movshdup, 0 },
    [0x51] = P4(sqrtps, sqrtpd, sqrtss, sqrtsd),
    [0x52] = { s_rsqrtps, 0, s_rsqrtss, 0 }, [0x53] = { s_rcpps, 0, s_rcpss, 0 },
    [0x54] = PD(andps, andpd), [0x55] = PD(andnps, andnpd), [0x56] = PD(orps, orpd), [0x57] = PD(xorps, xorpd),
    [0x58] = P4(addps, addpd, addss, addsd), [0x59] = P4(mulps, mulpd, mulss, mulsd),
    [0x5a] = P4(cvtps2pd, cvtpd2ps, cvtss2sd, cvtsd2ss),
    [0x5b] = { s_cvtdq2ps, s_cvtps2dq, s_cvttps2dq, 0 },
    [0x5c] = P4(subps, subpd, subss, subsd), [0x5d] = P4(minps, minpd, minss, minsd),
    [0x5e] = P4(divps, divpd, divss, divsd), [0x5f] = P4(maxps, maxpd, maxss, maxsd),
    [0x60] = I66(punpcklbw), [0x61] = I66(punpcklwd), [0x62] = I66(punpckldq), [0x63] = I66(packsswb),
    [0x64] = I66(pcmpgtb), [0x65] = I66(pcmpgtw), [0x66] = I66(pcmpgtd), [0x67] = I66(packuswb),
    [0x68] = I66(punpckhbw), [0x69] = I66(punpckhwd), [0x6a] = I66(punpckhdq), [0x6b] = I66(packssdw),
    [0x6c] = I66(punpcklqdq), [0x6d] = I66(punpckhqdq),
    [0x74] = I66(pcmpeqb), [0x75] = I66(pcmpeqw), [0x76] = I66(pcmpeqd),
    [0x7c] = { 0, s_haddpd, 0, s_haddps }, [0x7d] = { 0, s_hsubpd, 0, s_hsubps },
    [0xd0] = { 0, s_addsubpd, 0, s_addsubps },
    [0xd1] = I66(psrlw), [0xd2] = I66(psrld), [0xd3] = I66(psrlq), [0xd4] = I66(paddq), [0xd5] = I66(pmullw),
    [0xd8] = I66(psubusb), [0xd9] = I66(psubusw), [0xda] = I66(pminub), [0xdb] = I66(pand),
    [0xdc] = I66(paddusb), [0xdd] = I66(paddusw), [0xde] = I66(pmaxub), [0xdf] = I66(pandn),
    [0xe0] = I66(pavgb), [0xe1] = I66(psraw), [0xe2] = I66(psrad), [0xe3] = I66(pavgw),
    [0xe4] = I66(pmulhuw), [0xe5] = I66(pmulhw), [0xe6] = { 0, s_cvttpd2dq, s_cvtdq2pd, s_cvtpd2dq },
    [0xe8] = I66(psubsb), [0xe9] = I66(psubsw), [0xea] = I66(pminsw), [0xeb] = I66(por),
    [0xec] = I66(paddsb), [0xed] = I66(paddsw), [0xee] = I66(pmaxsw), [0xef] = I66(pxor),
    [0xf1] = I66(psllw), [0xf2] = I66(pslld), [0xf3] = I66(psllq), [0xf4] = I66(pmuludq),
    [0xf5] = I66(pmaddwd), [0xf6] = I66(psadbw),
    [0xf8] = I66(psubb), [0xf9] = I66(psubw), [0xfa] = I66(psubd), [0xfb] = I66(psubq),
    [0xfc] = I66(paddb), [0xfd] = I66(paddw), [0xfe] = I66(paddd),
};

static uint32_t scalar_lane_flags(cpu_t *c, int op, int din, uint64_t dv, uint64_t sv)
{
    sop_t fn = bin_tab[op][din ? 3 : 2];
    if (op == 0x5a) fn = s_cvtsd2ss;
    xmm_t d = { .q = { 0, 0 } }, s = { .q = { 0, 0 } };
    if (op == 0x51 || op == 0x5a) sv = dv;      /* unary: the lane value is the source */
    if (din || op == 0x5a) { d.q[0] = dv; s.q[0] = sv; } else { d.d[0] = (uint32_t)dv; s.d[0] = (uint32_t)sv; }
    return run_op(c, fn, &d, &s);
}

/* memory operand size of the binary forms: scalar single 4, scalar double and
 * the half-width conversions 8, everything else 16 (and 16-byte aligned) */
static int bin_msize(int op, int p)
{
    if (op == 0x5a) return (int[]){ 8, 16, 4, 8 }[p];
    if (op == 0x5b) return 16;
    if (op == 0xe6) return p == 2 ? 8 : 16;
    if (op == 0x12 && p == 3) return 8;                  /* movddup m64 */
    if ((op >= 0x51 && op <= 0x5f) || op == 0xc2) return p == 2 ? 4 : p == 3 ? 8 : 16;
    return 16;
}

/* ---- operands ---------------------------------------------------------- */
#define X(n) (&c->fpu.xmm[(n) & 15])

static inline uint64_t mem_off_aligned(cpu_t *c, const insn_t *i, int size, int align)
{
    uint64_t off = ea_off(c, i);
    if (align && ((c->segbase[i->seg] + off) & 15)) raise_gp(c, 0);
    (void)size;
    return off;
}
static inline void src_op(cpu_t *c, const insn_t *i, xmm_t *s, int size, int align)
{
    if (i->mod == 3) { *s = *X(i->rm); return; }
    uint64_t off = mem_off_aligned(c, i, size, align && size == 16);
    s->q[0] = s->q[1] = 0;
    fmem_read(c, i->seg, off, s, size);
}
static inline void store_op(cpu_t *c, const insn_t *i, const void *v, int size, int align)
{
    uint64_t off = mem_off_aligned(c, i, size, align && size == 16);
    fmem_write(c, i->seg, off, v, size);
}

static inline int gsz(const insn_t *i) { return i->osz == 8 ? 8 : 4; }

static inline void sse_check(cpu_t *c)
{
    if (unlikely((c->cr0 & CR0_EM) || !(c->cr4 & CR4_OSFXSR))) raise_ud(c);
    if (unlikely(c->cr0 & CR0_TS)) raise_exc(c, EX_NM, 0, 0);
}

/* ---- conversions and compares with GPR/EFLAGS results --------------------- */
static uint32_t cvt_to_int(cpu_t *c, int op, int dbl, int q, const xmm_t *s, uint64_t *res)
{
    uint32_t host, g = (c->fpu.mxcsr & ~0x3fu) | 0x1f80u, out;
    uint64_t r;
    __asm__ volatile("stmxcsr %0\n\tldmxcsr %1" : "=m"(host) : "m"(g) : "memory");
#define CVT(insn, sfx) __asm__ volatile("movdqa %1, %%xmm1\n\t" insn " %%xmm1, %" sfx "0" : "=r"(r) : "m"(*s) : "xmm1")
    switch ((op == 0x2c) << 2 | dbl << 1 | q) {
    case 0: CVT("cvtss2si", "k"); break;
    case 1: CVT("cvtss2si", "q"); break;
    case 2: CVT("cvtsd2si", "k"); break;
    case 3: CVT("cvtsd2si", "q"); break;
    case 4: CVT("cvttss2si", "k"); break;
    case 5: CVT("cvttss2si", "q"); break;
    case 6: CVT("cvttsd2si", "k"); break;
    default: CVT("cvttsd2si", "q"); break;
    }
#undef CVT
    __asm__ volatile("stmxcsr %0\n\tldmxcsr %1" : "=m"(out) : "m"(host) : "memory");
    *res = q ? r : (uint32_t)r;
    return out & 0x3f;
}

static uint32_t cvt_from_int(cpu_t *c, int dbl, int q, xmm_t *d, uint64_t v)
{
    uint32_t host, g = (c->fpu.mxcsr & ~0x3fu) | 0x1f80u, out;
    __asm__ volatile("stmxcsr %0\n\tldmxcsr %1" : "=m"(host) : "m"(g) : "memory");
    switch (dbl << 1 | q) {
    case 0: __asm__ volatile("movdqa %0, %%xmm0\n\tcvtsi2ssl %k1, %%xmm0\n\tmovdqa %%xmm0, %0" : "+m"(*d) : "r"(v) : "xmm0"); break;
    case 1: __asm__ volatile("movdqa %0, %%xmm0\n\tcvtsi2ssq %q1, %%xmm0\n\tmovdqa %%xmm0, %0" : "+m"(*d) : "r"(v) : "xmm0"); break;
    case 2: __asm__ volatile("movdqa %0, %%xmm0\n\tcvtsi2sdl %k1, %%xmm0\n\tmovdqa %%xmm0, %0" : "+m"(*d) : "r"(v) : "xmm0"); break;
    default: __asm__ volatile("movdqa %0, %%xmm0\n\tcvtsi2sdq %q1, %%xmm0\n\tmovdqa %%xmm0, %0" : "+m"(*d) : "r"(v) : "xmm0"); break;
    }
    __asm__ volatile("stmxcsr %0\n\tldmxcsr %1" : "=m"(out) : "m"(host) : "memory");
    return out & 0x3f;
}

static uint32_t comis(cpu_t *c, int op, int dbl, const xmm_t *a, const xmm_t *b, uint64_t *fl)
{
    uint32_t host, g = (c->fpu.mxcsr & ~0x3fu) | 0x1f80u, out;
    uint8_t z, p, cf;
    __asm__ volatile("stmxcsr %0\n\tldmxcsr %1" : "=m"(host) : "m"(g) : "memory");
#define CMI(insn) __asm__ volatile("movdqa %3, %%xmm0\n\tmovdqa %4, %%xmm1\n\t" insn " %%xmm1, %%xmm0" \
                                   : "=@ccz"(z), "=@ccp"(p), "=@ccc"(cf) : "m"(*a), "m"(*b) : "xmm0", "xmm1")
    switch ((op == 0x2f) << 1 | dbl) {
    case 0: CMI("ucomiss"); break;
    case 1: CMI("ucomisd"); break;
    case 2: CMI("comiss"); break;
    default: CMI("comisd"); break;
    }
#undef CMI
    __asm__ volatile("stmxcsr %0\n\tldmxcsr %1" : "=m"(out) : "m"(host) : "memory");
    *fl = (z ? F_ZF : 0) | (p ? F_PF : 0) | (cf ? F_CF : 0);
    return out & 0x3f;
}

/* ---- shuffles and lane moves done in C (pure bit movement) ----------------- */
static void shift_bytes(xmm_t *d, int n, int left)
{
    xmm_t r = { .q = { 0, 0 } };
    if (n > 15) n = 16;
    for (int k = 0; k < 16; k++) {
        int src = left ? k - n : k + n;
        if (src >= 0 && src < 16) r.b[k] = d->b[src];
    }
    *d = r;
}

/* ---- the handler -------------------------------------------------------------- */
/* MMX <-> SSE conversions (0F 2A/2C/2D without prefix or with 66) */
static uint32_t cvt_mmx(cpu_t *c, int which, xmm_t *x, uint64_t *m)
{
    uint32_t host, g = (c->fpu.mxcsr & ~0x3fu) | 0x1f80u, out;
    __asm__ volatile("stmxcsr %0\n\tldmxcsr %1" : "=m"(host) : "m"(g) : "memory");
#define CV(insn, a, b) __asm__ volatile("movq %1, %%mm0\n\tmovdqa %0, %%xmm0\n\t" insn " " a ", " b "\n\t" \
                                        "movdqa %%xmm0, %0\n\tmovq %%mm0, %1\n\temms" \
                                        : "+m"(*x), "+m"(*m) : : "xmm0", "mm0", "st")
    switch (which) {
    case 0: CV("cvtpi2ps", "%%mm0", "%%xmm0"); break;
    case 1: CV("cvtpi2pd", "%%mm0", "%%xmm0"); break;
    case 2: CV("cvtps2pi", "%%xmm0", "%%mm0"); break;
    case 3: CV("cvttps2pi", "%%xmm0", "%%mm0"); break;
    case 4: CV("cvtpd2pi", "%%xmm0", "%%mm0"); break;
    default: CV("cvttpd2pi", "%%xmm0", "%%mm0"); break;
    }
#undef CV
    __asm__ volatile("stmxcsr %0\n\tldmxcsr %1" : "=m"(out) : "m"(host) : "memory");
    return out & 0x3f;
}

static void mmx_conv(cpu_t *c, const insn_t *i, int p)
{
    xmm_t x, s;
    uint64_t m;
    if (i->op == 0x2a) {                     /* CVTPI2PS / CVTPI2PD xmm, mm/m64 */
        if (i->mod == 3) { mmx_check(c); m = c->fpu.st[i->rm & 7].m; }
        else m = ld(c, i->seg, ea_off(c, i), 8);
        x = c->fpu.xmm[i->reg & 15];
        uint32_t f = cvt_mmx(c, p, &x, &m);
        if (i->mod == 3) { c->fpu.fsw &= (uint16_t)~0x3800; c->fpu.ftw = 0xff; }   /* MMX transition, even with #XM */
        mx_flags(c, f);
        c->fpu.xmm[i->reg & 15] = x;
        return;
    }
    mmx_check(c);                            /* CVT(T)PS2PI / CVT(T)PD2PI mm, xmm/m */
    src_op(c, i, &s, p ? 16 : 8, 1);
    m = 0;
    uint32_t f = cvt_mmx(c, 2 + 2 * p + (i->op == 0x2c), &s, &m);
    c->fpu.fsw &= (uint16_t)~0x3800; c->fpu.ftw = 0xff;     /* MMX transition, even with #XM */
    mx_flags(c, f);
    c->fpu.st[i->reg & 7].m = m; c->fpu.st[i->reg & 7].e = 0xffff;
}

HANDLER(h_sse)
{
    int op = i->op;
    int p = i->rep == 0xf3 ? 2 : i->rep == 0xf2 ? 3 : i->pfx66 ? 1 : 0;
    if (p == 0 && mmx_opcode(op)) { h_mmx(c, i); return; }
    sse_check(c);
    xmm_t s, t;
    xmm_t *d = X(i->reg);
    uint8_t ib = (uint8_t)i->imm;

    sop_t fn = bin_tab[op][p];
    if (op == 0xc2) fn = p < 4 ? cmp_tab[p == 1 ? 1 : p == 2 ? 2 : p == 3 ? 3 : 0][ib & 7] : 0;
    if (fn) {
        if ((op == 0x12 || op == 0x16) && p < 2) goto moves;   /* MOVLPS/MOVHLPS/MOVLHPS... below */
        int msz = bin_msize(op, p);
        src_op(c, i, &s, msz, 1);
        t = *d;
        uint32_t f = run_op(c, fn, &t, &s);
        if (unlikely((~c->fpu.mxcsr & 0x0c00) && !(f & ~(c->fpu.mxcsr >> 7) & 0x7))) {
            int handled;
            uint32_t u = unbounded_flags(c, op, p, d, &s, &handled);
            if (handled && (u & ~(c->fpu.mxcsr >> 7) & 0x18)) {
                c->fpu.mxcsr |= (f & 0x7) | u;
                simd_exc(c);
            }
        }
        mx_flags(c, f);
        *d = t;
        return;
    }
moves:
    switch (op) {
    case 0x10: case 0x11: {           /* MOVUPS/MOVUPD/MOVSS/MOVSD */
        int sz = p == 2 ? 4 : p == 3 ? 8 : 16;
        if (op == 0x10) {
            if (i->mod == 3) {
                if (sz == 16) *d = *X(i->rm);
                else memcpy(d, X(i->rm), sz);
            } else { src_op(c, i, &s, sz, 0); *d = s; }
        } else {
            if (i->mod == 3) {
                if (sz == 16) *X(i->rm) = *d;
                else memcpy(X(i->rm), d, sz);
            } else store_op(c, i, d, sz, 0);
        }
        return;
    }
    case 0x12: case 0x13: case 0x16: case 0x17: {   /* MOVLPS/MOVHLPS/MOVLPD, MOVHPS/MOVLHPS/MOVHPD */
        if (p > 1) break;
        int hi = op >= 0x16;
        if (op == 0x12 || op == 0x16) {
            if (i->mod == 3) {
                if (p == 1) break;
                if (hi) d->q[1] = X(i->rm)->q[0];     /* MOVLHPS */
                else d->q[0] = X(i->rm)->q[1];        /* MOVHLPS */
            } else {
                uint64_t v; fmem_read(c, i->seg, ea_off(c, i), &v, 8);
                d->q[hi] = v;
            }
        } else {
            if (i->mod == 3) break;
            store_op(c, i, &d->q[hi], 8, 0);
        }
        return;
    }
    case 0x28: case 0x29:             /* MOVAPS/MOVAPD */
        if (p > 1) break;
        if (op == 0x28) { src_op(c, i, &s, 16, 1); *d = s; }
        else if (i->mod == 3) *X(i->rm) = *d;
        else store_op(c, i, d, 16, 1);
        return;
    case 0x2a: {                      /* CVTSI2SS/SD */
        if (p < 2) { mmx_conv(c, i, p); return; }
        int q = gsz(i) == 8;
        uint64_t v = rd_rm(c, i, q ? 8 : 4);
        t = *d;
        uint32_t f = cvt_from_int(c, p == 3, q, &t, v);
        mx_flags(c, f);
        *d = t;
        return;
    }
    case 0x2b:                        /* MOVNTPS/MOVNTPD */
        if (p > 1 || i->mod == 3) break;
        store_op(c, i, d, 16, 1);
        return;
    case 0x2c: case 0x2d: {           /* CVT(T)SS2SI / CVT(T)SD2SI */
        if (p < 2) { mmx_conv(c, i, p); return; }
        int dbl = p == 3, q = gsz(i) == 8;
        src_op(c, i, &s, dbl ? 8 : 4, 0);
        uint64_t r;
        uint32_t f = cvt_to_int(c, op, dbl, q, &s, &r);
        mx_flags(c, f);
        setreg(c, i->reg, q ? 8 : 4, r);
        return;
    }
    case 0x2e: case 0x2f: {           /* (U)COMISS / (U)COMISD */
        if (p > 1) break;
        src_op(c, i, &s, p ? 8 : 4, 0);
        uint64_t fl;
        uint32_t f = comis(c, op, p, d, &s, &fl);
        mx_flags(c, f);
        flags_set_exact(c, fl);
        return;
    }
    case 0x50: {                      /* MOVMSKPS/PD */
        if (p > 1 || i->mod != 3) break;
        xmm_t *a = X(i->rm);
        uint32_t m = p ? (uint32_t)(a->q[0] >> 63) | (uint32_t)(a->q[1] >> 63) << 1
                       : (a->d[0] >> 31) | (a->d[1] >> 31) << 1 | (a->d[2] >> 31) << 2 | (a->d[3] >> 31) << 3;
        setreg(c, i->reg, gsz(i), m);
        return;
    }
    case 0x6e:                        /* MOVD/MOVQ xmm, r/m */
        if (p != 1) break;
        { uint64_t v = rd_rm(c, i, gsz(i)); d->q[0] = v; d->q[1] = 0; }
        return;
    case 0x6f: case 0x7f:             /* MOVDQA / MOVDQU */
        if (p != 1 && p != 2) break;
        if (op == 0x6f) { src_op(c, i, &s, 16, p == 1); *d = s; }
        else if (i->mod == 3) *X(i->rm) = *d;
        else store_op(c, i, d, 16, p == 1);
        return;
    case 0x70: {                      /* PSHUFD / PSHUFHW / PSHUFLW */
        if (p == 0) break;
        src_op(c, i, &s, 16, 1);
        if (p == 1) for (int k = 0; k < 4; k++) t.d[k] = s.d[(ib >> (2 * k)) & 3];
        else {
            t = s;
            int base = p == 2 ? 4 : 0;
            for (int k = 0; k < 4; k++) t.w[base + k] = s.w[base + ((ib >> (2 * k)) & 3)];
        }
        *d = t;
        return;
    }
    case 0x71: case 0x72: case 0x73: {   /* shift groups, immediate count */
        if (p != 1 || i->mod != 3) break;
        xmm_t *r = X(i->rm);
        static const sop_t g[3][8] = {
            { 0, 0, s_psrlw, 0, s_psraw, 0, s_psllw, 0 },
            { 0, 0, s_psrld, 0, s_psrad, 0, s_pslld, 0 },
            { 0, 0, s_psrlq, 0, 0, 0, s_psllq, 0 } };
        if (op == 0x73 && (i->ext == 3 || i->ext == 7)) { shift_bytes(r, ib, i->ext == 7); return; }
        sop_t f = g[op - 0x71][i->ext];
        if (!f) break;
        s.q[0] = ib; s.q[1] = 0;
        f(r, &s);
        return;
    }
    case 0x7e:
        if (p == 1) { wr_rm(c, i, gsz(i), gsz(i) == 8 ? d->q[0] : d->d[0]); return; }   /* MOVD/MOVQ r/m, xmm */
        if (p == 2) { src_op(c, i, &s, 8, 0); d->q[0] = s.q[0]; d->q[1] = 0; return; }  /* MOVQ xmm, xmm/m64 */
        break;
    case 0xc3:                        /* MOVNTI */
        if (p != 0 || i->mod == 3) break;
        st(c, i->seg, ea_off(c, i), gsz(i), getreg(c, i->reg, gsz(i)));
        return;
    case 0xc4:                        /* PINSRW */
        if (p != 1) break;
        d->w[ib & 7] = (uint16_t)rd_rm(c, i, 2);
        return;
    case 0xc5:                        /* PEXTRW */
        if (p != 1 || i->mod != 3) break;
        setreg(c, i->reg, gsz(i), X(i->rm)->w[ib & 7]);
        return;
    case 0xc6:                        /* SHUFPS / SHUFPD */
        if (p > 1) break;
        src_op(c, i, &s, 16, 1);
        if (p == 0) {
            t.d[0] = d->d[ib & 3]; t.d[1] = d->d[(ib >> 2) & 3];
            t.d[2] = s.d[(ib >> 4) & 3]; t.d[3] = s.d[(ib >> 6) & 3];
        } else {
            t.q[0] = d->q[ib & 1]; t.q[1] = s.q[(ib >> 1) & 1];
        }
        *d = t;
        return;
    case 0xd6:                        /* MOVQ xmm/m64, xmm; MOVQ2DQ; MOVDQ2Q */
        if ((p == 2 || p == 3) && i->mod == 3) {
            mmx_check(c);
            c->fpu.fsw &= (uint16_t)~0x3800; c->fpu.ftw = 0xff;
            if (p == 2) { X(i->reg)->q[0] = c->fpu.st[i->rm & 7].m; X(i->reg)->q[1] = 0; }
            else { c->fpu.st[i->reg & 7].m = X(i->rm)->q[0]; c->fpu.st[i->reg & 7].e = 0xffff; }
            return;
        }
        if (p != 1) break;
        if (i->mod == 3) { X(i->rm)->q[0] = d->q[0]; X(i->rm)->q[1] = 0; }
        else store_op(c, i, &d->q[0], 8, 0);
        return;
    case 0xd7: {                      /* PMOVMSKB */
        if (p != 1 || i->mod != 3) break;
        uint32_t m = 0;
        for (int k = 0; k < 16; k++) m |= (uint32_t)(X(i->rm)->b[k] >> 7) << k;
        setreg(c, i->reg, gsz(i), m);
        return;
    }
    case 0xe7:                        /* MOVNTDQ */
        if (p != 1 || i->mod == 3) break;
        store_op(c, i, d, 16, 1);
        return;
    case 0xf0:                        /* LDDQU */
        if (p != 3 || i->mod == 3) break;
        src_op(c, i, &s, 16, 0); *d = s;
        return;
    case 0xf7: {                      /* MASKMOVDQU: byte stores to DS:rDI */
        if (p != 1 || i->mod != 3) break;
        xmm_t *m = X(i->rm);
        uint64_t di = c->r[R_RDI];
        if (i->asz == 4) di = (uint32_t)di; else if (i->asz == 2) di = (uint16_t)di;
        int seg = i->segovr != S_NONE ? i->segovr : S_DS;
        for (int k = 0; k < 16; k++)
            if (m->b[k] & 0x80) (void)mem_read_rmw(c, lin_wr(c, seg, di + k, 1), 1);
        for (int k = 0; k < 16; k++)
            if (m->b[k] & 0x80) st(c, seg, di + k, 1, d->b[k]);
        return;
    }
    }
    raise_ud(c);
}

/* ---- 0F AE /0../3: FXSAVE, FXRSTOR, LDMXCSR, STMXCSR ---------------------------- */
void h_fxgrp(cpu_t *c, const insn_t *i)
{
    uint64_t off = ea_off(c, i);
    if (i->ext >= 2) {                 /* LDMXCSR / STMXCSR (SDM Vol 2 LDMXCSR) */
        sse_check(c);
        if (i->ext == 2) {
            uint32_t v = (uint32_t)ld(c, i->seg, off, 4);
            if (v & ~host_mxcsr_mask) raise_gp(c, 0);
            c->fpu.mxcsr = v;
        } else st(c, i->seg, off, 4, c->fpu.mxcsr);
        return;
    }
    /* FXSAVE/FXRSTOR: #NM on TS or EM (SDM Vol 2 FXSAVE, exceptions), #GP if misaligned */
    if (c->cr0 & (CR0_TS | CR0_EM)) raise_exc(c, EX_NM, 0, 0);
    if ((c->segbase[i->seg] + off) & 15) raise_gp(c, 0);
    int w64 = i->osz == 8;
    int nxmm = c->long64 ? 16 : 8;
    uint8_t img[512];
    if (i->ext == 0) {
        memset(img, 0, 160);
        if (!(c->cr4 & CR4_OSFXSR)) fmem_read(c, i->seg, off + 160, img + 160, 256);   /* XMM area kept */
        memcpy(img + 0, &c->fpu.fcw, 2);
        memcpy(img + 2, &c->fpu.fsw, 2);
        img[4] = c->fpu.ftw;
        memcpy(img + 6, &c->fpu.fop, 2);
        if (w64) { memcpy(img + 8, &c->fpu.fip, 8); memcpy(img + 16, &c->fpu.fdp, 8); }
        else { memcpy(img + 8, &c->fpu.fip, 4); memcpy(img + 16, &c->fpu.fdp, 4); }
        memcpy(img + 24, &c->fpu.mxcsr, 4);
        memcpy(img + 28, &host_mxcsr_mask, 4);
        int top = (c->fpu.fsw >> 11) & 7;
        for (int k = 0; k < 8; k++) memcpy(img + 32 + 16 * k, &c->fpu.st[(top + k) & 7], 10);
        /* XMM registers only with CR4.OSFXSR (SDM Vol 2 FXSAVE) */
        if (c->cr4 & CR4_OSFXSR) for (int k = 0; k < nxmm; k++) memcpy(img + 160 + 16 * k, &c->fpu.xmm[k], 16);
        fmem_write(c, i->seg, off, img, 416);
        return;
    }
    fmem_read(c, i->seg, off, img, 416);
    uint32_t mx;
    memcpy(&mx, img + 24, 4);
    if ((c->cr4 & CR4_OSFXSR) && (mx & ~host_mxcsr_mask)) raise_gp(c, 0);
    memcpy(&c->fpu.fcw, img + 0, 2);
    memcpy(&c->fpu.fsw, img + 2, 2);
    c->fpu.ftw = img[4];
    memcpy(&c->fpu.fop, img + 6, 2);
    c->fpu.fop &= 0x7ff;
    c->fpu.fip = c->fpu.fdp = 0;
    if (w64) { memcpy(&c->fpu.fip, img + 8, 8); memcpy(&c->fpu.fdp, img + 16, 8); }
    else { memcpy(&c->fpu.fip, img + 8, 4); memcpy(&c->fpu.fdp, img + 16, 4); }
    int top = (c->fpu.fsw >> 11) & 7;
    for (int k = 0; k < 8; k++) {
        f80_t *r = &c->fpu.st[(top + k) & 7];
        memset(r, 0, sizeof(*r));
        memcpy(r, img + 32 + 16 * k, 10);
    }
    if (c->cr4 & CR4_OSFXSR) {
        c->fpu.mxcsr = mx;
        for (int k = 0; k < nxmm; k++) memcpy(&c->fpu.xmm[k], img + 160 + 16 * k, 16);
    }
    x87_update_es(c);
}
