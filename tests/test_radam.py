"""RAdam against torch.optim.RAdam (torch 2.13).

fastopt.RAdam is compared with torch's own single-tensor code,
torch/optim/radam.py (``_single_tensor_radam``, foreach=False) and with
torch's default implementation: both start from the same NumPy data and take
gradients of the same quadratic-plus-noise loss, each from its own
parameters, for 50 steps, for every option combination (weight_decay 0 and
0.1, decoupled_weight_decay and maximize on and off) at torch's betas, at a
beta2 whose rectification starts later, and at an eps large enough to show
where it is added.  Parameters, torch's states ``exp_avg`` and
``exp_avg_sq`` (by their torch keys) and the step count must match within
rtol 1e-10 (float64) or 1e-5 (float32), with rtol times the tensor's largest
magnitude as absolute error, as in tests/test_torch_conformance.py.

Also here: the traps of the rule (the switch to the rectified step is
decided per step by rho_t > 5, torch's threshold, not the paper's 4; before
it the step is bias-corrected momentum alone), torch's defaults, and a
checkpoint round trip.  Kernel parity on every SIMD level and thread count
comes from the rule table (tests/test_kernels.py)."""
import inspect

import numpy as np
import pytest

import fastopt
from fastopt import _core, functional, reference
from conformance import (IMPLS, RTOL, STEPS, assert_close, check_resume, grid,
                         problem)

torch = pytest.importorskip("torch")



# every flag on and off and weight decay off and on, at torch's betas
# (rectified from step 6), at beta2 = 0.9 (from step 6, with a shorter
# memory) and with betas (0.8, 0.8) (from step 7), and with an eps that
# shows it is added to the uncorrected root
CONFIGS = grid(
    hyper=[{}, {"betas": (0.9, 0.9)}, {"betas": (0.8, 0.8)}, {"eps": 1e-2}],
    weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True],
    maximize=[False, True])


def _config_id(c):
    shown = [f"{k}={v}" for k, v in c["hyper"].items()] or ["defaults"]
    shown.append(f"wd={c['weight_decay']}")
    shown += [k for k in ("decoupled_weight_decay", "maximize") if c[k]]
    return "-".join(shown)


def _kwargs(config):
    return dict(config["hyper"], lr=0.01, weight_decay=config["weight_decay"],
                decoupled_weight_decay=config["decoupled_weight_decay"],
                maximize=config["maximize"])


def _grads(curvature, params, noise):
    return [c * p + n for c, p, n in zip(curvature, params, noise)]


def _run_both(kw, dtype, impl, steps):
    """fastopt.RAdam and torch.optim.RAdam over `steps` steps of the same
    problem: (ours, fastopt optimizer, theirs, torch optimizer)."""
    params, curvature, noise = problem(dtype)
    ours = [p.copy() for p in params]
    theirs = [torch.tensor(p.copy()) for p in params]
    opt = fastopt.RAdam(ours, **kw)
    topt = torch.optim.RAdam(theirs, **kw, **IMPLS[impl])
    for t in range(steps):
        opt.step(_grads(curvature, ours, noise[t]))
        for p, c, n in zip(theirs, curvature, noise[t]):
            p.grad = torch.from_numpy(c) * p.detach() + torch.from_numpy(n)
        topt.step()
    return ours, opt, theirs, topt


def _assert_matches(ours, opt, theirs, topt, dtype, steps):
    rtol = RTOL[dtype]
    state = opt.state_dict()["state"]
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.dtype == dtype
        assert_close(a, b.detach().numpy(), rtol, f"param {i} after {steps} steps")
        torch_state = topt.state[b]
        assert set(torch_state) == {"step", "exp_avg", "exp_avg_sq"}
        for name, value in torch_state.items():
            if name == "step":
                assert state[i]["step"] == int(value) == steps
                continue
            mine = state[i][name]
            assert mine.dtype == dtype
            assert_close(mine, value.numpy(), rtol, f"{name} of param {i}")


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", CONFIGS, ids=[_config_id(c) for c in CONFIGS])
def test_matches_torch(config, dtype, impl):
    kw = _kwargs(config)
    ours, opt, theirs, topt = _run_both(kw, dtype, impl, STEPS)
    _assert_matches(ours, opt, theirs, topt, dtype, STEPS)


def test_configs_are_distinct_and_cover_both_branches():
    ids = [_config_id(c) for c in CONFIGS]
    assert len(ids) == len(set(ids)) == 4 * 8
    for c in CONFIGS:
        flags = [_core.coefficients("radam", t, **_kwargs(c))["rectified"]
                 for t in range(1, STEPS + 1)]
        assert not flags[0] and flags[-1]


# ---------------------------------------------------------------------------
# The traps

def _rho_t(beta2, t):
    rho_inf = 2 / (1 - beta2) - 1
    return rho_inf - 2 * t * beta2 ** t / (1 - beta2 ** t)


def _first_rectified(beta2, steps=100):
    for t in range(1, steps + 1):
        if _core.coefficients("radam", t, betas=(0.9, beta2))["rectified"]:
            return t
    return None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_steps_5_and_6(dtype, impl):
    """With torch's betas (0.9, 0.999): rho_5 = 4.996 (not rectified, though
    above the paper's 4) and rho_6 = 5.994 (rectified).  Step 5 is plain
    bias-corrected momentum, p -= lr * m / (1 - beta1^5), blind to v; step 6
    divides by sqrt(v) + eps and scales by rect and sqrt(1 - beta2^6).  Both
    match torch after exactly 5 and exactly 6 steps."""
    assert 4 < _rho_t(0.999, 5) <= 5 < _rho_t(0.999, 6)
    assert not _core.coefficients("radam", 5)["rectified"]
    assert _core.coefficients("radam", 6)["rectified"]
    kw = dict(lr=0.01)
    for steps in (5, 6):
        ours, opt, theirs, topt = _run_both(kw, dtype, impl, steps)
        _assert_matches(ours, opt, theirs, topt, dtype, steps)

    # the same steps written out from the formulas, in float64
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal(6) for _ in range(6)]
    p0 = rng.standard_normal(6)
    lr, beta1, beta2, eps = 0.01, 0.9, 0.999, 1e-8
    p, m, v = p0.copy(), np.zeros(6), np.zeros(6)
    q = p0.copy()
    opt = fastopt.RAdam([q], lr=lr)
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1 ** t)
        if t <= 5:
            p = p - lr * m_hat
        else:
            rho_inf, rho_t = 2 / (1 - beta2) - 1, _rho_t(beta2, t)
            rect = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                           / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            p = p - lr * m_hat * rect * np.sqrt(1 - beta2 ** t) / (np.sqrt(v) + eps)
        opt.step([g])
        np.testing.assert_allclose(q, p, rtol=1e-13, err_msg=f"step {t}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_unrectified_step_ignores_v(dtype):
    """Up to step 5 (torch's betas) v is updated but not read: any v gives
    the same parameter; at step 6 it matters."""
    rng = np.random.default_rng(11)
    p0, g, m0 = (rng.standard_normal(9).astype(dtype) for _ in range(3))
    out = {}
    for step in (5, 6):
        for v0 in (np.zeros(9, dtype), np.full(9, 100.0, dtype)):
            p, m, v = p0.copy(), m0.copy(), v0.copy()
            functional.radam(p, g, m, v, step=step, lr=0.01)
            out[step, float(v0[0])] = p
            # v is updated either way
            np.testing.assert_array_equal(
                v, dtype(0.999) * v0 + dtype(1 - 0.999) * (g * g))
    assert np.array_equal(out[5, 0.0], out[5, 100.0])
    assert not np.array_equal(out[6, 0.0], out[6, 100.0])
    bc1 = 1 - 0.9 ** 5
    np.testing.assert_allclose(
        out[5, 0.0], p0 - (0.01 / bc1) * (dtype(0.9) * m0 + dtype(1 - 0.9) * g),
        rtol=RTOL[dtype])


@pytest.mark.parametrize("beta2, first", [(0.9, 6), (0.8, 7), (0.99, 6),
                                          (0.5, None), (0.0, None)])
def test_switch_step_follows_rho_t_above_5(beta2, first):
    """The rectified branch starts at the first step with rho_t > 5, for
    every beta2, not at rho_t > 4 (the paper's threshold: one step earlier
    at beta2 = 0.9 and two at 0.8), and stays on after it.  With
    rho_inf = 2 / (1 - beta2) - 1 <= 5 it never starts."""
    flags = [_core.coefficients("radam", t, betas=(0.9, beta2))["rectified"]
             for t in range(1, 101)]
    assert flags == [_rho_t(beta2, t) > 5 for t in range(1, 101)]
    assert _first_rectified(beta2) == first
    if first is not None:
        assert not any(flags[:first - 1]) and all(flags[first - 1:])
        paper = next(t for t in range(1, 101) if _rho_t(beta2, t) > 4)
        assert paper < first


@pytest.mark.parametrize("beta2", [0.9, 0.8])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_switch_step_matches_torch_step_by_step(beta2, dtype):
    """Around the switch, fastopt and torch's single-tensor code agree after
    every step: the branch of each step is torch's."""
    params, curvature, noise = problem(dtype)
    ours = [p.copy() for p in params]
    theirs = [torch.tensor(p.copy()) for p in params]
    kw = dict(lr=0.05, betas=(0.9, beta2))
    opt = fastopt.RAdam(ours, **kw)
    topt = torch.optim.RAdam(theirs, **kw, foreach=False)
    for t in range(12):
        before = [p.copy() for p in ours]
        opt.step(_grads(curvature, ours, noise[t]))
        for p, c, n in zip(theirs, curvature, noise[t]):
            p.grad = torch.from_numpy(c) * p.detach() + torch.from_numpy(n)
        topt.step()
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_close(a, b.detach().numpy(), RTOL[dtype],
                          f"param {i} after step {t + 1}")
        assert any(not np.array_equal(a, b) for a, b in zip(ours, before))


def test_decoupled_decay_scales_the_parameter():
    """decoupled_weight_decay: p * (1 - lr * wd) and no L2 term in the
    moments; otherwise the moments see g + wd * p."""
    p0, g = np.array([2.0, -1.0]), np.array([0.5, 0.25])
    for decoupled in (False, True):
        p, m, v = p0.copy(), np.zeros(2), np.zeros(2)
        functional.radam(p, g, m, v, step=1, lr=0.1, weight_decay=0.5,
                         decoupled_weight_decay=decoupled)
        g_seen = g if decoupled else g + 0.5 * p0
        np.testing.assert_allclose(m, (1 - 0.9) * g_seen, rtol=1e-15)
        start = p0 * (1 - 0.1 * 0.5) if decoupled else p0
        np.testing.assert_allclose(p, start - 0.1 * g_seen, rtol=1e-15)


def test_reference_is_the_functional():
    """The NumPy specification and the kernel agree bit for bit on both
    branches (tests/test_kernels.py does this on every level and thread
    count)."""
    rng = np.random.default_rng(2)
    for step in (3, 9):
        p, g = rng.standard_normal(33), rng.standard_normal(33)
        m, v = rng.standard_normal(33), rng.uniform(0, 1, 33)
        a = [x.copy() for x in (p, m, v)]
        b = [x.copy() for x in (p, m, v)]
        functional.radam(a[0], g, a[1], a[2], step=step, weight_decay=0.1)
        reference.radam(b[0], g, b[1], b[2], step=step, weight_decay=0.1)
        for x, y in zip(a, b):
            assert np.array_equal(x, y)


# ---------------------------------------------------------------------------
# Defaults and checkpoints

def test_defaults_are_torchs():
    ours = inspect.signature(fastopt.RAdam).parameters
    theirs = inspect.signature(torch.optim.RAdam).parameters
    names = ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay",
             "maximize")
    for name in names:
        assert ours[name].default == theirs[name].default, name
        assert ours[name].kind == theirs[name].kind, name
    assert [n for n in ours if n in theirs] == [
        n for n in theirs if n in ("params",) + names]
    assert ours["lr"].default == 1e-3
    assert ours["betas"].default == (0.9, 0.999)
    assert ours["eps"].default == 1e-8
    assert ours["weight_decay"].default == 0
    assert ours["decoupled_weight_decay"].default is False
    assert ours["maximize"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("bad, message", [
    (dict(lr=-1.0), "Invalid learning rate"),
    (dict(eps=-1.0), "Invalid epsilon value"),
    (dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0"),
    (dict(betas=(0.9, 1.0)), "Invalid beta parameter at index 1"),
    (dict(weight_decay=-0.1), "Invalid weight_decay value"),
])
def test_checks_give_torchs_messages(bad, message):
    with pytest.raises(ValueError, match=message):
        torch.optim.RAdam([torch.zeros(2)], **bad)
    with pytest.raises(ValueError, match=message):
        fastopt.RAdam([np.zeros(2)], **bad)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("stop", [3, STEPS // 2], ids=["before-switch", "after-switch"])
def test_checkpoint_round_trip(dtype, stop):
    """Before the switch to the rectified step and after it."""
    check_resume(fastopt.RAdam, dict(lr=0.02, weight_decay=0.1,
                                     decoupled_weight_decay=True), dtype, stop)
