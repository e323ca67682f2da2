"""NAdam against torch.optim.NAdam, and its traps.

fastopt.NAdam is compared with torch 2.13's single-tensor loop
(torch/optim/nadam.py, ``_single_tensor_nadam``, by foreach=False) and with
torch's default implementation over 50 steps for every option combination,
tuned hyperparameters included: parameters, ``exp_avg``, ``exp_avg_sq``,
``mu_product`` and the step count (tests/conformance.py says how).  The
traps, each pinned against a float64 transcription of torch's loop:
mu_product is a per-tensor state that a checkpoint carries, mu_{t+1} enters
the same step, and eps is added after sqrt(v / (1 - beta2^t)).  Kernel
parity on every level and thread count comes from the rule table
(tests/test_kernels.py)."""
import inspect

import numpy as np
import pytest

import fastopt
from fastopt.optim import NAdam
from conformance import (IMPLS, STEPS, check_against_torch, check_resume,
                         check_state_keys, preset_grid)

HYPERS = {"defaults": {},
          "tuned": dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, momentum_decay=0.05)}
CASES, CASE_IDS = preset_grid(HYPERS, weight_decay=[0, 0.1],
                              decoupled_weight_decay=[False, True],
                              maximize=[False, True])


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", CASES, ids=CASE_IDS)
def test_matches_torch(config, dtype, impl):
    torch = pytest.importorskip("torch")
    opt, topt = check_against_torch(NAdam, torch.optim.NAdam, config, dtype, impl)
    check_state_keys(opt, topt, ['step', 'exp_avg', 'exp_avg_sq', 'mu_product'])


def test_defaults_are_torchs():
    torch = pytest.importorskip("torch")
    ours = inspect.signature(fastopt.NAdam).parameters
    theirs = inspect.signature(torch.optim.NAdam).parameters
    for name in ["lr", "betas", "eps", "weight_decay", "momentum_decay",
                 "decoupled_weight_decay", "maximize"]:
        assert ours[name].default == theirs[name].default, name


def transcription(p, grads, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                  weight_decay=0.0, momentum_decay=4e-3, decoupled=False,
                  mu_product=1.0, start=0, m=None, v=None, next_mu=True):
    """torch's single-tensor NAdam, in float64 scalars; ``next_mu=False`` is
    the mistake of using mu_t where mu_{t+1} belongs."""
    p = p.astype(np.float64)
    m = np.zeros_like(p) if m is None else m.copy()
    v = np.zeros_like(p) if v is None else v.copy()
    for k, g in enumerate(grads):
        t = start + k + 1
        g = g.astype(np.float64)
        if weight_decay:
            if decoupled:
                p = p * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * p
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
        if not next_mu:
            mu_next = mu
        mu_product *= mu
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        denom = np.sqrt(v / (1 - beta2 ** t)) + eps
        p = p + (-lr * (1 - mu) / (1 - mu_product)) * g / denom
        p = p + (-lr * mu_next / (1 - mu_product * mu_next)) * m / denom
    return p, m, v, mu_product


def _grads(n, steps, seed=3):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n) for _ in range(steps)]


def test_mu_product_is_the_running_product_in_float64():
    grads = _grads(5, 30)
    for dtype in (np.float32, np.float64):
        p = np.ones(5, dtype)
        opt = NAdam([p], momentum_decay=0.05)
        for g in grads:
            opt.step([g.astype(dtype)])
        saved = opt.state_dict()["state"][0]["mu_product"]
        assert saved.dtype == np.float64 and saved.shape == ()
        _, _, _, want = transcription(np.ones(5), grads, momentum_decay=0.05)
        np.testing.assert_allclose(float(saved), want, rtol=1e-14)


def test_uses_the_next_momentum_factor_in_the_same_step():
    grads = _grads(7, 4)
    p = np.linspace(-1, 1, 7)
    opt = NAdam([p], lr=0.1, momentum_decay=0.5)
    for g in grads:
        opt.step([g])
    want, *_ = transcription(np.linspace(-1, 1, 7), grads, lr=0.1, momentum_decay=0.5)
    np.testing.assert_allclose(p, want, rtol=1e-13, atol=1e-15)
    wrong, *_ = transcription(np.linspace(-1, 1, 7), grads, lr=0.1,
                              momentum_decay=0.5, next_mu=False)
    assert not np.allclose(p, wrong, rtol=1e-6)


def test_eps_after_the_bias_corrected_root():
    # v tiny so that sqrt(v)/sqrt(bc2) + eps and sqrt(v + eps) etc. differ
    g = np.array([1e-7, -3e-7, 2e-6])
    p = np.zeros(3)
    fastopt.functional.nadam(p, g, np.zeros(3), np.zeros(3), np.ones(1),
                             step=1, lr=1.0, eps=1e-6)
    want, *_ = transcription(np.zeros(3), [g], lr=1.0, eps=1e-6)
    np.testing.assert_allclose(p, want, rtol=1e-14)
    bc2 = 1 - 0.999
    v = 0.001 * g * g
    mu = 0.9 * (1 - 0.5 * 0.96 ** 0.004)
    mu_next = 0.9 * (1 - 0.5 * 0.96 ** 0.008)
    inside = np.sqrt(v / bc2 + 1e-6)
    wrong = (-(1 - mu) / (1 - mu)) * g / inside \
        + (-mu_next / (1 - mu * mu_next)) * (0.1 * g) / inside
    assert not np.allclose(p, wrong, rtol=1e-3)


def test_functional_advances_mu_product_in_place():
    mu_product = np.ones(1)
    p, m, v = np.zeros(4), np.zeros(4), np.zeros(4)
    grads = _grads(4, 3)
    for t, g in enumerate(grads, 1):
        fastopt.functional.nadam(p, g, m, v, mu_product, step=t)
    _, _, _, want = transcription(np.zeros(4), grads)
    assert mu_product[0] == pytest.approx(want, rel=1e-15)


def test_resume_carries_mu_product():
    grads = _grads(6, 20)
    p = np.ones(6)
    opt = NAdam([p], momentum_decay=0.05)
    for g in grads[:10]:
        opt.step([g])
    sd = opt.state_dict()
    mid = float(sd["state"][0]["mu_product"])
    assert mid != 1.0
    q = p.copy()
    fresh = NAdam([q], momentum_decay=0.05)
    fresh.load_state_dict(sd)
    for g in grads[10:]:
        opt.step([g])
        fresh.step([g])
    assert p.tobytes() == q.tobytes()
    # a restart that forgot mu_product (starting it again at 1) goes elsewhere
    m = sd["state"][0]["exp_avg"]
    v = sd["state"][0]["exp_avg_sq"]
    right, *_ = transcription(np.ones(6), grads, momentum_decay=0.05)
    np.testing.assert_allclose(p, right, rtol=1e-12)
    restart = transcription(_after(grads[:10]), grads[10:], momentum_decay=0.05,
                            mu_product=1.0, start=10, m=m, v=v)[0]
    assert not np.allclose(p, restart, rtol=1e-9)


def _after(grads):
    return transcription(np.ones(6), grads, momentum_decay=0.05)[0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_checkpoint_round_trip_mid_trajectory(dtype):
    check_resume(NAdam, dict(lr=0.01, momentum_decay=0.05, weight_decay=0.1),
                 dtype, STEPS // 2)
    check_resume(NAdam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
                 dtype, 7)


def test_checkpoint_needs_mu_product():
    p = np.ones(3)
    opt = NAdam([p])
    opt.step([np.ones(3)])
    sd = opt.state_dict()
    del sd["state"][0]["mu_product"]
    with pytest.raises(ValueError, match="mu_product"):
        NAdam([np.ones(3)]).load_state_dict(sd)
