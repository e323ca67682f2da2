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
    C(NADAM, BC2) = fo_bias_correction(beta2, step);
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
