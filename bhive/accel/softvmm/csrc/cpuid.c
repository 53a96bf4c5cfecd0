/*
 * CPUID: one coherent GenuineIntel model that advertises only what softvmm
 * implements.  Topology: 1 package, ncpus cores, 1 thread per core, APIC ID
 * = vcpuid (leaf 1 EBX, leaf 4 EAX[31:26], leaf 0xB).  The TSC is the
 * host's invariant TSC (guest_tsc) at the frequency calibrated into the
 * platform shm: leaf 0x15 and 0x16 say so, so Linux takes the frequency from
 * CPUID instead of calibrating against the PIT; 0x80000007 EDX[8] advertises
 * the invariant TSC.
 *
 * Hypervisor bit policy: CPUID.1:ECX[31] is set and leaf 0x40000000 returns
 * the vendor signature "bhivebhivebh" with no further paravirtual leaves.
 * A guest can thus tell it is virtualised (Linux then skips work that only
 * matters on bare metal, e.g. some microcode/erratum handling) but finds no
 * KVM/Hyper-V interface it might try to use.  Speculation: no side
 * channels exist in an interpreter; IA32_ARCH_CAPABILITIES says so
 * (RDCL_NO, MDS_NO, ...) and SPEC_CTRL/PRED_CMD exist as advertised by
 * leaf 7 EDX[26,27,31].
 */
#include <string.h>
#include "cpu.h"
#include "gp_extensions.h"

#define MAX_STD 0x16
#define MAX_EXT 0x80000008u

/* Best rational approximation num/den of a/b with num <= max_num
 * (continued fractions: each convergent is the closest fraction with a
 * denominator that small). */
static void tsc_crystal_ratio(uint64_t a, uint64_t b, uint32_t max_num, uint32_t *num, uint32_t *den)
{
    uint64_t p0 = 0, q0 = 1, p1 = 1, q1 = 0;
    while (b) {
        uint64_t t = a / b, p2 = p0 + t * p1, q2 = q0 + t * q1, r = a % b;
        if (p2 > max_num || q2 > 0xFFFFFFFFu)
            break;
        p0 = p1; q0 = q1; p1 = p2; q1 = q2;
        a = b; b = r;
    }
    *num = (uint32_t)p1; *den = (uint32_t)(q1 ? q1 : 1);
}

static void put_str(uint32_t *o, const char *s)
{
    memcpy(o, s, 16);
}

/* leaf 4 deterministic cache parameters: type, level, ways, line, sets */
static const struct { uint8_t type, level; uint16_t ways, line; uint32_t sets, shared_all; } caches[] = {
    { 1, 1, 8, 64, 64, 0 },       /* L1d 32K */
    { 2, 1, 8, 64, 64, 0 },       /* L1i 32K */
    { 3, 2, 8, 64, 512, 0 },      /* L2 256K */
    { 3, 3, 16, 64, 8192, 1 },    /* L3 8M, shared by the package */
};

void do_cpuid(cpu_t *c, uint32_t leaf, uint32_t sub, uint32_t o[4])
{
    int n = c->vm->ncpus;
    uint32_t apicid = (uint32_t)c->vcpuid;
    int shift = 0;
    while ((1 << shift) < n) shift++;
    o[0] = o[1] = o[2] = o[3] = 0;
    if (leaf >= 0x40000000u && leaf < 0x40000100u) {
        if (leaf == 0x40000000u) {
            o[0] = 0x40000000u;
            memcpy(&o[1], "bhiv", 4); memcpy(&o[2], "ebhi", 4); memcpy(&o[3], "vebh", 4);
        }
        return;
    }
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
        o[2] = (1u << 31);                        /* hypervisor present (policy above) */
        o[2] |= (1u << 13);                       /* CMPXCHG16B */
        o[2] |= (1u << 24);                       /* TSC-deadline LAPIC timer (lapic.c) */
        o[3] = (1u << 3)   /* PSE */
             | (1u << 4)   /* TSC */
             | (1u << 5)   /* MSR */
             | (1u << 6)   /* PAE */
             | (1u << 8)   /* CX8 */
             | (1u << 9)   /* APIC */
             | (1u << 11)  /* SEP: SYSENTER/SYSEXIT */
             | (1u << 12)  /* MTRR */
             | (1u << 13)  /* PGE */
             | (1u << 15)  /* CMOV */
             | (1u << 16)  /* PAT */
             | (1u << 17)  /* PSE-36 */
             | (1u << 19)  /* CLFSH */
             | (1u << 7)   /* MCE: CR4.MCE; #MC is never raised */
             | (1u << 14); /* MCA: IA32_MCG_CAP with 0 banks (system.c) */
        /* APIC: only while IA32_APIC_BASE enables it (SDM Vol 3A 11.4.3) */
        if (!(c->lapic->apic_base & 0x800)) o[3] &= ~(1u << 9);
        if (n > 1) o[3] |= (1u << 28);           /* HTT: EBX[23:16] is valid */
        o[3] |= (1u << 0) | (1u << 23) | (1u << 24) | (1u << 25) | (1u << 26);   /* FPU, MMX, FXSR, SSE, SSE2 (x87.c, mmx.c, sse.c) */
        o[2] |= (1u << 0);                        /* SSE3 (no MONITOR/MWAIT) */
        break;
    case 4:
        /* SDM Vol 2A CPUID leaf 4; EAX[31:26] = cores per package - 1 */
        if (sub < sizeof(caches) / sizeof(caches[0])) {
            uint32_t sharing = caches[sub].shared_all ? (uint32_t)(n - 1) : 0;
            o[0] = caches[sub].type | (caches[sub].level << 5) | (1u << 8) | (sharing << 14) |
                   ((uint32_t)(n - 1) << 26);
            o[1] = (uint32_t)(caches[sub].line - 1) | (0u << 12) | ((uint32_t)(caches[sub].ways - 1) << 22);
            o[2] = caches[sub].sets - 1;
            o[3] = caches[sub].level == 3 ? 2 : 0;   /* L3 inclusive */
        }
        break;
    case 6:
        o[0] = (1u << 2);                          /* ARAT: the APIC timer never stops (no C-states) */
        break;
    case 7:
        if (sub == 0) {
            o[0] = 0;                              /* highest subleaf */
            o[1] = (1u << 1)                       /* IA32_TSC_ADJUST: with the invariant TSC and leaf
                                                    * 0x15, Linux trusts the TSC without a watchdog */
                 | (1u << 7)                       /* SMEP (mmu.c) */
                 | (1u << 20);                     /* SMAP, STAC/CLAC (mmu.c, system.c) */
            o[3] = (1u << 26) | (1u << 27) | (1u << 29) | (1u << 31);   /* IBRS/IBPB, STIBP, ARCH_CAPABILITIES, SSBD */
        }
        break;
    case 0xb:
        /* x2APIC topology (SDM Vol 3A 10.9.2); SMT level has one thread */
        o[3] = apicid;
        if (sub == 0) { o[0] = 0; o[1] = 1; o[2] = 0x100 | sub; }
        else if (sub == 1) { o[0] = shift; o[1] = (uint32_t)n; o[2] = 0x200 | sub; }
        else { o[2] = sub & 0xff; }
        break;
    case 0x15: {
        /* TSC = crystal * EBX / EAX (SDM Vol. 2A CPUID leaf 15H).  The
         * crystal is the LAPIC timer's clock, because Linux derives its APIC
         * timer period from ECX.  Linux computes crystal_khz * EBX / EAX in
         * 32 bits (native_calibrate_tsc), so EBX/EAX is the best rational
         * approximation of TSC/crystal with crystal_khz * EBX < 2^32. */
        uint64_t hz = host_tsc_hz(c->vm);
        uint32_t num, den;
        tsc_crystal_ratio(hz, APIC_BUS_HZ / 1000 * 1000, 0xFFFFFFFFu / (uint32_t)(APIC_BUS_HZ / 1000), &num, &den);
        o[0] = den; o[1] = num; o[2] = (uint32_t)APIC_BUS_HZ;
        break;
    }
    case 0x16:
        o[0] = (uint32_t)(host_tsc_hz(c->vm) / 1000000ULL);   /* base MHz */
        o[1] = o[0];                                          /* max MHz */
        o[2] = (uint32_t)(APIC_BUS_HZ / 1000000ULL);          /* bus MHz */
        break;
    case 0x80000000: o[0] = MAX_EXT; break;
    case 0x80000001:
        o[2] = 1;                                  /* LAHF/SAHF in 64-bit mode */
        o[3] = (1u << 11) | (1u << 20) | (1u << 26) | (1u << 27) | (1u << 29);   /* SYSCALL, NX, 1G pages, RDTSCP, LM */
        break;
    case 0x80000002: put_str(o, "bhive softvmm x8"); break;
    case 0x80000003: put_str(o, "6-64 CPU @ 2.00G"); break;
    case 0x80000004: put_str(o, "Hz\0\0\0\0\0\0\0\0\0\0\0\0\0\0"); break;
    case 0x80000006: o[2] = (256u << 16) | (6u << 12) | 64; break;   /* L2: 256K, 8-way, 64B lines */
    case 0x80000007: o[3] = (1u << 8); break;  /* invariant TSC */
    case 0x80000008: o[0] = 0x3028; break;           /* 40-bit physical, 48-bit linear */
    default: break;
    }
    cpuid_int_features(leaf, sub, o);   /* POPCNT MOVBE LZCNT BMI1 BMI2 ADX (gp_extensions.c) */
    /* the CPU model (svm_vm_set_cpu) */
    const svm_vm_t *vm = c->vm;
    if (leaf == 1) { o[2] &= vm->cpuid_mask[FW_1C]; o[3] &= vm->cpuid_mask[FW_1D]; }
    else if (leaf == 7 && sub == 0) {
        o[1] &= vm->cpuid_mask[FW_7B]; o[2] &= vm->cpuid_mask[FW_7C]; o[3] &= vm->cpuid_mask[FW_7D];
    } else if (leaf == 0x80000001) { o[2] &= vm->cpuid_mask[FW_X1C]; o[3] &= vm->cpuid_mask[FW_X1D]; }
    if (vm->vendor_amd && (leaf == 0 || leaf == 0x80000000)) {
        memcpy(&o[1], "Auth", 4); memcpy(&o[3], "enti", 4); memcpy(&o[2], "cAMD", 4);
    }
}

void svm_vm_set_cpu(svm_vm_t *vm, int vendor_amd, const uint32_t *masks)
{
    vm->vendor_amd = (uint8_t)!!vendor_amd;
    for (int k = 0; k < 7; k++) vm->cpuid_mask[k] = masks[k];
}
