"""LAMB and LARS against float64 transcriptions of optax's formulations.

optax.lamb(learning_rate, b1=0.9, b2=0.999, eps=1e-6, eps_root=0.0,
weight_decay=0.0) chains scale_by_adam, add_decayed_weights,
scale_by_trust_ratio and scale_by_learning_rate; optax.lars(learning_rate,
weight_decay=0.0, trust_coefficient=0.001, eps=0.0, momentum=0.9,
nesterov=False) chains add_decayed_weights, scale_by_trust_ratio,
scale_by_learning_rate and trace.  scale_by_trust_ratio(trust_coefficient,
eps) scales an update u of parameter p by trust_coefficient * ||p|| /
(||u|| + eps), or by 1 where either norm is 0; its masks are the groups'
``trust_ratio`` (and weight_decay=0) here.

Both rules are two passes: per-tensor norms first, computed in double in an
order fixed by the element index, then the update.  Kernel parity on every
level and thread count for the table's configurations comes from
tests/test_kernels.py; the tests here add the per-tensor semantics (views of
one buffer are not fused into one tensor, blocks and windows of the sums).
"""
import inspect

import numpy as np
import pytest

import fastopt
from fastopt import functional, reference
from fastopt.flat import FlatParams

SHAPES = [(4, 3), (5,), (2, 3, 2)]
STEPS = 50


def optax_lamb(params, grads, lr, betas, eps, wd, mask, dtype=np.float64):
    """optax.lamb's chain, in ``dtype``, one parameter list."""
    b1, b2 = betas
    p = [x.astype(dtype) for x in params]
    mu = [np.zeros_like(x) for x in p]
    nu = [np.zeros_like(x) for x in p]
    for count, gs in enumerate(grads, start=1):
        for k, g in enumerate(gs):
            g = g.astype(dtype)
            mu[k] = (1 - b1) * g + b1 * mu[k]
            nu[k] = (1 - b2) * (g ** 2) + b2 * nu[k]
            mu_hat = mu[k] / (1 - b1 ** count)
            nu_hat = nu[k] / (1 - b2 ** count)
            u = mu_hat / (np.sqrt(nu_hat + 0.0) + eps)
            u = u + wd * p[k]
            if mask[k]:
                pn, un = np.linalg.norm(p[k]), np.linalg.norm(u)
                ratio = 1.0 if pn == 0 or un == 0 else 1.0 * pn / (un + 0.0)
                u = u * ratio
            u = -lr * u
            p[k] = p[k] + u
    return p, mu, nu


def optax_lars(params, grads, lr, momentum, wd, tc, eps, nesterov, mask,
               dtype=np.float64):
    """optax.lars's chain, in ``dtype``; the trace holds -lr * (...) there,
    the opposite sign of fastopt's momentum_buffer."""
    p = [x.astype(dtype) for x in params]
    trace = [np.zeros_like(x) for x in p]
    for gs in grads:
        for k, g in enumerate(gs):
            u = g.astype(dtype) + wd * p[k]
            if mask[k]:
                pn, un = np.linalg.norm(p[k]), np.linalg.norm(u)
                ratio = 1.0 if pn == 0 or un == 0 else tc * pn / (un + eps)
                u = u * ratio
            u = -lr * u
            trace[k] = u + momentum * trace[k]
            u = u + momentum * trace[k] if nesterov else trace[k]
            p[k] = p[k] + u
    return p, [-t for t in trace]


def problem(dtype, zero_first=False):
    rng = np.random.default_rng(2024)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    if zero_first:          # a bias starting at zero: ||p|| = 0 at step 1
        params[1][...] = 0
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES]
             for _ in range(STEPS)]
    return params, grads


def run(cls, params, grads, groups=None, **hp):
    ps = [p.copy() for p in params]
    if groups is None:
        opt = cls(ps, **hp)
    else:
        opt = cls([dict(params=[ps[k]], **g) for k, g in enumerate(groups)], **hp)
    for gs in grads:
        opt.step(gs)
    return ps, opt


def close(actual, desired, rtol):
    for a, d in zip(actual, desired):
        np.testing.assert_allclose(a, d, rtol=rtol, atol=rtol * np.max(np.abs(d)))


RTOL = {np.float64: 1e-10, np.float32: 1e-5}


def test_defaults_and_sources():
    lamb = inspect.signature(fastopt.LAMB).parameters
    assert [k for k in lamb][:5] == ["params", "lr", "betas", "eps", "weight_decay"]
    assert lamb["betas"].default == (0.9, 0.999) and lamb["eps"].default == 1e-6
    assert lamb["weight_decay"].default == 0.0 and lamb["trust_ratio"].default is True
    lars = inspect.signature(fastopt.LARS).parameters
    assert lars["momentum"].default == 0.9 and lars["trust_coefficient"].default == 1e-3
    assert lars["eps"].default == 0.0 and lars["nesterov"].default is False
    assert lars["weight_decay"].default == 0.0
    for rule in ("lamb", "lars"):
        assert "optax" in fastopt.rules.RULES[rule].source


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("wd", [0.0, 0.01])
@pytest.mark.parametrize("zero_first", [False, True])
def test_lamb_matches_optax(dtype, wd, zero_first):
    params, grads = problem(dtype, zero_first)
    got, opt = run(fastopt.LAMB, params, grads, lr=1e-2, betas=(0.9, 0.99),
                   eps=1e-6, weight_decay=wd)
    want, mu, nu = optax_lamb(params, grads, 1e-2, (0.9, 0.99), 1e-6, wd,
                              [True] * 3, dtype)
    close(got, want, RTOL[dtype])
    state = opt.state_dict()["state"]
    close([state[k]["exp_avg"] for k in range(3)], mu, RTOL[dtype])
    close([state[k]["exp_avg_sq"] for k in range(3)], nu, RTOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", [
    dict(momentum=0.9, wd=0.0, tc=1e-3, eps=0.0, nesterov=False),
    dict(momentum=0.9, wd=1e-4, tc=1e-3, eps=0.0, nesterov=True),
    dict(momentum=0.0, wd=0.01, tc=0.02, eps=1e-3, nesterov=False),
], ids=["defaults", "nesterov-wd", "no-momentum-eps"])
@pytest.mark.parametrize("zero_first", [False, True])
def test_lars_matches_optax(dtype, config, zero_first):
    params, grads = problem(dtype, zero_first)
    got, opt = run(fastopt.LARS, params, grads, lr=0.5, momentum=config["momentum"],
                   weight_decay=config["wd"], trust_coefficient=config["tc"],
                   eps=config["eps"], nesterov=config["nesterov"])
    want, trace = optax_lars(params, grads, 0.5, config["momentum"], config["wd"],
                             config["tc"], config["eps"], config["nesterov"],
                             [True] * 3, dtype)
    close(got, want, RTOL[dtype])
    state = opt.state_dict()["state"]
    close([state[k]["momentum_buffer"] for k in range(3)], trace, RTOL[dtype])


def test_trust_ratio_off_per_group_is_optax_mask():
    """Groups with trust_ratio=False step as optax's masked chain leaves
    them: the plain update (here the bias, as masks usually exclude)."""
    params, grads = problem(np.float64)
    mask = [True, False, True]
    got, _ = run(fastopt.LAMB, params, grads, [dict(trust_ratio=m) for m in mask],
                 lr=1e-2, weight_decay=0.01)
    want, _, _ = optax_lamb(params, grads, 1e-2, (0.9, 0.999), 1e-6, 0.01, mask)
    close(got, want, 1e-10)
    got, _ = run(fastopt.LARS, params, grads, [dict(trust_ratio=m) for m in mask],
                 lr=0.5, weight_decay=1e-4)
    want, _ = optax_lars(params, grads, 0.5, 0.9, 1e-4, 1e-3, 0.0, False, mask)
    close(got, want, 1e-10)


@pytest.mark.parametrize("rule", ["lamb", "lars"])
def test_ratio_is_one_where_a_norm_is_zero(rule):
    """A zero parameter (||p|| = 0) and a zero update (||u|| = 0) both step
    with ratio 1, exactly as the plain update."""
    n = 37
    g = np.linspace(-1.0, 1.0, n)
    hp = dict(step=1) if rule == "lamb" else {}
    step = getattr(functional, rule)
    states = lambda: [np.zeros(n) for _ in fastopt.rules.RULES[rule].states]  # noqa: E731
    # ||p|| = 0
    p = np.zeros(n)
    s = states()
    step(p, g, *s, lr=0.1, **hp)
    on = p.copy()
    p = np.zeros(n)
    s = states()
    step(p, g, *s, lr=0.1, trust_ratio=False, **hp)
    np.testing.assert_array_equal(on, p)
    assert np.any(on != 0)
    # ||u|| = 0: zero gradient and no decay leaves p where it was
    p0 = np.linspace(1.0, 2.0, n)
    p = p0.copy()
    step(p, np.zeros(n), *states(), lr=0.1, **hp)
    np.testing.assert_array_equal(p, p0)


@pytest.mark.parametrize("rule", ["lamb", "lars"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_views_of_one_buffer_keep_their_own_norms(rule, dtype):
    """FlatParams lays parameters end to end in one buffer, and the engine
    fuses such neighbours for element-wise rules; a two-pass rule must still
    take each tensor's own norms: the same bits as separate arrays."""
    cls = fastopt.rules.RULES[rule].cls
    rng = np.random.default_rng(5)
    shapes = [(64, 33), (33,), (5000,), (3, 7)]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(4)]
    flat = FlatParams([x.copy() for x in init])
    separate = [x.copy() for x in init]
    a = getattr(fastopt, cls)(flat.params)
    b = getattr(fastopt, cls)(separate)
    for gs in grads:
        for view, g in zip(flat.grads, gs):
            view[...] = g
        a.step(flat.grads)
        b.step(gs)
    for k in range(len(shapes)):
        np.testing.assert_array_equal(flat.params[k], separate[k])


@pytest.mark.parametrize("rule", ["lamb", "lars"])
@pytest.mark.parametrize("threads", [1, 2])
def test_sums_over_several_windows_match_the_reference(rule, threads, restore_config):
    """More than one window of blocks (256 x 4096 elements) in one tensor,
    and a second tensor after it: the kernel equals the NumPy reference, on
    one thread and on two."""
    fastopt.set_num_threads(threads)
    fastopt._core.set_parallel_threshold(1)
    rng = np.random.default_rng(9)
    sizes = [256 * 4096 + 4099, 1001]
    hp = dict(step=3, weight_decay=0.01) if rule == "lamb" else dict(weight_decay=0.01)
    nstates = len(fastopt.rules.RULES[rule].states)
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    states = [[rng.random(n).astype(np.float32) for n in sizes] for _ in range(nstates)]
    want_p = [p.copy() for p in params]
    want_s = [[x.copy() for x in s] for s in states]
    fastopt._core.step_many(rule, params, grads, states, **hp)
    for k in range(len(sizes)):
        getattr(reference, rule)(want_p[k], grads[k], *[s[k] for s in want_s], **hp)
        np.testing.assert_array_equal(params[k], want_p[k])
        for s, w in zip(states, want_s):
            np.testing.assert_array_equal(s[k], w[k])


def test_reference_sumsq_is_the_kernels_order():
    rng = np.random.default_rng(3)
    for n in (0, 1, 7, 8, 9, 4095, 4096, 4097, 3 * 4096 + 13):
        for dtype in (np.float32, np.float64):
            x = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(dtype)
            assert reference.sumsq(x) == fastopt._core.grad_sumsq([x])
