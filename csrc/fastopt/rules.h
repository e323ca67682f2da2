/* The update rules, written once and instantiated per element type.
 *
 * Included by kernels_isa.c with
 *   FO_T        the element type (float or double)
 *   FO_SQRT     its square root (sqrtf or sqrt)
 *   FO_NAME(x)  the symbol for rule x at this type and instruction set
 * defined, and undefined again afterwards (the stringlib way).
 *
 * Each rule is one plain loop over `restrict` pointers that the compiler
 * vectorises.  Coefficients arrive in double and are rounded to FO_T once,
 * so the arithmetic is FO_T arithmetic exactly as NumPy does it on FO_T
 * arrays with Python-float scalars; fastopt/reference.py performs the same
 * operations in the same order.  The build forbids contraction into fused
 * multiply-add (-ffp-contract=off) so every line rounds as written.
 *
 * A rule's coefficients, states and options are named by the indices of
 * fo_table.h (FO_<RULE>_C_*, _S_*, _O_*), which the build writes from the
 * rule table, src/fastopt/rules.py.
 *
 * States are declared with FO_STATE(x, slot), read with FO_LD(x, i) and
 * written with FO_ST(x, i, value), never indexed directly: with FO_BF16
 * defined (float32 parameters, bfloat16 states) the same bodies load
 * bfloat16 and store with stochastic rounding (lowp.h), in the same loop;
 * states of slots 2k and 2k + 1 share one hash per element (the compiler
 * computes it once: fo_lowp_slot_key is declared const).
 * There a state element is a struct, so a direct x[i] does not compile.
 */

#define FO_INLINE static inline __attribute__((always_inline))

/* The parameter is declared with FO_PARAM(p) and each element stored once
 * with FO_SETP(p, i, value).  With FO_EMA defined the same bodies also move
 * the parameter's average toward the stored value in the same loop, in
 * torch.lerp's form for weights w < 0.5, ema + w * (v - ema), with w
 * (a->ema_w) rounded once to FO_T, as ema_chunk computes it. */
#ifdef FO_EMA
#define FO_PARAM(p) \
    FO_T *restrict p = (FO_T *)t->p; \
    FO_T *restrict p##_avg = (FO_T *)t->ema; \
    const FO_T p##_avg_w = (FO_T)a->ema_w
#define FO_SETP(p, i, v) do { \
        const FO_T v_ = (v), e_ = p##_avg[i]; \
        p[i] = v_; \
        p##_avg[i] = e_ + p##_avg_w * (v_ - e_); \
    } while (0)
#else
#define FO_PARAM(p) FO_T *restrict p = (FO_T *)t->p
#define FO_SETP(p, i, v) (p[i] = (v))
#endif

#ifndef FO_PF_STRIP
/* Loops over bfloat16 and 8-bit states do little memory traffic for their
 * arithmetic, and on one core the hardware prefetchers alone leave such a
 * loop short of its traffic floor out of cache (AdamW with bfloat16 states
 * at 5 * 10^7 elements: 84-89 % of it on an AMD EPYC guest, about 100 %
 * with the prefetches below; README, performance notes).  When
 * fused_range (dispatch.c) hands them a prefetch plan (tensor field pf, for
 * steps whose arrays do not fit in cache), FO_FOR runs the loop in strips
 * of FO_PF_STRIP elements and, before each, prefetches the lines of every
 * array the loop streams FO_PF_AHEAD elements ahead: a few prefetches
 * between short runs of the loop, so that loads stay in flight all the
 * time (prefetching a whole sub-block's lines at once, or in a separate
 * pass, stalled and was slower).  Without a plan the strip is the whole
 * range [lo, hi) and the loop is the plain one.  Prefetches change no
 * value: every level and thread count computes the same bits. */
#define FO_PF_STRIP 128u
#define FO_PF_AHEAD 2048u
/* Prefetches the line of address a into every cache level.  As an asm
 * statement on x86 (with SSE) and aarch64: gcc deletes a loop that does
 * nothing but __builtin_prefetch in some of the contexts these loops are
 * inlined into (the prefetch has no side effect it must keep), and did in
 * probes of this code. */
FO_INLINE void fo_prefetch_line(const char *a)
{
#if defined(__GNUC__) && defined(__SSE__)   /* x86 with prefetcht0 */
    __asm__ volatile("prefetcht0 %0" : : "m"(*a));
#elif defined(__GNUC__) && defined(__aarch64__)
    __asm__ volatile("prfm pldl1keep, %0" : : "Q"(*a));
#else
    __builtin_prefetch(a, 0, 3);
#endif
}
/* The end of the strip that starts at s (< hi), after prefetching the
 * lines of the strip FO_PF_AHEAD elements ahead of it where that lies
 * within every array: the float32 parameter's and gradient's lines in
 * turn, then each state's, whose elements take 1 << state_shift bytes (a
 * constant of the loop's kind), so that every count of lines is a constant
 * and the prefetches straight-line code.  A loop over the streams with
 * their element sizes read from the plan issued the same prefetches and
 * was slower (AdamW with 8-bit states at 5 * 10^7 elements, one thread:
 * the rule's phase 13-25 % slower than a C loop with straight-line
 * prefetches, against 7-11 % with these; performance notes). */
FO_INLINE uint32_t fo_pf_strip(const fo_prefetch *pf, uint32_t s, uint32_t hi,
                               const unsigned state_shift)
{
    if (pf == NULL) return hi;
    const size_t at = (size_t)s + FO_PF_AHEAD;
    if (at + FO_PF_STRIP <= pf->limit) {
        const char *p = pf->base[0] + 4 * at;
        if (pf->base[1] != NULL) {
            const char *g = pf->base[1] + 4 * at;
            for (size_t o = 0; o < 4 * FO_PF_STRIP; o += 64) {
                fo_prefetch_line(p + o);
                fo_prefetch_line(g + o);
            }
        } else {
            for (size_t o = 0; o < 4 * FO_PF_STRIP; o += 64) fo_prefetch_line(p + o);
        }
        for (int k = 2; k < pf->count; k++) {
            const char *b = pf->base[k] + (at << state_shift);
            for (size_t o = 0; o < ((size_t)FO_PF_STRIP << state_shift); o += 64)
                fo_prefetch_line(b + o);
        }
    }
    return hi - s > FO_PF_STRIP ? s + FO_PF_STRIP : hi;
}
/* A loop over [lo, hi) in strips (fo_pf_strip) of a loop whose states
 * take 1 << shift bytes an element, pragma `before` on the inner one:
 * i##_e, the end of the strip, is found (and its prefetches issued) as the
 * inner loop starts */
#define FO_FOR_STRIPS(i, before, shift) \
    for (uint32_t i##_s = (uint32_t)lo, i##_e = i##_s; i##_s < (uint32_t)hi; i##_s = i##_e) \
        before \
        for (uint32_t i = (i##_e = fo_pf_strip(t->pf, i##_s, (uint32_t)hi, (shift)), i##_s); i < i##_e; i++)
#endif

/* A rule's element loop.  With bfloat16 states the index is a uint32: the
 * random counter of each store is 32-bit arithmetic on it, and a size_t
 * index would make gcc build that counter from 64-bit lanes and narrow it
 * (a shuffle chain per vector at the levels without vpmovqd).  Those loops
 * only ever run on chunks of at most FO_BF16_CHUNK elements (dispatch.c,
 * fused_range), so lo and hi fit. */
#ifdef FO_BF16
#define FO_FOR(i) FO_FOR_STRIPS(i, , 1)
#define FO_STATE(x, slot) \
    fo_bf16 *restrict x = (fo_bf16 *)t->s[slot]; \
    const uint32_t x##_key = fo_lowp_slot_key(t->key, (slot) & ~1) + (uint32_t)t->at; \
    const int x##_low = (slot) & 1; \
    (void)x##_key; (void)x##_low
#define FO_LD(x, i) FO_LOWP(bf16_load)(x[i])
#define FO_ST(x, i, v) (x[i] = FO_LOWP(bf16_store)((v), \
    FO_LOWP(bf16_bits)(FO_LOWP(hash32)(x##_key + (uint32_t)(i)), x##_low)))
#elif defined(FO_Q8)
/* With FO_Q8 defined (float32 parameters, 8-bit states) a loop runs over
 * one block of at most FO_Q8_BLOCK elements (dispatch.c, fused_range): it
 * decodes each state element from its code as it reads it (q8.h,
 * q8_load), so that the decoding's integer work runs beside the rule's
 * square roots and divisions, and stores the new value to float32
 * scratch, s[k], which the block's requantization then reads.  Only rules
 * whose loops store every state they are given on every step have such a
 * loop (kernels_isa.c).  gcc does not take `restrict` on these local
 * pointers as a promise, and the code arrays add so many overlap checks to
 * the loop's that it would stay scalar; the arrays never overlap
 * (kernels.h), which ivdep tells it.  A state's map (never negative or
 * signed) is its sign in the rule table (fo_table.h, slot##_NONNEG, so
 * `slot` must be the state's enum name), a constant: a decode that knows
 * its map does without the other's masking (AdamW at 10^5 elements, one
 * thread: 0.53 ns an element with the map read at run time, 0.46 with it
 * constant); dispatch.c runs these loops only for the table's signs. */
#define FO_FOR(i) FO_FOR_STRIPS(i, _Pragma("GCC ivdep"), 0)
#define FO_STATE(x, slot) \
    float *restrict x = (float *)t->s[slot]; \
    const uint8_t *restrict x##_code = t->q8_codes[slot]; \
    const float x##_scale = t->q8_scale[slot]; \
    const uint32_t x##_mag = FO_Q8_TOP(slot##_NONNEG); \
    (void)x; (void)x##_code; (void)x##_scale; (void)x##_mag
#define FO_LD(x, i) FO_LOWP(q8_load)(x##_code[i], x##_scale, x##_mag)
#define FO_ST(x, i, v) (x[i] = (v))
#else
#define FO_FOR(i) for (size_t i = lo; i < hi; i++)
#define FO_STATE(x, slot) FO_T *restrict x = (FO_T *)t->s[slot]
#define FO_LD(x, i) (x[i])
#define FO_ST(x, i, v) (x[i] = (v))
#endif

/* A state a loop writes without reading it (ASGD's ax before t0): each
 * store misses the cache and waits for its line to be read in (a read for
 * ownership), which costs more than a loop that reads the state itself.
 * Such loops run in sub-blocks of FO_WO_BLOCK elements.  A state of at
 * least FO_STREAM_MIN bytes (kernels.h) is copied from the block's freshly
 * stored parameter with stores that bypass the cache (x86: movntdq), so
 * its lines are neither read in nor left to push the other arrays out; a
 * smaller one (which the next step finds in cache) is stored as usual, its
 * lines prefetched FO_WO_AHEAD bytes ahead of each block.  Neither changes
 * a value, so every level still computes the same bits. */
#ifndef FO_WO_BLOCK
#define FO_WO_BLOCK 256
#define FO_WO_AHEAD 4096
/* Prefetches, for writing, the lines of bytes [from, to) of x, where to
 * stays within x's end (a prefetch past it would compute an address
 * outside the array) */
FO_INLINE void fo_prefetch_w(const void *x, size_t from, size_t to)
{
    const char *b = (const char *)x;
    for (size_t k = from; k < to; k += 64)
        __builtin_prefetch(b + k, 1, 3);
}
#if defined(__SSE2__)
#include <emmintrin.h>
#define FO_CAN_STREAM 1
/* the widest store around the cache at this level: with AVX-512 one store
 * writes a whole cache line (ASGD float64 at 10^7 elements: its copy of
 * the parameter ran at 90-93 % of the traffic floor in 16-byte stores, at
 * 123-128 % in whole lines) */
#if defined(__AVX512F__)
#include <immintrin.h>
#define FO_STREAM_BYTES 64
#elif defined(__AVX__)
#include <immintrin.h>
#define FO_STREAM_BYTES 32
#else
#define FO_STREAM_BYTES 16
#endif
/* orders the stores made around the cache before whatever follows (the
 * end of the parallel region, whose threads may read them) */
FO_INLINE void fo_stream_end(void) { _mm_sfence(); }
#else
#define FO_CAN_STREAM 0
#endif
#endif

/* max that propagates NaN from either side, as numpy.maximum does */
FO_INLINE FO_T FO_NAME(maxnan)(FO_T a, FO_T b)
{
    return (a != a) ? a : (a >= b ? a : b);
}

/* The gradient every rule starts from: -g when maximizing (a true negation,
 * which flips a NaN's sign as NumPy's -g does; multiplying by -1 would not),
 * then g + l2 * p when the rule has L2 decay. */
FO_INLINE FO_T FO_NAME(grad)(FO_T g, FO_T p, int negate, int has_l2, FO_T l2)
{
    const FO_T gi = negate ? -g : g;
    return has_l2 ? gi + l2 * p : gi;
}

/* The coefficient k of a rule, rounded once to FO_T */
#define FO_C(rule, k) ((FO_T)a->c[FO_##rule##_C_##k])

/* Each rule below is a body, always inlined, whose option parameters are
 * `const int`, and a range function that switches on the option mask (all
 * but FO_MAXIMIZE) and calls the body with literal options: every variant is
 * its own branch-free loop while the math is written once.  A mask that
 * fo_coefficients never produces falls to the default, the general body. */

/* ---- gradient descent / heavy-ball momentum (torch.optim.SGD) --------- */

FO_INLINE void FO_NAME(sgd_body)(const fo_args *a, const fo_tensor *t,
                                 size_t lo, size_t hi, const int has_l2,
                                 const int has_momentum, const int first,
                                 const int nesterov)
{
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(b, FO_SGD_S_MOMENTUM_BUFFER);
    const FO_T lr = FO_C(SGD, LR), mu = FO_C(SGD, MOMENTUM);
    const FO_T damp = FO_C(SGD, ONE_MINUS_DAMPENING), l2 = FO_C(SGD, L2);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        FO_T gi = FO_NAME(grad)(g[i], p[i], negate, has_l2, l2);
        if (has_momentum) {
            const FO_T bi = first ? gi : mu * FO_LD(b, i) + damp * gi;
            FO_ST(b, i, bi);
            gi = nesterov ? gi + mu * bi : bi;
        }
        FO_SETP(p, i, p[i] - lr * gi);
    }
}

static void FO_NAME(sgd_range)(const void *args, const fo_tensor *t,
                               size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    enum { L2 = FO_L2, M = FO_SGD_O_HAS_MOMENTUM, F = FO_SGD_O_FIRST_STEP,
           N = FO_SGD_O_NESTEROV };
#define FO_SGD(l2, m, f, n) FO_NAME(sgd_body)(a, t, lo, hi, l2, m, f, n); break
    switch (a->opts & ~FO_MAXIMIZE) {
    case 0:               FO_SGD(0, 0, 0, 0);
    case M:               FO_SGD(0, 1, 0, 0);
    case M | F:           FO_SGD(0, 1, 1, 0);
    case M | N:           FO_SGD(0, 1, 0, 1);
    case M | F | N:       FO_SGD(0, 1, 1, 1);
    case L2:              FO_SGD(1, 0, 0, 0);
    case L2 | M:          FO_SGD(1, 1, 0, 0);
    case L2 | M | F:      FO_SGD(1, 1, 1, 0);
    case L2 | M | N:      FO_SGD(1, 1, 0, 1);
    case L2 | M | F | N:  FO_SGD(1, 1, 1, 1);
    default: FO_SGD(!!(a->opts & L2), !!(a->opts & M), !!(a->opts & F),
                    !!(a->opts & N));
    }
#undef FO_SGD
}

/* ---- the seed's exponentially weighted momentum ---------------------- */

FO_INLINE void FO_NAME(momentum_body)(const fo_args *a, const fo_tensor *t,
                                      size_t lo, size_t hi, const int has_l2)
{
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(v, FO_MOMENTUM_S_VELOCITY);
    const FO_T lr = FO_C(MOMENTUM, LR), beta = FO_C(MOMENTUM, BETA);
    const FO_T one_minus_beta = FO_C(MOMENTUM, ONE_MINUS_BETA);
    const FO_T l2 = FO_C(MOMENTUM, L2);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, has_l2, l2);
        const FO_T vi = beta * FO_LD(v, i) + one_minus_beta * gi;
        FO_ST(v, i, vi);
        FO_SETP(p, i, p[i] - lr * vi);
    }
}

static void FO_NAME(momentum_range)(const void *args, const fo_tensor *t,
                                    size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    if (a->opts & FO_L2) FO_NAME(momentum_body)(a, t, lo, hi, 1);
    else FO_NAME(momentum_body)(a, t, lo, hi, 0);
}

/* ---- RMSProp (torch.optim.RMSprop) ----------------------------------- */

FO_INLINE void FO_NAME(rmsprop_body)(const fo_args *a, const fo_tensor *t,
                                     size_t lo, size_t hi, const int has_l2,
                                     const int centered,
                                     const int has_momentum)
{
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(s, FO_RMSPROP_S_SQUARE_AVG);
    FO_STATE(gavg, FO_RMSPROP_S_GRAD_AVG);
    FO_STATE(b, FO_RMSPROP_S_MOMENTUM_BUFFER);
    const FO_T lr = FO_C(RMSPROP, LR), alpha = FO_C(RMSPROP, ALPHA);
    const FO_T one_minus_alpha = FO_C(RMSPROP, ONE_MINUS_ALPHA);
    const FO_T eps = FO_C(RMSPROP, EPS), mu = FO_C(RMSPROP, MOMENTUM);
    const FO_T l2 = FO_C(RMSPROP, L2);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, has_l2, l2);
        const FO_T si = alpha * FO_LD(s, i) + one_minus_alpha * (gi * gi);
        FO_ST(s, i, si);
        FO_T var = si;
        if (centered) {
            const FO_T ai = alpha * FO_LD(gavg, i) + one_minus_alpha * gi;
            FO_ST(gavg, i, ai);
            var = si - ai * ai;
        }
        const FO_T denom = FO_SQRT(var) + eps;
        if (has_momentum) {
            const FO_T bi = mu * FO_LD(b, i) + gi / denom;
            FO_ST(b, i, bi);
            FO_SETP(p, i, p[i] - lr * bi);
        } else {
            FO_SETP(p, i, p[i] - lr * (gi / denom));
        }
    }
}

static void FO_NAME(rmsprop_range)(const void *args, const fo_tensor *t,
                                   size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    enum { L2 = FO_L2, C = FO_RMSPROP_O_CENTERED, M = FO_RMSPROP_O_HAS_MOMENTUM };
#define FO_RMS(l2, c, m) FO_NAME(rmsprop_body)(a, t, lo, hi, l2, c, m); break
    switch (a->opts & ~FO_MAXIMIZE) {
    case 0:           FO_RMS(0, 0, 0);
    case C:           FO_RMS(0, 1, 0);
    case M:           FO_RMS(0, 0, 1);
    case C | M:       FO_RMS(0, 1, 1);
    case L2:          FO_RMS(1, 0, 0);
    case L2 | C:      FO_RMS(1, 1, 0);
    case L2 | M:      FO_RMS(1, 0, 1);
    case L2 | C | M:  FO_RMS(1, 1, 1);
    default: FO_RMS(!!(a->opts & L2), !!(a->opts & C), !!(a->opts & M));
    }
#undef FO_RMS
}

/* ---- Adam / AdamW ---------------------------------------------------- */

FO_INLINE void FO_NAME(adam_body)(const fo_args *a, const fo_tensor *t,
                                  size_t lo, size_t hi, const int has_l2,
                                  const int amsgrad)
{
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(m, FO_ADAM_S_EXP_AVG);
    FO_STATE(v, FO_ADAM_S_EXP_AVG_SQ);
    FO_STATE(vmax, FO_ADAM_S_MAX_EXP_AVG_SQ);
    const FO_T step_size = FO_C(ADAM, STEP_SIZE);
    const FO_T inv_sqrt_bc2 = FO_C(ADAM, INV_SQRT_BC2);
    const FO_T beta1 = FO_C(ADAM, BETA1);
    const FO_T one_minus_beta1 = FO_C(ADAM, ONE_MINUS_BETA1);
    const FO_T beta2 = FO_C(ADAM, BETA2);
    const FO_T one_minus_beta2 = FO_C(ADAM, ONE_MINUS_BETA2);
    const FO_T eps = FO_C(ADAM, EPS), decay = FO_C(ADAM, DECAY);
    const FO_T l2 = FO_C(ADAM, L2);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, has_l2, l2);
        const FO_T pi = p[i] * decay;
        const FO_T mi = beta1 * FO_LD(m, i) + one_minus_beta1 * gi;
        FO_T vi = beta2 * FO_LD(v, i) + one_minus_beta2 * (gi * gi);
        FO_ST(m, i, mi);
        FO_ST(v, i, vi);
        if (amsgrad) {
            vi = FO_NAME(maxnan)(FO_LD(vmax, i), vi);
            FO_ST(vmax, i, vi);
        }
        const FO_T denom = FO_SQRT(vi) * inv_sqrt_bc2 + eps;
        FO_SETP(p, i, pi - step_size * (mi / denom));
    }
}

static void FO_NAME(adam_range)(const void *args, const fo_tensor *t,
                                size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    enum { L2 = FO_L2, A = FO_ADAM_O_AMSGRAD };
#define FO_ADAM(l2, ams) FO_NAME(adam_body)(a, t, lo, hi, l2, ams); break
    switch (a->opts & ~FO_MAXIMIZE) {
    case 0:       FO_ADAM(0, 0);
    case A:       FO_ADAM(0, 1);
    case L2:      FO_ADAM(1, 0);
    case L2 | A:  FO_ADAM(1, 1);
    default: FO_ADAM(!!(a->opts & L2), !!(a->opts & A));
    }
#undef FO_ADAM
}

/* ---- Adagrad (torch.optim.Adagrad) ----------------------------------- */

FO_INLINE void FO_NAME(adagrad_body)(const fo_args *a, const fo_tensor *t,
                                     size_t lo, size_t hi, const int has_l2)
{
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(sum, FO_ADAGRAD_S_STATE_SUM);
    const FO_T clr = FO_C(ADAGRAD, CLR), eps = FO_C(ADAGRAD, EPS);
    const FO_T l2 = FO_C(ADAGRAD, L2);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, has_l2, l2);
        const FO_T si = FO_LD(sum, i) + gi * gi;
        FO_ST(sum, i, si);
        FO_SETP(p, i, p[i] - clr * (gi / (FO_SQRT(si) + eps)));
    }
}

static void FO_NAME(adagrad_range)(const void *args, const fo_tensor *t,
                                   size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    if (a->opts & FO_L2) FO_NAME(adagrad_body)(a, t, lo, hi, 1);
    else FO_NAME(adagrad_body)(a, t, lo, hi, 0);
}

/* ---- Lion (Chen et al. 2023; google/automl lion_pytorch.py) ---------- */

/* sign(x) as numpy.sign: +0 for both zeros, NaN kept.  Written as a
 * difference of comparisons and one select: gcc vectorises this form at
 * every level, not a chain of conditionals. */
FO_INLINE FO_T FO_NAME(sign)(FO_T x)
{
    const FO_T s = (FO_T)(x > 0) - (FO_T)(x < 0);
    return x != x ? x : s;
}

static void FO_NAME(lion_range)(const void *args, const fo_tensor *t,
                                size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(m, FO_LION_S_EXP_AVG);
    const FO_T lr = FO_C(LION, LR), decay = FO_C(LION, DECAY);
    const FO_T beta1 = FO_C(LION, BETA1), one_minus_beta1 = FO_C(LION, ONE_MINUS_BETA1);
    const FO_T beta2 = FO_C(LION, BETA2), one_minus_beta2 = FO_C(LION, ONE_MINUS_BETA2);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, 0, 0);
        const FO_T pi = p[i] * decay;
        const FO_T ui = FO_NAME(sign)(beta1 * FO_LD(m, i) + one_minus_beta1 * gi);
        FO_SETP(p, i, pi - lr * ui);
        FO_ST(m, i, beta2 * FO_LD(m, i) + one_minus_beta2 * gi);
    }
}

/* ---- Adadelta (torch.optim.Adadelta) -------------------------------- */

/* eps sits inside both roots; acc_delta takes the new delta, after the step
 * has used the old acc_delta. */
FO_INLINE void FO_NAME(adadelta_body)(const fo_args *a, const fo_tensor *t,
                                      size_t lo, size_t hi, const int has_l2)
{
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(s, FO_ADADELTA_S_SQUARE_AVG);
    FO_STATE(acc, FO_ADADELTA_S_ACC_DELTA);
    const FO_T lr = FO_C(ADADELTA, LR), rho = FO_C(ADADELTA, RHO);
    const FO_T one_minus_rho = FO_C(ADADELTA, ONE_MINUS_RHO);
    const FO_T eps = FO_C(ADADELTA, EPS), l2 = FO_C(ADADELTA, L2);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, has_l2, l2);
        const FO_T si = rho * FO_LD(s, i) + one_minus_rho * (gi * gi);
        FO_ST(s, i, si);
        const FO_T di = FO_SQRT((FO_LD(acc, i) + eps) / (si + eps)) * gi;
        FO_ST(acc, i, rho * FO_LD(acc, i) + one_minus_rho * (di * di));
        FO_SETP(p, i, p[i] - lr * di);
    }
}

static void FO_NAME(adadelta_range)(const void *args, const fo_tensor *t,
                                    size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    if (a->opts & FO_L2) FO_NAME(adadelta_body)(a, t, lo, hi, 1);
    else FO_NAME(adadelta_body)(a, t, lo, hi, 0);
}

/* ---- Rprop (torch.optim.Rprop) --------------------------------------- */

/* The factor comes from the sign of g * prev: etaplus where it is positive,
 * etaminus where negative, 1 elsewhere (zero, and NaN as torch.sign(NaN) is
 * 0).  Where the sign flipped the gradient counts as 0 for this step and
 * becomes prev.  The clamp is min(max(s, lo), hi), torch's clamp: hi when
 * lo > hi, NaN kept. */
static void FO_NAME(rprop_range)(const void *args, const fo_tensor *t,
                                 size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(prev, FO_RPROP_S_PREV);
    FO_STATE(size, FO_RPROP_S_STEP_SIZE);
    const FO_T etaminus = FO_C(RPROP, ETAMINUS), etaplus = FO_C(RPROP, ETAPLUS);
    const FO_T size_min = FO_C(RPROP, STEP_SIZE_MIN);
    const FO_T size_max = FO_C(RPROP, STEP_SIZE_MAX);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, 0, 0);
        const FO_T d = gi * FO_LD(prev, i);
        const FO_T eta = d > 0 ? etaplus : (d < 0 ? etaminus : (FO_T)1);
        const FO_T si = FO_LD(size, i) * eta;
        const FO_T up = si < size_min ? size_min : si;
        const FO_T sc = up > size_max ? size_max : up;
        const FO_T gz = d < 0 ? (FO_T)0 : gi;
        /* every load before the first store: with the parameter read
         * after the states' stores gcc wrote each state twice an
         * iteration (the second a blend with a reload), which kept the
         * AVX2 loop at 76-86 % of its floor on two threads */
        const FO_T pi = p[i] - FO_NAME(sign)(gz) * sc;
        FO_ST(size, i, sc);
        FO_ST(prev, i, gz);
        FO_SETP(p, i, pi);
    }
}

/* ---- Adamax (torch.optim.Adamax) ------------------------------------- */

/* |x| as numpy.abs: the sign bit cleared, of a zero and a NaN too */
FO_INLINE FO_T FO_NAME(abs)(FO_T x)
{
    return _Generic(x, float: fabsf, default: fabs)(x);
}

/* eps is added to |g| inside the maximum, not to the denominator */
FO_INLINE void FO_NAME(adamax_body)(const fo_args *a, const fo_tensor *t,
                                    size_t lo, size_t hi, const int has_l2)
{
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(m, FO_ADAMAX_S_EXP_AVG);
    FO_STATE(u, FO_ADAMAX_S_EXP_INF);
    const FO_T clr = FO_C(ADAMAX, CLR), eps = FO_C(ADAMAX, EPS);
    const FO_T beta1 = FO_C(ADAMAX, BETA1);
    const FO_T one_minus_beta1 = FO_C(ADAMAX, ONE_MINUS_BETA1);
    const FO_T beta2 = FO_C(ADAMAX, BETA2), l2 = FO_C(ADAMAX, L2);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, has_l2, l2);
        const FO_T mi = beta1 * FO_LD(m, i) + one_minus_beta1 * gi;
        const FO_T decayed = beta2 * FO_LD(u, i), norm = FO_NAME(abs)(gi) + eps;
        /* maxnan(decayed, norm) as two selects, the NaN test last: inlined
         * here, maxnan's nested form leaves a branch gcc does not vectorise */
        const FO_T larger = decayed >= norm ? decayed : norm;
        const FO_T ui = decayed != decayed ? decayed : larger;
        FO_ST(m, i, mi);
        FO_ST(u, i, ui);
        FO_SETP(p, i, p[i] - clr * (mi / ui));
    }
}

static void FO_NAME(adamax_range)(const void *args, const fo_tensor *t,
                                  size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    if (a->opts & FO_L2) FO_NAME(adamax_body)(a, t, lo, hi, 1);
    else FO_NAME(adamax_body)(a, t, lo, hi, 0);
}

/* ---- RAdam (torch.optim.RAdam) -------------------------------------- */

/* Whether a step is rectified depends on the step alone (rho_t > 5), so it is
 * an option bit: each branch is its own loop.  step_size holds lr over the
 * first moment's bias correction, times rect * sqrt(1 - beta2^t) when
 * rectified; eps is added to the uncorrected root, as torch does.  v is
 * updated on every step, whichever branch. */
FO_INLINE void FO_NAME(radam_body)(const fo_args *a, const fo_tensor *t,
                                   size_t lo, size_t hi, const int has_l2,
                                   const int rectified)
{
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(m, FO_RADAM_S_EXP_AVG);
    FO_STATE(v, FO_RADAM_S_EXP_AVG_SQ);
    const FO_T step_size = FO_C(RADAM, STEP_SIZE);
    const FO_T beta1 = FO_C(RADAM, BETA1);
    const FO_T one_minus_beta1 = FO_C(RADAM, ONE_MINUS_BETA1);
    const FO_T beta2 = FO_C(RADAM, BETA2);
    const FO_T one_minus_beta2 = FO_C(RADAM, ONE_MINUS_BETA2);
    const FO_T eps = FO_C(RADAM, EPS), decay = FO_C(RADAM, DECAY);
    const FO_T l2 = FO_C(RADAM, L2);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, has_l2, l2);
        const FO_T pi = p[i] * decay;
        const FO_T mi = beta1 * FO_LD(m, i) + one_minus_beta1 * gi;
        const FO_T vi = beta2 * FO_LD(v, i) + one_minus_beta2 * (gi * gi);
        FO_ST(m, i, mi);
        FO_ST(v, i, vi);
        if (rectified)
            FO_SETP(p, i, pi - step_size * (mi / (FO_SQRT(vi) + eps)));
        else
            FO_SETP(p, i, pi - step_size * mi);
    }
}

static void FO_NAME(radam_range)(const void *args, const fo_tensor *t,
                                 size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    enum { L2 = FO_L2, R = FO_RADAM_O_RECTIFIED };
#define FO_RADAM(l2, r) FO_NAME(radam_body)(a, t, lo, hi, l2, r); break
    switch (a->opts & ~FO_MAXIMIZE) {
    case 0:       FO_RADAM(0, 0);
    case R:       FO_RADAM(0, 1);
    case L2:      FO_RADAM(1, 0);
    case L2 | R:  FO_RADAM(1, 1);
    default: FO_RADAM(!!(a->opts & L2), !!(a->opts & R));
    }
#undef FO_RADAM
}

/* ---- NAdam (torch.optim.NAdam) -------------------------------------- */

/* grad_coef and exp_avg_coef carry the Nesterov momentum factors of this and
 * the next step (coefficients.c).  torch adds g / denom and m / denom one
 * after the other; here both terms share one division (within rounding of
 * torch's result, and one division fewer per element). */
FO_INLINE void FO_NAME(nadam_body)(const fo_args *a, const fo_tensor *t,
                                   size_t lo, size_t hi, const int has_l2)
{
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(m, FO_NADAM_S_EXP_AVG);
    FO_STATE(v, FO_NADAM_S_EXP_AVG_SQ);
    const FO_T beta1 = FO_C(NADAM, BETA1);
    const FO_T one_minus_beta1 = FO_C(NADAM, ONE_MINUS_BETA1);
    const FO_T beta2 = FO_C(NADAM, BETA2);
    const FO_T one_minus_beta2 = FO_C(NADAM, ONE_MINUS_BETA2);
    const FO_T inv_sqrt_bc2 = FO_C(NADAM, INV_SQRT_BC2), eps = FO_C(NADAM, EPS);
    const FO_T grad_coef = FO_C(NADAM, GRAD_COEF);
    const FO_T exp_avg_coef = FO_C(NADAM, EXP_AVG_COEF);
    const FO_T decay = FO_C(NADAM, DECAY), l2 = FO_C(NADAM, L2);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, has_l2, l2);
        const FO_T pi = p[i] * decay;
        const FO_T mi = beta1 * FO_LD(m, i) + one_minus_beta1 * gi;
        const FO_T vi = beta2 * FO_LD(v, i) + one_minus_beta2 * (gi * gi);
        const FO_T denom = FO_SQRT(vi) * inv_sqrt_bc2 + eps;
        FO_ST(m, i, mi);
        FO_ST(v, i, vi);
        FO_SETP(p, i, pi + (grad_coef * gi + exp_avg_coef * mi) / denom);
    }
}

static void FO_NAME(nadam_range)(const void *args, const fo_tensor *t,
                                 size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    if (a->opts & FO_L2)
        FO_NAME(nadam_body)(a, t, lo, hi, 1);
    else
        FO_NAME(nadam_body)(a, t, lo, hi, 0);
}

/* ---- ASGD (torch.optim.ASGD) ---------------------------------------- */

#if FO_CAN_STREAM && !defined(FO_BF16) && !defined(FO_Q8)
/* dst[0:n] = src[0:n], dst's FO_STREAM_BYTES-aligned pieces stored around
 * the cache (dst aligned to its element, as every array the step takes is);
 * elementwise loops for the head and the tail, whose few elements a
 * library memcpy call would cost more than.  dst should start a cache
 * line (see asgd_body). */
FO_INLINE void FO_NAME(stream_copy)(FO_T *restrict dst,
                                    const FO_T *restrict src, size_t n)
{
    enum { PER = FO_STREAM_BYTES / sizeof(FO_T) };
    size_t i = 0;
    for (; i < n && ((uintptr_t)(dst + i) & (FO_STREAM_BYTES - 1)); i++) dst[i] = src[i];
    for (; i + PER <= n; i += PER) {
#if FO_STREAM_BYTES == 64
        _mm512_stream_si512((void *)(dst + i), _mm512_loadu_si512((const void *)(src + i)));
#elif FO_STREAM_BYTES == 32
        _mm256_stream_si256((__m256i *)(dst + i),
                            _mm256_loadu_si256((const __m256i *)(src + i)));
#else
        _mm_stream_si128((__m128i *)(dst + i),
                         _mm_loadu_si128((const __m128i *)(src + i)));
#endif
    }
    for (; i < n; i++) dst[i] = src[i];
}
#endif

/* The parameter decays by 1 - lambd * eta and steps by eta; ax averages the
 * parameters from step t0 on (mu < 1) and copies them before (mu = 1). */
FO_INLINE void FO_NAME(asgd_body)(const fo_args *a, const fo_tensor *t,
                                  size_t lo, size_t hi, const int has_l2,
                                  const int average)
{
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(ax, FO_ASGD_S_AX);
    const FO_T decay = FO_C(ASGD, DECAY), eta = FO_C(ASGD, ETA);
    const FO_T mu = FO_C(ASGD, MU), l2 = FO_C(ASGD, L2);
    const int negate = a->opts & FO_MAXIMIZE;
    if (average) {
        FO_FOR(i) {
            const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, has_l2, l2);
            const FO_T pi = p[i] * decay - eta * gi;
            FO_SETP(p, i, pi);
            FO_ST(ax, i, FO_LD(ax, i) + (pi - FO_LD(ax, i)) * mu);
        }
        return;
    }
    /* before t0 ax is a copy of the parameter, written without being read */
#if FO_CAN_STREAM && !defined(FO_BF16) && !defined(FO_Q8)
    if (t->n * sizeof(FO_T) >= FO_STREAM_MIN) {
        /* blocks start on ax's cache lines: a line written partly around
         * the cache and partly through it, or around it from two blocks
         * with the parameter's stores between, is written to memory in
         * pieces (ASGD float64 at 10^7 ran at half speed) */
        size_t head = (size_t)(-(uintptr_t)(ax + lo) & 63u) / sizeof(FO_T);
        if (head > hi - lo) head = hi - lo;
        for (size_t i = lo; i < lo + head; i++) {
            const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, has_l2, l2);
            const FO_T pi = p[i] * decay - eta * gi;
            FO_SETP(p, i, pi);
            ax[i] = pi;
        }
        for (size_t j = lo + head; j < hi; j += FO_WO_BLOCK) {
            const size_t e = hi - j < FO_WO_BLOCK ? hi : j + FO_WO_BLOCK;
            for (size_t i = j; i < e; i++) {
                const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, has_l2, l2);
                FO_SETP(p, i, p[i] * decay - eta * gi);
            }
            FO_NAME(stream_copy)(ax + j, p + j, e - j);
        }
        fo_stream_end();
        return;
    }
#endif
    const size_t size = sizeof ax[0], end = hi * size;
    for (size_t j = lo; j < hi; j += FO_WO_BLOCK) {
        const size_t e = hi - j < FO_WO_BLOCK ? hi : j + FO_WO_BLOCK;
        const size_t ahead = e * size + FO_WO_AHEAD;
        fo_prefetch_w(ax, j * size + FO_WO_AHEAD < end ? j * size + FO_WO_AHEAD : end,
                      ahead < end ? ahead : end);
        for (size_t i = j; i < e; i++) {
            const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, has_l2, l2);
            const FO_T pi = p[i] * decay - eta * gi;
            FO_SETP(p, i, pi);
            FO_ST(ax, i, pi);
        }
    }
}

static void FO_NAME(asgd_range)(const void *args, const fo_tensor *t,
                                size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    enum { L2 = FO_L2, A = FO_ASGD_O_AVERAGE };
#define FO_ASGD(l2, av) FO_NAME(asgd_body)(a, t, lo, hi, l2, av); break
    switch (a->opts & ~FO_MAXIMIZE) {
    case 0:       FO_ASGD(0, 0);
    case A:       FO_ASGD(0, 1);
    case L2:      FO_ASGD(1, 0);
    case L2 | A:  FO_ASGD(1, 1);
    default: FO_ASGD(!!(a->opts & L2), !!(a->opts & A));
    }
#undef FO_ASGD
}

/* ---- gradient utilities ---------------------------------------------- */

/* Sum of squares of g[lo:hi] in double over 8 fixed lanes: lane j takes the
 * elements whose offset from lo is j modulo 8, the lanes are then added in
 * order.  The order depends on the indices alone, never on vector width. */
static double FO_NAME(sumsq_range)(const fo_tensor *t, size_t lo, size_t hi)
{
    const FO_T *restrict g = (const FO_T *)t->g;
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = lo;
    for (; i + 8 <= hi; i += 8)
        for (int j = 0; j < 8; j++) {
            const double x = (double)g[i + j];
            acc[j] += x * x;
        }
    for (int j = 0; i < hi; i++, j++) {
        const double x = (double)g[i];
        acc[j] += x * x;
    }
    double s = acc[0];
    for (int j = 1; j < 8; j++) s += acc[j];
    return s;
}

/* 1 when g[lo:hi] holds no NaN and no infinity.  x - x is 0 for every
 * finite x and NaN otherwise; blocks of 256 keep the loop vectorisable and
 * still stop early. */
static int FO_NAME(allfinite_range)(const fo_tensor *t, size_t lo, size_t hi)
{
    const FO_T *restrict g = (const FO_T *)t->g;
    for (size_t i = lo; i < hi; i += 256) {
        const size_t end = hi - i < 256 ? hi : i + 256;
        int bad = 0;
        for (size_t k = i; k < end; k++) bad |= !(g[k] - g[k] == 0);
        if (bad) return 0;
    }
    return 1;
}

static void FO_NAME(scale_range)(const void *args, const fo_tensor *t,
                                 size_t lo, size_t hi)
{
    FO_T *restrict x = (FO_T *)t->p;
    const FO_T scale = (FO_T)(*(const double *)args);
    for (size_t i = lo; i < hi; i++) x[i] = x[i] * scale;
}

/* clamp to [-clip, clip]; NaN stays NaN, as numpy.clip leaves it */
static void FO_NAME(clamp_range)(const void *args, const fo_tensor *t,
                                 size_t lo, size_t hi)
{
    FO_T *restrict x = (FO_T *)t->p;
    const FO_T hi_v = (FO_T)(*(const double *)args), lo_v = -hi_v;
    for (size_t i = lo; i < hi; i++) {
        const FO_T xi = x[i];
        x[i] = xi < lo_v ? lo_v : (xi > hi_v ? hi_v : xi);
    }
}

/* The memory traffic of a rule without its math: every array present is read
 * once and p and every state present are written once (with the sum, a
 * single add per array, so the loop stays bound by memory).  Timing it over
 * a rule's arrays gives the bandwidth floor that the rule is measured
 * against. */
static void FO_NAME(traffic_range)(const void *args, const fo_tensor *t,
                                   size_t lo, size_t hi)
{
    FO_T *restrict p = (FO_T *)t->p;
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_T *restrict s0 = (FO_T *)t->s[0];
    FO_T *restrict s1 = (FO_T *)t->s[1];
    FO_T *restrict s2 = (FO_T *)t->s[2];
    FO_T *restrict s3 = (FO_T *)t->s[3];
    (void)args;
    if (s3) {
        for (size_t i = lo; i < hi; i++) {
            const FO_T x = p[i] + g[i] + s0[i] + s1[i] + s2[i] + s3[i];
            p[i] = x; s0[i] = x; s1[i] = x; s2[i] = x; s3[i] = x;
        }
    } else if (s2) {
        for (size_t i = lo; i < hi; i++) {
            const FO_T x = p[i] + g[i] + s0[i] + s1[i] + s2[i];
            p[i] = x; s0[i] = x; s1[i] = x; s2[i] = x;
        }
    } else if (s1) {
        for (size_t i = lo; i < hi; i++) {
            const FO_T x = p[i] + g[i] + s0[i] + s1[i];
            p[i] = x; s0[i] = x; s1[i] = x;
        }
    } else if (s0) {
        for (size_t i = lo; i < hi; i++) {
            const FO_T x = p[i] + g[i] + s0[i];
            p[i] = x; s0[i] = x;
        }
    } else {
        for (size_t i = lo; i < hi; i++) p[i] = p[i] + g[i];
    }
}

/* ---- AdEMAMix (apple/ml-ademamix) ------------------------------------ */

/* A fast EMA m1 (bias-corrected through fast_coef = lr / (1 - beta1^t)), a
 * slow EMA m2 (not bias-corrected; slow_coef = lr * alpha_t) and Adam's
 * second moment, over one division; beta3 and alpha_t come from the
 * warm-ups (coefficients.c).  Weight decay is decoupled: decay = 1 - lr wd. */
FO_INLINE void FO_NAME(ademamix_body)(const fo_args *a, const fo_tensor *t,
                                      size_t lo, size_t hi)
{
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(m1, FO_ADEMAMIX_S_EXP_AVG_FAST);
    FO_STATE(m2, FO_ADEMAMIX_S_EXP_AVG_SLOW);
    FO_STATE(v, FO_ADEMAMIX_S_EXP_AVG_SQ);
    const FO_T beta1 = FO_C(ADEMAMIX, BETA1);
    const FO_T one_minus_beta1 = FO_C(ADEMAMIX, ONE_MINUS_BETA1);
    const FO_T beta2 = FO_C(ADEMAMIX, BETA2);
    const FO_T one_minus_beta2 = FO_C(ADEMAMIX, ONE_MINUS_BETA2);
    const FO_T beta3 = FO_C(ADEMAMIX, BETA3);
    const FO_T one_minus_beta3 = FO_C(ADEMAMIX, ONE_MINUS_BETA3);
    const FO_T inv_sqrt_bc2 = FO_C(ADEMAMIX, INV_SQRT_BC2);
    const FO_T eps = FO_C(ADEMAMIX, EPS);
    const FO_T fast_coef = FO_C(ADEMAMIX, FAST_COEF);
    const FO_T slow_coef = FO_C(ADEMAMIX, SLOW_COEF);
    const FO_T decay = FO_C(ADEMAMIX, DECAY);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, 0, 0);
        const FO_T pi = p[i] * decay;
        const FO_T fi = beta1 * FO_LD(m1, i) + one_minus_beta1 * gi;
        const FO_T si = beta3 * FO_LD(m2, i) + one_minus_beta3 * gi;
        const FO_T vi = beta2 * FO_LD(v, i) + one_minus_beta2 * (gi * gi);
        const FO_T denom = FO_SQRT(vi) * inv_sqrt_bc2 + eps;
        FO_ST(m1, i, fi);
        FO_ST(m2, i, si);
        FO_ST(v, i, vi);
        FO_SETP(p, i, pi - (fast_coef * fi + slow_coef * si) / denom);
    }
}

static void FO_NAME(ademamix_range)(const void *args, const fo_tensor *t,
                                    size_t lo, size_t hi)
{
    FO_NAME(ademamix_body)((const fo_args *)args, t, lo, hi);
}

/* ---- ADOPT (iShohei220/adopt) ---------------------------------------- */

/* The first step only accumulates g * g into v.  Later steps normalise g by
 * the second moment of the steps before, max(sqrt(v), eps) (NaN kept, as
 * torch.clamp keeps it), clip the result to [-clip, clip] (NaN kept), fold
 * it into the momentum and step by it, and only then update v. */
FO_INLINE void FO_NAME(adopt_body)(const fo_args *a, const fo_tensor *t,
                                   size_t lo, size_t hi, const int has_l2,
                                   const int first, const int clip)
{
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(m, FO_ADOPT_S_EXP_AVG);
    FO_STATE(v, FO_ADOPT_S_EXP_AVG_SQ);
    const FO_T lr = FO_C(ADOPT, LR);
    const FO_T beta1 = FO_C(ADOPT, BETA1);
    const FO_T one_minus_beta1 = FO_C(ADOPT, ONE_MINUS_BETA1);
    const FO_T beta2 = FO_C(ADOPT, BETA2);
    const FO_T one_minus_beta2 = FO_C(ADOPT, ONE_MINUS_BETA2);
    const FO_T eps = FO_C(ADOPT, EPS), c = FO_C(ADOPT, CLIP_VALUE), neg_c = -c;
    const FO_T decay = FO_C(ADOPT, DECAY), l2 = FO_C(ADOPT, L2);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, has_l2, l2);
        if (first) {
            FO_ST(v, i, FO_LD(v, i) + gi * gi);
        } else {
            const FO_T pi = p[i] * decay;
            const FO_T ni = gi / FO_NAME(maxnan)(FO_SQRT(FO_LD(v, i)), eps);
            const FO_T ci = clip ? (ni < neg_c ? neg_c : (ni > c ? c : ni)) : ni;
            const FO_T mi = beta1 * FO_LD(m, i) + one_minus_beta1 * ci;
            /* stored v, m, then the parameter: in the order m, p, v the
             * step took up to 12 % longer than its floor out of cache */
            FO_ST(v, i, beta2 * FO_LD(v, i) + one_minus_beta2 * (gi * gi));
            FO_ST(m, i, mi);
            FO_SETP(p, i, pi - lr * mi);
        }
    }
}

static void FO_NAME(adopt_range)(const void *args, const fo_tensor *t,
                                 size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    enum { L2 = FO_L2, F = FO_ADOPT_O_FIRST_STEP, CL = FO_ADOPT_O_CLIP };
#define FO_ADOPT(l2, f, cl) FO_NAME(adopt_body)(a, t, lo, hi, l2, f, cl); break
    switch (a->opts & ~FO_MAXIMIZE) {
    case 0:            FO_ADOPT(0, 0, 0);
    case CL:           FO_ADOPT(0, 0, 1);
    case F:            FO_ADOPT(0, 1, 0);
    case F | CL:       FO_ADOPT(0, 1, 1);
    case L2:           FO_ADOPT(1, 0, 0);
    case L2 | CL:      FO_ADOPT(1, 0, 1);
    case L2 | F:       FO_ADOPT(1, 1, 0);
    case L2 | F | CL:  FO_ADOPT(1, 1, 1);
    default: FO_ADOPT(!!(a->opts & L2), !!(a->opts & F), !!(a->opts & CL));
    }
#undef FO_ADOPT
}

/* ---- around any rule: gradient accumulation and weight EMA ------------ */

/* acc = acc + g (a micro-batch's gradient into the sum) */
static void FO_NAME(accumulate_range)(const void *args, const fo_tensor *t,
                                      size_t lo, size_t hi)
{
    (void)args;
    FO_T *restrict acc = (FO_T *)t->acc;
    const FO_T *restrict g = (const FO_T *)t->g;
    for (size_t i = lo; i < hi; i++) acc[i] = acc[i] + g[i];
}

/* out = (acc + g) / count, or acc / count without g; then acc = 0.
 * out NULL: the mean into acc itself (clear is then ignored). */
static void FO_NAME(mean_chunk)(const fo_tensor *t, size_t n, void *out,
                                double count, int clear)
{
    FO_T *restrict acc = (FO_T *)t->acc;
    const FO_T *restrict g = (const FO_T *)t->g;
    const FO_T k = (FO_T)count;
    if (out == NULL) {
        if (g != NULL)
            for (size_t i = 0; i < n; i++) acc[i] = (acc[i] + g[i]) / k;
        else
            for (size_t i = 0; i < n; i++) acc[i] = acc[i] / k;
        return;
    }
    FO_T *restrict o = (FO_T *)out;
    if (g != NULL)
        for (size_t i = 0; i < n; i++) o[i] = (acc[i] + g[i]) / k;
    else
        for (size_t i = 0; i < n; i++) o[i] = acc[i] / k;
    if (clear)
        for (size_t i = 0; i < n; i++) acc[i] = 0;
}

/* ema = lerp(ema, p, weight) in torch.lerp's two forms, or ema = p */
static void FO_NAME(ema_chunk)(const fo_tensor *t, size_t n, double weight,
                               int copy)
{
    FO_T *restrict e = (FO_T *)t->ema;
    const FO_T *restrict p = (const FO_T *)t->p;
    if (copy) {
        for (size_t i = 0; i < n; i++) e[i] = p[i];
    } else if (weight < 0.5) {
        const FO_T w = (FO_T)weight;
        for (size_t i = 0; i < n; i++) e[i] = e[i] + w * (p[i] - e[i]);
    } else {
        const FO_T w = (FO_T)(1.0 - weight);
        for (size_t i = 0; i < n; i++) e[i] = p[i] - (p[i] - e[i]) * w;
    }
}

/* ---- two-pass rules ---------------------------------------------------
 *
 * A rule with per-tensor reductions has a `<name>_reduce` pass and a
 * `<name>_range` pass.  The reduce pass gets a block [lo, hi) of one tensor
 * (dispatch.c cuts tensors into blocks of FO_SUMSQ_BLOCK and adds the
 * blocks' sums in order) and returns its sums in double over 8 lanes,
 * element lo + 8k + j in lane j, the lanes added in order; the update pass
 * reads the per-tensor coefficients that coefficients.c made of the sums,
 * in t->r.  fastopt.reference.sumsq is the same sum in NumPy. */

/* Squares of x and y, in double, into lane j of two sets of 8 lanes */
#define FO_LANES_ADD(acc_x, acc_y, j, x, y) do { \
        const double x_ = (double)(x), y_ = (double)(y); \
        acc_x[j] += x_ * x_; \
        acc_y[j] += y_ * y_; \
    } while (0)

FO_INLINE void FO_NAME(lanes_out)(const double *acc_x, const double *acc_y,
                                  double *out)
{
    double x = acc_x[0], y = acc_y[0];
    for (int j = 1; j < 8; j++) {
        x += acc_x[j];
        y += acc_y[j];
    }
    out[0] = x;
    out[1] = y;
}

/* ---- LAMB (optax.lamb) ----------------------------------------------- */

/* The coefficients of both passes, rounded to FO_T once and held in locals
 * (so stores to the arrays cannot be thought to change them) */
#define FO_LAMB_LOCALS \
    const FO_T beta1 = FO_C(LAMB, BETA1), one_minus_beta1 = FO_C(LAMB, ONE_MINUS_BETA1); \
    const FO_T beta2 = FO_C(LAMB, BETA2), one_minus_beta2 = FO_C(LAMB, ONE_MINUS_BETA2); \
    const FO_T inv_bc1 = FO_C(LAMB, INV_BC1), inv_sqrt_bc2 = FO_C(LAMB, INV_SQRT_BC2); \
    const FO_T eps = FO_C(LAMB, EPS), wd = FO_C(LAMB, WEIGHT_DECAY); \
    (void)beta1; (void)one_minus_beta1; (void)beta2; (void)one_minus_beta2

/* Adam's bias-corrected direction plus decay: the update whose norm the
 * trust ratio uses, computed alike in both passes */
#define FO_LAMB_UPDATE(m, v, p) \
    (((m) * inv_bc1) / (FO_SQRT(v) * inv_sqrt_bc2 + eps) + wd * (p))

/* First pass: the moments, then the squared norms of p and of the update */
static void FO_NAME(lamb_reduce)(const void *args, const fo_tensor *t,
                                 size_t lo, size_t hi, double *out)
{
    const fo_args *a = (const fo_args *)args;
    const FO_T *restrict p = (const FO_T *)t->p;
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(m, FO_LAMB_S_EXP_AVG);
    FO_STATE(v, FO_LAMB_S_EXP_AVG_SQ);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_LAMB_LOCALS;
    double ap[8] = {0, 0, 0, 0, 0, 0, 0, 0}, au[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#define FO_LAMB_ONE(i, j) do { \
        const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, 0, 0); \
        const FO_T mi = beta1 * FO_LD(m, i) + one_minus_beta1 * gi; \
        const FO_T vi = beta2 * FO_LD(v, i) + one_minus_beta2 * (gi * gi); \
        FO_ST(m, i, mi); \
        FO_ST(v, i, vi); \
        FO_LANES_ADD(ap, au, j, p[i], FO_LAMB_UPDATE(mi, vi, p[i])); \
    } while (0)
    size_t i = lo;
    for (; i + 8 <= hi; i += 8)
        for (int j = 0; j < 8; j++) FO_LAMB_ONE(i + j, j);
    for (int j = 0; i < hi; i++, j++) FO_LAMB_ONE(i, j);
#undef FO_LAMB_ONE
    FO_NAME(lanes_out)(ap, au, out);
}

/* Second pass: p -= (lr * trust ratio) * update */
static void FO_NAME(lamb_range)(const void *args, const fo_tensor *t,
                                size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    FO_PARAM(p);
    FO_STATE(m, FO_LAMB_S_EXP_AVG);
    FO_STATE(v, FO_LAMB_S_EXP_AVG_SQ);
    const FO_T k = (FO_T)t->r[0];
    FO_LAMB_LOCALS;
    FO_FOR(i)
        FO_SETP(p, i, p[i] - k * FO_LAMB_UPDATE(FO_LD(m, i), FO_LD(v, i), p[i]));
}

#undef FO_LAMB_UPDATE
#undef FO_LAMB_LOCALS

/* ---- LARS (optax.lars) ----------------------------------------------- */

/* g (negated when maximizing) plus weight_decay * p */
#define FO_LARS_UPDATE(g, p) (FO_NAME(grad)((g), (p), negate, 0, 0) + wd * (p))

/* First pass: the squared norms of p and of g + weight_decay * p */
FO_INLINE void FO_NAME(lars_reduce_body)(const fo_args *a, const fo_tensor *t,
                                         size_t lo, size_t hi, double *out,
                                         const int negate)
{
    const FO_T *restrict p = (const FO_T *)t->p;
    const FO_T *restrict g = (const FO_T *)t->g;
    const FO_T wd = FO_C(LARS, WEIGHT_DECAY);
    double ap[8] = {0, 0, 0, 0, 0, 0, 0, 0}, au[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = lo;
    for (; i + 8 <= hi; i += 8)
        for (int j = 0; j < 8; j++)
            FO_LANES_ADD(ap, au, j, p[i + j], FO_LARS_UPDATE(g[i + j], p[i + j]));
    for (int j = 0; i < hi; i++, j++)
        FO_LANES_ADD(ap, au, j, p[i], FO_LARS_UPDATE(g[i], p[i]));
    FO_NAME(lanes_out)(ap, au, out);
}

static void FO_NAME(lars_reduce)(const void *args, const fo_tensor *t,
                                 size_t lo, size_t hi, double *out)
{
    const fo_args *a = (const fo_args *)args;
    if (a->opts & FO_MAXIMIZE)
        FO_NAME(lars_reduce_body)(a, t, lo, hi, out, 1);
    else
        FO_NAME(lars_reduce_body)(a, t, lo, hi, out, 0);
}

/* Second pass: d = (lr * trust ratio) * update; b = d + momentum * b;
 * p -= b, or with Nesterov p -= d + momentum * b (optax's trace) */
FO_INLINE void FO_NAME(lars_body)(const fo_args *a, const fo_tensor *t,
                                  size_t lo, size_t hi, const int nesterov,
                                  const int negate)
{
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(b, FO_LARS_S_MOMENTUM_BUFFER);
    const FO_T k = (FO_T)t->r[0], mu = FO_C(LARS, MOMENTUM);
    const FO_T wd = FO_C(LARS, WEIGHT_DECAY);
    FO_FOR(i) {
        const FO_T d = k * FO_LARS_UPDATE(g[i], p[i]);
        const FO_T bi = d + mu * FO_LD(b, i);
        FO_ST(b, i, bi);
        FO_SETP(p, i, p[i] - (nesterov ? d + mu * bi : bi));
    }
}

#undef FO_LARS_UPDATE

static void FO_NAME(lars_range)(const void *args, const fo_tensor *t,
                                size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    const int negate = (a->opts & FO_MAXIMIZE) != 0;
    switch ((a->opts & FO_LARS_O_NESTEROV ? 2 : 0) | negate) {
    case 0: FO_NAME(lars_body)(a, t, lo, hi, 0, 0); break;
    case 1: FO_NAME(lars_body)(a, t, lo, hi, 0, 1); break;
    case 2: FO_NAME(lars_body)(a, t, lo, hi, 1, 0); break;
    default: FO_NAME(lars_body)(a, t, lo, hi, 1, 1); break;
    }
}

/* ---- scikit-learn's MLP Adam (AdamOptimizer) ------------------------- */

/* The gradient of the scikit-learn rules: with finish (1, or 2 with a
 * power-of-two divisor), g is a layer's raw sum, finished as
 * scikit-learn's _compute_loss_grad does it in place, g += alpha * coef,
 * then g /= divisor, each rounded to FO_T (alpha and divisor reach NumPy as
 * Python scalars, which take the arrays' dtype).  scale is the divisor, or
 * with finish 2 its reciprocal, a multiplication that gives the same bits
 * (coefficients.c). */
FO_INLINE FO_T FO_NAME(sklearn_grad)(FO_T g, FO_T p, int negate, int finish,
                                     FO_T alpha, FO_T scale)
{
    const FO_T sum = g + alpha * p;
    const FO_T gi = finish == 2 ? sum * scale : finish ? sum / scale : g;
    return negate ? -gi : gi;
}

/* The finish argument of sklearn_grad for options o of rule R */
#define FO_SKLEARN_FINISH(R, o) \
    ((o) & FO_##R##_O_RECIPROCAL ? 2 : (o) & FO_##R##_O_FINISH ? 1 : 0)

/* The moments are FO_T arithmetic with the coefficients rounded to FO_T, as
 * NumPy computes beta_1 * m + (1 - beta_1) * grad with Python floats; the
 * denominator sqrt(v) + eps too.  The step size is a NumPy float64 scalar in
 * scikit-learn, which NumPy 2 does not round to float32: the update
 * -learning_rate * m / denom is formed in double and added to the parameter
 * in double, and only the sum is rounded to FO_T (param += update with a
 * float64 update).  For double arrays the casts are no-ops. */
FO_INLINE void FO_NAME(sklearn_adam_body)(const fo_args *a, const fo_tensor *t,
                                          size_t lo, size_t hi, const int finish)
{
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(m, FO_SKLEARN_ADAM_S_EXP_AVG);
    FO_STATE(v, FO_SKLEARN_ADAM_S_EXP_AVG_SQ);
    const double neg_step_size = a->c[FO_SKLEARN_ADAM_C_NEG_STEP_SIZE];
    const FO_T beta1 = FO_C(SKLEARN_ADAM, BETA1);
    const FO_T one_minus_beta1 = FO_C(SKLEARN_ADAM, ONE_MINUS_BETA1);
    const FO_T beta2 = FO_C(SKLEARN_ADAM, BETA2);
    const FO_T one_minus_beta2 = FO_C(SKLEARN_ADAM, ONE_MINUS_BETA2);
    const FO_T eps = FO_C(SKLEARN_ADAM, EPS);
    const FO_T alpha = FO_C(SKLEARN_ADAM, ALPHA);
    const FO_T scale = FO_C(SKLEARN_ADAM, SCALE);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        const FO_T gi = FO_NAME(sklearn_grad)(g[i], p[i], negate, finish, alpha, scale);
        const FO_T mi = beta1 * FO_LD(m, i) + one_minus_beta1 * gi;
        const FO_T vi = beta2 * FO_LD(v, i) + one_minus_beta2 * (gi * gi);
        FO_ST(m, i, mi);
        FO_ST(v, i, vi);
        const FO_T denom = FO_SQRT(vi) + eps;
        FO_SETP(p, i, (FO_T)((double)p[i] + neg_step_size * (double)mi / (double)denom));
    }
}

static void FO_NAME(sklearn_adam_range)(const void *args, const fo_tensor *t,
                                        size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    switch (FO_SKLEARN_FINISH(SKLEARN_ADAM, a->opts)) {
    case 0: FO_NAME(sklearn_adam_body)(a, t, lo, hi, 0); break;
    case 1: FO_NAME(sklearn_adam_body)(a, t, lo, hi, 1); break;
    default: FO_NAME(sklearn_adam_body)(a, t, lo, hi, 2); break;
    }
}

/* ---- scikit-learn's MLP SGD (SGDOptimizer) --------------------------- */

/* u = momentum * u - lr * g becomes the velocity; the parameter gets
 * momentum * u - lr * g once more with Nesterov, else u. */
FO_INLINE void FO_NAME(sklearn_sgd_body)(const fo_args *a, const fo_tensor *t,
                                         size_t lo, size_t hi, const int nesterov,
                                         const int finish)
{
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(u, FO_SKLEARN_SGD_S_VELOCITY);
    const FO_T lr = FO_C(SKLEARN_SGD, LR), mu = FO_C(SKLEARN_SGD, MOMENTUM);
    const FO_T alpha = FO_C(SKLEARN_SGD, ALPHA);
    const FO_T scale = FO_C(SKLEARN_SGD, SCALE);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        const FO_T gi = FO_NAME(sklearn_grad)(g[i], p[i], negate, finish, alpha, scale);
        const FO_T ui = mu * FO_LD(u, i) - lr * gi;
        FO_ST(u, i, ui);
        FO_SETP(p, i, p[i] + (nesterov ? mu * ui - lr * gi : ui));
    }
}

static void FO_NAME(sklearn_sgd_range)(const void *args, const fo_tensor *t,
                                       size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    switch ((a->opts & FO_SKLEARN_SGD_O_NESTEROV ? 3 : 0)
            + FO_SKLEARN_FINISH(SKLEARN_SGD, a->opts)) {
    case 0: FO_NAME(sklearn_sgd_body)(a, t, lo, hi, 0, 0); break;
    case 1: FO_NAME(sklearn_sgd_body)(a, t, lo, hi, 0, 1); break;
    case 2: FO_NAME(sklearn_sgd_body)(a, t, lo, hi, 0, 2); break;
    case 3: FO_NAME(sklearn_sgd_body)(a, t, lo, hi, 1, 0); break;
    case 4: FO_NAME(sklearn_sgd_body)(a, t, lo, hi, 1, 1); break;
    default: FO_NAME(sklearn_sgd_body)(a, t, lo, hi, 1, 2); break;
    }
}

/* ---- schedule-free AdamW and SGD (the schedulefree package) ----------- */

/* y (the parameter) moves towards z by torch's lerp, written as
 * base + lerp * (z - y) with base = z when the weight is 0.5 or more
 * (lerp_from_z; coefficients.c), then along the step; z takes the plain
 * step.  On a tensor's first step z is the parameter itself (the package
 * makes z as a copy of it), so z is read from p and written.  AdamW's
 * gradient is normalised by sqrt(v) / sqrt(1 - beta2^t) + eps and gets its
 * weight decay at y after that; SGD's weight decay is L2 on the gradient. */
FO_INLINE void FO_NAME(adamw_schedulefree_body)(
    const fo_args *a, const fo_tensor *t, size_t lo, size_t hi,
    const int first, const int from_z, const int has_decay)
{
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(z, FO_ADAMW_SCHEDULEFREE_S_Z);
    FO_STATE(v, FO_ADAMW_SCHEDULEFREE_S_EXP_AVG_SQ);
    const FO_T beta2 = FO_C(ADAMW_SCHEDULEFREE, BETA2);
    const FO_T one_minus_beta2 = FO_C(ADAMW_SCHEDULEFREE, ONE_MINUS_BETA2);
    const FO_T inv_sqrt_bc2 = FO_C(ADAMW_SCHEDULEFREE, INV_SQRT_BC2);
    const FO_T eps = FO_C(ADAMW_SCHEDULEFREE, EPS);
    const FO_T wd = FO_C(ADAMW_SCHEDULEFREE, WEIGHT_DECAY);
    const FO_T w = FO_C(ADAMW_SCHEDULEFREE, LERP);
    const FO_T y_coef = FO_C(ADAMW_SCHEDULEFREE, Y_COEF);
    const FO_T lr = FO_C(ADAMW_SCHEDULEFREE, LR);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, 0, 0);
        const FO_T yi = p[i];
        const FO_T zi = first ? yi : FO_LD(z, i);
        const FO_T vi = beta2 * FO_LD(v, i) + one_minus_beta2 * (gi * gi);
        const FO_T denom = FO_SQRT(vi) * inv_sqrt_bc2 + eps;
        const FO_T ni = has_decay ? gi / denom + wd * yi : gi / denom;
        const FO_T xi = (from_z ? zi : yi) + w * (zi - yi);
        FO_ST(v, i, vi);
        FO_ST(z, i, zi - lr * ni);
        FO_SETP(p, i, xi + ni * y_coef);   /* last: see adopt_body */
    }
}

static void FO_NAME(adamw_schedulefree_range)(const void *args,
                                              const fo_tensor *t,
                                              size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    enum { F = FO_ADAMW_SCHEDULEFREE_O_FIRST_STEP,
           Z = FO_ADAMW_SCHEDULEFREE_O_LERP_FROM_Z,
           D = FO_ADAMW_SCHEDULEFREE_O_DECAY };
#define FO_SF(f, zz, d) \
    FO_NAME(adamw_schedulefree_body)(a, t, lo, hi, f, zz, d); break
    switch (a->opts & ~FO_MAXIMIZE) {
    case 0:          FO_SF(0, 0, 0);
    case Z:          FO_SF(0, 1, 0);
    case F | Z:      FO_SF(1, 1, 0);
    case D:          FO_SF(0, 0, 1);
    case D | Z:      FO_SF(0, 1, 1);
    case D | F | Z:  FO_SF(1, 1, 1);
    default: FO_SF(!!(a->opts & F), !!(a->opts & Z), !!(a->opts & D));
    }
#undef FO_SF
}

FO_INLINE void FO_NAME(sgd_schedulefree_body)(
    const fo_args *a, const fo_tensor *t, size_t lo, size_t hi,
    const int has_l2, const int first, const int from_z)
{
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_STATE(z, FO_SGD_SCHEDULEFREE_S_Z);
    const FO_T w = FO_C(SGD_SCHEDULEFREE, LERP);
    const FO_T y_coef = FO_C(SGD_SCHEDULEFREE, Y_COEF);
    const FO_T lr = FO_C(SGD_SCHEDULEFREE, LR), l2 = FO_C(SGD_SCHEDULEFREE, L2);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        const FO_T gi = FO_NAME(grad)(g[i], p[i], negate, has_l2, l2);
        const FO_T yi = p[i];
        const FO_T zi = first ? yi : FO_LD(z, i);
        const FO_T xi = (from_z ? zi : yi) + w * (zi - yi);
        FO_SETP(p, i, xi + gi * y_coef);
        FO_ST(z, i, zi - lr * gi);
    }
}

static void FO_NAME(sgd_schedulefree_range)(const void *args,
                                            const fo_tensor *t,
                                            size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    enum { L2 = FO_L2, F = FO_SGD_SCHEDULEFREE_O_FIRST_STEP,
           Z = FO_SGD_SCHEDULEFREE_O_LERP_FROM_Z };
#define FO_SF(l2, f, zz) \
    FO_NAME(sgd_schedulefree_body)(a, t, lo, hi, l2, f, zz); break
    switch (a->opts & ~FO_MAXIMIZE) {
    case 0:           FO_SF(0, 0, 0);
    case Z:           FO_SF(0, 0, 1);
    case F | Z:       FO_SF(0, 1, 1);
    case L2:          FO_SF(1, 0, 0);
    case L2 | Z:      FO_SF(1, 0, 1);
    case L2 | F | Z:  FO_SF(1, 1, 1);
    default: FO_SF(!!(a->opts & L2), !!(a->opts & F), !!(a->opts & Z));
    }
#undef FO_SF
}

/* ---- Muon (torch.optim.Muon): the two element-wise passes ------------- */

/* A rule with a matrix step runs its loop twice per step
 * (docs/adding-a-rule.md).  First pass (option post clear), over
 * (work, grad, buffer): the buffer moves toward the gradient by torch's
 * lerp, buffer + w * (g - buffer) for |w| < 0.5, else
 * g - (g - buffer) * (1 - w), both written as base + buf_w * (g - buffer)
 * with base = g in the second case (buf_w = w - 1 there; coefficients.c);
 * the work array, in slot p, receives what the matrix step orthogonalises:
 * with Nesterov lerp(g, buffer, momentum) in the same form, else the
 * buffer.  The work array is only written. */
FO_INLINE void FO_NAME(muon_body)(const fo_args *a, const fo_tensor *t,
                                  size_t lo, size_t hi, const int nesterov,
                                  const int buf_from_grad,
                                  const int nest_from_buf)
{
    FO_T *restrict u = (FO_T *)t->p;
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_T *restrict b = (FO_T *)t->s[FO_MUON_S_MOMENTUM_BUFFER];
    const FO_T bw = FO_C(MUON, BUF_W), nw = FO_C(MUON, NEST_W);
    const int negate = a->opts & FO_MAXIMIZE;
    FO_FOR(i) {
        const FO_T gi = negate ? -g[i] : g[i];
        const FO_T bo = b[i];
        const FO_T bi = (buf_from_grad ? gi : bo) + bw * (gi - bo);
        b[i] = bi;
        u[i] = nesterov ? (nest_from_buf ? bi : gi) + nw * (bi - gi) : bi;
    }
}

/* Second pass (post set), over (param, direction): torch's
 * param.mul_(1 - lr * weight_decay) then param.add_(d, alpha=-k), k the
 * tensor's adjusted learning rate lr * t->r[0] (t->r[0] is the scale the
 * matrix step gave this tensor), in double and rounded once. */
FO_INLINE void FO_NAME(muon_post)(const fo_args *a, const fo_tensor *t,
                                  size_t lo, size_t hi)
{
    FO_PARAM(p);
    const FO_T *restrict d = (const FO_T *)t->g;
    const FO_T decay = FO_C(MUON, DECAY);
    const FO_T k = (FO_T)(a->c[FO_MUON_C_LR] * t->r[0]);
    FO_FOR(i)
        FO_SETP(p, i, p[i] * decay - k * d[i]);
}

static void FO_NAME(muon_range)(const void *args, const fo_tensor *t,
                                size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    enum { N = FO_MUON_O_NESTEROV, B = FO_MUON_O_BUF_FROM_GRAD,
           F = FO_MUON_O_NEST_FROM_BUF };
    if (a->opts & FO_MUON_O_POST) {
        FO_NAME(muon_post)(a, t, lo, hi);
        return;
    }
#define FO_MUON(n, bb, f) FO_NAME(muon_body)(a, t, lo, hi, n, bb, f); break
    switch (a->opts & (N | B | F)) {
    case 0:          FO_MUON(0, 0, 0);
    case F:          FO_MUON(0, 0, 1);
    case N | F:      FO_MUON(1, 0, 1);
    case N:          FO_MUON(1, 0, 0);
    case B:          FO_MUON(0, 1, 0);
    case B | F:      FO_MUON(0, 1, 1);
    case N | B:      FO_MUON(1, 1, 0);
    default:         FO_MUON(1, 1, 1);
    }
#undef FO_MUON
}

/* ---- sums along an axis (rules with row and column states) ------------ */

/* out[r] = the sum of squares of row r of x (cols elements), for rows
 * [r_lo, r_hi): as sumsq_range over blocks of FO_SUMSQ_BLOCK elements of
 * the row, the blocks added in order, as fo_sumsq sums one tensor */
static void FO_NAME(rowsq_range)(const void *x, size_t cols, size_t r_lo,
                                 size_t r_hi, double *out)
{
    fo_tensor row;
    for (size_t r = r_lo; r < r_hi; r++) {
        row.g = (const FO_T *)x + r * cols;
        double total = 0.0;
        for (size_t lo = 0; lo < cols; lo += FO_SUMSQ_BLOCK)
            total += FO_NAME(sumsq_range)(&row, lo,
                                          cols - lo < FO_SUMSQ_BLOCK ? cols : lo + FO_SUMSQ_BLOCK);
        out[r] = total;
    }
}

/* out[c] = the sum of squares of column c of the (rows, cols) matrix x,
 * the rows added in index order, for columns [c_lo, c_hi) */
static void FO_NAME(colsq_range)(const void *x, size_t rows, size_t cols,
                                 size_t c_lo, size_t c_hi, double *out)
{
    const FO_T *restrict m = (const FO_T *)x;
    double *restrict o = out;
    for (size_t c = c_lo; c < c_hi; c++) o[c] = 0.0;
    for (size_t r = 0; r < rows; r++) {
        const FO_T *restrict row = m + r * cols;
        for (size_t c = c_lo; c < c_hi; c++) {
            const double v = (double)row[c];
            o[c] += v * v;
        }
    }
}

/* ---- Adafactor (torch.optim.Adafactor) ---------------------------------- */

/* torch.lerp(s, x, w) with torch's two branches, w and 1 - w rounded once */
#define FO_ADAFACTOR_LERP(s, x) \
    (small ? (s) + w * ((x) - (s)) : (x) - ((x) - (s)) * one_minus_w)

/* eps1 and eps1^2 in FO_T: the dtype's machine epsilon unless given */
#define FO_ADAFACTOR_EPS \
    const FO_T eps1 = (a->opts & FO_ADAFACTOR_O_DTYPE_EPS) \
        ? (FO_T)(sizeof(FO_T) == sizeof(float) ? FLT_EPSILON : DBL_EPSILON) \
        : FO_C(ADAFACTOR, EPS1); \
    const FO_T eps1_sq = (a->opts & FO_ADAFACTOR_O_DTYPE_EPS) \
        ? (FO_T)((double)eps1 * (double)eps1) : FO_C(ADAFACTOR, EPS1_SQ); \
    (void)eps1; (void)eps1_sq

/* The update of one element: g / sqrt(max(v, eps1^2)), as torch's
 * clamp_(min=eps1 * eps1).rsqrt_().mul_(grad) */
#define FO_ADAFACTOR_U(v, gi) \
    (((FO_T)1 / FO_SQRT(FO_NAME(maxnan)((v), eps1_sq))) * (gi))

/* The axis step of a factored tensor: row_var and col_var lerped towards
 * the row and column means of g * g (the sums of fo_axis_sumsq divided by
 * cols, resp. rows, rounded once); then, per batch entry, the mean of
 * row_var (summed in double in index order) floored at eps1, into
 * scratch after the sums. */
static void FO_NAME(adafactor_axes)(const void *args, const fo_tensor *t)
{
    const fo_args *a = (const fo_args *)args;
    const size_t R = t->rows, C = t->cols, B = t->n / (R * C);
    FO_T *restrict row = (FO_T *)t->s[FO_ADAFACTOR_S_ROW_VAR];
    FO_T *restrict col = (FO_T *)t->s[FO_ADAFACTOR_S_COL_VAR];
    const double *rs = t->scratch, *cs = t->scratch + B * R;
    double *den = t->scratch + B * (R + C);
    const int small = a->c[FO_ADAFACTOR_C_WEIGHT] < 0.5;
    const FO_T w = FO_C(ADAFACTOR, WEIGHT), one_minus_w = FO_C(ADAFACTOR, ONE_MINUS_WEIGHT);
    FO_ADAFACTOR_EPS;
    for (size_t k = 0; k < B * R; k++) {
        const FO_T mean = (FO_T)(rs[k] / (double)C);
        row[k] = FO_ADAFACTOR_LERP(row[k], mean);
    }
    for (size_t k = 0; k < B * C; k++) {
        const FO_T mean = (FO_T)(cs[k] / (double)R);
        col[k] = FO_ADAFACTOR_LERP(col[k], mean);
    }
    for (size_t b = 0; b < B; b++) {
        double sum = 0.0;
        for (size_t r = 0; r < R; r++) sum += (double)row[b * R + r];
        den[b] = (double)FO_NAME(maxnan)((FO_T)(sum / (double)R), eps1);
    }
}

/* Calls body(i, u) for every element i of [lo, hi) of the tensor with its
 * update u (a vector's variance already lerped) */
#define FO_ADAFACTOR_EACH(body) do { \
        if (t->cols == 0) { \
            for (size_t i = lo; i < hi; i++) { \
                const FO_T gi = FO_NAME(grad)(g[i], 0, negate, 0, 0); \
                body(i, FO_ADAFACTOR_U(v[i], gi)); \
            } \
        } else { \
            const size_t R = t->rows, C = t->cols, B = t->n / (R * C); \
            const double *den = t->scratch + B * (R + C); \
            size_t i = lo; \
            while (i < hi) { \
                const size_t rg = i / C, b = rg / R; \
                const size_t end = (rg + 1) * C < hi ? (rg + 1) * C : hi; \
                const FO_T rv = row[rg], dn = (FO_T)den[b]; \
                const FO_T *restrict cv = col + b * C; \
                const size_t base = rg * C; \
                for (; i < end; i++) { \
                    const FO_T gi = FO_NAME(grad)(g[i], 0, negate, 0, 0); \
                    body(i, FO_ADAFACTOR_U(rv * cv[i - base] / dn, gi)); \
                } \
            } \
        } \
    } while (0)

/* Second pass (the first, for a vector): a vector's variance lerped
 * towards g * g; the sums of squares of p and of the update, element i of
 * the block in lane (i - lo) % 8 */
static void FO_NAME(adafactor_reduce)(const void *args, const fo_tensor *t,
                                      size_t lo, size_t hi, double *out)
{
    const fo_args *a = (const fo_args *)args;
    const FO_T *restrict p = (const FO_T *)t->p;
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_T *restrict v = (FO_T *)t->s[FO_ADAFACTOR_S_VARIANCE];
    const FO_T *restrict row = (const FO_T *)t->s[FO_ADAFACTOR_S_ROW_VAR];
    const FO_T *restrict col = (const FO_T *)t->s[FO_ADAFACTOR_S_COL_VAR];
    const int negate = a->opts & FO_MAXIMIZE;
    const int small = a->c[FO_ADAFACTOR_C_WEIGHT] < 0.5;
    const FO_T w = FO_C(ADAFACTOR, WEIGHT), one_minus_w = FO_C(ADAFACTOR, ONE_MINUS_WEIGHT);
    FO_ADAFACTOR_EPS;
    double ap[8] = {0, 0, 0, 0, 0, 0, 0, 0}, au[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (t->cols == 0)
        for (size_t i = lo; i < hi; i++) {
            const FO_T gi = FO_NAME(grad)(g[i], 0, negate, 0, 0);
            v[i] = FO_ADAFACTOR_LERP(v[i], gi * gi);
        }
    /* [i, end) in lanes (i - lo) % 8: up to lane 0 one by one, then runs
     * of 8 with literal lanes (which vectorise), then the rest: each lane
     * still adds its elements in index order */
#define FO_ADAFACTOR_LANES(U) do { \
        size_t j = (i - lo) % 8; \
        for (; i < end && j != 0; i++, j = (j + 1) % 8) \
            FO_LANES_ADD(ap, au, j, p[i], U(i)); \
        for (; i + 8 <= end; i += 8) \
            for (int k = 0; k < 8; k++) \
                FO_LANES_ADD(ap, au, k, p[i + k], U(i + k)); \
        for (j = 0; i < end; i++, j++) \
            FO_LANES_ADD(ap, au, j, p[i], U(i)); \
    } while (0)
    if (t->cols == 0 && sizeof(FO_T) == sizeof(float)) {
        /* float32, as the rows of a matrix below: in pieces through u.
         * Only u * u is summed, the same for g and -g (a product's sign
         * is the operands' exactly), so maximize is left out here. */
        enum { PIECE = 256 };
        FO_T u[PIECE];
        size_t i = lo;
        while (i < hi) {
            const size_t end = hi - i > PIECE ? i + PIECE : hi;
            const size_t n = end - i, start = i;
            const FO_T *restrict vp = v + i, *restrict gp = g + i;
            for (size_t m = 0; m < n; m++)
                u[m] = FO_ADAFACTOR_U(vp[m], gp[m]);
#define FO_ADAFACTOR_VU(i) u[(i) - start]
            FO_ADAFACTOR_LANES(FO_ADAFACTOR_VU);
#undef FO_ADAFACTOR_VU
        }
    } else if (t->cols == 0) {
        size_t i = lo;
        const size_t end = hi;
#define FO_ADAFACTOR_VU(i) FO_ADAFACTOR_U(v[i], FO_NAME(grad)(g[i], 0, negate, 0, 0))
        FO_ADAFACTOR_LANES(FO_ADAFACTOR_VU);
#undef FO_ADAFACTOR_VU
    } else {
        const size_t R = t->rows, C = t->cols, B = t->n / (R * C);
        const double *den = t->scratch + B * (R + C);
        size_t i = lo;
        if (sizeof(FO_T) == sizeof(float)) {
            /* float32: a row's elements in pieces, their updates into u
             * first (a plain loop that vectorises), then into the lanes
             * from there.  One loop that does both stays scalar (gcc 12):
             * 48 against 25 ms a step for a 3200 x 3125 matrix, one
             * thread.  float64 vectorises as one loop, and the pieces
             * made it slower (58 against 66 ms). */
            enum { PIECE = 256 };
            FO_T u[PIECE];
            while (i < hi) {
                const size_t rg = i / C, b = rg / R;
                const size_t row_end = (rg + 1) * C < hi ? (rg + 1) * C : hi;
                const size_t end = row_end - i > PIECE ? i + PIECE : row_end;
                const size_t n = end - i, start = i;
                const FO_T rv = row[rg], dn = (FO_T)den[b];
                const FO_T *restrict cv = col + b * C + (i - rg * C);
                const FO_T *restrict gp = g + i;
                for (size_t m = 0; m < n; m++)
                    u[m] = FO_ADAFACTOR_U(rv * cv[m] / dn, gp[m]);
#define FO_ADAFACTOR_FU(i) u[(i) - start]
                FO_ADAFACTOR_LANES(FO_ADAFACTOR_FU);
#undef FO_ADAFACTOR_FU
            }
        } else {
            while (i < hi) {
                const size_t rg = i / C, b = rg / R;
                const size_t end = (rg + 1) * C < hi ? (rg + 1) * C : hi;
                const FO_T rv = row[rg], dn = (FO_T)den[b];
                const FO_T *restrict cv = col + b * C;
                const size_t base = rg * C;
#define FO_ADAFACTOR_FU(i) \
    FO_ADAFACTOR_U(rv * cv[(i) - base] / dn, FO_NAME(grad)(g[i], 0, negate, 0, 0))
                FO_ADAFACTOR_LANES(FO_ADAFACTOR_FU);
#undef FO_ADAFACTOR_FU
            }
        }
    }
#undef FO_ADAFACTOR_LANES
    FO_NAME(lanes_out)(ap, au, out);
}

/* Last pass: p = p * decay - k * u, k = alpha / denom of the tensor (t->r[0]) */
static void FO_NAME(adafactor_range)(const void *args, const fo_tensor *t,
                                     size_t lo, size_t hi)
{
    const fo_args *a = (const fo_args *)args;
    FO_PARAM(p);
    const FO_T *restrict g = (const FO_T *)t->g;
    const FO_T *restrict v = (const FO_T *)t->s[FO_ADAFACTOR_S_VARIANCE];
    const FO_T *restrict row = (const FO_T *)t->s[FO_ADAFACTOR_S_ROW_VAR];
    const FO_T *restrict col = (const FO_T *)t->s[FO_ADAFACTOR_S_COL_VAR];
    const int negate = a->opts & FO_MAXIMIZE;
    const FO_T decay = FO_C(ADAFACTOR, DECAY), k = (FO_T)t->r[0];
    FO_ADAFACTOR_EPS;
#define FO_ADAFACTOR_STEP(i, u) FO_SETP(p, i, p[i] * decay - k * (u))
    FO_ADAFACTOR_EACH(FO_ADAFACTOR_STEP);
#undef FO_ADAFACTOR_STEP
}

#undef FO_ADAFACTOR_EACH
#undef FO_ADAFACTOR_U
#undef FO_ADAFACTOR_EPS
#undef FO_ADAFACTOR_LERP
#undef FO_LANES_ADD

#undef FO_C
#undef FO_INLINE
#undef FO_FOR
#undef FO_STATE
#undef FO_LD
#undef FO_ST
#undef FO_PARAM
#undef FO_SETP
