/* Shared helpers of x87.c and sse.c (not part of the core's API). */
#ifndef SOFTVMM_FPUINT_H
#define SOFTVMM_FPUINT_H
#include <string.h>
#include "mem.h"

/* Guest memory operands of any size: byte-exact little-endian copies through
 * the normal TLB paths.  Stores larger than 8 bytes that cross a page are
 * write-probed on both sides first, so a #PF never leaves a half-written
 * operand (SDM Vol 3A 6.5: faults are taken before the instruction commits). */
static inline void fmem_read(cpu_t *c, int seg, uint64_t off, void *dst, int n)
{
    uint8_t *p = dst;
    uint64_t lin = lin_rd(c, seg, off, n);
    while (n >= 8) { uint64_t v = mem_read(c, lin, 8); memcpy(p, &v, 8); p += 8; lin += 8; n -= 8; }
    if (n >= 4) { uint32_t v = (uint32_t)mem_read(c, lin, 4); memcpy(p, &v, 4); p += 4; lin += 4; n -= 4; }
    if (n >= 2) { uint16_t v = (uint16_t)mem_read(c, lin, 2); memcpy(p, &v, 2); p += 2; lin += 2; n -= 2; }
    if (n) *p = (uint8_t)mem_read(c, lin, 1);
}
static inline void fmem_probe_w(cpu_t *c, int seg, uint64_t off, int n)
{
    uint64_t lin = lin_wr(c, seg, off, n);
    if (n > 8 && ((lin & 0xfff) + (uint64_t)n > 0x1000)) {
        (void)mem_read_rmw(c, lin, 1);
        (void)mem_read_rmw(c, lin + n - 1, 1);
    }
}
static inline void fmem_write(cpu_t *c, int seg, uint64_t off, const void *src, int n)
{
    const uint8_t *p = src;
    fmem_probe_w(c, seg, off, n);
    uint64_t lin = lin_addr(c, seg, off);
    while (n >= 8) { uint64_t v; memcpy(&v, p, 8); mem_write(c, lin, 8, v); p += 8; lin += 8; n -= 8; }
    if (n >= 4) { uint32_t v; memcpy(&v, p, 4); mem_write(c, lin, 4, v); p += 4; lin += 4; n -= 4; }
    if (n >= 2) { uint16_t v; memcpy(&v, p, 2); mem_write(c, lin, 2, v); p += 2; lin += 2; n -= 2; }
    if (n) mem_write(c, lin, 1, *p);
}

uint32_t fpu_mxcsr_mask(void);
uint16_t x87_full_tag(cpu_t *c);
void x87_update_es(cpu_t *c);

#endif
