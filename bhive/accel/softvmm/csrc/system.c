/*
 * System state: control registers, EFER and mode switches, segment
 * loading, descriptor tables, MSRs, RFLAGS, reset/INIT/SIPI, and the
 * system instructions.
 */
#include <x86intrin.h>
#include <time.h>
#include "mem.h"
#include "handlers.h"

/* ---- segment limit and type checks (SDM Vol 3A 5.3, 5.4) -----------------
 * Outside 64-bit mode every data access is checked against the segment's
 * hidden part: an expand-up segment allows offsets 0..limit, an expand-down
 * one limit+1..0xffff (B=0) or ..0xffffffff (B=1).  In protected mode a
 * write needs a writable data segment and a read a data or readable code
 * segment, and a null (unusable) segment allows nothing.  Real and
 * virtual-8086 mode check only the limit (real-mode code writes through CS:
 * the type bits are not looked at, SDM Vol 3A 20.1.1).  A violation is
 * #SS(0) through SS and #GP(0) otherwise (SDM Vol 3A 6.15, interrupts 12, 13).
 * seg_end[][] caches the common case (expand-up, right type) as a bound on
 * off + size; everything else lands in seg_check(). */
void seg_cache_limits(cpu_t *c, int s)
{
    const seg_t *sg = &c->seg[s];
    uint64_t end = (uint64_t)sg->limit + 1;
    uint64_t r = end, w = end;
    unsigned type = sg->access & 0xf;
    if (sg->access & 0x10000) r = w = 0;                     /* null selector */
    else if (!(type & 8) && (type & 4)) r = w = 0;          /* expand-down data: seg_check() */
    else if ((c->cr0 & CR0_PE) && !(c->rflags & F_VM)) {
        if (type & 8) { w = 0; if (!(type & 2)) r = 0; }    /* code: no writes; execute-only: no reads */
        else if (!(type & 2)) w = 0;                         /* read-only data */
    }
    c->seg_end[0][s] = r;
    c->seg_end[1][s] = w;
}

uint64_t seg_check(cpu_t *c, int s, uint64_t off, int size, int w)
{
    const seg_t *sg = &c->seg[s];
    int vec = s == S_SS ? EX_SS : EX_GP;
    unsigned type = sg->access & 0xf;
    uint64_t last = off + (uint64_t)size - 1;
    if (sg->access & 0x10000) raise_exc(c, vec, 1, 0);
    if ((c->cr0 & CR0_PE) && !(c->rflags & F_VM)) {
        if ((type & 8) ? (w || !(type & 2)) : (w && !(type & 2))) raise_exc(c, vec, 1, 0);
    }
    if (!(type & 8) && (type & 4)) {
        /* expand-down (SDM Vol 3A 5.3): valid offsets are limit+1 .. 64K-1 or 4G-1 */
        uint64_t upper = (sg->access & 0x4000) ? 0xffffffffULL : 0xffffULL;
        if (off <= sg->limit || last > upper) raise_exc(c, vec, 1, 0);
    } else if (last > sg->limit) raise_exc(c, vec, 1, 0);
    return (uint32_t)(c->segbase[s] + off);
}

/* ---- modes --------------------------------------------------------------- */
void update_mode(cpu_t *c)
{
    seg_t *cs = &c->seg[S_CS];
    int old_csz = c->csz, old_long64 = c->long64;
    uint64_t old_csbase = c->segbase[S_CS];
    int lma = !!(c->efer & EFER_LMA);
    c->long64 = lma && (cs->access & 0x2000);
    if (c->long64) c->csz = 8;
    else if (!(c->cr0 & CR0_PE)) c->csz = 2;
    else c->csz = (cs->access & 0x4000) ? 4 : 2;
    if (c->long64) c->ssz = 8;
    else if (!(c->cr0 & CR0_PE)) c->ssz = 2;
    else c->ssz = (c->seg[S_SS].access & 0x4000) ? 4 : 2;
    for (int s = 0; s < 8; s++) c->segbase[s] = c->seg[s].base;
    if (!c->long64)   /* 64-bit mode checks no limits: the bounds are set when it is left */
        for (int s = S_ES; s <= S_GS; s++) seg_cache_limits(c, s);
    if (c->long64) c->segbase[S_ES] = c->segbase[S_CS] = c->segbase[S_SS] = c->segbase[S_DS] = 0;
    int ncpl = (c->cr0 & CR0_PE) ? (cs->sel & 3) : 0;
    if ((c->cr0 & CR0_PE) && !(c->rflags & F_VM)) ncpl = (c->seg[S_SS].access >> 5) & 3;
    if (ncpl != c->cpl) {
        /* TLB rights are CPL-independent: re-derive the tags; links made
         * at the other CPL class stay for when it returns */
        if ((ncpl == 3) != (c->cpl == 3)) epoch_switch_cpl(c);
        c->cpl = ncpl;
        tlb_retag_cpl(c);
    }
    /* chain links hold (rip -> block) pairs decoded for one code size and CS
     * base: drop them only when those change (an interrupt or IRET within
     * ring 0 keeps them) */
    if (c->csz != old_csz || c->long64 != old_long64 || c->segbase[S_CS] != old_csbase) epoch_bump(c);
    c->brk = 1;
}

void set_seg_real(cpu_t *c, int s, uint16_t sel)
{
    c->seg[s].sel = sel;
    c->seg[s].base = (uint64_t)sel << 4;
    if (!(c->cr0 & CR0_PE)) {
        /* real mode keeps the cached limit/attributes ("unreal mode") */
        if (c->seg[s].access & 0x10000) { c->seg[s].access = 0x93; c->seg[s].limit = 0xffff; }
    }
    c->segbase[s] = c->seg[s].base;
    if (s == S_CS || s == S_SS) update_mode(c);
    else seg_cache_limits(c, s);
}

int desc_read(cpu_t *c, uint16_t sel, uint32_t *lo, uint32_t *hi)
{
    uint64_t base; uint32_t limit;
    if (sel & 4) {
        if (c->seg[S_LDTR].access & 0x10000) return -1;
        base = c->seg[S_LDTR].base; limit = c->seg[S_LDTR].limit;
    } else {
        base = c->gdtr.base; limit = c->gdtr.limit;
    }
    uint32_t idx = sel & ~7u;
    if (idx + 7 > limit) return -1;
    *lo = (uint32_t)mem_read_slow(c, base + idx, 4, ACC_SYS);
    *hi = (uint32_t)mem_read_slow(c, base + idx + 4, 4, ACC_SYS);
    return 0;
}

/* The inner stack of a privilege change through an interrupt/trap gate or
 * a call gate, as read from the TSS (SDM Vol 2A INT n "INTER-PRIVILEGE-
 * LEVEL-INTERRUPT", CALL "MORE-PRIVILEGE"): #TS(EXT) for a null selector,
 * #TS(selector + EXT) for one outside the table, with RPL or DPL other than
 * the new CPL, or not a writable data segment; #SS(selector + EXT) if it is
 * not present.  Returns the descriptor. */
void new_stack_check(cpu_t *c, uint16_t nss, int ncpl, int ext, uint32_t *lo, uint32_t *hi)
{
    uint32_t err = (nss & 0xfffc) | (ext ? 1 : 0);
    if ((nss & 0xfffc) == 0) raise_exc(c, EX_TS, 1, ext ? 1 : 0);
    if (desc_read(c, nss, lo, hi) || (nss & 3) != ncpl) raise_exc(c, EX_TS, 1, err);
    if ((int)((*hi >> 13) & 3) != ncpl || (*hi & 0x1a00) != 0x1200) raise_exc(c, EX_TS, 1, err);
    if (!(*hi & 0x8000)) raise_exc(c, EX_SS, 1, err);
}

/* Load a segment register in protected mode (SDM Vol 3A 3.4.3, 5.5).
 * M1 checks presence, null CS/SS and S-bit; full type/privilege checks TODO. */
void load_seg(cpu_t *c, int s, uint16_t sel)
{
    if (!(c->cr0 & CR0_PE) || (c->rflags & F_VM)) { set_seg_real(c, s, sel); return; }
    if ((sel & ~3) == 0 && !(sel & 4)) {
        if (s == S_CS) raise_gp(c, 0);
        /* a null SS: only in 64-bit mode at CPL < 3 with RPL = CPL (SDM Vol 2B MOV, LSS) */
        if (s == S_SS && !(c->long64 && c->cpl < 3 && (sel & 3) == c->cpl)) raise_gp(c, 0);
        c->seg[s].sel = sel; c->seg[s].base = 0; c->seg[s].limit = 0;
        c->seg[s].access = 0x10000;
        if (s == S_SS) c->seg[s].access |= (uint32_t)c->cpl << 5;
        c->segbase[s] = 0;
        if (s == S_SS) update_mode(c);
        else seg_cache_limits(c, s);
        return;
    }
    uint32_t lo, hi;
    if (desc_read(c, sel, &lo, &hi)) raise_gp(c, sel & ~3);
    if (!(hi & 0x1000)) raise_gp(c, sel & ~3);
    {
        /* SDM Vol 3A 5.5/5.6 and MOV/POP Sreg: type and privilege before presence */
        int dpl = (hi >> 13) & 3, rpl = sel & 3, code = !!(hi & 0x800);
        if (s == S_SS) {
            if (rpl != c->cpl || dpl != c->cpl || code || !(hi & 0x200)) raise_gp(c, sel & ~3);
        } else if (s != S_CS) {
            if (code && !(hi & 0x200)) raise_gp(c, sel & ~3);                 /* execute-only code */
            if ((!code || !(hi & 0x400)) && (dpl < c->cpl || dpl < rpl)) raise_gp(c, sel & ~3);
        }
    }
    if (!(hi & 0x8000)) raise_exc(c, s == S_SS ? EX_SS : EX_NP, 1, sel & ~3);
    uint64_t base = (lo >> 16) | ((uint64_t)(hi & 0xff) << 16) | ((uint64_t)(hi & 0xff000000));
    uint32_t limit = (lo & 0xffff) | (hi & 0xf0000);
    if (hi & 0x800000) limit = (limit << 12) | 0xfff;
    uint32_t access = (hi >> 8) & 0xf0ff;
    /* set the accessed bit in the descriptor (SDM 3.4.5.1) */
    if (!(access & 1)) {
        access |= 1;
        uint64_t tbase = (sel & 4) ? c->seg[S_LDTR].base : c->gdtr.base;
        mem_write_slow(c, tbase + (sel & ~7u) + 4, 4, hi | 0x100, ACC_W | ACC_SYS);
    }
    c->seg[s].sel = sel; c->seg[s].base = base; c->seg[s].limit = limit; c->seg[s].access = access;
    c->segbase[s] = base;
    if (s == S_CS) {
        c->seg[S_CS].sel = (sel & ~3) | (sel & 3);
        /* CPL = CS.RPL for code loads; SS.DPL follows on stack switches */
        c->seg[S_SS].access = (c->seg[S_SS].access & ~0x60u) | ((uint32_t)(sel & 3) << 5);
        update_mode(c);
    } else if (s == S_SS) update_mode(c);
    else {
        if (c->long64 && s != S_FS && s != S_GS) c->segbase[s] = 0;
        seg_cache_limits(c, s);
    }
}

/* ---- TSC ----------------------------------------------------------------
 * Every vCPU is its own process, so the TSC must not depend on anything
 * per-process: it is the host's invariant TSC (one clock for every process
 * on the machine, and the one the LAPIC timer's deadlines use), at the
 * frequency calibrated once into the platform shm (tsc.c) and advertised by
 * CPUID 0x15/0x16, so Linux needs no calibration and sees synchronised TSCs.
 * tsc_offset is the architectural per-vCPU offset created by WRMSR TSC. */
uint64_t guest_tsc(cpu_t *c)
{
    return __rdtsc() + (uint64_t)c->tsc_offset;
}

/* ---- RFLAGS -------------------------------------------------------------- */
uint64_t get_rflags(cpu_t *c) { return flags_materialize(c) | 2; }
void set_rflags(cpu_t *c, uint64_t v)
{
    c->lf_op = LF_NONE;
    uint64_t old = c->rflags;
    c->rflags = (v & 0x3f7fd5) | 2;
    if (((old ^ c->rflags) & F_AC) && c->cpl == 3 && (c->cr0 & CR0_AM)) tlb_retag(c);
    if ((old & ~c->rflags & F_AC) && (c->cr4 & CR4_SMAP) && c->smap_n) tlb_smap_close(c);
}

/* ---- control registers ------------------------------------------------------ */
void set_efer(cpu_t *c, uint64_t v)
{
    uint64_t old = c->efer;
    c->efer = (c->efer & EFER_LMA) | (v & (EFER_SCE | EFER_LME | EFER_NXE));
    if ((old ^ c->efer) & EFER_NXE) tlb_flush(c);   /* cached NX rights change */
}
static int pae_paging(cpu_t *c)
{
    return (c->cr0 & CR0_PG) && (c->cr4 & CR4_PAE) && !(c->efer & EFER_LMA);
}
void set_cr0(cpu_t *c, uint64_t v)
{
    v |= CR0_ET;
    uint64_t old = c->cr0;
    /* SDM MOV CR0: #GP for reserved high bits, PG without PE, NW without CD,
     * and clearing PG in 64-bit mode */
    if ((v >> 32) || ((v & CR0_PG) && !(v & CR0_PE)) || ((v & CR0_NW) && !(v & CR0_CD)) ||
        (c->long64 && !(v & CR0_PG)))
        raise_gp(c, 0);
    c->cr0 = v & 0xe005003f;
    /* IA-32e activation: LMA = LME && PG (SDM Vol 3A 10.8.5) */
    if ((v & CR0_PG) && !(old & CR0_PG) && (c->efer & EFER_LME)) {
        if (!(c->cr4 & CR4_PAE)) { c->cr0 = old; raise_gp(c, 0); }
        c->efer |= EFER_LMA;
    }
    if (!(v & CR0_PG) && (old & CR0_PG)) c->efer &= ~(uint64_t)EFER_LMA;
    /* SDM 4.4.1: enabling PAE paging loads the PDPTEs (#GP if reserved bits are set) */
    if ((c->cr0 & CR0_PG) && !(old & CR0_PG) && pae_paging(c)) {
        if (pdpte_load(c, 0)) { c->cr0 = old; raise_gp(c, 0); }
    }
    /* SDM 4.10.4.1: changing PG invalidates every TLB entry (global too);
     * WP only changes the rights we derive the fast-path tags from */
    if ((old ^ c->cr0) & CR0_PG) tlb_flush(c);
    else if ((old ^ c->cr0) & (CR0_WP | CR0_AM)) tlb_retag(c);
    update_mode(c);
}
void set_cr4(cpu_t *c, uint64_t v)
{
    uint64_t allowed = 0x1 | 0x2 | 0x4 | 0x8 | CR4_PSE | CR4_PAE | 0x40 | CR4_PGE | 0x100 | CR4_OSFXSR | 0x400 |
                       CR4_SMEP | CR4_SMAP;
    if (!vm_feat(c->vm, FW_7B, 7)) allowed &= ~(uint64_t)CR4_SMEP;   /* the CPU model's features */
    if (!vm_feat(c->vm, FW_7B, 20)) allowed &= ~(uint64_t)CR4_SMAP;
    if (!vm_feat(c->vm, FW_1D, 7)) allowed &= ~0x40ULL;               /* MCE */
    if (v & ~allowed) raise_gp(c, 0);
    if ((c->efer & EFER_LMA) && !(v & CR4_PAE)) raise_gp(c, 0);
    uint64_t old = c->cr4;
    c->cr4 = v;
    uint64_t pgbits = CR4_PSE | CR4_PAE | CR4_PGE;
    if (((old ^ v) & pgbits) && pae_paging(c) && pdpte_load(c, 0)) { c->cr4 = old; raise_gp(c, 0); }
    /* SDM 4.10.4.1: a CR4 write changing PGE, PAE or PSE flushes all entries incl. global */
    if ((old ^ v) & pgbits) tlb_flush(c);
    else if ((old ^ v) & (CR4_SMEP | CR4_SMAP)) tlb_retag(c);   /* the rights the tags derive from */
    if ((old ^ v) & 0x8) dbg_update(c);   /* CR4.DE arms or disarms I/O breakpoints */
}

HANDLER(h_mov_cr)
{
    /* 0F 20 / 0F 22: operand is always 64-bit in long mode, 32 otherwise (mod ignored) */
    if (c->cpl) raise_gp(c, 0);
    int sz = c->long64 ? 8 : 4;
    int cr = i->reg;
    if (i->lock && cr == 0) cr = 8;   /* AMD alt encoding of CR8 */
    if (i->op == 0x20) {
        uint64_t v;
        switch (cr) {
        case 0: v = c->cr0; break;
        case 2: v = c->cr2; break;
        case 3: v = c->cr3; break;
        case 4: v = c->cr4; break;
        case 8: v = c->lapic->tpr >> 4; break;
        default: raise_ud(c);
        }
        setreg(c, i->rm, sz, v);
    } else {
        uint64_t v = getreg(c, i->rm, sz);
        switch (cr) {
        case 0: set_cr0(c, v); break;
        case 2: c->cr2 = v; break;
        case 3: {
            uint64_t old = c->cr3;
            if ((c->efer & EFER_LMA) && (v & 0xfff0000000000000ULL)) raise_gp(c, 0);   /* reserved (no PCID) */
            c->cr3 = v & ((c->efer & EFER_LMA) ? 0x000ffffffffff018ULL : 0xfffffff8ULL);
            if (pae_paging(c) && pdpte_load(c, 0)) { c->cr3 = old; raise_gp(c, 0); }
            tlb_flush_nonglobal(c);   /* SDM 4.10.4.1: global entries survive MOV CR3 */
            break; }
        case 4: set_cr4(c, v); break;
        case 8: __atomic_store_n(&c->lapic->tpr, (uint32_t)(v & 15) << 4, __ATOMIC_RELAXED); c->irq_pending = 1; break;
        default: raise_ud(c);
        }
        c->brk = 1;
    }
}
HANDLER(h_clts) { if (c->cpl) raise_gp(c, 0); c->cr0 &= ~(uint64_t)CR0_TS; }

/* ---- segment register moves --------------------------------------------- */
HANDLER(h_mov_rm_sreg)
{
    int s = i->ext;
    if (s > 5) raise_ud(c);
    uint64_t v = c->seg[s].sel;
    if (i->mod == 3) setreg(c, i->rm, i->osz, v);
    else st(c, i->seg, ea_off(c, i), 2, v);
}
HANDLER(h_mov_sreg_rm)
{
    int s = i->ext;
    if (s > 5 || s == S_CS) raise_ud(c);
    uint16_t sel = (uint16_t)rd_rm(c, i, 2);
    load_seg(c, s, sel);
    if (s == S_SS) { c->shadow = SHADOW_MOVSS; c->brk = 1; }   /* MOV SS blocks interrupts and #DB for one instruction */
}
HANDLER(h_push_sreg)
{
    static const int map[] = { S_ES, S_CS, S_SS, S_DS };
    int s = (i->map == 1) ? ((i->op == 0xa0) ? S_FS : S_GS) : map[i->op >> 3];
    push(c, i->osz, c->seg[s].sel);
}
HANDLER(h_pop_sreg)
{
    static const int map[] = { S_ES, S_CS, S_SS, S_DS };
    int s = (i->map == 1) ? ((i->op == 0xa1) ? S_FS : S_GS) : map[i->op >> 3];
    uint64_t sp = sp_get(c);
    uint16_t sel = (uint16_t)ld(c, S_SS, sp, i->osz);
    load_seg(c, s, sel);
    sp_set(c, sp + i->osz);
    if (s == S_SS) { c->shadow = SHADOW_MOVSS; c->brk = 1; }
}

/* ---- descriptor tables: 0F 00, 0F 01 ------------------------------------ */
static void load_sys_seg(cpu_t *c, int s, uint16_t sel)
{
    if ((sel & ~3) == 0) { c->seg[s].sel = sel; c->seg[s].access = 0x10000; return; }
    if (sel & 4) raise_gp(c, sel & ~3);
    uint32_t lo, hi;
    if (desc_read(c, sel, &lo, &hi)) raise_gp(c, sel & ~3);
    int type = (hi >> 8) & 0x1f;
    if (s == S_LDTR && type != 2) raise_gp(c, sel & ~3);
    /* LTR: an available TSS; a 16-bit one is not allowed in IA-32e mode (SDM Vol 2A LTR) */
    if (s == S_TR && type != 9 && (type != 1 || (c->efer & EFER_LMA))) raise_gp(c, sel & ~3);
    if (!(hi & 0x8000)) raise_exc(c, EX_NP, 1, sel & ~3);
    uint64_t base = (lo >> 16) | ((uint64_t)(hi & 0xff) << 16) | (hi & 0xff000000);
    if (c->efer & EFER_LMA) {
        uint64_t tbl = c->gdtr.base + (sel & ~7u);
        base |= (uint64_t)(uint32_t)mem_read_slow(c, tbl + 8, 4, ACC_SYS) << 32;
    }
    if ((c->efer & EFER_LMA) && !canonical(base)) raise_gp(c, sel & ~3);   /* SDM Vol 2A LLDT/LTR */
    uint32_t limit = (lo & 0xffff) | (hi & 0xf0000);
    if (hi & 0x800000) limit = (limit << 12) | 0xfff;
    if (s == S_TR) {   /* mark busy */
        hi |= 0x200;
        mem_write_slow(c, c->gdtr.base + (sel & ~7u) + 4, 4, hi, ACC_W | ACC_SYS);
    }
    c->seg[s].sel = sel; c->seg[s].base = base; c->seg[s].limit = limit;
    c->seg[s].access = (hi >> 8) & 0xf0ff;
    c->segbase[s] = base;
}

HANDLER(h_grp6)
{
    if (!(c->cr0 & CR0_PE)) raise_ud(c);
    switch (i->ext) {
    case 0: case 1: { /* SLDT / STR */
        uint64_t v = c->seg[i->ext == 0 ? S_LDTR : S_TR].sel;
        if (i->mod == 3) setreg(c, i->rm, i->osz, v); else wr_rm(c, i, 2, v);
        break; }
    case 2: case 3:
        if (c->cpl) raise_gp(c, 0);
        load_sys_seg(c, i->ext == 2 ? S_LDTR : S_TR, (uint16_t)rd_rm(c, i, 2));
        break;
    case 4: case 5: { void verr_verw(cpu_t *, const insn_t *); verr_verw(c, i); break; }
    default: raise_ud(c);
    }
}

HANDLER(h_grp7)
{
    if (i->mod == 3) {
        uint8_t modrm = 0xc0 | (i->ext << 3) | (i->rm & 7);
        switch (modrm) {
        case 0xf8: /* SWAPGS */
            if (!c->long64) raise_ud(c);
            if (c->cpl) raise_gp(c, 0);
            { uint64_t t = c->seg[S_GS].base; c->seg[S_GS].base = c->kgs_base; c->kgs_base = t; c->segbase[S_GS] = c->seg[S_GS].base; }
            return;
        case 0xf9: { /* RDTSCP */
            if (!vm_feat(c->vm, FW_X1D, 27)) raise_ud(c);
            uint64_t t = guest_tsc(c);
            c->r[R_RAX] = (uint32_t)t; c->r[R_RDX] = t >> 32; c->r[R_RCX] = (uint32_t)c->tsc_aux;
            return; }
        case 0xca: case 0xcb: /* CLAC / STAC (SDM Vol 2A): CPL 0 only */
            if (c->cpl || (c->rflags & F_VM) || !vm_feat(c->vm, FW_7B, 20)) raise_ud(c);
            set_rflags(c, i->rm == 2 ? get_rflags(c) & ~(uint64_t)F_AC : get_rflags(c) | F_AC);
            return;
        case 0xc1: case 0xc2: case 0xc3: case 0xc4:           /* VMX: not advertised */
        case 0xc8: case 0xc9:                                 /* MONITOR/MWAIT: not advertised */
        case 0xd0: case 0xd1:                                 /* XGETBV/XSETBV: no XSAVE */
        case 0xd8: case 0xd9: case 0xda: case 0xdb: case 0xdc: case 0xdd: case 0xde: case 0xdf: /* SVM */
        case 0xee: case 0xef:                                 /* RDPKRU/WRPKRU: no PKU */
            raise_ud(c);
        }
        if (i->ext == 4) { setreg(c, i->rm, i->osz, c->cr0 & 0xffffffff); return; }  /* SMSW r */
        if (i->ext == 6) goto lmsw;
        raise_ud(c);   /* ENCLS/ENCLU, VMFUNC, XEND/XTEST, SERIALIZE, RDPRU, ... or unassigned */
    }
    uint64_t off = ea_off(c, i);
    switch (i->ext) {
    case 0: case 1: { /* SGDT / SIDT */
        int bsz = c->long64 ? 8 : 4;
        uint64_t base = i->ext == 0 ? c->gdtr.base : c->idtr.base;
        uint32_t lim = i->ext == 0 ? c->gdtr.limit : c->idtr.limit;
        st(c, i->seg, off, 2, lim);
        st(c, i->seg, off + 2, bsz, bsz == 4 && i->osz == 2 ? base & 0xffffff : base);
        return; }
    case 2: case 3: { /* LGDT / LIDT */
        if (c->cpl) raise_gp(c, 0);
        uint16_t lim = (uint16_t)ld(c, i->seg, off, 2);
        uint64_t base = c->long64 ? ld(c, i->seg, off + 2, 8) : ld(c, i->seg, off + 2, 4);
        if (!c->long64 && i->osz == 2) base &= 0xffffff;
        if (c->long64 && !canonical(base)) raise_gp(c, 0);   /* SDM Vol 2A LGDT/LIDT */
        if (i->ext == 2) { c->gdtr.base = base; c->gdtr.limit = lim; }
        else { c->idtr.base = base; c->idtr.limit = lim; }
        return; }
    case 4: st(c, i->seg, off, 2, c->cr0 & 0xffff); return;  /* SMSW m16 */
    case 6: lmsw: { /* LMSW: can set PE but not clear it */
        if (c->cpl) raise_gp(c, 0);
        uint64_t v = rd_rm(c, i, 2) & 0xf;
        uint64_t n = (c->cr0 & ~0xeULL) | v | (c->cr0 & CR0_PE);
        set_cr0(c, n);
        return; }
    case 7: /* INVLPG */
        if (c->cpl) raise_gp(c, 0);
        tlb_flush_page(c, lin_addr(c, i->seg, off));
        c->brk = 1;
        return;
    }
    raise_ud(c);   /* 0F 01 /5 with memory: RSTORSSP (CET), not advertised */
}

/* ---- interrupts flag ---------------------------------------------------- */
static int iopl_ok(cpu_t *c) { return !(c->cr0 & CR0_PE) || c->cpl <= ((c->rflags >> 12) & 3); }
HANDLER(h_cli) { if (!iopl_ok(c)) raise_gp(c, 0); c->rflags &= ~(uint64_t)F_IF; }
HANDLER(h_sti)
{
    if (!iopl_ok(c)) raise_gp(c, 0);
    if (!(c->rflags & F_IF)) c->shadow = SHADOW_STI;   /* STI shadow (SDM Vol 3A 6.8.3) */
    c->rflags |= F_IF;
    c->brk = 1;
}

/* ---- MSRs ------------------------------------------------------------- */
/* Fixed-range MTRR MSRs in IA32_MTRR_FIX* order (SDM Vol 3A 12.11.2.2) */
#define MAXPHYADDR_BITS 40
static int mtrr_fixed_index(uint32_t msr)
{
    if (msr == 0x250) return 0;
    if (msr == 0x258 || msr == 0x259) return msr - 0x258 + 1;
    if (msr >= 0x268 && msr <= 0x26f) return msr - 0x268 + 3;
    return -1;
}
static int mem_type_ok(unsigned t) { return t == 0 || t == 1 || t == 4 || t == 5 || t == 6; }
/* IA32_ARCH_CAPABILITIES (CPUID.7.EDX[29]) -- softvmm does not speculate, so
 * every "not affected" bit is true: RDCL_NO (0), IBRS_ALL (1),
 * SKIP_L1DFL_VMENTRY (3), SSB_NO (4), MDS_NO (5), PSCHANGE_MC_NO (6), TAA_NO
 * (8), SBDR_SSDP_NO (13), FBSDP_NO (14), PSDP_NO (15), BHI_NO (20), PBRSB_NO
 * (24), GDS_NO (26), RFDS_NO (27), and ITS_NO (62), the bit a VMM synthesizes
 * for Indirect Target Selection.  Without ITS_NO a virtualised Intel guest
 * assumes it may be affected: Linux 6.12 then builds ITS thunks, and its
 * set_memory_rw() of module text trips its own W^X check (a WARNING). */
#define ARCH_CAP_VAL ((1ULL << 0) | (1ULL << 1) | (1ULL << 3) | (1ULL << 4) | (1ULL << 5) | (1ULL << 6) | \
                      (1ULL << 8) | (1ULL << 13) | (1ULL << 14) | (1ULL << 15) | (1ULL << 20) | (1ULL << 24) | \
                      (1ULL << 26) | (1ULL << 27) | (1ULL << 62))

int msr_read(cpu_t *c, uint32_t msr, uint64_t *v)
{
    if (msr >= 0x200 && msr <= 0x20f) { *v = c->mtrr_var[msr - 0x200]; return 0; }
    if (mtrr_fixed_index(msr) >= 0) { *v = c->mtrr_fixed[mtrr_fixed_index(msr)]; return 0; }
    switch (msr) {
    case 0x17: *v = 0; return 0;                        /* IA32_PLATFORM_ID */
    case 0x3a: *v = 1; return 0;                        /* IA32_FEATURE_CONTROL: locked, no VMX */
    case 0x48: *v = c->spec_ctrl; return 0;             /* IA32_SPEC_CTRL */
    case 0x49: return 1;                                /* IA32_PRED_CMD is write-only */
    case 0x8b: *v = 0; return 0;                        /* IA32_BIOS_SIGN_ID: microcode revision 0 */
    case 0xce: *v = (host_tsc_hz(c->vm) / 100000000ULL) << 8; return 0;   /* PLATFORM_INFO: max non-turbo ratio x 100 MHz */
    case 0xfe: *v = 0x508; return 0;                    /* MTRRcap: 8 variable, fixed, WC */
    case 0x10a: *v = ARCH_CAP_VAL; return 0;
    case 0x1d9: *v = 0; return 0;                       /* IA32_DEBUGCTL */
    case 0x2ff: *v = c->mtrr_def; return 0;
    case 0x10: *v = guest_tsc(c); return 0;
    case 0x3b: *v = (uint64_t)c->tsc_adjust; return 0;     /* IA32_TSC_ADJUST */
    case 0x1b: *v = c->lapic->apic_base; return 0;
    /* machine check (SDM Vol 3B 16.3.1): MCA with no error-reporting banks and
     * no IA32_MCG_CTL, consistent with CPUID.1:EDX.MCE/MCA (cpuid.c) */
    case 0x179: case 0x17a:
        if (!vm_feat(c->vm, FW_1D, 14)) return 1;   /* no MCA in the CPU model */
        *v = 0; return 0;                           /* IA32_MCG_CAP: count 0, MCG_CTL_P 0; MCG_STATUS: none in progress */
    case 0x17b: return 1;                           /* IA32_MCG_CTL: absent without MCG_CTL_P */
    case 0x6e0:   /* IA32_TSC_DEADLINE (lapic.c): #GP without CPUID.1:ECX.TSC_Deadline */
        return vm_feat(c->vm, FW_1C, 24) ? lapic_msr_read(c, msr, v) : 1;
    case 0x174: *v = c->sysenter_cs; return 0;
    case 0x175: *v = c->sysenter_esp; return 0;
    case 0x176: *v = c->sysenter_eip; return 0;
    case 0x1a0: *v = c->misc_enable; return 0;
    case 0x277: *v = c->pat; return 0;
    case 0xc0000080: *v = c->efer; return 0;
    case 0xc0000081: *v = c->star; return 0;
    case 0xc0000082: *v = c->lstar; return 0;
    case 0xc0000083: *v = c->cstar; return 0;
    case 0xc0000084: *v = c->sfmask; return 0;
    case 0xc0000100: *v = c->seg[S_FS].base; return 0;
    case 0xc0000101: *v = c->seg[S_GS].base; return 0;
    case 0xc0000102: *v = c->kgs_base; return 0;
    case 0xc0000103: *v = c->tsc_aux; return 0;
    }
    return -1;
}
int msr_write(cpu_t *c, uint32_t msr, uint64_t v)
{
    if (msr >= 0x200 && msr <= 0x20f) {
        uint64_t rsv = ~((1ULL << MAXPHYADDR_BITS) - 1);
        if (msr & 1) rsv |= 0x7ff;                                 /* PHYSMASK: bits 10:0 */
        else { rsv |= 0xf00; if (!mem_type_ok(v & 0xff)) return 1; }  /* PHYSBASE: type, bits 11:8 */
        if (v & rsv) return 1;
        c->mtrr_var[msr - 0x200] = v;
        return 0;
    }
    if (mtrr_fixed_index(msr) >= 0) {
        for (int k = 0; k < 8; k++) if (!mem_type_ok((v >> (8 * k)) & 0xff)) return 1;
        c->mtrr_fixed[mtrr_fixed_index(msr)] = v;
        return 0;
    }
    switch (msr) {
    case 0x17: case 0x3a: case 0xce: case 0xfe: case 0x10a: return 1;   /* read-only */
    case 0x48: if (v & ~7ULL) return 1; c->spec_ctrl = v; return 0;     /* IBRS, STIBP, SSBD */
    case 0x49: if (v & ~1ULL) return 1; return 0;                       /* IBPB: nothing to flush */
    case 0x8b: return 0;                                                /* microcode update trigger: ignored */
    case 0x1d9: if (v & ~3ULL) return 1; return 0;                      /* DEBUGCTL: LBR/BTF not kept */
    case 0x2ff: if ((v & ~0xcffULL) || !mem_type_ok(v & 0xff)) return 1; c->mtrr_def = v; return 0;
    case 0x10: {   /* this vCPU's TSC only; SDM Vol 3B 17.17.3: TSC_ADJUST follows the same delta */
        int64_t delta = (int64_t)(v - guest_tsc(c));
        c->tsc_offset += delta; c->tsc_adjust += delta;
        return 0; }
    case 0x3b:     /* IA32_TSC_ADJUST: writing it moves the TSC by the change */
        c->tsc_offset += (int64_t)v - c->tsc_adjust; c->tsc_adjust = (int64_t)v;
        return 0;
    case 0x1b: {
        /* reserved: bits 0-7, 9, 10 (EXTD: CPUID has no x2APIC) and those at or
         * above MAXPHYADDR (SDM Vol 3A 11.4.4, Figure 11-5) */
        if (v & ~(0x900ULL | (((1ULL << MAXPHYADDR_BITS) - 1) & ~0xfffULL))) return 1;
        uint64_t old = c->lapic->apic_base;
        /* globally disabling the APIC resets it, the xAPIC ID included (SDM
         * 11.4.3: re-enabled, it is as after power-up; CPUID.1:EDX.APIC reads
         * 0 meanwhile, cpuid.c) */
        if ((old & 0x800) && !(v & 0x800)) lapic_reset(c->vm, c->vcpuid, 0);
        c->lapic->apic_base = (v & ~0x100ULL) | (old & 0x100);   /* BSP flag is read-only */
        tlb_flush(c);
        return 0; }
    case 0x179: return 1;                           /* IA32_MCG_CAP: read-only */
    case 0x17a: return v ? 1 : 0;                   /* IA32_MCG_STATUS: only 0 is writable (no MCE in progress) */
    case 0x17b: return 1;
    case 0x6e0: return vm_feat(c->vm, FW_1C, 24) ? lapic_msr_write(c, msr, v) : 1;  /* IA32_TSC_DEADLINE (lapic.c) */
    case 0x174: c->sysenter_cs = v & 0xffff; return 0;
    case 0x175: if (!canonical(v)) return 1; c->sysenter_esp = v; return 0;
    case 0x176: if (!canonical(v)) return 1; c->sysenter_eip = v; return 0;
    case 0x1a0: c->misc_enable = v; return 0;
    case 0x277:   /* PAT: every entry must be a valid type (2, 3 reserved), SDM 13.12.2 */
        for (int k = 0; k < 8; k++) {
            unsigned t = (v >> (8 * k)) & 0xff;
            if (!(mem_type_ok(t) || t == 7)) return 1;
        }
        c->pat = v; return 0;
    case 0xc0000080:
        if (v & ~(uint64_t)(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE)) return 1;
        if (((v & EFER_NXE) && !vm_feat(c->vm, FW_X1D, 20)) || ((v & EFER_LME) && !vm_feat(c->vm, FW_X1D, 29)))
            return 1;   /* NX / LM masked off by the CPU model */
        if ((c->cr0 & CR0_PG) && ((v ^ c->efer) & EFER_LME)) return 1;
        set_efer(c, v);
        return 0;
    case 0xc0000081: c->star = v; return 0;
    case 0xc0000082: if (!canonical(v)) return 1; c->lstar = v; return 0;
    case 0xc0000083: if (!canonical(v)) return 1; c->cstar = v; return 0;
    case 0xc0000084: c->sfmask = v & 0xffffffff; return 0;
    case 0xc0000100: if (!canonical(v)) return 1; c->seg[S_FS].base = v; c->segbase[S_FS] = v; return 0;
    case 0xc0000101: if (!canonical(v)) return 1; c->seg[S_GS].base = v; c->segbase[S_GS] = v; return 0;
    case 0xc0000102: if (!canonical(v)) return 1; c->kgs_base = v; return 0;
    case 0xc0000103: c->tsc_aux = v & 0xffffffff; return 0;
    }
    return -1;
}

static void msr_exit(cpu_t *c, const insn_t *i, int code, uint32_t msr, uint64_t data)
{
    c->exit.code = code;
    c->exit.rip = c->rip;
    c->exit.inst_length = i->len;
    c->exit.msr = msr;
    c->exit.data = data;
    c->msr_pending = 1;
    longjmp(c->jb, AB_EXIT);
}

HANDLER(h_rdmsr)
{
    if (c->cpl) raise_gp(c, 0);
    uint32_t msr = (uint32_t)c->r[R_RCX];
    uint64_t v;
    int r = msr_read(c, msr, &v);
    if (r < 0) {
        if (c->vm->flags & SVM_F_UNKNOWN_MSR_GP) raise_gp(c, 0);
        msr_exit(c, i, SVM_EXIT_RDMSR, msr, 0);
    }
    if (r > 0) raise_gp(c, 0);
    c->r[R_RAX] = (uint32_t)v; c->r[R_RDX] = v >> 32;
}
HANDLER(h_wrmsr)
{
    if (c->cpl) raise_gp(c, 0);
    uint32_t msr = (uint32_t)c->r[R_RCX];
    uint64_t v = ((c->r[R_RDX] & 0xffffffff) << 32) | (c->r[R_RAX] & 0xffffffff);
    int r = msr_write(c, msr, v);
    if (r < 0) {
        if (c->vm->flags & SVM_F_UNKNOWN_MSR_GP) raise_gp(c, 0);
        msr_exit(c, i, SVM_EXIT_WRMSR, msr, v);
    }
    if (r > 0) raise_gp(c, 0);
    c->brk = 1;
}
HANDLER(h_rdtsc)
{
    if (c->cpl && (c->cr4 & 0x4)) raise_gp(c, 0);
    uint64_t t = guest_tsc(c);
    c->r[R_RAX] = (uint32_t)t; c->r[R_RDX] = t >> 32;
}
HANDLER(h_cpuid)
{
    uint32_t o[4];
    do_cpuid(c, (uint32_t)c->r[R_RAX], (uint32_t)c->r[R_RCX], o);
    c->r[R_RAX] = o[0]; c->r[R_RBX] = o[1]; c->r[R_RCX] = o[2]; c->r[R_RDX] = o[3];
}
HANDLER(h_priv_nop)
{
    /* INVD / WBINVD: caches are coherent for us */
    if (c->cpl) raise_gp(c, 0);
}
HANDLER(h_pause)
{
    cpu_pause(c);   /* run.c: pause-loop back-off */
}
/* RDPMC: #GP(0) at CPL > 0 without CR4.PCE, and for any counter number ECX,
 * since CPUID leaf 0xA advertises no performance counters (SDM Vol 2B RDPMC) */
HANDLER(h_rdpmc) { raise_gp(c, 0); }
HANDLER(h_ud) { raise_ud(c); }
/* An opcode no table assigns: #UD, as on a CPU without it.  Only internal
 * limits (exit_unhandled's other callers) may stop the VM. */
HANDLER(h_unhandled) { raise_ud(c); }

/* ---- reset, INIT, SIPI (SDM Vol 3A 10.1.1 Table 10-1, 11.4.4) ---------- */
void cpu_reset(cpu_t *c)
{
    for (int k = 0; k < 16; k++) c->r[k] = 0;
    c->r[R_RDX] = 0x000306a0 | 9;   /* processor signature, matches CPUID.1:EAX */
    c->rip = 0xfff0;
    c->rflags = 2; c->lf_op = LF_NONE;
    c->cr0 = 0x60000010; c->cr2 = c->cr3 = c->cr4 = 0; c->efer = 0;
    for (int s = 0; s < 6; s++) {
        c->seg[s].sel = 0; c->seg[s].base = 0; c->seg[s].limit = 0xffff; c->seg[s].access = 0x93;
    }
    c->seg[S_CS].sel = 0xf000; c->seg[S_CS].base = 0xffff0000; c->seg[S_CS].access = 0x9b;
    c->seg[S_LDTR] = (seg_t){ 0, 0xffff, 0x82, 0 };
    c->seg[S_TR] = (seg_t){ 0, 0xffff, 0x8b, 0 };
    c->gdtr.base = c->idtr.base = 0; c->gdtr.limit = c->idtr.limit = 0xffff;
    for (int k = 0; k < 8; k++) c->dr[k] = 0;
    c->dr[6] = 0xffff0ff0; c->dr[7] = 0x400;
    c->dbg_step = c->dbg_exec = c->dbg_data = c->dbg_io = c->dbg_hits = 0;
    c->pat = 0x0007040600070406ULL;
    c->misc_enable = 1;   /* fast strings */
    c->star = c->lstar = c->cstar = c->sfmask = c->kgs_base = 0;
    c->halted = 0; c->shadow = 0; c->nmi_blocked = 0; c->cpl = 0;
    c->io_n = c->io_pos = 0; c->msr_pending = 0;
    fpu_reset(c);
    tlb_flush(c);
    update_mode(c);
}

void cpu_do_sipi(cpu_t *c, int vec)
{
    cpu_reset(c);
    c->seg[S_CS].sel = (uint16_t)(vec << 8);
    c->seg[S_CS].base = (uint64_t)vec << 12;
    c->rip = 0;
    update_mode(c);
}

/* ---- SYSCALL / SYSRET (SDM Vol 2B, AMD APM Vol 2 6.1.1) ------------------- */
static void set_flat(cpu_t *c, int s, uint16_t sel, uint32_t access)
{
    c->seg[s].sel = sel; c->seg[s].base = 0; c->seg[s].limit = 0xffffffff; c->seg[s].access = access;
}

HANDLER(h_syscall)
{
    /* Intel SDM SYSCALL: #UD unless IA32_EFER.SCE and 64-bit mode; an AMD CPU
     * also takes it in compatibility mode, to CSTAR (APM Vol 3 SYSCALL; its
     * legacy-mode form is not implemented: #UD) */
    if (!(c->efer & EFER_SCE) || (!c->long64 && !(c->vm->vendor_amd && (c->efer & EFER_LMA)))) raise_ud(c);
    uint16_t sel = (uint16_t)(c->star >> 32) & 0xfffc;
    c->r[R_RCX] = c->nrip;
    uint64_t f = get_rflags(c);
    c->r[11] = f & ~(uint64_t)F_RF;
    set_rflags(c, f & ~(c->sfmask | F_RF));
    set_flat(c, S_CS, sel, 0xa09b);            /* 64-bit code, DPL 0 */
    set_flat(c, S_SS, sel + 8, 0xc093);         /* data, DPL 0 */
    int was64 = c->long64;
    update_mode(c);
    c->nrip = was64 ? c->lstar : (uint32_t)c->cstar;
}

HANDLER(h_sysret)
{
    /* SDM SYSRET: #UD unless SCE and 64-bit mode; #GP(0) at CPL > 0 and, for a
     * 64-bit return, on a non-canonical RCX (raised at CPL 0, before any state changes) */
    if (!(c->efer & EFER_SCE) || !c->long64) raise_ud(c);
    if (c->cpl != 0) raise_gp(c, 0);
    uint16_t sel = (uint16_t)(c->star >> 48);
    uint64_t target;
    if (i->osz == 8) {
        target = c->r[R_RCX];
        if ((uint64_t)(((int64_t)target << 16) >> 16) != target) raise_gp(c, 0);
        set_flat(c, S_CS, (sel + 16) | 3, 0xa0fb);   /* 64-bit code, DPL 3 */
    } else {
        target = (uint32_t)c->r[R_RCX];
        set_flat(c, S_CS, sel | 3, 0xc0fb);          /* 32-bit compat code, DPL 3 */
    }
    set_rflags(c, (c->r[11] & 0x3c7fd7) | 2);
    /* SS keeps a flat DPL-3 descriptor regardless of the GDT (SDM SYSRET) */
    set_flat(c, S_SS, (sel + 8) | 3, 0xc0f3);
    update_mode(c);
    c->nrip = target;
}

/* SWAPGS is in h_grp7.  LSS/LFS/LGS: 0F B2/B4/B5 m16:16/32/64 */
HANDLER(h_lfp)
{
    if (i->mod == 3) raise_ud(c);
    int sz = i->osz;
    uint64_t off = ea_off(c, i);
    uint64_t v = ld(c, i->seg, off, sz);
    uint16_t sel = (uint16_t)ld(c, i->seg, off + sz, 2);
    int s;
    switch (i->op) {
    case 0xb2: s = S_SS; break;
    case 0xb4: s = S_FS; break;
    case 0xb5: s = S_GS; break;
    case 0xc4: s = S_ES; break;
    default: s = S_DS; break;   /* C5: LDS */
    }
    load_seg(c, s, sel);
    setreg(c, i->reg, sz, v);   /* LSS: no interrupt shadow (only MOV SS and POP SS, SDM Vol 3A 6.8.3) */
}

/* LAR / LSL (0F 02 / 0F 03) and VERR / VERW (0F 00 /4 /5): SDM Vol 2A.
 * ZF=1 and the result when the selector is valid and visible at CPL/RPL. */
static int desc_visible(cpu_t *c, uint16_t sel, uint32_t *lo, uint32_t *hi, int for_lsl)
{
    if ((sel & ~3) == 0) return 0;
    if (desc_read(c, sel, lo, hi)) return 0;
    int s = !!(*hi & 0x1000), type = (*hi >> 8) & 0xf;
    int dpl = (*hi >> 13) & 3;
    if (!s) {
        /* system descriptors: LDT, TSS (and call/task gates for LAR only) */
        static const uint8_t ok_lar[16] = { 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0 };
        static const uint8_t ok_lsl[16] = { 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0 };
        if (!(for_lsl ? ok_lsl : ok_lar)[type]) return 0;
        if (c->efer & EFER_LMA && !(type == 2 || type == 9 || type == 0xb || (!for_lsl && type == 0xc))) return 0;
    }
    int conforming_code = s && (type & 0xc) == 0xc;
    if (!conforming_code && (dpl < c->cpl || dpl < (sel & 3))) return 0;
    return 1;
}
HANDLER(h_lar_lsl)
{
    if (!(c->cr0 & CR0_PE)) raise_ud(c);
    uint16_t sel = (uint16_t)rd_rm(c, i, 2);
    uint32_t lo, hi;
    uint64_t f = flags_materialize(c) & ~(uint64_t)F_ZF;
    if (desc_visible(c, sel, &lo, &hi, i->op == 0x03)) {
        if (i->op == 0x02) setreg(c, i->reg, i->osz, hi & 0x00f0ff00);
        else {
            uint32_t limit = (lo & 0xffff) | (hi & 0xf0000);
            if (hi & 0x800000) limit = (limit << 12) | 0xfff;
            setreg(c, i->reg, i->osz, limit);
        }
        f |= F_ZF;
    }
    flags_set_exact(c, f);
}
void verr_verw(cpu_t *c, const insn_t *i)
{
    uint16_t sel = (uint16_t)rd_rm(c, i, 2);
    uint32_t lo, hi;
    uint64_t f = flags_materialize(c) & ~(uint64_t)F_ZF;
    if (desc_visible(c, sel, &lo, &hi, 0) && (hi & 0x1000)) {
        int type = (hi >> 8) & 0xf;
        int ok = (i->ext == 4) ? (!(type & 8) || (type & 2))      /* readable: data, or readable code */
                               : (!(type & 8) && (type & 2));     /* writable data */
        if (ok) f |= F_ZF;
    }
    flags_set_exact(c, f);
}

/* ---- SYSENTER / SYSEXIT (SDM Vol 2B) --------------------------------------- */
HANDLER(h_sysenter)
{
    uint16_t cs = (uint16_t)c->sysenter_cs;
    if (!(c->cr0 & CR0_PE) || (cs & 0xfffc) == 0) raise_gp(c, 0);
    int lma = !!(c->efer & EFER_LMA);
    uint64_t f = get_rflags(c) & ~(uint64_t)(F_VM | F_IF | F_RF);
    set_rflags(c, f);
    set_flat(c, S_CS, cs & 0xfffc, lma ? 0xa09b : 0xc09b);
    set_flat(c, S_SS, (cs & 0xfffc) + 8, 0xc093);
    update_mode(c);
    c->r[R_RSP] = lma ? c->sysenter_esp : (uint32_t)c->sysenter_esp;
    c->nrip = lma ? c->sysenter_eip : (uint32_t)c->sysenter_eip;
}
HANDLER(h_sysexit)
{
    uint16_t cs = (uint16_t)c->sysenter_cs;
    if (!(c->cr0 & CR0_PE) || (cs & 0xfffc) == 0 || c->cpl != 0) raise_gp(c, 0);
    uint64_t rip, rsp;
    if (i->osz == 8) {
        rip = c->r[R_RDX]; rsp = c->r[R_RCX];
        if ((uint64_t)(((int64_t)rip << 16) >> 16) != rip || (uint64_t)(((int64_t)rsp << 16) >> 16) != rsp)
            raise_gp(c, 0);
        set_flat(c, S_CS, ((cs + 32) & 0xfffc) | 3, 0xa0fb);
        set_flat(c, S_SS, ((cs + 40) & 0xfffc) | 3, 0xc0f3);
    } else {
        rip = (uint32_t)c->r[R_RDX]; rsp = (uint32_t)c->r[R_RCX];
        set_flat(c, S_CS, ((cs + 16) & 0xfffc) | 3, 0xc0fb);
        set_flat(c, S_SS, ((cs + 24) & 0xfffc) | 3, 0xc0f3);
    }
    update_mode(c);
    c->r[R_RSP] = rsp;
    c->nrip = rip;
}
