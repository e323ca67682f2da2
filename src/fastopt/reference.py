"""The update rules in plain NumPy: the specification every kernel must match.

One function per rule of the table (:mod:`fastopt.rules`), called exactly
like its twin in :mod:`fastopt.functional`.  Each body is the rule's math,
one line of math per line of code, in the kernel's names: ``c`` holds the
per-step coefficients and options that the kernel's door computes
(``fastopt._core.coefficients``, from csrc/coefficients.c), so a kernel and
its reference see the very same values.  The operations and their order are
the kernel's, so for float32 and float64 alike the kernel's result equals
this one bit for bit: coefficients are Python floats, which NumPy rounds to
the arrays' dtype exactly as the kernels round them.

These functions check nothing: they are the specification, not the API.
"""
import functools
import inspect
import math
import types

import numpy as np

from fastopt import _core, matrix
from fastopt.rules import FACTORED_RULES, RULES

__all__ = list(RULES) + list(FACTORED_RULES)

# The block of the per-tensor sums (csrc/fastopt/kernels.h, FO_SUMSQ_BLOCK)
SUMSQ_BLOCK = _core.SUMSQ_BLOCK


def _rule(body):
    """The public function of a rule from its body ``body(param, grad,
    *states, c)``: the functional twin's signature, coefficients in ``c``.
    Per-tensor scalar states (one-element float64 arrays after the array
    states) go into the coefficients and take their next values, ``c.next``,
    after the body."""
    entry = RULES[body.__name__]
    states = [s.name for s in entry.states]
    scalars = list(entry.scalar_keys)
    hypers = [h.name for h in entry.kernel_hypers]
    twin = getattr(_core, entry.name)

    @functools.wraps(body)
    def rule(param, grad, *args, **kwargs):
        given = dict(zip(states + scalars, args))
        given.update((k, kwargs.pop(k)) for k in states + scalars if k in kwargs)
        step = kwargs.pop("step", None)
        now = [float(given[k].reshape(-1)[0]) for k in scalars]
        c = types.SimpleNamespace(**_core.coefficients(entry.name, step, now, **kwargs))
        # a matrix step reads the hyperparameters themselves
        c.hyper = {h.name: kwargs.get(h.name, h.default) for h in entry.kernel_hypers}
        body(param, grad, *[given.get(s) for s in states], c)
        for k, value in zip(scalars, c.next):
            given[k][...] = value

    rule.__signature__ = inspect.signature(twin)
    rule.__doc__ = (body.__doc__ or "") + f"\n\nHyperparameters: {', '.join(hypers)}."
    return rule


def _start(param, grad, c):
    """The gradient every rule starts from: -g when maximizing, plus L2 decay."""
    g = -grad if c.maximize else grad
    if c.has_l2:
        g = g + c.l2 * param
    return g


@_rule
def sgd(param, grad, momentum_buffer, c):
    """Gradient descent, with torch.optim.SGD's heavy-ball momentum::

        g = -grad if maximize else grad;  g = g + l2 * param
        b = g                                     (first step)
        b = momentum * b + one_minus_dampening * g
        g = g + momentum * b if nesterov else b   (with momentum)
        param = param - lr * g

    With momentum 0 this is the seed's gradient descent, p = p - lr * g.
    """
    g = _start(param, grad, c)
    if c.has_momentum:
        if c.first_step:
            momentum_buffer[...] = g
        else:
            momentum_buffer[...] = c.momentum * momentum_buffer + c.one_minus_dampening * g
        g = g + c.momentum * momentum_buffer if c.nesterov else momentum_buffer
    param[...] = param - c.lr * g


@_rule
def momentum(param, grad, velocity, c):
    """The seed's exponentially weighted momentum (v starts at zero; unlike
    torch's SGD momentum, step 1 gives v = (1 - beta) * g)::

        v = beta * v + one_minus_beta * g
        param = param - lr * v
    """
    g = _start(param, grad, c)
    velocity[...] = c.beta * velocity + c.one_minus_beta * g
    param[...] = param - c.lr * velocity


@_rule
def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, c):
    """RMSProp with torch's centered and momentum variants (eps outside the
    root, as the seed has it)::

        s = alpha * s + one_minus_alpha * (g * g)
        a = alpha * a + one_minus_alpha * g;  var = s - a * a    (centered)
        denom = sqrt(var) + eps                                  (var = s otherwise)
        b = momentum * b + g / denom;  param = param - lr * b    (with momentum)
        param = param - lr * (g / denom)                         (otherwise)
    """
    g = _start(param, grad, c)
    square_avg[...] = c.alpha * square_avg + c.one_minus_alpha * (g * g)
    var = square_avg
    if c.centered:
        grad_avg[...] = c.alpha * grad_avg + c.one_minus_alpha * g
        var = square_avg - grad_avg * grad_avg
    denom = np.sqrt(var) + c.eps
    if c.has_momentum:
        momentum_buffer[...] = c.momentum * momentum_buffer + g / denom
        param[...] = param - c.lr * momentum_buffer
    else:
        param[...] = param - c.lr * (g / denom)


@_rule
def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, c):
    """Adam; AdamW when decoupled (then l2 = 0 and decay = 1 - lr * wd,
    else l2 = wd and decay = 1).  The seed's m_hat / (sqrt(v_hat) + eps)
    with the bias corrections folded into step_size = lr / (1 - beta1^t) and
    inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t)::

        p = param * decay
        m = beta1 * m + one_minus_beta1 * g
        v = beta2 * v + one_minus_beta2 * (g * g)
        v_max = maximum(v_max, v);  v = v_max             (amsgrad; a tie keeps v_max)
        denom = sqrt(v) * inv_sqrt_bc2 + eps
        param = p - step_size * (m / denom)
    """
    g = _start(param, grad, c)
    p = param * c.decay
    exp_avg[...] = c.beta1 * exp_avg + c.one_minus_beta1 * g
    exp_avg_sq[...] = c.beta2 * exp_avg_sq + c.one_minus_beta2 * (g * g)
    v = exp_avg_sq
    if c.amsgrad:
        # the larger, the old maximum on a tie (+0 against -0), NaN kept
        keep = (max_exp_avg_sq >= exp_avg_sq) | np.isnan(max_exp_avg_sq)
        max_exp_avg_sq[...] = np.where(keep, max_exp_avg_sq, exp_avg_sq)
        v = max_exp_avg_sq
    denom = np.sqrt(v) * c.inv_sqrt_bc2 + c.eps
    param[...] = p - c.step_size * (exp_avg / denom)


@_rule
def adagrad(param, grad, state_sum, c):
    """Adagrad, with clr = lr / (1 + (t - 1) * lr_decay)::

        S = S + g * g
        param = param - clr * (g / (sqrt(S) + eps))
    """
    g = _start(param, grad, c)
    state_sum[...] = state_sum + g * g
    param[...] = param - c.clr * (g / (np.sqrt(state_sum) + c.eps))


@_rule
def lion(param, grad, exp_avg, c):
    """Lion, with decoupled weight decay (decay = 1 - lr * weight_decay) and
    sign(0) = 0::

        p = param * decay
        param = p - lr * sign(beta1 * m + one_minus_beta1 * g)
        m = beta2 * m + one_minus_beta2 * g
    """
    g = _start(param, grad, c)
    p = param * c.decay
    param[...] = p - c.lr * np.sign(c.beta1 * exp_avg + c.one_minus_beta1 * g)
    exp_avg[...] = c.beta2 * exp_avg + c.one_minus_beta2 * g


@_rule
def adadelta(param, grad, square_avg, acc_delta, c):
    """Adadelta, eps inside both roots; acc_delta takes the new delta after
    the step has used the old one.  torch's sqrt(acc_delta + eps) /
    sqrt(v + eps) is taken as one square root of the ratio (two roundings
    instead of three; within an ulp)::

        v = rho * v + one_minus_rho * (g * g)
        delta = sqrt((acc_delta + eps) / (v + eps)) * g
        acc_delta = rho * acc_delta + one_minus_rho * (delta * delta)
        param = param - lr * delta
    """
    g = _start(param, grad, c)
    square_avg[...] = c.rho * square_avg + c.one_minus_rho * (g * g)
    delta = np.sqrt((acc_delta + c.eps) / (square_avg + c.eps)) * g
    acc_delta[...] = c.rho * acc_delta + c.one_minus_rho * (delta * delta)
    param[...] = param - c.lr * delta


@_rule
def rprop(param, grad, prev, step_size, c):
    """Rprop, torch.optim.Rprop's: a step size per element, which starts at
    lr (the caller fills step_size with it), scaled by the sign agreement
    of successive gradients and clamped; where the sign flipped the
    gradient counts as zero, for the update and as the next prev::

        d = g * prev
        eta = etaplus if d > 0 else etaminus if d < 0 else 1
        s = step_size * eta
        s = step_size_min if s < step_size_min else s
        step_size = step_size_max if s > step_size_max else s
        g = 0 if d < 0 else g;  prev = g
        param = param - sign(g) * step_size
    """
    g = _start(param, grad, c)
    t = param.dtype.type            # scalars rounded to the dtype, as the kernel does
    lo, hi = t(c.step_size_min), t(c.step_size_max)
    d = g * prev
    eta = np.where(d > 0, t(c.etaplus), np.where(d < 0, t(c.etaminus), t(1)))
    s = step_size * eta
    s = np.where(s < lo, lo, s)
    step_size[...] = np.where(s > hi, hi, s)
    prev[...] = np.where(d < 0, t(0), g)
    param[...] = param - np.sign(prev) * step_size


@_rule
def adamax(param, grad, exp_avg, exp_inf, c):
    """Adamax, with clr = lr / (1 - beta1^t) and eps inside the maximum
    (NaN from either side propagates; of two equal values, +0 and -0, the
    decayed one is kept)::

        m = beta1 * m + one_minus_beta1 * g
        decayed = beta2 * u;  norm = abs(g) + eps
        u = decayed if decayed >= norm or isnan(decayed) else norm
        param = param - clr * (m / u)
    """
    g = _start(param, grad, c)
    exp_avg[...] = c.beta1 * exp_avg + c.one_minus_beta1 * g
    decayed = c.beta2 * exp_inf
    norm = np.abs(g) + c.eps
    exp_inf[...] = np.where((decayed >= norm) | np.isnan(decayed), decayed, norm)
    param[...] = param - c.clr * (exp_avg / exp_inf)


@_rule
def radam(param, grad, exp_avg, exp_avg_sq, c):
    """RAdam; decoupled decay as in adam (decay = 1 - lr * wd, l2 = 0).
    Whether the step is rectified (rho_t > 5) is decided per step; step_size
    is lr / (1 - beta1^t), times rect * sqrt(1 - beta2^t) when rectified::

        p = param * decay
        m = beta1 * m + one_minus_beta1 * g
        v = beta2 * v + one_minus_beta2 * (g * g)
        param = p - step_size * (m / (sqrt(v) + eps))     (rectified)
        param = p - step_size * m                         (otherwise)
    """
    g = _start(param, grad, c)
    p = param * c.decay
    exp_avg[...] = c.beta1 * exp_avg + c.one_minus_beta1 * g
    exp_avg_sq[...] = c.beta2 * exp_avg_sq + c.one_minus_beta2 * (g * g)
    if c.rectified:
        param[...] = p - c.step_size * (exp_avg / (np.sqrt(exp_avg_sq) + c.eps))
    else:
        param[...] = p - c.step_size * exp_avg


@_rule
def nadam(param, grad, exp_avg, exp_avg_sq, c):
    """NAdam; decoupled decay as in adam (decay = 1 - lr * wd, l2 = 0).
    mu_t = beta1 (1 - 0.5 * 0.96^(t psi)); with prod_t = mu_product * mu_t
    (the state's next value), grad_coef = -lr (1 - mu_t) / (1 - prod_t) and
    exp_avg_coef = -lr mu_{t+1} / (1 - prod_t mu_{t+1}); torch's sqrt(v / bc2)
    is taken as sqrt(v) * inv_sqrt_bc2, inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t),
    as adam does (a multiplication where torch divides, within an ulp)::

        p = param * decay
        m = beta1 * m + one_minus_beta1 * g
        v = beta2 * v + one_minus_beta2 * (g * g)
        denom = sqrt(v) * inv_sqrt_bc2 + eps
        param = p + (grad_coef * g + exp_avg_coef * m) / denom
    """
    g = _start(param, grad, c)
    p = param * c.decay
    exp_avg[...] = c.beta1 * exp_avg + c.one_minus_beta1 * g
    exp_avg_sq[...] = c.beta2 * exp_avg_sq + c.one_minus_beta2 * (g * g)
    denom = np.sqrt(exp_avg_sq) * c.inv_sqrt_bc2 + c.eps
    param[...] = p + (c.grad_coef * g + c.exp_avg_coef * exp_avg) / denom


@_rule
def asgd(param, grad, ax, c):
    """ASGD.  eta and mu are the tensor's scalar states (lr and 1 at its
    first step); afterwards eta = lr / (1 + lambd lr t)^alpha and
    mu = 1 / max(1, t - t0); decay = 1 - lambd * eta::

        param = param * decay - eta * g
        ax = ax + (param - ax) * mu        (average: mu != 1)
        ax = param                         (otherwise)
    """
    g = _start(param, grad, c)
    param[...] = param * c.decay - c.eta * g
    if c.average:
        ax[...] = ax + (param - ax) * c.mu
    else:
        ax[...] = param


@_rule
def ademamix(param, grad, exp_avg_fast, exp_avg_slow, exp_avg_sq, c):
    """AdEMAMix.  fast_coef = lr / (1 - beta1^t); slow_coef = lr * alpha_t
    and beta3 follow the warm-ups; inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t);
    decay = 1 - lr * weight_decay (decoupled)::

        p = param * decay
        m1 = beta1 * m1 + one_minus_beta1 * g
        m2 = beta3 * m2 + one_minus_beta3 * g            (not bias-corrected)
        v = beta2 * v + one_minus_beta2 * (g * g)
        denom = sqrt(v) * inv_sqrt_bc2 + eps
        param = p - (fast_coef * m1 + slow_coef * m2) / denom
    """
    g = _start(param, grad, c)
    p = param * c.decay
    exp_avg_fast[...] = c.beta1 * exp_avg_fast + c.one_minus_beta1 * g
    exp_avg_slow[...] = c.beta3 * exp_avg_slow + c.one_minus_beta3 * g
    exp_avg_sq[...] = c.beta2 * exp_avg_sq + c.one_minus_beta2 * (g * g)
    denom = np.sqrt(exp_avg_sq) * c.inv_sqrt_bc2 + c.eps
    param[...] = p - (c.fast_coef * exp_avg_fast + c.slow_coef * exp_avg_slow) / denom


@_rule
def adopt(param, grad, exp_avg, exp_avg_sq, c):
    """ADOPT; decoupled decay as in adam (decay = 1 - lr * wd, l2 = 0).
    The first step only sets v; afterwards g is normalised by the second
    moment of the steps before and, with clip, clipped to
    [-clip_value, clip_value], clip_value = (t - 1)^0.25 (NaN kept by both
    the maximum and the clip)::

        v = v + g * g                                     (first step)
        p = param * decay                                 (later steps)
        n = g / maximum(sqrt(v), eps)
        n = min(max(n, -clip_value), clip_value)         (with clip)
        m = beta1 * m + one_minus_beta1 * n
        param = p - lr * m
        v = beta2 * v + one_minus_beta2 * (g * g)
    """
    g = _start(param, grad, c)
    if c.first_step:
        exp_avg_sq[...] = exp_avg_sq + g * g
        return
    t = param.dtype.type            # scalars rounded to the dtype, as the kernel does
    p = param * c.decay
    root = np.sqrt(exp_avg_sq)
    eps = t(c.eps)
    n = g / np.where((root >= eps) | np.isnan(root), root, eps)
    if c.clip:
        hi, lo = t(c.clip_value), -t(c.clip_value)
        n = np.where(n < lo, lo, np.where(n > hi, hi, n))
    exp_avg[...] = c.beta1 * exp_avg + c.one_minus_beta1 * n
    param[...] = p - c.lr * exp_avg
    exp_avg_sq[...] = c.beta2 * exp_avg_sq + c.one_minus_beta2 * (g * g)


def sumsq(x):
    """The sum of squares of ``x`` in double, in the kernels' order: blocks
    of SUMSQ_BLOCK elements, each summed over 8 lanes (element 8k + j of
    the block in lane j, each lane in index order), the lanes added in
    order, then the blocks added in order.  The per-tensor norms of the
    two-pass rules (LAMB, LARS) are its square roots."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    total = 0.0
    for lo in range(0, x.size, SUMSQ_BLOCK):
        block = x[lo:lo + SUMSQ_BLOCK]
        full = block.size - block.size % 8
        lanes = np.zeros(8)
        if full:        # a running sum down each lane: index order
            lanes += np.cumsum((block[:full] * block[:full]).reshape(-1, 8), axis=0)[-1]
        tail = block[full:]
        lanes[:tail.size] += tail * tail
        s = lanes[0]
        for j in range(1, 8):
            s += lanes[j]
        total += s
    return float(total)


def _trust_ratio(on, coefficient, eps, param_sq, update_sq):
    """optax's scale_by_trust_ratio from the squared norms: 1 where either
    norm is 0 or the ratio is off."""
    pn, un = math.sqrt(param_sq), math.sqrt(update_sq)
    if not on or pn == 0.0 or un == 0.0:
        return 1.0
    return coefficient * pn / (un + eps)


@_rule
def lamb(param, grad, exp_avg, exp_avg_sq, c):
    """LAMB (optax.lamb), two passes; inv_bc1 = 1 / (1 - beta1^t),
    inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t)::

        m = beta1 * m + one_minus_beta1 * g
        v = beta2 * v + one_minus_beta2 * (g * g)
        u = (m * inv_bc1) / (sqrt(v) * inv_sqrt_bc2 + eps) + weight_decay * param
        ratio = ||param|| / ||u||        (1 if either is 0 or trust_ratio is off)
        param = param - (lr * ratio) * u
    """
    g = _start(param, grad, c)
    exp_avg[...] = c.beta1 * exp_avg + c.one_minus_beta1 * g
    exp_avg_sq[...] = c.beta2 * exp_avg_sq + c.one_minus_beta2 * (g * g)
    u = ((exp_avg * c.inv_bc1) / (np.sqrt(exp_avg_sq) * c.inv_sqrt_bc2 + c.eps)
         + c.weight_decay * param)
    ratio = _trust_ratio(c.trust_ratio, 1.0, 0.0, sumsq(param), sumsq(u))
    param[...] = param - (c.lr * ratio) * u


@_rule
def lars(param, grad, momentum_buffer, c):
    """LARS (optax.lars), two passes::

        u = g + weight_decay * param
        ratio = trust_coefficient * ||param|| / (||u|| + eps)
                                         (1 if either norm is 0 or trust_ratio is off)
        d = (lr * ratio) * u
        b = d + momentum * b
        param = param - (d + momentum * b if nesterov else b)
    """
    u = _start(param, grad, c) + c.weight_decay * param
    ratio = _trust_ratio(c.trust_ratio, c.trust_coefficient, c.eps,
                         sumsq(param), sumsq(u))
    d = (c.lr * ratio) * u
    momentum_buffer[...] = d + c.momentum * momentum_buffer
    param[...] = param - (d + c.momentum * momentum_buffer if c.nesterov
                          else momentum_buffer)


def _sklearn_grad(param, grad, c):
    """The gradient of the scikit-learn rules: with c.finish, grad is a
    layer's raw sum, finished as scikit-learn's _compute_loss_grad does::

        g = (grad + alpha * param) / divisor

    where scale is the divisor, or with c.reciprocal (a power-of-two
    divisor) its reciprocal, by which the kernel multiplies: the same bits.
    alpha and scale are Python floats, so NumPy rounds them to the arrays'
    dtype and computes in it."""
    g = grad
    if c.finish:
        g = grad + c.alpha * param
        g = g * c.scale if c.reciprocal else g / c.scale
    return -g if c.maximize else g


@_rule
def sklearn_adam(param, grad, exp_avg, exp_avg_sq, c):
    """Adam as scikit-learn's AdamOptimizer computes it, eps on the raw
    sqrt(v) and neg_step_size = -lr * sqrt(1 - beta2^t) / (1 - beta1^t), a
    double.  The moments and the denominator are in the arrays' dtype; the
    update and the sum are formed in float64 and the sum is rounded to the
    dtype once, as ``param += update`` does with scikit-learn's float64
    update under NumPy 2::

        m = beta1 * m + one_minus_beta1 * g
        v = beta2 * v + one_minus_beta2 * (g * g)
        denom = sqrt(v) + eps
        param = param + neg_step_size * m / denom          (in float64)
    """
    g = _sklearn_grad(param, grad, c)
    exp_avg[...] = c.beta1 * exp_avg + c.one_minus_beta1 * g
    exp_avg_sq[...] = c.beta2 * exp_avg_sq + c.one_minus_beta2 * (g * g)
    denom = np.sqrt(exp_avg_sq) + c.eps
    wide = np.float64
    param[...] = (param.astype(wide) + c.neg_step_size * exp_avg.astype(wide)
                  / denom.astype(wide)).astype(param.dtype)


@_rule
def sklearn_sgd(param, grad, velocity, c):
    """SGD with momentum as scikit-learn's SGDOptimizer computes it::

        u = momentum * u - lr * g;  velocity = u
        param = param + (momentum * u - lr * g if nesterov else u)
    """
    g = _sklearn_grad(param, grad, c)
    velocity[...] = c.momentum * velocity - c.lr * g
    if c.nesterov:
        param[...] = param + (c.momentum * velocity - c.lr * g)
    else:
        param[...] = param + velocity


def _lerp_toward(y, z, c):
    """torch's lerp of y toward z by the weight w that gave c.lerp:
    y + w * (z - y) for |w| < 0.5, else z - (z - y) * (1 - w), written as
    z + (w - 1) * (z - y) (lerp_from_z; exactly the same value)."""
    return (z if c.lerp_from_z else y) + c.lerp * (z - y)


@_rule
def adamw_schedulefree(param, grad, z, exp_avg_sq, c):
    """Schedule-free AdamW (the schedulefree package's step).  The parameter
    is y; lerp and lerp_from_z come from the averaging weight
    ckp1 = weight / weight_sum, y_coef = lr_t * (beta1 * (1 - ckp1) - 1),
    inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t) (coefficients.c; the package
    divides v by 1 - beta2^t before the root: equal within rounding)::

        z = param                                          (first step)
        v = beta2 * v + one_minus_beta2 * (g * g)
        n = g / (sqrt(v) * inv_sqrt_bc2 + eps)
        n = n + weight_decay * param                       (decay)
        param = lerp(param, z, ckp1) + n * y_coef
        z = z - lr * n
    """
    g = -grad if c.maximize else grad
    zi = param.copy() if c.first_step else z
    exp_avg_sq[...] = c.beta2 * exp_avg_sq + c.one_minus_beta2 * (g * g)
    n = g / (np.sqrt(exp_avg_sq) * c.inv_sqrt_bc2 + c.eps)
    if c.decay:
        n = n + c.weight_decay * param
    x = _lerp_toward(param, zi, c)
    param[...] = x + n * c.y_coef
    z[...] = zi - c.lr * n


@_rule
def sgd_schedulefree(param, grad, z, c):
    """Schedule-free SGD (the schedulefree package's step), the parameter y;
    lerp, lerp_from_z and y_coef = lr_t * (momentum * (1 - ckp1) - 1) as
    in adamw_schedulefree::

        z = param                                          (first step)
        g = g + l2 * param                                 (weight decay)
        param = lerp(param, z, ckp1) + g * y_coef
        z = z - lr * g
    """
    g = _start(param, grad, c)
    zi = param.copy() if c.first_step else z
    x = _lerp_toward(param, zi, c)
    param[...] = x + g * c.y_coef
    z[...] = zi - c.lr * g


@_rule
def muon(param, grad, momentum_buffer, c):
    """Muon (torch.optim.Muon): an element-wise pass, the matrix step
    (fastopt.matrix.muon: Newton-Schulz in the parameter's dtype, and the lr
    ratio of the shape), an element-wise pass.  torch's lerps are written
    base + w * (end - self), from end with w - 1 when torch takes its
    second branch (buf_from_grad, nest_from_buf); decay = 1 - lr *
    weight_decay::

        b = lerp(b, g, 1 - momentum)
        u = lerp(g, b, momentum) if nesterov else b
        o, ratio = newton_schulz(u), lr ratio of the shape
        param = param * decay - (lr * ratio) * o
    """
    g = -grad if c.maximize else grad
    b = momentum_buffer
    b[...] = (g if c.buf_from_grad else b) + c.buf_w * (g - b)
    if c.nesterov:
        u = (b if c.nest_from_buf else g) + c.nest_w * (b - g)
    else:
        u = b.copy()
    o, ratio = matrix.muon(u.reshape(np.shape(param)), c.hyper)
    param[...] = param * c.decay - (c.lr * ratio) * o


# ---------------------------------------------------------------------------
# bfloat16 states (csrc/fastopt/lowp.h)
#
# A bfloat16 is the upper half of a float32's bits.  States kept in it are
# decoded exactly, the rule's float32 math runs on them unchanged, and each
# state is written back rounded stochastically: bits (u + r) >> 16 with r
# 16 random bits of a counter-based hash of (key, state slot, element index).

_M64 = (1 << 64) - 1


def _mix64(z):
    """SplitMix64's finalizer of z + the golden gamma (Python ints)."""
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def lowp_tensor_key(seed, index, step):
    """The random key of parameter ``index``'s step ``step`` (1 for its
    first) under ``seed``."""
    return _mix64((_mix64((_mix64(seed) + index) & _M64) + step) & _M64)


def lowp_slot_key(key, slot):
    """The 32-bit key of state slot ``slot`` (the rule's state order)."""
    return _mix64((key + slot) & _M64) >> 32


def hash32(x):
    """The random bits of a uint32 counter array (lowp.h): x * 0x846CA68B,
    then x ^ (x >> 16), in uint32 arithmetic."""
    x = np.asarray(x, dtype=np.uint32) * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def bf16_decode(bits):
    """float32 values of bfloat16 bits (uint16), exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def _bf16_nan(u):
    return (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)


def bf16_nearest(x):
    """bfloat16 bits of float32 ``x`` rounded to nearest, ties to even (a
    NaN becomes the quiet NaN of its sign)."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return np.where(_bf16_nan(u), (u >> np.uint32(16)) | np.uint32(0x40),
                    rounded).astype(np.uint16)


def bf16_round(x, key, start=0, low=False):
    """bfloat16 bits of float32 ``x`` (flattened) rounded stochastically
    with the random bits of elements start, start + 1, ... under the 32-bit
    slot key ``key``: (u + r) >> 16 with r the upper 16 bits of
    hash32(key + i), or its lower 16 if ``low`` (the states of odd slots,
    which share their hash with the slot before)."""
    u = np.asarray(x, dtype=np.float32).reshape(-1).view(np.uint32)
    i = (np.arange(u.size, dtype=np.uint64) + np.uint64(start)).astype(np.uint32)
    h = hash32(i + np.uint32(key & 0xFFFFFFFF))
    r = h & np.uint32(0xFFFF) if low else h >> np.uint32(16)
    return np.where(_bf16_nan(u), (u >> np.uint32(16)) | np.uint32(0x40),
                    (u + r) >> np.uint32(16)).astype(np.uint16).reshape(np.shape(x))


def bf16_step(name, key, param, grad, *states, **kwargs):
    """One step of rule ``name`` with its array states kept as bfloat16
    bits (uint16 arrays, None where unused, given positionally in the rule's
    state order; any per-tensor scalar states follow), updated in
    place: the states decoded, the rule's reference run on them in float32,
    each written back with bf16_round under lowp_slot_key(key, slot & ~1),
    the lower half of the hash for an odd slot."""
    rule = RULES[name]
    n = len(rule.states)
    arrays, rest = list(states[:n]), states[n:]
    decoded = [None if s is None else bf16_decode(s).reshape(np.shape(s)) for s in arrays]
    globals()[name](param, grad, *decoded, *rest, **kwargs)
    for slot, (bits, value) in enumerate(zip(arrays, decoded)):
        if bits is not None:
            bits[...] = bf16_round(value, lowp_slot_key(key, slot & ~1),
                                   low=bool(slot & 1))


# ---------------------------------------------------------------------------
# 8-bit blockwise states (csrc/dispatch.c, fo_q8_encode)
#
# Each state of a float32 tensor is kept as uint8 codes with one float32
# scale per block of 256 elements counted from the tensor's start: the
# block's largest |x|.  A code's magnitude c (all 8 bits for a state that is
# never negative, such as Adam's v; bits 0-6 and a sign bit for the others)
# stands for a small float relative to the scale: 0 for c = 0, else the
# float32 whose bits are (c + K) << 20, three mantissa bits and an exponent,
# K putting the top code (255 or 127) at 1.0.  So v keeps 1/8 relative
# precision over 32 binades (down to about 3e-10 of its block's largest,
# where a square-root map stopped at 1.5e-5 and low-curvature elements' v
# rounded to 0 and their steps blew up) and m over 16.  Values round
# stochastically and without bias, by their bits: ((bits(y) + R) >> 20) - K
# with R = (2r + 1) << 11 for a random byte r (within a binade the value is
# linear in the bits), and below the smallest code V(1) to 0 or V(1), as
# (int(y * (2^20 / V(1))) + R) >> 20: rounding to nearest left v a fifth
# low 300 steps after gradients shrank 100x.  No square root, no division.
# One 32-bit hash gives the bytes of four elements 64 apart in a block.
# Everything is float32 with a per-block reciprocal, rounded up where
# needed so that scale * inv >= 1: the block's largest element gets the
# top code, which decodes to the scale exactly (a block whose scale has no
# float32 reciprocal, below 2^-128, is coded from its values times 2^64).
# The scale is the float whose bits are the largest of the block's bits with
# the sign cleared (max |x|, as an integer max, which the kernels
# vectorise): a NaN anywhere gives a NaN scale, the one of the largest
# payload (np.max(np.abs(x)) would give the first NaN's; finite scales are
# the same either way).  A block whose scale is not finite keeps that
# scale, gets codes 0 and decodes to NaN.

Q8_BLOCK = 256


Q8_DROP = 20                 # float32 mantissa bits a code drops (keeps 3)


def _q8_top_k(nonneg):
    top = 255 if nonneg else 127
    return top, (0x3F800000 >> Q8_DROP) - top


def q8_table(nonneg):
    """The decoded magnitude (float32) of each of the 256 codes (of bits 0-6
    for a signed state)."""
    top, k = _q8_top_k(nonneg)
    c = np.arange(256, dtype=np.uint32) & np.uint32(top)
    v = ((c + np.uint32(k)) << np.uint32(Q8_DROP)).view(np.float32)
    return np.where(c != 0, v, np.float32(0))


def q8_random_bytes(n, key=0, start=0):
    """The random bytes of the first n elements of an array coded from
    element ``start`` of its tensor under slot key ``key``: element i's is
    byte (i >> 6) & 3 of hash32(key + start // 4 + (i >> 8) * 64 + (i & 63))."""
    i = np.arange(n, dtype=np.uint64)
    counter = ((i >> np.uint64(8)) * np.uint64(64) + (i & np.uint64(63))
               + np.uint64(start // 4) + np.uint64(key & 0xFFFFFFFF)).astype(np.uint32)
    shift = (((i >> np.uint64(6)) & np.uint64(3)) * np.uint64(8)).astype(np.uint32)
    return (hash32(counter) >> shift) & np.uint32(255)


def q8_encode(x, nonneg, key=0, start=0):
    """The uint8 codes (flat) and float32 block scales of float32 ``x``
    (flattened; its blocks of 256 from the start, the last one possibly
    shorter), rounded with the random bytes of slot key ``key`` from element
    ``start`` on (q8_random_bytes)."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    n = x.size
    nb = -(-n // Q8_BLOCK)
    pad = np.zeros(nb * Q8_BLOCK, dtype=np.float32)
    pad[:n] = x
    blocks = pad.reshape(nb, Q8_BLOCK)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        # the largest |x| as the largest of the bits with the sign cleared
        # (IEEE bit patterns of |x| order like unsigned integers): any NaN
        # gives a NaN scale, the one with the largest payload
        scales = ((blocks.view(np.uint32) & np.uint32(0x7FFFFFFF)).max(axis=1)
                  .view(np.float32) if nb else np.zeros(0, np.float32))
        finite = np.isfinite(scales)
        safe = np.where(finite, scales, np.float32(0))
        inv = np.where(safe > 0, np.float32(1) / np.where(safe > 0, safe, np.float32(1)),
                       np.float32(0)).astype(np.float32)
        # no float32 reciprocal: the block times 2^64 (exact)
        tiny = ~np.isfinite(inv)
        pre = np.where(tiny, np.float32(2.0 ** 64), np.float32(1))
        safe = safe * pre
        blocks = blocks * pre[:, None]
        inv = np.where(tiny, np.float32(1) / np.where(tiny, safe, np.float32(1)), inv)
        # scale * inv >= 1: the largest element gets the top code
        inv = np.where((safe * inv < 1) & (safe > 0),
                       np.nextafter(inv, np.float32(np.inf)), inv).astype(np.float32)
        c = _q8_block_codes(blocks, inv, finite, nonneg, key, start)
    return c.reshape(-1)[:n], scales.astype(np.float32)


def _q8_block_codes(blocks, inv, finite, nonneg, key=0, start=0):
    """The uint8 codes of float32 ``blocks`` (shape (blocks, Q8_BLOCK)),
    each block coded as y = |x| * its reciprocal ``inv`` (float32; for a
    never negative state max(x, 0)), with the random bytes of q8_encode;
    blocks where ``finite`` is False get code 0."""
    nb = blocks.shape[0]
    with np.errstate(invalid="ignore", over="ignore"):
        top, k = _q8_top_k(nonneg)
        v1 = np.uint32((k + 1) << Q8_DROP).view(np.float32)
        a = np.where(blocks > 0, blocks, np.float32(0)) if nonneg else np.abs(blocks)
        a = np.where(finite[:, None], a, np.float32(0))
        y = (a * inv[:, None]).astype(np.float32)
        r = q8_random_bytes(nb * Q8_BLOCK, key, start).reshape(nb, Q8_BLOCK)
        # from V(1) up: the bits rounded stochastically at bit 20
        up = (y.view(np.uint32) + ((r * np.uint32(2) + np.uint32(1)) << np.uint32(11))
              ) >> np.uint32(Q8_DROP)
        high = np.minimum(up.astype(np.int64) - k, top)
        # below: 0 or V(1), y / V(1) in 20-bit fixed point rounded at bit 20
        # (computed where y < V(1) only: above, it leaves int32's range)
        fixed = (np.minimum(y, v1) * (np.float32(2 ** 20) / v1)).astype(np.int32)
        low = (fixed.astype(np.uint32) + ((r * np.uint32(2) + np.uint32(1)) << np.uint32(11))
               ) >> np.uint32(Q8_DROP)
        c = np.where(y >= v1, high, low).astype(np.uint8)
    if not nonneg:
        c = c | np.where(np.signbit(blocks) & finite[:, None], np.uint8(0x80), np.uint8(0))
    return c


def q8_decode(codes, scales, nonneg):
    """float32 values (flat) of uint8 ``codes`` and their block scales."""
    codes = np.asarray(codes, dtype=np.uint8).reshape(-1)
    scales = np.asarray(scales, dtype=np.float32).reshape(-1)
    if scales.size != -(-codes.size // Q8_BLOCK):
        raise ValueError(f"scales must have {-(-codes.size // Q8_BLOCK)} elements "
                         f"for {codes.size} codes, got {scales.size}")
    idx = np.arange(codes.size) // Q8_BLOCK
    with np.errstate(invalid="ignore", over="ignore"):
        v = scales[idx] * q8_table(nonneg)[codes]
    if not nonneg:
        v = np.where(codes & np.uint8(0x80), -v, v)
    return v.astype(np.float32)


def q8_step(name, key, param, grad, *states, **kwargs):
    """One step of rule ``name`` under the tensor key ``key``
    (lowp_tensor_key) with its array states kept in 8 bits: each
    given positionally in the rule's state order as a (codes, scales) pair
    of arrays (None where unused; any per-tensor scalar states follow),
    updated in place: decoded, the rule's reference run on them in float32,
    each requantized with q8_encode under lowp_slot_key(key, slot)."""
    rule = RULES[name]
    n = len(rule.states)
    arrays, rest = list(states[:n]), states[n:]
    decoded = [None if s is None else
               q8_decode(s[0], s[1], st.sign == "nonneg").reshape(np.shape(s[0]))
               for s, st in zip(arrays, rule.states)]
    globals()[name](param, grad, *decoded, *rest, **kwargs)
    for slot, (pair, value, st) in enumerate(zip(arrays, decoded, rule.states)):
        if pair is not None:
            codes, scales = q8_encode(value, st.sign == "nonneg", lowp_slot_key(key, slot))
            pair[0][...] = codes.reshape(np.shape(pair[0]))
            pair[1][...] = scales


# Factored rules (rules.FACTORED_RULES): states of other shapes than the
# parameter's, and sums along an axis.


def rowsq(x):
    """The sums of squares of ``x`` along its last axis, in double, each as
    :func:`sumsq` sums a tensor; shape: x's with the last dimension 1."""
    rows = np.asarray(x).reshape(-1, x.shape[-1])
    return np.array([sumsq(r) for r in rows]).reshape(x.shape[:-1] + (1,))


def colsq(x):
    """The sums of squares of ``x`` along its second-to-last axis, in
    double, the rows added in index order (a running sum); shape: x's
    with the second-to-last dimension 1."""
    x = np.asarray(x, dtype=np.float64)
    return np.cumsum(x * x, axis=-2)[..., -1:, :]


def _lerp(state, target, c):
    """torch.lerp(state, target, weight) with torch's two branches."""
    if c.weight < 0.5:
        return state + c.weight * (target - state)
    return target - (target - state) * c.one_minus_weight


def adafactor(param, grad, row_var, col_var, variance, *, step, lr=1e-2,
              beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
              maximize=False):
    """Adafactor (torch.optim.Adafactor); weight = t^beta2_decay,
    rho = min(lr, 1 / sqrt(t)), decay = 1 - lr * weight_decay, eps1 the
    dtype's machine epsilon when None, in the array's dtype unless said::

        row_var = lerp(row_var, rowsq(g) / cols, weight)      (>= 2 dimensions;
        col_var = lerp(col_var, colsq(g) / rows, weight)       sums in double,
        den = max(mean of row_var over the rows, eps1)         rounded once)
        v = row_var * col_var / den
        variance = lerp(variance, g * g, weight);  v = variance   (otherwise)
        u = (1 / sqrt(max(v, eps1 * eps1))) * g
        alpha = max(eps2, ||param|| / sqrt(n)) * rho          (double)
        k = alpha / max(1, ||u|| / (sqrt(n) * d))             (double)
        param = param * decay - k * u
    """
    c = types.SimpleNamespace(**_core.adafactor_coefficients(
        step, lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
        weight_decay=weight_decay, maximize=maximize))
    dt = param.dtype.type
    eps1 = np.finfo(param.dtype).eps if c.dtype_eps else dt(c.eps1)
    eps1_sq = dt(float(eps1) * float(eps1)) if c.dtype_eps else dt(c.eps1_sq)
    g = -grad if c.maximize else grad
    if param.ndim >= 2:
        rows, cols = param.shape[-2], param.shape[-1]
        row_var[...] = _lerp(row_var, (rowsq(g) / cols).astype(param.dtype), c)
        col_var[...] = _lerp(col_var, (colsq(g) / rows).astype(param.dtype), c)
        mean = _sum_rows(row_var) / rows
        den = np.maximum(mean.astype(param.dtype), eps1)
        v = row_var * col_var / den
    else:
        variance[...] = _lerp(variance, g * g, c)
        v = variance
    u = (dt(1) / np.sqrt(np.maximum(v, eps1_sq))) * g
    root_n = math.sqrt(param.size)
    rms = math.sqrt(sumsq(param)) / root_n
    alpha = (rms if rms > c.eps2 else c.eps2) * c.rho
    ratio = math.sqrt(sumsq(u)) / (root_n * c.d)
    k = alpha / (ratio if ratio > 1.0 else 1.0)
    param[...] = param * c.decay - k * u


def _sum_rows(x):
    """The sums of ``x`` along its second-to-last axis in double, the rows
    added in index order (a running sum), keeping that axis as 1."""
    return np.cumsum(np.asarray(x, dtype=np.float64), axis=-2)[..., -1:, :]
