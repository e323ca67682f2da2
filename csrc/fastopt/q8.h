/* 8-bit blockwise states: the codec (kernels.h, fo_q8_encode), compiled at
 * every instruction-set level.
 *
 * Included once by kernels_isa.c after lowp.h, with FO_LOWP(x) naming x at
 * this level.  Every loop is written so that gcc -O3 vectorises it at the
 * level's width, with the float32 operations of fastopt.reference.q8_encode
 * and q8_decode in their order (no contraction), so every level writes the
 * same bits:
 *   - a block's scale is the float whose bits are the largest of its
 *     elements' bits with the sign cleared: for |x| the IEEE bit patterns
 *     order like unsigned integers, so that is max |x| as an integer max
 *     reduction, and any NaN gives a NaN scale (the largest payload's);
 *   - the block's reciprocal is rounded up when needed so that scale * inv
 *     >= 1: the largest element maps to 1 and gets the top code, whose
 *     value is the scale exactly, with no special case in the loop; a
 *     block whose scale has no float32 reciprocal (below 2^-128) is coded
 *     from a copy scaled by 2^64, an exact power of two;
 *   - a code's magnitude c > 0 stands for the float32 whose bits are
 *     (c + K) << 20: a float with 3 mantissa bits, K putting the top code
 *     at 1.0 (the block's scale); c = 0 stands for 0.  Values y = |x| * inv
 *     from V(1) up are coded by rounding their bits stochastically at bit
 *     20, ((bits(y) + R) >> 20) - K with R = (2r + 1) << 11 for a random
 *     byte r, clamped to the top code with an integer min; below V(1) the
 *     code is 0 or 1, ((int32_t)(y * (2^20 / V(1))) + R) >> 20.  Both
 *     round without bias (within a binade the value is linear in the
 *     bits), and none takes a square root or a division;
 *   - a block with nothing to code below V(1) (its smallest nonzero
 *     magnitude, found with the scale, times inv is V(1) or more: the
 *     usual case) skips the second branch, which would give every element
 *     the same code;
 *   - one hash (lowp.h, uint32 arithmetic) gives the random bytes of four
 *     elements 64 apart, so a whole block is a loop over 64 hashes;
 *   - decoding makes the float from the code's bits (0 for code 0) and
 *     multiplies it by the scale; the sign of a signed code is xor-ed into
 *     the bits.
 * The choice between the two maps (nonneg or signed) is made once per
 * block, outside the element loops.
 */

static inline __attribute__((always_inline)) uint32_t FO_LOWP(q8_bits)(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline __attribute__((always_inline)) float FO_LOWP(q8_float)(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* The bits of a block's scale: max over i < n of bits(x[i]) & 0x7fffffff
 * (signed int32 arithmetic: the values are below 2^31); and in *low the
 * bits of the smallest nonzero magnitude the block codes (|x|, or max(x, 0)
 * for a never negative state) less one, 0xffffffff if there is none (an
 * unsigned minimum of bits - 1, where 0 wraps to the largest) */
static inline __attribute__((always_inline)) uint32_t FO_LOWP(q8_range_bits)(
    const float *restrict x, size_t n, int nonneg, uint32_t *low)
{
    int32_t m = 0;
    uint32_t lo = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        const uint32_t u = FO_LOWP(q8_bits)(x[i]);
        const int32_t b = (int32_t)(u & 0x7fffffffu);
        m = b > m ? b : m;
        const uint32_t a = nonneg ? (uint32_t)((int32_t)u > 0 ? (int32_t)u : 0) : (uint32_t)b;
        const uint32_t a1 = a - 1u;
        lo = a1 < lo ? a1 : lo;
    }
    *low = lo;
    return (uint32_t)m;
}

/* The two maps: magnitude codes 1..FO_Q8_TOP(nonneg) stand for the floats
 * of bits (c + K) << FO_Q8_DROP, the top one 1.0; V(1) is the smallest */
#ifndef FO_Q8_DROP
#define FO_Q8_DROP 20   /* 23 mantissa bits less the 3 a code keeps */
#define FO_Q8_TOP(nonneg) ((nonneg) ? 255u : 127u)
#define FO_Q8_K(nonneg) ((0x3f800000u >> FO_Q8_DROP) - FO_Q8_TOP(nonneg))
#define FO_Q8_V1_BITS(nonneg) ((FO_Q8_K(nonneg) + 1u) << FO_Q8_DROP)
#endif

/* The rounding addend of a random byte: (2r + 1) << 11, from byte q of
 * hash h */
static inline __attribute__((always_inline)) uint32_t FO_LOWP(q8_round_bits)(
    uint32_t h, uint32_t q)
{
    return (((h >> (8 * q)) & 255u) << 12) | 0x800u;
}

/* The code of a magnitude a >= 0 of a block with reciprocal inv, with
 * rounding addend rr.  With full = 0 the caller knows that y = a * inv is
 * 0 or at least V(1) (q8_block_encode), and the code is the first branch
 * alone: max(((bits + rr) >> 20) - K, 0) as a signed integer, which is 0
 * for y = 0 (rr < 2^20) and, from V(1) up, the code below (where low is
 * always 1) */
static inline __attribute__((always_inline)) uint32_t FO_LOWP(q8_code)(
    float a, float inv, uint32_t rr, int nonneg, int full)
{
    const uint32_t k = FO_Q8_K(nonneg), top = FO_Q8_TOP(nonneg);
    const uint32_t v1b = FO_Q8_V1_BITS(nonneg);
    const float to_fixed = 0x1p20f / FO_LOWP(q8_float)(v1b);
    const float y = a * inv;
    /* y >= 0, so its bits order like y, and the comparisons are integer
     * ones (a float comparison or conversion under a condition keeps gcc
     * from vectorising the loop at levels without masked operations) */
    const uint32_t yb = FO_LOWP(q8_bits)(y);
    if (!full) {
        int32_t c = (int32_t)((yb + rr) >> FO_Q8_DROP) - (int32_t)k;
        c = c > 0 ? c : 0;
        return (uint32_t)c < top ? (uint32_t)c : top;
    }
    /* from V(1) up: c = ((bits + rr) >> 20) - K, which is hi - (K + 1) + 1;
     * below V(1), hi is K + 1 at most and max makes it that */
    uint32_t hi = (yb + rr) >> FO_Q8_DROP;
    hi = hi > k + 1u ? hi : k + 1u;
    /* below V(1): y / V(1) in 20-bit fixed point, rounded at bit 20, 0 or
     * 1; from V(1) up (y capped at V(1), so the conversion stays within
     * int32, and gives 2^20 within rounding) always 1 */
    const float y_low = FO_LOWP(q8_float)(yb < v1b ? yb : v1b);
    const uint32_t low = ((uint32_t)(int32_t)(y_low * to_fixed) + rr) >> FO_Q8_DROP;
    const uint32_t c = hi - (k + 1u) + low;
    return c < top ? c : top;
}

/* The code of element x: never negative states code max(x, 0) (as an
 * integer maximum of its bits; the block has no NaN), signed ones |x| and
 * the sign bit */
static inline __attribute__((always_inline)) uint8_t FO_LOWP(q8_element)(
    float x, float inv, uint32_t rr, int nonneg, int full)
{
    const uint32_t bits = FO_LOWP(q8_bits)(x);
    if (nonneg) {
        const int32_t b = (int32_t)bits;
        return (uint8_t)FO_LOWP(q8_code)(FO_LOWP(q8_float)((uint32_t)(b > 0 ? b : 0)), inv, rr, 1, full);
    }
    const float a = FO_LOWP(q8_float)(bits & 0x7fffffffu);
    return (uint8_t)(FO_LOWP(q8_code)(a, inv, rr, 0, full) | ((bits >> 24) & 0x80u));
}

/* The element loop of a block with its reciprocal; the random byte of
 * element i is byte i >> 6 of hash32(kb + (i & 63)) */
static inline __attribute__((always_inline)) void FO_LOWP(q8_block_codes)(
    const float *restrict x, uint8_t *restrict codes, size_t n, float inv,
    int nonneg, int full, uint32_t kb)
{
    if (n == FO_Q8_BLOCK) {
        for (uint32_t j = 0; j < 64; j++) {
            const uint32_t h = FO_LOWP(hash32)(kb + j);
            for (uint32_t q = 0; q < 4; q++)
                codes[j + 64 * q] = FO_LOWP(q8_element)(x[j + 64 * q], inv,
                                                        FO_LOWP(q8_round_bits)(h, q), nonneg, full);
        }
        return;
    }
    const uint32_t m = (uint32_t)n;
    for (uint32_t i = 0; i < m; i++) {
        const uint32_t rr = FO_LOWP(q8_round_bits)(FO_LOWP(hash32)(kb + (i & 63u)), i >> 6);
        codes[i] = FO_LOWP(q8_element)(x[i], inv, rr, nonneg, full);
    }
}

/* One block of n <= FO_Q8_BLOCK elements whose range (q8_range_bits) is
 * mbits and low; kb: its random counter */
static inline __attribute__((always_inline)) void FO_LOWP(q8_block_encode)(
    const float *restrict x, uint8_t *restrict codes, float *scale, size_t n,
    int nonneg, uint32_t kb, uint32_t mbits, uint32_t low)
{
    float absmax = FO_LOWP(q8_float)(mbits);
    *scale = absmax;
    if (mbits >= 0x7f800000u) {   /* infinite or NaN */
        memset(codes, 0, n);
        return;
    }
    /* the smallest nonzero magnitude to code (0 if there is none) */
    float amin = low == 0xffffffffu ? 0.0f : FO_LOWP(q8_float)(low + 1u);
    float inv = absmax > 0.0f ? 1.0f / absmax : 0.0f;
    float scaled[FO_Q8_BLOCK];
    if (!(inv <= FLT_MAX)) {
        /* 1 / absmax overflows: the block times 2^64 (exact) */
        for (size_t i = 0; i < n; i++) scaled[i] = x[i] * 0x1p64f;
        x = scaled;
        absmax *= 0x1p64f;
        amin *= 0x1p64f;
        inv = 1.0f / absmax;
    }
    /* the next float up from a positive finite inv: its bits plus one */
    if (absmax * inv < 1.0f && absmax > 0.0f)
        inv = FO_LOWP(q8_float)(FO_LOWP(q8_bits)(inv) + 1u);
    /* float rounding is monotonic, so every nonzero y = a * inv is at
     * least amin * inv: when that is V(1) or more, nothing in the block is
     * coded from below V(1) and the short form of the code gives the same
     * codes */
    const int full = amin > 0.0f && FO_LOWP(q8_bits)(amin * inv) < FO_Q8_V1_BITS(nonneg);
    if (nonneg) {
        if (full) FO_LOWP(q8_block_codes)(x, codes, n, inv, 1, 1, kb);
        else FO_LOWP(q8_block_codes)(x, codes, n, inv, 1, 0, kb);
    } else {
        if (full) FO_LOWP(q8_block_codes)(x, codes, n, inv, 0, 1, kb);
        else FO_LOWP(q8_block_codes)(x, codes, n, inv, 0, 0, kb);
    }
}

/* Blocks whose ranges are found together, before any is coded: the
 * ranges' reductions and the scalar work after them do not wait for one
 * another */
#define FO_Q8_GROUP 4

/* n elements of x from a block start: codes, and a scale per block.  The
 * random byte of element i (counted from x) is byte (i >> 6) & 3 of
 * hash32(key + index0 / 4 + (i >> 8) * 64 + (i & 63)) */
static inline __attribute__((always_inline)) void FO_LOWP(q8_encode_n)(
    const float *x, uint8_t *codes, float *scales, size_t n, int nonneg,
    uint32_t key, size_t index0)
{
    const uint32_t k = key + (uint32_t)(index0 >> 2);
    for (size_t b0 = 0; b0 * FO_Q8_BLOCK < n; b0 += FO_Q8_GROUP) {
        uint32_t mbits[FO_Q8_GROUP], low[FO_Q8_GROUP];
        size_t g = 0;
        for (; g < FO_Q8_GROUP && (b0 + g) * FO_Q8_BLOCK < n; g++) {
            const size_t at = (b0 + g) * FO_Q8_BLOCK;
            const size_t m = n - at < FO_Q8_BLOCK ? n - at : FO_Q8_BLOCK;
            mbits[g] = FO_LOWP(q8_range_bits)(x + at, m, nonneg, &low[g]);
        }
        for (size_t j = 0; j < g; j++) {
            const size_t b = b0 + j, at = b * FO_Q8_BLOCK;
            const size_t m = n - at < FO_Q8_BLOCK ? n - at : FO_Q8_BLOCK;
            FO_LOWP(q8_block_encode)(x + at, codes + at, scales + b, m, nonneg,
                                     k + (uint32_t)(b * 64), mbits[j], low[j]);
        }
    }
}

/* The requantization of a whole chunk (FO_Q8_CHUNK elements, kernels.h)
 * has its length and map as constants, so that the range loops' trip
 * counts and the choices between the maps are known at compile time:
 * coding two states of 1,024 elements in L1 took 0.17 ns an element this
 * way against 0.19 with both read at run time (AVX-512; AVX2 0.41 against
 * 0.43; the same codes).  Other lengths take the general form. */
static void FO_LOWP(q8_encode)(const float *x, uint8_t *codes, float *scales,
                               size_t n, int nonneg, uint32_t key, size_t index0)
{
    if (n == FO_Q8_CHUNK && nonneg)
        FO_LOWP(q8_encode_n)(x, codes, scales, FO_Q8_CHUNK, 1, key, index0);
    else if (n == FO_Q8_CHUNK)
        FO_LOWP(q8_encode_n)(x, codes, scales, FO_Q8_CHUNK, 0, key, index0);
    else
        FO_LOWP(q8_encode_n)(x, codes, scales, n, nonneg, key, index0);
}

/* The value of code c in a block of the given scale, mag being the top
 * code of its map (255 never negative, 127 signed): 0 for magnitude 0,
 * else the float of bits (magnitude + K) << FO_Q8_DROP times the scale,
 * with the sign bit of a signed code xor-ed in.  No branch on the map:
 * q8_decode passes a constant mag, the rules' loops that decode a state
 * as they read it the state's own (rules.h, FO_Q8) */
static inline __attribute__((always_inline)) float FO_LOWP(q8_load)(
    uint32_t c, float scale, uint32_t mag)
{
    const uint32_t cm = c & mag;
    const float u = FO_LOWP(q8_float)((cm + ((0x3f800000u >> FO_Q8_DROP) - mag)) << FO_Q8_DROP);
    const float v = scale * (cm != 0u ? u : 0.0f);
    return FO_LOWP(q8_float)(FO_LOWP(q8_bits)(v) ^ ((c & ~mag & 0x80u) << 24));
}

/* out[i] = the value of code codes[i] in its block, i < n, from a block
 * start */
static void FO_LOWP(q8_decode)(const uint8_t *codes, const float *scales,
                               float *out, size_t n, int nonneg)
{
    for (size_t b = 0; b * FO_Q8_BLOCK < n; b++) {
        const size_t at = b * FO_Q8_BLOCK;
        const uint32_t m = (uint32_t)(n - at < FO_Q8_BLOCK ? n - at : FO_Q8_BLOCK);
        const uint8_t *restrict c = codes + at;
        float *restrict o = out + at;
        const float scale = scales[b];
        if (nonneg) {
            for (uint32_t i = 0; i < m; i++)
                o[i] = FO_LOWP(q8_load)(c[i], scale, FO_Q8_TOP(1));
        } else {
            for (uint32_t i = 0; i < m; i++)
                o[i] = FO_LOWP(q8_load)(c[i], scale, FO_Q8_TOP(0));
        }
    }
}
