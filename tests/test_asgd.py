"""ASGD against torch.optim.ASGD, and its traps.

fastopt.ASGD is compared with torch 2.13's single-tensor loop
(torch/optim/asgd.py, ``_single_tensor_asgd``, by foreach=False) and with
torch's default implementation over 50 steps for every option combination,
with the default t0 (no averaging) and with a t0 that starts averaging
within the run: parameters, ``ax``, ``eta``, ``mu`` and the step count
(tests/conformance.py says how).  The traps, pinned against a float64
transcription of torch's loop: eta and mu are per-tensor states advanced
after the step, ax copies the parameter until mu leaves 1 and averages from
then on, and the average is only in the state, which Optimizer.swap('ax')
brings into the parameters and back.  Kernel parity on every level and
thread count comes from the rule table (tests/test_kernels.py)."""
import inspect

import numpy as np
import pytest

import fastopt
from fastopt.optim import ASGD
from conformance import (IMPLS, STEPS, check_against_torch, check_resume,
                         check_state_keys, preset_grid)

HYPERS = {"defaults": {},
          "averaging": dict(lr=0.05, lambd=1e-2, alpha=0.5, t0=10.0)}
CASES, CASE_IDS = preset_grid(HYPERS, weight_decay=[0, 0.1], maximize=[False, True])


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", CASES, ids=CASE_IDS)
def test_matches_torch(config, dtype, impl):
    torch = pytest.importorskip("torch")
    opt, topt = check_against_torch(ASGD, torch.optim.ASGD, config, dtype, impl)
    check_state_keys(opt, topt, ['step', 'eta', 'mu', 'ax'])


def test_defaults_are_torchs():
    torch = pytest.importorskip("torch")
    ours = inspect.signature(fastopt.ASGD).parameters
    theirs = inspect.signature(torch.optim.ASGD).parameters
    for name in ["lr", "lambd", "alpha", "t0", "weight_decay", "maximize"]:
        assert ours[name].default == theirs[name].default, name


def transcription(p, grads, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6,
                  weight_decay=0.0):
    """torch's single-tensor ASGD in float64; returns p, ax, eta, mu and the
    list of parameters after every step."""
    p = p.astype(np.float64)
    ax = np.zeros_like(p)
    eta, mu = lr, 1.0
    history = []
    for t, g in enumerate(grads, 1):
        g = g + weight_decay * p
        p = p * (1 - lambd * eta)
        p = p - eta * g
        ax = ax + (p - ax) * mu if mu != 1 else p.copy()
        eta = lr / (1 + lambd * lr * t) ** alpha
        mu = 1 / max(1, t - t0)
        history.append(p.copy())
    return p, ax, eta, mu, history


def _grads(n, steps, seed=5):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n) for _ in range(steps)]


def test_eta_and_mu_schedules():
    hp = dict(lr=0.1, lambd=0.5, alpha=0.6, t0=4.0)
    grads = _grads(3, 9)
    p = np.ones(3)
    opt = ASGD([p], **hp)
    for g in grads:
        opt.step([g])
    st = opt.state_dict()["state"][0]
    assert st["eta"].dtype == st["mu"].dtype == np.float64
    assert st["eta"].shape == st["mu"].shape == ()
    _, _, eta, mu, _ = transcription(np.ones(3), grads, **hp)
    assert float(st["eta"]) == pytest.approx(0.1 / (1 + 0.5 * 0.1 * 9) ** 0.6, rel=1e-15)
    assert float(st["eta"]) == pytest.approx(eta, rel=1e-15)
    assert float(st["mu"]) == mu == 1 / (9 - 4)


def test_average_starts_after_t0():
    t0 = 3
    grads = _grads(4, 12)
    p = np.zeros(4)
    opt = ASGD([p], lr=0.05, t0=float(t0))
    history = []
    for k, g in enumerate(grads, 1):
        opt.step([g])
        history.append(p.copy())
        ax = opt.state_dict()["state"][0]["ax"]
        if k <= t0 + 2:
            # step k uses mu = 1 / max(1, k - 1 - t0), which is 1 through
            # step t0 + 2: ax is a copy of the parameter
            assert ax.tobytes() == p.tobytes(), k
        else:
            # then the running mean of the parameters from step t0 + 2 on
            mean = np.mean(history[t0 + 1:], axis=0)
            np.testing.assert_allclose(ax, mean, rtol=1e-13)
    want_p, want_ax, *_ = transcription(np.zeros(4), grads, lr=0.05, t0=t0)
    np.testing.assert_allclose(p, want_p, rtol=1e-13)
    np.testing.assert_allclose(opt.state_dict()["state"][0]["ax"], want_ax, rtol=1e-13)


def test_swap_brings_the_average_in_and_back():
    grads = _grads(5, 8)
    w = np.zeros(5, np.float32)
    b = np.zeros(2, np.float32)
    opt = ASGD([w, b], lr=0.05, t0=2.0)
    for g in grads:
        opt.step([g.astype(np.float32), None])
    ax = opt.state_dict()["state"][0]["ax"]
    before = w.copy()
    assert not np.array_equal(ax, before)
    opt.swap("ax")
    assert w.tobytes() == ax.tobytes()
    assert opt.state_dict()["state"][0]["ax"].tobytes() == before.tobytes()
    assert b.tobytes() == np.zeros(2, np.float32).tobytes()  # never stepped
    opt.swap("ax")
    assert w.tobytes() == before.tobytes()
    assert opt.state_dict()["state"][0]["ax"].tobytes() == ax.tobytes()
    with pytest.raises(ValueError, match="'eta'"):
        opt.swap("eta")


def test_functional_advances_eta_and_mu_in_place():
    eta, mu = np.full(1, 0.2), np.ones(1)
    p, ax = np.ones(3), np.zeros(3)
    grads = _grads(3, 6)
    for t, g in enumerate(grads, 1):
        fastopt.functional.asgd(p, g, ax, eta, mu, step=t, lr=0.2, lambd=0.1, t0=2.0)
    want_p, want_ax, want_eta, want_mu, _ = transcription(
        np.ones(3), grads, lr=0.2, lambd=0.1, t0=2.0)
    assert eta[0] == pytest.approx(want_eta, rel=1e-15)
    assert mu[0] == want_mu
    np.testing.assert_allclose(p, want_p, rtol=1e-14)
    np.testing.assert_allclose(ax, want_ax, rtol=1e-14)


def test_eta_starts_at_the_lr_of_the_first_step():
    # eta is created at the parameter's first step from the group's lr then
    p = np.ones(2)
    opt = ASGD([p], lr=0.3)
    opt.param_groups[0]["lr"] = 0.01
    opt.step([np.ones(2)])
    np.testing.assert_allclose(p, 1 * (1 - 1e-4 * 0.01) - 0.01, rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_checkpoint_round_trip_mid_trajectory(dtype):
    check_resume(ASGD, dict(lr=0.05, lambd=1e-2, t0=10.0, weight_decay=0.1),
                 dtype, STEPS // 2)
    check_resume(ASGD, dict(lr=0.05, t0=30.0), dtype, 25)
