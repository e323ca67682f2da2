"""fastopt.Adamax against torch.optim.Adamax of torch 2.13.

The source is torch's single-tensor code, torch/optim/adamax.py
(``_single_tensor_adamax``, run with foreach=False and with the default,
which on CPU tensors takes the same path), per parameter and step::

    g = -g if maximize;  g = g + weight_decay * p
    m = lerp(m, g, 1 - beta1)
    u = maximum(beta2 * u, |g| + eps)
    p = p - (lr / (1 - beta1^t)) * m / u

Both sides start from the same NumPy data and take gradients of the same
quadratic-plus-noise loss, each from its own parameters, for 50 steps and
every option combination; parameters, every torch state (``exp_avg``,
``exp_inf``) and the step count must match within rtol 1e-10 (float64) or
1e-5 (float32), with rtol times the tensor's largest magnitude allowed as
absolute error, as in tests/test_torch_conformance.py.  The traps of the
rule (eps inside the maximum, NaN through the maximum, bias correction from
the step count) are tests of their own.  Kernel parity on every level and
thread count comes from the rule table (tests/test_kernels.py).
"""
import inspect

import numpy as np
import pytest

import fastopt
from conformance import IMPLS, STEPS, check_against_torch, check_resume, grid

torch = pytest.importorskip("torch")

TORCH_ONLY = {"foreach", "differentiable", "capturable"}
FASTOPT_ONLY = {"skip_nonfinite", "ema_decay", "accumulation_steps", "state_dtype", "seed"}


CONFIGS = grid(weight_decay=[0, 0.1], maximize=[False, True])


def _config_id(config):
    return "-".join(f"{k}={v}" for k, v in config.items())


def _torch_steps(params, grads, **hp):
    """torch's single-tensor Adamax from float64 copies of params over grads."""
    theirs = [torch.tensor(np.array(p, dtype=np.float64)) for p in params]
    topt = torch.optim.Adamax(theirs, foreach=False, **hp)
    for step_grads in grads:
        for p, g in zip(theirs, step_grads):
            p.grad = torch.tensor(np.array(g, dtype=np.float64))
        topt.step()
    return theirs, topt


# ---------------------------------------------------------------------------
# (a) torch conformance, every option combination

@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", CONFIGS, ids=[_config_id(c) for c in CONFIGS])
def test_matches_torch(config, dtype, impl):
    opt, topt = check_against_torch(fastopt.Adamax, torch.optim.Adamax,
                                    dict(lr=0.01, **config), dtype, impl)
    state = opt.state_dict()["state"]
    for i, torch_state in enumerate(topt.state.values()):
        assert set(torch_state) == {"step", "exp_avg", "exp_inf"}
        assert set(state[i]) == set(torch_state)


def test_every_config_is_distinct():
    assert len({_config_id(c) for c in CONFIGS}) == len(CONFIGS) == 4


# ---------------------------------------------------------------------------
# (b) the traps

def test_eps_inside_the_max():
    # beta2 = 0.5, eps = 0.5.  Step 1: g = 1, u = 1 + 0.5 = 1.5.  Step 2:
    # g = 0.4, u = max(0.5 * 1.5, 0.4 + 0.5) = 0.9: |g| + eps decides.  With
    # eps added to the denominator instead, max(0.5 * 1, 0.4) + 0.5 = 1.0.
    hp = dict(lr=0.1, betas=(0.9, 0.5), eps=0.5)
    grads = [[np.array([1.0])], [np.array([0.4])]]
    p = np.array([2.0])
    opt = fastopt.Adamax([p], **hp)
    for g in grads:
        opt.step(g)
    state = opt.state_dict()["state"][0]
    assert state["exp_inf"][0] == 0.4 + 0.5
    m1 = (1 - 0.9) * 1.0
    m = 0.9 * m1 + (1 - 0.9) * 0.4
    assert state["exp_avg"][0] == m
    inside = 2.0 - (0.1 / (1 - 0.9)) * (m1 / 1.5)
    inside = inside - (0.1 / (1 - 0.9 ** 2)) * (m / 0.9)
    outside = 2.0 - (0.1 / (1 - 0.9)) * (m1 / 1.5)
    outside = outside - (0.1 / (1 - 0.9 ** 2)) * (m / 1.0)
    np.testing.assert_allclose(p, [inside], rtol=1e-15)
    assert abs(p[0] - outside) > 1e-3
    theirs, topt = _torch_steps([np.array([2.0])], grads, **hp)
    np.testing.assert_allclose(p, theirs[0].detach().numpy(), rtol=1e-15)
    np.testing.assert_allclose(state["exp_inf"], topt.state[theirs[0]]["exp_inf"].numpy(),
                               rtol=0)


def test_decayed_norm_wins_when_larger():
    # the other side of the maximum: beta2 * u > |g| + eps keeps u decaying
    p = np.array([0.0])
    opt = fastopt.Adamax([p], betas=(0.9, 0.5), eps=0.0)
    opt.step([np.array([4.0])])
    opt.step([np.array([1.0])])
    assert opt.state_dict()["state"][0]["exp_inf"][0] == 2.0


@pytest.mark.parametrize("where", ["grad", "exp_inf"])
def test_nan_propagates_through_the_max(where):
    # a NaN on either side of the maximum stays NaN, as torch.maximum and
    # numpy.maximum have it; a plain a > b ? a : b would drop one of them
    p = np.array([1.0, 1.0])
    opt = fastopt.Adamax([p])
    opt.step([np.array([0.5, -0.5])])
    sd = opt.state_dict()
    g = np.array([0.5, -0.5])
    if where == "grad":
        g[0] = np.nan
    else:
        sd["state"][0]["exp_inf"][0] = np.nan
        opt.load_state_dict(sd)
    opt.step([g])
    u = opt.state_dict()["state"][0]["exp_inf"]
    assert np.isnan(u[0]) and np.isnan(p[0])
    assert np.isfinite(u[1]) and np.isfinite(p[1])
    theirs = torch.tensor([1.0, 1.0], dtype=torch.float64)
    topt = torch.optim.Adamax([theirs], foreach=False)
    theirs.grad = torch.tensor([0.5, -0.5], dtype=torch.float64)
    topt.step()
    if where == "exp_inf":
        topt.state[theirs]["exp_inf"][0] = float("nan")
    theirs.grad = torch.from_numpy(g)
    topt.step()
    tu = topt.state[theirs]["exp_inf"].numpy()
    assert np.isnan(tu[0]) and np.isfinite(tu[1])
    np.testing.assert_allclose(u[1], tu[1], rtol=1e-15)


def test_step_one_moves_by_lr_times_the_sign():
    # p -= lr / (1 - beta1) * ((1 - beta1) g) / (|g| + eps): about lr * sign(g)
    p = np.array([0.0, 0.0])
    fastopt.Adamax([p], lr=0.01).step([np.array([3.0, -2.0])])
    np.testing.assert_allclose(p, [-0.01, 0.01], rtol=1e-8)


def test_bias_correction_from_the_step_count():
    # clr = lr / (1 - beta1^t) from the integer step: a state loaded at step
    # 999 takes step 1000 with beta1^1000, whatever calls came before
    p = np.array([1.0])
    opt = fastopt.Adamax([p], lr=0.1, betas=(0.99, 0.999))
    opt.step([np.array([1.0])])
    sd = opt.state_dict()
    sd["state"][0].update(step=999, exp_avg=np.array([0.5]), exp_inf=np.array([2.0]))
    opt.load_state_dict(sd)
    p0 = p[0]
    opt.step([np.array([1.0])])
    state = opt.state_dict()["state"][0]
    assert state["step"] == 1000
    m = 0.99 * 0.5 + (1 - 0.99) * 1.0
    u = max(0.999 * 2.0, 1.0 + 1e-8)
    np.testing.assert_allclose(p, [p0 - (0.1 / (1 - 0.99 ** 1000)) * (m / u)],
                               rtol=1e-15)


# ---------------------------------------------------------------------------
# (c) defaults and signature

def test_defaults_are_torchs():
    ours = {k: v for k, v in inspect.signature(fastopt.Adamax).parameters.items()
            if k not in FASTOPT_ONLY}
    theirs = {k: v for k, v in inspect.signature(torch.optim.Adamax).parameters.items()
              if k not in TORCH_ONLY}
    assert list(ours) == list(theirs)
    for name, param in theirs.items():
        if name == "params":
            continue
        assert ours[name].default == param.default, name
        assert ours[name].kind == param.kind, name
    assert ours["lr"].default == 2e-3
    assert ours["betas"].default == (0.9, 0.999)
    assert ours["eps"].default == 1e-8
    assert ours["weight_decay"].default == 0
    assert ours["maximize"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_checkpoint_round_trip_continues_bit_for_bit(dtype):
    check_resume(fastopt.Adamax, dict(lr=0.01, weight_decay=0.1, maximize=True),
                 dtype, STEPS // 2, fresh_config=dict(lr=0.5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_signed_zero_tie_in_the_maximum_matches_the_reference(dtype):
    """max(beta2 * u, |g| + eps) with beta2 * u = -0 and |g| + eps = +0: the
    kernel keeps the decayed -0 and so must the reference (found by the
    property test: the step's sign flipped between the two)."""
    start = [np.zeros(1, dtype), np.zeros(1, dtype), np.ones(1, dtype),
             np.full(1, -0.0, dtype)]
    ours, ref = [a.copy() for a in start], [a.copy() for a in start]
    fastopt.functional.adamax(*ours, step=1, lr=1e-8, eps=0.0)
    with np.errstate(divide="ignore"):
        fastopt.reference.adamax(*ref, step=1, lr=1e-8, eps=0.0)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(ours, ref))
    assert np.signbit(ours[3][0]) and ours[0][0] == np.inf
