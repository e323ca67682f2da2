"""Rprop against torch.optim.Rprop (torch 2.13).

fastopt.Rprop is compared with torch's own single-tensor code,
torch/optim/rprop.py (``_single_tensor_rprop``, foreach=False) and with
torch's default implementation: both start from the same NumPy data and take
gradients of the same quadratic-plus-noise loss, each from its own
parameters, for 50 steps.  Parameters, torch's states ``prev`` and
``step_size`` (by their torch keys) and the step count must match within
rtol 1e-10 (float64) or 1e-5 (float32), with rtol times the tensor's largest
magnitude as absolute error, as in tests/test_torch_conformance.py.  Torch's
Rprop has no weight decay; its one flag is maximize.

Also here: the traps of the rule (the gradient zeroed where its sign
flipped, step sizes clamped to step_sizes), torch's defaults and eta check,
and a checkpoint round trip.  Kernel parity on every SIMD level and thread
count comes from the rule table (tests/test_kernels.py)."""
import inspect

import numpy as np
import pytest

import fastopt
from fastopt import functional, reference
from conformance import IMPLS, STEPS, check_against_torch, check_resume, grid

torch = pytest.importorskip("torch")



# every flag (maximize) on and off, at torch's defaults, with step sizes that
# both bounds clamp, with other etas, and with bounds given the wrong way
# round (torch's clamp then gives the upper bound)
CONFIGS = grid(
    hyper=[{}, {"step_sizes": (1e-3, 0.05)}, {"lr": 0.1, "etas": (0.3, 1.5)},
           {"step_sizes": (0.02, 0.01)}],
    maximize=[False, True])


def _config_id(c):
    shown = [f"{k}={v}" for k, v in c["hyper"].items()] or ["defaults"]
    return "-".join(shown + (["maximize"] if c["maximize"] else []))


def _grads(curvature, params, noise):
    return [c * p + n for c, p, n in zip(curvature, params, noise)]


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", CONFIGS, ids=[_config_id(c) for c in CONFIGS])
def test_matches_torch(config, dtype, impl):
    kw = dict(config["hyper"], maximize=config["maximize"])
    flips = []

    def count_flips(opt, grads):
        prev = [s["prev"] for s in opt.state_dict()["state"].values()]
        flips.extend(int(np.sum(g * b < 0)) for g, b in zip(grads, prev))

    opt, topt = check_against_torch(fastopt.Rprop, torch.optim.Rprop, kw, dtype,
                                    impl, before_step=count_flips)
    assert sum(flips) > 0   # the trajectory exercises the sign-flip branch
    for torch_state in topt.state.values():
        assert set(torch_state) == {"step", "prev", "step_size"}


# ---------------------------------------------------------------------------
# The traps

def _one_step(p, g, prev, step_size, **kw):
    """One functional step on copies; (param, prev, step_size) after it."""
    p, prev, step_size = p.copy(), prev.copy(), step_size.copy()
    functional.rprop(p, g, prev, step_size, **kw)
    return p, prev, step_size


def test_gradient_zeroed_where_sign_flipped():
    """Where g * prev < 0 the step size shrinks by etaminus, the parameter
    stays and prev becomes 0 (so the next step neither shrinks nor grows);
    where it is > 0 the step size grows by etaplus; where it is 0 the step
    size stays."""
    p = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    prev = np.array([2.0, -2.0, 0.0, 3.0, 3.0])
    g = np.array([-1.0, 1.0, 1.0, 4.0, 0.0])
    size = np.full(5, 0.1)
    p1, prev1, size1 = _one_step(p, g, prev, size, etas=(0.5, 1.2))
    np.testing.assert_array_equal(prev1, [0.0, 0.0, 1.0, 4.0, 0.0])
    np.testing.assert_array_equal(size1, [0.05, 0.05, 0.1, 0.1 * 1.2, 0.1])
    np.testing.assert_array_equal(p1, [1.0, 1.0, 0.9, 1.0 - 0.1 * 1.2, 1.0])
    # the step after a flip: prev is 0, the size stays, the parameter moves
    p2, prev2, size2 = _one_step(p1, g, prev1, size1, etas=(0.5, 1.2))
    np.testing.assert_array_equal(size2[:2], [0.05, 0.05])
    np.testing.assert_array_equal(p2[:2], [1.05, 0.95])
    np.testing.assert_array_equal(prev2[:2], g[:2])
    # torch does the same
    tp = torch.tensor(p.copy())
    topt = torch.optim.Rprop([tp], lr=0.1, foreach=False)
    topt.state[tp].update(step=torch.tensor(0.0), prev=torch.tensor(prev),
                          step_size=torch.tensor(size))
    tp.grad = torch.tensor(g)
    topt.step()
    np.testing.assert_array_equal(tp.numpy(), p1)
    np.testing.assert_array_equal(topt.state[tp]["prev"].numpy(), prev1)
    np.testing.assert_array_equal(topt.state[tp]["step_size"].numpy(), size1)


def test_zeroed_gradient_with_maximize():
    """maximize negates the gradient before the sign test: the flip is of
    -g against prev, and prev keeps -g."""
    p = np.ones(3)
    prev = np.array([-1.0, 1.0, 0.0])
    g = np.array([-1.0, -1.0, 2.0])         # -g: 1, 1, -2
    p1, prev1, size1 = _one_step(p, g, prev, np.full(3, 0.1), maximize=True)
    np.testing.assert_array_equal(prev1, [0.0, 1.0, -2.0])
    np.testing.assert_array_equal(size1, [0.05, 0.1 * 1.2, 0.1])
    np.testing.assert_array_equal(p1, [1.0, 1.0 - 0.1 * 1.2, 1.1])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_step_sizes_clamped(dtype):
    """A gradient that keeps its sign grows every step size to exactly the
    upper bound; one that flips every step shrinks it to exactly the lower
    bound, as torch's clamp does."""
    n = 6
    lo, hi = 1e-3, 0.05
    p = np.zeros(n, dtype)
    opt = fastopt.Rprop([p], lr=0.01, step_sizes=(lo, hi))
    tp = torch.zeros(n, dtype=torch.from_numpy(p).dtype)
    topt = torch.optim.Rprop([tp], lr=0.01, step_sizes=(lo, hi), foreach=False)
    sizes = []
    for t in range(40):
        g = np.ones(n, dtype)
        opt.step([g])
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
        sizes.append(opt.state_dict()["state"][0]["step_size"])
    assert np.all(sizes[-1] == dtype(hi))
    assert np.all(np.diff([s[0] for s in sizes]) >= 0)
    for t in range(80):
        g = np.full(n, 1.0 if t % 2 else -1.0, dtype)
        opt.step([g])
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
    state = opt.state_dict()["state"][0]
    assert np.all(state["step_size"] == dtype(lo))
    np.testing.assert_array_equal(state["step_size"], topt.state[tp]["step_size"].numpy())
    np.testing.assert_array_equal(p, tp.numpy())


def test_step_sizes_bounds_the_wrong_way_round_give_the_upper():
    """torch's clamp(min, max) with min > max gives max: so does fastopt."""
    p, prev, size = _one_step(np.ones(3), np.array([1.0, -1.0, 0.0]), np.zeros(3),
                              np.full(3, 0.3), step_sizes=(0.5, 0.2))
    np.testing.assert_array_equal(size, [0.2, 0.2, 0.2])


def test_step_size_starts_at_lr():
    """The class fills step_size with the group's lr; a functional caller
    who does the same gets the same bits."""
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(10)
    grads = [rng.standard_normal(10) for _ in range(5)]
    p = p0.copy()
    opt = fastopt.Rprop([p], lr=0.03)
    q = p0.copy()
    prev, size = np.zeros(10), np.full(10, 0.03)
    for g in grads:
        opt.step([g])
        functional.rprop(q, g, prev, size, lr=0.03)
    state = opt.state_dict()["state"][0]
    assert np.array_equal(p, q)
    assert np.array_equal(state["prev"], prev)
    assert np.array_equal(state["step_size"], size)
    # the first step moves every parameter by lr exactly (prev is 0)
    p = p0.copy()
    fastopt.Rprop([p], lr=0.03).step([grads[0]])
    np.testing.assert_array_equal(p, p0 - np.sign(grads[0]) * 0.03)


def test_sign_as_numpy_sign():
    """A zero gradient moves nothing (sign(0) = 0, either zero); a NaN in
    the gradient keeps its step size (torch: factor 1) and, with numpy.sign,
    makes its parameter NaN (torch's sign(NaN) is 0 and leaves it; fastopt's
    rules all let a NaN through, skip_nonfinite is the guard)."""
    g = np.array([0.0, -0.0, np.nan])
    p1, prev1, size1 = _one_step(np.ones(3), g, np.ones(3), np.full(3, 0.1))
    np.testing.assert_array_equal(p1[:2], [1.0, 1.0])
    np.testing.assert_array_equal(size1, [0.1, 0.1, 0.1])
    assert np.isnan(p1[2]) and np.isnan(prev1[2])
    p, prev, size = np.ones(3), np.ones(3), np.full(3, 0.1)
    with np.errstate(invalid="ignore"):
        reference.rprop(p, g, prev, size)
    for a, b in ((p1, p), (prev1, prev), (size1, size)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("etas", [(0.0, 1.2), (0.5, 1.0), (1.0, 1.2), (1.5, 2.0),
                                  (0.6, 0.9), (1e-05, 1.5e-07)])
def test_eta_check_gives_torchs_message(etas):
    with pytest.raises(ValueError) as theirs:
        torch.optim.Rprop([torch.zeros(2)], etas=etas)
    messages = set()
    for call in (lambda: fastopt.Rprop([np.zeros(2)], etas=etas),
                 lambda: functional.rprop(np.zeros(2), np.ones(2), np.zeros(2),
                                          np.ones(2), etas=etas)):
        with pytest.raises(ValueError) as ours:
            call()
        messages.add(str(ours.value))
    assert messages == {str(theirs.value)}


@pytest.mark.parametrize("step_sizes", [(-1e-6, 50.0), (1e-6, -1.0),
                                        (1e-6, float("inf")), (float("nan"), 1.0)])
def test_step_sizes_must_be_finite_and_not_negative(step_sizes):
    """torch checks nothing of step_sizes; fastopt checks each as a real
    >= 0, as the table has it."""
    with pytest.raises(ValueError, match="Invalid step size at index"):
        fastopt.Rprop([np.zeros(2)], step_sizes=step_sizes)


# ---------------------------------------------------------------------------
# Defaults and checkpoints

def test_defaults_are_torchs():
    ours = inspect.signature(fastopt.Rprop).parameters
    theirs = inspect.signature(torch.optim.Rprop).parameters
    for name in ("lr", "etas", "step_sizes", "maximize"):
        assert ours[name].default == theirs[name].default, name
        assert ours[name].kind == theirs[name].kind, name
    assert [n for n in ours if n in theirs] == [
        n for n in theirs if n in ("params", "lr", "etas", "step_sizes", "maximize")]
    assert ours["lr"].default == 1e-2
    assert ours["etas"].default == (0.5, 1.2)
    assert ours["step_sizes"].default == (1e-6, 50)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_checkpoint_round_trip(dtype):
    check_resume(fastopt.Rprop, dict(lr=0.02, step_sizes=(1e-4, 0.5)), dtype,
                 STEPS // 2)
