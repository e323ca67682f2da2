"""Lion against a float64 transcription of its reference loop.

google/automl, lion/lion_pytorch.py (Chen et al. 2023), per parameter and
step: ``p.mul_(1 - lr * wd)``; ``update = m * beta1 + g * (1 - beta1)``;
``p.add_(sign(update), alpha=-lr)``; ``m.mul_(beta2).add_(g, alpha=1 - beta2)``.
Defaults lr=1e-4, betas=(0.9, 0.99), weight_decay=0.  Kernel parity on every
level and thread count comes from the rule table (tests/test_kernels.py)."""
import inspect

import numpy as np
import pytest

import fastopt


def automl_lion(p, grads, lr, beta1, beta2, wd, maximize):
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    for g in grads:
        g = -g if maximize else g
        p = p * (1 - lr * wd)
        update = m * beta1 + g * (1 - beta1)
        p = p + np.sign(update) * -lr
        m = m * beta2 + g * (1 - beta2)
    return p, m


def test_defaults_are_the_papers():
    sig = inspect.signature(fastopt.Lion)
    assert sig.parameters["lr"].default == 1e-4
    assert sig.parameters["betas"].default == (0.9, 0.99)
    assert sig.parameters["weight_decay"].default == 0.0
    assert sig.parameters["maximize"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("maximize", [False, True])
def test_matches_the_reference_loop(wd, maximize):
    rng = np.random.default_rng(7)
    shapes = [(3, 5), (5,), (7, 2, 3)]
    params = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(50)]
    grads[3][0][0, 0] = 0.0   # sign(0) = 0 where the interpolation is 0 too
    opt = fastopt.Lion([p.copy() for p in params], lr=3e-3, betas=(0.8, 0.95),
                       weight_decay=wd, maximize=maximize)
    for step_grads in grads:
        opt.step(step_grads)
    state = opt.state_dict()["state"]
    for k, p0 in enumerate(params):
        want_p, want_m = automl_lion(p0, [g[k] for g in grads], 3e-3, 0.8, 0.95, wd,
                                     maximize)
        np.testing.assert_allclose(opt.param_groups[0]["params"][k], want_p,
                                   rtol=1e-12, atol=0)
        np.testing.assert_allclose(state[k]["exp_avg"], want_m, rtol=1e-12, atol=1e-300)


def test_sign_of_zero_is_zero():
    p = np.ones(3)
    g = np.zeros(3)
    fastopt.functional.lion(p, g, np.zeros(3), lr=0.5)
    assert np.array_equal(p, np.ones(3))
