/*
 * MMU: linear -> guest-physical translation (2-level, PAE and 4-level
 * paging, SDM Vol 3A chapter 5), the software TLB, guest-physical ->
 * host mapping, MMIO / port I/O exits with KVM-style replay, and the
 * per-page code generation counters used for self-/cross-modifying code.
 */
#include "mem.h"

/* ---- guest-physical memory -------------------------------------------------- */
uint8_t *gpa_host(svm_vm_t *vm, uint64_t gpa, uint32_t *gidx)
{
    for (int k = 0; k < vm->nslots; k++) {
        uint64_t d = gpa - vm->slots[k].gpa;
        if (d < vm->slots[k].size) {
            uint64_t off = vm->slots[k].off + d;
            if (gidx) *gidx = (uint32_t)(off >> 12);
            return vm->ram + off;
        }
    }
    return NULL;
}

void code_written(cpu_t *c, uint32_t gidx)
{
    uint32_t *g = &c->vm->gen[gidx];
    uint32_t v = __atomic_load_n(g, __ATOMIC_RELAXED);
    while (v & 1) {
        /* every vCPU checks a block's generation before it enters the block
         * through a chain link or a jump cache, so the others see the new
         * code at their next entry into it (SDM Vol 3A 9.1.3) */
        if (__atomic_compare_exchange_n(g, &v, v + 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) break;
    }
    c->brk = 1;   /* the running block may have been modified: re-validate */
}

/* ---- TLB ----------------------------------------------------------------------
 * Direct-mapped, one entry per 4K linear page, tagged for the current CPL.
 * Each entry keeps the CPL-independent rights of its walk (TP_*), whether
 * it is global and the size of the translation it came from, so that
 * (SDM Vol 3A 4.10.4.1):
 *   INVLPG      drops every entry of the page (global or not; all 4K slices
 *               of a large page),
 *   MOV CR3     drops the non-global entries,
 *   CR4.PGE/PAE/PSE changes, CR0.PG changes, EFER.NXE changes: everything,
 *   CPL / CR0.WP changes only re-derive the fast-path tags (no flush). */
static inline void tlbe_kill(cpu_t *c, tlbe_t *e)
{
    e->tag_r = e->tag_w = e->tag_x = TLB_INVALID;
    e->page = TLB_INVALID;
    e->glob = 0;
    jtlbe_t *j = &c->jtlb[e - c->tlb];
    j->jtag_r = j->jtag_w = JTAG_INVALID;
}
/* ---- code mappings across TLB flushes ------------------------------------------
 * Chained blocks and the jump caches assume the linear -> physical mapping
 * of the code pages looked up in the current epoch.  Every flush used to
 * end the epoch; a Linux boot flushes tens of thousands of times (MOV CR3,
 * CR4.PGE toggles, INVLPG) without ever moving its text.  So the pages are
 * remembered (one slot each, by hash) and a flush ends the epoch only when
 * one of them no longer maps where it did, or executes at all, or the set
 * overflowed. */
static inline struct code_page *code_page_slot(cpu_t *c, uint64_t lin)
{
    uint64_t p = lin >> 12;
    return &c->code_pages[(p ^ (p >> 8) ^ (p >> 16)) & (CODE_PAGES - 1)];
}
void note_code_page(cpu_t *c, uint64_t lin, uint64_t gpa)
{
    struct code_page *s = code_page_slot(c, lin);
    lin &= ~0xfffULL;
    if ((s->epoch == c->epoch || s->epoch == c->epoch_other) && (s->lin != lin || s->user != (c->cpl == 3))) {
        c->code_pages_overflow = c->epoch;
        return;
    }
    s->lin = lin; s->gpa = gpa & ~0xfffULL; s->epoch = c->epoch; s->user = c->cpl == 3;
}
static int translate_ex(cpu_t *c, uint64_t lin, int acc, uint64_t *gpa, int *perm, int *pinfo, int fault);
/* every code page of the epoch still translates, for execution at this
 * CPL, to the page it was decoded from */
static int code_mappings_unchanged(cpu_t *c)
{
    if (c->code_pages_overflow == c->epoch || c->code_pages_overflow == c->epoch_other) return 0;
    for (int k = 0; k < CODE_PAGES; k++) {
        struct code_page *s = &c->code_pages[k];
        if (s->epoch != c->epoch && s->epoch != c->epoch_other) continue;
        uint64_t gpa; int perm, pinfo;
        if (translate_ex(c, s->lin, ACC_X | (s->user ? ACC_U : 0), &gpa, &perm, &pinfo, 0) != 0 ||
            (gpa & ~0xfffULL) != s->gpa)
            return 0;
    }
    return 1;
}

void tlb_flush(cpu_t *c)
{
    for (int k = 0; k < TLB_SIZE; k++) tlbe_kill(c, &c->tlb[k]);
    if (!code_mappings_unchanged(c)) epoch_bump(c);
}
void tlb_flush_nonglobal(cpu_t *c)
{
    /* Chained blocks and the jump caches hold linear -> physical code
     * mappings.  Global translations survive MOV CR3 (SDM 4.10.4.1), so
     * while all the code looked up in this epoch is on global pages (a
     * kernel's text), they stay valid and only data entries go. */
    for (int k = 0; k < TLB_SIZE; k++)
        if (!c->tlb[k].glob) tlbe_kill(c, &c->tlb[k]);
    if ((c->code_local_epoch == c->epoch || c->code_local_epoch == c->epoch_other) && !code_mappings_unchanged(c))
        epoch_bump(c);
}
void tlb_flush_page(cpu_t *c, uint64_t lin)
{
    for (int k = 0; k < TLB_SIZE; k++) {
        tlbe_t *e = &c->tlb[k];
        if (e->page == TLB_INVALID) continue;
        uint64_t m = ~((1ULL << e->pshift) - 1);
        if ((e->page & m) == (lin & m)) tlbe_kill(c, e);
    }
    if (!code_mappings_unchanged(c)) epoch_bump(c);
}
static inline void tlbe_tags(cpu_t *c, tlbe_t *e)
{
    uint64_t page = e->page;
    int p = e->perm, user = c->cpl == 3, wp = !!(c->cr0 & CR0_WP);
    int r, w, x;
    if (user) { r = !!(p & TP_U); w = r && (p & TP_W); x = r && !(p & TP_NX); }
    else {
        r = 1; w = (p & TP_W) || !wp; x = !(p & TP_NX);
        if (unlikely((p & TP_U) && (c->cr4 & (CR4_SMEP | CR4_SMAP)))) {
            /* SDM 4.6.1: SMEP, no supervisor fetches from user pages; SMAP, no
             * supervisor data accesses to them unless EFLAGS.AC = 1 (the slot
             * is remembered so that clearing AC closes it again, set_rflags) */
            if (c->cr4 & CR4_SMEP) x = 0;
            if (c->cr4 & CR4_SMAP) {
                if (!(c->rflags & F_AC)) r = w = 0;
                else if (c->smap_n < SMAP_SLOTS) c->smap_slot[c->smap_n++] = (uint16_t)(e - c->tlb);
                else c->smap_n = SMAP_SLOTS + 1;
            }
        }
    }
    if (user && ac_active(c)) r = w = 0;   /* alignment checks happen on the slow path */
    if (unlikely(c->dbg_data)) {           /* data breakpoints are checked on the slow path */
        int m = dbg_page_watched(c, page);
        if (m & 1) r = 0;
        if (m & 2) w = 0;
    }
    e->tag_r = r ? page : TLB_INVALID;
    e->tag_w = (w && (p & TP_D)) ? page : TLB_INVALID;   /* clean pages: slow path sets D */
    e->tag_x = x ? page : TLB_INVALID;
    jtlbe_t *j = &c->jtlb[e - c->tlb];
    j->jtag_r = e->tag_r == TLB_INVALID ? JTAG_INVALID : -(int64_t)(e->tag_r >> 12);
    j->jtag_w = e->tag_w == TLB_INVALID ? JTAG_INVALID : -(int64_t)(e->tag_w >> 12);
    j->addend = e->addend;
    j->genp = &c->vm->gen[e->gidx];
}
void tlb_retag_cpl(cpu_t *c)
{
    c->smap_n = 0;
    for (int k = 0; k < TLB_SIZE; k++)
        if (c->tlb[k].page != TLB_INVALID) tlbe_tags(c, &c->tlb[k]);
}
/* EFLAGS.AC cleared at CPL < 3 under CR4.SMAP: close the slots AC opened */
void tlb_smap_close(cpu_t *c)
{
    if (c->smap_n > SMAP_SLOTS) { tlb_retag_cpl(c); return; }
    int n = c->smap_n;
    c->smap_n = 0;
    for (int k = 0; k < n; k++) {
        tlbe_t *e = &c->tlb[c->smap_slot[k]];
        if (e->page != TLB_INVALID) tlbe_tags(c, e);
    }
}
void tlb_retag(cpu_t *c)
{
    c->smap_n = 0;
    epoch_bump(c);
    for (int k = 0; k < TLB_SIZE; k++)
        if (c->tlb[k].page != TLB_INVALID) tlbe_tags(c, &c->tlb[k]);
}

static inline int apic_page(cpu_t *c, uint64_t gpa)
{
    uint64_t b = c->lapic->apic_base;
    return (b & 0x800) && (gpa & ~0xfffULL) == (b & 0xffffff000ULL);
}

/* ---- page walk ---------------------------------------------------------------- */
#define PTE_P 1ULL
#define PTE_W 2ULL
#define PTE_U 4ULL
#define PTE_A 0x20ULL
#define PTE_D 0x40ULL
#define PTE_PS 0x80ULL
#define PTE_G 0x100ULL
#define PTE_NX (1ULL << 63)
#define PTE_ADDR 0x000ffffffffff000ULL
/* MAXPHYADDR = 40 (CPUID 0x80000008): bits 51:40 of every entry are reserved */
#define MAXPHY 40
#define RSV_HI (((1ULL << 52) - 1) & ~((1ULL << MAXPHY) - 1))

static NORETURN void page_fault(cpu_t *c, uint64_t lin, int acc, int present, int rsvd)
{
    /* SDM 4.7: I/D is reported only when NX is in force (PAE/4-level with EFER.NXE) or SMEP */
    int nx_on = ((c->efer & EFER_NXE) && (c->cr4 & CR4_PAE)) || (c->cr4 & CR4_SMEP);
    uint32_t err = (present ? 1 : 0) | ((acc & ACC_W) ? 2 : 0) | ((acc & ACC_U) ? 4 : 0) |
                   (rsvd ? 8 : 0) | (((acc & ACC_X) && nx_on) ? 16 : 0);
    c->exc_cr2 = lin;
    raise_exc(c, EX_PF, 1, err);
}

static inline uint64_t pte_load(cpu_t *c, uint64_t gpa, uint64_t **hp, int wide)
{
    uint8_t *h = gpa_host(c->vm, gpa, NULL);
    if (!h) { *hp = NULL; return 0; }   /* page tables in MMIO: treat as not present */
    *hp = (uint64_t *)h;
    return wide ? *(volatile uint64_t *)h : *(volatile uint32_t *)h;
}
static inline void pte_set_bits(uint64_t *hp, uint64_t bits, int wide)
{
    /* locked OR on the shared RAM: another vCPU process may be updating the
     * same entry (SDM 4.8: A/D updates are atomic with respect to other agents) */
    if (wide) __atomic_fetch_or(hp, bits, __ATOMIC_SEQ_CST);
    else __atomic_fetch_or((uint32_t *)hp, (uint32_t)bits, __ATOMIC_SEQ_CST);
}

/* PAE paging: the four PDPTEs are loaded into internal registers when CR3
 * is loaded (and on MOV CR0/CR4 that enable PAE paging), not on every walk
 * (SDM 4.4.1); a reserved bit set in a present PDPTE is #GP(0) on the load. */
int pdpte_load(cpu_t *c, int fault)
{
    uint64_t base = c->cr3 & 0xffffffe0ULL;
    uint64_t v[4];
    for (int k = 0; k < 4; k++) {
        uint8_t *h = gpa_host(c->vm, base + 8 * k, NULL);
        v[k] = h ? *(volatile uint64_t *)h : 0;
        if ((v[k] & PTE_P) && (v[k] & (RSV_HI | 0xfff00000000001e6ULL))) {
            if (fault) raise_gp(c, 0);
            return -1;
        }
    }
    for (int k = 0; k < 4; k++) c->pdpte[k] = v[k];
    c->pdpte_valid = 1;
    return 0;
}

/* Translate; on success returns 0, the TP_* rights of the walk in *perm and
 * the page size / global bit in *pinfo (bits 0-7 shift, bit 8 global).
 * On failure raises #PF (fault=1) or returns -1 (fault=0).
 * Checks follow SDM 4.6 (access rights) and 4.7 (error codes). */
static int translate_ex(cpu_t *c, uint64_t lin, int acc, uint64_t *gpa, int *perm, int *pinfo, int fault)
{
    int user = (acc & ACC_U) != 0;
    if (!(c->cr0 & CR0_PG)) {
        *gpa = (c->efer & EFER_LMA) ? lin : (uint32_t)lin;
        *perm = TP_W | TP_U | TP_D;
        *pinfo = 12;
        return 0;
    }
    int nxe = !!(c->efer & EFER_NXE);
    uint64_t nxrsv = nxe ? 0 : PTE_NX;
    uint64_t e = 0, *hp[5];
    int levels, wide, lvl;
    uint64_t table;
    int allow_w = 1, allow_u = 1, nx = 0;
    int shift = 12;
    if (c->efer & EFER_LMA) {
        if ((uint64_t)(((int64_t)lin << 16) >> 16) != lin) {
            /* SDM Vol 3A 6.15 (interrupts 12, 13) and Vol 1 3.3.7.1: a
             * non-canonical address is #SS(0) when it references SS (stack
             * operations, RSP/RBP-based or SS-override operands), else #GP(0) */
            if (!fault) return -1;
            int ss = (acc & ACC_SS) || ((acc & ACC_SEGQ) && insn_mem_seg(c) == S_SS);
            raise_exc(c, ss ? EX_SS : EX_GP, 1, 0);
        }
        levels = 4; wide = 1; table = c->cr3 & PTE_ADDR;
    } else if (c->cr4 & CR4_PAE) {
        if (!c->pdpte_valid && pdpte_load(c, 0)) goto rsvd_top;
        e = c->pdpte[(lin >> 30) & 3];
        if (!(e & PTE_P)) goto notpresent;
        levels = 2; wide = 1; table = e & PTE_ADDR;
    } else {
        levels = 2; wide = 0; table = c->cr3 & 0xfffff000ULL;
    }
    int n = 0;
    for (lvl = levels; lvl >= 1; lvl--) {
        shift = wide ? 12 + 9 * (lvl - 1) : 12 + 10 * (lvl - 1);
        uint64_t idx = (lin >> shift) & (wide ? 511 : 1023);
        e = pte_load(c, table + idx * (wide ? 8 : 4), &hp[n], wide);
        if (!hp[n] || !(e & PTE_P)) goto notpresent;
        int leaf = lvl == 1 || ((e & PTE_PS) && (wide || (c->cr4 & CR4_PSE)));
        /* reserved bits (SDM 4.3 / 4.4.2 / 4.5.4 tables) */
        if (wide) {
            uint64_t rsv = RSV_HI | nxrsv;
            if (lvl == 4) rsv |= PTE_PS;
            else if (lvl == 3 && !vm_feat(c->vm, FW_X1D, 26)) rsv |= PTE_PS;   /* 1G pages: CPUID.80000001H:EDX.Page1GB */
            else if (leaf && lvl == 3) rsv |= 0x3fffe000ULL;   /* 1G page: address bits 29:13 */
            else if (leaf && lvl == 2) rsv |= 0x1fe000ULL;     /* 2M page: address bits 20:13 */
            if (e & rsv) goto rsvd;
        } else if (leaf && lvl == 2) {
            if (e & (1ULL << (13 + MAXPHY - 32))) goto rsvd;    /* 4M page: bit 21 (PSE-36, MAXPHYADDR 40) */
        }
        if (!(e & PTE_W)) allow_w = 0;
        if (!(e & PTE_U)) allow_u = 0;
        if (nxe && (e & PTE_NX)) nx = 1;
        n++;
        if (leaf) break;
        table = e & (wide ? PTE_ADDR : 0xfffff000ULL);
    }
    /* permission checks (SDM 4.6) */
    int wp = !!(c->cr0 & CR0_WP);
    if (user && !allow_u) goto prot;
    if (!user && allow_u && unlikely(c->cr4 & (CR4_SMEP | CR4_SMAP))) {
        /* SMEP / SMAP (SDM 4.6.1); implicit supervisor accesses (ACC_SYS)
         * to user pages are refused whatever EFLAGS.AC says */
        if (acc & ACC_X) { if (c->cr4 & CR4_SMEP) goto prot; }
        else if ((c->cr4 & CR4_SMAP) && ((acc & ACC_SYS) || !(c->rflags & F_AC))) goto prot;
    }
    if ((acc & ACC_W) && !allow_w && (user || wp)) goto prot;
    if ((acc & ACC_X) && nx) goto prot;
    /* accessed / dirty bits: A at every level, D in the leaf on a write */
    for (int k = 0; k < n; k++) {
        uint64_t v = wide ? *(volatile uint64_t *)hp[k] : *(volatile uint32_t *)hp[k];
        uint64_t bits = PTE_A;
        if (k == n - 1 && (acc & ACC_W)) bits |= PTE_D;
        if ((v & bits) != bits) pte_set_bits(hp[k], bits, wide);
    }
    uint64_t base, psz = 1ULL << shift;
    if (shift == 12) base = e & (wide ? PTE_ADDR : 0xfffff000ULL);
    else if (!wide) base = (e & 0xffc00000ULL) | ((e & 0x1fe000ULL) << 19);   /* PSE-36 bits */
    else base = e & PTE_ADDR & ~(psz - 1);
    *gpa = base + (lin & (psz - 1));
    int p = 0;
    if (allow_w) p |= TP_W;
    if (allow_u) p |= TP_U;
    if (nx) p |= TP_NX;
    if ((e & PTE_D) || (acc & ACC_W)) p |= TP_D;
    *perm = p;
    *pinfo = shift | (((e & PTE_G) && (c->cr4 & CR4_PGE)) ? 0x100 : 0);
    return 0;
notpresent:
    if (!fault) return -1;
    page_fault(c, lin, acc, 0, 0);
rsvd_top:
    if (!fault) return -1;
    raise_gp(c, 0);
rsvd:
    if (!fault) return -1;
    page_fault(c, lin, acc, 1, 1);
prot:
    if (!fault) return -1;
    page_fault(c, lin, acc, 1, 0);
}

/* translate(): *perm = TP_* | page shift << 8 | global << 16 */
static inline int translate(cpu_t *c, uint64_t lin, int acc, uint64_t *gpa, int *perm, int fault)
{
    int pinfo;
    int r = translate_ex(c, lin, acc, gpa, perm, &pinfo, fault);
    if (!r) *perm |= pinfo << 8;
    return r;
}

static void tlb_fill(cpu_t *c, uint64_t lin, uint64_t gpa, uint8_t *host, uint32_t gidx, int perm)
{
    tlbe_t *e = &c->tlb[tlb_slot(lin)];
    uint64_t page = lin & ~0xfffULL;
    e->addend = (uintptr_t)(host - (gpa & 0xfff)) - (uintptr_t)page;
    e->gpa = gpa & ~0xfffULL;
    e->gidx = gidx;
    e->page = page;
    e->perm = (uint16_t)(perm & 0xff);
    e->pshift = (uint8_t)((perm >> 8) & 0xff);
    e->glob = (uint8_t)((perm >> 16) & 1);
    tlbe_tags(c, e);
}

/* Up to 15 bytes of the instruction at RIP, best effort (no faults):
 * for exit reports and cold paths that must look at the instruction again. */
int fetch_insn_bytes(cpu_t *c, uint8_t *buf)
{
    uint64_t lin = c->segbase[S_CS] + c->rip;
    if (!c->long64) lin = (uint32_t)lin;
    int n = 0;
    for (; n < 15; n++) {
        uint64_t gpa;
        if (fetch_translate(c, lin + n, &gpa, 0)) break;
        uint8_t *h = gpa_host(c->vm, gpa, NULL);
        if (!h) break;
        buf[n] = *h;
    }
    return n;
}

int fetch_translate(cpu_t *c, uint64_t lin, uint64_t *gpa, int fault)
{
    int perm;
    int acc = ACC_X | user_acc(c);
    if (translate(c, lin, acc, gpa, &perm, fault)) return -1;
    uint32_t gidx;
    uint8_t *h = gpa_host(c->vm, *gpa, &gidx);
    if (h) tlb_fill(c, lin, *gpa, h, gidx, perm);
    return 0;
}

/* ---- port and MMIO accesses with replay -------------------------------------- */
static void io_log_access(cpu_t *c, uint64_t addr, int size, int is_write, int is_pio, uint64_t *val)
{
    if (c->io_pos < c->io_n) {
        ioent_t *e = &c->io[c->io_pos++];
        if (!is_write) *val = e->val;
        return;
    }
    if (c->io_n >= IOLOG_MAX) exit_unhandled(c);
    ioent_t *e = &c->io[c->io_n];
    e->addr = addr; e->size = size; e->is_write = is_write; e->is_pio = is_pio;
    e->val = is_write ? *val : 0;
    svm_exit_t *x = &c->exit;
    x->code = is_pio ? SVM_EXIT_INOUT : SVM_EXIT_INST_EMUL;
    x->rip = c->rip;
    x->inst_length = (c->nrip > c->rip && c->nrip - c->rip <= 15) ? (uint32_t)(c->nrip - c->rip) : 0;
    x->size = size;
    if (is_pio) { x->port = (uint32_t)addr; x->is_in = !is_write; x->is_write = is_write; }
    else { x->gpa = addr; x->is_write = is_write; x->is_in = 0; }
    x->data = is_write ? (*val & szmask(size)) : 0;
    longjmp(c->jb, AB_EXIT);
}

/* I/O permission (SDM Vol 1 19.5): with CR0.PE and CPL > IOPL (or in
 * virtual-8086 mode) every port of the access needs a clear bit in the
 * TSS I/O bitmap; a bitmap beyond the TSS limit means "denied". */
void io_check(cpu_t *c, uint16_t port, int size)
{
    if (!(c->cr0 & CR0_PE)) return;
    int iopl = (c->rflags >> 12) & 3;
    if (!(c->rflags & F_VM) && c->cpl <= iopl) return;
    seg_t *tr = &c->seg[S_TR];
    int type = tr->access & 0xf;
    if ((tr->access & 0x10000) || (type != 9 && type != 0xb) || tr->limit < 0x67) raise_gp(c, 0);
    uint32_t iomap = (uint32_t)mem_read_slow(c, tr->base + 0x66, 2, ACC_SYS);
    uint32_t off = iomap + port / 8;
    if (off + 1 > tr->limit) raise_gp(c, 0);
    uint32_t bits = (uint32_t)mem_read_slow(c, tr->base + off, 2, ACC_SYS);
    if ((bits >> (port & 7)) & ((1u << size) - 1)) raise_gp(c, 0);
}

int pio_access(cpu_t *c, uint16_t port, int size, int is_write, uint64_t *val)
{
    io_check(c, port, size);
    if (unlikely(c->dbg_io)) dbg_io_access(c, port, size);
    if (c->port_lane && c->port_lane[port] && pio_lane_try(c, port, size, is_write, val)) return 0;
    io_log_access(c, port, size, is_write, 1, val);
    if (!is_write) *val &= szmask(size);
    return 0;
}

static uint64_t phys_read(cpu_t *c, uint64_t lin, uint64_t gpa, int size, int perm, int acc)
{
    uint32_t gidx;
    uint8_t *h = gpa_host(c->vm, gpa, &gidx);
    if (h) {
        if (!(acc & ACC_SYS)) tlb_fill(c, lin, gpa, h - (gpa & 0xfff) + (gpa & 0xfff), gidx, perm);
        return host_ld(h, size);
    }
    if (apic_page(c, gpa)) {
        uint32_t off = gpa & 0xfff;
        uint64_t v = lapic_mmio_read(c, off & ~3u) >> ((off & 3) * 8);
        return v & szmask(size);
    }
    uint64_t v = 0;
    io_log_access(c, gpa, size, 0, 0, &v);
    return v & szmask(size);
}

static void phys_write(cpu_t *c, uint64_t lin, uint64_t gpa, int size, uint64_t v, int perm, int acc)
{
    uint32_t gidx;
    uint8_t *h = gpa_host(c->vm, gpa, &gidx);
    if (h) {
        if (!(acc & ACC_SYS)) tlb_fill(c, lin, gpa, h, gidx, perm);
        host_st(h, size, v);
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        if (__atomic_load_n(&c->vm->gen[gidx], __ATOMIC_RELAXED) & 1) code_written(c, gidx);
        return;
    }
    if (apic_page(c, gpa)) {
        if ((gpa & 3) == 0 && size >= 4) lapic_mmio_write(c, gpa & 0xfff, (uint32_t)v);
        return;
    }
    io_log_access(c, gpa, size, 1, 0, &v);
}

/* #AC (SDM Vol 3A 6.15 interrupt 17): CR0.AM, EFLAGS.AC, CPL 3, misaligned
 * data access; implicit supervisor accesses are never checked */
static inline void align_check(cpu_t *c, uint64_t lin, int size, int acc)
{
    if (unlikely(ac_active(c)) && !(acc & ACC_SYS) && size > 1 && (lin & (size - 1)))
        raise_exc(c, EX_AC, 1, 0);
}

uint64_t mem_read_slow(cpu_t *c, uint64_t lin, int size, int acc)
{
    align_check(c, lin, size, acc);
    if (unlikely(c->dbg_data)) dbg_data_access(c, lin, size, 0);
    if (acc & ACC_SYS) acc &= ~ACC_U;
    if (!c->long64) lin = (uint32_t)lin;
    uint64_t gpa; int perm;
    if ((lin & 0xfff) + size > 0x1000) {
        /* crosses a page: translate both halves before touching anything */
        int n1 = 0x1000 - (lin & 0xfff);
        uint64_t gpa2; int perm2;
        translate(c, lin, acc, &gpa, &perm, 1);
        translate(c, lin + n1, acc, &gpa2, &perm2, 1);
        uint64_t v = 0;
        for (int k = 0; k < size; k++) {
            uint64_t g = k < n1 ? gpa + k : gpa2 + (k - n1);
            v |= phys_read(c, lin + k, g, 1, k < n1 ? perm : perm2, acc | ACC_SYS) << (8 * k);
        }
        return v;
    }
    translate(c, lin, acc, &gpa, &perm, 1);
    return phys_read(c, lin, gpa, size, perm, acc);
}

void mem_write_slow(cpu_t *c, uint64_t lin, int size, uint64_t v, int acc)
{
    align_check(c, lin, size, acc);
    if (unlikely(c->dbg_data)) dbg_data_access(c, lin, size, 1);
    if (acc & ACC_SYS) acc &= ~ACC_U;
    if (!c->long64) lin = (uint32_t)lin;
    uint64_t gpa; int perm;
    if ((lin & 0xfff) + size > 0x1000) {
        int n1 = 0x1000 - (lin & 0xfff);
        uint64_t gpa2; int perm2;
        translate(c, lin, acc, &gpa, &perm, 1);
        translate(c, lin + n1, acc, &gpa2, &perm2, 1);
        for (int k = 0; k < size; k++) {
            uint64_t g = k < n1 ? gpa + k : gpa2 + (k - n1);
            phys_write(c, lin + k, g, 1, v >> (8 * k), k < n1 ? perm : perm2, acc | ACC_SYS);
        }
        return;
    }
    translate(c, lin, acc, &gpa, &perm, 1);
    phys_write(c, lin, gpa, size, v, perm, acc);
}

void *mem_host_rmw(cpu_t *c, uint64_t lin, int size)
{
    if (!c->long64) lin = (uint32_t)lin;
    int acc = ACC_W | user_acc(c);
    align_check(c, lin, size, acc);
    if (unlikely(c->dbg_data)) dbg_data_access(c, lin, size, 1);
    if ((lin & 0xfff) + size > 0x1000) return NULL;   /* split lock: non-atomic fallback */
    uint64_t gpa; int perm;
    translate(c, lin, acc, &gpa, &perm, 1);
    uint32_t gidx;
    uint8_t *h = gpa_host(c->vm, gpa, &gidx);
    if (!h) return NULL;
    tlb_fill(c, lin, gpa, h, gidx, perm | TP_D);
    if (__atomic_load_n(&c->vm->gen[gidx], __ATOMIC_RELAXED) & 1) code_written(c, gidx);
    return h;
}
