/* Low-precision optimizer states: bfloat16 storage with stochastic rounding.
 *
 * Included once by kernels_isa.c (float32 only) with FO_NAME defined; every
 * instruction-set level compiles the same loops, which use integer
 * arithmetic alone, so every level writes the same bits.
 *
 * A bfloat16 number is the upper 16 bits of a float32.  Decoding is exact
 * (a shift).  Encoding x rounds stochastically: with u the bits of x and r
 * 16 random bits, the result is (u + r) >> 16, which rounds |x| up to the
 * next bfloat16 with probability equal to the distance from the lower one
 * in units of the gap, so E[decode(encode(x))] = x.  A value that is
 * already a bfloat16 (low 16 bits zero) is kept as it is; infinities stay
 * infinities; a NaN becomes the quiet NaN of its sign and upper payload.
 * Values above the largest bfloat16 may round to infinity, like any
 * rounding into a narrower format.
 *
 * The random bits of element i of a state come from a counter-based hash:
 * r = fo_hash32(key + i) >> 16, where key (fo_lowp_slot_key) depends on the
 * tensor's key (fo_lowp_tensor_key: seed, parameter index, step) and the
 * state's slot.  They depend on nothing else, so the written bits are the
 * same for every thread split, chunking and instruction set, and
 * fastopt.reference.bf16_round computes them with NumPy.
 */

/* Chris Wellons' "lowbias32" integer hash (a bijection on 32 bits) */
static inline __attribute__((always_inline)) uint32_t FO_NAME(hash32)(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

/* out[i] = the float32 of bfloat16 bits in[i], i < n */
static void FO_NAME(bf16_decode)(const void *in, float *out, size_t n)
{
    const uint16_t *restrict b = (const uint16_t *)in;
    uint32_t *restrict o = (uint32_t *)out;
    for (size_t i = 0; i < n; i++) o[i] = (uint32_t)b[i] << 16;
}

/* out[i] = x[i] rounded stochastically to bfloat16, with the random bits of
 * element index0 + i of the state whose slot key is `key` */
static void FO_NAME(bf16_encode)(const float *x, void *out, size_t n,
                                 uint32_t key, size_t index0)
{
    const uint32_t *restrict u = (const uint32_t *)x;
    uint16_t *restrict o = (uint16_t *)out;
    uint32_t c = key + (uint32_t)index0;   /* the counter, modulo 2^32 */
    for (size_t i = 0; i < n; i++, c++) {
        const uint32_t ui = u[i];
        const uint32_t r = FO_NAME(hash32)(c) >> 16;
        const int nan = (ui & 0x7fffffffu) > 0x7f800000u;
        o[i] = (uint16_t)(nan ? (ui >> 16) | 0x0040u : (ui + r) >> 16);
    }
}
