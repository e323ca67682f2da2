/* Per-step coefficients: a rule's hyperparameters and step count folded
 * into the doubles its loop uses (rules.h), once per call.
 *
 * Powers, exponentials and logarithms come from fo_math.h (basic IEEE
 * operations only), never from the C library, whose results differ
 * between libraries and CPUs: the coefficients are the same bits on
 * every machine.
 *
 * h holds the hyperparameters in the order of the rule table
 * (FO_<RULE>_H_*; a pair such as betas as two entries, flags as 0 or 1),
 * already checked one by one at the Cython boundary; what is checked here
 * is only what involves several of them.  The NumPy reference reads the
 * same coefficients (fastopt._core.coefficients), so a kernel and its
 * reference see the very same values. */
#include <stdio.h>
#include <stdlib.h>

#include "fastopt/kernels.h"
#include "fastopt/scalars.h"

#define H(rule, name) h[FO_##rule##_H_##name]
#define C(rule, name) a->c[FO_##rule##_C_##name]
#define SC(rule, name) a->sc[FO_##rule##_T_##name]

/* maximize and L2 decay, common to every rule */
static unsigned common(double maximize, double l2)
{
    return (maximize != 0.0 ? FO_MAXIMIZE : 0u) | (l2 != 0.0 ? FO_L2 : 0u);
}

static const char *sgd(const double *h, long long step, fo_args *a)
{
    const double momentum = H(SGD, MOMENTUM), dampening = H(SGD, DAMPENING);
    if (H(SGD, NESTEROV) != 0.0 && (momentum <= 0.0 || dampening != 0.0))
        return "Nesterov momentum requires a momentum and zero dampening "
               "(nesterov=True needs momentum > 0 and dampening == 0)";
    C(SGD, LR) = H(SGD, LR);
    C(SGD, MOMENTUM) = momentum;
    C(SGD, ONE_MINUS_DAMPENING) = 1.0 - dampening;
    C(SGD, L2) = H(SGD, WEIGHT_DECAY);
    a->opts = common(H(SGD, MAXIMIZE), C(SGD, L2));
    if (momentum != 0.0) {
        a->opts |= FO_SGD_O_HAS_MOMENTUM;
        if (step == 1) a->opts |= FO_SGD_O_FIRST_STEP;
        if (H(SGD, NESTEROV) != 0.0) a->opts |= FO_SGD_O_NESTEROV;
    }
    return NULL;
}

static const char *momentum(const double *h, long long step, fo_args *a)
{
    (void)step;
    C(MOMENTUM, LR) = H(MOMENTUM, LR);
    C(MOMENTUM, BETA) = H(MOMENTUM, BETA);
    C(MOMENTUM, ONE_MINUS_BETA) = 1.0 - H(MOMENTUM, BETA);
    C(MOMENTUM, L2) = H(MOMENTUM, WEIGHT_DECAY);
    a->opts = common(H(MOMENTUM, MAXIMIZE), C(MOMENTUM, L2));
    return NULL;
}

static const char *rmsprop(const double *h, long long step, fo_args *a)
{
    (void)step;
    C(RMSPROP, LR) = H(RMSPROP, LR);
    C(RMSPROP, ALPHA) = H(RMSPROP, ALPHA);
    C(RMSPROP, ONE_MINUS_ALPHA) = 1.0 - H(RMSPROP, ALPHA);
    C(RMSPROP, EPS) = H(RMSPROP, EPS);
    C(RMSPROP, MOMENTUM) = H(RMSPROP, MOMENTUM);
    C(RMSPROP, L2) = H(RMSPROP, WEIGHT_DECAY);
    a->opts = common(H(RMSPROP, MAXIMIZE), C(RMSPROP, L2))
              | (H(RMSPROP, CENTERED) != 0.0 ? FO_RMSPROP_O_CENTERED : 0u)
              | (H(RMSPROP, MOMENTUM) != 0.0 ? FO_RMSPROP_O_HAS_MOMENTUM : 0u);
    return NULL;
}

static const char *adam(const double *h, long long step, fo_args *a)
{
    const double lr = H(ADAM, LR), wd = H(ADAM, WEIGHT_DECAY);
    const double beta1 = H(ADAM, BETAS0), beta2 = H(ADAM, BETAS1);
    const int decoupled = H(ADAM, DECOUPLED_WEIGHT_DECAY) != 0.0;
    C(ADAM, STEP_SIZE) = fo_adam_step_size(lr, beta1, step);
    C(ADAM, INV_SQRT_BC2) = fo_adam_inv_sqrt_bc2(beta2, step);
    C(ADAM, BETA1) = beta1;
    C(ADAM, ONE_MINUS_BETA1) = 1.0 - beta1;
    C(ADAM, BETA2) = beta2;
    C(ADAM, ONE_MINUS_BETA2) = 1.0 - beta2;
    C(ADAM, EPS) = H(ADAM, EPS);
    C(ADAM, L2) = decoupled ? 0.0 : wd;
    C(ADAM, DECAY) = decoupled ? fo_decay_factor(lr, wd) : 1.0;
    a->opts = common(H(ADAM, MAXIMIZE), C(ADAM, L2))
              | (H(ADAM, AMSGRAD) != 0.0 ? FO_ADAM_O_AMSGRAD : 0u);
    return NULL;
}

static const char *adagrad(const double *h, long long step, fo_args *a)
{
    C(ADAGRAD, CLR) = fo_adagrad_clr(H(ADAGRAD, LR), H(ADAGRAD, LR_DECAY), step);
    C(ADAGRAD, EPS) = H(ADAGRAD, EPS);
    C(ADAGRAD, L2) = H(ADAGRAD, WEIGHT_DECAY);
    a->opts = common(H(ADAGRAD, MAXIMIZE), C(ADAGRAD, L2));
    return NULL;
}

static const char *lion(const double *h, long long step, fo_args *a)
{
    (void)step;
    C(LION, LR) = H(LION, LR);
    C(LION, BETA1) = H(LION, BETAS0);
    C(LION, ONE_MINUS_BETA1) = 1.0 - H(LION, BETAS0);
    C(LION, BETA2) = H(LION, BETAS1);
    C(LION, ONE_MINUS_BETA2) = 1.0 - H(LION, BETAS1);
    C(LION, DECAY) = fo_decay_factor(H(LION, LR), H(LION, WEIGHT_DECAY));
    a->opts = common(H(LION, MAXIMIZE), 0.0);
    return NULL;
}

static const char *adadelta(const double *h, long long step, fo_args *a)
{
    (void)step;
    C(ADADELTA, LR) = H(ADADELTA, LR);
    C(ADADELTA, RHO) = H(ADADELTA, RHO);
    C(ADADELTA, ONE_MINUS_RHO) = 1.0 - H(ADADELTA, RHO);
    C(ADADELTA, EPS) = H(ADADELTA, EPS);
    C(ADADELTA, L2) = H(ADADELTA, WEIGHT_DECAY);
    a->opts = common(H(ADADELTA, MAXIMIZE), C(ADADELTA, L2));
    return NULL;
}

/* x as Python's repr() writes a float (shortest digits that read back as x;
 * positional for exponents -4 to 15, with ".0" on whole numbers), so that a
 * message quoting values reads as torch's does */
static const char *py_float(char *out, size_t n, double x)
{
    char e[40];
    int digits = 1;
    for (; digits < 17; digits++) {
        snprintf(e, sizeof e, "%.*e", digits - 1, x);
        if (strtod(e, NULL) == x) break;
    }
    snprintf(e, sizeof e, "%.*e", digits - 1, x);
    const char *exp10 = e;
    while (*exp10 && *exp10 != 'e') exp10++;
    const int p10 = *exp10 ? atoi(exp10 + 1) : 0;
    const int decimals = digits - 1 - p10;
    if (!isfinite(x) || p10 < -4 || p10 >= 16)
        snprintf(out, n, "%s", e);
    else
        snprintf(out, n, "%.*f%s", decimals > 0 ? decimals : 0, x,
                 decimals > 0 ? "" : ".0");
    return out;
}

static const char *rprop(const double *h, long long step, fo_args *a)
{
    const double etaminus = H(RPROP, ETAS0), etaplus = H(RPROP, ETAS1);
    (void)step;
    /* lr only starts step_size, which the caller fills */
    if (!(0.0 < etaminus && etaminus < 1.0 && 1.0 < etaplus)) {
        static _Thread_local char msg[96];
        char lo[40], hi[40];
        snprintf(msg, sizeof msg, "Invalid eta values: %s, %s",
                 py_float(lo, sizeof lo, etaminus), py_float(hi, sizeof hi, etaplus));
        return msg;
    }
    C(RPROP, ETAMINUS) = etaminus;
    C(RPROP, ETAPLUS) = etaplus;
    C(RPROP, STEP_SIZE_MIN) = H(RPROP, STEP_SIZES0);
    C(RPROP, STEP_SIZE_MAX) = H(RPROP, STEP_SIZES1);
    a->opts = common(H(RPROP, MAXIMIZE), 0.0);
    return NULL;
}

static const char *adamax(const double *h, long long step, fo_args *a)
{
    const double beta1 = H(ADAMAX, BETAS0);
    C(ADAMAX, CLR) = H(ADAMAX, LR) / fo_bias_correction(beta1, step);
    C(ADAMAX, BETA1) = beta1;
    C(ADAMAX, ONE_MINUS_BETA1) = 1.0 - beta1;
    C(ADAMAX, BETA2) = H(ADAMAX, BETAS1);
    C(ADAMAX, EPS) = H(ADAMAX, EPS);
    C(ADAMAX, L2) = H(ADAMAX, WEIGHT_DECAY);
    a->opts = common(H(ADAMAX, MAXIMIZE), C(ADAMAX, L2));
    return NULL;
}

/* rho_inf = 2 / (1 - beta2) - 1 and rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t),
 * in torch's order of operations so the per-step choice is torch's.  Above
 * rho_t = 5 (torch's threshold; the paper has 4) the step is rectified by
 * rect = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
 * with the adaptive rate sqrt(1 - beta2^t) / (sqrt(v) + eps); below it, the
 * step is the bias-corrected momentum alone. */
static const char *radam(const double *h, long long step, fo_args *a)
{
    const double lr = H(RADAM, LR), wd = H(RADAM, WEIGHT_DECAY);
    const double beta1 = H(RADAM, BETAS0), beta2 = H(RADAM, BETAS1);
    const int decoupled = H(RADAM, DECOUPLED_WEIGHT_DECAY) != 0.0;
    const double bc2 = fo_bias_correction(beta2, step);
    const double rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    const double rho_t = rho_inf - 2.0 * (double)step * fo_power(beta2, step) / bc2;
    const int rectified = rho_t > 5.0;
    double step_size = fo_adam_step_size(lr, beta1, step);
    if (rectified) {
        const double rect = sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                                 / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t));
        step_size *= rect * sqrt(bc2);
    }
    C(RADAM, STEP_SIZE) = step_size;
    C(RADAM, BETA1) = beta1;
    C(RADAM, ONE_MINUS_BETA1) = 1.0 - beta1;
    C(RADAM, BETA2) = beta2;
    C(RADAM, ONE_MINUS_BETA2) = 1.0 - beta2;
    C(RADAM, EPS) = H(RADAM, EPS);
    C(RADAM, L2) = decoupled ? 0.0 : wd;
    C(RADAM, DECAY) = decoupled ? fo_decay_factor(lr, wd) : 1.0;
    a->opts = common(H(RADAM, MAXIMIZE), C(RADAM, L2))
              | (rectified ? FO_RADAM_O_RECTIFIED : 0u);
    return NULL;
}

/* NAdam (torch.optim.NAdam).  The momentum factor of step t is
 * mu_t = beta1 (1 - 0.5 * 0.96^(t psi)) with psi = momentum_decay; the
 * per-tensor running product mu_product takes mu_t this step, and the step
 * already uses mu_{t+1}:
 *   param += -lr (1 - mu_t) / (1 - prod_t) * g / denom
 *   param += -lr mu_{t+1} / (1 - prod_t mu_{t+1}) * m / denom
 * with denom = sqrt(v / (1 - beta2^t)) + eps, in torch's order. */
static const char *nadam(const double *h, long long step, fo_args *a)
{
    const double lr = H(NADAM, LR), wd = H(NADAM, WEIGHT_DECAY);
    const double beta1 = H(NADAM, BETAS0), beta2 = H(NADAM, BETAS1);
    const double psi = H(NADAM, MOMENTUM_DECAY);
    const int decoupled = H(NADAM, DECOUPLED_WEIGHT_DECAY) != 0.0;
    const double t = (double)step;
    const double mu = beta1 * (1.0 - 0.5 * fo_pow(0.96, t * psi));
    const double mu_next = beta1 * (1.0 - 0.5 * fo_pow(0.96, (t + 1.0) * psi));
    const double product = SC(NADAM, MU_PRODUCT) * mu;
    const double product_next = product * mu_next;
    C(NADAM, BETA1) = beta1;
    C(NADAM, ONE_MINUS_BETA1) = 1.0 - beta1;
    C(NADAM, BETA2) = beta2;
    C(NADAM, ONE_MINUS_BETA2) = 1.0 - beta2;
    C(NADAM, INV_SQRT_BC2) = fo_adam_inv_sqrt_bc2(beta2, step);
    C(NADAM, EPS) = H(NADAM, EPS);
    C(NADAM, GRAD_COEF) = -lr * (1.0 - mu) / (1.0 - product);
    C(NADAM, EXP_AVG_COEF) = (-lr * mu_next) / (1.0 - product_next);
    C(NADAM, L2) = decoupled ? 0.0 : wd;
    C(NADAM, DECAY) = decoupled ? fo_decay_factor(lr, wd) : 1.0;
    SC(NADAM, MU_PRODUCT) = product;
    a->opts = common(H(NADAM, MAXIMIZE), C(NADAM, L2));
    return NULL;
}

/* ASGD (torch.optim.ASGD).  The step uses the tensor's eta and mu (set at
 * its first step to lr and 1), then advances them as torch does after the
 * update: eta = lr / (1 + lambd lr t)^alpha, mu = 1 / max(1, t - t0). */
static const char *asgd(const double *h, long long step, fo_args *a)
{
    const double lr = H(ASGD, LR), lambd = H(ASGD, LAMBD);
    const double eta = SC(ASGD, ETA), mu = SC(ASGD, MU);
    const double t = (double)step;
    C(ASGD, DECAY) = 1.0 - lambd * eta;
    C(ASGD, ETA) = eta;
    C(ASGD, MU) = mu;
    C(ASGD, L2) = H(ASGD, WEIGHT_DECAY);
    SC(ASGD, ETA) = lr / fo_pow(1.0 + lambd * lr * t, H(ASGD, ALPHA));
    SC(ASGD, MU) = 1.0 / (t - H(ASGD, T0) > 1.0 ? t - H(ASGD, T0) : 1.0);
    a->opts = common(H(ASGD, MAXIMIZE), C(ASGD, L2))
              | (mu != 1.0 ? FO_ASGD_O_AVERAGE : 0u);
    return NULL;
}

/* AdEMAMix (apple/ml-ademamix, pytorch/ademamix.py).  Over the first
 * `warmup` steps alpha rises linearly from 0, and beta3 from beta1 linearly
 * in f(beta) = log(0.5) / log(beta + 1e-8) - 1 (the half-life in steps),
 * mapped back with 0.5^(1 / (f + 1)); both in the reference's order of
 * operations.  The step is
 *   param = param * decay - (lr / (1 - beta1^t) * m1 + lr alpha_t * m2)
 *                           / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * with the slow EMA m2 not bias-corrected and decay = 1 - lr * weight_decay. */
static double ademamix_warmup(long long step, double end, double start,
                              double warmup)
{
    if (warmup == FO_NO_COUNT || !((double)step < warmup)) return end;
    const double x = (double)step / warmup;
    return (1.0 - x) * start + x * end;
}

static double ademamix_half_life(double beta)
{
    return fo_log(0.5) / fo_log(beta + 1e-8) - 1.0;
}

static const char *ademamix(const double *h, long long step, fo_args *a)
{
    const double lr = H(ADEMAMIX, LR);
    const double beta1 = H(ADEMAMIX, BETAS0), beta2 = H(ADEMAMIX, BETAS1);
    const double alpha = ademamix_warmup(step, H(ADEMAMIX, ALPHA), 0.0,
                                         H(ADEMAMIX, ALPHA_WARMUP));
    double beta3 = H(ADEMAMIX, BETAS2);
    const double warmup3 = H(ADEMAMIX, BETA3_WARMUP);
    if (warmup3 != FO_NO_COUNT && (double)step < warmup3)
        beta3 = fo_pow(0.5, 1.0 / (ademamix_warmup(step, ademamix_half_life(beta3),
                                                ademamix_half_life(beta1),
                                                warmup3) + 1.0));
    C(ADEMAMIX, BETA1) = beta1;
    C(ADEMAMIX, ONE_MINUS_BETA1) = 1.0 - beta1;
    C(ADEMAMIX, BETA2) = beta2;
    C(ADEMAMIX, ONE_MINUS_BETA2) = 1.0 - beta2;
    C(ADEMAMIX, BETA3) = beta3;
    C(ADEMAMIX, ONE_MINUS_BETA3) = 1.0 - beta3;
    C(ADEMAMIX, INV_SQRT_BC2) = fo_adam_inv_sqrt_bc2(beta2, step);
    C(ADEMAMIX, EPS) = H(ADEMAMIX, EPS);
    C(ADEMAMIX, FAST_COEF) = fo_adam_step_size(lr, beta1, step);
    C(ADEMAMIX, SLOW_COEF) = lr * alpha;
    C(ADEMAMIX, DECAY) = fo_decay_factor(lr, H(ADEMAMIX, WEIGHT_DECAY));
    a->opts = common(H(ADEMAMIX, MAXIMIZE), 0.0);
    return NULL;
}

/* ADOPT (iShohei220/adopt, src/adopt/adopt.py).  The reference counts
 * steps from 0 and its first call only sets v; fastopt's step t is that
 * count plus one, so step 1 is the first-step pass and the clip of step
 * t > 1 is the reference's default clip_lambda of its count, (t - 1)^0.25,
 * from fo_pow: the correctly rounded value, the same bits everywhere (two
 * square roots would round twice and miss it by an ulp, e.g. at t = 8).
 * Decoupled decay as in AdamW: decay = 1 - lr * weight_decay, from step 2
 * on (the first pass leaves the parameter alone). */
static const char *adopt(const double *h, long long step, fo_args *a)
{
    const double lr = H(ADOPT, LR), wd = H(ADOPT, WEIGHT_DECAY);
    const int decoupled = H(ADOPT, DECOUPLE) != 0.0;
    const int first = step == 1;
    C(ADOPT, LR) = lr;
    C(ADOPT, BETA1) = H(ADOPT, BETAS0);
    C(ADOPT, ONE_MINUS_BETA1) = 1.0 - H(ADOPT, BETAS0);
    C(ADOPT, BETA2) = H(ADOPT, BETAS1);
    C(ADOPT, ONE_MINUS_BETA2) = 1.0 - H(ADOPT, BETAS1);
    C(ADOPT, EPS) = H(ADOPT, EPS);
    C(ADOPT, CLIP_VALUE) = first ? 0.0 : fo_pow((double)(step - 1), 0.25);
    C(ADOPT, L2) = decoupled ? 0.0 : wd;
    C(ADOPT, DECAY) = decoupled ? fo_decay_factor(lr, wd) : 1.0;
    a->opts = common(H(ADOPT, MAXIMIZE), C(ADOPT, L2))
              | (first ? FO_ADOPT_O_FIRST_STEP : 0u)
              | (H(ADOPT, CLIP) != 0.0 ? FO_ADOPT_O_CLIP : 0u);
    return NULL;
}

/* LAMB (optax.lamb).  The update pass steps by lr times the tensor's trust
 * ratio, made by lamb_tensor from the squared norms of the first pass. */
static const char *lamb(const double *h, long long step, fo_args *a)
{
    const double beta1 = H(LAMB, BETAS0), beta2 = H(LAMB, BETAS1);
    C(LAMB, LR) = H(LAMB, LR);
    C(LAMB, BETA1) = beta1;
    C(LAMB, ONE_MINUS_BETA1) = 1.0 - beta1;
    C(LAMB, BETA2) = beta2;
    C(LAMB, ONE_MINUS_BETA2) = 1.0 - beta2;
    C(LAMB, INV_BC1) = 1.0 / fo_bias_correction(beta1, step);
    C(LAMB, INV_SQRT_BC2) = fo_adam_inv_sqrt_bc2(beta2, step);
    C(LAMB, EPS) = H(LAMB, EPS);
    C(LAMB, WEIGHT_DECAY) = H(LAMB, WEIGHT_DECAY);
    C(LAMB, TRUST_RATIO) = H(LAMB, TRUST_RATIO);
    a->opts = common(H(LAMB, MAXIMIZE), 0.0);
    return NULL;
}

/* LARS (optax.lars): the update pass adds lr times the tensor's trust ratio
 * times the update into the trace, made by lars_tensor. */
static const char *lars(const double *h, long long step, fo_args *a)
{
    (void)step;
    C(LARS, LR) = H(LARS, LR);
    C(LARS, MOMENTUM) = H(LARS, MOMENTUM);
    C(LARS, WEIGHT_DECAY) = H(LARS, WEIGHT_DECAY);
    C(LARS, TRUST_COEFFICIENT) = H(LARS, TRUST_COEFFICIENT);
    C(LARS, EPS) = H(LARS, EPS);
    C(LARS, TRUST_RATIO) = H(LARS, TRUST_RATIO);
    a->opts = common(H(LARS, MAXIMIZE), 0.0)
              | (H(LARS, NESTEROV) != 0.0 ? FO_LARS_O_NESTEROV : 0u);
    return NULL;
}

/* optax's scale_by_trust_ratio: coefficient * ||param|| / (||update|| + eps),
 * 1 where either norm is 0 (or when the group turns the ratio off); the
 * norms are the square roots of the tensor's sums. */
static double trust_ratio(double on, double coefficient, double eps,
                          double param_sq, double update_sq)
{
    const double pn = sqrt(param_sq), un = sqrt(update_sq);
    if (on == 0.0 || pn == 0.0 || un == 0.0) return 1.0;
    return coefficient * pn / (un + eps);
}

static void lamb_tensor(const fo_args *a, fo_tensor *t)
{
    const double ratio = trust_ratio(C(LAMB, TRUST_RATIO), 1.0, 0.0,
                                     t->r[FO_LAMB_R_PARAM_SQ],
                                     t->r[FO_LAMB_R_UPDATE_SQ]);
    t->r[0] = C(LAMB, LR) * ratio;
}

static void lars_tensor(const fo_args *a, fo_tensor *t)
{
    const double ratio = trust_ratio(C(LARS, TRUST_RATIO),
                                     C(LARS, TRUST_COEFFICIENT), C(LARS, EPS),
                                     t->r[FO_LARS_R_PARAM_SQ],
                                     t->r[FO_LARS_R_UPDATE_SQ]);
    t->r[0] = C(LARS, LR) * ratio;
}

/* The finishing of a raw gradient sum by the scikit-learn rules: the
 * options, and the coefficient the loop scales by.  g / d and g * (1 / d)
 * round the same exact number when d is a power of two whose reciprocal is
 * a normal float32 and float64, so such a divisor becomes a multiplication
 * (a float64 division takes about as long as a step of the rule). */
static unsigned sklearn_finish(double divisor, unsigned finish, unsigned reciprocal,
                               double *scale)
{
    int e;
    *scale = divisor;
    if (divisor == 0.0)
        return 0u;
    if (frexp(divisor, &e) == 0.5 && e >= -100 && e <= 100) {
        *scale = 1.0 / divisor;
        return finish | reciprocal;
    }
    return finish;
}

/* Adam as scikit-learn's AdamOptimizer has it (sklearn/neural_network/
 * _stochastic_optimizers.py): its learning_rate is
 * lr * sqrt(1 - beta2^t) / (1 - beta1^t), evaluated left to right in double
 * as Python does it, and its update multiplies by -learning_rate.  eps goes
 * unchanged onto the raw sqrt(v).  The powers are the C library's pow() of
 * the float beta and the integer step, as Python's float.__pow__ computes
 * them: this rule promises scikit-learn's bits on the machine it runs on,
 * so unlike the other rules it follows the machine's libm, as scikit-learn
 * does (fo_powi can differ from pow() in the last bit). */
static const char *sklearn_adam(const double *h, long long step, fo_args *a)
{
    const double beta1 = H(SKLEARN_ADAM, BETAS0), beta2 = H(SKLEARN_ADAM, BETAS1);
    const double t = (double)step;
    const double learning_rate = H(SKLEARN_ADAM, LR)
        * sqrt(1.0 - pow(beta2, t)) / (1.0 - pow(beta1, t));
    C(SKLEARN_ADAM, NEG_STEP_SIZE) = -learning_rate;
    C(SKLEARN_ADAM, BETA1) = beta1;
    C(SKLEARN_ADAM, ONE_MINUS_BETA1) = 1.0 - beta1;
    C(SKLEARN_ADAM, BETA2) = beta2;
    C(SKLEARN_ADAM, ONE_MINUS_BETA2) = 1.0 - beta2;
    C(SKLEARN_ADAM, EPS) = H(SKLEARN_ADAM, EPS);
    C(SKLEARN_ADAM, ALPHA) = H(SKLEARN_ADAM, ALPHA);
    a->opts = common(H(SKLEARN_ADAM, MAXIMIZE), 0.0)
              | sklearn_finish(H(SKLEARN_ADAM, DIVISOR), FO_SKLEARN_ADAM_O_FINISH,
                               FO_SKLEARN_ADAM_O_RECIPROCAL, &C(SKLEARN_ADAM, SCALE));
    return NULL;
}

/* SGD as scikit-learn's SGDOptimizer has it: lr is its current
 * learning_rate, which its schedules set between calls.  Both scikit-learn
 * rules finish a raw gradient sum in the loop when divisor is nonzero. */
static const char *sklearn_sgd(const double *h, long long step, fo_args *a)
{
    (void)step;
    C(SKLEARN_SGD, LR) = H(SKLEARN_SGD, LR);
    C(SKLEARN_SGD, MOMENTUM) = H(SKLEARN_SGD, MOMENTUM);
    C(SKLEARN_SGD, ALPHA) = H(SKLEARN_SGD, ALPHA);
    a->opts = common(H(SKLEARN_SGD, MAXIMIZE), 0.0)
              | (H(SKLEARN_SGD, NESTEROV) != 0.0 ? FO_SKLEARN_SGD_O_NESTEROV : 0u)
              | sklearn_finish(H(SKLEARN_SGD, DIVISOR), FO_SKLEARN_SGD_O_FINISH,
                               FO_SKLEARN_SGD_O_RECIPROCAL, &C(SKLEARN_SGD, SCALE));
    return NULL;
}

/* Schedule-free AdamW and SGD (Defazio et al. 2024; the schedulefree
 * package 1.4.1, adamw_schedulefree.py and sgd_schedulefree.py).  AdamW's
 * denominator is sqrt(v) / sqrt(1 - beta2^t) + eps, as fastopt's Adam has
 * it (the package divides v by 1 - beta2^t first: the same within
 * rounding, and one division per element fewer).  The
 * package keeps k, lr_max and weight_sum per parameter group; here k + 1 is
 * the tensor's step count t and lr_max, weight_sum are its scalar states.
 * In the package's order of operations:
 *   lr_t = lr * min(1, t / warmup_steps)        (no warm-up: warmup_steps 0)
 *   lr_max = max(lr_t, lr_max)
 *   weight = t^r * lr_max^weight_lr_power;  weight_sum += weight
 *   ckp1 = weight / weight_sum                  (0 while weight_sum is 0)
 *   y = lerp(y, z, ckp1) + lr_t (beta (1 - ckp1) - 1) * g;  z = z - lr_t g
 * with beta = betas[0] or momentum.  torch's lerp(a, b, w) is
 * a + w (b - a) for |w| < 0.5 and b - (b - a)(1 - w) otherwise
 * (ATen/native/Lerp.h); both are base + lerp * (b - a), with base = b and
 * lerp = w - 1 in the second case (option lerp_from_z). */
typedef struct {
    double lr, ckp1, lerp;
    int from_z;
} fo_sf;

static fo_sf schedulefree(double lr, double warmup, double r, double power,
                          long long step, fo_args *a, int lr_max_slot,
                          int weight_sum_slot)
{
    fo_sf s;
    const double t = (double)step;
    const double sched = (warmup > 0.0 && t - 1.0 < warmup) ? t / warmup : 1.0;
    s.lr = lr * sched;
    const double lr_max = a->sc[lr_max_slot] > s.lr ? a->sc[lr_max_slot] : s.lr;
    const double weight = fo_pow(t, r) * fo_pow(lr_max, power);
    const double weight_sum = a->sc[weight_sum_slot] + weight;
    s.ckp1 = weight_sum != 0.0 ? weight / weight_sum : 0.0;
    s.from_z = !(fabs(s.ckp1) < 0.5);
    s.lerp = s.from_z ? s.ckp1 - 1.0 : s.ckp1;
    a->sc[lr_max_slot] = lr_max;
    a->sc[weight_sum_slot] = weight_sum;
    return s;
}

static const char *adamw_schedulefree(const double *h, long long step,
                                      fo_args *a)
{
    const double beta1 = H(ADAMW_SCHEDULEFREE, BETAS0);
    const double beta2 = H(ADAMW_SCHEDULEFREE, BETAS1);
    const double wd = H(ADAMW_SCHEDULEFREE, WEIGHT_DECAY);
    const fo_sf s = schedulefree(
        H(ADAMW_SCHEDULEFREE, LR), H(ADAMW_SCHEDULEFREE, WARMUP_STEPS),
        H(ADAMW_SCHEDULEFREE, R), H(ADAMW_SCHEDULEFREE, WEIGHT_LR_POWER), step,
        a, FO_ADAMW_SCHEDULEFREE_T_LR_MAX, FO_ADAMW_SCHEDULEFREE_T_WEIGHT_SUM);
    C(ADAMW_SCHEDULEFREE, BETA2) = beta2;
    C(ADAMW_SCHEDULEFREE, ONE_MINUS_BETA2) = 1.0 - beta2;
    C(ADAMW_SCHEDULEFREE, INV_SQRT_BC2) = fo_adam_inv_sqrt_bc2(beta2, step);
    C(ADAMW_SCHEDULEFREE, EPS) = H(ADAMW_SCHEDULEFREE, EPS);
    C(ADAMW_SCHEDULEFREE, WEIGHT_DECAY) = wd;
    C(ADAMW_SCHEDULEFREE, LERP) = s.lerp;
    C(ADAMW_SCHEDULEFREE, Y_COEF) = s.lr * (beta1 * (1.0 - s.ckp1) - 1.0);
    C(ADAMW_SCHEDULEFREE, LR) = s.lr;
    a->opts = common(H(ADAMW_SCHEDULEFREE, MAXIMIZE), 0.0)
              | (step == 1 ? FO_ADAMW_SCHEDULEFREE_O_FIRST_STEP : 0u)
              | (s.from_z ? FO_ADAMW_SCHEDULEFREE_O_LERP_FROM_Z : 0u)
              | (wd != 0.0 ? FO_ADAMW_SCHEDULEFREE_O_DECAY : 0u);
    return NULL;
}

static const char *sgd_schedulefree(const double *h, long long step,
                                    fo_args *a)
{
    const double momentum = H(SGD_SCHEDULEFREE, MOMENTUM);
    const fo_sf s = schedulefree(
        H(SGD_SCHEDULEFREE, LR), H(SGD_SCHEDULEFREE, WARMUP_STEPS),
        H(SGD_SCHEDULEFREE, R), H(SGD_SCHEDULEFREE, WEIGHT_LR_POWER), step,
        a, FO_SGD_SCHEDULEFREE_T_LR_MAX, FO_SGD_SCHEDULEFREE_T_WEIGHT_SUM);
    C(SGD_SCHEDULEFREE, LERP) = s.lerp;
    C(SGD_SCHEDULEFREE, Y_COEF) = s.lr * (momentum * (1.0 - s.ckp1) - 1.0);
    C(SGD_SCHEDULEFREE, LR) = s.lr;
    C(SGD_SCHEDULEFREE, L2) = H(SGD_SCHEDULEFREE, WEIGHT_DECAY);
    a->opts = common(H(SGD_SCHEDULEFREE, MAXIMIZE), C(SGD_SCHEDULEFREE, L2))
              | (step == 1 ? FO_SGD_SCHEDULEFREE_O_FIRST_STEP : 0u)
              | (s.from_z ? FO_SGD_SCHEDULEFREE_O_LERP_FROM_Z : 0u);
    return NULL;
}

/* Muon (torch.optim.Muon).  The first pass's two lerps in the form
 * base + weight * (end - self) (rules.h): buf.lerp_(grad, 1 - momentum)
 * and grad.lerp(buf, momentum), each from end with weight - 1 when torch
 * takes its second branch (|weight| >= 0.5); weight - 1 is exactly
 * -(1 - weight), so end + (weight - 1) * (end - self) is torch's
 * end - (end - self) * (1 - weight).  The second pass's decay is torch's
 * 1 - lr * weight_decay; the door sets the option post for it.  The
 * Newton-Schulz hyperparameters go to the matrix step alone. */
static const char *muon(const double *h, long long step, fo_args *a)
{
    const double mu = H(MUON, MOMENTUM), w = 1.0 - mu;
    const int buf_from_grad = !(fabs(w) < 0.5), nest_from_buf = !(fabs(mu) < 0.5);
    (void)step;
    C(MUON, BUF_W) = buf_from_grad ? w - 1.0 : w;
    C(MUON, NEST_W) = nest_from_buf ? mu - 1.0 : mu;
    C(MUON, DECAY) = 1.0 - H(MUON, LR) * H(MUON, WEIGHT_DECAY);
    C(MUON, LR) = H(MUON, LR);
    a->opts = common(H(MUON, MAXIMIZE), 0.0)
              | (H(MUON, NESTEROV) != 0.0 ? FO_MUON_O_NESTEROV : 0u)
              | (buf_from_grad ? FO_MUON_O_BUF_FROM_GRAD : 0u)
              | (nest_from_buf ? FO_MUON_O_NEST_FROM_BUF : 0u);
    return NULL;
}

/* Adafactor (torch.optim.Adafactor, _single_tensor_adafactor).  The
 * second moment's lerp weight is t^beta2_decay (1 - beta2_t), the relative
 * step rho = min(lr, 1 / sqrt(t)) as Python's min; eps = (eps1, eps2), an
 * eps1 of None (FO_NO_COUNT here) the dtype's machine epsilon, which the
 * loop knows (option dtype_eps); eps1^2 is squared in double, as torch's
 * eps1 * eps1.  Decoupled decay 1 - lr * weight_decay. */
static const char *adafactor(const double *h, long long step, fo_args *a)
{
    const double lr = H(ADAFACTOR, LR), t = (double)step;
    const double eps1 = H(ADAFACTOR, EPS0), inv_root_t = 1.0 / sqrt(t);
    const double weight = fo_pow(t, H(ADAFACTOR, BETA2_DECAY));
    C(ADAFACTOR, WEIGHT) = weight;
    C(ADAFACTOR, ONE_MINUS_WEIGHT) = 1.0 - weight;
    C(ADAFACTOR, RHO) = inv_root_t < lr ? inv_root_t : lr;
    C(ADAFACTOR, EPS1) = eps1 == FO_NO_COUNT ? 0.0 : eps1;
    C(ADAFACTOR, EPS1_SQ) = eps1 == FO_NO_COUNT ? 0.0 : eps1 * eps1;
    C(ADAFACTOR, EPS2) = H(ADAFACTOR, EPS1);
    C(ADAFACTOR, D) = H(ADAFACTOR, D);
    C(ADAFACTOR, DECAY) = H(ADAFACTOR, WEIGHT_DECAY) != 0.0
        ? fo_decay_factor(lr, H(ADAFACTOR, WEIGHT_DECAY)) : 1.0;
    a->opts = common(H(ADAFACTOR, MAXIMIZE), 0.0)
              | (eps1 == FO_NO_COUNT ? FO_ADAFACTOR_O_DTYPE_EPS : 0u);
    return NULL;
}

/* The tensor's step alpha / denom from its sums of squares, as torch's
 * Python floats: alpha = max(eps2, ||p|| / sqrt(n)) * rho, denom =
 * max(1, ||u|| / (sqrt(n) * d)), Python's max (the second argument only
 * when greater, so a NaN norm gives eps2, resp. 1). */
static void adafactor_tensor(const fo_args *a, fo_tensor *t)
{
    const double root_n = sqrt((double)t->n), eps2 = C(ADAFACTOR, EPS2);
    const double rms = sqrt(t->r[FO_ADAFACTOR_R_PARAM_SQ]) / root_n;
    const double alpha = (rms > eps2 ? rms : eps2) * C(ADAFACTOR, RHO);
    const double ratio = sqrt(t->r[FO_ADAFACTOR_R_UPDATE_SQ]) / (root_n * C(ADAFACTOR, D));
    t->r[0] = alpha / (ratio > 1.0 ? ratio : 1.0);
}

typedef const char *(*fo_coefficients_fn)(const double *h, long long step,
                                          fo_args *a);

#define FO_COEFFICIENTS_ROW(name, NAME) [FO_RULE_##NAME] = name,
static const fo_coefficients_fn table[FO_NRULES] = {
    FO_RULE_LIST(FO_COEFFICIENTS_ROW)};

const char *fo_coefficients(int rule, const double *h, long long step,
                            fo_args *a)
{
    return table[rule](h, step, a);
}

#define FO_COEFFICIENTS_EXPORT(name, NAME) \
    const char *fo_coef_##name(const double *h, long long step, fo_args *a) \
    { return name(h, step, a); }
FO_RULE_LIST(FO_COEFFICIENTS_EXPORT)

/* Two-pass rules: the number of per-tensor sums and the function that turns
 * them into the tensor's coefficients. */
typedef void (*fo_tensor_fn)(const fo_args *a, fo_tensor *t);
#define FO_TENSOR_ROW(name, NAME) [FO_RULE_##NAME] = name##_tensor,
#define FO_NRED_ROW(name, NAME) [FO_RULE_##NAME] = FO_##NAME##_NR,
static const fo_tensor_fn tensor_table[FO_NRULES] = {
    FO_REDUCE_LIST(FO_TENSOR_ROW)};
static const int nred_table[FO_NRULES] = {FO_REDUCE_LIST(FO_NRED_ROW)};

int fo_reductions(int rule)
{
    return rule >= 0 && rule < FO_NRULES ? nred_table[rule] : 0;
}

void fo_tensor_coefficients(int rule, const fo_args *a, fo_tensor *t)
{
    tensor_table[rule](a, t);
}
