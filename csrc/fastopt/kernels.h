/* fastopt kernels: the public C interface.
 *
 * Every update rule is one fused loop over contiguous arrays, updated in
 * place.  An entry point takes the rule's hyperparameters (already folded into
 * per-step coefficients, see scalars.h) and an array of tensors, so one call
 * steps a whole group of parameters.
 *
 * Preconditions, checked by the caller (the Cython boundary), never here:
 *   - every pointer of a used slot is valid for `n` elements of the entry
 *     point's element type, and the arrays of one tensor do not overlap;
 *   - unused state slots may be NULL;
 *   - coefficients are finite.
 * The kernels allocate nothing and touch no Python object, so they may run
 * without the GIL.
 */
#ifndef FASTOPT_KERNELS_H
#define FASTOPT_KERNELS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One parameter tensor and its state buffers.  The meaning of s0..s2 is the
 * rule's (listed with each argument struct below). */
typedef struct {
    void *p;        /* parameter, updated in place */
    const void *g;  /* gradient, read only */
    void *s0;
    void *s1;
    void *s2;
    size_t n;       /* number of elements */
} fo_tensor;

/* Gradient sign: -1 when maximizing, +1 otherwise.  Weight decay `l2` is
 * added to the gradient as l2 * p when has_l2 is set. */

/* Gradient descent, optionally with torch.optim.SGD heavy-ball momentum.
 * s0: momentum buffer (used when momentum != 0). */
typedef struct {
    double lr, momentum, one_minus_dampening, l2, sign;
    int has_l2, has_momentum, first_step, nesterov;
} fo_sgd_args;

/* The seed's exponentially weighted momentum.  s0: velocity. */
typedef struct {
    double lr, beta, one_minus_beta, l2, sign;
    int has_l2;
} fo_momentum_args;

/* RMSProp with torch.optim.RMSprop options.
 * s0: square average, s1: gradient average (centered), s2: momentum buffer. */
typedef struct {
    double lr, alpha, one_minus_alpha, eps, momentum, l2, sign;
    int has_l2, centered, has_momentum;
} fo_rmsprop_args;

/* Adam and AdamW.  s0: first moment, s1: second moment, s2: running maximum
 * of the second moment (amsgrad).  `decay` multiplies the parameter first
 * (1 - lr * weight_decay for AdamW, exactly 1 otherwise). */
typedef struct {
    double step_size, inv_sqrt_bc2, beta1, one_minus_beta1, beta2,
        one_minus_beta2, eps, l2, decay, sign;
    int has_l2, amsgrad;
} fo_adam_args;

/* Adagrad.  s0: sum of squared gradients. */
typedef struct {
    double clr, eps, l2, sign;
    int has_l2;
} fo_adagrad_args;

/* Entry points, one per rule and element type. */
void fo_sgd_f32(const fo_sgd_args *a, const fo_tensor *t, size_t count);
void fo_sgd_f64(const fo_sgd_args *a, const fo_tensor *t, size_t count);
void fo_momentum_f32(const fo_momentum_args *a, const fo_tensor *t, size_t count);
void fo_momentum_f64(const fo_momentum_args *a, const fo_tensor *t, size_t count);
void fo_rmsprop_f32(const fo_rmsprop_args *a, const fo_tensor *t, size_t count);
void fo_rmsprop_f64(const fo_rmsprop_args *a, const fo_tensor *t, size_t count);
void fo_adam_f32(const fo_adam_args *a, const fo_tensor *t, size_t count);
void fo_adam_f64(const fo_adam_args *a, const fo_tensor *t, size_t count);
void fo_adagrad_f32(const fo_adagrad_args *a, const fo_tensor *t, size_t count);
void fo_adagrad_f64(const fo_adagrad_args *a, const fo_tensor *t, size_t count);

/* Gradient utilities over many tensors (slot g only; p is ignored).
 * sumsq: sum of squares accumulated in double, in an order fixed by the
 * element index alone (blocks of FO_SUMSQ_BLOCK, each summed over 8 fixed
 * lanes), so the result is the same bits on every instruction set and thread
 * count. */
#define FO_SUMSQ_BLOCK 4096
double fo_sumsq_f32(const fo_tensor *t, size_t count);
double fo_sumsq_f64(const fo_tensor *t, size_t count);
/* 1 if every element is finite, 0 at the first NaN or infinity. */
int fo_allfinite_f32(const fo_tensor *t, size_t count);
int fo_allfinite_f64(const fo_tensor *t, size_t count);
/* In place over slot p: x *= scale, or x = min(max(x, -clip), clip). */
void fo_scale_f32(double scale, const fo_tensor *t, size_t count);
void fo_scale_f64(double scale, const fo_tensor *t, size_t count);
void fo_clamp_f32(double clip, const fo_tensor *t, size_t count);
void fo_clamp_f64(double clip, const fo_tensor *t, size_t count);

/* Bandwidth floor (benchmarks): the reads and writes of a rule over the
 * slots present, with one add per element in place of the math. */
void fo_traffic_f32(const fo_tensor *t, size_t count);
void fo_traffic_f64(const fo_tensor *t, size_t count);

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
size_t fo_parallel_threshold(void);
void fo_parallel_threshold_set(size_t n);
int fo_openmp_enabled(void);

#ifdef __cplusplus
}
#endif
#endif
