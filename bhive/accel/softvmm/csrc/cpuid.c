/*
 * CPUID: one coherent GenuineIntel model that advertises only what softvmm
 * implements.  Topology: 1 package, ncpus cores, 1 thread per core, APIC ID
 * = vcpuid (leaf 1 EBX, leaf 0xB).  Leaves 0x15/0x16 (TSC frequency) and
 * the FPU/SSE feature bits come with the milestones that implement them.
 */
#include <string.h>
#include "cpu.h"

#define MAX_STD 0xb
#define MAX_EXT 0x80000008u

static void put_str(uint32_t *o, const char *s)
{
    memcpy(o, s, 16);
}

void do_cpuid(cpu_t *c, uint32_t leaf, uint32_t sub, uint32_t o[4])
{
    int n = c->vm->ncpus;
    uint32_t apicid = (uint32_t)c->vcpuid;
    int shift = 0;
    while ((1 << shift) < n) shift++;
    o[0] = o[1] = o[2] = o[3] = 0;
    /* out-of-range leaves return the highest basic leaf (Intel behaviour) */
    if ((leaf < 0x80000000u && leaf > MAX_STD) || (leaf >= 0x80000000u && leaf > MAX_EXT)) leaf = MAX_STD;
    switch (leaf) {
    case 0:
        o[0] = MAX_STD;
        memcpy(&o[1], "Genu", 4); memcpy(&o[3], "ineI", 4); memcpy(&o[2], "ntel", 4);
        break;
    case 1:
        o[0] = 0x000306a9;                        /* family 6 model 0x3a stepping 9 */
        o[1] = (apicid << 24) | ((uint32_t)(n > 1 ? (1 << shift) : 1) << 16) | (8 << 8);
        o[2] = (1u << 31);                        /* hypervisor present; CX16 below */
        o[2] |= (1u << 13);                       /* CMPXCHG16B */
        o[3] = (1u << 3)   /* PSE */
             | (1u << 4)   /* TSC */
             | (1u << 5)   /* MSR */
             | (1u << 6)   /* PAE */
             | (1u << 8)   /* CX8 */
             | (1u << 9)   /* APIC */
             | (1u << 13)  /* PGE */
             | (1u << 15)  /* CMOV */
             | (1u << 16)  /* PAT */
             | (1u << 19); /* CLFSH */
        if (n > 1) o[3] |= (1u << 28);           /* HTT: EBX[23:16] is valid */
        o[3] |= (1u << 0) | (1u << 23) | (1u << 24) | (1u << 25) | (1u << 26);   /* FPU, MMX, FXSR, SSE, SSE2 (x87.c, mmx.c, sse.c) */
        o[2] |= (1u << 0);                        /* SSE3 (no MONITOR/MWAIT) */
        break;
    case 0xb:
        /* x2APIC topology (SDM Vol 3A 10.9.2); SMT level has one thread */
        o[3] = apicid;
        if (sub == 0) { o[0] = 0; o[1] = 1; o[2] = 0x100 | sub; }
        else if (sub == 1) { o[0] = shift; o[1] = (uint32_t)n; o[2] = 0x200 | sub; }
        else { o[2] = sub & 0xff; }
        break;
    case 0x80000000: o[0] = MAX_EXT; break;
    case 0x80000001:
        o[2] = 1;                                  /* LAHF/SAHF in 64-bit mode */
        o[3] = (1u << 11) | (1u << 20) | (1u << 27) | (1u << 29);   /* SYSCALL, NX, RDTSCP, LM */
        break;
    case 0x80000002: put_str(o, "bhive softvmm x8"); break;
    case 0x80000003: put_str(o, "6-64 CPU (M1)\0\0\0"); break;
    case 0x80000004: break;
    case 0x80000008: o[0] = 0x3028; break;           /* 40-bit physical, 48-bit linear */
    default: break;
    }
}
