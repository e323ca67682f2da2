"""fastopt.optim against torch.optim: every option combination, 50 steps.

Both sides start from the same NumPy data and take gradients of the same
quadratic-plus-noise loss, each from its own parameters, so rounding
differences would grow if the rules differed.  Parameters and every torch
state (``momentum_buffer``, ``square_avg``, ``grad_avg``, ``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``, ``sum``) must match within rtol 1e-10
(float64) or 1e-5 (float32).  An element that cancels to near zero (a
momentum buffer crossing zero) carries the absolute error of the tensor's
large elements, so each comparison also allows rtol times the tensor's
largest magnitude as absolute error.
"""
import itertools

import numpy as np
import pytest

import fastopt
from fastopt.optim import SGD, Adagrad, Adam, AdamW, RMSprop
from fastopt.rules import RULES

torch = pytest.importorskip("torch")

STEPS = 50
RTOL = {np.float64: 1e-10, np.float32: 1e-5}
SHAPES = [(4, 3), (3,), (2, 2, 2)]
IMPLS = {"for-loop": {"foreach": False}, "default": {}}


def _grid(**axes):
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def _sgd_configs():
    out = []
    for c in _grid(momentum=[0, 0.9], dampening=[0, 0.5], weight_decay=[0, 0.1],
                   nesterov=[False, True], maximize=[False, True]):
        if c["nesterov"] and (c["momentum"] == 0 or c["dampening"] != 0):
            continue
        out.append(c)
    return out


CASES = (
    [(SGD, torch.optim.SGD, dict(lr=0.05, **c)) for c in _sgd_configs()]
    + [(RMSprop, torch.optim.RMSprop, dict(lr=0.01, **c)) for c in _grid(
        momentum=[0, 0.9], centered=[False, True], weight_decay=[0, 0.1],
        maximize=[False, True])]
    + [(Adam, torch.optim.Adam, dict(lr=0.01, **c)) for c in _grid(
        weight_decay=[0, 0.1], amsgrad=[False, True], maximize=[False, True],
        decoupled_weight_decay=[False, True])]
    + [(AdamW, torch.optim.AdamW, dict(lr=0.01, **c)) for c in _grid(
        weight_decay=[0, 0.1], amsgrad=[False, True], maximize=[False, True])]
    + [(Adagrad, torch.optim.Adagrad, dict(lr=0.05, **c)) for c in _grid(
        lr_decay=[0, 0.01], weight_decay=[0, 0.1],
        initial_accumulator_value=[0, 0.1], maximize=[False, True])]
)
HAND_WRITTEN = len(CASES)


def _table_cases():
    """Every class of the table with a torch counterpart that the grid above
    does not list: each flag on and off, weight decay off and on, at the
    rule's defaults."""
    listed = {cls.__name__ for cls, _, _ in CASES}
    out = []
    for rule in RULES.values():
        if not rule.torch:
            continue
        for name, fixed, _, _ in rule.classes():
            if name in listed:
                continue
            hypers = [h for h in rule.hypers if h.name not in fixed]
            axes = {h.name: [False, True] for h in hypers if h.check == "flag"}
            if any(h.name == "weight_decay" for h in hypers):
                axes["weight_decay"] = [0, 0.1]
            out += [(getattr(fastopt, name), getattr(torch.optim, name), c)
                    for c in _grid(**axes)]
    return out


# a rule added to the table is compared with torch here without editing this file
TABLE_CASES = _table_cases()
CASES += TABLE_CASES


def _case_id(case):
    cls, _, config = case
    return cls.__name__ + "-" + "-".join(f"{k}={v}" for k, v in config.items()
                                         if k != "lr")


def _problem(dtype):
    rng = np.random.default_rng(1234)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    curvature = [rng.uniform(0.1, 2.0, s).astype(dtype) for s in SHAPES]
    noise = [[rng.standard_normal(s).astype(dtype) * dtype(0.1) for s in SHAPES]
             for _ in range(STEPS)]
    return params, curvature, noise


def _assert_close(actual, desired, rtol, what):
    np.testing.assert_allclose(actual, desired, rtol=rtol,
                               atol=rtol * np.abs(desired).max(), err_msg=what)


def check_against_torch(cls, torch_cls, config, dtype, impl, before_step=None):
    """Run both over STEPS steps and compare parameters, every torch state
    and the step counts; return fastopt's optimizer and torch's.
    ``before_step(opt, grads)`` sees each step's gradients first."""
    params, curvature, noise = _problem(dtype)
    ours = [p.copy() for p in params]
    theirs = [torch.tensor(p.copy()) for p in params]
    opt = cls(ours, **config)
    topt = torch_cls(theirs, **config, **IMPLS[impl])
    for t in range(STEPS):
        grads = [c * p + n for c, p, n in zip(curvature, ours, noise[t])]
        if before_step is not None:
            before_step(opt, grads)
        opt.step(grads)
        for p, c, n in zip(theirs, curvature, noise[t]):
            p.grad = torch.from_numpy(c) * p.detach() + torch.from_numpy(n)
        topt.step()
    rtol = RTOL[dtype]
    state = opt.state_dict()["state"]
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.dtype == dtype
        _assert_close(a, b.detach().numpy(), rtol, f"param {i}")
        for name, value in topt.state[b].items():
            if name == "step":
                assert state[i]["step"] == int(value) == STEPS
                continue
            mine = state[i][name]
            assert mine.dtype == dtype
            _assert_close(mine, value.numpy(), rtol, f"{name} of param {i}")
    return opt, topt


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_torch(case, dtype, impl):
    cls, torch_cls, config = case
    opt, topt = check_against_torch(cls, torch_cls, config, dtype, impl)
    if cls is SGD:
        expected = {"momentum_buffer"} if config["momentum"] else set()
        for state in topt.state.values():
            assert set(state) - {"step"} == expected


def test_every_case_is_distinct():
    ids = [_case_id(c) for c in CASES]
    assert len(ids) == len(set(ids))
    assert HAND_WRITTEN == 20 + 16 + 16 + 8 + 16
    assert len(CASES) == HAND_WRITTEN + len(TABLE_CASES)
