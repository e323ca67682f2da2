"""AdEMAMix against a float64 transcription of its reference loop.

apple/ml-ademamix, pytorch/ademamix.py (Pagliardini, Ablin & Grangier,
ICLR 2025), per parameter and step t (from 1): alpha_t and beta3_t from the
linear warm-ups (beta3 linear in the half-life log(0.5) / log(beta + 1e-8) - 1,
starting at beta1); ``m1 = beta1 m1 + (1 - beta1) g`` (g itself when
beta1 = 0); ``m2 = beta3_t m2 + (1 - beta3_t) g``;
``v = beta2 v + (1 - beta2) g^2``;
``denom = sqrt(v) / sqrt(1 - beta2^t) + eps``;
``update = (m1 / (1 - beta1^t) + alpha_t m2) / denom + wd p``;
``p = p - lr update``.  Defaults lr=1e-3, betas=(0.9, 0.999, 0.9999),
alpha=2.0, no warm-ups, eps=1e-8, weight_decay=0.  Kernel parity on every
level and thread count comes from the rule table (tests/test_kernels.py)."""
import inspect
import math

import numpy as np
import pytest

import fastopt

RTOL = 1e-12
SHAPES = [(3, 5), (5,), (7, 2, 3)]


def _linear_warmup(step, end, start, warmup):
    if step < warmup:
        a = step / float(warmup)
        return (1.0 - a) * start + a * end
    return end


def _half_life_warmup(step, end, start, warmup):
    def f(beta, eps=1e-8):
        return math.log(0.5) / math.log(beta + eps) - 1

    def f_inv(t):
        return math.pow(0.5, 1 / (t + 1))

    if step < warmup:
        a = step / float(warmup)
        return f_inv((1.0 - a) * f(start) + a * f(end))
    return end


def reference_ademamix(p, grads, lr, betas, alpha, beta3_warmup, alpha_warmup,
                       eps, wd, maximize=False):
    """The reference loop for one parameter, in float64; maximize negates
    the gradient first (the reference has no maximize)."""
    beta1, beta2, beta3_final = betas
    p = p.astype(np.float64)
    m1 = np.zeros_like(p) if beta1 != 0.0 else None
    m2, v = np.zeros_like(p), np.zeros_like(p)
    for step, g in enumerate(grads, start=1):
        g = -g if maximize else g
        bc1 = 1 - beta1 ** step
        bc2 = 1 - beta2 ** step
        a = (alpha if alpha_warmup is None
             else _linear_warmup(step, alpha, 0, alpha_warmup))
        beta3 = (beta3_final if beta3_warmup is None
                 else _half_life_warmup(step, beta3_final, beta1, beta3_warmup))
        if beta1 != 0.0:
            m1 = m1 * beta1 + g * (1 - beta1)
            fast = m1
        else:
            fast = g
        m2 = m2 * beta3 + g * (1 - beta3)
        v = v * beta2 + g * g * (1 - beta2)
        denom = np.sqrt(v) / math.sqrt(bc2) + eps
        update = (fast / bc1 + a * m2) / denom
        update = update + p * wd
        p = p + update * -lr
    return p, fast, m2, v


def _max_rel(actual, desired):
    return float(np.max(np.abs(actual - desired) / np.abs(desired)))


def test_defaults_are_the_references():
    sig = inspect.signature(fastopt.AdEMAMix)
    assert list(sig.parameters)[:8] == ["params", "lr", "betas", "alpha", "beta3_warmup",
                                        "alpha_warmup", "eps", "weight_decay"]
    defaults = {k: v.default for k, v in sig.parameters.items()}
    assert defaults["lr"] == 1e-3
    assert defaults["betas"] == (0.9, 0.999, 0.9999)
    assert defaults["alpha"] == 2.0
    assert defaults["beta3_warmup"] is None and defaults["alpha_warmup"] is None
    assert defaults["eps"] == 1e-8 and defaults["weight_decay"] == 0.0
    assert sig.parameters["maximize"].kind is inspect.Parameter.KEYWORD_ONLY
    # the docs say where implementations disagree
    assert "optax" in fastopt.AdEMAMix.__doc__ and "5.0" in fastopt.AdEMAMix.__doc__


CONFIGS = [
    dict(betas=(0.9, 0.999, 0.9999), alpha=2.0, beta3_warmup=None, alpha_warmup=None),
    dict(betas=(0.8, 0.99, 0.999), alpha=5.0, beta3_warmup=30, alpha_warmup=20),
    dict(betas=(0.9, 0.999, 0.9999), alpha=8.0, beta3_warmup=100, alpha_warmup=None),
    dict(betas=(0.9, 0.999, 0.9999), alpha=3.0, beta3_warmup=None, alpha_warmup=70),
    dict(betas=(0.0, 0.99, 0.999), alpha=2.0, beta3_warmup=25, alpha_warmup=25),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("maximize", [False, True])
def test_matches_the_reference_loop(config, wd, maximize):
    """60 steps, warm-ups ending inside the run or beyond it, every state."""
    rng = np.random.default_rng(11)
    params = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(60)]
    opt = fastopt.AdEMAMix([p.copy() for p in params], lr=3e-3, eps=1e-8,
                           weight_decay=wd, maximize=maximize, **config)
    for step_grads in grads:
        opt.step(step_grads)
    state = opt.state_dict()["state"]
    for k, p0 in enumerate(params):
        want_p, want_fast, want_slow, want_v = reference_ademamix(
            p0, [g[k] for g in grads], 3e-3, config["betas"], config["alpha"],
            config["beta3_warmup"], config["alpha_warmup"], 1e-8, wd, maximize)
        assert set(state[k]) == {"step", "exp_avg_fast", "exp_avg_slow", "exp_avg_sq"}
        assert state[k]["step"] == 60
        np.testing.assert_allclose(opt.param_groups[0]["params"][k], want_p,
                                   rtol=RTOL, atol=0)
        np.testing.assert_allclose(state[k]["exp_avg_fast"], want_fast, rtol=RTOL, atol=0)
        np.testing.assert_allclose(state[k]["exp_avg_slow"], want_slow, rtol=RTOL, atol=0)
        np.testing.assert_allclose(state[k]["exp_avg_sq"], want_v, rtol=RTOL, atol=0)


def test_warmups_follow_the_reference_schedules():
    """alpha_t and beta3_t of every step of a warm-up and after it, to the
    bit, as the coefficients the kernel receives."""
    for step in range(1, 40):
        c = fastopt._core.coefficients("ademamix", step, lr=0.5, betas=(0.8, 0.99, 0.999),
                                       alpha=5.0, beta3_warmup=30, alpha_warmup=20)
        assert c["beta3"] == _half_life_warmup(step, 0.999, 0.8, 30)
        assert c["slow_coef"] == 0.5 * _linear_warmup(step, 5.0, 0, 20)
    c = fastopt._core.coefficients("ademamix", 1, betas=(0.8, 0.99, 0.999))
    assert c["beta3"] == 0.999 and c["slow_coef"] == 1e-3 * 2.0


def test_warmup_of_zero_is_no_warmup():
    """The reference's schedules end when step >= warmup: a warm-up of 0
    (or 1) steps is none, as None is."""
    for warm in (0, 1):
        c = fastopt._core.coefficients("ademamix", 1, beta3_warmup=warm, alpha_warmup=warm)
        assert c == fastopt._core.coefficients("ademamix", 1)


def test_slow_ema_is_not_bias_corrected():
    """One step from zero states: the slow EMA enters as (1 - beta3) g."""
    p, g = np.zeros(1), np.ones(1)
    states = [np.zeros(1) for _ in range(3)]
    fastopt.functional.ademamix(p, g, *states, step=1, lr=1.0, betas=(0.5, 0.75, 0.875),
                                alpha=4.0, eps=0.0)
    # m1 / bc1 = 1, m2 = 0.125, denom = sqrt(0.25) / sqrt(0.25) = 1
    assert p[0] == -(1.0 + 4.0 * 0.125)
