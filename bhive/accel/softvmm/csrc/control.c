/*
 * Control transfers: Jcc/JMP/CALL/RET/LOOP, far transfers, IRET, INT n,
 * stack operations, HLT.
 */
#include "mem.h"
#include "handlers.h"

static inline void jump(cpu_t *c, uint64_t target, int osz)
{
    c->nrip = (osz == 8) ? target : (target & szmask(osz));
}

HANDLER(h_jcc) { if (cond(c, i->op & 15)) jump(c, c->nrip + i->imm, i->osz); }
HANDLER(h_jmp_rel) { jump(c, c->nrip + i->imm, i->osz); }
HANDLER(h_call_rel)
{
    uint64_t ret = c->nrip;
    push(c, i->osz, ret);
    jump(c, ret + i->imm, i->osz);
}
HANDLER(h_ret)
{
    /* C3 / C2 iw */
    uint64_t sp = sp_get(c);
    uint64_t t = ld(c, S_SS, sp, i->osz);
    sp_set(c, sp + i->osz + (i->op == 0xc2 ? (i->imm & 0xffff) : 0));
    jump(c, t, i->osz);
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
    setreg(c, R_RCX, as, cx);
    int take = cx != 0;
    if (i->op == 0xe0) take = take && !cond(c, 4);
    else if (i->op == 0xe1) take = take && cond(c, 4);
    if (take) jump(c, c->nrip + i->imm, i->osz);
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
        uint64_t t = rd_rm(c, i, sz);
        push(c, sz, c->nrip);
        jump(c, t, sz);
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

/* ---- far transfers (SDM Vol 3A 5.8; M1 implements same-privilege code
 * segments and real mode; call gates / task switches are TODO) ---------- */
static void far_jump(cpu_t *c, uint16_t sel, uint64_t off, int osz, int is_call)
{
    if (!(c->cr0 & CR0_PE)) {
        if (is_call) {
            uint64_t sp = sp_get(c);
            st(c, S_SS, sp_wrap(c, sp - osz), osz, c->seg[S_CS].sel);
            st(c, S_SS, sp_wrap(c, sp - 2 * osz), osz, c->nrip);
            sp_set(c, sp - 2 * osz);
        }
        set_seg_real(c, S_CS, sel);
        c->nrip = off & szmask(osz);
        c->brk = 1;
        return;
    }
    uint32_t lo, hi;
    if ((sel & ~3) == 0) raise_gp(c, 0);
    if (desc_read(c, sel, &lo, &hi)) raise_gp(c, sel & ~3);
    if (!(hi & 0x1000) || !(hi & 0x800)) {
        /* system descriptor: call gate / TSS / task gate */
        exit_unhandled(c);
    }
    if (!(hi & 0x8000)) raise_exc(c, EX_NP, 1, sel & ~3);
    if (is_call) {
        uint64_t sp = sp_get(c);
        st(c, S_SS, sp_wrap(c, sp - osz), osz, c->seg[S_CS].sel);
        st(c, S_SS, sp_wrap(c, sp - 2 * osz), osz, c->nrip);
        sp_set(c, sp - 2 * osz);
    }
    load_seg(c, S_CS, (sel & ~3) | c->cpl);
    c->nrip = c->long64 ? off : off & szmask(osz == 8 ? 4 : osz);
    c->brk = 1;
}

HANDLER(h_jmp_far)
{
    /* EA / 9A ptr16:16/32 (invalid in 64-bit mode) */
    far_jump(c, i->imm2, i->imm, i->osz, i->op == 0x9a);
}

HANDLER(h_retf)
{
    /* CB / CA iw.  Same-privilege return; outer-level returns TODO. */
    int sz = i->osz;
    uint64_t sp = sp_get(c);
    uint64_t off = ld(c, S_SS, sp, sz);
    uint16_t sel = (uint16_t)ld(c, S_SS, sp_wrap(c, sp + sz), sz);
    if (!(c->cr0 & CR0_PE)) {
        set_seg_real(c, S_CS, sel);
    } else {
        if ((sel & 3) != c->cpl) exit_unhandled(c);
        load_seg(c, S_CS, sel);
    }
    sp_set(c, sp + 2 * sz + (i->op == 0xca ? (i->imm & 0xffff) : 0));
    c->nrip = off & szmask(sz);
    c->brk = 1;
}

/* IRET (SDM Vol 2A IRET pseudo-code; real, protected and IA-32e modes).
 * Nested task return and virtual-8086 returns are not implemented yet. */
HANDLER(h_iret)
{
    int sz = i->osz;
    uint64_t sp = sp_get(c);
    uint64_t nip = ld(c, S_SS, sp, sz);
    uint16_t cs = (uint16_t)ld(c, S_SS, sp_wrap(c, sp + sz), sz);
    uint64_t fl = ld(c, S_SS, sp_wrap(c, sp + 2 * sz), sz);
    uint64_t cur = get_rflags(c);
    if (!(c->cr0 & CR0_PE)) {
        uint64_t mask = (sz == 2) ? 0xffff : 0x3f7fd5;
        set_seg_real(c, S_CS, cs);
        sp_set(c, sp + 3 * sz);
        set_rflags(c, (cur & ~mask) | (fl & mask));
        c->nrip = nip & szmask(sz);
        c->nmi_blocked = 0;
        c->brk = 1;
        return;
    }
    if (cur & F_NT) {
        if (c->efer & EFER_LMA) raise_gp(c, 0);   /* no task switches in IA-32e mode */
        exit_unhandled(c);                          /* nested-task return: not implemented */
    }
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
        if (to64 && (uint64_t)(((int64_t)nip << 16) >> 16) != nip) raise_gp(c, 0);
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
    if (outer) {
        /* SDM: data segments not accessible at the new CPL become null */
        static const int ds[4] = { S_ES, S_DS, S_FS, S_GS };
        for (int k = 0; k < 4; k++) {
            seg_t *s = &c->seg[ds[k]];
            int dpl = (s->access >> 5) & 3;
            int conforming_code = (s->access & 0x1c) == 0x1c;
            if (!conforming_code && dpl < c->cpl) { s->sel = 0; s->access = 0x10000; }
        }
        update_mode(c);
    }
    c->nrip = c->long64 ? nip : nip & szmask(sz == 8 ? 4 : sz);
    c->nmi_blocked = 0;
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
