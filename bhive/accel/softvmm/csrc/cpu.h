/*
 * softvmm: the bhive x86-64 CPU.  Architectural state of one vCPU and the
 * internal interfaces between the parts of the core.
 *
 * One svm_cpu per vCPU process/thread; guest RAM and the "platform shm"
 * (local APICs, run-state futex words, per-page code generation counters)
 * are shared by every process of the VM.  Nothing in the platform shm is a
 * pointer: every process maps it at its own address.
 */
#ifndef SOFTVMM_CPU_H
#define SOFTVMM_CPU_H

#include <stdint.h>
#include <stddef.h>
#include <setjmp.h>
#include "softvmm.h"
#include "fpu.h"

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define NORETURN __attribute__((noreturn))

/* ---- register numbers (internal) ------------------------------------- */
enum { R_RAX, R_RCX, R_RDX, R_RBX, R_RSP, R_RBP, R_RSI, R_RDI };
enum { S_ES, S_CS, S_SS, S_DS, S_FS, S_GS, S_LDTR, S_TR, S_NONE = 15 };

/* RFLAGS bits */
#define F_CF 0x0001u
#define F_PF 0x0004u
#define F_AF 0x0010u
#define F_ZF 0x0040u
#define F_SF 0x0080u
#define F_TF 0x0100u
#define F_IF 0x0200u
#define F_DF 0x0400u
#define F_OF 0x0800u
#define F_IOPL 0x3000u
#define F_NT 0x4000u
#define F_RF 0x10000u
#define F_VM 0x20000u
#define F_AC 0x40000u
#define F_ID 0x200000u
#define F_OSZAPC (F_CF | F_PF | F_AF | F_ZF | F_SF | F_OF)

#define CR0_PE 0x1u
#define CR0_MP 0x2u
#define CR0_EM 0x4u
#define CR0_TS 0x8u
#define CR0_ET 0x10u
#define CR0_NE 0x20u
#define CR0_WP 0x10000u
#define CR0_AM 0x40000u
#define CR0_NW 0x20000000u
#define CR0_CD 0x40000000u
#define CR0_PG 0x80000000u
#define CR4_PSE 0x10u
#define CR4_PAE 0x20u
#define CR4_PGE 0x80u
#define CR4_OSFXSR 0x200u
#define CR4_SMEP (1u << 20)
#define CR4_SMAP (1u << 21)
#define EFER_SCE 0x1u
#define EFER_LME 0x100u
#define EFER_LMA 0x400u
#define EFER_NXE 0x800u

/* interrupt shadows (SDM Vol 3A 6.8.3): both block interrupts and NMIs for
 * one instruction; MOV SS / POP SS also hold debug traps (TF) over it */
enum { SHADOW_STI = 1, SHADOW_MOVSS = 2 };

/* exception vectors */
enum { EX_DE = 0, EX_DB = 1, EX_NMI = 2, EX_BP = 3, EX_OF = 4, EX_BR = 5, EX_UD = 6, EX_NM = 7,
       EX_DF = 8, EX_TS = 10, EX_NP = 11, EX_SS = 12, EX_GP = 13, EX_PF = 14, EX_MF = 16,
       EX_AC = 17, EX_MC = 18, EX_XM = 19 };

/* ---- segment register (hidden part uses the VMX access-rights layout) -- */
typedef struct seg {
    uint64_t base;
    uint32_t limit;
    uint32_t access;     /* type[3:0] S[4] DPL[6:5] P[7] AVL[12] L[13] DB[14] G[15] unusable[16] */
    uint16_t sel;
} seg_t;

/* ---- decoded instruction ---------------------------------------------- */
struct svm_cpu;
struct insn;
typedef void (*handler_t)(struct svm_cpu *c, const struct insn *i);

#define EA_NONE 0xFF
#define EA_RIP  0xFE

typedef struct insn {
    handler_t fn;
    uint64_t imm;        /* immediate, sign- or zero-extended as the opcode needs */
    int32_t disp;
    uint16_t imm2;       /* second immediate (far pointer selector, ENTER level) */
    uint8_t len;
    uint8_t op;          /* opcode byte (in its map) */
    uint8_t map;         /* 0 = one-byte, 1 = 0F, 2 = 0F38, 3 = 0F3A */
    uint8_t osz;         /* operand size in bytes (1 for byte forms) */
    uint8_t asz;         /* address size in bytes */
    uint8_t reg;         /* ModRM.reg (+REX.R); byte regs: 0x10|n = AH..BH */
    uint8_t rm;          /* ModRM.rm (+REX.B) when mod == 3 */
    uint8_t mod;         /* 3: register operand */
    uint8_t base, index, scale;
    uint8_t seg;         /* effective segment of the memory operand */
    uint8_t rep;         /* 0, 0xF2 or 0xF3 */
    uint8_t lock;
    uint8_t pfx66;       /* operand-size prefix present (SSE later) */
    uint8_t segovr;      /* explicit segment override (S_NONE if none) */
    uint8_t ext;         /* raw ModRM.reg (group opcode extension /digit) */
    uint8_t cc;          /* fused Jcc: condition code */
    uint8_t ninsn;       /* architectural instructions in this entry (2 when fused) */
    int32_t jdisp;       /* fused Jcc: displacement */
} insn_t;

/* A predecoded block: straight-line code inside one 4K guest-physical
 * page (its last instruction may run into the next page), ending at the
 * first control transfer / mode-changing instruction.
 * Blocks live in a per-vCPU arena, each exactly as long as its insns[],
 * found through a hash table on (gpa, code size); the whole cache is
 * dropped at once when the arena fills, as QEMU's TB cache does. */
#define BLK_MAX 48
typedef struct block {
    uint64_t gpa;        /* guest-physical address of the first byte; ~0 = not cacheable */
    uint32_t gen;        /* code generation of the page when decoded */
    uint32_t gidx;       /* page index into the generation array */
    uint8_t  key;        /* code size (2/4/8) the block was decoded for */
    uint8_t  n;
    uint8_t  ninsn;      /* architectural instructions (fused pairs count 2) */
    struct block *next;  /* hash chain */
    /* direct chaining to the last two successors: valid while the epoch
     * (TLB / mode / code writes / cache flush) is unchanged */
    struct blink { uint64_t rip; struct block *blk; uint64_t epoch; } link[2];
    uint64_t gpa2;       /* the next page, when the last instruction crosses into it; ~0 = none */
    uint32_t gidx2, gen2;
    uint32_t hits;       /* executions by the interpreter, until the JIT takes it (jit.c) */
    /* Native code (jit.c) for up to two linear addresses of the block: the
     * same physical code runs at more than one (a kernel's text before and
     * after it moves to its virtual address, a library in two processes). */
    uint8_t jit_next;    /* the variant the next translation replaces */
    uint64_t jit_rip[2];
    void *jit[2];
    insn_t insns[];      /* n entries (BLK_MAX in the scratch block) */
} block_t;
#define PIO_LANES_MAX 8
#define CODE_PAGES 256
#define BHASH_SIZE 65536             /* hash buckets (pointers) */
#define JCACHE_SIZE 4096             /* rip -> block, for returns and indirect jumps */
typedef struct jcache_ent { uint64_t rip; struct block *blk; uint64_t epoch; } jcache_ent_t;
#define BARENA_BYTES (48u << 20)     /* decoded-block arena per vCPU, mapped lazily */

/* ---- TLB --------------------------------------------------------------- */
#define TLB_BITS 10
#define TLB_SIZE (1 << TLB_BITS)
/* Slot of a linear address in the direct-mapped TLB.  Higher address bits
 * are folded in so that buffers a multiple of 1 MiB apart (page 0x100 and
 * page 0x200: a copy loop's source and destination) do not share a slot and
 * evict each other on every access.  A sum rather than an XOR because the
 * JIT computes it without touching the guest flags it keeps in the host's
 * (RORX and LEA; jit.c).  Every lookup and fill goes through here. */
static inline unsigned tlb_slot(uint64_t lin)
{
    uint64_t page = lin >> 12;
    return (unsigned)((page + (page >> 8) + (page >> 16)) & (TLB_SIZE - 1));
}
#define TLB_INVALID 1ULL   /* never equals a page-aligned address */
typedef struct tlbe {
    uint64_t tag_r, tag_w, tag_x;   /* linear page or TLB_INVALID */
    uintptr_t addend;                /* host = linear + addend */
    uint64_t gpa;                    /* guest-physical page */
    uint32_t gidx;                   /* generation index */
    uint16_t perm;                   /* TP_* rights of the whole walk (CPL-independent) */
    uint8_t glob;                    /* global (PTE.G with CR4.PGE): survives MOV CR3 */
    uint8_t pshift;                  /* log2 of the translation's page size (12/21/22/30) */
    uint64_t page;                   /* linear 4K page this entry maps, or TLB_INVALID */
} tlbe_t;
/* The JIT's view of a TLB slot (same index): the fast-path tags negated, so
 * that generated code tests a hit as (last byte's page + jtag == 0) with LEA
 * and JRCXZ, leaving the host flags (= the guest's) alone. */
#define JTAG_INVALID ((int64_t)1 << 63)   /* never sums to 0 with a page number */
typedef struct jtlbe {
    int64_t jtag_r, jtag_w;          /* -(page >> 12) or JTAG_INVALID */
    uintptr_t addend;                /* = tlbe_t.addend */
    uint32_t *genp;                  /* the page's code generation word */
} jtlbe_t;
/* The JIT's jump cache entry: a return or indirect jump whose target RIP
 * matches (-nrip + rip == 0) in the current epoch, while the target block's
 * page keeps its generation (*genp - ngen == 0), goes straight to `code`. */
#define JIT_JC_BITS 12
typedef struct jit_jc { int64_t nrip; void *code; int32_t nepoch, ngen; const uint32_t *genp; } jit_jc_t;
/* tlbe_t.perm bits: the tags for the current CPL/CR0.WP are derived from them (tlb_retag) */
#define TP_W 1   /* writable at every level */
#define TP_U 2   /* user at every level */
#define TP_NX 4  /* execute-disable somewhere (EFER.NXE=1) */
#define TP_D 8   /* dirty bit already set in the leaf */

/* ---- platform shm layout ---------------------------------------------- */
#define SHM_MAGIC 0x53564d31u  /* "SVM1" */
typedef struct shm_hdr {
    uint32_t magic, ncpus;
    uint64_t ram_pages;
    uint64_t lapic_off;       /* offset of lapic[0] */
    uint64_t gen_off;         /* offset of the uint32 generation array */
    uint64_t tsc_hz;          /* host TSC frequency, calibrated once by the first opener (tsc.c) */
} shm_hdr_t;

/* Per-vCPU local APIC and run state, 4 KiB each, in the platform shm.
 * Written by other vCPUs / device threads with __atomic builtins only. */
typedef struct lapic {
    uint32_t event;        /* futex word: 1 = something arrived, owner resets */
    uint32_t kick;         /* make vm_run return BOGUS */
    uint32_t nmi;          /* pending NMI */
    uint32_t init;         /* pending INIT */
    uint32_t sipi;         /* pending SIPI: 0x100 | vector */
    uint32_t extint;       /* pending ExtINT: 0x100 | vector */
    uint32_t state;        /* LS_* */
    uint32_t id;           /* APIC ID (= vcpuid) */
    uint32_t ldr, dfr, svr, tpr, esr, icr_lo, icr_hi;
    uint32_t lvt[7];       /* CMCI, timer, thermal, perf, LINT0, LINT1, error */
    uint32_t timer_icr, timer_ccr, timer_dcr;
    uint32_t pad0;
    uint64_t apic_base;    /* IA32_APIC_BASE */
    uint32_t irr[8], isr[8], tmr[8];
    /* timer and error state (lapic.c); timer fields are written by the owner only */
    uint32_t esr_pending;  /* errors since the last ESR write (SDM 11.5.3), atomic OR by senders */
    uint32_t pad1;
    uint64_t timer_next;   /* host TSC of the next expiry, LAPIC_NEVER when disarmed */
    uint64_t tsc_deadline; /* IA32_TSC_DEADLINE (guest TSC), 0 = disarmed */
    uint32_t accepted[256];/* vectors this CPU took (IRR -> ISR), by the owner: bhive stats' per-CPU rows */
} lapic_t;
_Static_assert(sizeof(lapic_t) <= 4096, "a local APIC has one LAPIC_STRIDE of the platform shm");
#define LAPIC_NEVER (~0ULL)
enum { LS_OFF = 0, LS_WAIT_SIPI = 1, LS_RUN = 2 };
#define LAPIC_STRIDE 4096

/* ---- the VM as seen from one process ---------------------------------- */
#define MAX_SLOTS 8
typedef struct svm_vm {
    uint8_t *ram;
    uint64_t ram_size;
    int nslots;
    struct { uint64_t gpa, size, off; } slots[MAX_SLOTS];
    uint8_t *shm;
    int ncpus;
    uint32_t flags;
    /* the CPU model (svm_vm_set_cpu): AND-masks over what cpuid.c advertises,
     * one per feature word (FW_*), and the vendor; instructions of a feature
     * masked off raise #UD (decoded so), registers and MSRs #GP */
    uint32_t cpuid_mask[7];
    uint8_t vendor_amd;
    uint32_t *gen;          /* per-4K-page code generations (in shm) */
    int membarrier_cmd;     /* MEMBARRIER_CMD_GLOBAL_EXPEDITED if registered, else 0 */
    uint64_t ram_pages;
} svm_vm_t;

enum { FW_1C, FW_1D, FW_7B, FW_7C, FW_7D, FW_X1C, FW_X1D };   /* CPUID 1 ECX/EDX, 7.0 EBX/ECX/EDX, 0x80000001 ECX/EDX */
static inline int vm_feat(const svm_vm_t *vm, int word, int bit) { return (vm->cpuid_mask[word] >> bit) & 1; }

static inline lapic_t *vm_lapic(svm_vm_t *vm, int id)
{
    shm_hdr_t *h = (shm_hdr_t *)vm->shm;
    return (lapic_t *)(vm->shm + h->lapic_off + (uint64_t)id * LAPIC_STRIDE);
}

/* ---- lazy flags -------------------------------------------------------- */
enum { LF_NONE = 0, LF_ADD, LF_ADC, LF_SUB, LF_SBB, LF_LOGIC, LF_INC, LF_DEC, LF_NEG };

/* abort reasons for longjmp(c->jb) */
enum { AB_FAULT = 1, AB_EXIT = 2 };

/* replayed port / MMIO accesses of the current instruction (KVM-style
 * re-execution: an access that needs the VMM aborts the instruction with
 * an exit; completion supplies the value and the instruction re-runs,
 * consuming the logged accesses in order, so it commits exactly once) */
typedef struct ioent { uint64_t addr; uint64_t val; uint8_t size, is_write, is_pio, done; } ioent_t;
#define IOLOG_MAX 8

/* ---- the vCPU --------------------------------------------------------- */
typedef struct svm_cpu {
    uint64_t r[16];
    uint64_t rip;
    uint64_t nrip;           /* RIP of the next instruction while one executes */
    uint64_t rflags;         /* non-OSZAPC bits always valid; OSZAPC when lf_op == LF_NONE */
    /* lazy flags */
    uint64_t lf_res, lf_s1, lf_s2;
    uint8_t lf_op, lf_sz, lf_cf;   /* lf_cf: carry-in (ADC/SBB) or preserved CF (INC/DEC) */
    uint8_t brk;             /* end the current block after this instruction */
    uint8_t cpl;
    uint8_t csz;             /* default code size: 2, 4 or 8 */
    uint8_t ssz;             /* stack address size: 2, 4 or 8 */
    uint8_t long64;          /* 64-bit mode (LMA && CS.L) */
    uint8_t shadow;          /* interrupt shadow for the next instruction: SHADOW_STI / SHADOW_MOVSS */
    uint8_t halted;
    uint8_t irq_pending;     /* lapic may have something deliverable */
    uint8_t nmi_blocked;
    /* TLB slots whose supervisor data tags were opened by EFLAGS.AC = 1
     * under CR4.SMAP: closed again when AC clears (SMAP_SLOTS + 1: overflow) */
#define SMAP_SLOTS 16
    uint8_t smap_n;
    uint16_t smap_slot[SMAP_SLOTS];
    uint8_t init_seen;
    uint8_t delivering;      /* nested-fault tracking while delivering an event */
    uint8_t deliver_vec;
    uint8_t post_exit;       /* instruction completed; return c->exit */
    uint8_t exit_queued;     /* an exit is waiting to be returned by svm_run */
    seg_t seg[8];
    uint64_t segbase[8];     /* effective bases (0 for ES/CS/SS/DS in 64-bit mode) */
    /* outside 64-bit mode: an access of [off, off + size) through segment s
     * needs no further check when off + size <= seg_end[write][s]; anything
     * else (beyond the limit, wrong type, null, expand-down) goes to
     * seg_check() (system.c, SDM Vol 3A 5.3 and 5.4) */
    uint64_t seg_end[2][8];
    struct { uint64_t base; uint32_t limit; } gdtr, idtr;
    uint64_t cr0, cr2, cr3, cr4, cr8, efer;
    uint64_t dr[8];
    uint64_t star, lstar, cstar, sfmask, kgs_base, tsc_aux, pat, misc_enable;
    uint64_t sysenter_cs, sysenter_esp, sysenter_eip;
    int64_t tsc_offset;
    int64_t tsc_adjust;      /* IA32_TSC_ADJUST */
    uint64_t pdpte[4];       /* PAE paging: PDPTEs loaded at MOV CR3/CR0/CR4 (SDM 4.4.1) */
    uint8_t pdpte_valid;
    uint8_t dbg_step;        /* DR7 arms a breakpoint: one instruction at a time (debug.c) */
    uint8_t dbg_exec, dbg_data, dbg_io;   /* which kinds are armed */
    uint8_t dbg_hits;        /* DR6.B0-B3 of data / I/O breakpoints hit by the current instruction */
    uint8_t tf_trap;         /* TF was set when the current instruction began */
    uint8_t sw_event;        /* a software INT n / INT3 / INTO was delivered by this instruction */
    uint64_t mtrr_var[16], mtrr_fixed[11], mtrr_def, spec_ctrl;
    /* pending exception */
    int exc_vec;
    uint32_t exc_err;
    uint8_t exc_has_err;
    uint8_t exc_soft;
    uint64_t exc_cr2;
    /* injected by the VMM (vm_inject_exception) */
    int inj_vec; uint32_t inj_err; uint8_t inj_has_err;
    /* replay log */
    ioent_t io[IOLOG_MAX];
    int io_n, io_pos;
    /* MSR exit pending completion */
    uint8_t msr_pending;
    /* environment */
    svm_vm_t *vm;
    lapic_t *lapic;
    int vcpuid;
    jmp_buf jb;
    svm_exit_t exit;
    uint64_t icount, nexits;
    /* Chain links, the jump caches and the code-page set below are valid
     * for one epoch.  Each CPL class (0-2, 3) has its own, so returning to
     * user mode and back keeps both sides' links; epoch_bump() ends both. */
    uint64_t epoch;          /* the current CPL class's */
    uint64_t epoch_other;    /* the other class's */
    uint64_t epoch_gen;      /* source of fresh epoch values */
    uint64_t code_local_epoch;  /* = epoch when code on a non-global page was looked up in it */
    /* The linear code pages looked up in this epoch and where they mapped:
     * a TLB flush that leaves all of them in place need not invalidate
     * chained blocks and the jump caches (mmu.c, code_mappings_unchanged) */
    struct code_page { uint64_t lin, gpa, epoch; uint8_t user; } code_pages[CODE_PAGES];
    uint64_t code_pages_overflow;  /* = epoch when a page did not fit */
    tlbe_t tlb[TLB_SIZE];
    jtlbe_t jtlb[TLB_SIZE];  /* jit.c's copy of the fast-path tags */
    /* JIT (jit.c) */
    struct jit *jit;         /* NULL: the JIT is off for this vCPU */
    struct jit_jc *jit_jc;   /* RIP -> native code for returns and indirect jumps (JIT_JC_SIZE) */
    int64_t jit_budget;      /* guest instructions native code may still run before it returns */
    uint32_t jit_threshold;  /* interpreted runs of a block before it is translated */
    uint8_t jit_active;      /* native code is on the stack (a longjmp out must count its budget) */
    block_t **bhash;         /* BHASH_SIZE chains of cached blocks */
    jcache_ent_t jcache[JCACHE_SIZE];  /* valid while the epoch is unchanged, like chain links */
    uint8_t *barena;         /* BARENA_BYTES of blocks */
    size_t barena_used;
    uint64_t bflushes;       /* times the arena filled and the cache was dropped */
    uint64_t nlookups;       /* block lookups (chain links that could not be followed) */
    uint64_t ndecodes;       /* blocks decoded into the cache */
    block_t *scratch;        /* BLK_MAX entries: uncacheable and single-step decodes */
    /* port I/O lanes (pio_lane.c): ports served without an exit */
    uint8_t *port_lane;      /* 64K entries: lane index + 1, 0 = exit as usual */
    struct pio_lane *lanes[PIO_LANES_MAX];
    int nlanes;
    uint64_t prof_next;      /* icount of the next RIP sample; ~0 when off (svm_profile) */
    uint64_t prof_period, prof_n;
    uint64_t *prof_buf;
    uint32_t prof_cap;
    /* pause-loop detection (run.c cpu_pause) */
    uint64_t pause_last;     /* host TSC of the previous PAUSE */
    uint32_t pause_n;        /* consecutive PAUSEs in the current spin */
    uint32_t pause_sleep_ns; /* current back-off */
    fpu_state_t fpu;         /* x87/SSE (fpu.h, x87.c, sse.c) */
} svm_cpu_t;
typedef svm_cpu_t cpu_t;

/* a TLB flush / mode change / code write / cache flush: every chain link
 * and jump-cache entry, of either CPL class, becomes invalid */
static inline void epoch_bump(struct svm_cpu *c)
{
    c->epoch = ++c->epoch_gen;
    c->epoch_other = ++c->epoch_gen;
}
/* the CPL moved between 0-2 and 3: the other class's links become current */
static inline void epoch_switch_cpl(struct svm_cpu *c)
{
    uint64_t e = c->epoch;
    c->epoch = c->epoch_other;
    c->epoch_other = e;
}

/* the block's bytes are still what was decoded (both pages' generations) */
static inline int block_current(struct svm_cpu *c, const struct block *b)
{
    return b->gen == __atomic_load_n(&c->vm->gen[b->gidx], __ATOMIC_RELAXED) &&
           (b->gpa2 == ~0ULL || b->gen2 == __atomic_load_n(&c->vm->gen[b->gidx2], __ATOMIC_RELAXED));
}

/* b's native code for linear RIP `rip`, or NULL */
static inline void *block_jit(const struct block *b, uint64_t rip)
{
    if (b->jit[0] && b->jit_rip[0] == rip) return b->jit[0];
    if (b->jit[1] && b->jit_rip[1] == rip) return b->jit[1];
    return NULL;
}

/* alignment checking in force (CR0.AM, RFLAGS.AC, CPL 3) */
static inline int ac_active(const struct svm_cpu *c)
{
    return c->cpl == 3 && (c->cr0 & CR0_AM) && (c->rflags & F_AC);
}

/* ---- cross-file internal API ------------------------------------------ */
/* exceptions.c */
NORETURN void raise_exc(cpu_t *c, int vec, int has_err, uint32_t err);
#define raise_gp(c, e) raise_exc((c), EX_GP, 1, (e))
#define raise_ud(c) raise_exc((c), EX_UD, 0, 0)
void deliver_pending_fault(cpu_t *c);
void deliver_event(cpu_t *c, int vec, int kind, int has_err, uint32_t err, uint64_t ret_rip);
enum { EV_EXT = 0, EV_NMI = 2, EV_HWEXC = 3, EV_SWINT = 4, EV_SWEXC = 6 };
NORETURN void exit_unhandled(cpu_t *c);

/* mmu.c */
uint64_t mem_read_slow(cpu_t *c, uint64_t lin, int size, int acc);
void mem_write_slow(cpu_t *c, uint64_t lin, int size, uint64_t v, int acc);
void *mem_host_rmw(cpu_t *c, uint64_t lin, int size);   /* host ptr for LOCKed RMW, or NULL (MMIO) */
void tlb_flush(cpu_t *c);
void tlb_flush_page(cpu_t *c, uint64_t lin);
void tlb_flush_nonglobal(cpu_t *c);   /* MOV CR3 */
void tlb_retag(cpu_t *c);             /* CR0.WP or AC changed: re-derive the fast-path tags */
void tlb_smap_close(cpu_t *c);
/* string.c */
/* debug.c */
void dbg_update(cpu_t *c);             /* DR0-DR3 / DR7 / CR4.DE changed */
int dbg_exec_hits(cpu_t *c, uint64_t lin);
void dbg_data_access(cpu_t *c, uint64_t lin, int size, int write);
void dbg_io_access(cpu_t *c, uint16_t port, int size);
int dbg_page_watched(cpu_t *c, uint64_t page);        /* EFLAGS.AC cleared under CR4.SMAP at CPL < 3 */
void tlb_retag_cpl(cpu_t *c);         /* the CPL changed: the same, links stay (epoch_switch_cpl) */
void note_code_page(cpu_t *c, uint64_t lin, uint64_t gpa);   /* a block's page was looked up (run.c) */
int pdpte_load(cpu_t *c, int fault);  /* PAE: load the 4 PDPTEs from CR3 (#GP on reserved bits) */
uint64_t guest_tsc(cpu_t *c);         /* the TSC: the host's invariant TSC + this vCPU's offset */
#define APIC_BUS_HZ (128ULL * 1024 * 1024) /* LAPIC timer input clock: bhyve's VLAPIC_BUS_FREQ */
uint8_t *gpa_host(svm_vm_t *vm, uint64_t gpa, uint32_t *gidx);
void code_written(cpu_t *c, uint32_t gidx);
int fetch_translate(cpu_t *c, uint64_t lin, uint64_t *gpa, int fault);
int fetch_insn_bytes(cpu_t *c, uint8_t *buf);   /* <= 15 bytes at RIP, no faults; returns how many */
/* #GP(0) unless CPL <= IOPL or the TSS I/O bitmap allows every port of the access (mmu.c) */
void io_check(cpu_t *c, uint16_t port, int size);
int pio_access(cpu_t *c, uint16_t port, int size, int is_write, uint64_t *val);
int pio_lane_try(cpu_t *c, uint16_t port, int size, int is_write, uint64_t *val);   /* pio_lane.c */
void pio_lanes_free(cpu_t *c);
enum { ACC_W = 1, ACC_U = 2, ACC_X = 4, ACC_SYS = 8,
       ACC_SS = 16,     /* through SS: a non-canonical address is #SS(0), not #GP(0) (SDM Vol 3A 6.15 int 12) */
       ACC_SEGQ = 32 }; /* segment not known here: the instruction's memory operand decides (insn_mem_seg) */

/* system.c */
void update_mode(cpu_t *c);
void load_seg(cpu_t *c, int sreg, uint16_t sel);
void new_stack_check(cpu_t *c, uint16_t nss, int ncpl, int ext, uint32_t *lo, uint32_t *hi);
void seg_cache_limits(cpu_t *c, int sreg);   /* recompute seg_end[][sreg] from the hidden part */
/* #GP(0)/#SS(0), or the linear address when the access is allowed */
uint64_t seg_check(cpu_t *c, int sreg, uint64_t off, int size, int w);
void set_seg_real(cpu_t *c, int sreg, uint16_t sel);
uint64_t get_rflags(cpu_t *c);
void set_rflags(cpu_t *c, uint64_t v);
int msr_read(cpu_t *c, uint32_t msr, uint64_t *v);
int msr_write(cpu_t *c, uint32_t msr, uint64_t v);
void set_cr0(cpu_t *c, uint64_t v);
void set_cr4(cpu_t *c, uint64_t v);
void set_efer(cpu_t *c, uint64_t v);
void cpu_reset(cpu_t *c);
void cpu_do_sipi(cpu_t *c, int vec);
int desc_read(cpu_t *c, uint16_t sel, uint32_t *lo, uint32_t *hi);

/* task.c: hardware task switch (SDM Vol 3A 7.3) to the TSS or through the
 * task gate `sel` (descriptor lo/hi); ret_eip is the outgoing task's EIP */
enum { TS_JMP = 0, TS_CALL = 1, TS_IRET = 2, TS_INT = 3 };
void task_switch(cpu_t *c, uint16_t sel, uint32_t lo, uint32_t hi, int reason, uint64_t ret_eip);

/* cpuid.c */
void do_cpuid(cpu_t *c, uint32_t leaf, uint32_t sub, uint32_t out[4]);

/* lapic.c */
uint32_t lapic_mmio_read(cpu_t *c, uint32_t off);
void lapic_mmio_write(cpu_t *c, uint32_t off, uint32_t v);
int lapic_pending_vector(cpu_t *c);     /* highest deliverable fixed vector or -1 */
void lapic_accept(cpu_t *c, int vec);   /* IRR -> ISR */
void lapic_reset(svm_vm_t *vm, int id, int bsp);
void lapic_msi(svm_vm_t *vm, uint64_t addr, uint32_t data);
void lapic_wake(lapic_t *l);
void lapic_timer_poll(cpu_t *c);        /* owner: fire the timer if it is due */
void lapic_init_reset(lapic_t *l);      /* INIT: SDM 11.4.7.3, keeps the APIC ID and base */
int lapic_msr_read(cpu_t *c, uint32_t msr, uint64_t *v);    /* IA32_TSC_DEADLINE; -1 if not ours */
int lapic_msr_write(cpu_t *c, uint32_t msr, uint64_t v);
void lapic_local_irq(svm_vm_t *vm, int id, int pin, int extint_vec);
uint64_t host_tsc_hz(svm_vm_t *vm);     /* tsc.c */
uint64_t tsc_calibrate(void);
void cpu_pause(cpu_t *c);               /* run.c: PAUSE with pause-loop back-off */

/* jit.c */
void jit_open(cpu_t *c);
void jit_close(cpu_t *c);
void *jit_compile(cpu_t *c, block_t *b);         /* b's native code for RIP c->rip, or NULL */
void *jit_exec(cpu_t *c, void *code);            /* run it; returns the exit's patch site or NULL */
void jit_link(cpu_t *c, void *site, block_t *to);
void jit_jc_insert(cpu_t *c, block_t *b);        /* b's code as the target of indirect exits to c->rip */
void jit_account(cpu_t *c);                      /* after a longjmp out of native code */
int jit_flush_needed(cpu_t *c);                  /* the code buffer is nearly full */
void jit_reset(cpu_t *c);                        /* drop all native code (with the block cache) */
void jit_stats(cpu_t *c, uint64_t *out);         /* blocks translated, fallbacks, code bytes */
/* Native code outside 64-bit mode assumes flat 32-bit segments (jit.c):
 * 32-bit code and stack, CS/DS/SS with base 0 and a 4 GiB limit of the right
 * type, so an offset is the linear address and only the 4 GiB wrap is left
 * to check, which the TLB probe does (an access across it spans two pages).
 * Checked before native code is entered and after each instruction the
 * interpreter runs for it (segment loads), never per access. */
static inline int jit_flat32(const cpu_t *c)
{
    const uint64_t g4 = 1ULL << 32;
    return c->csz == 4 && c->ssz == 4 && !c->long64 &&
           (c->segbase[S_CS] | c->segbase[S_DS] | c->segbase[S_SS]) == 0 && c->seg[S_CS].limit == 0xffffffffu &&
           c->seg_end[0][S_DS] == g4 && c->seg_end[1][S_DS] == g4 &&
           c->seg_end[0][S_SS] == g4 && c->seg_end[1][S_SS] == g4;
}
/* 16-bit code (real mode, 16-bit protected mode; not virtual-8086 mode)
 * whose CS, DS, ES and SS allow 64 KiB: native code adds the segment base
 * at run time and checks each access against the 64 KiB limit. */
static inline int jit_seg16(const cpu_t *c)
{
    const uint64_t k64 = 1ULL << 16;
    return c->csz == 2 && c->ssz == 2 && !c->long64 && !(c->rflags & F_VM) && c->seg[S_CS].limit == 0xffffu &&
           c->seg_end[0][S_DS] == k64 && c->seg_end[1][S_DS] == k64 && c->seg_end[0][S_ES] == k64 &&
           c->seg_end[1][S_ES] == k64 && c->seg_end[0][S_SS] == k64 && c->seg_end[1][S_SS] == k64;
}
static inline int jit_may_enter(const cpu_t *c) { return c->long64 || jit_flat32(c) || jit_seg16(c); }

/* run.c */
void block_cache_flush(cpu_t *c);                /* drop every decoded block and its native code */

/* decode.c, specialize.c */
handler_t specialize(const insn_t *d, int long64);
handler_t fuse_jcc(handler_t first);
void decode_block(cpu_t *c, block_t *b, uint64_t lin, uint64_t gpa, int single);
int insn_mem_seg(cpu_t *c);   /* segment of the memory operand of the instruction at RIP (cold paths) */
extern const char *softvmm_version;

/* flags (alu.c) */
uint64_t flags_materialize(cpu_t *c);
int cond_slow(cpu_t *c, int cc);

#endif
