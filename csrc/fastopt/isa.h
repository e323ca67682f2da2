/* Internal: the table of range functions that each instruction-set build of
 * kernels_isa.c exports, and that dispatch.c chooses from at import. */
#ifndef FASTOPT_ISA_H
#define FASTOPT_ISA_H

#include "kernels.h"

/* Apply a rule to elements [lo, hi) of one tensor. */
typedef void (*fo_range_fn)(const void *args, const fo_tensor *t, size_t lo,
                            size_t hi);
/* The reduction pass of a two-pass rule over elements [lo, hi) of one
 * tensor: its sums over 8 lanes (element i in lane (i - lo) % 8), the lanes
 * then added in order, into out[0 .. number of sums). */
typedef void (*fo_reduce_fn)(const void *args, const fo_tensor *t, size_t lo,
                             size_t hi, double *out);
/* The fused prologue and epilogue over a chunk of n elements of a tensor
 * whose pointers start at the chunk (kernels.h, fo_fuse). */
typedef void (*fo_mean_fn)(const fo_tensor *t, size_t n, void *out,
                           double count, int clear);
typedef void (*fo_ema_fn)(const fo_tensor *t, size_t n, double weight,
                          int copy);
/* bfloat16 states (lowp.h), float32 only */
typedef void (*fo_bf16_decode_fn)(const void *in, float *out, size_t n);
typedef void (*fo_bf16_encode_fn)(const float *x, void *out, size_t n,
                                  uint32_t key, size_t index0, int low);
/* 8-bit blockwise states (q8.h), float32 only */
typedef void (*fo_q8_encode_fn)(const float *x, uint8_t *codes, float *scales,
                                size_t n, int nonneg, uint32_t key,
                                size_t index0);
typedef void (*fo_q8_decode_fn)(const uint8_t *codes, const float *scales,
                                float *out, size_t n, int nonneg);
/* A factored rule's axis step over one tensor: its row and column states
 * from the sums of squares along the last two axes in t->scratch
 * (fo_axis_sumsq), and whatever per-batch numbers its passes need after
 * them in t->scratch. */
typedef void (*fo_axes_fn)(const void *args, const fo_tensor *t);
/* Sums of squares of rows [r_lo, r_hi) of x (cols long) into out[r]; and
 * of columns [c_lo, c_hi) of one (rows, cols) matrix, down the rows, into
 * out[c]. */
typedef void (*fo_rowsq_fn)(const void *x, size_t cols, size_t r_lo,
                            size_t r_hi, double *out);
typedef void (*fo_colsq_fn)(const void *x, size_t rows, size_t cols,
                            size_t c_lo, size_t c_hi, double *out);
typedef double (*fo_sumsq_fn)(const fo_tensor *t, size_t lo, size_t hi);
typedef int (*fo_allfinite_fn)(const fo_tensor *t, size_t lo, size_t hi);

/* Index [dt]: 0 is float32, 1 is float64. */
typedef struct {
    fo_range_fn rule[FO_NRULES][2];
    fo_range_fn rule_bf16[FO_NRULES];    /* float32, bfloat16 states */
    /* float32, 8-bit states: a loop over one block that decodes the
     * states as it reads them (rules.h, FO_Q8); NULL for a rule that has
     * none, whose states are decoded into scratch before its loop */
    fo_range_fn rule_q8[FO_NRULES];
    /* the rules moving the average in their loop (kernels_isa_ema.c) */
    const fo_range_fn (*rule_ema)[2];
    fo_reduce_fn reduce[FO_NRULES][2];   /* NULL for one-pass rules */
    fo_axes_fn axes[FO_NRULES][2];       /* NULL but for factored rules */
    fo_rowsq_fn rowsq[2];
    fo_colsq_fn colsq[2];
    fo_range_fn scale[2], clamp[2], traffic[2], accumulate[2];
    fo_mean_fn mean[2];
    fo_ema_fn ema[2];
    fo_bf16_decode_fn bf16_decode;
    fo_bf16_encode_fn bf16_encode;
    fo_q8_encode_fn q8_encode;
    fo_q8_decode_fn q8_decode;
    fo_sumsq_fn sumsq[2];
    fo_allfinite_fn allfinite[2];
} fo_isa_table;

extern const fo_isa_table fo_table_baseline;
#ifdef FO_HAVE_AVX2
extern const fo_isa_table fo_table_avx2;
#endif
#ifdef FO_HAVE_AVX512
extern const fo_isa_table fo_table_avx512;
#endif

#endif
