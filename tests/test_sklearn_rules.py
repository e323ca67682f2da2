"""The rules sklearn_adam and sklearn_sgd against scikit-learn's optimizers.

Their source is the installed package itself:
sklearn.neural_network._stochastic_optimizers.AdamOptimizer and
SGDOptimizer (``update_params(params, grads)`` adds the list of updates of
``_get_updates`` to the parameters).  A fastopt step on the same arrays must
give the same parameters and states bit for bit, float32 and float64, on
every instruction-set level and thread count.  Kernel against
fastopt.reference comes from the rule table (tests/test_kernels.py)."""
import numpy as np
import pytest

import fastopt
from fastopt import _core

sk_opt = pytest.importorskip("sklearn.neural_network._stochastic_optimizers")

# An MLP's weights and biases; the first is large enough to be split across
# threads and to run without the GIL.
SHAPES = [(97, 61), (61,), (61, 3), (3,)]
STEPS = 25
DTYPES = [np.float32, np.float64]


def _problem(dtype, seed=3):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    # gradients over several orders of magnitude, some exactly zero
    grads = [[(rng.standard_normal(s) * rng.choice([0.0, 1e-6, 1.0, 40.0], s))
              .astype(dtype) for s in SHAPES] for _ in range(STEPS)]
    return params, grads


def _assert_same(actual, desired):
    for a, d in zip(actual, desired):
        assert a.dtype == d.dtype
        np.testing.assert_array_equal(a.view(np.uint8), d.view(np.uint8))


ADAM = [dict(learning_rate_init=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8),
        dict(learning_rate_init=0.05, beta_1=0.5, beta_2=0.9, epsilon=1e-3),
        dict(learning_rate_init=3, beta_1=0, beta_2=0.99, epsilon=1e-8)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hp", ADAM, ids=["defaults", "other", "beta1=0"])
def test_adam_equals_adamoptimizer(dtype, hp, exec_env):
    params, grads = _problem(dtype)
    stock = [p.copy() for p in params]
    opt = sk_opt.AdamOptimizer(stock, **hp)
    mine = [p.copy() for p in params]
    ms = [np.zeros_like(p) for p in params]
    vs = [np.zeros_like(p) for p in params]
    for t, g in enumerate(grads, 1):
        opt.update_params(stock, g)
        _core.step_many("sklearn_adam", mine, g, [ms, vs], step=t,
                        lr=hp["learning_rate_init"],
                        betas=(hp["beta_1"], hp["beta_2"]), eps=hp["epsilon"])
        _assert_same(mine, stock)
    _assert_same(ms, opt.ms)
    _assert_same(vs, opt.vs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("lr, momentum", [(0.1, 0.9), (1e-3, 0.0), (0.37, 1.0)])
def test_sgd_equals_sgdoptimizer(dtype, nesterov, lr, momentum, exec_env):
    params, grads = _problem(dtype)
    stock = [p.copy() for p in params]
    opt = sk_opt.SGDOptimizer(stock, lr, "constant", momentum, nesterov)
    mine = [p.copy() for p in params]
    vel = [np.zeros_like(p) for p in params]
    for g in grads:
        opt.update_params(stock, g)
        fastopt.functional.sklearn_sgd(mine[0], g[0], vel[0], lr=lr,
                                       momentum=momentum, nesterov=nesterov)
        _core.step_many("sklearn_sgd", mine[1:], g[1:], [vel[1:]], lr=lr,
                        momentum=momentum, nesterov=nesterov)
        _assert_same(mine, stock)
    _assert_same(vel, opt.velocities)


def test_adam_step_size_is_scikit_learns_double():
    """neg_step_size is -learning_rate exactly as AdamOptimizer computes it
    (Python pow of the float beta, np.sqrt, left to right)."""
    for lr, b1, b2 in [(1e-3, 0.9, 0.999), (0.05, 0.5, 0.9), (0.3, 0.0, 0.99)]:
        opt = sk_opt.AdamOptimizer([np.zeros(1)], lr, b1, b2, 1e-8)
        for t in range(1, 400):
            opt.update_params([np.zeros(1)], [np.zeros(1)])
            c = _core.coefficients("sklearn_adam", t, lr=lr, betas=(b1, b2))
            assert c["neg_step_size"] == -opt.learning_rate
            assert type(opt.learning_rate) is np.float64


def test_float32_update_is_formed_in_double():
    """The trap: scikit-learn's learning_rate is a NumPy float64, which NumPy 2
    does not round to float32, so float32 weights get a float64 update and
    one rounding.  Float32 arithmetic throughout would differ; the rule does
    not."""
    params, grads = _problem(np.float32, seed=11)
    stock = [p.copy() for p in params]
    opt = sk_opt.AdamOptimizer(stock, 0.01, 0.9, 0.999, 1e-8)
    opt.update_params(stock, grads[0])
    p, g = params[0], grads[0][0]
    m = np.float32(0.1) * g
    v = np.float32(0.001) * (g * g)
    lr = np.float32(opt.learning_rate)
    single = p + (-lr) * m / (np.sqrt(v) + np.float32(1e-8))
    assert not np.array_equal(single, stock[0])
    mine = p.copy()
    fastopt.functional.sklearn_adam(mine, g, np.zeros_like(p), np.zeros_like(p),
                                    step=1, lr=0.01)
    np.testing.assert_array_equal(mine, stock[0])


def test_classes_from_the_table():
    """The table's classes step like the functional door; defaults are
    scikit-learn's optimizers' defaults."""
    assert fastopt.SklearnAdam([np.zeros(2)]).param_groups[0]["lr"] == 1e-3
    group = fastopt.SklearnSGD([np.zeros(2)]).param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.1, 0.9, True)
    params, grads = _problem(np.float64)
    opt = fastopt.SklearnAdam([p.copy() for p in params], lr=0.02)
    ref = sk_opt.AdamOptimizer([p.copy() for p in params], 0.02)
    stock = [p.copy() for p in params]
    for g in grads[:5]:
        opt.step(g)
        ref.update_params(stock, g)
    _assert_same(opt.param_groups[0]["params"], stock)


# -- the finishing of raw coefficient gradients (alpha, divisor) -------------
#
# scikit-learn's _compute_loss_grad makes a layer's gradient from its raw
# sum as ``grad += alpha * coef; grad /= divisor`` (the batch's sample count,
# or with sample weights their sum).  With divisor > 0 the rules do that in
# their loop; a power-of-two divisor is a multiplication by its reciprocal
# there, which must give the division's bits.

def _raw_problem(dtype, seed=5):
    """Raw sums over every binade, zeros of both signs, subnormals,
    infinities and NaN; parameters likewise (alpha * coef)."""
    rng = np.random.default_rng(seed)
    n = 4099
    info = np.finfo(dtype)

    def values():
        x = rng.standard_normal(n) * np.exp2(rng.integers(-160, 120, n).astype(float))
        x = x.astype(dtype)
        x[:8] = [0.0, -0.0, info.tiny / 3, -info.tiny * 5, np.inf, -np.inf,
                 np.nan, info.max]
        return x
    return values(), values()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divisor", [32, 200, 1, 0.375, 2.0 ** -20, 7.0e3, 4096])
@pytest.mark.parametrize("alpha", [1e-4, 0.0, 3.0])
def test_finish_equals_compute_loss_grad(dtype, divisor, alpha, exec_env):
    """The finished gradient, through SGD with lr=1 and momentum=0 (the
    parameter moves by exactly -g), against NumPy's in-place lines with
    the same Python scalars."""
    coef, raw = _raw_problem(dtype)
    finished = raw.copy()
    with np.errstate(all="ignore"):
        finished += alpha * coef
        finished /= divisor
        expected = coef + (0.0 * np.zeros_like(coef) - 1.0 * finished)
        p = coef.copy()
        fastopt.functional.sklearn_sgd(p, raw.copy(), np.zeros_like(p), lr=1.0,
                                       momentum=0.0, nesterov=False,
                                       alpha=alpha, divisor=divisor)
    _assert_same([p], [expected])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divisor", [32, 200])
@pytest.mark.parametrize("rule", ["adam", "sgd"])
def test_raw_gradients_equal_the_optimizer_on_finished_ones(dtype, divisor, rule,
                                                            exec_env):
    """Coefficients given raw (first=) and biases given finished, one call,
    against scikit-learn's optimizer on gradients finished by its lines."""
    params, grads = _problem(dtype)
    # scikit-learn's order: coefs_ + intercepts_
    order = [0, 2, 1, 3]
    params = [params[k] for k in order]
    alpha = 1e-4
    stock = [p.copy() for p in params]
    mine = [p.copy() for p in params]
    if rule == "adam":
        opt = sk_opt.AdamOptimizer(stock, 1e-3, 0.9, 0.999, 1e-8)
        states = [[np.zeros_like(p) for p in params] for _ in range(2)]
    else:
        opt = sk_opt.SGDOptimizer(stock, 0.05, "constant", 0.9, True)
        states = [[np.zeros_like(p) for p in params]]
    for t, g in enumerate(grads, 1):
        g = [g[k] for k in order]
        finished = [x.copy() for x in g]
        for k in (0, 1):
            finished[k] += alpha * stock[k]
            finished[k] /= divisor
        opt.update_params(stock, finished)
        hyper = dict(step=t, lr=1e-3) if rule == "adam" else dict(lr=0.05, momentum=0.9)
        _core.step_many("sklearn_" + rule, mine, g, states,
                        first=(2, {"alpha": alpha, "divisor": divisor}), **hyper)
        _assert_same(mine, stock)


def test_first_is_checked_before_any_write(rules):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(5) for _ in range(2)]
    before = [p.copy() for p in params]
    grads = [np.ones(5), np.ones(5)]
    vel = [np.zeros(5), np.zeros(5)]
    bad = [((3, {"alpha": 0.0, "divisor": 2.0}), ValueError, "first's count"),
           ((1.0, {"divisor": 2.0}), TypeError, "first's count must be an int"),
           ([1, {"divisor": 2.0}], TypeError, "first must be a pair"),
           ((1, {"divisor": -2.0}), ValueError, "divisor"),
           ((1, {"lr_x": 2.0}), TypeError, "no hyperparameter 'lr_x'"),
           ((1, {"lr": 2.0}), TypeError, "lr is given twice")]
    for first, error, message in bad:
        with pytest.raises(error, match=message):
            _core.step_many("sklearn_sgd", params, grads, [vel], first=first, lr=0.1)
        _assert_same(params, before)
    with pytest.raises(ValueError, match="need other states than the call's"):
        _core.step_many("sgd", params, grads, [None], first=(1, {"momentum": 0.9}),
                        lr=0.1)
    _assert_same(params, before)
    with pytest.raises(ValueError, match="steps one by one|takes no first"):
        _core.step_many("nadam", params, grads, [vel, [np.zeros(5)] * 2],
                        first=(1, {}), step=1)
