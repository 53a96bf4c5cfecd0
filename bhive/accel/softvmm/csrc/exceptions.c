/*
 * Exception and interrupt delivery through the IVT (real mode) or the IDT
 * (protected mode, IA-32e mode): SDM Vol 3A 6.12 (protected-mode gates,
 * stack switch through the TSS), 6.14 (64-bit IDT, IST, RSP alignment),
 * 6.15 (double-fault conditions, Table 6-5) and 20.1.4 (real mode).
 */
#include "mem.h"

NORETURN void raise_exc(cpu_t *c, int vec, int has_err, uint32_t err)
{
    c->exc_vec = vec;
    c->exc_has_err = (uint8_t)has_err;
    c->exc_err = err;
    longjmp(c->jb, AB_FAULT);
}

NORETURN void exit_unhandled(cpu_t *c)
{
    svm_exit_t *x = &c->exit;
    x->code = SVM_EXIT_UNHANDLED;
    x->rip = c->rip;
    x->inst_length = (c->nrip > c->rip && c->nrip - c->rip <= 15) ? (uint32_t)(c->nrip - c->rip) : 0;
    int n = fetch_insn_bytes(c, x->insn);
    x->insn_len = n;
    longjmp(c->jb, AB_EXIT);
}

static int contributory(int v) { return v == EX_DE || v == EX_TS || v == EX_NP || v == EX_SS || v == EX_GP; }

/* Called from the run loop after raise_exc().  Returns 0, or 1 for a triple fault. */
void deliver_pending_fault(cpu_t *c)
{
    int vec = c->exc_vec, has_err = c->exc_has_err;
    uint32_t err = c->exc_err;
    /* CR2 is loaded when the #PF is detected, also when it turns into #DF
     * (Linux's #DF handler reads CR2 to recognise a kernel stack overflow) */
    if (vec == EX_PF) c->cr2 = c->exc_cr2;
    if (c->delivering) {
        int prev = c->deliver_vec;
        c->delivering = 0;
        if (prev == EX_DF) {
            c->exit.code = SVM_EXIT_SUSPENDED;
            c->exit.how = 4;   /* TRIPLEFAULT */
            c->exit.rip = c->rip;
            c->exit_queued = 1;
            return;
        }
        if ((contributory(prev) && contributory(vec)) ||
            (prev == EX_PF && (contributory(vec) || vec == EX_PF))) {
            vec = EX_DF; has_err = 1; err = 0;
        }
    }
    c->exc_vec = -1;
    deliver_event(c, vec, EV_HWEXC, has_err, err, c->rip);
}

static inline void push_lin(cpu_t *c, uint64_t ss_base, uint64_t *sp, int ssz, int sz, uint64_t v)
{
    *sp = (*sp - sz) & szmask(ssz);
    mem_write_slow(c, ss_base + *sp, sz, v, ACC_W | ACC_SYS);
}

/* Legacy-mode delivery (SDM Vol 2A INT n): the whole frame of `room` bytes
 * below sp must lie within the stack segment (expand-up: at most its limit;
 * expand-down: above it), else #SS(err) before anything is pushed. */
static void frame_fits(cpu_t *c, uint64_t sp, int room, int ssz, uint32_t limit, uint32_t access, uint32_t err)
{
    uint64_t m = szmask(ssz), lo = (sp - room) & m, last = (sp - 1) & m;
    int bad;
    if ((access & 0x0c) == 0x04)
        bad = lo <= limit || last > ((access & 0x4000) ? 0xffffffffULL : 0xffffULL);
    else
        bad = last > limit || lo > limit;
    if (bad) raise_exc(c, EX_SS, 1, err);
}

static void clear_flags_on_delivery(cpu_t *c, int is_intr_gate)
{
    uint64_t f = get_rflags(c);
    f &= ~(uint64_t)(F_TF | F_NT | F_RF | F_VM);
    if (is_intr_gate) f &= ~(uint64_t)F_IF;
    set_rflags(c, f);
}

void deliver_event(cpu_t *c, int vec, int kind, int has_err, uint32_t err, uint64_t ret_rip)
{
    int prev_delivering = c->delivering;
    c->delivering = 1;
    /* only hardware exceptions take part in the #DF rules (SDM 6.15 Table 6-5);
     * interrupts, NMIs and INT n count as benign: 0xff is never contributory */
    c->deliver_vec = kind == EV_HWEXC ? (uint8_t)vec : 0xff;
    if (kind == EV_SWINT || kind == EV_SWEXC) c->sw_event = 1;
    c->halted = 0;
    int ext = (kind == EV_EXT || kind == EV_NMI || kind == EV_HWEXC) ? 1 : 0;
    if (!(c->cr0 & CR0_PE)) {
        /* real mode: IVT entry of 4 bytes (SDM 20.1.4) */
        if ((uint64_t)vec * 4 + 3 > c->idtr.limit) raise_gp(c, 0);
        uint32_t ent = (uint32_t)mem_read_slow(c, c->idtr.base + vec * 4, 4, ACC_SYS);
        uint64_t sp = sp_get(c), ssb = c->segbase[S_SS];
        push_lin(c, ssb, &sp, 2, 2, get_rflags(c));
        push_lin(c, ssb, &sp, 2, 2, c->seg[S_CS].sel);
        push_lin(c, ssb, &sp, 2, 2, ret_rip);
        sp_set(c, sp);
        uint64_t f = get_rflags(c) & ~(uint64_t)(F_IF | F_TF | F_AC);
        set_rflags(c, f);
        set_seg_real(c, S_CS, ent >> 16);
        c->rip = ent & 0xffff;
        c->delivering = prev_delivering && 0;
        c->brk = 1;
        return;
    }
    int long_idt = !!(c->efer & EFER_LMA);
    int esz = long_idt ? 16 : 8;
    uint32_t idt_err = vec * 8 + 2 + ext;
    if ((uint64_t)vec * esz + esz - 1 > c->idtr.limit) raise_gp(c, idt_err);
    uint64_t gaddr = c->idtr.base + (uint64_t)vec * esz;
    uint32_t lo = (uint32_t)mem_read_slow(c, gaddr, 4, ACC_SYS);
    uint32_t hi = (uint32_t)mem_read_slow(c, gaddr + 4, 4, ACC_SYS);
    uint64_t off = (lo & 0xffff) | (hi & 0xffff0000);
    if (long_idt) off |= (uint64_t)(uint32_t)mem_read_slow(c, gaddr + 8, 4, ACC_SYS) << 32;
    int type = (hi >> 8) & 0x1f;
    int gdpl = (hi >> 13) & 3;
    int is_intr = 0;
    int gate32 = 1, task = 0;
    if (long_idt) {
        if (type != 0xe && type != 0xf) raise_gp(c, idt_err);
        is_intr = type == 0xe;
    } else {
        switch (type) {
        case 0xe: is_intr = 1; break;
        case 0xf: is_intr = 0; break;
        case 0x6: is_intr = 1; gate32 = 0; break;
        case 0x7: is_intr = 0; gate32 = 0; break;
        case 0x5: task = 1; break;      /* task gate: a task switch (SDM Vol 3A 6.11, 7.3) */
        default: raise_gp(c, idt_err);
        }
    }
    if ((kind == EV_SWINT || kind == EV_SWEXC) && gdpl < c->cpl) raise_gp(c, vec * 8 + 2);
    if (!(hi & 0x8000)) raise_exc(c, EX_NP, 1, vec * 8 + 2 + ext);
    if (task) {
        /* the handler is a task: switch to the TSS the gate names, then push
         * the error code on the new task's stack (SDM Vol 3A 6.12.2) */
        task_switch(c, (uint16_t)(lo >> 16), lo, hi, TS_INT, ret_rip);
        if (has_err) {
            int esz = (c->seg[S_TR].access & 8) ? 4 : 2;
            uint64_t sp = sp_wrap(c, sp_get(c) - esz);
            st(c, S_SS, sp, esz, err);
            sp_set(c, sp);
        }
        if (kind == EV_NMI) c->nmi_blocked = 1;
        c->delivering = 0;
        c->brk = 1;
        return;
    }
    uint16_t sel = lo >> 16;
    if ((sel & ~3) == 0) raise_gp(c, ext);
    uint32_t dlo, dhi;
    if (desc_read(c, sel, &dlo, &dhi)) raise_gp(c, (sel & ~3) + ext);
    if ((dhi & 0x1800) != 0x1800) raise_gp(c, (sel & ~3) + ext);   /* must be code */
    if (long_idt && ((dhi & 0x600000) != 0x200000)) raise_gp(c, (sel & ~3) + ext);   /* 64-bit code (L=1, D=0) */
    if (!(dhi & 0x8000)) raise_exc(c, EX_NP, 1, (sel & ~3) + ext);
    int dpl = (dhi >> 13) & 3;
    int conforming = !!(dhi & 0x400);
    int ncpl = conforming ? c->cpl : dpl;
    if (dpl > c->cpl) raise_gp(c, (sel & ~3) + ext);
    uint64_t oflags = get_rflags(c);
    /* SDM Vol 3A 19.3.1.1 / 6.12.1: fault-class exceptions save EFLAGS with RF=1
     * so the faulting instruction restarts without re-triggering breakpoints */
    if (kind == EV_HWEXC && vec < 32 && ((1u << vec) & 0x000b7ce1u)) oflags |= F_RF;
    uint16_t oss = c->seg[S_SS].sel, ocs = c->seg[S_CS].sel;
    uint64_t orsp = c->r[R_RSP];
    if (long_idt) {
        /* 64-bit: always push SS:RSP; IST or RSPn from the 64-bit TSS */
        int ist = lo ? (hi & 7) : 0;
        ist = hi & 7;
        uint64_t rsp = orsp;
        uint64_t tss = c->seg[S_TR].base;
        if (ist) rsp = mem_read_slow(c, tss + 0x24 + 8 * (ist - 1), 8, ACC_SYS);
        else if (ncpl < c->cpl) rsp = mem_read_slow(c, tss + 4 + 8 * ncpl, 8, ACC_SYS);
        rsp &= ~15ULL;
        /* a non-canonical stack (from IST/RSPn or the current RSP) is #SS(EXT)
         * before anything is pushed (SDM Vol 2A INT n, IA-32e mode) */
        if ((uint64_t)(((int64_t)rsp << 16) >> 16) != rsp ||
            (uint64_t)(((int64_t)(rsp - 48) << 16) >> 16) != rsp - 48)
            raise_exc(c, EX_SS, 1, ext);
        uint64_t sp = rsp;
        push_lin(c, 0, &sp, 8, 8, oss);
        push_lin(c, 0, &sp, 8, 8, orsp);
        push_lin(c, 0, &sp, 8, 8, oflags);
        push_lin(c, 0, &sp, 8, 8, ocs);
        push_lin(c, 0, &sp, 8, 8, ret_rip);
        if (has_err) push_lin(c, 0, &sp, 8, 8, err);
        int outer = ncpl < c->cpl;
        load_seg(c, S_CS, (sel & ~3) | ncpl);
        if (outer) {
            c->seg[S_SS].sel = ncpl; c->seg[S_SS].base = 0; c->seg[S_SS].limit = 0;
            c->seg[S_SS].access = 0x10000 | ((uint32_t)ncpl << 5);
            update_mode(c);
        }
        c->r[R_RSP] = sp;
        clear_flags_on_delivery(c, is_intr);
        c->rip = off;
    } else {
        int psz = gate32 ? 4 : 2;
        uint64_t sp, ssb;
        int ssz;
        uint32_t climit = (dlo & 0xffff) | (dhi & 0xf0000);
        if (dhi & 0x800000) climit = (climit << 12) | 0xfff;
        if ((gate32 ? (uint32_t)off : (off & 0xffff)) > climit) raise_gp(c, ext);   /* handler beyond the CS limit */
        if (ncpl < c->cpl) {
            /* inner-privilege stack from the TSS (SDM 6.12.1, INT n
             * "INTER-PRIVILEGE-LEVEL-INTERRUPT"): SSn:ESPn of a 32-bit TSS,
             * SSn:SPn of a 16-bit one; #TS(TSS + EXT) beyond its limit */
            seg_t *tr = &c->seg[S_TR];
            int t32 = (tr->access & 0xf) == 9 || (tr->access & 0xf) == 0xb;
            uint32_t a = t32 ? 8u * ncpl + 4 : 4u * ncpl + 2;
            if (a + (t32 ? 5 : 3) > tr->limit) raise_exc(c, EX_TS, 1, (tr->sel & 0xfffc) + ext);
            uint32_t nesp = (uint32_t)mem_read_slow(c, tr->base + a, t32 ? 4 : 2, ACC_SYS);
            uint16_t nss = (uint16_t)mem_read_slow(c, tr->base + a + (t32 ? 4 : 2), 2, ACC_SYS);
            uint32_t slo, shi;
            new_stack_check(c, nss, ncpl, ext, &slo, &shi);
            ssb = (slo >> 16) | ((uint64_t)(shi & 0xff) << 16) | (shi & 0xff000000);
            ssz = (shi & 0x400000) ? 4 : 2;
            sp = nesp;
            uint32_t slim = (slo & 0xffff) | (shi & 0xf0000);
            if (shi & 0x800000) slim = (slim << 12) | 0xfff;
            frame_fits(c, sp, (has_err ? 6 : 5) * psz, ssz, slim, (shi >> 8) & 0xf0ff, (nss & 0xfffc) + ext);
            push_lin(c, ssb, &sp, ssz, psz, oss);
            push_lin(c, ssb, &sp, ssz, psz, orsp);
            push_lin(c, ssb, &sp, ssz, psz, oflags);
            push_lin(c, ssb, &sp, ssz, psz, ocs);
            push_lin(c, ssb, &sp, ssz, psz, ret_rip);
            if (has_err) push_lin(c, ssb, &sp, ssz, psz, err);
            load_seg(c, S_CS, (sel & ~3) | ncpl);
            load_seg(c, S_SS, (nss & ~3) | ncpl);
            sp_set(c, sp);
        } else {
            ssb = c->segbase[S_SS]; ssz = c->ssz; sp = sp_get(c);
            frame_fits(c, sp, (has_err ? 4 : 3) * psz, ssz, c->seg[S_SS].limit, c->seg[S_SS].access, ext);
            push_lin(c, ssb, &sp, ssz, psz, oflags);
            push_lin(c, ssb, &sp, ssz, psz, ocs);
            push_lin(c, ssb, &sp, ssz, psz, ret_rip);
            if (has_err) push_lin(c, ssb, &sp, ssz, psz, err);
            load_seg(c, S_CS, (sel & ~3) | ncpl);
            sp_set(c, sp);
        }
        clear_flags_on_delivery(c, is_intr);
        c->rip = gate32 ? (uint32_t)off : (off & 0xffff);
    }
    if (kind == EV_NMI) c->nmi_blocked = 1;
    c->delivering = 0;
    c->brk = 1;
}
