/* fastopt kernels: the public C interface.
 *
 * Every update rule is one fused loop over contiguous arrays, updated in
 * place.  One entry point, fo_run, steps any rule over an array of tensors;
 * the rule's hyperparameters arrive already folded into per-step
 * coefficients by fo_coefficients (coefficients.c).  The rules, their
 * hyperparameters, coefficients, states and options are listed in
 * src/fastopt/rules.py, from which the build writes fo_table.h: the indices
 * used here and in rules.h.
 *
 * Preconditions, checked by the caller (the Cython boundary), never here:
 *   - every pointer of a used slot is valid for `n` elements of the element
 *     type, and the arrays of one tensor do not overlap;
 *   - state slots the options do not use may be NULL;
 *   - coefficients are finite.
 * The kernels allocate nothing and touch no Python object, so they may run
 * without the GIL.
 */
#ifndef FASTOPT_KERNELS_H
#define FASTOPT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "fo_table.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The arrays a loop over bfloat16 or 8-bit states streams (rules.h,
 * FO_FOR), for prefetching, each at the loop's element 0: base[0] the
 * float32 parameter, base[1] the float32 gradient or NULL (a mean gradient
 * in scratch), base[2] to base[count - 1] the states (uint16 bits or uint8
 * codes, as the loop's kind says); limit: the elements from element 0 that
 * lie within every one of them */
#define FO_PF_MAX (2 + FO_MAX_STATES)
typedef struct {
    const char *base[FO_PF_MAX];
    int count;
    size_t limit;
} fo_prefetch;

/* One parameter tensor and its state buffers, in the rule's slot order.
 * r is the scratch of a two-pass rule (one with per-tensor reductions):
 * fo_run fills it with the tensor's sums (FO_<RULE>_R_*), then with the
 * per-tensor coefficients the rule makes of them; the caller sets nothing
 * there.  For the second pass of a rule with a matrix step (Muon), the
 * caller sets r[0] to the scale the matrix step gave the tensor. */
typedef struct {
    void *p;        /* parameter, updated in place */
    const void *g;  /* gradient, read only */
    void *s[FO_MAX_STATES];
    size_t n;       /* number of elements */
    double r[FO_MAX_REDUCTIONS];
    void *acc;      /* accumulated gradients (fo_run_fused, FO_FUSE_MEAN) */
    void *ema;      /* averaged parameter (fo_run_fused, FO_FUSE_EMA*) */
    uint64_t key;   /* this step's random key (fo_run_fused, FO_FUSE_BF16) */
    size_t at;      /* the index of element 0 in the random bits (0) */
    void *scale[FO_MAX_STATES]; /* 8-bit states: one float32 per block of
                                   FO_Q8_BLOCK elements (FO_FUSE_Q8) */
    /* Set by fo_run_fused for a rule's loop over one block of 8-bit
     * states (rules.h, FO_Q8): the block's codes of each state and its
     * scale (each state's map is the rule table's, a constant in the
     * loop); s[k] is then the float32 scratch the loop stores the new
     * states to */
    const uint8_t *q8_codes[FO_MAX_STATES];
    float q8_scale[FO_MAX_STATES];
    /* A factored rule's tensor (one with row and column states): the
     * parameter as (batch, rows, cols), rows and cols its last two
     * dimensions, and scratch, room for batch * (rows + cols + 1) doubles
     * that fo_run fills (the row sums, the column sums, then one number
     * per batch entry).  cols == 0: an unfactored tensor (a vector). */
    size_t rows, cols;
    double *scratch;
    /* Set by fused_range (dispatch.c) on the tensor it gives a loop over
     * bfloat16 or 8-bit states: the arrays that loop prefetches, or NULL
     * (no prefetching); callers need not set it (run_update clears it) */
    const fo_prefetch *pf;
} fo_tensor;

/* A rule's per-step coefficients (indices FO_<RULE>_C_*) and options: the
 * common bits below and the rule's own (FO_<RULE>_O_*, from bit 2 up).
 * sc holds the tensor's per-tensor scalar states (FO_<RULE>_T_*): the
 * caller sets them before fo_coefficients, which advances them to their
 * values after the step; the caller stores them once the step is made.
 * Loops never read sc. */
typedef struct {
    double c[FO_MAX_COEFFICIENTS];
    double sc[FO_MAX_SCALAR_STATES];
    unsigned opts;
    /* the weight w < 0.5 of the averages for the loops that move them in
     * the rule's own loop (rules.h, FO_EMA), set by fo_run_fused */
    double ema_w;
} fo_args;

#define FO_MAXIMIZE 1u   /* negate the gradient first */
#define FO_L2 2u         /* then add c[l2] * p to it */

/* A "count" hyperparameter given as None (no warm-up, ...) arrives in h as
 * this value, which no count takes (counts are ints >= 0). */
#define FO_NO_COUNT (-1.0)

/* Fill `a` for one step of `rule` from its hyperparameters (doubles in the
 * order FO_<RULE>_H_*, flags as 0 or 1, a None count as FO_NO_COUNT) and the
 * step count (0 when the call has none).  Returns NULL, or a message when
 * the combination is invalid (then `a` is unspecified). */
const char *fo_coefficients(int rule, const double *h, long long step,
                            fo_args *a);
/* The same, one function per rule (fo_coef_adam, ...): the functional
 * entry points call their rule's directly. */
#define FO_DECLARE_COEFFICIENTS(name, NAME) \
    const char *fo_coef_##name(const double *h, long long step, fo_args *a);
FO_RULE_LIST(FO_DECLARE_COEFFICIENTS)
#undef FO_DECLARE_COEFFICIENTS

/* Step `rule` over `count` tensors of element type dt (0 float32,
 * 1 float64).  A two-pass rule first runs its reduction pass over every
 * tensor (per-tensor sums in double, in blocks of FO_SUMSQ_BLOCK elements
 * over 8 fixed lanes, blocks added in order: the same bits for every
 * instruction set and thread count), then fo_tensor_coefficients on each
 * tensor, then its update pass; it writes t[k].r and must not be given
 * neighbouring tensors merged into one. */
void fo_run(int rule, int dt, const fo_args *a, fo_tensor *t, size_t count);
/* What fo_run_fused does around a rule's loop, in the same pass over
 * memory.  An average with weight w < 0.5 (ema_decay > 0.5) is moved inside
 * the rule's own loop, as each parameter element is stored; a first
 * average (a copy), a weight >= 0.5 or bfloat16 states move it over each
 * chunk of FO_SUMSQ_BLOCK elements just after the loop ran over the chunk,
 * while it is in cache.  The mean gradient is made chunk by chunk, each
 * chunk's just before the rule's loop runs over it.
 *   FO_FUSE_MEAN      the gradient is the mean of accumulated micro-batch
 *                     gradients: (acc + g) / count, or acc / count for a
 *                     tensor whose g is NULL; acc is then cleared to zero.
 *   FO_FUSE_EMA       after the update, ema = lerp(ema, p, ema_weight) as
 *                     torch.lerp computes it: ema + w * (p - ema) for
 *                     w < 0.5, else p - (p - ema) * (1 - w).
 *   FO_FUSE_EMA_COPY  after the update, ema = p (the first average).
 *   FO_FUSE_BF16      the states are bfloat16 (uint16 bits) of a float32
 *                     tensor: the rule's loop loads them exactly and stores
 *                     them rounded stochastically with the random bits of
 *                     (t->key, slot, t->at + element index): see lowp.h.
 *                     dt must be 0, and the rule one-pass. */
typedef struct {
    unsigned flags;
    unsigned q8_nonneg;  /* FO_FUSE_Q8: bit k set when state k is never negative */
    double count;
    double ema_weight;
} fo_fuse;
#define FO_FUSE_MEAN 1u
#define FO_FUSE_EMA 2u
#define FO_FUSE_EMA_COPY 4u
#define FO_FUSE_BF16 8u
/* FO_FUSE_Q8: the states of a float32 tensor are 8-bit codes (uint8, in
 * s[k]) with one float32 scale per block of FO_Q8_BLOCK elements counted
 * from the tensor's start (scale[k]).  Chunks and thread splits fall on
 * block boundaries; the rule's loop runs over each block of a chunk,
 * decoding the states as it reads them and storing the new values to
 * float32 scratch (rules.h, FO_Q8; a rule without such a loop gets the
 * chunk's states decoded into the scratch first), and each block is
 * requantized from that scratch (fo_q8_encode).  dt must be 0. */
#define FO_FUSE_Q8 16u
#define FO_Q8_BLOCK 256
/* 8-bit states are requantized chunk by chunk from float32 scratch of this
 * many elements each (a multiple of FO_Q8_BLOCK), small enough that a
 * rule's states stay in L1 between the rule's loop and the requantization
 * (dispatch.c); the codec has a form for whole chunks (q8.h) */
#define FO_Q8_CHUNK 1024
/* A state that a rule writes without reading it (ASGD's ax before t0) is
 * stored around the cache from this many bytes up (rules.h), where x86 has
 * such stores; smaller ones through it */
#define FO_STREAM_MIN ((size_t)32 << 20)
void fo_run_fused(int rule, int dt, const fo_args *a, fo_tensor *t,
                  size_t count, const fo_fuse *f);
/* The random keys of stochastic rounding (lowp.h): a tensor's key for one
 * step from the optimizer's seed, the parameter's index and the step
 * number, and from it the key of each state slot.  SplitMix64's finalizer;
 * fastopt.reference computes the same in Python. */
uint64_t fo_lowp_tensor_key(uint64_t seed, uint64_t index, uint64_t step);
uint32_t fo_lowp_slot_key(uint64_t key, int slot) __attribute__((const));
/* The active level's bfloat16 codec over n elements (lowp.h): decode, and
 * stochastic rounding with slot key `key` from element index0 on (the
 * lower 16 bits of each hash if low, as odd slots use them). */
void fo_bf16_decode(const void *in, float *out, size_t n);
void fo_bf16_encode(const float *x, void *out, size_t n, uint32_t key,
                    size_t index0, int low);
/* 8-bit blockwise codec (dispatch.c, q8.h).  A block's scale is the
 * largest |x| of its values (NaN if any is NaN).  A code's magnitude (8
 * bits for a state that is never negative, 7 and a sign bit for the
 * others) is a float with 3 mantissa bits relative to the scale, 0 for
 * code 0 and the scale for the top code; no square root, no division.
 * All in float32 with a per-block reciprocal, rounded up so that the
 * largest element gets the top code; codes round stochastically and
 * without bias with a random byte of lowp.h's hash (key fo_lowp_slot_key
 * of the tensor's step key; one hash serves four elements, q8.h), since
 * rounding to nearest holds decaying averages off by a fifth; a block
 * whose scale is not finite gets codes 0 and decodes to NaN.  n elements
 * from a block start (the last block may be short). */
void fo_q8_encode(const float *x, uint8_t *codes, float *scales, size_t n,
                  int nonneg, uint32_t key, size_t index0);
void fo_q8_decode(const uint8_t *codes, const float *scales, float *out,
                  size_t n, int nonneg);
/* acc += g over slot acc and g of each tensor (micro-batches) */
void fo_accumulate(int dt, const fo_tensor *t, size_t count);

/* The number of per-tensor sums of `rule` (0 for a one-pass rule). */
int fo_reductions(int rule);
/* A two-pass rule's per-tensor coefficients, from its sums in t->r
 * (coefficients.c); they replace the sums in t->r. */
void fo_tensor_coefficients(int rule, const fo_args *a, fo_tensor *t);

/* Sums of squares of slot g of a factored tensor (rows, cols set) in
 * double: along the last axis into out[b * rows + r] (each row as
 * fo_sumsq sums a tensor: blocks of FO_SUMSQ_BLOCK over 8 lanes), along
 * the second-to-last into out[batch * rows + b * cols + c] (the rows added
 * in index order).  The same bits on every instruction set and thread
 * count: each sum is one thread's, in a fixed order.  fo_run makes them
 * for a factored rule before its reduction pass. */
void fo_axis_sumsq(int dt, const fo_tensor *t, double *out);
/* The two passes of a two-pass rule taken apart, for a caller that holds
 * part of each tensor (dispatch.c): the first pass over given ranges of
 * one tensor, each range's sums into out (count rows of fo_reductions);
 * then the update pass over tensors whose sums the caller set in t[k].r. */
void fo_reduce_ranges(int rule, int dt, const fo_args *a, const fo_tensor *t,
                      const size_t *lo, const size_t *hi, size_t count,
                      double *out);
void fo_run_given_sums(int rule, int dt, const fo_args *a, fo_tensor *t,
                       size_t count, const fo_fuse *f);

/* Gradient utilities over many tensors (slot g, or p where written).
 * sumsq: sum of squares accumulated in double, in an order fixed by the
 * element index alone (blocks of FO_SUMSQ_BLOCK, each summed over 8 fixed
 * lanes), so the result is the same bits on every instruction set and thread
 * count. */
#define FO_SUMSQ_BLOCK 4096
double fo_sumsq(int dt, const fo_tensor *t, size_t count);
/* The same blocks' sums, one per block in fo_sumsq's order, into out (as
 * many as fo_sumsq_block_count gives): fo_sumsq is 0.0 plus them, left to
 * right.  Lets a sum over a buffer split between processes be put back
 * together with fo_sumsq's bits. */
size_t fo_sumsq_block_count(const fo_tensor *t, size_t count);
void fo_sumsq_blocks(int dt, const fo_tensor *t, size_t count, double *out);
/* 1 if every element is finite, 0 at the first NaN or infinity. */
int fo_allfinite(int dt, const fo_tensor *t, size_t count);
/* In place over slot p: x *= scale, or x = min(max(x, -clip), clip). */
void fo_scale(int dt, double scale, const fo_tensor *t, size_t count);
void fo_clamp(int dt, double clip, const fo_tensor *t, size_t count);

/* Bandwidth floor (benchmarks): the reads and writes of a rule over the
 * slots present, with one add per element in place of the math. */
void fo_traffic(int dt, const fo_tensor *t, size_t count);

/* Instruction-set levels and threads (dispatch.c). */
typedef enum { FO_BASELINE = 0, FO_AVX2 = 1, FO_AVX512 = 2 } fo_level;
const char *fo_level_name(int level);
int fo_level_supported(int level);   /* CPU and build both have it */
int fo_level_compiled(int level);    /* the build has it */
int fo_level_get(void);
const char *fo_cpu_features(void);  /* as detected, space-separated */
int fo_level_set(int level);         /* 0 on success, -1 if unsupported */
int fo_num_threads_get(void);
void fo_num_threads_set(int n);
/* Cap the calling thread's steps at n threads (0: no cap); returns the old cap. */
int fo_thread_cap_swap(int n);
size_t fo_parallel_threshold(void);
void fo_parallel_threshold_set(size_t n);
size_t fo_prefetch_threshold(void);      /* bytes (dispatch.c, prefetch_step) */
void fo_prefetch_threshold_set(size_t n);
int fo_openmp_enabled(void);
const char *fo_arch_name(void);      /* the architecture compiled for */
int fo_level_count(void);            /* levels of that architecture */

#ifdef __cplusplus
}
#endif
#endif
