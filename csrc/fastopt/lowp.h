/* Low-precision optimizer states: bfloat16 storage with stochastic rounding.
 *
 * Included once by kernels_isa.c, before the rules, with FO_LOWP(x) naming
 * x at this instruction-set level.  Everything here is integer arithmetic,
 * so every level computes the same bits.
 *
 * A bfloat16 number is the upper 16 bits of a float32.  Loading is exact (a
 * shift).  Storing x rounds stochastically: with u the bits of x and r 16
 * random bits, the result is (u + r) >> 16, which rounds |x| up to the next
 * bfloat16 with probability equal to its distance from the lower one in
 * units of the gap, so E[load(store(x))] = x.  A value that is already a
 * bfloat16 (low 16 bits zero) is kept as it is; infinities stay infinities;
 * a NaN becomes the quiet NaN of its sign and upper payload.  Values above
 * the largest bfloat16 may round to infinity, like any rounding into a
 * narrower format.
 *
 * The random bits of element i of a state come from a counter-based hash:
 * r = hash32(key + i) >> 16, where key (fo_lowp_slot_key) depends on the
 * tensor's key (fo_lowp_tensor_key: seed, parameter index, step) and the
 * state's slot, and i counts from the tensor's first element.  They depend
 * on nothing else, so the written bits are the same for every thread split
 * and instruction set, and fastopt.reference.bf16_round computes them with
 * NumPy.  The rules (rules.h, FO_BF16) store through bf16_store in their
 * own loops; bf16_encode and bf16_decode are the same over whole arrays.
 */
#ifndef FASTOPT_LOWP_TYPES
#define FASTOPT_LOWP_TYPES
#include <string.h>
/* A bfloat16 state element; a struct, so that it cannot be mistaken for a
 * number */
typedef struct { uint16_t bits; } fo_bf16;
#endif

/* Chris Wellons' "lowbias32" integer hash (a bijection on 32 bits) */
static inline __attribute__((always_inline)) uint32_t FO_LOWP(hash32)(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

static inline __attribute__((always_inline)) float FO_LOWP(bf16_load)(fo_bf16 b)
{
    const uint32_t u = (uint32_t)b.bits << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* x rounded stochastically with the random bits of counter c */
static inline __attribute__((always_inline)) fo_bf16 FO_LOWP(bf16_store)(float x, uint32_t c)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    const uint32_t r = FO_LOWP(hash32)(c) >> 16;
    const int nan = (u & 0x7fffffffu) > 0x7f800000u;
    const fo_bf16 b = {(uint16_t)(nan ? (u >> 16) | 0x0040u : (u + r) >> 16)};
    return b;
}

/* out[i] = the float32 of bfloat16 in[i], i < n */
static void FO_LOWP(bf16_decode)(const void *in, float *out, size_t n)
{
    const fo_bf16 *restrict b = (const fo_bf16 *)in;
    for (size_t i = 0; i < n; i++) out[i] = FO_LOWP(bf16_load)(b[i]);
}

/* out[i] = x[i] rounded stochastically with the random bits of element
 * index0 + i of the state whose slot key is `key` */
static void FO_LOWP(bf16_encode)(const float *x, void *out, size_t n,
                                 uint32_t key, size_t index0)
{
    fo_bf16 *restrict o = (fo_bf16 *)out;
    const uint32_t k = key + (uint32_t)index0;
    for (size_t i = 0; i < n; i++) o[i] = FO_LOWP(bf16_store)(x[i], k + (uint32_t)i);
}
