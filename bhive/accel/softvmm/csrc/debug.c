/*
 * Debug registers (SDM Vol 3B chapter 17): DR0-DR3 breakpoints as DR7
 * enables them, DR6 status.  Nothing here runs while DR7 enables no
 * breakpoint: MOV DR7 (and DR0-DR3, CR4.DE) computes which kinds are armed;
 * with any armed the run loop executes one instruction at a time (as for
 * EFLAGS.TF) and checks instruction breakpoints before it, and the TLB
 * leaves the fast-path tags of a watched page invalid so that its data
 * accesses reach the slow paths, which record hits (mmu.c).  Data and I/O
 * breakpoints are traps: the #DB follows the instruction, together with a
 * single-step trap if TF was set (one #DB, both DR6 bits).
 */
#include "mem.h"
#include "handlers.h"

#define DR7_GD 0x2000u

/* the range [addr, addr + len) of breakpoint n; rw: 0 exec, 1 write, 2 I/O, 3 read/write */
static inline int bp_enabled(cpu_t *c, int n) { return (c->dr[7] >> (2 * n)) & 3; }
static inline int bp_rw(cpu_t *c, int n) { return (c->dr[7] >> (16 + 4 * n)) & 3; }
static inline uint64_t bp_len(cpu_t *c, int n)
{
    static const uint8_t len[4] = { 1, 2, 8, 4 };   /* LENn: 00, 01, 10 (8 bytes in IA-32e), 11 */
    return len[(c->dr[7] >> (18 + 4 * n)) & 3];
}

void dbg_update(cpu_t *c)
{
    int exec = 0, data = 0, io = 0;
    for (int n = 0; n < 4; n++) {
        if (!bp_enabled(c, n)) continue;
        switch (bp_rw(c, n)) {
        case 0: exec = 1; break;
        case 2: if (c->cr4 & 0x8) io = 1; break;    /* CR4.DE; undefined without it */
        default: data = 1; break;
        }
    }
    c->dbg_exec = (uint8_t)exec; c->dbg_data = (uint8_t)data; c->dbg_io = (uint8_t)io;
    c->dbg_step = (uint8_t)(exec || data || io);
    tlb_retag_cpl(c);   /* watched pages leave (or rejoin) the fast paths */
    c->brk = 1;         /* the run loop picks the stepping path from the next instruction */
}

/* instruction breakpoints at linear address lin: DR6.B0-B3 bits */
int dbg_exec_hits(cpu_t *c, uint64_t lin)
{
    int hits = 0;
    for (int n = 0; n < 4; n++)
        if (bp_enabled(c, n) && bp_rw(c, n) == 0 && c->dr[n] == lin) hits |= 1 << n;
    return hits;
}

static inline int overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

/* a data access [lin, lin + size) from a slow path */
void dbg_data_access(cpu_t *c, uint64_t lin, int size, int write)
{
    for (int n = 0; n < 4; n++) {
        if (!bp_enabled(c, n)) continue;
        int rw = bp_rw(c, n);
        if (rw == 3 || (rw == 1 && write)) {
            uint64_t len = bp_len(c, n), a = c->dr[n] & ~(len - 1);
            if (overlaps(lin, (uint64_t)size, a, len)) c->dbg_hits |= (uint8_t)(1 << n);
        }
    }
}

/* a port access (CR4.DE = 1) */
void dbg_io_access(cpu_t *c, uint16_t port, int size)
{
    for (int n = 0; n < 4; n++) {
        if (!bp_enabled(c, n) || bp_rw(c, n) != 2) continue;
        uint64_t len = bp_len(c, n), a = (c->dr[n] & 0xffff) & ~(len - 1);
        if (overlaps(port, (uint64_t)size, a, len)) c->dbg_hits |= (uint8_t)(1 << n);
    }
}

/* TLB tags: 1 if reads, 2 if writes of this linear page must take the slow path */
int dbg_page_watched(cpu_t *c, uint64_t page)
{
    int m = 0;
    for (int n = 0; n < 4; n++) {
        if (!bp_enabled(c, n)) continue;
        int rw = bp_rw(c, n);
        if (rw != 1 && rw != 3) continue;
        uint64_t len = bp_len(c, n), a = c->dr[n] & ~(len - 1);
        if ((a & ~0xfffULL) == page) m |= rw == 3 ? 3 : 2;
    }
    return m;
}

/* MOV to/from DR0-DR7 (SDM Vol 2B MOV-Debug Registers) */
HANDLER(h_mov_dr)
{
    if (c->cpl || (c->rflags & F_VM)) raise_gp(c, 0);
    int sz = c->long64 ? 8 : 4, dr = i->reg & 7;
    if ((dr == 4 || dr == 5) && (c->cr4 & 0x8)) raise_ud(c);   /* CR4.DE: DR4/DR5 are reserved */
    if (c->dr[7] & DR7_GD) {
        /* general detect: a #DB fault before the access, DR6.BD; GD is
         * cleared so that the handler may use the debug registers */
        c->dr[7] &= ~(uint64_t)DR7_GD;
        c->dr[6] = (c->dr[6] & ~0xfULL) | 0x2000;
        raise_exc(c, EX_DB, 0, 0);
    }
    if (dr == 4 || dr == 5) dr += 2;
    if (i->op == 0x21) {
        setreg(c, i->rm, sz, dr == 6 ? (c->dr[6] | 0xffff0ff0) : dr == 7 ? (c->dr[7] | 0x400) : c->dr[dr]);
        return;
    }
    uint64_t v = getreg(c, i->rm, sz);
    if ((dr == 6 || dr == 7) && (v >> 32)) raise_gp(c, 0);   /* upper halves are reserved */
    c->dr[dr] = v;
    if (dr != 6) dbg_update(c);
}
