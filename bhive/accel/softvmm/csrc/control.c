/*
 * Control transfers: Jcc/JMP/CALL/RET/LOOP, far transfers, IRET, INT n,
 * stack operations, HLT.
 */
#include "mem.h"
#include "handlers.h"

/* A near branch target: truncated to the operand size and, outside 64-bit
 * mode, within the CS limit, else #GP(0) (SDM Vol 2A JMP, CALL, RET, Jcc,
 * LOOP: "if the target is beyond the code segment limit").  Checked before
 * anything (RSP, RCX) is committed. */
static inline uint64_t near_target(cpu_t *c, uint64_t target, int osz)
{
    if (osz == 8) return target;
    target &= szmask(osz);
    if (unlikely(target > c->seg[S_CS].limit) && !c->long64) raise_gp(c, 0);
    return target;
}
static inline void jump(cpu_t *c, uint64_t target, int osz) { c->nrip = near_target(c, target, osz); }

HANDLER(h_jcc) { if (cond(c, i->op & 15)) jump(c, c->nrip + i->imm, i->osz); }
HANDLER(h_jmp_rel) { jump(c, c->nrip + i->imm, i->osz); }
HANDLER(h_call_rel)
{
    uint64_t ret = c->nrip;
    uint64_t t = near_target(c, ret + i->imm, i->osz);
    push(c, i->osz, ret);
    c->nrip = t;
}
HANDLER(h_ret)
{
    /* C3 / C2 iw */
    uint64_t sp = sp_get(c);
    uint64_t t = near_target(c, ld(c, S_SS, sp, i->osz), i->osz);
    sp_set(c, sp + i->osz + (i->op == 0xc2 ? (i->imm & 0xffff) : 0));
    c->nrip = t;
}
HANDLER(h_loop)
{
    /* E0 LOOPNE, E1 LOOPE, E2 LOOP, E3 JrCXZ; count register size = address size */
    int as = i->asz;
    uint64_t cx = getreg(c, R_RCX, as);
    if (i->op == 0xe3) {
        if (cx == 0) jump(c, c->nrip + i->imm, i->osz);
        return;
    }
    cx = (cx - 1) & szmask(as);
    int take = cx != 0;
    if (i->op == 0xe0) take = take && !cond(c, 4);
    else if (i->op == 0xe1) take = take && cond(c, 4);
    uint64_t t = take ? near_target(c, c->nrip + i->imm, i->osz) : 0;
    setreg(c, R_RCX, as, cx);
    if (take) c->nrip = t;
}

/* ---- stack --------------------------------------------------------------- */
HANDLER(h_push_r) { push(c, i->osz, getreg(c, i->rm, i->osz)); }
HANDLER(h_pop_r)
{
    uint64_t v = pop(c, i->osz);
    setreg(c, i->rm, i->osz, v);
}
HANDLER(h_push_imm) { push(c, i->osz, i->imm); }
HANDLER(h_pop_rm)
{
    /* 8F /0: RSP is incremented before the destination address is computed (SDM POP) */
    uint64_t sp = sp_get(c);
    uint64_t v = ld(c, S_SS, sp, i->osz);
    uint64_t old = c->r[R_RSP];
    sp_set(c, sp + i->osz);
    if (i->mod != 3) {
        uint64_t off = ea_off(c, i);
        c->r[R_RSP] = old;   /* restore in case the store faults */
        st(c, i->seg, off, i->osz, v);
        sp_set(c, sp + i->osz);
    } else {
        setreg(c, i->rm, i->osz, v);
    }
}
HANDLER(h_pushf)
{
    uint64_t f = get_rflags(c) & ~(uint64_t)(F_RF | F_VM);
    push(c, i->osz, f);
}
HANDLER(h_popf)
{
    uint64_t sp = sp_get(c);
    uint64_t v = ld(c, S_SS, sp, i->osz);
    sp_set(c, sp + i->osz);
    uint64_t cur = get_rflags(c);
    /* SDM POPF: IOPL only at CPL 0, IF only if CPL <= IOPL; VM/RF never */
    uint64_t mask = F_OSZAPC | F_TF | F_DF | F_NT | F_AC | F_ID;
    if (c->cpl == 0) mask |= F_IOPL | F_IF;
    else if (c->cpl <= ((cur >> 12) & 3)) mask |= F_IF;
    if (i->osz == 2) mask &= 0xffff;
    set_rflags(c, (cur & ~mask) | (v & mask));
    c->brk = 1;   /* IF may have changed: re-check interrupts */
}
HANDLER(h_leave)
{
    uint64_t bp = getreg(c, R_RBP, c->ssz);
    uint64_t v = ld(c, S_SS, bp, i->osz);
    sp_set(c, bp + i->osz);
    setreg(c, R_RBP, i->osz, v);
}
HANDLER(h_enter)
{
    int sz = i->osz;
    unsigned level = i->imm2 & 31;
    uint64_t bp = getreg(c, R_RBP, c->ssz);
    uint64_t sp = sp_wrap(c, sp_get(c) - sz);
    st(c, S_SS, sp, sz, getreg(c, R_RBP, sz));
    uint64_t frame = sp;
    for (unsigned l = 1; l < level; l++) {
        bp = sp_wrap(c, bp - sz);
        sp = sp_wrap(c, sp - sz);
        st(c, S_SS, sp, sz, ld(c, S_SS, bp, sz));
    }
    if (level) { sp = sp_wrap(c, sp - sz); st(c, S_SS, sp, sz, frame); }
    sp = sp_wrap(c, sp - (i->imm & 0xffff));
    /* SDM ENTER, exceptions: #PF "if a write using the final value of the
     * stack pointer would cause a page fault".  Checked after the pushes
     * (which stay in memory when it faults: what the hardware does) */
    (void)mem_read_rmw_x(c, lin_wr(c, S_SS, sp, 1), 1, ACC_SS);
    setreg(c, R_RBP, sz == 2 ? 2 : (c->ssz == 8 ? 8 : 4), frame);
    sp_set(c, sp);
}

/* ---- group 5: FF ------------------------------------------------------- */
static void far_jump(cpu_t *c, uint16_t sel, uint64_t off, int osz, int is_call);

HANDLER(h_grp5)
{
    int sz = i->osz;
    switch (i->ext) {
    case 2: { /* CALL near indirect */
        uint64_t t = near_target(c, rd_rm(c, i, sz), sz);
        push(c, sz, c->nrip);
        c->nrip = t;
        break; }
    case 4: jump(c, rd_rm(c, i, sz), sz); break;
    case 6: push(c, sz, rd_rm(c, i, sz)); break;
    case 3: case 5: { /* far CALL/JMP m16:16/32/64 */
        if (i->mod == 3) raise_ud(c);
        uint64_t off = ea_off(c, i);
        uint64_t o = ld(c, i->seg, off, sz);
        uint16_t sel = (uint16_t)ld(c, i->seg, off + sz, 2);
        far_jump(c, sel, o, sz, i->ext == 3);
        break; }
    default: raise_ud(c);
    }
}

/* ---- far transfers (SDM Vol 3A 5.8; Vol 2A CALL, JMP and RET pseudo-code) */
static inline uint64_t dbase(uint32_t lo, uint32_t hi)
{
    return (lo >> 16) | ((uint64_t)(hi & 0xff) << 16) | (hi & 0xff000000);
}
static inline uint32_t dlimit(uint32_t lo, uint32_t hi)
{
    uint32_t l = (lo & 0xffff) | (hi & 0xf0000);
    return (hi & 0x800000) ? (l << 12) | 0xfff : l;
}

/* The new instruction pointer: within the limit of a 16/32-bit code
 * segment, canonical for a 64-bit one; #GP(0) otherwise. */
static void check_target_ip(cpu_t *c, uint32_t lo, uint32_t hi, uint64_t ip)
{
    if ((c->efer & EFER_LMA) && (hi & 0x200000)) { if (!canonical(ip)) raise_gp(c, 0); }
    else if (ip > dlimit(lo, hi)) raise_gp(c, 0);
}

/* CS:IP of a far CALL on the current stack, before anything is committed
 * (both stores are checked: limit, #SS, #PF); returns the new stack pointer */
static uint64_t push_ret_frame(cpu_t *c, int sz, uint64_t cs, uint64_t ip)
{
    uint64_t sp = sp_get(c);
    uint64_t s1 = sp_wrap(c, sp - sz), s2 = sp_wrap(c, s1 - sz);
    st(c, S_SS, s1, sz, cs);
    st(c, S_SS, s2, sz, ip);
    return s2;
}

/* A push on a stack that is not loaded yet (call-gate privilege change):
 * base/limit/size of the new SS; #SS(err) beyond an expand-up limit or, in
 * IA-32e mode, at a non-canonical address. */
typedef struct { uint64_t base, sp; uint32_t limit; int ssz; uint16_t err; uint8_t lma, expdown; } nstack_t;
static void push_new(cpu_t *c, nstack_t *ns, int sz, uint64_t v)
{
    ns->sp = (ns->sp - sz) & szmask(ns->ssz);
    uint64_t last = ns->sp + sz - 1;
    if (ns->lma ? !canonical(ns->sp)
                : ns->expdown ? (ns->sp <= ns->limit || last > szmask(ns->ssz)) : last > ns->limit)
        raise_exc(c, EX_SS, 1, ns->err);
    mem_write_slow(c, ns->base + ns->sp, sz, v, ACC_W | ACC_SYS);
}

/* Far CALL/JMP through a call gate (SDM Vol 3A 5.8.3-5.8.6, Vol 2A CALL
 * "CALL-GATE", "MORE-PRIVILEGE", "SAME-PRIVILEGE"): 16- and 32-bit gates
 * in legacy mode (parameter copy), 64-bit gates in IA-32e mode. */
static void call_gate(cpu_t *c, uint16_t gsel, uint32_t lo, uint32_t hi, int is_call)
{
    int lma = !!(c->efer & EFER_LMA);
    uint16_t ges = gsel & 0xfffc;
    int gdpl = (hi >> 13) & 3, type = (hi >> 8) & 0xf;
    if (gdpl < c->cpl || gdpl < (gsel & 3)) raise_gp(c, ges);
    if (!(hi & 0x8000)) raise_exc(c, EX_NP, 1, ges);
    uint64_t ip = (lo & 0xffff) | (hi & 0xffff0000);
    int gsz = type == 4 ? 2 : lma ? 8 : 4;
    if (lma) {
        /* 16-byte gate: offset 63:32 in the third dword; the type field of
         * the upper half must be 0 (SDM Vol 3A 5.8.3.1, Figure 5-9) */
        uint32_t lo2, hi2;
        if (desc_read(c, (uint16_t)(gsel + 8), &lo2, &hi2) || ((hi2 >> 8) & 0x1f)) raise_gp(c, ges);
        ip |= (uint64_t)lo2 << 32;
    }
    if (gsz == 2) ip &= 0xffff;
    uint16_t csel = (uint16_t)(lo >> 16), ces = csel & 0xfffc;
    uint32_t clo, chi;
    if (!ces) raise_gp(c, 0);
    if (desc_read(c, csel, &clo, &chi)) raise_gp(c, ces);
    int cdpl = (chi >> 13) & 3, conf = !!(chi & 0x400);
    if ((chi & 0x1800) != 0x1800) raise_gp(c, ces);
    /* CALL may go to an inner level; JMP never changes CPL */
    if ((is_call || conf) ? cdpl > c->cpl : cdpl != c->cpl) raise_gp(c, ces);
    if (lma && (chi & 0x600000) != 0x200000) raise_gp(c, ces);    /* must be 64-bit code */
    if (!(chi & 0x8000)) raise_exc(c, EX_NP, 1, ces);
    check_target_ip(c, clo, chi, ip);
    if (!is_call || conf || cdpl == c->cpl) {
        uint64_t sp = 0;
        if (is_call) sp = push_ret_frame(c, gsz, c->seg[S_CS].sel, c->nrip);
        load_seg(c, S_CS, ces | c->cpl);
        if (is_call) sp_set(c, sp);
        c->nrip = ip;
        c->brk = 1;
        return;
    }
    /* MORE-PRIVILEGE: the inner stack from the TSS */
    int ncpl = cdpl;
    seg_t *tr = &c->seg[S_TR];
    uint16_t nss;
    nstack_t ns = { 0, 0, 0, 8, 0, (uint8_t)lma, 0 };
    if (lma) {
        if (4u + 8 * ncpl + 7 > tr->limit) raise_exc(c, EX_TS, 1, tr->sel & 0xfffc);
        ns.sp = mem_read_slow(c, tr->base + 4 + 8 * ncpl, 8, ACC_SYS);
        nss = (uint16_t)ncpl;   /* a null selector with RPL = new CPL */
    } else {
        int t32 = (tr->access & 0xf) == 9 || (tr->access & 0xf) == 0xb;
        uint32_t a = t32 ? 8u * ncpl + 4 : 4u * ncpl + 2;
        if (a + (t32 ? 5 : 3) > tr->limit) raise_exc(c, EX_TS, 1, tr->sel & 0xfffc);
        nss = (uint16_t)mem_read_slow(c, tr->base + a + (t32 ? 4 : 2), 2, ACC_SYS);
        ns.sp = mem_read_slow(c, tr->base + a, t32 ? 4 : 2, ACC_SYS);
        uint32_t slo, shi;
        new_stack_check(c, nss, ncpl, 0, &slo, &shi);
        ns.base = dbase(slo, shi); ns.limit = dlimit(slo, shi);
        ns.ssz = (shi & 0x400000) ? 4 : 2;
        ns.err = nss & 0xfffc;
        ns.expdown = !!(shi & 0x400);
    }
    /* parameters from the caller's stack, read before anything changes */
    int pc = lma ? 0 : (int)(hi & 0x1f);
    uint64_t params[32], osp = sp_get(c);
    for (int k = 0; k < pc; k++) params[k] = ld(c, S_SS, sp_wrap(c, osp + (uint64_t)k * gsz), gsz);
    push_new(c, &ns, gsz, c->seg[S_SS].sel);
    push_new(c, &ns, gsz, c->r[R_RSP] & szmask(gsz));
    for (int k = pc - 1; k >= 0; k--) push_new(c, &ns, gsz, params[k]);
    push_new(c, &ns, gsz, c->seg[S_CS].sel);
    push_new(c, &ns, gsz, c->nrip);
    load_seg(c, S_CS, ces | ncpl);                   /* CPL = new DPL */
    if (lma) {
        c->seg[S_SS].sel = nss; c->seg[S_SS].base = 0; c->seg[S_SS].limit = 0;
        c->seg[S_SS].access = 0x10000 | ((uint32_t)ncpl << 5);
        update_mode(c);
    } else load_seg(c, S_SS, (nss & 0xfffc) | ncpl);
    sp_set(c, ns.sp);
    c->nrip = ip;
    c->brk = 1;
}

static void far_jump(cpu_t *c, uint16_t sel, uint64_t off, int osz, int is_call)
{
    if (!(c->cr0 & CR0_PE) || (c->rflags & F_VM)) {
        uint64_t sp = 0;
        if (is_call) sp = push_ret_frame(c, osz, c->seg[S_CS].sel, c->nrip);
        set_seg_real(c, S_CS, sel);
        if (is_call) sp_set(c, sp);
        c->nrip = off & szmask(osz);
        c->brk = 1;
        return;
    }
    int lma = !!(c->efer & EFER_LMA);
    uint16_t es = sel & 0xfffc;
    uint32_t lo, hi;
    if (!es) raise_gp(c, 0);
    if (desc_read(c, sel, &lo, &hi)) raise_gp(c, es);
    if (hi & 0x1000) {
        /* CONFORMING- / NONCONFORMING-CODE-SEGMENT */
        int dpl = (hi >> 13) & 3, rpl = sel & 3;
        if (!(hi & 0x800)) raise_gp(c, es);                           /* data segment */
        if (lma && (hi & 0x600000) == 0x600000) raise_gp(c, es);      /* L=1 with D=1 */
        if ((hi & 0x400) ? dpl > c->cpl : (rpl > c->cpl || dpl != c->cpl)) raise_gp(c, es);
        if (!(hi & 0x8000)) raise_exc(c, EX_NP, 1, es);
        uint64_t ip = osz == 2 ? (uint16_t)off : osz == 4 ? (uint32_t)off : off;
        check_target_ip(c, lo, hi, ip);
        uint64_t sp = 0;
        if (is_call) sp = push_ret_frame(c, osz, c->seg[S_CS].sel, c->nrip);
        load_seg(c, S_CS, es | c->cpl);
        if (is_call) sp_set(c, sp);
        c->nrip = ip;
        c->brk = 1;
        return;
    }
    int type = (hi >> 8) & 0xf;
    if (lma) {
        if (type != 0xc) raise_gp(c, es);                   /* only 64-bit call gates */
    } else if (type == 5 || type == 1 || type == 9) {
        /* task gate or available TSS: a task switch (SDM Vol 3A 7.3) */
        task_switch(c, sel, lo, hi, is_call ? TS_CALL : TS_JMP, c->nrip);
        return;
    } else if (type != 4 && type != 0xc) raise_gp(c, es);
    call_gate(c, sel, lo, hi, is_call);
}

HANDLER(h_jmp_far)
{
    /* EA / 9A ptr16:16/32 (invalid in 64-bit mode) */
    far_jump(c, i->imm2, i->imm, i->osz, i->op == 0x9a);
}

/* After a return to an outer level: ES/DS/FS/GS that the new CPL may not
 * use (data or non-conforming code with DPL < CPL) become null (SDM RET
 * and IRET pseudo-code, "RETURN-TO-OUTER-PRIVILEGE-LEVEL") */
static void null_inaccessible_segs(cpu_t *c)
{
    static const int ds[4] = { S_ES, S_DS, S_FS, S_GS };
    for (int k = 0; k < 4; k++) {
        seg_t *s = &c->seg[ds[k]];
        int dpl = (s->access >> 5) & 3;
        int conforming_code = (s->access & 0x1c) == 0x1c;
        if (!(s->access & 0x10000) && !conforming_code && dpl < c->cpl) { s->sel = 0; s->access = 0x10000; }
    }
    update_mode(c);
}

HANDLER(h_retf)
{
    /* CB / CA iw (SDM Vol 2A RET, far return in every mode) */
    int sz = i->osz;
    uint64_t imm = i->op == 0xca ? (i->imm & 0xffff) : 0;
    uint64_t sp = sp_get(c);
    uint64_t off = ld(c, S_SS, sp, sz);
    uint16_t sel = (uint16_t)ld(c, S_SS, sp_wrap(c, sp + sz), sz);
    if (!(c->cr0 & CR0_PE) || (c->rflags & F_VM)) {
        set_seg_real(c, S_CS, sel);
        sp_set(c, sp + 2 * sz + imm);
        c->nrip = off & szmask(sz);
        c->brk = 1;
        return;
    }
    int lma = !!(c->efer & EFER_LMA), rpl = sel & 3;
    uint16_t es = sel & 0xfffc;
    uint32_t lo, hi;
    if (!es) raise_gp(c, 0);
    if (desc_read(c, sel, &lo, &hi)) raise_gp(c, es);
    int dpl = (hi >> 13) & 3;
    if ((hi & 0x1800) != 0x1800) raise_gp(c, es);                      /* not code */
    if (lma && (hi & 0x600000) == 0x600000) raise_gp(c, es);
    if (rpl < c->cpl) raise_gp(c, es);
    if ((hi & 0x400) ? dpl > rpl : dpl != rpl) raise_gp(c, es);
    if (!(hi & 0x8000)) raise_exc(c, EX_NP, 1, es);
    uint64_t ip = sz == 2 ? (uint16_t)off : sz == 4 ? (uint32_t)off : off;
    if (rpl == c->cpl) {
        check_target_ip(c, lo, hi, ip);
        load_seg(c, S_CS, sel);
        sp_set(c, sp + 2 * sz + imm);
        c->nrip = ip;
        c->brk = 1;
        return;
    }
    /* RETURN-TO-OUTER-PRIVILEGE-LEVEL: SS:eSP above the released parameters */
    uint64_t nsp = ld(c, S_SS, sp_wrap(c, sp + 2 * sz + imm), sz);
    uint16_t nss = (uint16_t)ld(c, S_SS, sp_wrap(c, sp + 3 * sz + imm), sz);
    int to64 = lma && (hi & 0x200000);
    if ((nss & 0xfffc) == 0) {
        /* a null SS only for a 64-bit return below CPL 3 (IA-32e mode) */
        if (!to64 || (nss & 3) == 3) raise_gp(c, 0);
    } else {
        uint32_t slo, shi;
        if (desc_read(c, nss, &slo, &shi)) raise_gp(c, nss & 0xfffc);
        if ((nss & 3) != rpl || (shi & 0x1a00) != 0x1200 || (int)((shi >> 13) & 3) != rpl)
            raise_gp(c, nss & 0xfffc);
        if (!(shi & 0x8000)) raise_exc(c, EX_SS, 1, nss & 0xfffc);
    }
    check_target_ip(c, lo, hi, ip);
    load_seg(c, S_CS, sel);                         /* CPL = RPL */
    if ((nss & 0xfffc) == 0) {
        c->seg[S_SS].sel = nss; c->seg[S_SS].base = 0; c->seg[S_SS].limit = 0;
        c->seg[S_SS].access = 0x10000 | ((uint32_t)(nss & 3) << 5);
        update_mode(c);
    } else load_seg(c, S_SS, nss);
    sp_set(c, nsp + imm);                           /* release the caller's parameters */
    null_inaccessible_segs(c);
    c->nrip = ip;
    c->brk = 1;
}

/* IRET (SDM Vol 2A IRET pseudo-code; real, protected and IA-32e modes,
 * nested-task return).  Returns to virtual-8086 mode are not implemented. */
/* IRET ends NMI blocking (SDM Vol 3A 6.7.1): an NMI that arrived while the
 * handler ran is delivered right after it, whatever IF says, so make the
 * run loop look at the events again (its own event word, as a sender would) */
static void nmi_unblock(cpu_t *c)
{
    c->nmi_blocked = 0;
    if (__atomic_load_n(&c->lapic->nmi, __ATOMIC_RELAXED)) __atomic_store_n(&c->lapic->event, 1, __ATOMIC_SEQ_CST);
}

HANDLER(h_iret)
{
    int sz = i->osz;
    uint64_t cur = get_rflags(c);
    if ((c->cr0 & CR0_PE) && (cur & F_NT)) {
        /* nested-task return (SDM Vol 2A IRET "TASK-RETURN", Vol 3A 7.3):
         * back to the task in the previous-task link; none in IA-32e mode */
        if (c->efer & EFER_LMA) raise_gp(c, 0);
        uint16_t link = (uint16_t)mem_read_slow(c, c->seg[S_TR].base, 2, ACC_SYS);
        uint32_t lo, hi;
        if ((link & 4) || desc_read(c, link, &lo, &hi)) raise_exc(c, EX_TS, 1, link & 0xfffc);
        task_switch(c, link, lo, hi, TS_IRET, c->nrip);
        nmi_unblock(c);
        return;
    }
    uint64_t sp = sp_get(c);
    uint64_t nip = ld(c, S_SS, sp, sz);
    uint16_t cs = (uint16_t)ld(c, S_SS, sp_wrap(c, sp + sz), sz);
    uint64_t fl = ld(c, S_SS, sp_wrap(c, sp + 2 * sz), sz);
    if (!(c->cr0 & CR0_PE)) {
        uint64_t mask = (sz == 2) ? 0xffff : 0x3f7fd5;
        set_seg_real(c, S_CS, cs);
        sp_set(c, sp + 3 * sz);
        set_rflags(c, (cur & ~mask) | (fl & mask));
        c->nrip = nip & szmask(sz);
        nmi_unblock(c);
        c->brk = 1;
        return;
    }
    /* a return to virtual-8086 mode (EFLAGS.VM popped at CPL 0): not implemented */
    if (sz == 4 && c->cpl == 0 && !(c->efer & EFER_LMA) && (fl & F_VM)) exit_unhandled(c);
    int rpl = cs & 3;
    uint64_t nsp = 0; uint16_t nss = 0;
    int outer = rpl > c->cpl;
    int pop_ss = outer || sz == 8;     /* IRETQ always pops SS:RSP */
    if (pop_ss) {
        nsp = ld(c, S_SS, sp_wrap(c, sp + 3 * sz), sz);
        nss = (uint16_t)ld(c, S_SS, sp_wrap(c, sp + 4 * sz), sz);
    }
    /* every check of the return frame before any state changes (SDM IRET
     * "PROTECTED-MODE-RETURN" and "RETURN-TO-OUTER-PRIVILEGE-LEVEL") */
    {
        uint32_t lo, hi;
        if ((cs & ~3) == 0) raise_gp(c, 0);
        if (desc_read(c, cs, &lo, &hi)) raise_gp(c, cs & ~3);
        if ((hi & 0x1800) != 0x1800) raise_gp(c, cs & ~3);                 /* must be code */
        if (rpl < c->cpl) raise_gp(c, cs & ~3);
        int dpl = (hi >> 13) & 3;
        if ((hi & 0x400) ? dpl > rpl : dpl != rpl) raise_gp(c, cs & ~3);
        if (!(hi & 0x8000)) raise_exc(c, EX_NP, 1, cs & ~3);
        int to64 = (c->efer & EFER_LMA) && (hi & 0x200000);
        if (to64 && (hi & 0x400000)) raise_gp(c, cs & ~3);                  /* L=1 with D=1 */
        check_target_ip(c, lo, hi, to64 ? nip : nip & szmask(sz == 8 ? 4 : sz));   /* canonical / CS limit: #GP(0) */
        if (pop_ss) {
            if ((nss & ~3) == 0 && !(nss & 4)) {
                if (!((c->efer & EFER_LMA) && sz == 8 && rpl < 3)) raise_gp(c, 0);
            } else {
                uint32_t slo, shi;
                if (desc_read(c, nss, &slo, &shi)) raise_gp(c, nss & ~3);
                if ((nss & 3) != rpl || (int)((shi >> 13) & 3) != rpl || (shi & 0x1a00) != 0x1200)
                    raise_gp(c, nss & ~3);
                if (!(shi & 0x8000)) raise_exc(c, EX_SS, 1, nss & ~3);
            }
        }
    }
    uint64_t mask = F_OSZAPC | F_TF | F_DF | F_NT | F_AC | F_ID | F_RF;
    if (c->cpl == 0) mask |= F_IOPL | F_IF;
    else if (c->cpl <= ((cur >> 12) & 3)) mask |= F_IF;
    if (sz == 2) mask &= 0xffff;
    load_seg(c, S_CS, cs);          /* sets CPL = RPL */
    set_rflags(c, (cur & ~mask) | (fl & mask));
    if (pop_ss) {
        if ((nss & ~3) == 0 && !(nss & 4)) {
            /* IRETQ to CPL < 3 may load a null SS (SDM 6.14.4) */
            c->seg[S_SS].sel = nss; c->seg[S_SS].base = 0; c->seg[S_SS].limit = 0;
            c->seg[S_SS].access = 0x10000 | ((uint32_t)(nss & 3) << 5);
            update_mode(c);
        } else load_seg(c, S_SS, nss);
        sp_set(c, nsp);
    } else {
        sp_set(c, sp + 3 * sz);
    }
    if (outer) null_inaccessible_segs(c);   /* SDM: data segments not accessible at the new CPL become null */
    c->nrip = c->long64 ? nip : nip & szmask(sz == 8 ? 4 : sz);
    nmi_unblock(c);
    c->brk = 1;
}

HANDLER(h_int)
{
    /* CD ib, CC (INT3), CE (INTO), F1 (INT1) */
    int vec, kind = EV_SWINT;
    if (i->op == 0xcc) { vec = 3; kind = EV_SWEXC; }
    else if (i->op == 0xce) { if (!cond(c, 0)) return; vec = 4; kind = EV_SWEXC; }
    else if (i->op == 0xf1) { vec = 1; kind = EV_HWEXC; }
    else vec = i->imm & 0xff;
    deliver_event(c, vec, kind, 0, 0, c->nrip);
    c->nrip = c->rip;   /* deliver_event set c->rip to the handler */
    c->brk = 1;
}

HANDLER(h_hlt)
{
    if (c->cpl) raise_gp(c, 0);
    c->brk = 1;
    c->halted = 1;    /* IF=0: only NMI/INIT/SIPI can wake it */
    if (!(c->rflags & F_IF)) {
        /* vCPU stopped: the VMM decides (bhyve's VM_EXITCODE_HLT) */
        c->exit.code = SVM_EXIT_HLT;
        c->exit.rip = c->rip;
        c->exit.inst_length = i->len;
        c->post_exit = 1;
    }
}
