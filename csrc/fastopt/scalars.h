/* Per-step scalars, computed once per call in double from the integer step.
 *
 * The kernels' callers and the NumPy reference both take these values from
 * here (the reference through fastopt._core), so a kernel and its reference
 * see the very same coefficients.  Powers come from the integer step,
 * never from a running product, so bias correction does not depend on the
 * history of calls; and from fo_math.h, never from the C library, so they
 * are the same bits on every machine. */
#ifndef FASTOPT_SCALARS_H
#define FASTOPT_SCALARS_H

#include <math.h>

#include "fo_math.h"

/* beta^t, by exponentiation by squaring (fo_powi).  A step of a model
 * calls this with the same (beta, t) once per tensor, so each thread
 * remembers its last two answers: the power is a sizeable share of a small
 * call, and a remembered value is the same bits. */
static inline double fo_power(double beta, long long step)
{
    static _Thread_local double memo_beta[2] = {-1.0, -1.0};
    static _Thread_local long long memo_step[2] = {0, 0};
    static _Thread_local double memo_value[2];
    static _Thread_local int memo_next;
    for (int k = 0; k < 2; k++)
        if (memo_beta[k] == beta && memo_step[k] == step) return memo_value[k];
    const double value = fo_powi(beta, step);
    memo_beta[memo_next] = beta;
    memo_step[memo_next] = step;
    memo_value[memo_next] = value;
    memo_next ^= 1;
    return value;
}

/* 1 - beta^t */
static inline double fo_bias_correction(double beta, long long step)
{
    return 1.0 - fo_power(beta, step);
}

/* Adam's step size lr / (1 - beta1^t) */
static inline double fo_adam_step_size(double lr, double beta1, long long step)
{
    return lr / fo_bias_correction(beta1, step);
}

/* 1 / sqrt(1 - beta2^t): the second moment's bias correction as a factor */
static inline double fo_adam_inv_sqrt_bc2(double beta2, long long step)
{
    return 1.0 / sqrt(fo_bias_correction(beta2, step));
}

/* AdamW's decoupled decay factor 1 - lr * weight_decay */
static inline double fo_decay_factor(double lr, double weight_decay)
{
    return 1.0 - lr * weight_decay;
}

/* Adagrad's decayed rate lr / (1 + (t - 1) * lr_decay) */
static inline double fo_adagrad_clr(double lr, double lr_decay, long long step)
{
    return lr / (1.0 + (double)(step - 1) * lr_decay);
}

#endif
