/*
 * Table-driven x86 decoder: legacy prefixes, REX, one-byte and 0F maps,
 * ModRM/SIB (16/32/64-bit addressing, RIP-relative), immediates.  Produces
 * insn_t records with a handler pointer; blocks of them are cached per
 * guest-physical address by run.c.
 */
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include "mem.h"
#include "handlers.h"
#include "gp_extensions.h"

/* operand-form flags */
#define M     0x0001   /* ModRM follows */
#define B     0x0002   /* byte operation */
#define IB    0x0004   /* imm8, sign-extended */
#define IZ    0x0008   /* imm16/32 by operand size, sign-extended to 64 */
#define IW    0x0010   /* imm16 */
#define IV    0x0020   /* imm of the full operand size (MOV r, imm64) */
#define D64   0x0040   /* default operand size 64 in 64-bit mode */
#define F64   0x0080   /* operand size forced to 64 in 64-bit mode */
#define END   0x0100   /* ends a predecoded block */
#define LK    0x0200   /* LOCK allowed (with a memory destination) */
#define NO64  0x0400   /* invalid in 64-bit mode (#UD) */
#define AO    0x0800   /* moffs: immediate of address size */
#define FAR   0x1000   /* ptr16:16/32 */
#define RO    0x2000   /* register in opcode bits 2:0 */
#define RM8   0x4000   /* r/m is a byte register even though the operation is wider */
#define IB2   0x8000   /* ENTER: iw then ib */

typedef struct { handler_t fn; uint16_t f; } opent_t;

#define ALU6(base) \
    [base + 0] = { h_alu_rm_r, M | B | LK }, [base + 1] = { h_alu_rm_r, M | LK }, \
    [base + 2] = { h_alu_r_rm, M | B },      [base + 3] = { h_alu_r_rm, M },      \
    [base + 4] = { h_alu_a_imm, B | IB },    [base + 5] = { h_alu_a_imm, IZ }

static const opent_t map0[256] = {
    ALU6(0x00), ALU6(0x08), ALU6(0x10), ALU6(0x18), ALU6(0x20), ALU6(0x28), ALU6(0x30), ALU6(0x38),
    [0x06] = { h_push_sreg, NO64 }, [0x07] = { h_pop_sreg, NO64 | END },
    [0x0e] = { h_push_sreg, NO64 },
    [0x16] = { h_push_sreg, NO64 }, [0x17] = { h_pop_sreg, NO64 | END },
    [0x1e] = { h_push_sreg, NO64 }, [0x1f] = { h_pop_sreg, NO64 | END },
    [0x40] = { h_incdec_r, 0 }, [0x41] = { h_incdec_r, 0 }, [0x42] = { h_incdec_r, 0 }, [0x43] = { h_incdec_r, 0 },
    [0x44] = { h_incdec_r, 0 }, [0x45] = { h_incdec_r, 0 }, [0x46] = { h_incdec_r, 0 }, [0x47] = { h_incdec_r, 0 },
    [0x48] = { h_incdec_r, 0 }, [0x49] = { h_incdec_r, 0 }, [0x4a] = { h_incdec_r, 0 }, [0x4b] = { h_incdec_r, 0 },
    [0x4c] = { h_incdec_r, 0 }, [0x4d] = { h_incdec_r, 0 }, [0x4e] = { h_incdec_r, 0 }, [0x4f] = { h_incdec_r, 0 },
    [0x50] = { h_push_r, D64 | RO }, [0x51] = { h_push_r, D64 | RO }, [0x52] = { h_push_r, D64 | RO }, [0x53] = { h_push_r, D64 | RO },
    [0x54] = { h_push_r, D64 | RO }, [0x55] = { h_push_r, D64 | RO }, [0x56] = { h_push_r, D64 | RO }, [0x57] = { h_push_r, D64 | RO },
    [0x58] = { h_pop_r, D64 | RO }, [0x59] = { h_pop_r, D64 | RO }, [0x5a] = { h_pop_r, D64 | RO }, [0x5b] = { h_pop_r, D64 | RO },
    [0x5c] = { h_pop_r, D64 | RO }, [0x5d] = { h_pop_r, D64 | RO }, [0x5e] = { h_pop_r, D64 | RO }, [0x5f] = { h_pop_r, D64 | RO },
    [0x27] = { h_bcd, NO64 }, [0x2f] = { h_bcd, NO64 }, [0x37] = { h_bcd, NO64 }, [0x3f] = { h_bcd, NO64 },
    [0x60] = { h_pusha, NO64 }, [0x61] = { h_popa, NO64 },
    [0x63] = { h_movsxd, M },
    [0x62] = { h_bound, M | NO64 },
    [0x68] = { h_push_imm, D64 | IZ }, [0x69] = { h_imul, M | IZ }, [0x6a] = { h_push_imm, D64 | IB }, [0x6b] = { h_imul, M | IB },
    [0x6c] = { h_ins, B }, [0x6d] = { h_ins, 0 }, [0x6e] = { h_outs, B }, [0x6f] = { h_outs, 0 },
    [0x70] = { h_jcc, IB | F64 | END }, [0x71] = { h_jcc, IB | F64 | END }, [0x72] = { h_jcc, IB | F64 | END }, [0x73] = { h_jcc, IB | F64 | END },
    [0x74] = { h_jcc, IB | F64 | END }, [0x75] = { h_jcc, IB | F64 | END }, [0x76] = { h_jcc, IB | F64 | END }, [0x77] = { h_jcc, IB | F64 | END },
    [0x78] = { h_jcc, IB | F64 | END }, [0x79] = { h_jcc, IB | F64 | END }, [0x7a] = { h_jcc, IB | F64 | END }, [0x7b] = { h_jcc, IB | F64 | END },
    [0x7c] = { h_jcc, IB | F64 | END }, [0x7d] = { h_jcc, IB | F64 | END }, [0x7e] = { h_jcc, IB | F64 | END }, [0x7f] = { h_jcc, IB | F64 | END },
    [0x80] = { h_grp1, M | B | IB | LK }, [0x81] = { h_grp1, M | IZ | LK }, [0x82] = { h_grp1, M | B | IB | LK | NO64 }, [0x83] = { h_grp1, M | IB | LK },
    [0x84] = { h_test_rm_r, M | B }, [0x85] = { h_test_rm_r, M }, [0x86] = { h_xchg_rm_r, M | B | LK }, [0x87] = { h_xchg_rm_r, M | LK },
    [0x88] = { h_mov_rm_r, M | B }, [0x89] = { h_mov_rm_r, M }, [0x8a] = { h_mov_r_rm, M | B }, [0x8b] = { h_mov_r_rm, M },
    [0x8c] = { h_mov_rm_sreg, M }, [0x8d] = { h_lea, M }, [0x8e] = { h_mov_sreg_rm, M | END }, [0x8f] = { h_pop_rm, M | D64 },
    [0x90] = { h_xchg_a_r, RO }, [0x91] = { h_xchg_a_r, RO }, [0x92] = { h_xchg_a_r, RO }, [0x93] = { h_xchg_a_r, RO },
    [0x94] = { h_xchg_a_r, RO }, [0x95] = { h_xchg_a_r, RO }, [0x96] = { h_xchg_a_r, RO }, [0x97] = { h_xchg_a_r, RO },
    [0x98] = { h_cbw, 0 }, [0x99] = { h_cwd, 0 }, [0x9a] = { h_jmp_far, FAR | NO64 | END }, [0x9b] = { h_nop, 0 },
    [0x9c] = { h_pushf, D64 }, [0x9d] = { h_popf, D64 | END }, [0x9e] = { h_flagop, 0 }, [0x9f] = { h_flagop, 0 },
    [0xa0] = { h_mov_moffs, B | AO }, [0xa1] = { h_mov_moffs, AO }, [0xa2] = { h_mov_moffs, B | AO }, [0xa3] = { h_mov_moffs, AO },
    [0xa4] = { h_movs, B }, [0xa5] = { h_movs, 0 }, [0xa6] = { h_cmps, B }, [0xa7] = { h_cmps, 0 },
    [0xa8] = { h_test_a_imm, B | IB }, [0xa9] = { h_test_a_imm, IZ }, [0xaa] = { h_stos, B }, [0xab] = { h_stos, 0 },
    [0xac] = { h_lods, B }, [0xad] = { h_lods, 0 }, [0xae] = { h_scas, B }, [0xaf] = { h_scas, 0 },
    [0xb0] = { h_mov_r_imm, B | IB | RO }, [0xb1] = { h_mov_r_imm, B | IB | RO }, [0xb2] = { h_mov_r_imm, B | IB | RO }, [0xb3] = { h_mov_r_imm, B | IB | RO },
    [0xb4] = { h_mov_r_imm, B | IB | RO }, [0xb5] = { h_mov_r_imm, B | IB | RO }, [0xb6] = { h_mov_r_imm, B | IB | RO }, [0xb7] = { h_mov_r_imm, B | IB | RO },
    [0xb8] = { h_mov_r_imm, IV | RO }, [0xb9] = { h_mov_r_imm, IV | RO }, [0xba] = { h_mov_r_imm, IV | RO }, [0xbb] = { h_mov_r_imm, IV | RO },
    [0xbc] = { h_mov_r_imm, IV | RO }, [0xbd] = { h_mov_r_imm, IV | RO }, [0xbe] = { h_mov_r_imm, IV | RO }, [0xbf] = { h_mov_r_imm, IV | RO },
    [0xc4] = { h_lfp, M | NO64 }, [0xc5] = { h_lfp, M | NO64 },
    [0xc0] = { h_shift, M | B | IB }, [0xc1] = { h_shift, M | IB }, [0xc2] = { h_ret, IW | F64 | END }, [0xc3] = { h_ret, F64 | END },
    [0xc6] = { h_mov_rm_imm, M | B | IB }, [0xc7] = { h_mov_rm_imm, M | IZ },
    [0xc8] = { h_enter, IW | IB2 | D64 }, [0xc9] = { h_leave, D64 }, [0xca] = { h_retf, IW | END }, [0xcb] = { h_retf, END },
    [0xcc] = { h_int, END }, [0xcd] = { h_int, IB | END }, [0xce] = { h_int, NO64 | END }, [0xcf] = { h_iret, END },
    [0xd0] = { h_shift, M | B }, [0xd1] = { h_shift, M }, [0xd2] = { h_shift, M | B }, [0xd3] = { h_shift, M },
    [0xd4] = { h_bcd, IB | NO64 }, [0xd5] = { h_bcd, IB | NO64 }, [0xd6] = { h_ud, 0 }, [0xd7] = { h_xlat, 0 },
    [0xe0] = { h_loop, IB | F64 | END }, [0xe1] = { h_loop, IB | F64 | END }, [0xe2] = { h_loop, IB | F64 | END }, [0xe3] = { h_loop, IB | F64 | END },
    [0xe4] = { h_inout, B | IB }, [0xe5] = { h_inout, IB }, [0xe6] = { h_inout, B | IB }, [0xe7] = { h_inout, IB },
    [0xe8] = { h_call_rel, IZ | F64 | END }, [0xe9] = { h_jmp_rel, IZ | F64 | END }, [0xea] = { h_jmp_far, FAR | NO64 | END }, [0xeb] = { h_jmp_rel, IB | F64 | END },
    [0xec] = { h_inout, B }, [0xed] = { h_inout, 0 }, [0xee] = { h_inout, B }, [0xef] = { h_inout, 0 },
    [0xf1] = { h_int, END }, [0xf4] = { h_hlt, END }, [0xf5] = { h_flagop, 0 },
    [0xf6] = { h_grp3, M | B | LK }, [0xf7] = { h_grp3, M | LK },
    [0xf8] = { h_flagop, 0 }, [0xf9] = { h_flagop, 0 }, [0xfa] = { h_cli, 0 }, [0xfb] = { h_sti, END },
    [0xfc] = { h_flagop, 0 }, [0xfd] = { h_flagop, 0 }, [0xfe] = { h_grp5, M | B | LK | END }, [0xff] = { h_grp5, M | LK | END },
};

#define JCC32 { h_jcc, IZ | F64 | END }
#define CMOV { h_cmovcc, M }
#define SETCC { h_setcc, M | B }
static const opent_t map1[256] = {
    [0x00] = { h_grp6, M }, [0x01] = { h_grp7, M | END }, [0x02] = { h_lar_lsl, M }, [0x03] = { h_lar_lsl, M },
    [0x06] = { h_clts, 0 }, [0xb9] = { h_ud, M }, [0xff] = { h_ud, M },
    [0x08] = { h_priv_nop, 0 }, [0x09] = { h_priv_nop, 0 }, [0x0b] = { h_ud, 0 }, [0x0d] = { h_nop, M },
    [0x18] = { h_nop, M }, [0x19] = { h_nop, M }, [0x1a] = { h_nop, M }, [0x1b] = { h_nop, M },
    [0x1c] = { h_nop, M }, [0x1d] = { h_nop, M }, [0x1e] = { h_nop, M }, [0x1f] = { h_nop, M },
    [0x20] = { h_mov_cr, M | END }, [0x21] = { h_mov_dr, M }, [0x22] = { h_mov_cr, M | END }, [0x23] = { h_mov_dr, M | END },
    [0x05] = { h_syscall, END }, [0x07] = { h_sysret, END },
    [0x34] = { h_sysenter, END }, [0x35] = { h_sysexit, END },
    [0xb2] = { h_lfp, M | END }, [0xb4] = { h_lfp, M }, [0xb5] = { h_lfp, M },
    [0x30] = { h_wrmsr, END }, [0x31] = { h_rdtsc, 0 }, [0x32] = { h_rdmsr, 0 }, [0x33] = { h_rdpmc, 0 },
    [0x40] = CMOV, [0x41] = CMOV, [0x42] = CMOV, [0x43] = CMOV, [0x44] = CMOV, [0x45] = CMOV, [0x46] = CMOV, [0x47] = CMOV,
    [0x48] = CMOV, [0x49] = CMOV, [0x4a] = CMOV, [0x4b] = CMOV, [0x4c] = CMOV, [0x4d] = CMOV, [0x4e] = CMOV, [0x4f] = CMOV,
    [0x80] = JCC32, [0x81] = JCC32, [0x82] = JCC32, [0x83] = JCC32, [0x84] = JCC32, [0x85] = JCC32, [0x86] = JCC32, [0x87] = JCC32,
    [0x88] = JCC32, [0x89] = JCC32, [0x8a] = JCC32, [0x8b] = JCC32, [0x8c] = JCC32, [0x8d] = JCC32, [0x8e] = JCC32, [0x8f] = JCC32,
    [0x90] = SETCC, [0x91] = SETCC, [0x92] = SETCC, [0x93] = SETCC, [0x94] = SETCC, [0x95] = SETCC, [0x96] = SETCC, [0x97] = SETCC,
    [0x98] = SETCC, [0x99] = SETCC, [0x9a] = SETCC, [0x9b] = SETCC, [0x9c] = SETCC, [0x9d] = SETCC, [0x9e] = SETCC, [0x9f] = SETCC,
    [0xa0] = { h_push_sreg, D64 }, [0xa1] = { h_pop_sreg, D64 }, [0xa2] = { h_cpuid, 0 }, [0xa3] = { h_bt, M },
    [0xa4] = { h_shld, M | IB }, [0xa5] = { h_shld, M }, [0xa8] = { h_push_sreg, D64 }, [0xa9] = { h_pop_sreg, D64 },
    [0xab] = { h_bt, M | LK }, [0xac] = { h_shld, M | IB }, [0xad] = { h_shld, M }, [0xae] = { h_grp15, M }, [0xaf] = { h_imul, M },
    [0xb0] = { h_cmpxchg, M | B | LK }, [0xb1] = { h_cmpxchg, M | LK }, [0xb3] = { h_bt, M | LK },
    [0xb6] = { h_movzx, M | RM8 }, [0xb7] = { h_movzx, M }, [0xba] = { h_bt, M | IB | LK }, [0xbb] = { h_bt, M | LK },
    [0xbc] = { h_bsf_bsr, M }, [0xbd] = { h_bsf_bsr, M }, [0xbe] = { h_movsx, M | RM8 }, [0xbf] = { h_movsx, M },
    [0xc0] = { h_xadd, M | B | LK }, [0xc1] = { h_xadd, M | LK }, [0xc7] = { h_grp9, M | LK },
    [0xb8] = { h_popcnt, M },
    [0xc8] = { h_bswap, RO }, [0xc9] = { h_bswap, RO }, [0xca] = { h_bswap, RO }, [0xcb] = { h_bswap, RO },
    [0xcc] = { h_bswap, RO }, [0xcd] = { h_bswap, RO }, [0xce] = { h_bswap, RO }, [0xcf] = { h_bswap, RO },
};

/* x87, MMX and SSE/SSE2/SSE3 (x87.c, mmx.c, sse.c): consulted when the tables above
 * have no entry for the opcode (map 0: always, for WAIT and D8-DF) */
#define SSE { h_sse, M }
#define SSEI { h_sse, M | IB }
static const opent_t fpu_map0[256] = {
    [0x9b] = { h_fwait, 0 },
    [0xd8] = { h_x87, M }, [0xd9] = { h_x87, M }, [0xda] = { h_x87, M }, [0xdb] = { h_x87, M },
    [0xdc] = { h_x87, M }, [0xdd] = { h_x87, M }, [0xde] = { h_x87, M }, [0xdf] = { h_x87, M },
};
static const opent_t fpu_map1[256] = {
    [0x10] = SSE, [0x11] = SSE, [0x12] = SSE, [0x13] = SSE, [0x14] = SSE, [0x15] = SSE, [0x16] = SSE, [0x17] = SSE,
    [0x28] = SSE, [0x29] = SSE, [0x2a] = SSE, [0x2b] = SSE, [0x2c] = SSE, [0x2d] = SSE, [0x2e] = SSE, [0x2f] = SSE,
    [0x50] = SSE, [0x51] = SSE, [0x52] = SSE, [0x53] = SSE, [0x54] = SSE, [0x55] = SSE, [0x56] = SSE, [0x57] = SSE,
    [0x58] = SSE, [0x59] = SSE, [0x5a] = SSE, [0x5b] = SSE, [0x5c] = SSE, [0x5d] = SSE, [0x5e] = SSE, [0x5f] = SSE,
    [0x60] = SSE, [0x61] = SSE, [0x62] = SSE, [0x63] = SSE, [0x64] = SSE, [0x65] = SSE, [0x66] = SSE, [0x67] = SSE,
    [0x68] = SSE, [0x69] = SSE, [0x6a] = SSE, [0x6b] = SSE, [0x6c] = SSE, [0x6d] = SSE, [0x6e] = SSE, [0x6f] = SSE,
    [0x70] = SSEI, [0x71] = SSEI, [0x72] = SSEI, [0x73] = SSEI, [0x74] = SSE, [0x75] = SSE, [0x76] = SSE,
    [0x77] = { h_sse, 0 }, [0x7c] = SSE, [0x7d] = SSE, [0x7e] = SSE, [0x7f] = SSE,
    [0xc2] = SSEI, [0xc3] = SSE, [0xc4] = SSEI, [0xc5] = SSEI, [0xc6] = SSEI,
    [0xd0] = SSE, [0xd1] = SSE, [0xd2] = SSE, [0xd3] = SSE, [0xd4] = SSE, [0xd5] = SSE, [0xd6] = SSE, [0xd7] = SSE,
    [0xd8] = SSE, [0xd9] = SSE, [0xda] = SSE, [0xdb] = SSE, [0xdc] = SSE, [0xdd] = SSE, [0xde] = SSE, [0xdf] = SSE,
    [0xe0] = SSE, [0xe1] = SSE, [0xe2] = SSE, [0xe3] = SSE, [0xe4] = SSE, [0xe5] = SSE, [0xe6] = SSE, [0xe7] = SSE,
    [0xe8] = SSE, [0xe9] = SSE, [0xea] = SSE, [0xeb] = SSE, [0xec] = SSE, [0xed] = SSE, [0xee] = SSE, [0xef] = SSE,
    [0xf0] = SSE, [0xf1] = SSE, [0xf2] = SSE, [0xf3] = SSE, [0xf4] = SSE, [0xf5] = SSE, [0xf6] = SSE, [0xf7] = SSE,
    [0xf8] = SSE, [0xf9] = SSE, [0xfa] = SSE, [0xfb] = SSE, [0xfc] = SSE, [0xfd] = SSE, [0xfe] = SSE,
};
#undef SSE
#undef SSEI

/* 0F AE and 0F C7 groups */
HANDLER(h_grp15)
{
    if (i->mod == 3) {
        if (i->ext >= 5) { __atomic_thread_fence(__ATOMIC_SEQ_CST); return; }  /* LFENCE/MFENCE/SFENCE */
        raise_ud(c);   /* RDFSBASE..WRGSBASE (F3), PTWRITE, UMONITOR...: not advertised */
    }
    if (i->ext == 7) { (void)ld(c, i->seg, ea_off(c, i), 1); return; }   /* CLFLUSH: coherent, but must fault like a read */
    if (i->ext <= 3) { h_fxgrp(c, i); return; }   /* FXSAVE/FXRSTOR/LDMXCSR/STMXCSR (sse.c) */
    raise_ud(c);   /* XSAVE/XRSTOR/XSAVEOPT/CLWB: CPUID advertises no XSAVE */
}
HANDLER(h_grp9)
{
    if (i->ext == 1 && i->mod != 3) { h_cmpxchg8b(c, i); return; }
    raise_ud(c);   /* RDRAND/RDSEED/VMPTRLD/VMCLEAR...: not advertised by CPUID */
}

static inline int sign8(uint8_t b) { return (int8_t)b; }

/* An instruction whose CPUID feature the CPU model masks off decodes as #UD
 * (a decode-time choice: nothing is checked when it runs).  SDM Vol 2,
 * each instruction's "CPUID Feature Flag" column. */
static int feature_ok(const svm_vm_t *vm, int map, int op, int rep, int p66, int is64, int ext, int mod,
                      int rex, int vexpp, handler_t fn)
{
    (void)mod;
    if (vexpp >= 0) {   /* VEX GPR forms: ANDN/BEXTR/BLS* are BMI1, the rest BMI2 */
        if (fn == h_ud) return 1;
        int bmi1 = (map == 2 && (op == 0xf2 || op == 0xf3 || (op == 0xf7 && vexpp == 0)));
        return bmi1 ? vm_feat(vm, FW_7B, 3) : vm_feat(vm, FW_7B, 8);
    }
    if (map == 0) {
        if (is64 && (op == 0x9e || op == 0x9f)) return vm_feat(vm, FW_X1C, 0);   /* LAHF/SAHF in 64-bit mode */
        return 1;
    }
    if (map == 1) {
        switch (op) {
        case 0xb8: return rep != 0xf3 || vm_feat(vm, FW_1C, 23);                  /* POPCNT */
        case 0xc7: if (ext == 1) return (rex & 8) ? vm_feat(vm, FW_1C, 13) : vm_feat(vm, FW_1D, 8);   /* CMPXCHG16B / 8B */
                   return 1;
        case 0x05: case 0x07: return vm_feat(vm, FW_X1D, 11);                    /* SYSCALL / SYSRET */
        case 0x34: case 0x35: return vm_feat(vm, FW_1D, 11);                     /* SYSENTER / SYSEXIT */
        case 0x31: return vm_feat(vm, FW_1D, 4);                                 /* RDTSC */
        case 0x30: case 0x32: return vm_feat(vm, FW_1D, 5);                      /* WRMSR / RDMSR */
        /* SSE3: ADDSUBPD/PS, HADD/HSUB, LDDQU, MOVDDUP, MOVSHDUP, MOVSLDUP */
        case 0xd0: case 0x7c: case 0x7d: return !(p66 || rep == 0xf2) || vm_feat(vm, FW_1C, 0);
        case 0xf0: return rep != 0xf2 || vm_feat(vm, FW_1C, 0);
        case 0x12: return !(rep == 0xf2 || rep == 0xf3) || vm_feat(vm, FW_1C, 0);
        case 0x16: return rep != 0xf3 || vm_feat(vm, FW_1C, 0);
        }
        return 1;
    }
    if (map == 2) {
        if (op == 0xf0 || op == 0xf1) return rep == 0xf2 ? vm_feat(vm, FW_1C, 20) : vm_feat(vm, FW_1C, 22);   /* CRC32 / MOVBE */
        if (op == 0xf6) return vm_feat(vm, FW_7B, 19);                           /* ADCX / ADOX */
    }
    return 1;
}

/* Decode one instruction from p[0..avail).  Returns its length, 0 if more
 * bytes are needed than available, or -1 if longer than 15 bytes. */
static int decode_one(insn_t *d, const uint8_t *p, int avail, int csz, const svm_vm_t *vm)
{
    int pos = 0, rex = 0, opsz66 = 0, adsz67 = 0, lock = 0, rep = 0, segovr = S_NONE;
#define NEED(n) do { if (pos + (n) > avail) return pos + (n) > 15 ? -1 : 0; } while (0)
    for (;;) {
        NEED(1);
        uint8_t b = p[pos];
        switch (b) {
        case 0x66: opsz66 = 1; rex = 0; pos++; continue;
        case 0x67: adsz67 = 1; rex = 0; pos++; continue;
        case 0xf0: lock = 1; rex = 0; pos++; continue;
        case 0xf2: case 0xf3: rep = b; rex = 0; pos++; continue;
        case 0x26: segovr = S_ES; rex = 0; pos++; continue;
        case 0x2e: segovr = S_CS; rex = 0; pos++; continue;
        case 0x36: segovr = S_SS; rex = 0; pos++; continue;
        case 0x3e: segovr = S_DS; rex = 0; pos++; continue;
        case 0x64: segovr = S_FS; rex = 0; pos++; continue;
        case 0x65: segovr = S_GS; rex = 0; pos++; continue;
        }
        if (csz == 8 && (b & 0xf0) == 0x40) { rex = b; pos++; continue; }
        break;
    }
    if (pos > 14) return -1;
    NEED(1);
    int map = 0;
    uint8_t op = p[pos++];
    const opent_t *ent;
    /* VEX (C4/C5; outside 64-bit mode only with ModRM.mod = 11, else LES/LDS):
     * the BMI1/BMI2 GPR forms (SDM Vol 2A 2.3) */
    int vex = 0, vexsub = 0, vvvv = 0;
    static const opent_t vex_ud = { h_ud, M }, map2_int[8] = {
        [0] = { h_movbe_crc32, M | RM8 }, [1] = { h_movbe_crc32, M }, [6] = { h_adx, M } };
    /* the rest of the 0F 38 / 0F 3A maps (SSSE3, SSE4, AES, SHA, INVPCID, ...):
     * not advertised by CPUID, so #UD, decoded with their ModRM (and imm8) */
    static const opent_t map2_ud = { h_ud, M }, map3_ud = { h_ud, M | IB };
    opent_t vex_ok;
    if ((op == 0xc4 || op == 0xc5) && pos < avail && (csz == 8 || p[pos] >= 0xc0)) {
        uint8_t v1 = p[pos++], v2 = v1;
        int mm = 1, w = 0, xb = 0x60;
        if (op == 0xc4) { NEED(1); v2 = p[pos++]; mm = v1 & 31; w = v2 >> 7; xb = v1 & 0x60; }
        int bad = rex || opsz66 || rep || lock;
        vvvv = (~v2 >> 3) & 15;
        rex = csz == 8 ? (0x40 | (~v1 & 0x80) >> 5 | (~xb & 0x60) >> 5 | w << 3) : 0;
        if (csz != 8) vvvv &= 7;
        NEED(1);
        op = p[pos++];
        map = mm < 4 ? mm : 0;
        uint8_t sub = 0;
        handler_t vf = bad || !map ? NULL : vex_lookup(map, op, v2 & 3, (v2 >> 2) & 1, &sub);
        vex = 1; vexsub = sub;
        vex_ok = (opent_t){ vf, M | (map == 3 ? IB : 0) };
        ent = vf ? &vex_ok : &vex_ud;
    } else
    if (op == 0x0f) {
        NEED(1);
        op = p[pos++];
        if (op == 0x38 || op == 0x3a) { NEED(1); map = op == 0x38 ? 2 : 3; op = p[pos++]; ent = map == 2 ? &map2_ud : &map3_ud; }
        else { map = 1; ent = &map1[op]; }
    } else ent = &map0[op];
    if (map == 0 ? fpu_map0[op].fn != NULL : (map == 1 && !ent->fn && fpu_map1[op].fn)) ent = map ? &fpu_map1[op] : &fpu_map0[op];
    memset(d, 0, sizeof(*d));
    d->op = op; d->map = (uint8_t)map;
    d->rep = (uint8_t)rep; d->lock = (uint8_t)lock; d->pfx66 = (uint8_t)opsz66;
    d->segovr = (uint8_t)segovr;
    d->base = d->index = EA_NONE;
    if (map == 2 && !vex && (op == 0xf0 || op == 0xf1 || op == 0xf6)) ent = &map2_int[op & 7];
    uint16_t f = ent ? ent->f : 0;
    handler_t fn = ent ? ent->fn : NULL;
    int is64 = csz == 8;
    /* operand size (SDM Vol 1 3.6, Vol 2 2.2.1.2) */
    int osz;
    if (is64) {
        if (rex & 8) osz = 8;
        else if (f & F64) osz = 8;
        else if (opsz66) osz = 2;
        else osz = (f & D64) ? 8 : 4;
    } else {
        osz = (csz == 4) ^ opsz66 ? 4 : 2;
    }
    int asz = is64 ? (adsz67 ? 4 : 8) : ((csz == 4) ^ adsz67 ? 4 : 2);
    int immsz = osz;   /* for IZ before B adjustment */
    if (f & B) osz = 1;
    d->asz = (uint8_t)asz;
    /* ModRM / SIB / displacement */
    int mod = 3, reg = 0, rm = 0;
    if (f & M) {
        NEED(1);
        uint8_t modrm = p[pos++];
        mod = modrm >> 6; reg = (modrm >> 3) & 7; rm = modrm & 7;
        d->ext = (uint8_t)reg;
        reg |= (rex & 4) << 1;
        /* MOV CR/DR: mod is ignored, always register (SDM MOV-Control Registers) */
        if (map == 1 && op >= 0x20 && op <= 0x23) mod = 3;
        if (mod == 3) {
            rm |= (rex & 1) << 3;
        } else if (asz == 2) {
            static const uint8_t b16[8] = { R_RBX, R_RBX, R_RBP, R_RBP, R_RSI, R_RDI, R_RBP, R_RBX };
            static const uint8_t i16[8] = { R_RSI, R_RDI, R_RSI, R_RDI, EA_NONE, EA_NONE, EA_NONE, EA_NONE };
            d->base = b16[rm]; d->index = i16[rm];
            if (mod == 0 && rm == 6) { d->base = EA_NONE; NEED(2); d->disp = (int16_t)(p[pos] | p[pos + 1] << 8); pos += 2; }
            else if (mod == 1) { NEED(1); d->disp = sign8(p[pos++]); }
            else if (mod == 2) { NEED(2); d->disp = (int16_t)(p[pos] | p[pos + 1] << 8); pos += 2; }
            d->seg = (d->base == R_RBP) ? S_SS : S_DS;
        } else {
            int base = rm;
            if (rm == 4) {
                NEED(1);
                uint8_t sib = p[pos++];
                int scale = sib >> 6, idx = ((sib >> 3) & 7) | ((rex & 2) << 2);
                base = sib & 7;
                if (idx != 4) { d->index = (uint8_t)idx; d->scale = (uint8_t)scale; }
                if (base == 5 && mod == 0) { d->base = EA_NONE; NEED(4); memcpy(&d->disp, p + pos, 4); pos += 4; }
                else d->base = (uint8_t)(base | ((rex & 1) << 3));
            } else if (rm == 5 && mod == 0) {
                d->base = is64 ? EA_RIP : EA_NONE;
                NEED(4); memcpy(&d->disp, p + pos, 4); pos += 4;
            } else {
                d->base = (uint8_t)(rm | ((rex & 1) << 3));
            }
            if (mod == 1) { NEED(1); d->disp = sign8(p[pos++]); }
            else if (mod == 2) { NEED(4); memcpy(&d->disp, p + pos, 4); pos += 4; }
            d->seg = (d->base == R_RSP || d->base == R_RBP) ? S_SS : S_DS;
        }
        if (segovr != S_NONE) d->seg = (uint8_t)segovr;
    } else {
        d->seg = segovr != S_NONE ? (uint8_t)segovr : S_DS;
    }
    if (f & RO) rm = (op & 7) | ((rex & 1) << 3);
    /* byte registers without REX: 4..7 are AH, CH, DH, BH */
    if ((f & B) && !rex) {
        if (reg >= 4 && reg < 8) reg = 0x10 | (reg - 4);
        if (mod == 3 && rm >= 4 && rm < 8) rm = 0x10 | (rm - 4);
    }
    if ((f & RM8) && !rex && mod == 3 && rm >= 4 && rm < 8) rm = 0x10 | (rm - 4);
    d->mod = (uint8_t)mod; d->reg = (uint8_t)reg; d->rm = (uint8_t)rm;
    /* group special cases */
    if (map == 0 && (op == 0xf6 || op == 0xf7) && d->ext < 2) f |= (op == 0xf6) ? IB : IZ;
    if (map == 0 && (op == 0xfe || op == 0xff)) {
        if (d->ext < 2) { fn = h_incdec_rm; f &= ~END; }
        else if (op == 0xfe) fn = h_ud;
        else {
            f &= ~LK;
            if (is64 && (d->ext == 2 || d->ext == 4)) osz = 8;            /* near CALL/JMP: forced 64 */
            else if (is64 && d->ext == 6 && !opsz66) osz = 8;            /* PUSH: default 64 */
            else if (is64 && (d->ext == 3 || d->ext == 5) && (rex & 8)) osz = 8;
        }
    }
    /* unassigned encodings of assigned opcodes: #UD (SDM Vol 2 A.4 Table A-6; LEA
     * with a register operand; C6/C7 /1-/7 are RTM's XABORT/XBEGIN or reserved;
     * 8F /1-/7 is AMD's XOP) */
    if (map == 0 && ((op == 0x8d && mod == 3) || ((op == 0xc6 || op == 0xc7 || op == 0x8f) && d->ext))) fn = h_ud;
    if (map == 0 && op == 0x90 && !(rex & 1)) fn = (rep == 0xf3) ? h_pause : h_nop;
    if (!feature_ok(vm, map, op, rep, opsz66, is64, d->ext, mod, rex, vex ? vexsub : -1, fn)) fn = h_ud;
    /* without ABM / BMI1, F3 0F BD / BC are BSR / BSF (the F3 is ignored) */
    if (map == 1 && rep == 0xf3 && ((op == 0xbd && !vm_feat(vm, FW_X1C, 5)) || (op == 0xbc && !vm_feat(vm, FW_7B, 3))))
        rep = 0, d->rep = 0;
    if (map == 0 && op == 0x63 && !is64) { fn = h_arpl; osz = 2; }
    if (vex) { osz = (rex & 8) ? 8 : 4; d->imm2 = (uint16_t)vvvv; d->cc = (uint8_t)vexsub; }
    if (map == 0 && (op == 0x8c) && mod != 3) osz = 2;
    /* immediates */
    if (f & IB) { NEED(1); d->imm = (uint64_t)(int64_t)sign8(p[pos++]); }
    if (f & IW) { NEED(2); d->imm = (uint64_t)(p[pos] | p[pos + 1] << 8); pos += 2; }
    if (f & IB2) { NEED(1); d->imm2 = p[pos++]; }
    if (f & IZ) {
        if (immsz == 2) { NEED(2); d->imm = (uint64_t)(int64_t)(int16_t)(p[pos] | p[pos + 1] << 8); pos += 2; }
        else { int32_t v; NEED(4); memcpy(&v, p + pos, 4); d->imm = (uint64_t)(int64_t)v; pos += 4; }
    }
    if (f & IV) {
        int n = osz;
        NEED(n);
        uint64_t v = 0; memcpy(&v, p + pos, n); d->imm = v; pos += n;
    }
    if (f & AO) { NEED(asz); uint64_t v = 0; memcpy(&v, p + pos, asz); d->imm = v; pos += asz; }
    if (f & FAR) {
        int n = osz == 2 ? 2 : 4;
        NEED(n + 2);
        uint64_t v = 0; memcpy(&v, p + pos, n); d->imm = v; pos += n;
        d->imm2 = (uint16_t)(p[pos] | p[pos + 1] << 8); pos += 2;
    }
    if (pos > 15) return -1;
    d->osz = (uint8_t)osz;
    d->len = (uint8_t)pos;
    if (!fn) fn = h_unhandled;
    if (is64 && (f & NO64)) fn = h_ud;
    if (lock && (!(f & LK) || mod == 3)) {
        /* LOCK CR0 is AMD's MOV CR8 alias; everything else is #UD (SDM LOCK) */
        if (!(map == 1 && (op == 0x20 || op == 0x22))) fn = h_ud;
    }
    d->fn = fn;
    d->fn = specialize(d, is64);
    /* block-ending marker kept in the high bit of map */
    if (f & END) d->map |= 0x80;
    return pos;
#undef NEED
}

/* Decode a block starting at linear `lin` / guest-physical `gpa`. */
void decode_block(cpu_t *c, block_t *b, uint64_t lin, uint64_t gpa, int single)
{
    uint32_t gidx = 0;
    uint8_t *h = gpa_host(c->vm, gpa & ~0xfffULL, &gidx);
    b->n = 0;
    b->ninsn = 0;
    b->gpa = ~0ULL;
    if (!h) exit_unhandled(c);   /* executing from MMIO: not supported */
    uint32_t old = __atomic_fetch_or(&c->vm->gen[gidx], 1, __ATOMIC_SEQ_CST);
    if (!(old & 1) && c->vm->membarrier_cmd) {
        /* page becomes code: make every vCPU's in-flight stores visible
         * before we read the bytes (pairs with the compiler barrier in
         * mem_write; asymmetric Dekker, see membarrier(2)) */
        syscall(SYS_membarrier, c->vm->membarrier_cmd, 0, 0);
    }
    uint32_t g = old | 1;
    b->gen = g; b->gidx = gidx; b->key = c->csz;
    b->gpa2 = ~0ULL;
    unsigned off = gpa & 0xfff;
    int crossed = 0;
    uint8_t *h2 = NULL;          /* the next page, once an instruction needs its bytes */
    uint64_t gpa2 = 0;
    uint32_t gidx2 = 0, gen2 = 0;
    while (b->n < BLK_MAX) {
        uint8_t buf[16];
        const uint8_t *p;
        int avail = 0x1000 - off;
        if (avail >= 15) { p = h + off; avail = 15; }
        else {
            memcpy(buf, h + off, avail);
            if (!h2 && fetch_translate(c, lin + avail, &gpa2, 0) == 0) {
                h2 = gpa_host(c->vm, gpa2, &gidx2);
                if (h2) {   /* it becomes code too, before its bytes are read (as above) */
                    uint32_t o2 = __atomic_fetch_or(&c->vm->gen[gidx2], 1, __ATOMIC_SEQ_CST);
                    if (!(o2 & 1) && c->vm->membarrier_cmd) syscall(SYS_membarrier, c->vm->membarrier_cmd, 0, 0);
                    gen2 = o2 | 1;
                }
            }
            if (h2) { memcpy(buf + avail, h2, 15 - avail); avail = 15; }
            p = buf;
        }
        insn_t *d = &b->insns[b->n];
        int len = decode_one(d, p, avail, c->csz, c->vm);
        if (len < 0) {
            if (b->n) break;
            raise_gp(c, 0);   /* longer than 15 bytes */
        }
        if (len == 0) {
            if (b->n) break;
            uint64_t gpa2;
            fetch_translate(c, lin + (0x1000 - off), &gpa2, 1);   /* raises #PF */
            exit_unhandled(c);
        }
        if (off + len > 0x1000) {
            /* spans two pages: the block ends with it, and stays valid
             * while both pages keep their generation and translation */
            crossed = 1;
            b->gpa2 = gpa2; b->gidx2 = gidx2; b->gen2 = gen2;
        }
        d->ninsn = 1;
        b->ninsn++;
        /* macro-fusion: flag-setting register op + Jcc in one entry */
        if (b->n > 0 && d->fn == h_jcc64) {
            insn_t *p = &b->insns[b->n - 1];
            handler_t f = p->ninsn == 1 ? fuse_jcc(p->fn) : NULL;
            if (f) {
                p->fn = f; p->cc = d->op & 15; p->jdisp = (int32_t)d->imm;
                p->len += d->len; p->ninsn = 2; p->map |= 0x80;
                off += len; lin += len;
                break;
            }
        }
        b->n++;
        off += len; lin += len;
        if ((d->map & 0x80) || crossed || single || off >= 0x1000) break;
    }
    for (int k = 0; k < b->n; k++) b->insns[k].map &= 0x7f;
    if (!single) b->gpa = gpa;
    (void)crossed;
}

/* The segment of the memory operand of the instruction at RIP: only for
 * the cold path that chooses #SS or #GP for a non-canonical address
 * (mmu.c), so the access fast paths need not carry the segment along. */
int insn_mem_seg(cpu_t *c)
{
    uint8_t buf[15];
    int n = fetch_insn_bytes(c, buf);
    insn_t d;
    return decode_one(&d, buf, n, c->csz, c->vm) > 0 ? d.seg : S_DS;
}
