/*
 * Hardware task switches (SDM Vol 3A 7.3): far JMP/CALL to a TSS or a task
 * gate, a task gate in the IDT (INT n, exceptions, interrupts), IRET with
 * EFLAGS.NT.  32-bit and 16-bit TSSs; only legacy protected mode (IA-32e
 * mode has no task switches: the callers raise #GP(0) there).
 * Virtual-8086 tasks are not supported (the run ends as "unhandled").
 */
#include "mem.h"

static inline uint64_t dbase(uint32_t lo, uint32_t hi)
{
    return (lo >> 16) | ((uint64_t)(hi & 0xff) << 16) | (hi & 0xff000000);
}
static inline uint32_t dlimit(uint32_t lo, uint32_t hi)
{
    uint32_t l = (lo & 0xffff) | (hi & 0xf0000);
    return (hi & 0x800000) ? (l << 12) | 0xfff : l;
}
static inline uint32_t rd(cpu_t *c, uint64_t a, int n) { return (uint32_t)mem_read_slow(c, a, n, ACC_SYS); }
static inline void wr(cpu_t *c, uint64_t a, int n, uint32_t v) { mem_write_slow(c, a, n, v, ACC_W | ACC_SYS); }

/* the busy bit (type bit 1) of a TSS descriptor in the GDT */
static void set_busy(cpu_t *c, uint16_t sel, int busy)
{
    uint64_t a = c->gdtr.base + (sel & 0xfff8) + 4;
    uint32_t hi = rd(c, a, 4);
    wr(c, a, 4, busy ? hi | 0x200 : hi & ~0x200u);
}

/* Qualify and load one segment register of the new task (SDM Vol 3A 7.3
 * step 13, Table 7-1): #TS(selector) for a selector outside its table or a
 * descriptor of the wrong type or privilege, #NP(selector) (#SS for SS) if
 * it is not present.  CS first: its RPL is the new CPL. */
static void task_seg(cpu_t *c, int s, uint16_t sel)
{
    uint16_t es = sel & 0xfffc;
    uint32_t lo, hi;
    if (!es) {
        if (s == S_CS || s == S_SS) raise_exc(c, EX_TS, 1, 0);
        load_seg(c, s, sel);
        return;
    }
    if (desc_read(c, sel, &lo, &hi) || !(hi & 0x1000)) raise_exc(c, EX_TS, 1, es);
    int dpl = (hi >> 13) & 3, rpl = sel & 3, code = !!(hi & 0x800), conf = code && (hi & 0x400);
    if (s == S_CS) {
        if (!code || (conf ? dpl > rpl : dpl != rpl)) raise_exc(c, EX_TS, 1, es);
    } else if (s == S_SS) {
        if (code || !(hi & 0x200) || rpl != c->cpl || dpl != c->cpl) raise_exc(c, EX_TS, 1, es);
    } else {
        if (code && !(hi & 0x200)) raise_exc(c, EX_TS, 1, es);                  /* execute-only */
        if (!conf && (dpl < c->cpl || dpl < rpl)) raise_exc(c, EX_TS, 1, es);
    }
    if (!(hi & 0x8000)) raise_exc(c, s == S_SS ? EX_SS : EX_NP, 1, es);
    load_seg(c, s, sel);
}

/* sel/lo/hi: the TSS descriptor or task gate named by JMP/CALL, the task
 * gate of the IDT (TS_INT) or the previous-task link (TS_IRET).  ret_eip is
 * saved as the outgoing task's EIP. */
void task_switch(cpu_t *c, uint16_t sel, uint32_t lo, uint32_t hi, int reason, uint64_t ret_eip)
{
    if (c->efer & EFER_LMA) raise_gp(c, 0);
    uint16_t tsel = sel;
    uint32_t tlo = lo, thi = hi;
    int gate = ((hi >> 8) & 0x1f) == 5;
    /* steps 1-2: the TSS selector, privilege of JMP/CALL (INT n: checked by the caller) */
    if (reason == TS_JMP || reason == TS_CALL) {
        int dpl = (hi >> 13) & 3;
        if (dpl < c->cpl || dpl < (sel & 3)) raise_gp(c, sel & 0xfffc);
        if (gate && !(hi & 0x8000)) raise_exc(c, EX_NP, 1, sel & 0xfffc);
    }
    if (gate) {
        tsel = (uint16_t)(lo >> 16);
        if ((tsel & 4) || desc_read(c, tsel, &tlo, &thi)) raise_gp(c, tsel & 0xfffc);
    } else if (sel & 4) {
        raise_gp(c, sel & 0xfffc);                  /* a TSS descriptor lives in the GDT */
    }
    uint16_t nes = tsel & 0xfffc;
    int ntype = (thi >> 8) & 0x1f;                  /* S bit included: must be 0 */
    /* steps 3-4: present, big enough, available (busy for IRET) */
    if (reason == TS_IRET) {
        if (ntype != 3 && ntype != 0xb) raise_exc(c, EX_TS, 1, nes);
    } else if (ntype != 1 && ntype != 9) raise_gp(c, nes);
    if (!(thi & 0x8000)) raise_exc(c, EX_NP, 1, nes);
    int n32 = ntype & 8;
    uint32_t nlimit = dlimit(tlo, thi);
    uint64_t nb = dbase(tlo, thi);
    if (nlimit < (n32 ? 0x67u : 0x2bu)) raise_exc(c, EX_TS, 1, nes);
    seg_t *tr = &c->seg[S_TR];
    uint16_t osel = tr->sel;
    uint64_t ob = tr->base;
    int o32 = (tr->access & 8) != 0;
    if (tr->limit < (o32 ? 0x5fu : 0x29u)) raise_exc(c, EX_TS, 1, osel & 0xfffc);
    if (c->rflags & F_VM) exit_unhandled(c);        /* virtual-8086 mode: not supported */

    /* step 5: read the new task's state before anything changes (a #PF on
     * the new TSS leaves the current task intact) */
    uint32_t ncr3 = 0, neip, nfl, nr[8];
    uint16_t nsr[6], nldt;
    if (n32) {
        ncr3 = rd(c, nb + 0x1c, 4);
        neip = rd(c, nb + 0x20, 4);
        nfl = rd(c, nb + 0x24, 4);
        for (int k = 0; k < 8; k++) nr[k] = rd(c, nb + 0x28 + 4 * k, 4);
        for (int k = 0; k < 6; k++) nsr[k] = (uint16_t)rd(c, nb + 0x48 + 4 * k, 2);
        nldt = (uint16_t)rd(c, nb + 0x60, 2);
    } else {
        neip = rd(c, nb + 0x0e, 2);
        nfl = rd(c, nb + 0x10, 2);
        for (int k = 0; k < 8; k++) nr[k] = rd(c, nb + 0x12 + 2 * k, 2);
        for (int k = 0; k < 4; k++) nsr[k] = (uint16_t)rd(c, nb + 0x22 + 2 * k, 2);
        nsr[S_FS] = nsr[S_GS] = 0;
        nldt = (uint16_t)rd(c, nb + 0x2a, 2);
    }

    /* steps 6-8: the outgoing task: busy bit, NT in its saved EFLAGS, its state */
    uint32_t ofl = (uint32_t)get_rflags(c);
    if (reason == TS_IRET) ofl &= ~F_NT;
    if (reason == TS_JMP || reason == TS_IRET) set_busy(c, osel, 0);
    if (o32) {
        wr(c, ob + 0x20, 4, (uint32_t)ret_eip);
        wr(c, ob + 0x24, 4, ofl);
        for (int k = 0; k < 8; k++) wr(c, ob + 0x28 + 4 * k, 4, (uint32_t)c->r[k]);
        for (int k = 0; k < 6; k++) wr(c, ob + 0x48 + 4 * k, 2, c->seg[k].sel);
    } else {
        wr(c, ob + 0x0e, 2, (uint16_t)ret_eip);
        wr(c, ob + 0x10, 2, (uint16_t)ofl);
        for (int k = 0; k < 8; k++) wr(c, ob + 0x12 + 2 * k, 2, (uint16_t)c->r[k]);
        for (int k = 0; k < 4; k++) wr(c, ob + 0x22 + 2 * k, 2, c->seg[k].sel);
    }
    /* steps 9-10: a nested task (CALL, INT) links back and runs with NT = 1 */
    if (reason == TS_CALL || reason == TS_INT) {
        wr(c, nb, 2, osel);
        nfl |= F_NT;
    }
    if (reason != TS_IRET) set_busy(c, tsel, 1);
    /* step 11: TR; CR0.TS (SDM 7.3: set on every task switch) */
    tr->sel = tsel; tr->base = nb; tr->limit = nlimit;
    tr->access = ((thi >> 8) & 0xf0ff) | 2;
    c->segbase[S_TR] = nb;
    c->cr0 |= CR0_TS;

    /* step 12: the new task's registers; from here on a fault belongs to
     * the new task (its EIP is the one reported) */
    if (n32 && (c->cr0 & CR0_PG)) {
        c->cr3 = ncr3 & ((c->cr4 & CR4_PAE) ? 0xffffffe0u : 0xfffff018u);
        if (c->cr4 & CR4_PAE) pdpte_load(c, 1);
        tlb_flush_nonglobal(c);
    }
    if (n32) set_rflags(c, nfl);
    else set_rflags(c, (get_rflags(c) & ~0xffffULL) | nfl);
    if (c->rflags & F_VM) exit_unhandled(c);
    for (int k = 0; k < 8; k++) {
        if (n32) c->r[k] = nr[k];
        else c->r[k] = (c->r[k] & ~0xffffULL) | nr[k];
    }
    c->rip = c->nrip = n32 ? neip : (uint16_t)neip;
    c->delivering = 0;
    for (int s = S_ES; s <= S_GS; s++) c->seg[s].sel = nsr[s];
    /* step 13: LDTR, then CS (the new CPL), SS, the data segments */
    if (nldt & 0xfffc) {
        uint32_t llo, lhi;
        if ((nldt & 4) || desc_read(c, nldt, &llo, &lhi) || ((lhi >> 8) & 0x1f) != 2)
            raise_exc(c, EX_TS, 1, nldt & 0xfffc);
        if (!(lhi & 0x8000)) raise_exc(c, EX_TS, 1, nldt & 0xfffc);
        c->seg[S_LDTR] = (seg_t){ dbase(llo, lhi), dlimit(llo, lhi), (lhi >> 8) & 0xf0ff, nldt };
        c->segbase[S_LDTR] = c->seg[S_LDTR].base;
    } else {
        c->seg[S_LDTR].sel = nldt;
        c->seg[S_LDTR].access = 0x10000;
    }
    task_seg(c, S_CS, nsr[S_CS]);
    task_seg(c, S_SS, nsr[S_SS]);
    task_seg(c, S_DS, nsr[S_DS]);
    task_seg(c, S_ES, nsr[S_ES]);
    task_seg(c, S_FS, nsr[S_FS]);
    task_seg(c, S_GS, nsr[S_GS]);
    update_mode(c);
    c->brk = 1;
}
