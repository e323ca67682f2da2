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
 *   - the code is (int32_t)(y + u) clamped with an integer min (y + u >= 0
 *     and below 2^31: truncation is floor), the largest element's code the
 *     top one (or-ed in as a mask: a select there makes gcc branch around
 *     the code's computation, and the loop is not vectorised), the sign
 *     from the float's bits; the random bits are lowp.h's hash in uint32
 *     arithmetic;
 *   - decoding computes the magnitude from the code, u = c / 255,
 *     (u * u) * (u * u) or s = (c & 127) / 127, s * s, times the scale;
 *     the sign of a signed code is xor-ed into the bits.
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
 * (signed int32 arithmetic: the values are below 2^31) */
static inline __attribute__((always_inline)) uint32_t FO_LOWP(q8_absmax_bits)(
    const float *restrict x, size_t n)
{
    int32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        const int32_t b = (int32_t)(FO_LOWP(q8_bits)(x[i]) & 0x7fffffffu);
        m = b > m ? b : m;
    }
    return (uint32_t)m;
}

/* One block of n <= FO_Q8_BLOCK elements; k: the random counter of its
 * first element */
static inline __attribute__((always_inline)) void FO_LOWP(q8_block_encode)(
    const float *restrict x, uint8_t *restrict codes, float *scale, size_t n,
    int nonneg, uint32_t k)
{
    const uint32_t mbits = FO_LOWP(q8_absmax_bits)(x, n);
    const float absmax = FO_LOWP(q8_float)(mbits);
    *scale = absmax;
    if (mbits >= 0x7f800000u) {   /* infinite or NaN */
        memset(codes, 0, n);
        return;
    }
    float inv = absmax > 0.0f ? 1.0f / absmax : 0.0f;
    /* absmax below 2^-128: 1 / absmax overflows, and a * inf would make
     * codes of infinities and NaNs; such a block keeps codes 0 but for its
     * largest element (the values are below 3e-39) */
    inv = inv <= FLT_MAX ? inv : 0.0f;
    /* the largest element gets the top code; none matches -1 (absmax 0) */
    const float top = absmax > 0.0f ? absmax : -1.0f;
    if (nonneg) {
        for (size_t i = 0; i < n; i++) {
            const float xi = x[i];
            const float a = xi > 0.0f ? xi : 0.0f;
            const float root = sqrtf(sqrtf(a * inv));
            const uint32_t h = FO_LOWP(hash32)(k + (uint32_t)i);
            const float u = (float)(int32_t)(h >> 8) * 0x1p-24f;
            int32_t c = (int32_t)(root * 255.0f + u);
            c = c < 255 ? c : 255;
            c |= -(int32_t)(a == top) & 255;   /* c <= 255: the top code */
            codes[i] = (uint8_t)c;
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            const uint32_t bits = FO_LOWP(q8_bits)(x[i]);
            const float a = FO_LOWP(q8_float)(bits & 0x7fffffffu);
            const float root = sqrtf(a * inv);
            const uint32_t h = FO_LOWP(hash32)(k + (uint32_t)i);
            const float u = (float)(int32_t)(h >> 8) * 0x1p-24f;
            int32_t c = (int32_t)(root * 127.0f + u);
            c = c < 127 ? c : 127;
            c |= -(int32_t)(a == top) & 127;   /* c <= 127: the top code */
            codes[i] = (uint8_t)((uint32_t)c | ((bits >> 24) & 0x80u));
        }
    }
}

/* n elements of x from a block start: codes, and a scale per block; element
 * i draws the random bits of counter key + index0 + i */
static void FO_LOWP(q8_encode)(const float *x, uint8_t *codes, float *scales,
                               size_t n, int nonneg, uint32_t key, size_t index0)
{
    const uint32_t k = key + (uint32_t)index0;
    for (size_t b = 0; b * FO_Q8_BLOCK < n; b++) {
        const size_t at = b * FO_Q8_BLOCK;
        const size_t m = n - at < FO_Q8_BLOCK ? n - at : FO_Q8_BLOCK;
        FO_LOWP(q8_block_encode)(x + at, codes + at, scales + b, m, nonneg,
                                 k + (uint32_t)at);
    }
}

/* out[i] = the value of code codes[i] in its block, i < n, from a block
 * start */
static void FO_LOWP(q8_decode)(const uint8_t *codes, const float *scales,
                               float *out, size_t n, int nonneg)
{
    for (size_t b = 0; b * FO_Q8_BLOCK < n; b++) {
        const size_t at = b * FO_Q8_BLOCK;
        const size_t m = n - at < FO_Q8_BLOCK ? n - at : FO_Q8_BLOCK;
        const uint8_t *restrict c = codes + at;
        float *restrict o = out + at;
        const float scale = scales[b];
        if (nonneg) {
            for (size_t i = 0; i < m; i++) {
                const float u = (float)(int32_t)c[i] / 255.0f;
                const float u2 = u * u;
                o[i] = scale * (u2 * u2);
            }
        } else {
            for (size_t i = 0; i < m; i++) {
                const uint32_t ci = c[i];
                const float s = (float)(int32_t)(ci & 127u) / 127.0f;
                const float v = scale * (s * s);
                o[i] = FO_LOWP(q8_float)(FO_LOWP(q8_bits)(v) ^ ((ci & 0x80u) << 24));
            }
        }
    }
}
