/*
 * MMX (0F xx without a mandatory prefix, the SSE/SSE2 MMX extensions, and
 * the MMX<->SSE conversions).  MMn is the significand of physical x87
 * register Rn: every MMX instruction but EMMS sets TOP = 0 and tags every
 * register valid; a write to MMn sets the exponent/sign of Rn to all ones
 * (SDM Vol 1 9.5, Table 9-2).  CR0.EM -> #UD, CR0.TS -> #NM, a pending x87
 * exception -> #MF (SDM Vol 1 9.5.1 / Vol 3A 12.5).
 *
 * The arithmetic runs on the host's MMX unit (mm0/mm1 inside one asm block
 * ending with EMMS, so the host x87 stays empty).
 */
#include "fpuint.h"
#include "handlers.h"

typedef void (*mop_t)(uint64_t *d, const uint64_t *s);
#define OP(name, insn) \
    static void m_##name(uint64_t *d, const uint64_t *s) { \
        __asm__ volatile("movq %0, %%mm0\n\tmovq %1, %%mm1\n\t" insn " %%mm1, %%mm0\n\tmovq %%mm0, %0\n\temms" \
                         : "+m"(*d) : "m"(*s) : "mm0", "mm1", "st", "st(1)"); }
#define O(n) OP(n, #n)
O(punpcklbw) O(punpcklwd) O(punpckldq) O(packsswb) O(pcmpgtb) O(pcmpgtw) O(pcmpgtd) O(packuswb)
O(punpckhbw) O(punpckhwd) O(punpckhdq) O(packssdw) O(pcmpeqb) O(pcmpeqw) O(pcmpeqd)
O(psrlw) O(psrld) O(psrlq) O(paddq) O(pmullw)
O(psubusb) O(psubusw) O(pminub) O(pand) O(paddusb) O(paddusw) O(pmaxub) O(pandn)
O(pavgb) O(psraw) O(psrad) O(pavgw) O(pmulhuw) O(pmulhw)
O(psubsb) O(psubsw) O(pminsw) O(por) O(paddsb) O(paddsw) O(pmaxsw) O(pxor)
O(psllw) O(pslld) O(psllq) O(pmuludq) O(pmaddwd) O(psadbw)
O(psubb) O(psubw) O(psubd) O(psubq) O(paddb) O(paddw) O(paddd)

static const mop_t mbin[256] = {
    [0x60] = m_punpcklbw, [0x61] = m_punpcklwd, [0x62] = m_punpckldq, [0x63] = m_packsswb,
    [0x64] = m_pcmpgtb, [0x65] = m_pcmpgtw, [0x66] = m_pcmpgtd, [0x67] = m_packuswb,
    [0x68] = m_punpckhbw, [0x69] = m_punpckhwd, [0x6a] = m_punpckhdq, [0x6b] = m_packssdw,
    [0x74] = m_pcmpeqb, [0x75] = m_pcmpeqw, [0x76] = m_pcmpeqd,
    [0xd1] = m_psrlw, [0xd2] = m_psrld, [0xd3] = m_psrlq, [0xd4] = m_paddq, [0xd5] = m_pmullw,
    [0xd8] = m_psubusb, [0xd9] = m_psubusw, [0xda] = m_pminub, [0xdb] = m_pand,
    [0xdc] = m_paddusb, [0xdd] = m_paddusw, [0xde] = m_pmaxub, [0xdf] = m_pandn,
    [0xe0] = m_pavgb, [0xe1] = m_psraw, [0xe2] = m_psrad, [0xe3] = m_pavgw, [0xe4] = m_pmulhuw, [0xe5] = m_pmulhw,
    [0xe8] = m_psubsb, [0xe9] = m_psubsw, [0xea] = m_pminsw, [0xeb] = m_por,
    [0xec] = m_paddsb, [0xed] = m_paddsw, [0xee] = m_pmaxsw, [0xef] = m_pxor,
    [0xf1] = m_psllw, [0xf2] = m_pslld, [0xf3] = m_psllq, [0xf4] = m_pmuludq, [0xf5] = m_pmaddwd, [0xf6] = m_psadbw,
    [0xf8] = m_psubb, [0xf9] = m_psubw, [0xfa] = m_psubd, [0xfb] = m_psubq,
    [0xfc] = m_paddb, [0xfd] = m_paddw, [0xfe] = m_paddd,
};

int mmx_opcode(int op)
{
    return mbin[op] || op == 0x6e || op == 0x6f || op == 0x7e || op == 0x7f || op == 0x70 || op == 0x71 ||
           op == 0x72 || op == 0x73 || op == 0x77 || op == 0xc4 || op == 0xc5 || op == 0xd7 || op == 0xe7 ||
           op == 0xf7;
}

static inline uint64_t MM(cpu_t *c, int n) { return c->fpu.st[n & 7].m; }
static inline void set_mm(cpu_t *c, int n, uint64_t v) { c->fpu.st[n & 7].m = v; c->fpu.st[n & 7].e = 0xffff; }
static inline void mmx_state(cpu_t *c) { c->fpu.fsw &= (uint16_t)~0x3800; c->fpu.ftw = 0xff; }

void mmx_check(cpu_t *c)
{
    if (unlikely(c->cr0 & CR0_EM)) raise_ud(c);
    if (unlikely(c->cr0 & CR0_TS)) raise_exc(c, EX_NM, 0, 0);
    if (unlikely(c->fpu.fsw & FSW_ES)) raise_exc(c, EX_MF, 0, 0);
}

static uint64_t src64(cpu_t *c, const insn_t *i, int size)
{
    if (i->mod == 3) return MM(c, i->rm);
    return ld(c, i->seg, ea_off(c, i), size);
}

/* 0F xx without prefix, MMX forms.  The caller (h_sse) has done the SSE checks. */
void h_mmx(cpu_t *c, const insn_t *i)
{
    int op = i->op, g = i->osz == 8 ? 8 : 4;
    uint8_t ib = (uint8_t)i->imm;
    mmx_check(c);
    if (op == 0x77) { c->fpu.ftw = 0; return; }          /* EMMS */
    uint64_t d = MM(c, i->reg), s;
    mop_t fn = mbin[op];
    if (fn) {
        /* PUNPCKL* read m32 (SDM: "mm/m32") */
        s = src64(c, i, (op >= 0x60 && op <= 0x62) ? 4 : 8);
        fn(&d, &s);
        mmx_state(c);
        set_mm(c, i->reg, d);
        return;
    }
    switch (op) {
    case 0x6e: s = rd_rm(c, i, g); mmx_state(c); set_mm(c, i->reg, g == 8 ? s : (uint32_t)s); return;
    case 0x7e: mmx_state(c); wr_rm(c, i, g, g == 8 ? d : (uint32_t)d); return;
    case 0x6f: s = src64(c, i, 8); mmx_state(c); set_mm(c, i->reg, s); return;
    case 0x7f:
        if (i->mod == 3) { mmx_state(c); set_mm(c, i->rm, d); return; }
        st(c, i->seg, ea_off(c, i), 8, d); mmx_state(c); return;
    case 0xe7:                                            /* MOVNTQ */
        if (i->mod == 3) break;
        st(c, i->seg, ea_off(c, i), 8, d); mmx_state(c); return;
    case 0x70: {                                          /* PSHUFW */
        s = src64(c, i, 8);
        uint64_t r = 0;
        for (int k = 0; k < 4; k++) r |= ((s >> (16 * ((ib >> (2 * k)) & 3))) & 0xffff) << (16 * k);
        mmx_state(c); set_mm(c, i->reg, r); return;
    }
    case 0x71: case 0x72: case 0x73: {
        if (i->mod != 3) break;
        static const mop_t gtab[3][8] = {
            { 0, 0, m_psrlw, 0, m_psraw, 0, m_psllw, 0 },
            { 0, 0, m_psrld, 0, m_psrad, 0, m_pslld, 0 },
            { 0, 0, m_psrlq, 0, 0, 0, m_psllq, 0 } };
        mop_t f = gtab[op - 0x71][i->ext];
        if (!f) break;
        uint64_t r = MM(c, i->rm), cnt = ib;
        f(&r, &cnt);
        mmx_state(c); set_mm(c, i->rm, r); return;
    }
    case 0xc4: {                                          /* PINSRW */
        uint64_t w = rd_rm(c, i, 2) & 0xffff;
        int sh = 16 * (ib & 3);
        mmx_state(c); set_mm(c, i->reg, (d & ~(0xffffull << sh)) | w << sh); return;
    }
    case 0xc5:                                            /* PEXTRW */
        if (i->mod != 3) break;
        mmx_state(c); setreg(c, i->reg, g, (MM(c, i->rm) >> (16 * (ib & 3))) & 0xffff); return;
    case 0xd7: {                                          /* PMOVMSKB */
        if (i->mod != 3) break;
        uint64_t v = MM(c, i->rm);
        uint32_t m = 0;
        for (int k = 0; k < 8; k++) m |= (uint32_t)((v >> (8 * k + 7)) & 1) << k;
        mmx_state(c); setreg(c, i->reg, g, m); return;
    }
    case 0xf7: {                                          /* MASKMOVQ: byte stores to DS:rDI */
        if (i->mod != 3) break;
        uint64_t m = MM(c, i->rm), di = c->r[R_RDI];
        if (i->asz == 4) di = (uint32_t)di; else if (i->asz == 2) di = (uint16_t)di;
        int seg = i->segovr != S_NONE ? i->segovr : S_DS;
        for (int k = 0; k < 8; k++)
            if ((m >> (8 * k + 7)) & 1) (void)mem_read_rmw(c, lin_wr(c, seg, di + k, 1), 1);
        for (int k = 0; k < 8; k++)
            if ((m >> (8 * k + 7)) & 1) st(c, seg, di + k, 1, (d >> (8 * k)) & 0xff);
        mmx_state(c);
        return;
    }
    }
    raise_ud(c);
}
