/*
 * softvmm: x87 FPU and SSE/SSE2/SSE3 state (included by cpu.h).
 *
 * The guest's floating-point state lives here and only here.  Arithmetic is
 * done by the host's own x87/SSE units inside inline-asm blocks that load the
 * guest control word (FCW / MXCSR, with SSE exceptions masked), execute the
 * very instruction the guest executed, read the status back and restore the
 * host's control state before any C code runs again: bit-exact results,
 * rounding/precision/DAZ/FTZ governed by the guest, nothing leaking into the
 * host.  See x87.c and sse.c.
 */
#ifndef SOFTVMM_FPU_H
#define SOFTVMM_FPU_H
#include <stdint.h>

typedef union xmm {
    uint8_t b[16];
    uint16_t w[8];
    uint32_t d[4];
    uint64_t q[2];
} __attribute__((aligned(16))) xmm_t;

/* one x87 register: 80-bit extended value in the low 10 bytes */
typedef struct f80 { uint64_t m; uint16_t e; uint16_t pad[3]; } __attribute__((aligned(16))) f80_t;

typedef struct fpu_state {
    xmm_t xmm[16];
    f80_t st[8];         /* physical registers R0..R7 (ST(i) = R[(TOP+i)&7]) */
    uint32_t mxcsr;
    uint16_t fcw;
    uint16_t fsw;        /* TOP in bits 13:11 */
    uint8_t ftw;         /* abridged tag: bit n = R[n] is not empty */
    uint16_t fop;
    uint64_t fip, fdp;
} fpu_state_t;

#define FSW_IE 0x0001u
#define FSW_DE 0x0002u
#define FSW_ZE 0x0004u
#define FSW_OE 0x0008u
#define FSW_UE 0x0010u
#define FSW_PE 0x0020u
#define FSW_SF 0x0040u
#define FSW_ES 0x0080u
#define FSW_C0 0x0100u
#define FSW_C1 0x0200u
#define FSW_C2 0x0400u
#define FSW_C3 0x4000u
#define FSW_B  0x8000u
#define FSW_CC (FSW_C0 | FSW_C1 | FSW_C2 | FSW_C3)

#define MXCSR_DAZ 0x40u
#define CR4_OSXMMEXCPT 0x400u

struct svm_cpu;
struct insn;
void fpu_reset(struct svm_cpu *c);
void h_fxgrp(struct svm_cpu *c, const struct insn *i);    /* 0F AE /0-/3 memory forms */
void h_sse(struct svm_cpu *c, const struct insn *i);      /* 0F xx SSE/SSE2/SSE3 */
void h_x87(struct svm_cpu *c, const struct insn *i);      /* D8-DF */
void h_fwait(struct svm_cpu *c, const struct insn *i);    /* 9B */

#endif
