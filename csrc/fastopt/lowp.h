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
 * The random bits of element i of a state come from a counter-based hash
 * h = hash32(key + i), where key (fo_lowp_slot_key of slot & ~1) depends on
 * the tensor's key (fo_lowp_tensor_key: seed, parameter index, step) and on
 * the state's slot pair, and i counts from the tensor's first element: an
 * even slot takes h's upper 16 bits, the odd slot after it the lower 16, so
 * one hash serves two states (Adam's m and v) and a step computes half as
 * many.  They depend on nothing else, so the written bits are the same for
 * every thread split and instruction set, and fastopt.reference.bf16_round
 * computes them with NumPy.  The rules (rules.h, FO_BF16) store through
 * bf16_store in their own loops; bf16_encode and bf16_decode are the same
 * over whole arrays.
 */
#ifndef FASTOPT_LOWP_TYPES
#define FASTOPT_LOWP_TYPES
#include <string.h>
/* A bfloat16 state element; a struct, so that it cannot be mistaken for a
 * number */
typedef struct { uint16_t bits; } fo_bf16;
#endif

/* The random bits of counter x: one odd multiply and an xorshift, a
 * bijection on 32 bits.  The counter is a key plus an element index, and
 * the key is drawn by SplitMix64 afresh for every step, tensor and slot
 * pair, so for each element x is uniform and independent from step to
 * step; a bijection keeps that, and the upper and lower 16 bits (the two
 * states of a slot pair) and the four bytes (8-bit states) are uniform
 * and independent of each other.  Neighbouring elements of one step get
 * evenly spread bits (a Weyl sequence) rather than independent ones, which
 * no element's rounding depends on.  Wellons' "lowbias32" (two multiplies,
 * three xorshifts), with bf16_store choosing a NaN's bits after the shift,
 * made an AdamW step with bfloat16 states 10-15 % slower at 5 * 10^7
 * elements (README). */
static inline __attribute__((always_inline)) uint32_t FO_LOWP(hash32)(uint32_t x)
{
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

/* The 16 random bits of hash h for a state of an even (low = 0) or odd
 * (low = 1) slot */
static inline __attribute__((always_inline)) uint32_t FO_LOWP(bf16_bits)(uint32_t h, int low)
{
    return low ? h & 0xffffu : h >> 16;
}

/* x rounded stochastically with the 16 random bits r */
static inline __attribute__((always_inline)) fo_bf16 FO_LOWP(bf16_store)(float x, uint32_t r)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    /* a NaN keeps its upper bits with the quiet bit set; written as a
     * choice between two 32-bit words, shifted after, so that vector code
     * makes it one masked operation (gcc blended a choice between the
     * shifted halves after packing them: with this hash, 20 % slower out
     * of cache) */
    uint32_t w = u + r;
    w = x != x ? u | 0x00400000u : w;
    const fo_bf16 b = {(uint16_t)(w >> 16)};
    return b;
}

/* out[i] = the float32 of bfloat16 in[i], i < n */
static void FO_LOWP(bf16_decode)(const void *in, float *out, size_t n)
{
    const fo_bf16 *restrict b = (const fo_bf16 *)in;
    for (size_t i = 0; i < n; i++) out[i] = FO_LOWP(bf16_load)(b[i]);
}

/* out[i] = x[i] rounded stochastically with the random bits of element
 * index0 + i under slot key `key`, the lower half of each hash if `low` */
static void FO_LOWP(bf16_encode)(const float *x, void *out, size_t n,
                                 uint32_t key, size_t index0, int low)
{
    fo_bf16 *restrict o = (fo_bf16 *)out;
    const uint32_t k = key + (uint32_t)index0;
    if (low) {
        for (size_t i = 0; i < n; i++)
            o[i] = FO_LOWP(bf16_store)(x[i], FO_LOWP(bf16_bits)(FO_LOWP(hash32)(k + (uint32_t)i), 1));
    } else {
        for (size_t i = 0; i < n; i++)
            o[i] = FO_LOWP(bf16_store)(x[i], FO_LOWP(bf16_bits)(FO_LOWP(hash32)(k + (uint32_t)i), 0));
    }
}
