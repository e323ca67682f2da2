"""ADOPT against a float64 transcription of its reference loop.

iShohei220/adopt, src/adopt/adopt.py (Taniguchi et al., NeurIPS 2024),
single-tensor path, per parameter with its step counter s starting at 0:
``g = -g`` when maximizing; ``g = g + wd p`` unless decoupled; at s = 0 only
``v = v + g^2`` (no parameter or momentum update); otherwise ``p = p - lr wd p``
when decoupled, ``n = g / max(sqrt(v), eps)``, ``n = clamp(n, -c, c)`` with
``c = clip_lambda(s) = s**0.25`` (no clamp when clip_lambda is None),
``m = lerp(m, n, 1 - beta1)``, ``p = p - lr m``, ``v = beta2 v + (1 - beta2) g^2``;
then s = s + 1.  Defaults lr=1e-3, betas=(0.9, 0.9999), eps=1e-6,
weight_decay=0, decouple=False.  fastopt's step t is s + 1.  Kernel parity
on every level and thread count comes from the rule table
(tests/test_kernels.py)."""
import decimal
import inspect

import numpy as np
import pytest

import fastopt

RTOL = 1e-12
SHAPES = [(3, 5), (5,), (7, 2, 3)]


def _lerp(start, end, weight):
    """torch.lerp on CPU: two formulas, split at weight 0.5."""
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


def reference_adopt(p, grads, lr, betas, eps, clip, wd, decouple, maximize):
    """The reference loop for one parameter, in float64."""
    beta1, beta2 = betas
    clip_lambda = (lambda step: step ** 0.25) if clip else None
    p = p.astype(np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    step = 0.0
    for g in grads:
        g = -g if maximize else g
        if wd != 0 and not decouple:
            g = g + p * wd
        if step == 0:
            v = v + g * g
            step += 1
            continue
        if wd != 0 and decouple:
            p = p + p * (-lr * wd)
        n = g / np.maximum(np.sqrt(v), eps)
        if clip_lambda is not None:
            c = clip_lambda(step)
            n = np.clip(n, -c, c)
        m = _lerp(m, n, 1 - beta1)
        p = p + m * -lr
        v = v * beta2 + g * g * (1 - beta2)
        step += 1
    return p, m, v


def test_defaults_are_the_references():
    sig = inspect.signature(fastopt.ADOPT)
    assert list(sig.parameters)[:7] == ["params", "lr", "betas", "eps", "clip",
                                        "weight_decay", "decouple"]
    defaults = {k: v.default for k, v in sig.parameters.items()}
    assert defaults["lr"] == 1e-3
    assert defaults["betas"] == (0.9, 0.9999)
    assert defaults["eps"] == 1e-6
    assert defaults["clip"] is True
    assert defaults["weight_decay"] == 0.0 and defaults["decouple"] is False
    assert sig.parameters["maximize"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "clip_lambda=None" in fastopt.ADOPT.__doc__


def _run(params, grads, **hyper):
    opt = fastopt.ADOPT([p.copy() for p in params], **hyper)
    for step_grads in grads:
        opt.step(step_grads)
    return opt


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("wd, decouple", [(0.0, False), (0.1, False), (0.1, True)])
@pytest.mark.parametrize("maximize", [False, True])
def test_matches_the_reference_loop(clip, wd, decouple, maximize):
    """60 steps, every state; gradients small enough on some elements that
    eps bounds the denominator, and large enough on others to be clipped."""
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) * rng.choice([1e-8, 1.0, 30.0], s) for s in SHAPES]
             for _ in range(60)]
    betas = (0.8, 0.99)
    opt = _run(params, grads, lr=3e-3, betas=betas, eps=1e-6, clip=clip,
               weight_decay=wd, decouple=decouple, maximize=maximize)
    state = opt.state_dict()["state"]
    for k, p0 in enumerate(params):
        want_p, want_m, want_v = reference_adopt(p0, [g[k] for g in grads], 3e-3, betas,
                                                 1e-6, clip, wd, decouple, maximize)
        assert set(state[k]) == {"step", "exp_avg", "exp_avg_sq"}
        assert state[k]["step"] == 60
        np.testing.assert_allclose(opt.param_groups[0]["params"][k], want_p,
                                   rtol=RTOL, atol=0)
        np.testing.assert_allclose(state[k]["exp_avg"], want_m, rtol=RTOL, atol=0)
        np.testing.assert_allclose(state[k]["exp_avg_sq"], want_v, rtol=RTOL, atol=0)


@pytest.mark.parametrize("wd, decouple", [(0.0, False), (0.1, False), (0.1, True)])
def test_first_step_only_initialises_v(wd, decouple):
    """The trap: the first step moves nothing but v = g * g (with L2 decay in
    g when not decoupled); the parameter and the momentum stay as they were,
    through the class and the functional door alike."""
    rng = np.random.default_rng(2)
    p0, g = rng.standard_normal(9), rng.standard_normal(9)
    opt = fastopt.ADOPT([p0.copy()], lr=0.5, weight_decay=wd, decouple=decouple)
    opt.step([g])
    state = opt.state_dict()["state"][0]
    gl2 = g if decouple else g + p0 * wd
    assert np.array_equal(opt.param_groups[0]["params"][0], p0)
    assert np.array_equal(state["exp_avg"], np.zeros(9))
    assert np.array_equal(state["exp_avg_sq"], gl2 * gl2)
    assert state["step"] == 1
    p, m, v = p0.copy(), np.full(9, 0.25), np.zeros(9)
    fastopt.functional.adopt(p, g, m, v, step=1, lr=0.5, weight_decay=wd,
                             decouple=decouple)
    assert np.array_equal(p, p0) and np.array_equal(m, np.full(9, 0.25))
    assert np.array_equal(v, gl2 * gl2)
    # the second step is the first to move the parameter, by the clip of the
    # reference's count 1: |n| <= 1, so |m| <= 1 - beta1
    opt.step([g * 1e6])
    moved = opt.param_groups[0]["params"][0] - p0 * (1 - 0.5 * wd if decouple else 1)
    assert np.all(moved != 0)
    assert np.all(np.abs(opt.state_dict()["state"][0]["exp_avg"]) <= 0.1 + 1e-15)


def test_clip_follows_the_references_step_count():
    """clip_value at fastopt's step t is clip_lambda(t - 1) = (t - 1)**0.25,
    correctly rounded (decimal's power at 40 digits, not the C library's,
    whose last bit varies by machine); clip=False switches the clamp off,
    not the value."""
    ctx = decimal.Context(prec=40)
    for t in range(2, 200):
        c = fastopt._core.coefficients("adopt", t)
        want = float(ctx.power(decimal.Decimal(t - 1), decimal.Decimal("0.25")))
        assert c["clip_value"] == want and c["clip"]
        assert not c["first_step"]
    assert fastopt._core.coefficients("adopt", 1)["first_step"]
    assert not fastopt._core.coefficients("adopt", 5, clip=False)["clip"]


def test_eps_bounds_the_root_from_below():
    """max(sqrt(v), eps), not sqrt(v) + eps: with v = 4 the denominator is
    exactly 2 whatever eps below 2, and eps itself where sqrt(v) < eps."""
    p, m = np.zeros(2), np.zeros(2)
    v = np.array([4.0, 1e-20])
    fastopt.functional.adopt(p, np.array([1.0, 1e-8]), m, v, step=5, lr=1.0,
                             betas=(0.5, 0.5), eps=1e-3, clip=False)
    assert m[0] == 0.5 * (1.0 / 2.0)
    assert m[1] == 0.5 * (1e-8 / 1e-3)
