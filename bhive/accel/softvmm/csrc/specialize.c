/*
 * Hot-path specialisations.  The decoder first picks a generic handler from
 * the opcode tables; specialize() then swaps in a handler compiled for the
 * exact operation / operand size / register-vs-memory form, so the common
 * integer instructions run without any run-time dispatch on their operands.
 */
#include "mem.h"
#include "handlers.h"

/* lazy-flag kinds and the operation for each ALU op number */
#define OP_add(a, b) ((a) + (b))
#define OP_or(a, b)  ((a) | (b))
#define OP_and(a, b) ((a) & (b))
#define OP_sub(a, b) ((a) - (b))
#define OP_xor(a, b) ((a) ^ (b))
#define OP_cmp(a, b) ((a) - (b))
#define LF_add LF_ADD
#define LF_or  LF_LOGIC
#define LF_and LF_LOGIC
#define LF_sub LF_SUB
#define LF_xor LF_LOGIC
#define LF_cmp LF_SUB
#define WB_add 1
#define WB_or  1
#define WB_and 1
#define WB_sub 1
#define WB_xor 1
#define WB_cmp 0

#define U64(v) ((uint64_t)(v))
#define U32(v) ((uint64_t)(uint32_t)(v))

/* reg,reg forms: dst = rm (opcodes x1 / grp1) or reg (x3) */
#define DEF_RR(name, SZ, TRUNC)                                                       \
    static void h_##name##_rm_r##SZ(cpu_t *c, const insn_t *i)                        \
    {                                                                                 \
        uint64_t a = TRUNC(c->r[i->rm]), b = TRUNC(c->r[i->reg]);                     \
        uint64_t r = TRUNC(OP_##name(a, b));                                          \
        lf_set(c, LF_##name, SZ / 8, a, b, r);                                        \
        if (WB_##name) c->r[i->rm] = r;                                               \
    }                                                                                 \
    static void h_##name##_r_rm##SZ(cpu_t *c, const insn_t *i)                        \
    {                                                                                 \
        uint64_t a = TRUNC(c->r[i->reg]), b = TRUNC(c->r[i->rm]);                     \
        uint64_t r = TRUNC(OP_##name(a, b));                                          \
        lf_set(c, LF_##name, SZ / 8, a, b, r);                                        \
        if (WB_##name) c->r[i->reg] = r;                                              \
    }                                                                                 \
    static void h_##name##_r_imm##SZ(cpu_t *c, const insn_t *i)                       \
    {                                                                                 \
        uint64_t a = TRUNC(c->r[i->rm]), b = TRUNC(i->imm);                           \
        uint64_t r = TRUNC(OP_##name(a, b));                                          \
        lf_set(c, LF_##name, SZ / 8, a, b, r);                                        \
        if (WB_##name) c->r[i->rm] = r;                                               \
    }                                                                                 \
    static void h_##name##_r_mem##SZ(cpu_t *c, const insn_t *i)                       \
    {                                                                                 \
        uint64_t b = ld(c, i->seg, ea_off(c, i), SZ / 8);                             \
        uint64_t a = TRUNC(c->r[i->reg]);                                             \
        uint64_t r = TRUNC(OP_##name(a, b));                                          \
        lf_set(c, LF_##name, SZ / 8, a, b, r);                                        \
        if (WB_##name) c->r[i->reg] = r;                                              \
    }                                                                                 \
    static void h_##name##_mem_r##SZ(cpu_t *c, const insn_t *i)                       \
    {                                                                                 \
        uint64_t lin = lin_acc(c, i->seg, ea_off(c, i), SZ / 8, WB_##name);           \
        uint64_t a = WB_##name ? mem_read_rmw_x(c, lin, SZ / 8, SEG_ACC(i->seg))      \
                               : mem_read_x(c, lin, SZ / 8, SEG_ACC(i->seg));         \
        uint64_t b = TRUNC(c->r[i->reg]);                                             \
        uint64_t r = TRUNC(OP_##name(a, b));                                          \
        if (WB_##name) mem_write(c, lin, SZ / 8, r);                                  \
        lf_set(c, LF_##name, SZ / 8, a, b, r);                                        \
    }                                                                                 \
    static void h_##name##_mem_imm##SZ(cpu_t *c, const insn_t *i)                     \
    {                                                                                 \
        uint64_t lin = lin_acc(c, i->seg, ea_off(c, i), SZ / 8, WB_##name);           \
        uint64_t a = WB_##name ? mem_read_rmw_x(c, lin, SZ / 8, SEG_ACC(i->seg))      \
                               : mem_read_x(c, lin, SZ / 8, SEG_ACC(i->seg));         \
        uint64_t b = TRUNC(i->imm);                                                   \
        uint64_t r = TRUNC(OP_##name(a, b));                                          \
        if (WB_##name) mem_write(c, lin, SZ / 8, r);                                  \
        lf_set(c, LF_##name, SZ / 8, a, b, r);                                        \
    }

#define DEF_OP(name) DEF_RR(name, 64, U64) DEF_RR(name, 32, U32)
DEF_OP(add) DEF_OP(or) DEF_OP(and) DEF_OP(sub) DEF_OP(xor) DEF_OP(cmp)

typedef struct { handler_t rm_r, r_rm, r_imm, r_mem, mem_r, mem_imm; } alu_set_t;
#define SET(name, SZ) { h_##name##_rm_r##SZ, h_##name##_r_rm##SZ, h_##name##_r_imm##SZ, \
                        h_##name##_r_mem##SZ, h_##name##_mem_r##SZ, h_##name##_mem_imm##SZ }
/* indexed by ALU op number: add or adc sbb and sub xor cmp */
static const alu_set_t alu64[8] = { SET(add, 64), SET(or, 64), {0}, {0}, SET(and, 64), SET(sub, 64), SET(xor, 64), SET(cmp, 64) };
static const alu_set_t alu32[8] = { SET(add, 32), SET(or, 32), {0}, {0}, SET(and, 32), SET(sub, 32), SET(xor, 32), SET(cmp, 32) };

/* INC/DEC r64/r32: CF is preserved */
#define DEF_INCDEC(SZ, TRUNC)                                                          \
    static void h_inc_r##SZ(cpu_t *c, const insn_t *i)                                 \
    {                                                                                  \
        uint8_t cf = (uint8_t)get_cf(c);                                               \
        uint64_t a = TRUNC(c->r[i->rm]), r = TRUNC(a + 1);                             \
        lf_set(c, LF_INC, SZ / 8, a, 1, r); c->lf_cf = cf;                             \
        c->r[i->rm] = r;                                                               \
    }                                                                                  \
    static void h_dec_r##SZ(cpu_t *c, const insn_t *i)                                 \
    {                                                                                  \
        uint8_t cf = (uint8_t)get_cf(c);                                               \
        uint64_t a = TRUNC(c->r[i->rm]), r = TRUNC(a - 1);                             \
        lf_set(c, LF_DEC, SZ / 8, a, 1, r); c->lf_cf = cf;                             \
        c->r[i->rm] = r;                                                               \
    }
DEF_INCDEC(64, U64)
DEF_INCDEC(32, U32)

/* TEST r,r */
static void h_test_rr64(cpu_t *c, const insn_t *i) { uint64_t r = c->r[i->rm] & c->r[i->reg]; lf_set(c, LF_LOGIC, 8, r, 0, r); }
static void h_test_rr32(cpu_t *c, const insn_t *i) { uint64_t r = U32(c->r[i->rm] & c->r[i->reg]); lf_set(c, LF_LOGIC, 4, r, 0, r); }

/* MOV */
static void h_mov_rr64(cpu_t *c, const insn_t *i) { c->r[i->rm] = c->r[i->reg]; }          /* 89 /r */
static void h_mov_rr32(cpu_t *c, const insn_t *i) { c->r[i->rm] = U32(c->r[i->reg]); }
static void h_mov_rr64r(cpu_t *c, const insn_t *i) { c->r[i->reg] = c->r[i->rm]; }         /* 8B /r */
static void h_mov_rr32r(cpu_t *c, const insn_t *i) { c->r[i->reg] = U32(c->r[i->rm]); }
static void h_ld64(cpu_t *c, const insn_t *i) { c->r[i->reg] = ld(c, i->seg, ea_off(c, i), 8); }
static void h_ld32(cpu_t *c, const insn_t *i) { c->r[i->reg] = ld(c, i->seg, ea_off(c, i), 4); }
static void h_st64(cpu_t *c, const insn_t *i) { st(c, i->seg, ea_off(c, i), 8, c->r[i->reg]); }
static void h_st32(cpu_t *c, const insn_t *i) { st(c, i->seg, ea_off(c, i), 4, c->r[i->reg]); }
static void h_movi64(cpu_t *c, const insn_t *i) { c->r[i->rm] = i->imm; }
static void h_movi32(cpu_t *c, const insn_t *i) { c->r[i->rm] = U32(i->imm); }
static void h_lea64(cpu_t *c, const insn_t *i) { c->r[i->reg] = ea_off(c, i); }
static void h_lea32(cpu_t *c, const insn_t *i) { c->r[i->reg] = U32(ea_off(c, i)); }

/* Jcc rel in 64-bit mode */
void h_jcc64(cpu_t *c, const insn_t *i) { if (cond(c, i->op & 15)) c->nrip += i->imm; }
static void h_jmp64(cpu_t *c, const insn_t *i) { c->nrip += i->imm; }

/* PUSH/POP r64 with a flat 64-bit stack */
static void h_push64(cpu_t *c, const insn_t *i)
{
    uint64_t sp = c->r[R_RSP] - 8;
    mem_write_x(c, sp, 8, c->r[i->rm], ACC_SS);
    c->r[R_RSP] = sp;
}
static void h_pop64(cpu_t *c, const insn_t *i)
{
    uint64_t sp = c->r[R_RSP];
    uint64_t v = mem_read_x(c, sp, 8, ACC_SS);
    c->r[R_RSP] = sp + 8;
    c->r[i->rm] = v;
}
static void h_call64(cpu_t *c, const insn_t *i)
{
    uint64_t sp = c->r[R_RSP] - 8;
    mem_write_x(c, sp, 8, c->nrip, ACC_SS);
    c->r[R_RSP] = sp;
    c->nrip += i->imm;
}
static void h_ret64(cpu_t *c, const insn_t *i)
{
    (void)i;
    uint64_t sp = c->r[R_RSP];
    c->nrip = mem_read_x(c, sp, 8, ACC_SS);
    c->r[R_RSP] = sp + 8;
}

handler_t specialize(const insn_t *d, int long64)
{
    handler_t fn = d->fn;
    int sz = d->osz;
    if (d->lock || d->rep) return fn;
    if (sz != 8 && sz != 4) return fn;
    const alu_set_t *set = sz == 8 ? alu64 : alu32;
    if (d->map == 0) {
        int op = d->op;
        if (fn == h_alu_rm_r || fn == h_alu_r_rm) {
            const alu_set_t *s = &set[(op >> 3) & 7];
            if (!s->rm_r) return fn;
            if (d->mod == 3) return (fn == h_alu_rm_r) ? s->rm_r : s->r_rm;
            return (fn == h_alu_r_rm) ? s->r_mem : s->mem_r;
        }
        if (fn == h_grp1) {
            const alu_set_t *s = &set[d->ext];
            if (!s->rm_r) return fn;
            return d->mod == 3 ? s->r_imm : s->mem_imm;
        }
        if (fn == h_incdec_rm && d->mod == 3) {
            if (d->ext == 0) return sz == 8 ? h_inc_r64 : h_inc_r32;
            return sz == 8 ? h_dec_r64 : h_dec_r32;
        }
        if (fn == h_test_rm_r && d->mod == 3) return sz == 8 ? h_test_rr64 : h_test_rr32;
        if (fn == h_mov_rm_r) {
            if (d->mod == 3) return sz == 8 ? h_mov_rr64 : h_mov_rr32;
            return sz == 8 ? h_st64 : h_st32;
        }
        if (fn == h_mov_r_rm) {
            if (d->mod == 3) return sz == 8 ? h_mov_rr64r : h_mov_rr32r;
            return sz == 8 ? h_ld64 : h_ld32;
        }
        if (fn == h_mov_r_imm) return sz == 8 ? h_movi64 : h_movi32;
        if (fn == h_mov_rm_imm && d->mod == 3) return sz == 8 ? h_movi64 : h_movi32;
        if (fn == h_lea) return sz == 8 ? h_lea64 : h_lea32;
        if (long64 && sz == 8 && d->asz == 8) {
            if (fn == h_jcc) return h_jcc64;
            if (fn == h_jmp_rel) return h_jmp64;
            if (fn == h_push_r) return h_push64;
            if (fn == h_pop_r) return h_pop64;
            if (fn == h_call_rel) return h_call64;
            if (fn == h_ret && op == 0xc3) return h_ret64;
        }
    } else if (d->map == 1) {
        if (long64 && sz == 8 && d->asz == 8 && fn == h_jcc) return h_jcc64;
    }
    return fn;
}

/* ---- macro-fused flag-setting op + Jcc (64-bit mode, register forms) ---- */
#define FUSE(first)                                                             \
    static void first##_jcc(cpu_t *c, const insn_t *i)                          \
    {                                                                           \
        first(c, i);                                                            \
        if (cond(c, i->cc)) c->nrip += (int64_t)i->jdisp;                       \
    }
#define FUSE_OP(name) FUSE(h_##name##_rm_r64) FUSE(h_##name##_r_rm64) FUSE(h_##name##_r_imm64) \
                      FUSE(h_##name##_rm_r32) FUSE(h_##name##_r_rm32) FUSE(h_##name##_r_imm32)
FUSE_OP(add) FUSE_OP(or) FUSE_OP(and) FUSE_OP(sub) FUSE_OP(xor) FUSE_OP(cmp)
FUSE(h_inc_r64) FUSE(h_dec_r64) FUSE(h_inc_r32) FUSE(h_dec_r32) FUSE(h_test_rr64) FUSE(h_test_rr32)

#define PAIR(first) { first, first##_jcc }
#define PAIR_OP(name) PAIR(h_##name##_rm_r64), PAIR(h_##name##_r_rm64), PAIR(h_##name##_r_imm64), \
                      PAIR(h_##name##_rm_r32), PAIR(h_##name##_r_rm32), PAIR(h_##name##_r_imm32)
static const struct { handler_t first, fused; } fusable[] = {
    PAIR_OP(add), PAIR_OP(or), PAIR_OP(and), PAIR_OP(sub), PAIR_OP(xor), PAIR_OP(cmp),
    PAIR(h_inc_r64), PAIR(h_dec_r64), PAIR(h_inc_r32), PAIR(h_dec_r32), PAIR(h_test_rr64), PAIR(h_test_rr32),
};

handler_t fuse_jcc(handler_t first)
{
    for (size_t k = 0; k < sizeof(fusable) / sizeof(fusable[0]); k++)
        if (fusable[k].first == first) return fusable[k].fused;
    return NULL;
}
