"""Adadelta against torch.optim.Adadelta, and its two traps.

fastopt.Adadelta is compared with torch 2.13's single-tensor loop
(torch/optim/adadelta.py, ``_single_tensor_adadelta``, by foreach=False) and
with torch's default implementation, from the same NumPy data and a
quadratic-plus-noise gradient over 50 steps, for every option combination:
parameters, the torch states ``square_avg`` and ``acc_delta`` and the step
count within rtol 1e-10 (float64) or 1e-5 (float32), with rtol times the
tensor's largest magnitude as absolute error (tests/test_torch_conformance.py).
The traps: eps sits inside both square roots, and acc_delta takes the new
delta after the step.  Kernel parity on every level and thread count comes
from the rule table (tests/test_kernels.py)."""
import inspect

import numpy as np
import pytest

import fastopt
from fastopt.optim import Adadelta
from conformance import (IMPLS, STEPS, check_against_torch, check_resume,
                         check_state_keys, preset_grid)

# torch's defaults and a set that moves every hyperparameter off them
HYPERS = {"defaults": {}, "tuned": dict(lr=0.5, rho=0.8, eps=1e-5)}


CASES, CASE_IDS = preset_grid(HYPERS, weight_decay=[0, 0.1], maximize=[False, True])


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", CASES, ids=CASE_IDS)
def test_matches_torch(config, dtype, impl):
    torch = pytest.importorskip("torch")
    opt, topt = check_against_torch(Adadelta, torch.optim.Adadelta, config, dtype, impl)
    check_state_keys(opt, topt, ['step', 'square_avg', 'acc_delta'])


def test_defaults_are_torchs():
    torch = pytest.importorskip("torch")
    ours = inspect.signature(fastopt.Adadelta).parameters
    theirs = inspect.signature(torch.optim.Adadelta).parameters
    shared = ["lr", "rho", "eps", "weight_decay", "maximize"]
    for name in shared:
        assert ours[name].default == theirs[name].default, name
        assert ours[name].kind == theirs[name].kind, name
    # torch's positional order, less foreach
    positional = [n for n, p in theirs.items()
                  if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and n != "foreach"]
    assert [n for n, p in ours.items()
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD] == positional


def _one_step(p, g, square_avg, acc_delta, **hp):
    fastopt.functional.adadelta(p, g, square_avg, acc_delta, **hp)


def test_eps_inside_both_roots():
    lr, rho, eps = 1.0, 0.9, 1e-6
    # |g| near sqrt(eps) so that every placement of eps gives another delta
    g = np.array([1e-3, -3e-3, 5e-4, 2.0])
    p = np.zeros(4)
    v, acc = np.zeros(4), np.zeros(4)
    _one_step(p, g, v, acc, lr=lr, rho=rho, eps=eps)
    v1 = (1 - rho) * g * g
    delta1 = np.sqrt(0.0 + eps) / np.sqrt(v1 + eps) * g
    np.testing.assert_allclose(v, v1, rtol=1e-15)
    np.testing.assert_allclose(p, -lr * delta1, rtol=1e-14)
    # eps outside the denominator's root, or outside the numerator's (a zero
    # step from a zero acc_delta), would be far off
    assert not np.allclose(p, -lr * np.sqrt(eps) / (np.sqrt(v1) + eps) * g, rtol=1e-3)
    assert not np.allclose(p, 0.0)
    # step 2: acc_delta > 0 now, eps still inside the numerator's root
    g2 = np.array([2e-3, 1e-3, -1e-3, 1.0])
    p_before, acc1 = p.copy(), acc.copy()
    _one_step(p, g2, v, acc, lr=lr, rho=rho, eps=eps)
    v2 = rho * v1 + (1 - rho) * g2 * g2
    delta2 = np.sqrt(acc1 + eps) / np.sqrt(v2 + eps) * g2
    np.testing.assert_allclose(p, p_before - lr * delta2, rtol=1e-13)
    outside = (np.sqrt(acc1) + eps) / np.sqrt(v2 + eps) * g2
    assert not np.allclose(p, p_before - lr * outside, rtol=1e-3)


def test_acc_delta_updated_after_the_step():
    lr, rho, eps = 0.7, 0.9, 1e-6
    g1 = np.array([0.5, -2.0, 1e-3])
    g2 = np.array([-0.25, 1.0, 4e-3])
    p = np.ones(3)
    v, acc = np.zeros(3), np.zeros(3)
    _one_step(p, g1, v, acc, lr=lr, rho=rho, eps=eps)
    # delta1 used acc_delta = 0; only then acc_delta took delta1
    delta1 = np.sqrt(0.0 + eps) / np.sqrt((1 - rho) * g1 * g1 + eps) * g1
    np.testing.assert_allclose(acc, (1 - rho) * delta1 ** 2, rtol=1e-14)
    np.testing.assert_allclose(p, 1.0 - lr * delta1, rtol=1e-14)
    # step 2 reads the acc_delta of step 1, then adds its own delta
    v1, acc1, p1 = v.copy(), acc.copy(), p.copy()
    _one_step(p, g2, v, acc, lr=lr, rho=rho, eps=eps)
    delta2 = np.sqrt(acc1 + eps) / np.sqrt(rho * v1 + (1 - rho) * g2 * g2 + eps) * g2
    np.testing.assert_allclose(acc, rho * acc1 + (1 - rho) * delta2 ** 2, rtol=1e-14)
    np.testing.assert_allclose(p, p1 - lr * delta2, rtol=1e-13)
    # an update before the step would have scaled delta2 by the new acc_delta
    early = rho * acc1 + (1 - rho) * delta2 ** 2
    wrong = np.sqrt(early + eps) / np.sqrt(v + eps) * g2
    assert not np.allclose(p, p1 - lr * wrong, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_checkpoint_round_trip_mid_trajectory(dtype):
    check_resume(Adadelta, dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.1),
                 dtype, STEPS // 2)
