/*
 * The JIT: hot blocks translated to host x86-64 code, in 64-bit mode and
 * outside it:
 *   - 32-bit code (protected mode with paging off or on, compatibility
 *     mode) while CS, DS and SS are flat (jit_flat32, cpu.h): an offset is
 *     the linear address, and the one limit left, the 4 GiB wrap, is an
 *     access that spans two pages, which the TLB probe sends to the
 *     interpreter.  Memory operands through ES/FS/GS, 16-bit addressing
 *     and everything the interpreter does with segments stay with it.
 *   - 16-bit code while DS, ES, SS and CS have 64 KiB limits (jit_seg16):
 *     each access is checked against 64 KiB and the segment's current base
 *     added at run time (real-mode code changes DS and ES all the time).
 * Both conditions are checked by the dispatcher before it enters native
 * code and after every instruction the interpreter runs for native code
 * (jit_fallback: a segment load), never per instruction.
 *
 * Guest and host are the same ISA, so most integer instructions run as
 * themselves: the translator re-encodes each one with its register
 * operands moved to host scratch registers (loaded from and stored back to
 * svm_cpu.r[]) and its memory operand replaced by the host address of the
 * guest byte, found through the software TLB.  Flags, undefined flags
 * included, then come out exactly as the hardware makes them (the
 * differential tester's oracle is this same hardware), LOCK stays a host
 * LOCK on the shared RAM, and nothing is emulated.
 *
 * The guest's OSZAPC live in the host RFLAGS for as long as native code
 * runs, across chained blocks.  Everything the translator emits between
 * guest instructions therefore leaves the flags alone: effective
 * addresses with LEA, the TLB probe with RORX/SHRX/LEA and a JRCXZ on
 * (page + negated tag), the code-page check with SHLX and JRCXZ.  Flags
 * are moved to and from svm_cpu.rflags only where C runs (entry, exit,
 * calls).
 *
 * Anything else, and every slow path of a native instruction (TLB miss,
 * page crossing, MMIO, a store into a page that holds decoded code), calls
 * the interpreter's handler for that one instruction with RIP, RFLAGS and
 * the registers exact, so faults, exits and the replay of MMIO accesses
 * behave as if the block had been interpreted.
 *
 * Blocks are translated after JIT_THRESHOLD interpreted runs.  Exits to a
 * constant RIP are chained by patching a jump to the successor's code once
 * the dispatcher has found it; the jump is taken while svm_cpu.epoch (the
 * code's linear -> physical mapping, see mmu.c) and the successor page's
 * code generation (its bytes) are what they were when it was patched, or
 * unconditionally when the successor is in the block's own page.  Returns
 * and indirect jumps look their target up in a jump cache with the same
 * checks.  Every exit counts down svm_cpu.jit_budget so that the
 * dispatcher regains control to look at interrupts and the LAPIC timer.
 *
 * Host register use inside generated code:
 *   r15 = svm_cpu *, r14 = 12, r13 = 63, r12 = 31, rbx = 64 - JIT_JC_BITS,
 *   rbp = 64 - TLB_BITS (shift counts for SHRX/SHLX), all callee-saved so
 *   C calls keep them; rax rcx rdx rsi rdi r8-r11 are scratch:
 *   rsi = guest linear address, rdi = TLB addend
 *   (the host address is [rsi+rdi]), r10 = the jtlb entry, r8 = ModRM.reg
 *   operand, r9 = ModRM.rm / opcode register operand, rax/rcx/rdx =
 *   implicit operands (accumulator, CL, rDX).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/mman.h>
#include <unistd.h>
#include "mem.h"
#include "handlers.h"

#define JIT_BYTES (64u << 20)        /* code buffer per vCPU */
#define JIT_SLACK (64u << 10)        /* room always left for one more block */
#define JIT_THRESHOLD 16             /* default; BHIVE_JIT_THRESHOLD overrides */
#define JIT_BUDGET 8192              /* guest instructions per dispatcher visit */

enum { RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11, R12, R13, R14, R15 };

typedef void *(*jit_enter_t)(cpu_t *c, void *code, uint64_t hostflags);

struct jit {
    uint8_t *buf;
    size_t used;
    jit_enter_t enter;
    uint8_t *exit_flags;     /* rax = patch site; merges host OSZAPC into c->rflags */
    uint8_t *exit_noflags;   /* C already holds the flags; returns NULL */
    size_t base_used;        /* end of the shared routines (kept by jit_reset) */
    uint32_t no_gen;         /* what an unpatched exit's generation check reads */
    uint64_t blocks, fallbacks, slowpaths;
    uint64_t runs, exits_direct;      /* jit_exec calls; of them, ended at an unchained direct exit */
    uint64_t *fb_hist;       /* BHIVE_JIT_STATS: fallbacks, then slow paths, by (map, opcode) */
    FILE *perfmap;           /* BHIVE_JIT_PERFMAP: /tmp/perf-PID.map, so perf names native code by guest RIP */
};

/* ---- emitter ------------------------------------------------------------ */
typedef struct { uint8_t *p, *end; int bad; } em_t;
static inline void b1(em_t *e, unsigned v) { if (e->p < e->end) *e->p++ = (uint8_t)v; else e->bad = 1; }
static inline void b4(em_t *e, uint32_t v) { for (int k = 0; k < 4; k++) b1(e, v >> (8 * k)); }
static inline void b8(em_t *e, uint64_t v) { for (int k = 0; k < 8; k++) b1(e, (unsigned)(v >> (8 * k))); }

/* an r/m operand: a register, or [base + index*2^scale + disp] (base/index -1: none) */
typedef struct { int mem, reg, base, index, scale; int32_t disp; } opnd_t;
static inline opnd_t OR(int r) { return (opnd_t){ 0, r, -1, -1, 0, 0 }; }
static inline opnd_t OM(int base, int32_t disp) { return (opnd_t){ 1, 0, base, -1, 0, disp }; }
static inline opnd_t OX(int base, int index, int scale, int32_t disp) { return (opnd_t){ 1, 0, base, index, scale, disp }; }
#define CPU(field) OM(R15, (int32_t)offsetof(cpu_t, field))
#define GREG(n) OM(R15, (int32_t)(offsetof(cpu_t, r) + 8 * (n)))

static void modrm(em_t *e, int regf, opnd_t m)
{
    regf &= 7;
    if (!m.mem) { b1(e, 0xc0 | regf << 3 | (m.reg & 7)); return; }
    if (m.base < 0) {   /* [index*s + disp32] */
        b1(e, 0x04 | regf << 3);
        b1(e, m.scale << 6 | ((m.index < 0 ? 4 : m.index) & 7) << 3 | 5);
        b4(e, (uint32_t)m.disp);
        return;
    }
    int mod = (m.disp == 0 && (m.base & 7) != 5) ? 0 : (m.disp >= -128 && m.disp <= 127) ? 1 : 2;
    if (m.index < 0 && (m.base & 7) != 4) b1(e, mod << 6 | regf << 3 | (m.base & 7));
    else {
        b1(e, mod << 6 | regf << 3 | 4);
        b1(e, m.scale << 6 | ((m.index < 0 ? 4 : m.index) & 7) << 3 | (m.base & 7));
    }
    if (mod == 1) b1(e, (uint8_t)m.disp);
    else if (mod == 2) b4(e, (uint32_t)m.disp);
}

/* [lock] [rep] [66] [REX] opcode... ModRM: `regf` is a register or a /digit */
static void enc(em_t *e, int lock, int rep, int o16, int w, const uint8_t *opc, int nopc, int regf, opnd_t m)
{
    if (lock) b1(e, 0xf0);
    if (rep) b1(e, rep);
    if (o16) b1(e, 0x66);
    int rex = (w ? 8 : 0) | ((regf & 8) ? 4 : 0);
    if (m.mem) rex |= (m.index >= 8 ? 2 : 0) | (m.base >= 8 ? 1 : 0);
    else rex |= (m.reg & 8) ? 1 : 0;
    if (rex) b1(e, 0x40 | rex);
    for (int k = 0; k < nopc; k++) b1(e, opc[k]);
    modrm(e, regf, m);
}
static void op1(em_t *e, int w, uint8_t opc, int regf, opnd_t m) { enc(e, 0, 0, 0, w, &opc, 1, regf, m); }
static void op2(em_t *e, int w, uint8_t opc, int regf, opnd_t m)
{
    uint8_t o[2] = { 0x0f, opc };
    enc(e, 0, 0, 0, w, o, 2, regf, m);
}

/* moves; sized stores keep the bytes above the operand */
static void ld64(em_t *e, int r, opnd_t m) { op1(e, 1, 0x8b, r, m); }
static void ld32(em_t *e, int r, opnd_t m) { op1(e, 0, 0x8b, r, m); }
static void st64(em_t *e, opnd_t m, int r) { op1(e, 1, 0x89, r, m); }
static void st_sized(em_t *e, int sz, opnd_t m, int r)
{
    switch (sz) {
    case 8: case 4: op1(e, 1, 0x89, r, m); break;     /* 32-bit results are already zero-extended */
    case 2: enc(e, 0, 0, 1, 0, (const uint8_t[]){ 0x89 }, 1, r, m); break;
    default: op1(e, 0, 0x88, r, m); break;
    }
}
static void movzx8(em_t *e, int r, opnd_t m) { op2(e, 0, 0xb6, r, m); }
static void movzx16(em_t *e, int r, opnd_t m) { op2(e, 0, 0xb7, r, m); }
static void lea64(em_t *e, int r, opnd_t m) { op1(e, 1, 0x8d, r, m); }
static void lea32(em_t *e, int r, opnd_t m) { op1(e, 0, 0x8d, r, m); }
static void mov_rr64(em_t *e, int dst, int src) { op1(e, 1, 0x89, src, OR(dst)); }
static void mov_imm(em_t *e, int r, uint64_t v)
{
    if (v <= 0xffffffffULL) {                       /* mov r32, imm32 (zero-extends) */
        if (r >= 8) b1(e, 0x41);
        b1(e, 0xb8 + (r & 7)); b4(e, (uint32_t)v);
    } else if ((int64_t)v == (int32_t)v) {          /* mov r64, simm32 */
        op1(e, 1, 0xc7, 0, OR(r)); b4(e, (uint32_t)v);
    } else {
        b1(e, 0x48 | (r >= 8 ? 1 : 0)); b1(e, 0xb8 + (r & 7)); b8(e, v);
    }
}
static void store_imm64(em_t *e, opnd_t m, uint64_t v)
{
    if ((int64_t)v == (int32_t)v) { op1(e, 1, 0xc7, 0, m); b4(e, (uint32_t)v); }
    else { mov_imm(e, RAX, v); st64(e, m, RAX); }
}

/* BMI2, flag-free: RORX dst, src, imm8 / SHRX, SHLX dst, src, count */
static void vex3(em_t *e, int r, int b, int mmmmm, int w, int vvvv, int pp)
{
    b1(e, 0xc4);
    b1(e, ((r & 8) ? 0 : 0x80) | 0x40 | ((b & 8) ? 0 : 0x20) | mmmmm);
    b1(e, (w ? 0x80 : 0) | ((~vvvv & 15) << 3) | pp);
}
static void rorx64(em_t *e, int dst, int src, int imm)
{
    vex3(e, dst, src, 3, 1, 0, 3); b1(e, 0xf0); modrm(e, dst, OR(src)); b1(e, imm);
}
static void shrx64(em_t *e, int dst, int src, int cnt) { vex3(e, dst, src, 2, 1, cnt, 3); b1(e, 0xf7); modrm(e, dst, OR(src)); }
static void shlx32(em_t *e, int dst, int src, int cnt) { vex3(e, dst, src, 2, 0, cnt, 1); b1(e, 0xf7); modrm(e, dst, OR(src)); }
static void shlx64(em_t *e, int dst, int src, int cnt) { vex3(e, dst, src, 2, 1, cnt, 1); b1(e, 0xf7); modrm(e, dst, OR(src)); }

/* branches: rel32 fields to patch once the target is known */
static void jrcxz_over_jmp(em_t *e) { b1(e, 0xe3); b1(e, 5); }   /* skips the 5-byte JMP that follows */
static uint8_t *jmp32(em_t *e) { b1(e, 0xe9); uint8_t *f = e->p; b4(e, 0); return f; }
static uint8_t *jcc32(em_t *e, int cc) { b1(e, 0x0f); b1(e, 0x80 | cc); uint8_t *f = e->p; b4(e, 0); return f; }
static void fix(uint8_t *field, const uint8_t *target)
{
    if (!field || !target) return;
    int32_t rel = (int32_t)(target - (field + 4));
    memcpy(field, &rel, 4);
}
static void jmp_to(em_t *e, const uint8_t *target) { fix(jmp32(e), target); }
/* short forward branches inside one instruction's code */
static uint8_t *jcc8(em_t *e, int cc) { b1(e, 0x70 | cc); uint8_t *f = e->p; b1(e, 0); return f; }
static void fix8(uint8_t *field, const uint8_t *target)
{
    if (field && target - (field + 1) <= 127) *field = (uint8_t)(target - (field + 1));
}
enum { CC_E = 4, CC_NE = 5, CC_AE = 3 };
static void call_abs(em_t *e, const void *fn) { mov_imm(e, RAX, (uint64_t)(uintptr_t)fn); b1(e, 0xff); b1(e, 0xd0); }

/* ---- C side of calls from native code ---------------------------------- */
typedef struct { uint64_t hostflags; uint64_t exit; } jit_ret_t;

static inline void flags_in(cpu_t *c, uint64_t hostflags)
{
    c->rflags = (c->rflags & ~(uint64_t)F_OSZAPC) | (hostflags & F_OSZAPC);
    c->lf_op = LF_NONE;
}
static inline uint64_t flags_out(cpu_t *c, uint64_t hostflags)
{
    return (hostflags & ~(uint64_t)F_OSZAPC) | (flags_materialize(c) & F_OSZAPC);
}

/* One instruction through the interpreter: a slow path or an instruction
 * the translator leaves to it.  `done` instructions of the block ran
 * before it.  Returns the flags to go on with, or exit != 0 when the block
 * must end here (control left the straight line, or the handler asked for
 * the dispatcher: mode change, code write, PAUSE back-off, ...). */
static jit_ret_t jit_fallback(cpu_t *c, const insn_t *i, uint64_t hostflags, uint64_t rip, uint64_t done,
                              uint64_t slow)
{
    flags_in(c, hostflags);
    c->rip = rip;
    c->nrip = rip + i->len;
    uint64_t epoch = c->epoch;
    i->fn(c, i);
    if (slow) c->jit->slowpaths++;
    else c->jit->fallbacks++;
    if (unlikely(c->jit->fb_hist != NULL)) c->jit->fb_hist[(slow ? 1024 : 0) + (((i->map & 3) << 8) | i->op)]++;
    jit_ret_t r = { 0, 0 };
    if (c->brk || c->nrip != rip + i->len || c->epoch != epoch || !jit_may_enter(c)) {
        c->rip = c->nrip;
        c->jit_budget -= (int64_t)(done + i->ninsn);
        r.exit = 1;
        return r;
    }
    r.hostflags = flags_out(c, hostflags);
    return r;
}

/* a native store hit a page that holds decoded code: what the interpreter's
 * mem_write does after the store, then back to the dispatcher */
static void jit_code_written(cpu_t *c, const jtlbe_t *j, uint64_t hostflags, uint64_t next_rip, uint64_t done)
{
    flags_in(c, hostflags);
    c->rip = next_rip;
    c->jit_budget -= (int64_t)done;
    code_written(c, (uint32_t)(j->genp - c->vm->gen));
}

/* ---- the shared routines: enter, exit ------------------------------------- */
static void emit_runtime(struct jit *j)
{
    em_t e = { j->buf, j->buf + 4096, 0 };
    /* enter(c = rdi, code = rsi, hostflags = rdx) */
    j->enter = (jit_enter_t)(void *)e.p;
    static const uint8_t push_saved[] = { 0x53, 0x55, 0x41, 0x54, 0x41, 0x55, 0x41, 0x56, 0x41, 0x57 };
    for (size_t k = 0; k < sizeof(push_saved); k++) b1(&e, push_saved[k]);
    b1(&e, 0x48); b1(&e, 0x83); b1(&e, 0xec); b1(&e, 8);          /* sub rsp, 8: calls see rsp % 16 == 0 */
    mov_rr64(&e, R15, RDI);
    mov_imm(&e, R14, 12); mov_imm(&e, R13, 63); mov_imm(&e, R12, 31); mov_imm(&e, RBX, 64 - JIT_JC_BITS);
    mov_imm(&e, RBP, 64 - TLB_BITS);
    b1(&e, 0x52); b1(&e, 0x9d);                                  /* push rdx; popfq */
    b1(&e, 0xff); b1(&e, 0xe6);                                  /* jmp rsi */
    /* exit with the guest flags in the host's: fold them into c->rflags */
    j->exit_flags = e.p;
    b1(&e, 0x9c); b1(&e, 0x5a);                                  /* pushfq; pop rdx */
    b1(&e, 0x81); b1(&e, 0xe2); b4(&e, F_OSZAPC);                /* and edx, OSZAPC */
    ld64(&e, RCX, CPU(rflags));
    b1(&e, 0x48); b1(&e, 0x81); b1(&e, 0xe1); b4(&e, (uint32_t)~F_OSZAPC);   /* and rcx, ~OSZAPC */
    b1(&e, 0x48); b1(&e, 0x09); b1(&e, 0xd1);                    /* or rcx, rdx */
    st64(&e, CPU(rflags), RCX);
    op1(&e, 0, 0xc6, 0, CPU(lf_op)); b1(&e, LF_NONE);            /* mov byte [lf_op], LF_NONE */
    uint8_t *tail = jmp32(&e);
    j->exit_noflags = e.p;
    b1(&e, 0x31); b1(&e, 0xc0);                                  /* xor eax, eax */
    fix(tail, e.p);
    b1(&e, 0x48); b1(&e, 0x83); b1(&e, 0xc4); b1(&e, 8);          /* add rsp, 8 */
    static const uint8_t pop_saved[] = { 0x41, 0x5f, 0x41, 0x5e, 0x41, 0x5d, 0x41, 0x5c, 0x5d, 0x5b };
    for (size_t k = 0; k < sizeof(pop_saved); k++) b1(&e, pop_saved[k]);
    b1(&e, 0xc3);
    j->base_used = (size_t)(e.p - j->buf + 63) & ~(size_t)63;
    j->used = j->base_used;
}

static void jit_start(cpu_t *c);

/* BHIVE_JIT=0 keeps every vCPU on the interpreter; BHIVE_JIT_THRESHOLD=N
 * translates a block after N interpreted runs (0: at once) */
void jit_open(cpu_t *c)
{
    c->jit = NULL;
    const char *on = getenv("BHIVE_JIT");
    if (on && on[0] == '0') return;
    jit_start(c);
    const char *t = getenv("BHIVE_JIT_THRESHOLD");
    if (t) c->jit_threshold = (uint32_t)strtoul(t, NULL, 0);
}

/* The same per vCPU, from the API: threshold < 0 turns the JIT off. */
void svm_jit_config(svm_cpu_t *c, int threshold)
{
    if (threshold < 0) {
        if (c->jit) { jit_close(c); block_cache_flush(c); }
        return;
    }
    if (!c->jit) jit_start(c);
    c->jit_threshold = (uint32_t)threshold;
}

static void jit_start(cpu_t *c)
{
    unsigned int a, b, cx, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(cx), "=d"(d) : "a"(7), "c"(0));
    if (!(b & (1u << 8))) return;                 /* no BMI2 on this host: interpreter only */
    struct jit *j = calloc(1, sizeof(*j));
    if (!j) return;
    j->buf = mmap(NULL, JIT_BYTES, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                  -1, 0);
    if (j->buf == MAP_FAILED) { free(j); return; }
    c->jit_jc = aligned_alloc(64, sizeof(jit_jc_t) << JIT_JC_BITS);
    if (!c->jit_jc) { munmap(j->buf, JIT_BYTES); free(j); return; }
    emit_runtime(j);
    c->jit = j;
    jit_reset(c);
    const char *st = getenv("BHIVE_JIT_STATS");
    if (st && st[0] == '1') j->fb_hist = calloc(2 * 1024, sizeof(uint64_t));
    const char *pm = getenv("BHIVE_JIT_PERFMAP");
    if (pm && pm[0] == '1') {
        char path[64];
        snprintf(path, sizeof(path), "/tmp/perf-%d.map", (int)getpid());
        j->perfmap = fopen(path, "a");
    }
    c->jit_threshold = JIT_THRESHOLD;
}

/* BHIVE_JIT_STATS=1: the instructions the translator leaves to the
 * interpreter, most frequent first (on stderr: logs/vcpuN.stderr) */
void svm_jit_report(svm_cpu_t *c)
{
    struct jit *j = c->jit;
    if (!j || !j->fb_hist) return;
    fprintf(stderr, "jit: vcpu%d: %llu blocks translated, %llu fallbacks, %llu slow paths, %llu runs "
            "(%llu ended at an unchained exit), %llu block lookups\n", c->vcpuid,
            (unsigned long long)j->blocks, (unsigned long long)j->fallbacks, (unsigned long long)j->slowpaths,
            (unsigned long long)j->runs, (unsigned long long)j->exits_direct, (unsigned long long)c->nlookups);
    for (int part = 0; part < 2; part++) {
        uint64_t *h = j->fb_hist + part * 1024;
        fprintf(stderr, "jit: %s\n", part ? "slow paths of native instructions (TLB miss, page crossing, MMIO)"
                                          : "instructions left to the interpreter");
        for (int n = 0; n < 30; n++) {
            int best = -1;
            for (int k = 0; k < 1024; k++)
                if (h[k] && (best < 0 || h[k] > h[best])) best = k;
            if (best < 0) break;
            fprintf(stderr, "jit:   map %d opcode %02x: %llu\n", best >> 8, best & 0xff, (unsigned long long)h[best]);
            h[best] = 0;
        }
    }
    fflush(stderr);
}

void jit_close(cpu_t *c)
{
    if (!c->jit) return;
    free(c->jit_jc);
    c->jit_jc = NULL;
    free(c->jit->fb_hist);
    if (c->jit->perfmap) fclose(c->jit->perfmap);
    munmap(c->jit->buf, JIT_BYTES);
    free(c->jit);
    c->jit = NULL;
}

int jit_flush_needed(cpu_t *c) { return c->jit && c->jit->used + JIT_SLACK > JIT_BYTES; }
void jit_reset(cpu_t *c)
{
    if (!c->jit) return;
    c->jit->used = c->jit->base_used;
    for (size_t k = 0; k < (1u << JIT_JC_BITS); k++) {
        c->jit_jc[k].nrip = JTAG_INVALID;
        c->jit_jc[k].genp = &c->jit->no_gen;
    }
}

static inline unsigned jc_slot(uint64_t rip)
{
    /* as the generated code computes it: (rip + rotr(rip, 12)) mod 2^JIT_JC_BITS */
    uint64_t rot = (rip >> 12) | (rip << 52);
    return (unsigned)((rip + rot) & ((1u << JIT_JC_BITS) - 1));
}

void jit_jc_insert(cpu_t *c, block_t *b)
{
    void *code = block_jit(b, c->rip);
    if (!code) return;
    jit_jc_t *j = &c->jit_jc[jc_slot(c->rip)];
    j->nrip = -(int64_t)c->rip;
    j->code = code;
    j->nepoch = -(int32_t)(uint32_t)c->epoch;
    j->genp = &c->vm->gen[b->gidx];
    j->ngen = -(int32_t)b->gen;
}

void jit_stats(cpu_t *c, uint64_t *out)
{
    struct jit *j = c->jit;
    out[0] = j ? j->blocks : 0; out[1] = j ? j->fallbacks + j->slowpaths : 0; out[2] = j ? j->used : 0;
}

void *jit_exec(cpu_t *c, void *code)
{
    struct jit *j = c->jit;
    c->jit_budget = JIT_BUDGET;
    uint64_t hf = (__builtin_ia32_readeflags_u64() & ~(uint64_t)F_OSZAPC) | (flags_materialize(c) & F_OSZAPC);
    c->jit_active = 1;
    void *site = j->enter(c, code, hf);
    c->jit_active = 0;
    j->runs++;
    j->exits_direct += site != NULL;
    c->icount += (uint64_t)(JIT_BUDGET - c->jit_budget);
    return site;
}

void jit_account(cpu_t *c)
{
    if (!c->jit_active) return;
    c->jit_active = 0;
    c->icount += (uint64_t)(JIT_BUDGET - c->jit_budget);
}

/* Chained exit layout (see emit_exit): the patch site is the LEA whose
 * displacement is -epoch; then the successor's generation word and
 * -generation, then the JMP to it. */
#define SITE_EPOCH 2         /* lea ecx, [rcx + disp32]: 8D 89 disp32 */
#define SITE_GENP 15         /* jrcxz +5; jmp unchained; mov rcx, imm64: 48 B9 imm64 */
#define SITE_GEN 27          /* mov ecx, [rcx]; lea ecx, [rcx + disp32] */
#define SITE_JMP_REL 39      /* jrcxz +5; jmp unchained; jmp rel32 */
#define SITE_END 43

void jit_link(cpu_t *c, void *site, block_t *to)
{
    void *code = block_jit(to, c->rip);
    if (!code) return;
    uint8_t *s = site;
    if (s[0] == 0xe9) {   /* a successor in the same page: the jump alone */
        int32_t rel = (int32_t)((uint8_t *)code - (s + 5));
        memcpy(s + 1, &rel, 4);
        return;
    }
    int32_t d = -(int32_t)(uint32_t)c->epoch;
    memcpy(s + SITE_EPOCH, &d, 4);
    const uint32_t *genp = &c->vm->gen[to->gidx];
    memcpy(s + SITE_GENP, &genp, 8);
    int32_t g = -(int32_t)to->gen;
    memcpy(s + SITE_GEN, &g, 4);
    int32_t rel = (int32_t)((uint8_t *)code - (s + SITE_END));
    memcpy(s + SITE_JMP_REL, &rel, 4);
}

/* ---- translation ---------------------------------------------------------- */
/* How an instruction uses its operands, for the native path. */
enum { U_NONE = 0, U_R = 1, U_W = 2, U_RW = 3 };
enum { IMP_RAX_R = 1, IMP_RAX_W = 2, IMP_RDX_R = 4, IMP_RDX_W = 8, IMP_CL = 16 };
typedef struct {
    uint8_t opc[2]; uint8_t nopc;
    uint8_t reg_use;     /* ModRM.reg as a register operand (U_NONE: a /digit or no ModRM) */
    uint8_t rm_use;      /* r/m operand (register, memory, or the opcode's register) */
    uint8_t ro;          /* register in opcode bits 2:0 (r/m operand, no ModRM) */
    uint8_t modrm;       /* has a ModRM byte */
    uint8_t imp;         /* IMP_* */
    uint8_t imm;         /* immediate bytes */
    uint8_t msize;       /* size of the memory operand */
    uint8_t rmsize;      /* size of the r/m register operand (stores) */
    uint8_t rep;         /* mandatory F3 */
} native_t;

static int immz(int osz) { return osz == 2 ? 2 : 4; }

/* Fill n for an instruction the host can run as itself, or return 0. */
static int classify(const insn_t *d, native_t *n, int long64)
{
    memset(n, 0, sizeof(*n));
    int op = d->op, map = d->map & 0x7f, osz = d->osz, ext = d->ext;
    n->msize = n->rmsize = (uint8_t)osz;
    n->opc[0] = (uint8_t)op; n->nopc = 1;
    if (d->rep && !(map == 1 && (op == 0xb8 || op == 0xbc || op == 0xbd) && d->rep == 0xf3)) return 0;
    if (d->lock && d->mod == 3) return 0;
    if (d->fn == h_ud || d->fn == h_unhandled) return 0;
    if (map == 0) {
        if (op < 0x40 && (op & 7) < 6) {
            int cmp = (op >> 3) == 7;
            switch (op & 7) {
            case 0: case 1: n->modrm = 1; n->reg_use = U_R; n->rm_use = cmp ? U_R : U_RW; return 1;
            case 2: case 3: n->modrm = 1; n->reg_use = cmp ? U_R : U_RW; n->rm_use = U_R; return 1;
            case 4: n->imp = IMP_RAX_R | (cmp ? 0 : IMP_RAX_W); n->imm = 1; return 1;
            case 5: n->imp = IMP_RAX_R | (cmp ? 0 : IMP_RAX_W); n->imm = (uint8_t)immz(osz); return 1;
            }
        }
        switch (op) {
        case 0x63: if (!long64) return 0; n->modrm = 1; n->reg_use = U_W; n->rm_use = U_R; n->msize = osz == 8 ? 4 : osz; return 1;
        case 0x69: n->modrm = 1; n->reg_use = U_W; n->rm_use = U_R; n->imm = (uint8_t)immz(osz); return 1;
        case 0x6b: n->modrm = 1; n->reg_use = U_W; n->rm_use = U_R; n->imm = 1; return 1;
        case 0x80: case 0x81: case 0x83:
            n->modrm = 1; n->rm_use = ext == 7 ? U_R : U_RW; n->imm = op == 0x81 ? (uint8_t)immz(osz) : 1; return 1;
        case 0x84: case 0x85: n->modrm = 1; n->reg_use = U_R; n->rm_use = U_R; return 1;
        case 0x86: case 0x87: n->modrm = 1; n->reg_use = U_RW; n->rm_use = U_RW; return 1;
        case 0x88: case 0x89: n->modrm = 1; n->reg_use = U_R; n->rm_use = U_W; return 1;
        case 0x8a: case 0x8b: n->modrm = 1; n->reg_use = U_W; n->rm_use = U_R; return 1;
        case 0x98: n->imp = IMP_RAX_R | IMP_RAX_W; return 1;
        case 0x99: n->imp = IMP_RAX_R | IMP_RDX_W; return 1;
        case 0xa8: n->imp = IMP_RAX_R; n->imm = 1; return 1;
        case 0xa9: n->imp = IMP_RAX_R; n->imm = (uint8_t)immz(osz); return 1;
        case 0xc0: case 0xc1: if (ext == 6) return 0; n->modrm = 1; n->rm_use = U_RW; n->imm = 1; return 1;
        case 0xd0: case 0xd1: if (ext == 6) return 0; n->modrm = 1; n->rm_use = U_RW; return 1;
        case 0xd2: case 0xd3: if (ext == 6) return 0; n->modrm = 1; n->rm_use = U_RW; n->imp = IMP_CL; return 1;
        case 0xc6: case 0xc7: if (ext) return 0; n->modrm = 1; n->rm_use = U_W; n->imm = op == 0xc6 ? 1 : (uint8_t)immz(osz); return 1;
        case 0xf6: case 0xf7:
            n->modrm = 1;
            switch (ext) {
            case 0: case 1: n->rm_use = U_R; n->imm = op == 0xf6 ? 1 : (uint8_t)immz(osz); return 1;
            case 2: case 3: n->rm_use = U_RW; return 1;
            case 4: case 5:
                n->rm_use = U_R;
                n->imp = IMP_RAX_R | IMP_RAX_W | (op == 0xf7 ? IMP_RDX_W : 0);
                return 1;
            default: return 0;                    /* DIV/IDIV: #DE is the interpreter's */
            }
        case 0xfe: case 0xff:
            if (ext > 1) return 0;
            n->modrm = 1; n->rm_use = U_RW; return 1;
        }
        if (op >= 0xb0 && op <= 0xbf) {
            n->ro = 1; n->rm_use = U_W; n->imm = op < 0xb8 ? 1 : (uint8_t)osz;
            n->opc[0] = (uint8_t)(op & ~7);
            return 1;
        }
        if (op >= 0x91 && op <= 0x97 && d->fn != h_nop) {
            n->ro = 1; n->rm_use = U_RW; n->imp = IMP_RAX_R | IMP_RAX_W; n->opc[0] = 0x90;
            return 1;
        }
        return 0;
    }
    if (map != 1) return 0;
    n->opc[0] = 0x0f; n->opc[1] = (uint8_t)op; n->nopc = 2;
    if (op >= 0x40 && op <= 0x4f) { n->modrm = 1; n->reg_use = U_RW; n->rm_use = U_R; return 1; }
    if (op >= 0x90 && op <= 0x9f) { n->modrm = 1; n->rm_use = U_W; n->msize = n->rmsize = 1; return 1; }
    if (op >= 0xc8 && op <= 0xcf) { n->ro = 1; n->rm_use = U_RW; n->opc[1] = 0xc8; return 1; }
    switch (op) {
    case 0xa3: if (d->mod != 3) return 0; n->modrm = 1; n->reg_use = U_R; n->rm_use = U_R; return 1;
    case 0xab: case 0xb3: case 0xbb:
        if (d->mod != 3) return 0;   /* the bit offset reaches beyond the operand: interpreter */
        n->modrm = 1; n->reg_use = U_R; n->rm_use = U_RW; return 1;
    case 0xba: if (ext < 4) return 0; n->modrm = 1; n->rm_use = ext == 4 ? U_R : U_RW; n->imm = 1; return 1;
    case 0xa4: case 0xac: n->modrm = 1; n->reg_use = U_R; n->rm_use = U_RW; n->imm = 1; return 1;
    case 0xa5: case 0xad: n->modrm = 1; n->reg_use = U_R; n->rm_use = U_RW; n->imp = IMP_CL; return 1;
    case 0xaf: n->modrm = 1; n->reg_use = U_RW; n->rm_use = U_R; return 1;
    case 0xb0: case 0xb1: n->modrm = 1; n->reg_use = U_R; n->rm_use = U_RW; n->imp = IMP_RAX_R | IMP_RAX_W; return 1;
    case 0xb6: case 0xbe: n->modrm = 1; n->reg_use = U_W; n->rm_use = U_R; n->msize = n->rmsize = 1; return 1;
    case 0xb7: case 0xbf: n->modrm = 1; n->reg_use = U_W; n->rm_use = U_R; n->msize = n->rmsize = 2; return 1;
    case 0xbc: case 0xbd: n->modrm = 1; n->reg_use = U_RW; n->rm_use = U_R; n->rep = d->rep; return 1;
    case 0xb8: if (d->rep != 0xf3) return 0; n->modrm = 1; n->reg_use = U_W; n->rm_use = U_R; n->rep = 0xf3; return 1;
    case 0xc0: case 0xc1: n->modrm = 1; n->reg_use = U_RW; n->rm_use = U_RW; return 1;
    }
    return 0;
}

#define STUB_FROM 6   /* jumps to one slow path: two probes (CALL m) with their 16-bit limit checks, DIV's */
typedef struct {
    em_t e;
    cpu_t *c;
    uint64_t start;          /* the block's linear RIP */
    int m32;                 /* 32-bit code under flat segments (jit_flat32) */
    int m16;                 /* 16-bit code under 64 KiB segments (jit_seg16) */
    uint64_t csbase;         /* CS base the block runs under (16-bit code: RIP is IP) */
    int seg_pending;         /* 16-bit code: the segment of the access emit_probe checks next, or -1 */
    uint64_t rip;            /* of the instruction being translated */
    uint32_t done;           /* instructions of the block before it */
    /* out-of-line stubs, emitted after the body */
    struct stub { uint8_t kind, next_reg; const insn_t *i; uint64_t rip; uint32_t done; uint8_t *from[STUB_FROM]; uint8_t *cont; } st[2 * BLK_MAX + 8];
    int nst;
} tx_t;
enum { ST_SLOWPATH, ST_FALLBACK, ST_CODEWRITE };

static void stub_from(tx_t *t, struct stub *s, uint8_t *jump)
{
    int f = 0;
    while (f < STUB_FROM && s->from[f]) f++;
    if (f == STUB_FROM) { t->e.bad = 1; return; }
    s->from[f] = jump;
}

static struct stub *new_stub(tx_t *t, int kind, const insn_t *i)
{
    if (t->nst >= (int)(sizeof(t->st) / sizeof(t->st[0]))) { t->e.bad = 1; return &t->st[0]; }
    struct stub *s = &t->st[t->nst++];
    memset(s, 0, sizeof(*s));
    s->kind = (uint8_t)kind; s->i = i; s->rip = t->rip; s->done = t->done;
    return s;
}

/* the guest register behind a decoded register number (0x10|n = AH..BH) */
static opnd_t greg(int r) { return (r & 0x10) ? OM(R15, (int32_t)(offsetof(cpu_t, r) + 8 * (r & 3) + 1)) : GREG(r); }
/* 8- and 16-bit operands are loaded at their size: a load wider than the
 * narrow store of the result before it would wait for that store to retire
 * instead of forwarding from it.  32-bit ones whole: their results are
 * stored as 64 bits, which keeps the upper half an instruction leaves alone
 * (CMPXCHG r32 that fails to match). */
static void load_greg(em_t *e, int host, int r, int sz)
{
    if (sz == 1) movzx8(e, host, greg(r));
    else if (sz == 2) movzx16(e, host, GREG(r & 15));
    else ld64(e, host, GREG(r & 15));
}

/* rsi = linear address of the memory operand (64-bit mode: only FS/GS have a base) */
static void emit_ea(tx_t *t, const insn_t *d, int with_seg)
{
    em_t *e = &t->e;
    if (d->base == EA_RIP) {
        mov_imm(e, RSI, t->rip + d->len + (uint64_t)(int64_t)d->disp);
    } else {
        int base = d->base < 16 ? RAX : -1, index = d->index < 16 ? RCX : -1;
        if (base >= 0) ld64(e, RAX, GREG(d->base));
        if (index >= 0) ld64(e, RCX, GREG(d->index));
        if (base < 0 && index < 0) mov_imm(e, RSI, (uint64_t)(int64_t)d->disp);
        else lea64(e, RSI, OX(base, index, d->scale, d->disp));
    }
    if (d->asz == 4) op1(e, 0, 0x89, RSI, OR(RSI));      /* mov esi, esi */
    else if (d->asz == 2) movzx16(e, RSI, OR(RSI));      /* movzx esi, si */
    if (t->m16) { if (with_seg) t->seg_pending = d->seg; return; }
    if (with_seg && (d->seg == S_FS || d->seg == S_GS)) {
        ld64(e, RAX, OM(R15, (int32_t)(offsetof(cpu_t, segbase) + 8 * d->seg)));
        lea64(e, RSI, OX(RSI, RAX, 0, 0));
    }
}

/* TLB probe for [rsi, rsi+size): hit -> rdi = addend, r10 = jtlb entry;
 * miss -> the stub's fallback.  Flag-free (see the file comment). */
static void emit_probe(tx_t *t, int size, int write, struct stub *s)
{
    em_t *e = &t->e;
    if (t->seg_pending >= 0) {
        /* 16-bit code: rsi is an offset into a segment with a 64 KiB limit
         * (jit_seg16): past it, the interpreter raises #GP/#SS; else the
         * base (whatever it is now) makes it linear, mod 4 GiB as lin_acc */
        int seg = t->seg_pending;
        t->seg_pending = -1;
        lea64(e, RCX, OM(RSI, size - 1));
        mov_imm(e, RAX, 16);
        shrx64(e, RCX, RCX, RAX);
        jrcxz_over_jmp(e);
        stub_from(t, s, jmp32(e));
        ld64(e, RAX, OM(R15, (int32_t)(offsetof(cpu_t, segbase) + 8 * seg)));
        lea32(e, RSI, OX(RSI, RAX, 0, 0));
    }
    rorx64(e, RAX, RSI, 12);
    rorx64(e, RCX, RSI, 20);
    lea64(e, RAX, OX(RAX, RCX, 0, 0));
    rorx64(e, RCX, RSI, 28);
    lea64(e, RAX, OX(RAX, RCX, 0, 0));
    shlx64(e, RAX, RAX, RBP);                                  /* keep the low TLB_BITS: the slot */
    shrx64(e, RAX, RAX, RBP);
    _Static_assert(sizeof(jtlbe_t) == 32, "jtlbe_t is indexed as slot * 32");
    lea64(e, RAX, OX(-1, RAX, 2, 0));                          /* rax = slot * 4 */
    lea64(e, R10, OX(R15, RAX, 3, (int32_t)offsetof(cpu_t, jtlb)));
    lea64(e, RDX, OM(RSI, size - 1));
    shrx64(e, RDX, RDX, R14);                                  /* page of the last byte */
    ld64(e, RCX, OM(R10, write ? (int32_t)offsetof(jtlbe_t, jtag_w) : (int32_t)offsetof(jtlbe_t, jtag_r)));
    lea64(e, RCX, OX(RCX, RDX, 0, 0));
    jrcxz_over_jmp(e);
    stub_from(t, s, jmp32(e));
    ld64(e, RDI, OM(R10, (int32_t)offsetof(jtlbe_t, addend)));
}

/* After a native store: a page holding decoded code takes the slow way.
 * The store completed the instruction, so the dispatcher goes on at
 * `next` (a constant), or at the RIP in r9 when next_reg (indirect CALL). */
static void emit_code_check(tx_t *t, const insn_t *d, uint64_t next, int next_reg)
{
    em_t *e = &t->e;
    ld64(e, RCX, OM(R10, (int32_t)offsetof(jtlbe_t, genp)));
    ld32(e, RCX, OM(RCX, 0));
    shlx32(e, RCX, RCX, R12);                                  /* bit 0 -> bit 31, the rest shifted out */
    jrcxz_over_jmp(e);
    struct stub *s = new_stub(t, ST_CODEWRITE, d);
    s->rip = next; s->next_reg = (uint8_t)next_reg; s->done = t->done + d->ninsn;
    s->from[0] = jmp32(e);
}

/* One instruction the host runs as itself (classify said how). */
static void emit_native(tx_t *t, const insn_t *d, const native_t *n, struct stub *s)
{
    em_t *e = &t->e;
    int mem = n->modrm && d->mod != 3;
    int osz = d->osz, byteop = osz == 1;
    if (mem) {
        emit_ea(t, d, 1);
        emit_probe(t, n->msize, (n->rm_use & U_W) != 0, s);
    }
    /* 8- and 16-bit register operands: unless one of them is AH..BH, the
     * whole register is loaded and stored, the host's narrow operation
     * keeping its upper bits -- a narrow store followed by the next
     * instruction's load of the register would not forward.  A written-only
     * operand needs no load otherwise: full-width results replace it,
     * 32-bit ones zero-extend, AH..BH are stored at their byte. */
    int rmreg = d->rm, rmr = !mem && (n->modrm || n->ro);
    int whole = !((n->reg_use && (d->reg & 0x10)) || (rmr && (rmreg & 0x10)));
    if (n->imp & (IMP_RAX_R | IMP_RAX_W)) {
        if (whole) ld64(e, RAX, GREG(R_RAX));
        else load_greg(e, RAX, R_RAX, osz);
    }
    if (n->imp & IMP_CL) load_greg(e, RCX, R_RCX, 1);
    if (n->imp & (IMP_RDX_R | IMP_RDX_W)) ld64(e, RDX, GREG(R_RDX));
    if ((n->reg_use & U_R) || (whole && (n->reg_use & U_W) && osz <= 2)) {
        if (whole) ld64(e, R8, GREG(d->reg & 15));
        else load_greg(e, R8, d->reg, osz);
    }
    if (rmr && ((n->rm_use & U_R) || (whole && (n->rm_use & U_W) && n->rmsize <= 2))) {
        if (whole) ld64(e, R9, GREG(rmreg & 15));
        else load_greg(e, R9, rmreg, n->rmsize);
    }
    /* the instruction itself */
    opnd_t rmop = mem ? OX(RSI, RDI, 0, 0) : OR(R9);
    int regf = n->reg_use ? R8 : d->ext;
    int o16 = osz == 2 && !byteop;
    int w = osz == 8;
    if (n->ro) {
        if (o16) b1(e, 0x66);
        b1(e, 0x41 | (w ? 8 : 0));                                /* REX.B: r9 */
        if (n->nopc == 2) b1(e, 0x0f);
        b1(e, n->opc[n->nopc - 1] + (R9 & 7));
    } else if (n->modrm) {
        enc(e, d->lock, n->rep, o16, w, n->opc, n->nopc, regf, rmop);
    } else {
        /* accumulator forms without ModRM (ALU/TEST imm, CBW/CWD) */
        if (o16) b1(e, 0x66);
        if (w) b1(e, 0x48);
        for (int k = 0; k < n->nopc; k++) b1(e, n->opc[k]);
    }
    switch (n->imm) {
    case 1: b1(e, (uint8_t)d->imm); break;
    case 2: b1(e, (uint8_t)d->imm); b1(e, (uint8_t)(d->imm >> 8)); break;
    case 4: b4(e, (uint32_t)d->imm); break;
    case 8: b8(e, d->imm); break;
    }
    /* write back: implicit, then ModRM.reg, then r/m (the order the hardware's last write wins in) */
    if (n->imp & IMP_RAX_W)
        st_sized(e, whole ? 8 : byteop && d->op != 0xf6 ? 1 : (d->op == 0xf6 ? 2 : osz), GREG(R_RAX), RAX);
    if (n->imp & IMP_RDX_W) st_sized(e, whole ? 8 : osz, GREG(R_RDX), RDX);
    if (n->reg_use & U_W) {
        if (d->reg & 0x10) st_sized(e, 1, greg(d->reg), R8);
        else st_sized(e, whole && osz <= 2 ? 8 : osz, GREG(d->reg & 15), R8);
    }
    if (rmr && (n->rm_use & U_W)) {
        if (rmreg & 0x10) st_sized(e, 1, greg(rmreg), R9);
        else st_sized(e, whole && n->rmsize <= 2 ? 8 : n->rmsize, GREG(rmreg & 15), R9);
    }
    if (mem && (n->rm_use & U_W)) emit_code_check(t, d, t->rip + d->len, 0);
}

/* DIV / IDIV r/m: the host's, after a check (under PUSHFQ/POPFQ, so the
 * guest flags reach the division intact) that it cannot raise #DE, which
 * the interpreter delivers.  IDIV runs natively only for a dividend that
 * fits its low half (the CQO/CDQ case) and not MIN / -1. */
static void emit_div(tx_t *t, const insn_t *d, struct stub *s)
{
    em_t *e = &t->e;
    int osz = d->osz, w = osz == 8, mem = d->mod != 3;
    if (mem) { emit_ea(t, d, 1); emit_probe(t, osz, 0, s); }
    ld64(e, RAX, GREG(R_RAX));
    ld64(e, RDX, GREG(R_RDX));
    opnd_t src = mem ? OX(RSI, RDI, 0, 0) : OR(R9);
    if (!mem) ld64(e, R9, GREG(d->rm));
    b1(e, 0x9c);                                               /* pushfq */
    /* r11 = divisor, zero-extended (DIV) */
    if (osz == 2) movzx16(e, R11, src);
    else op1(e, w, 0x8b, R11, src);
    uint8_t *slow[4] = { 0 };
    if (d->ext == 6) {
        /* #DE iff high half >= divisor (covers divisor 0) */
        if (osz == 2) movzx16(e, RCX, OR(RDX));
        else op1(e, w, 0x8b, RCX, OR(RDX));
        op1(e, 1, 0x39, R11, OR(RCX));                             /* cmp rcx, r11 */
        slow[0] = jcc8(e, CC_AE);
    } else {
        op1(e, w, 0x8b, RCX, OR(RAX));                             /* rcx = low half */
        op1(e, w, 0xc1, 7, OR(RCX)); b1(e, osz * 8 - 1);           /* sar rcx, 63/31 */
        op1(e, w, 0x39, RDX, OR(RCX));                             /* cmp rcx, rdx: sign extension? */
        slow[0] = jcc8(e, CC_NE);
        op1(e, w, 0x85, R11, OR(R11));                             /* test r11, r11 */
        slow[1] = jcc8(e, CC_E);
        op1(e, w, 0x83, 7, OR(R11)); b1(e, 0xff);                  /* cmp r11, -1 */
        uint8_t *ok = jcc8(e, CC_NE);
        if (w) { mov_imm(e, RCX, 1ULL << 63); op1(e, 1, 0x39, RCX, OR(RAX)); }
        else { b1(e, 0x3d); b4(e, 0x80000000u); }                  /* cmp eax, 0x80000000 */
        slow[2] = jcc8(e, CC_E);
        fix8(ok, e->p);
    }
    b1(e, 0x9d);                                               /* popfq */
    enc(e, 0, 0, osz == 2, w, (const uint8_t[]){ 0xf7 }, 1, d->ext, src);
    st_sized(e, osz, GREG(R_RAX), RAX);
    st_sized(e, osz, GREG(R_RDX), RDX);
    b1(e, 0xeb); uint8_t *over = e->p; b1(e, 0);
    for (int k = 0; k < 4; k++) fix8(slow[k], e->p);
    b1(e, 0x9d);                                               /* popfq */
    stub_from(t, s, jmp32(e));
    fix8(over, e->p);
}

/* LEA: the offset, no memory access */
static void emit_lea(tx_t *t, const insn_t *d)
{
    emit_ea(t, d, 0);
    int sz = d->osz;
    if (sz == 4) op1(&t->e, 0, 0x89, RSI, OR(RSI));
    st_sized(&t->e, sz, GREG(d->reg & 15), RSI);
}

/* count `count` instructions off the budget; with `check`, returns the
 * jump (to be fixed) taken when it ran out */
static uint8_t *emit_budget(tx_t *t, uint32_t count, int check)
{
    em_t *e = &t->e;
    ld64(e, RCX, CPU(jit_budget));
    lea64(e, RCX, OM(RCX, -(int32_t)count));
    st64(e, CPU(jit_budget), RCX);
    if (!check) return NULL;
    shrx64(e, RCX, RCX, R13);                                  /* 1 when the budget went negative */
    jrcxz_over_jmp(e);
    return jmp32(e);
}

/* budget and chaining for an exit to a constant RIP (after `count`
 * instructions of the block); unchained exits set c->rip and return the
 * patch site to the dispatcher */
static void emit_exit(tx_t *t, uint64_t target, uint32_t count)
{
    em_t *e = &t->e;
    struct jit *j = t->c->jit;
    uint8_t *out1 = emit_budget(t, count, 1);
    if ((((target + t->csbase) ^ (t->start + t->csbase)) & ~0xfffULL) == 0) {
        /* A successor in this block's page: reached through the same
         * translation, and its bytes change only with this block's (whose
         * own stores leave native code at once), so it needs no epoch or
         * generation check -- loops run on the budget check alone. */
        uint8_t *site = e->p;
        uint8_t *link = jmp32(e);                              /* to the successor (patched) */
        fix(out1, e->p); fix(link, e->p);
        store_imm64(e, CPU(rip), target);
        b1(e, 0x48); b1(e, 0x8d); b1(e, 0x05);                 /* lea rax, [rip + site - next] */
        b4(e, (uint32_t)(int32_t)(site - (e->p + 4)));
        jmp_to(e, j->exit_flags);
        return;
    }
    ld32(e, RCX, CPU(epoch));
    uint8_t *site = e->p;
    b1(e, 0x8d); b1(e, 0x89); b4(e, 0);                        /* lea ecx, [rcx - epoch] (patched) */
    jrcxz_over_jmp(e);
    uint8_t *out2 = jmp32(e);
    b1(e, 0x48); b1(e, 0xb9); b8(e, (uint64_t)(uintptr_t)&j->no_gen);   /* mov rcx, genp (patched) */
    b1(e, 0x8b); b1(e, 0x09);                                  /* mov ecx, [rcx] */
    b1(e, 0x8d); b1(e, 0x89); b4(e, 0);                        /* lea ecx, [rcx - gen] (patched) */
    jrcxz_over_jmp(e);
    uint8_t *out3 = jmp32(e);
    uint8_t *link = jmp32(e);                                  /* to the successor (patched) */
    uint8_t *unchained = e->p;
    fix(out1, unchained); fix(out2, unchained); fix(out3, unchained); fix(link, unchained);
    store_imm64(e, CPU(rip), target);
    /* lea rax, [rip + site - next] */
    b1(e, 0x48); b1(e, 0x8d); b1(e, 0x05);
    int32_t rel = (int32_t)(site - (e->p + 4));
    b4(e, (uint32_t)rel);
    jmp_to(e, j->exit_flags);
    if (!e->bad && site + SITE_END != unchained) e->bad = 1;   /* the layout jit_link patches */
}

/* an exit to the RIP in `reg` (returns, indirect jumps): straight to the
 * target's code when the jump cache knows it in this epoch, else the
 * dispatcher finds it */
static void emit_exit_indirect(tx_t *t, int reg, uint32_t count)
{
    em_t *e = &t->e;
    struct jit *j = t->c->jit;
    if (reg != RAX) mov_rr64(e, RAX, reg);
    st64(e, CPU(rip), RAX);
    uint8_t *out1 = emit_budget(t, count, 1);
    _Static_assert(sizeof(jit_jc_t) == 32, "jit_jc_t is indexed as slot * 32");
    rorx64(e, RCX, RAX, 12);
    lea64(e, RCX, OX(RAX, RCX, 0, 0));
    shlx64(e, RCX, RCX, RBX);
    shrx64(e, RCX, RCX, RBX);                                  /* the slot */
    lea64(e, RCX, OX(-1, RCX, 2, 0));
    ld64(e, RDX, CPU(jit_jc));
    lea64(e, RDX, OX(RDX, RCX, 3, 0));
    ld64(e, RCX, OM(RDX, (int32_t)offsetof(jit_jc_t, nrip)));
    lea64(e, RCX, OX(RCX, RAX, 0, 0));
    jrcxz_over_jmp(e);
    uint8_t *out2 = jmp32(e);
    ld32(e, RCX, CPU(epoch));
    ld32(e, R11, OM(RDX, (int32_t)offsetof(jit_jc_t, nepoch)));
    lea32(e, RCX, OX(RCX, R11, 0, 0));
    jrcxz_over_jmp(e);
    uint8_t *out3 = jmp32(e);
    ld64(e, RCX, OM(RDX, (int32_t)offsetof(jit_jc_t, genp)));
    ld32(e, RCX, OM(RCX, 0));
    ld32(e, R11, OM(RDX, (int32_t)offsetof(jit_jc_t, ngen)));
    lea32(e, RCX, OX(RCX, R11, 0, 0));
    jrcxz_over_jmp(e);
    uint8_t *out4 = jmp32(e);
    op1(e, 0, 0xff, 4, OM(RDX, (int32_t)offsetof(jit_jc_t, code)));   /* jmp [rdx + code] */
    uint8_t *out = e->p;
    fix(out1, out); fix(out2, out); fix(out3, out); fix(out4, out);
    mov_imm(e, RAX, 0);
    jmp_to(e, j->exit_flags);
}

/* PUSH of the value in `reg` to [rsp-8] ([esp-4] in flat 32-bit code, ESP
 * wrapping at 4 GiB as SS.B=1 makes it): the store first, RSP after it
 * (precise on #PF); `next`/`next_reg`: where the instruction goes on */
static void emit_push(tx_t *t, const insn_t *d, int reg, struct stub *s, uint64_t next, int next_reg)
{
    em_t *e = &t->e;
    int w = t->m32 ? 4 : 8;
    if (reg != R8) mov_rr64(e, R8, reg);
    if (t->m16) {   /* SP wraps at 64 KiB; r11 keeps it while rsi becomes SS.base + SP */
        movzx16(e, RSI, GREG(R_RSP));
        lea32(e, RSI, OM(RSI, -2));
        movzx16(e, RSI, OR(RSI));
        op1(e, 0, 0x89, RSI, OR(R11));
        t->seg_pending = S_SS;
        emit_probe(t, 2, 1, s);
        st_sized(e, 2, OX(RSI, RDI, 0, 0), R8);
        st_sized(e, 2, GREG(R_RSP), R11);
        emit_code_check(t, d, next, next_reg);
        return;
    }
    if (t->m32) { ld32(e, RSI, GREG(R_RSP)); lea32(e, RSI, OM(RSI, -4)); }
    else { ld64(e, RSI, GREG(R_RSP)); lea64(e, RSI, OM(RSI, -8)); }
    emit_probe(t, w, 1, s);
    op1(e, w == 8, 0x89, R8, OX(RSI, RDI, 0, 0));
    st64(e, GREG(R_RSP), RSI);                                 /* 32-bit: zero-extended, as sp_set() */
    emit_code_check(t, d, next, next_reg);
}

/* rax = [rsp]; rsp += 8 + extra (32-bit code: eax = [esp], 4 + extra) */
static void emit_pop(tx_t *t, int extra, struct stub *s)
{
    em_t *e = &t->e;
    int w = t->m32 ? 4 : 8;
    if (t->m16) {   /* ax = [SS:SP]; SP += 2 + extra, mod 64 KiB */
        movzx16(e, RSI, GREG(R_RSP));
        op1(e, 0, 0x89, RSI, OR(R11));
        t->seg_pending = S_SS;
        emit_probe(t, 2, 0, s);
        movzx16(e, RAX, OX(RSI, RDI, 0, 0));
        lea32(e, R11, OM(R11, 2 + extra));
        st_sized(e, 2, GREG(R_RSP), R11);
        return;
    }
    if (t->m32) ld32(e, RSI, GREG(R_RSP));
    else ld64(e, RSI, GREG(R_RSP));
    emit_probe(t, w, 0, s);
    op1(e, w == 8, 0x8b, RAX, OX(RSI, RDI, 0, 0));
    if (t->m32) lea32(e, RSI, OM(RSI, 4 + extra));
    else lea64(e, RSI, OM(RSI, 8 + extra));
    st64(e, GREG(R_RSP), RSI);
}

static void emit_fallback_inline(tx_t *t, const insn_t *d)
{
    struct stub *s = new_stub(t, ST_FALLBACK, d);
    s->from[0] = jmp32(&t->e);
    s->cont = t->e.p;
}

/* back to the dispatcher at a constant RIP, unchained (after instructions
 * the dispatcher must see: END-flagged ones end a block for that reason) */
static void emit_exit_to(tx_t *t, uint64_t rip, uint32_t count)
{
    em_t *e = &t->e;
    store_imm64(e, CPU(rip), rip);
    emit_budget(t, count, 0);
    mov_imm(e, RAX, 0);
    jmp_to(e, t->c->jit->exit_flags);
}

/* Translate one instruction; returns 1 if it ended the block (exits emitted). */
static int emit_insn(tx_t *t, const insn_t *d, int last)
{
    em_t *e = &t->e;
    int m32 = t->m32, m16 = t->m16, legacy = m32 || m16;
    /* EIP wraps at 4 GiB; a branch truncates its target to its operand size */
    uint64_t next = m32 ? (uint32_t)(t->rip + d->len) : t->rip + d->len;
    uint64_t ipmask = legacy ? szmask(d->osz) : ~0ULL;
    uint32_t count = t->done + d->ninsn;
    int op = d->op, map = d->map & 0x7f;
    int sw = m16 ? 2 : m32 ? 4 : 8;      /* the stack width: 8 bytes in 64-bit mode, 4 in 32-bit, 2 in 16-bit code */
    int o64 = d->osz == sw;
    if (d->fn == h_nop) return 0;
    /* flat 32-bit code: only DS and SS are known flat (jit_flat32), and
     * 16-bit addressing is left to the interpreter; 16-bit code: DS, ES
     * and SS have 64 KiB limits (jit_seg16) */
    if (m32 && d->mod != 3 && !(d->asz == 4 && (d->seg == S_DS || d->seg == S_SS))) goto interpret;
    if (m16 && d->mod != 3 && d->seg != S_DS && d->seg != S_SS && d->seg != S_ES) goto interpret;
    /* 16-bit code: a rel32 branch (66 prefix) may leave the 64 KiB CS limit: #GP is the interpreter's */
    if (m16 && d->osz != 2 && ((map == 0 && (op == 0xe8 || op == 0xe9 || (op >= 0x70 && op <= 0x7f))) ||
                               (map == 1 && op >= 0x80 && op <= 0x8f))) goto interpret;
    if (legacy && map == 0 && op >= 0x40 && op <= 0x4f) {    /* INC/DEC r16/r32 (REX prefixes in 64-bit mode) */
        ld64(e, R9, GREG(op & 7));                             /* whole, as emit_native's narrow operands */
        enc(e, 0, 0, d->osz == 2, 0, (const uint8_t[]){ 0xff }, 1, op >= 0x48, OR(R9));   /* FF /0, FF /1 */
        st64(e, GREG(op & 7), R9);
        return 0;
    }
    if (d->ninsn == 2) {
        /* a macro-fused flag op + Jcc: the op natively, then the branch */
        native_t n;
        if (!classify(d, &n, !t->m32) || (n.modrm && d->mod != 3)) {
            emit_fallback_inline(t, d);
            return 0;
        }
        emit_native(t, d, &n, NULL);
        uint8_t *taken = jcc32(e, d->cc);
        emit_exit(t, next, count);
        fix(taken, e->p);
        emit_exit(t, next + (uint64_t)(int64_t)d->jdisp, count);
        return 1;
    }
    if ((map == 0 && op >= 0x70 && op <= 0x7f) || (map == 1 && op >= 0x80 && op <= 0x8f)) {   /* Jcc */
        uint8_t *taken = jcc32(e, op & 15);
        emit_exit(t, next, count);
        fix(taken, e->p);
        emit_exit(t, (next + d->imm) & ipmask, count);
        return 1;
    }
    if (map == 0 && (op == 0xe9 || op == 0xeb) && o64) {    /* JMP rel */
        emit_exit(t, (next + d->imm) & ipmask, count);
        return 1;
    }
    if (map == 0 && op == 0xe8 && o64) {                     /* CALL rel */
        struct stub *s = new_stub(t, ST_SLOWPATH, d);
        uint64_t target = (next + d->imm) & ipmask;
        mov_imm(e, R8, next);
        emit_push(t, d, R8, s, target, 0);
        emit_exit(t, target, count);
        return 1;
    }
    if (map == 0 && (op == 0xc3 || op == 0xc2) && o64) {     /* RET [imm16] */
        struct stub *s = new_stub(t, ST_SLOWPATH, d);
        emit_pop(t, op == 0xc2 ? (int)(uint16_t)d->imm : 0, s);
        emit_exit_indirect(t, RAX, count);
        return 1;
    }
    if (map == 0 && op == 0xff && o64 && (d->ext == 2 || d->ext == 4)) {   /* CALL/JMP r/m64 */
        struct stub *s = new_stub(t, ST_SLOWPATH, d);
        opnd_t src = GREG(d->rm);
        if (d->mod != 3) {
            emit_ea(t, d, 1);
            emit_probe(t, sw, 0, s);
            src = OX(RSI, RDI, 0, 0);
        }
        if (sw == 2) movzx16(e, R9, src);
        else op1(e, sw == 8, 0x8b, R9, src);
        if (d->ext == 2) { mov_imm(e, R8, next); emit_push(t, d, R8, s, 0, 1); }
        emit_exit_indirect(t, R9, count);
        return 1;
    }
    if (map == 0 && ((op >= 0x50 && op <= 0x57) || op == 0x68 || op == 0x6a) && o64) {   /* PUSH r64 / imm */
        struct stub *s = new_stub(t, ST_SLOWPATH, d);
        if (op <= 0x57) ld64(e, R8, GREG(d->rm));
        else mov_imm(e, R8, m32 ? (uint32_t)d->imm : d->imm);
        emit_push(t, d, R8, s, next, 0);
        s->cont = e->p;
        return 0;
    }
    if (map == 0 && op >= 0x58 && op <= 0x5f && o64) {      /* POP r64 */
        struct stub *s = new_stub(t, ST_SLOWPATH, d);
        emit_pop(t, 0, s);
        st_sized(e, sw, GREG(d->rm), RAX);                 /* after RSP: POP RSP loads the popped value */
        s->cont = e->p;
        return 0;
    }
    if (map == 0 && op == 0xf7 && (d->ext == 6 || d->ext == 7) && !d->lock &&
        (d->ext == 6 ? d->osz >= 2 : d->osz >= 4)) {              /* DIV / IDIV */
        struct stub *s = new_stub(t, ST_SLOWPATH, d);
        emit_div(t, d, s);
        s->cont = e->p;
        return 0;
    }
    if (map == 0 && op == 0x9c && o64) {                     /* PUSHFQ */
        struct stub *s = new_stub(t, ST_SLOWPATH, d);
        b1(e, 0x9c); b1(e, 0x58);                                  /* pushfq; pop rax: the guest's OSZAPC */
        ld64(e, RDX, CPU(rflags));
        b1(e, 0x50);                                               /* push rax (restored below) */
        b1(e, 0x25); b4(e, F_OSZAPC);                              /* and eax, OSZAPC */
        b1(e, 0x48); b1(e, 0x81); b1(e, 0xe2); b4(e, (uint32_t)~(F_OSZAPC | F_RF | F_VM));   /* and rdx, ... */
        b1(e, 0x48); b1(e, 0x09); b1(e, 0xd0);                     /* or rax, rdx */
        b1(e, 0x9d);                                               /* popfq */
        mov_rr64(e, R8, RAX);
        emit_push(t, d, R8, s, next, 0);
        s->cont = e->p;
        return 0;
    }
    if (map == 0 && op == 0xfa) {                            /* CLI at CPL 0 */
        struct stub *s = new_stub(t, ST_SLOWPATH, d);
        b1(e, 0x9c);                                               /* pushfq */
        op1(e, 0, 0x80, 7, CPU(cpl)); b1(e, 0);                    /* cmp byte [cpl], 0 */
        uint8_t *slow = jcc8(e, CC_NE);
        op1(e, 1, 0x81, 4, CPU(rflags)); b4(e, (uint32_t)~F_IF);   /* and qword [rflags], ~IF */
        b1(e, 0x9d);                                               /* popfq */
        b1(e, 0xeb); uint8_t *over = e->p; b1(e, 0);               /* jmp over the slow exit */
        fix8(slow, e->p);
        b1(e, 0x9d);                                               /* popfq */
        s->from[0] = jmp32(e);
        fix8(over, e->p);
        s->cont = e->p;
        return 0;
    }
    if (map == 0 && op == 0x8c && d->ext <= 5 && (d->mod != 3 || d->osz >= 2)) {   /* MOV r/m, Sreg */
        opnd_t sel = OM(R15, (int32_t)(offsetof(cpu_t, seg) + d->ext * sizeof(seg_t) + offsetof(seg_t, sel)));
        if (d->mod == 3) {
            movzx16(e, R9, sel);
            st_sized(e, d->osz, GREG(d->rm), R9);
            return 0;
        }
        struct stub *s = new_stub(t, ST_SLOWPATH, d);
        emit_ea(t, d, 1);
        emit_probe(t, 2, 1, s);
        movzx16(e, R8, sel);
        st_sized(e, 2, OX(RSI, RDI, 0, 0), R8);
        emit_code_check(t, d, next, 0);
        s->cont = e->p;
        return 0;
    }
    if (map == 0 && op == 0x8d && d->mod != 3 && d->osz >= (m16 ? 2 : 4)) {   /* LEA */
        emit_lea(t, d);
        return 0;
    }
    native_t n;
    if (classify(d, &n, !t->m32)) {
        struct stub *s = new_stub(t, ST_SLOWPATH, d);
        emit_native(t, d, &n, s);
        s->cont = e->p;
        return 0;
    }
interpret:
    emit_fallback_inline(t, d);
    if (last) {
        emit_exit_to(t, next, count);
        return 1;
    }
    return 0;
}

static void emit_stubs(tx_t *t)
{
    em_t *e = &t->e;
    struct jit *j = t->c->jit;
    for (int k = 0; k < t->nst; k++) {
        struct stub *s = &t->st[k];
        if (!s->from[0]) continue;       /* a stub no path jumps to */
        uint8_t *here = e->p;
        for (int f = 0; f < STUB_FROM; f++) fix(s->from[f], here);
        b1(e, 0x9c); b1(e, 0x5a);                                  /* pushfq; pop rdx */
        mov_rr64(e, RDI, R15);
        if (s->kind != ST_CODEWRITE) {
            mov_imm(e, RSI, (uint64_t)(uintptr_t)s->i);
            mov_imm(e, RCX, s->rip);
            mov_imm(e, R8, s->done);
            mov_imm(e, R9, s->kind == ST_SLOWPATH);
            call_abs(e, (const void *)jit_fallback);
            b1(e, 0x48); b1(e, 0x85); b1(e, 0xd2);                  /* test rdx, rdx */
            fix(jcc32(e, 5), j->exit_noflags);                     /* jnz exit_noflags */
            b1(e, 0x50); b1(e, 0x9d);                               /* push rax; popfq */
            if (s->cont) jmp_to(e, s->cont);
            else jmp_to(e, j->exit_noflags);
        } else {
            mov_rr64(e, RSI, R10);
            if (s->next_reg) mov_rr64(e, RCX, R9);
            else mov_imm(e, RCX, s->rip);
            mov_imm(e, R8, s->done);
            call_abs(e, (const void *)jit_code_written);
            jmp_to(e, j->exit_noflags);
        }
    }
}

void *jit_compile(cpu_t *c, block_t *b)
{
    struct jit *j = c->jit;
    b->hits = 0;   /* another linear address of the block waits its turn again */
    int m32 = b->key == 4 && jit_flat32(c), m16 = b->key == 2 && jit_seg16(c);
    if (!j || !(m32 || m16 || (b->key == 8 && c->long64))) return NULL;
    tx_t *t = malloc(sizeof(*t));
    if (!t) return NULL;
    t->c = c;
    t->m32 = m32;
    t->m16 = m16;
    t->csbase = m16 ? c->segbase[S_CS] : 0;
    t->seg_pending = -1;
    t->e = (em_t){ j->buf + j->used, j->buf + JIT_BYTES - 64, 0 };
    t->start = t->rip = c->rip; t->done = 0; t->nst = 0;
    uint8_t *start = t->e.p;
    if (b->gpa2 != ~0ULL) {
        /* Its last instruction runs into the next page.  Links and the jump
         * caches check the first page's generation; the second is checked
         * here, and a write to it sends the dispatcher to decode it anew. */
        mov_imm(&t->e, RCX, (uint64_t)(uintptr_t)&c->vm->gen[b->gidx2]);
        ld32(&t->e, RCX, OM(RCX, 0));
        lea32(&t->e, RCX, OM(RCX, -(int32_t)b->gen2));
        jrcxz_over_jmp(&t->e);
        uint8_t *stale = jmp32(&t->e);
        uint8_t *body = jmp32(&t->e);
        fix(stale, t->e.p);
        emit_exit_to(t, c->rip, 0);
        fix(body, t->e.p);
    }
    int ended = 0;
    for (int k = 0; k < b->n && !ended && !t->e.bad; k++) {
        const insn_t *d = &b->insns[k];
        ended = emit_insn(t, d, k == b->n - 1);
        t->rip += d->len;
        t->done += d->ninsn;
    }
    if (!ended) emit_exit(t, t->rip, t->done);
    emit_stubs(t);
    void *code = NULL;
    if (!t->e.bad) {
        code = start;
        b->jit[b->jit_next] = start;
        b->jit_rip[b->jit_next] = c->rip;
        b->jit_next ^= 1;
        j->used = (size_t)(t->e.p - j->buf + 15) & ~(size_t)15;
        j->blocks++;
        if (j->perfmap) {
            fprintf(j->perfmap, "%lx %lx guest_%llx\n", (unsigned long)(uintptr_t)start,
                    (unsigned long)(t->e.p - start), (unsigned long long)c->rip);
            fflush(j->perfmap);
        }
    }
    free(t);
    return code;
}
