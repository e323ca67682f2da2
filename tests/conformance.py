"""The comparison with torch.optim that every conformance test runs.

Both sides start from the same NumPy data and take gradients of the same
quadratic-plus-noise loss, each from its own parameters, so rounding
differences would grow if the rules differed.  Parameters and every torch
state must match within rtol 1e-10 (float64) or 1e-5 (float32).  An element
that cancels to near zero (a momentum buffer crossing zero) carries the
absolute error of the tensor's large elements, so each comparison also
allows rtol times the tensor's largest magnitude as absolute error.
"""
import copy
import itertools

import numpy as np
import pytest

import fastopt.lr_scheduler

STEPS = 50
RTOL = {np.float64: 1e-10, np.float32: 1e-5}
SHAPES = [(4, 3), (3,), (2, 2, 2)]
# a rule with a matrix step (Muon) takes matrices: tall, wide, square
MATRIX_SHAPES = [(4, 3), (3, 5), (2, 2)]
# torch's single-tensor code, and its default (foreach on CPU tensors)
IMPLS = {"for-loop": {"foreach": False}, "default": {}}


def grid(**axes):
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def preset_grid(presets, **axes):
    """(configs, ids): every named preset of hyperparameters combined with
    every point of grid(**axes), for pytest.mark.parametrize."""
    points = grid(**axes)
    configs = [dict(**presets[name], **c) for name in presets for c in points]
    ids = [name + "-" + "-".join(f"{k}={v}" for k, v in c.items())
           for name in presets for c in points]
    return configs, ids


def check_state_keys(opt, topt, keys):
    """torch's state and fastopt's state_dict both hold exactly ``keys``."""
    state = opt.state_dict()["state"]
    for i, torch_state in enumerate(topt.state.values()):
        assert set(torch_state) == set(keys)
        assert set(state[i]) == set(torch_state)


def problem(dtype, matrices=False):
    """Start parameters, curvatures and per-step noise, fixed by a seed
    (matrices only, when the rule takes no others)."""
    rng = np.random.default_rng(1234)
    shapes = MATRIX_SHAPES if matrices else SHAPES
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    curvature = [rng.uniform(0.1, 2.0, s).astype(dtype) for s in shapes]
    noise = [[rng.standard_normal(s).astype(dtype) * dtype(0.1) for s in shapes]
             for _ in range(STEPS)]
    return params, curvature, noise


def assert_close(actual, desired, rtol, what):
    np.testing.assert_allclose(actual, desired, rtol=rtol,
                               atol=rtol * np.abs(desired).max(), err_msg=what)


def check_against_torch(cls, torch_cls, config, dtype, impl, before_step=None,
                        schedule=None):
    """Run both over STEPS steps and compare parameters, every torch state
    and the step counts; return fastopt's optimizer and torch's.
    ``before_step(opt, grads)`` sees each step's gradients first;
    ``schedule=(name, kwargs)`` steps that scheduler of fastopt.lr_scheduler
    and of torch.optim.lr_scheduler after every step."""
    torch = pytest.importorskip("torch")
    # torch keeps per-tensor scalar states (NAdam's mu_product, ASGD's eta
    # and mu) in its default dtype; fastopt keeps them in float64. With
    # float64 parameters the comparison runs torch at float64 throughout.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == np.float64 else torch.float32)
    try:
        ours, theirs, opt, topt = _run_both(torch, cls, torch_cls, config, dtype, impl,
                                           before_step, schedule)
    finally:
        torch.set_default_dtype(default)
    rtol = RTOL[dtype]
    state = opt.state_dict()["state"]
    scalars = set(cls.rule.scalar_keys)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.dtype == dtype
        assert_close(a, b.detach().numpy(), rtol, f"param {i}")
        for name, value in topt.state[b].items():
            if name == "step":
                assert state[i]["step"] == int(value) == STEPS
                continue
            mine = state[i][name]
            assert mine.dtype == (np.float64 if name in scalars else dtype)
            assert_close(mine, value.numpy(), rtol, f"{name} of param {i}")
    return opt, topt


def _run_both(torch, cls, torch_cls, config, dtype, impl, before_step, schedule):
    params, curvature, noise = problem(dtype)
    ours = [p.copy() for p in params]
    theirs = [torch.tensor(p.copy()) for p in params]
    opt = cls(ours, **config)
    topt = torch_cls(theirs, **config, **IMPLS[impl])
    scheds = []
    if schedule is not None:
        name, kwargs = schedule
        scheds = [getattr(fastopt.lr_scheduler, name)(opt, **kwargs),
                  getattr(torch.optim.lr_scheduler, name)(topt, **kwargs)]
    for t in range(STEPS):
        grads = [c * p + n for c, p, n in zip(curvature, ours, noise[t])]
        if before_step is not None:
            before_step(opt, grads)
        opt.step(grads)
        for p, c, n in zip(theirs, curvature, noise[t]):
            p.grad = torch.from_numpy(c) * p.detach() + torch.from_numpy(n)
        topt.step()
        for sched in scheds:
            sched.step()
    if scheds:
        assert opt.param_groups[0]["lr"] == topt.param_groups[0]["lr"]
    return ours, theirs, opt, topt


def check_resume(cls, config, dtype, stop, fresh_config=None):
    """A state_dict taken after ``stop`` steps and loaded into a fresh
    optimizer (made with ``fresh_config``, which the checkpoint overrides)
    over copies of the parameters: the continuation has the same bits as the
    run that went on, parameters, states, step counts and hyperparameters."""
    params, curvature, noise = problem(dtype, bool(cls.rule.matrix))
    ours = [p.copy() for p in params]
    opt = cls(ours, **config)

    def grads(ps, t):
        return [c * p + n for c, p, n in zip(curvature, ps, noise[t])]

    for t in range(stop):
        opt.step(grads(ours, t))
    saved = copy.deepcopy(opt.state_dict())
    resumed = [p.copy() for p in ours]
    fresh = cls(resumed, **(fresh_config or {}))
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0].keys() == opt.param_groups[0].keys()
    assert all(fresh.param_groups[0][k] == v for k, v in opt.param_groups[0].items()
               if k != "params")
    for t in range(stop, STEPS):
        opt.step(grads(ours, t))
        fresh.step(grads(resumed, t))
    for a, b in zip(ours, resumed):
        assert a.tobytes() == b.tobytes()
    want, got = opt.state_dict()["state"], fresh.state_dict()["state"]
    assert want.keys() == got.keys()
    for i in want:
        assert want[i].keys() == got[i].keys()
        assert want[i]["step"] == got[i]["step"] == STEPS
        for key in want[i].keys() - {"step"}:
            assert got[i][key].dtype == (np.float64 if key in cls.rule.scalar_keys
                                         else dtype)
            assert got[i][key].tobytes() == want[i][key].tobytes(), (i, key)
