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
 * Options that change the operation sequence (L2 decay, amsgrad, centered,
 * momentum, nesterov) are `const int` parameters of an always-inline body;
 * each entry point calls the body with literal constants, so every variant is
 * a separate branch-free loop while the math is written once.
 */

#define FO_INLINE static inline __attribute__((always_inline))

/* max that propagates NaN from either side, as numpy.maximum does */
FO_INLINE FO_T FO_NAME(maxnan)(FO_T a, FO_T b)
{
    return (a != a) ? a : (a >= b ? a : b);
}

/* g <- -g when maximizing (a true negation, which flips a NaN's sign as
 * NumPy's -g does; multiplying by -1 would not), then g + l2 * p: the
 * gradient every rule starts from */
#define FO_GRAD(i) \
    FO_T gi = negate ? -g[i] : g[i]; \
    if (has_l2) gi = gi + l2 * p[i];

/* ---- gradient descent / heavy-ball momentum (torch.optim.SGD) --------- */

FO_INLINE void FO_NAME(sgd_body)(const fo_sgd_args *a, const fo_tensor *t,
                                 size_t lo, size_t hi, const int has_l2,
                                 const int has_momentum, const int first,
                                 const int nesterov)
{
    FO_T *restrict p = (FO_T *)t->p;
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_T *restrict b = (FO_T *)t->s0;
    const FO_T lr = (FO_T)a->lr, mu = (FO_T)a->momentum;
    const FO_T damp = (FO_T)a->one_minus_dampening;
    const FO_T l2 = (FO_T)a->l2;
    const int negate = a->sign < 0;
    for (size_t i = lo; i < hi; i++) {
        FO_GRAD(i)
        if (has_momentum) {
            FO_T bi = first ? gi : mu * b[i] + damp * gi;
            b[i] = bi;
            gi = nesterov ? gi + mu * bi : bi;
        }
        p[i] = p[i] - lr * gi;
    }
}

static void FO_NAME(sgd_range)(const void *args, const fo_tensor *t,
                               size_t lo, size_t hi)
{
    const fo_sgd_args *a = (const fo_sgd_args *)args;
    if (!a->has_momentum) {
        if (a->has_l2) FO_NAME(sgd_body)(a, t, lo, hi, 1, 0, 0, 0);
        else FO_NAME(sgd_body)(a, t, lo, hi, 0, 0, 0, 0);
        return;
    }
#define FO_SGD_NESTEROV(l2, first) \
    if (a->nesterov) FO_NAME(sgd_body)(a, t, lo, hi, l2, 1, first, 1); \
    else FO_NAME(sgd_body)(a, t, lo, hi, l2, 1, first, 0);
#define FO_SGD_FIRST(l2) \
    if (a->first_step) { FO_SGD_NESTEROV(l2, 1) } else { FO_SGD_NESTEROV(l2, 0) }
    if (a->has_l2) { FO_SGD_FIRST(1) } else { FO_SGD_FIRST(0) }
#undef FO_SGD_FIRST
#undef FO_SGD_NESTEROV
}

/* ---- the seed's exponentially weighted momentum ---------------------- */

FO_INLINE void FO_NAME(momentum_body)(const fo_momentum_args *a,
                                      const fo_tensor *t, size_t lo,
                                      size_t hi, const int has_l2)
{
    FO_T *restrict p = (FO_T *)t->p;
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_T *restrict v = (FO_T *)t->s0;
    const FO_T lr = (FO_T)a->lr, beta = (FO_T)a->beta;
    const FO_T one_minus_beta = (FO_T)a->one_minus_beta;
    const FO_T l2 = (FO_T)a->l2;
    const int negate = a->sign < 0;
    for (size_t i = lo; i < hi; i++) {
        FO_GRAD(i)
        const FO_T vi = beta * v[i] + one_minus_beta * gi;
        v[i] = vi;
        p[i] = p[i] - lr * vi;
    }
}

static void FO_NAME(momentum_range)(const void *args, const fo_tensor *t,
                                    size_t lo, size_t hi)
{
    const fo_momentum_args *a = (const fo_momentum_args *)args;
    if (a->has_l2) FO_NAME(momentum_body)(a, t, lo, hi, 1);
    else FO_NAME(momentum_body)(a, t, lo, hi, 0);
}

/* ---- RMSProp (torch.optim.RMSprop) ----------------------------------- */

FO_INLINE void FO_NAME(rmsprop_body)(const fo_rmsprop_args *a,
                                     const fo_tensor *t, size_t lo,
                                     size_t hi, const int has_l2,
                                     const int centered,
                                     const int has_momentum)
{
    FO_T *restrict p = (FO_T *)t->p;
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_T *restrict s = (FO_T *)t->s0;
    FO_T *restrict gavg = (FO_T *)t->s1;
    FO_T *restrict b = (FO_T *)t->s2;
    const FO_T lr = (FO_T)a->lr, alpha = (FO_T)a->alpha;
    const FO_T one_minus_alpha = (FO_T)a->one_minus_alpha;
    const FO_T eps = (FO_T)a->eps, mu = (FO_T)a->momentum;
    const FO_T l2 = (FO_T)a->l2;
    const int negate = a->sign < 0;
    for (size_t i = lo; i < hi; i++) {
        FO_GRAD(i)
        const FO_T si = alpha * s[i] + one_minus_alpha * (gi * gi);
        s[i] = si;
        FO_T var = si;
        if (centered) {
            const FO_T ai = alpha * gavg[i] + one_minus_alpha * gi;
            gavg[i] = ai;
            var = si - ai * ai;
        }
        const FO_T denom = FO_SQRT(var) + eps;
        if (has_momentum) {
            const FO_T bi = mu * b[i] + gi / denom;
            b[i] = bi;
            p[i] = p[i] - lr * bi;
        } else {
            p[i] = p[i] - lr * (gi / denom);
        }
    }
}

static void FO_NAME(rmsprop_range)(const void *args, const fo_tensor *t,
                                   size_t lo, size_t hi)
{
    const fo_rmsprop_args *a = (const fo_rmsprop_args *)args;
#define FO_RMS_MOMENTUM(l2, c) \
    if (a->has_momentum) FO_NAME(rmsprop_body)(a, t, lo, hi, l2, c, 1); \
    else FO_NAME(rmsprop_body)(a, t, lo, hi, l2, c, 0);
#define FO_RMS_CENTERED(l2) \
    if (a->centered) { FO_RMS_MOMENTUM(l2, 1) } else { FO_RMS_MOMENTUM(l2, 0) }
    if (a->has_l2) { FO_RMS_CENTERED(1) } else { FO_RMS_CENTERED(0) }
#undef FO_RMS_CENTERED
#undef FO_RMS_MOMENTUM
}

/* ---- Adam / AdamW ---------------------------------------------------- */

FO_INLINE void FO_NAME(adam_body)(const fo_adam_args *a, const fo_tensor *t,
                                  size_t lo, size_t hi, const int has_l2,
                                  const int amsgrad)
{
    FO_T *restrict p = (FO_T *)t->p;
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_T *restrict m = (FO_T *)t->s0;
    FO_T *restrict v = (FO_T *)t->s1;
    FO_T *restrict vmax = (FO_T *)t->s2;
    const FO_T step_size = (FO_T)a->step_size;
    const FO_T inv_sqrt_bc2 = (FO_T)a->inv_sqrt_bc2;
    const FO_T beta1 = (FO_T)a->beta1, one_minus_beta1 = (FO_T)a->one_minus_beta1;
    const FO_T beta2 = (FO_T)a->beta2, one_minus_beta2 = (FO_T)a->one_minus_beta2;
    const FO_T eps = (FO_T)a->eps, decay = (FO_T)a->decay;
    const FO_T l2 = (FO_T)a->l2;
    const int negate = a->sign < 0;
    for (size_t i = lo; i < hi; i++) {
        FO_GRAD(i)
        const FO_T pi = p[i] * decay;
        const FO_T mi = beta1 * m[i] + one_minus_beta1 * gi;
        FO_T vi = beta2 * v[i] + one_minus_beta2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        if (amsgrad) {
            vi = FO_NAME(maxnan)(vmax[i], vi);
            vmax[i] = vi;
        }
        const FO_T denom = FO_SQRT(vi) * inv_sqrt_bc2 + eps;
        p[i] = pi - step_size * (mi / denom);
    }
}

static void FO_NAME(adam_range)(const void *args, const fo_tensor *t,
                                size_t lo, size_t hi)
{
    const fo_adam_args *a = (const fo_adam_args *)args;
    if (a->amsgrad) {
        if (a->has_l2) FO_NAME(adam_body)(a, t, lo, hi, 1, 1);
        else FO_NAME(adam_body)(a, t, lo, hi, 0, 1);
    } else {
        if (a->has_l2) FO_NAME(adam_body)(a, t, lo, hi, 1, 0);
        else FO_NAME(adam_body)(a, t, lo, hi, 0, 0);
    }
}

/* ---- Adagrad (torch.optim.Adagrad) ----------------------------------- */

FO_INLINE void FO_NAME(adagrad_body)(const fo_adagrad_args *a,
                                     const fo_tensor *t, size_t lo,
                                     size_t hi, const int has_l2)
{
    FO_T *restrict p = (FO_T *)t->p;
    const FO_T *restrict g = (const FO_T *)t->g;
    FO_T *restrict sum = (FO_T *)t->s0;
    const FO_T clr = (FO_T)a->clr, eps = (FO_T)a->eps;
    const FO_T l2 = (FO_T)a->l2;
    const int negate = a->sign < 0;
    for (size_t i = lo; i < hi; i++) {
        FO_GRAD(i)
        const FO_T si = sum[i] + gi * gi;
        sum[i] = si;
        p[i] = p[i] - clr * (gi / (FO_SQRT(si) + eps));
    }
}

static void FO_NAME(adagrad_range)(const void *args, const fo_tensor *t,
                                   size_t lo, size_t hi)
{
    const fo_adagrad_args *a = (const fo_adagrad_args *)args;
    if (a->has_l2) FO_NAME(adagrad_body)(a, t, lo, hi, 1);
    else FO_NAME(adagrad_body)(a, t, lo, hi, 0);
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
    FO_T *restrict s0 = (FO_T *)t->s0;
    FO_T *restrict s1 = (FO_T *)t->s1;
    FO_T *restrict s2 = (FO_T *)t->s2;
    (void)args;
    if (s2) {
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

#undef FO_GRAD
#undef FO_INLINE
