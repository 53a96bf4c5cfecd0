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
        if (__atomic_compare_exchange_n(g, &v, v + 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
            /* tell every vCPU to re-validate its chained blocks (SDM Vol 3A 9.1.3:
             * cross-modifying code is observed by the other processors at the
             * latest at their next block lookup) */
            __atomic_fetch_add(c->vm->code_epoch, 1, __ATOMIC_SEQ_CST);
            break;
        }
    }
    c->brk = 1;   /* the running block may have been modified: re-validate */
}

/* ---- TLB ---------------------------------------------------------------------- */
void tlb_flush(cpu_t *c)
{
    c->epoch++;
    for (int k = 0; k < TLB_SIZE; k++) {
        c->tlb[k].tag_r = c->tlb[k].tag_w = c->tlb[k].tag_x = TLB_INVALID;
    }
}
void tlb_flush_page(cpu_t *c, uint64_t lin)
{
    /* large pages may cover many entries: flush everything for now */
    (void)lin;
    tlb_flush(c);
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
#define PTE_NX (1ULL << 63)
#define PTE_ADDR 0x000ffffffffff000ULL

static NORETURN void page_fault(cpu_t *c, uint64_t lin, int acc, int present, int rsvd)
{
    uint32_t err = (present ? 1 : 0) | ((acc & ACC_W) ? 2 : 0) | ((acc & ACC_U) ? 4 : 0) |
                   (rsvd ? 8 : 0) | (((acc & ACC_X) && (c->efer & EFER_NXE)) ? 16 : 0);
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
    if (wide) __atomic_fetch_or(hp, bits, __ATOMIC_SEQ_CST);
    else __atomic_fetch_or((uint32_t *)hp, (uint32_t)bits, __ATOMIC_SEQ_CST);
}

/* Translate; on success returns 0 and the permissions this CPL has on
 * the page in *perm (ACC_W allowed, ACC_X allowed, bit 8 = dirty already).
 * On failure raises #PF (fault=1) or returns -1 (fault=0). */
static int translate(cpu_t *c, uint64_t lin, int acc, uint64_t *gpa, int *perm, int fault)
{
    int user = (acc & ACC_U) != 0;
    if (!(c->cr0 & CR0_PG)) {
        *gpa = (c->efer & EFER_LMA) ? lin : (uint32_t)lin;
        *perm = ACC_W | ACC_X | 0x100;
        return 0;
    }
    int nxe = !!(c->efer & EFER_NXE);
    uint64_t e = 0, *hp[5];
    int levels, wide, lvl;
    uint64_t table;
    int allow_w = 1, allow_u = 1, nx = 0;
    uint64_t pagesize = 4096;
    if (c->efer & EFER_LMA) {
        if ((uint64_t)(((int64_t)lin << 16) >> 16) != lin) {
            if (!fault) return -1;
            raise_gp(c, 0);
        }
        levels = 4; wide = 1; table = c->cr3 & PTE_ADDR;
    } else if (c->cr4 & CR4_PAE) {
        /* PDPTE (SDM 5.4.1); read at walk time instead of cached at CR3 load */
        uint64_t *h;
        e = pte_load(c, (c->cr3 & 0xffffffe0ULL) + ((lin >> 30) & 3) * 8, &h, 1);
        if (!(e & PTE_P)) goto notpresent;
        levels = 2; wide = 1; table = e & PTE_ADDR;
    } else {
        levels = 2; wide = 0; table = c->cr3 & 0xfffff000ULL;
    }
    int n = 0;
    for (lvl = levels; lvl >= 1; lvl--) {
        int shift = wide ? 12 + 9 * (lvl - 1) : 12 + 10 * (lvl - 1);
        uint64_t idx = (lin >> shift) & (wide ? 511 : 1023);
        e = pte_load(c, table + idx * (wide ? 8 : 4), &hp[n], wide);
        if (!hp[n] || !(e & PTE_P)) goto notpresent;
        if (!(e & PTE_W)) allow_w = 0;
        if (!(e & PTE_U)) allow_u = 0;
        if (nxe && (e & PTE_NX)) nx = 1;
        n++;
        if (lvl > 1 && (e & PTE_PS)) {
            if (lvl == 4 || (lvl == 3 && !wide)) goto rsvd;
            if (!wide && !(c->cr4 & CR4_PSE)) { table = e & 0xfffff000ULL; continue; }
            pagesize = 1ULL << shift;
            break;
        }
        table = e & (wide ? PTE_ADDR : 0xfffff000ULL);
    }
    if (lvl < 1) lvl = 1;
    /* permission checks (SDM 5.6) */
    int wp = !!(c->cr0 & CR0_WP);
    if (user && !allow_u) goto prot;
    if ((acc & ACC_W) && !allow_w && (user || wp)) goto prot;
    if ((acc & ACC_X) && nx) goto prot;
    /* accessed / dirty bits */
    for (int k = 0; k < n; k++) {
        uint64_t v = wide ? *(volatile uint64_t *)hp[k] : *(volatile uint32_t *)hp[k];
        uint64_t bits = PTE_A;
        if (k == n - 1 && (acc & ACC_W)) bits |= PTE_D;
        if ((v & bits) != bits) pte_set_bits(hp[k], bits, wide);
    }
    uint64_t base;
    if (pagesize == 4096) base = e & (wide ? PTE_ADDR : 0xfffff000ULL);
    else if (!wide) base = (e & 0xffc00000ULL) | ((e & 0x1fe000ULL) << 19);   /* PSE-36 bits */
    else base = e & PTE_ADDR & ~(pagesize - 1);
    *gpa = base + (lin & (pagesize - 1));
    int p = 0;
    if (user ? allow_w : (allow_w || !wp)) p |= ACC_W;
    if (!nx) p |= ACC_X;
    if ((e & PTE_D) || (acc & ACC_W)) p |= 0x100;
    *perm = p;
    return 0;
notpresent:
    if (!fault) return -1;
    page_fault(c, lin, acc, 0, 0);
rsvd:
    if (!fault) return -1;
    page_fault(c, lin, acc, 1, 1);
prot:
    if (!fault) return -1;
    page_fault(c, lin, acc, 1, 0);
}

static void tlb_fill(cpu_t *c, uint64_t lin, uint64_t gpa, uint8_t *host, uint32_t gidx, int perm)
{
    tlbe_t *e = &c->tlb[(lin >> 12) & (TLB_SIZE - 1)];
    uint64_t page = lin & ~0xfffULL;
    e->addend = (uintptr_t)(host - (gpa & 0xfff)) - (uintptr_t)page;
    e->gpa = gpa & ~0xfffULL;
    e->gidx = gidx;
    e->tag_r = page;
    e->tag_w = ((perm & ACC_W) && (perm & 0x100)) ? page : TLB_INVALID;
    e->tag_x = (perm & ACC_X) ? page : TLB_INVALID;
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

int pio_access(cpu_t *c, uint16_t port, int size, int is_write, uint64_t *val)
{
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

uint64_t mem_read_slow(cpu_t *c, uint64_t lin, int size, int acc)
{
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
    if ((lin & 0xfff) + size > 0x1000) return NULL;   /* split lock: non-atomic fallback */
    uint64_t gpa; int perm;
    translate(c, lin, acc, &gpa, &perm, 1);
    uint32_t gidx;
    uint8_t *h = gpa_host(c->vm, gpa, &gidx);
    if (!h) return NULL;
    tlb_fill(c, lin, gpa, h, gidx, perm | 0x100);
    if (__atomic_load_n(&c->vm->gen[gidx], __ATOMIC_RELAXED) & 1) code_written(c, gidx);
    return h;
}
