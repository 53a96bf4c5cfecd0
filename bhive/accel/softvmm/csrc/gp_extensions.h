/* gp_extensions.c: general-purpose extensions (POPCNT/LZCNT/TZCNT, MOVBE, CRC32,
 * ADX, BMI1/BMI2) and legacy BOUND/ARPL. */
#ifndef SOFTVMM_INTEXT_H
#define SOFTVMM_INTEXT_H
#include "handlers.h"
HANDLER(h_popcnt);
HANDLER(h_lzcnt_tzcnt);
HANDLER(h_movbe_crc32);
HANDLER(h_adx);
HANDLER(h_andn);
HANDLER(h_bls);
HANDLER(h_bzhi);
HANDLER(h_pdep);
HANDLER(h_pext);
HANDLER(h_mulx);
HANDLER(h_bextr);
HANDLER(h_shiftx);
HANDLER(h_rorx);
HANDLER(h_bound);
HANDLER(h_arpl);
handler_t vex_lookup(int map, int op, int pp, int L, uint8_t *sub);
void cpuid_int_features(uint32_t leaf, uint32_t sub, uint32_t o[4]);
#endif
