/*
 * General-purpose instruction-set extensions and legacy leftovers:
 *   POPCNT, LZCNT/TZCNT (F3 0F BD/BC, in alu.c's BSF/BSR), MOVBE, CRC32,
 *   ADCX/ADOX, BMI1 (ANDN BEXTR BLSI BLSMSK BLSR), BMI2 (BZHI MULX PDEP
 *   PEXT RORX SARX SHLX SHRX), BOUND, ARPL,
 * the VEX-prefix lookup for the GPR VEX forms, and the CPUID bits that
 * advertise them (called from do_cpuid).
 *
 * VEX forms: insn_t.imm2 holds VEX.vvvv (already un-inverted); the decoder
 * picks a handler per (map, opcode, VEX.pp) from vex_lookup() and forces the
 * operand size to 32, or 64 with VEX.W in 64-bit mode (SDM Vol 2A 2.3,
 * Vol 2C 4 "VEX-encoded GPR instructions").
 */
#include "mem.h"
#include "handlers.h"

static inline int par8(uint64_t v) { return !__builtin_parity((unsigned)(v & 0xff)); }

/* SF/ZF/PF from a result; CF/OF as given; AF cleared */
static void flags_res(cpu_t *c, int sz, uint64_t r, int cf, int of, uint64_t keep_mask)
{
    uint64_t f = flags_materialize(c) & keep_mask;
    r &= szmask(sz);
    if (r == 0) f |= F_ZF;
    if (r >> (sz * 8 - 1)) f |= F_SF;
    if (par8(r)) f |= F_PF;
    if (cf) f |= F_CF;
    if (of) f |= F_OF;
    flags_set_exact(c, f);
}

/* ---- POPCNT F3 0F B8 (0F B8 without F3 is JMPE: #UD) ------------------- */
HANDLER(h_popcnt)
{
    if (i->rep != 0xf3) raise_ud(c);
    int sz = i->osz;
    uint64_t v = rd_rm(c, i, sz);
    setreg(c, i->reg, sz, (uint64_t)__builtin_popcountll(v));
    /* SDM POPCNT: OF SF ZF AF CF PF cleared, ZF = (src == 0) */
    flags_set_exact(c, v ? 0 : F_ZF);
}

/* ---- LZCNT/TZCNT: F3 0F BD / F3 0F BC (called from h_bsf_bsr) ----------- */
HANDLER(h_lzcnt_tzcnt)
{
    int sz = i->osz, bits = sz * 8;
    uint64_t v = rd_rm(c, i, sz);
    uint64_t r;
    if (v == 0) r = (uint64_t)bits;
    else if (i->op == 0xbc) r = (uint64_t)__builtin_ctzll(v);
    else r = (uint64_t)(__builtin_clzll(v) - (64 - bits));
    setreg(c, i->reg, sz, r);
    /* CF = (src == 0), ZF = (result == 0); OF SF PF AF undefined (kept) */
    uint64_t f = flags_materialize(c) & ~(uint64_t)(F_CF | F_ZF);
    if (v == 0) f |= F_CF;
    if (r == 0) f |= F_ZF;
    flags_set_exact(c, f);
}

/* ---- 0F 38 F0/F1: MOVBE (none/66) and CRC32 (F2) ----------------------- */
static uint32_t crc32c_byte(uint32_t crc, uint8_t b)
{
    /* CRC-32C (Castagnoli), reflected polynomial 0x82F63B78 (SDM CRC32) */
    crc ^= b;
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
    return crc;
}
HANDLER(h_movbe_crc32)
{
    if (i->rep == 0xf2) {
        int ssz = (i->op == 0xf0) ? 1 : i->osz;
        uint64_t v = rd_rm(c, i, ssz);
        uint32_t crc = (uint32_t)c->r[i->reg];
        for (int k = 0; k < ssz; k++) crc = crc32c_byte(crc, (uint8_t)(v >> (8 * k)));
        c->r[i->reg] = crc;   /* 32- and 64-bit destinations: zero-extended */
        return;
    }
    if (i->rep || i->mod == 3) raise_ud(c);
    int sz = i->osz;
    uint64_t lin = lin_acc(c, i->seg, ea_off(c, i), sz, i->op != 0xf0);
    if (i->op == 0xf0) {
        uint64_t v = mem_read(c, lin, sz);
        v = sz == 8 ? __builtin_bswap64(v) : sz == 4 ? __builtin_bswap32((uint32_t)v) : __builtin_bswap16((uint16_t)v);
        setreg(c, i->reg, sz, v);
    } else {
        uint64_t v = getreg(c, i->reg, sz);
        v = sz == 8 ? __builtin_bswap64(v) : sz == 4 ? __builtin_bswap32((uint32_t)v) : __builtin_bswap16((uint16_t)v);
        mem_write(c, lin, sz, v);
    }
}

/* ---- 66 0F 38 F6 ADCX / F3 0F 38 F6 ADOX (SDM ADCX/ADOX) --------------- */
HANDLER(h_adx)
{
    if (i->pfx66 == (i->rep == 0xf3) || i->rep == 0xf2) raise_ud(c);   /* exactly one of 66/F3 */
    int sz = i->osz == 8 ? 8 : 4;   /* the mandatory 66 is not an operand-size prefix here */
    uint64_t b = rd_rm(c, i, sz), a = getreg(c, i->reg, sz);
    uint64_t f = flags_materialize(c);
    uint64_t bit = (i->rep == 0xf3) ? F_OF : F_CF;
    int cin = !!(f & bit), cout;
    uint64_t r;
    if (sz == 8) { unsigned __int128 s = (unsigned __int128)a + b + cin; r = (uint64_t)s; cout = (int)(s >> 64); }
    else { uint64_t s = a + b + (uint64_t)cin; r = (uint32_t)s; cout = (int)(s >> 32); }
    setreg(c, i->reg, sz, r);
    flags_set_exact(c, (f & ~bit) | (cout ? bit : 0));
}

/* ---- BMI1 / BMI2 (VEX) ----------------------------------------------- */
static inline uint64_t vreg(cpu_t *c, const insn_t *i, int sz) { return getreg(c, i->imm2 & 15, sz); }

HANDLER(h_andn)
{
    int sz = i->osz;
    uint64_t r = ~vreg(c, i, sz) & rd_rm(c, i, sz) & szmask(sz);
    setreg(c, i->reg, sz, r);
    flags_res(c, sz, r, 0, 0, F_AF);   /* AF PF undefined; CF OF cleared */
}
HANDLER(h_bls)
{
    /* VEX.0F38 F3 /1 BLSR, /2 BLSMSK, /3 BLSI; destination is VEX.vvvv */
    int sz = i->osz;
    if (i->ext < 1 || i->ext > 3) raise_ud(c);
    uint64_t m = szmask(sz), s = rd_rm(c, i, sz), r;
    int cf;
    if (i->ext == 1) { r = (s - 1) & s & m; cf = s == 0; }
    else if (i->ext == 2) { r = (s - 1) ^ s; r &= m; cf = s == 0; }
    else { r = (0 - s) & s & m; cf = s != 0; }
    setreg(c, i->imm2 & 15, sz, r);
    flags_res(c, sz, r, cf, 0, F_AF);
}
HANDLER(h_bzhi)
{
    int sz = i->osz, bits = sz * 8;
    unsigned n = vreg(c, i, sz) & 0xff;
    uint64_t s = rd_rm(c, i, sz), r = s;
    if (n < (unsigned)bits) r = s & ((1ULL << n) - 1);
    setreg(c, i->reg, sz, r);
    flags_res(c, sz, r, n > (unsigned)bits - 1, 0, F_AF);
}
HANDLER(h_pdep)
{
    int sz = i->osz;
    uint64_t src = vreg(c, i, sz), mask = rd_rm(c, i, sz), r = 0, k = 1;
    for (uint64_t m = mask; m; m &= m - 1, k <<= 1)
        if (src & k) r |= m & -m;
    setreg(c, i->reg, sz, r);
}
HANDLER(h_pext)
{
    int sz = i->osz;
    uint64_t src = vreg(c, i, sz), mask = rd_rm(c, i, sz), r = 0, k = 1;
    for (uint64_t m = mask; m; m &= m - 1, k <<= 1)
        if (src & m & -m) r |= k;
    setreg(c, i->reg, sz, r);
}
HANDLER(h_mulx)
{
    /* VEX.F2.0F38 F6: DEST2 (vvvv) <- low half, then DEST1 (reg) <- high half */
    int sz = i->osz;
    uint64_t a = getreg(c, R_RDX, sz), b = rd_rm(c, i, sz), lo, hi;
    if (sz == 8) { unsigned __int128 p = (unsigned __int128)a * b; lo = (uint64_t)p; hi = (uint64_t)(p >> 64); }
    else { uint64_t p = a * b; lo = (uint32_t)p; hi = p >> 32; }
    setreg(c, i->imm2 & 15, sz, lo);
    setreg(c, i->reg, sz, hi);
}
HANDLER(h_bextr)
{
    int sz = i->osz, bits = sz * 8;
    uint64_t ctl = vreg(c, i, sz), s = rd_rm(c, i, sz), r;
    unsigned start = ctl & 0xff, len = (ctl >> 8) & 0xff;
    r = start < (unsigned)bits ? s >> start : 0;
    if (len < 64) r &= (1ULL << len) - 1;
    r &= szmask(sz);
    setreg(c, i->reg, sz, r);
    flags_res(c, sz, r, 0, 0, F_AF);   /* ZF defined; CF OF cleared; AF SF PF undefined */
}
HANDLER(h_shiftx)
{
    /* VEX.0F38 F7: 66 SHLX, F3 SARX, F2 SHRX (op byte re-tagged by the decoder: 1/2/3) */
    int sz = i->osz;
    unsigned n = vreg(c, i, sz) & (sz == 8 ? 63 : 31);
    uint64_t s = rd_rm(c, i, sz), r;
    switch (i->cc) {
    case 1: r = s << n; break;
    case 2: r = (uint64_t)((int64_t)sext(s, sz) >> n); break;
    default: r = s >> n; break;
    }
    setreg(c, i->reg, sz, r & szmask(sz));
}
HANDLER(h_rorx)
{
    int sz = i->osz, bits = sz * 8;
    unsigned n = i->imm & (bits - 1);
    uint64_t s = rd_rm(c, i, sz);
    uint64_t r = n ? ((s >> n) | (s << (bits - n))) : s;
    setreg(c, i->reg, sz, r & szmask(sz));
}

/* Decoder hook: handler for a VEX-encoded opcode in `map` with VEX.pp,
 * or NULL (#UD).  *sub receives a per-handler selector (h_shiftx). */
handler_t vex_lookup(int map, int op, int pp, int L, uint8_t *sub)
{
    if (L) return NULL;   /* the GPR forms are LZ: VEX.L=1 is #UD */
    if (map == 2) {
        switch (op) {
        case 0xf2: return pp == 0 ? h_andn : NULL;
        case 0xf3: return pp == 0 ? h_bls : NULL;
        case 0xf5: return pp == 0 ? h_bzhi : pp == 2 ? h_pext : pp == 3 ? h_pdep : NULL;
        case 0xf6: return pp == 3 ? h_mulx : NULL;
        case 0xf7: if (pp == 0) return h_bextr; *sub = (uint8_t)pp; return h_shiftx;
        }
    } else if (map == 3) {
        if (op == 0xf0 && pp == 3) return h_rorx;
    }
    return NULL;
}

/* ---- legacy: BOUND (62) and ARPL (63), not in 64-bit mode -------------- */
HANDLER(h_bound)
{
    if (i->mod == 3) raise_ud(c);
    int sz = i->osz;
    uint64_t off = ea_off(c, i);
    int64_t lo = (int64_t)sext(ld(c, i->seg, off, sz), sz);
    int64_t hi = (int64_t)sext(ld(c, i->seg, (off + sz) & szmask(i->asz), sz), sz);
    int64_t x = (int64_t)sext(getreg(c, i->reg, sz), sz);
    if (x < lo || x > hi) raise_exc(c, EX_BR, 0, 0);   /* #BR is a fault */
}
HANDLER(h_arpl)
{
    /* SDM ARPL: protected mode only (#UD in real and virtual-8086 mode) */
    if (!(c->cr0 & CR0_PE) || (c->rflags & F_VM)) raise_ud(c);
    uint64_t d = rd_rm_w(c, i, 2), s = getreg(c, i->reg, 2);
    uint64_t f = flags_materialize(c) & ~(uint64_t)F_ZF;
    if ((d & 3) < (s & 3)) {
        wr_rm(c, i, 2, (d & ~3ULL) | (s & 3));
        f |= F_ZF;
    }
    flags_set_exact(c, f);
}

/* ---- CPUID: the features implemented in this file ------------------- */
void cpuid_int_features(uint32_t leaf, uint32_t sub, uint32_t o[4])
{
    switch (leaf) {
    case 1:
        o[2] |= (1u << 22)    /* MOVBE */
              | (1u << 23);   /* POPCNT */
        break;
    case 7:
        if (sub == 0)
            o[1] |= (1u << 3)     /* BMI1 */
                  | (1u << 8)     /* BMI2 */
                  | (1u << 19);   /* ADX */
        break;
    case 0x80000001:
        o[2] |= (1u << 5);        /* LZCNT (ABM) */
        break;
    }
}
