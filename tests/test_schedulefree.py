"""Schedule-free AdamW and SGD against the schedulefree package (1.4.1).

Defazio et al., "The Road Less Scheduled" (2024); the package's
AdamWScheduleFree and SGDScheduleFree (schedulefree/adamw_schedulefree.py,
sgd_schedulefree.py) run on torch CPU, in float64 and float32, with their
default foreach path and their for-loop path.  Both sides take gradients of
the same quadratic-plus-noise loss at their own y (tests/conformance.py),
over 50 steps with an eval()/train() switch in the middle, and must agree
in the parameters (y, and x after eval()), z, exp_avg_sq, the step count and
the package's per-group lr_max and weight_sum (fastopt's per-tensor scalar
states), to rtol 1e-10 in float64 and 1e-5 in float32.

Where fastopt differs from the package, on purpose, a test says so: the
gradients are only read; k, lr_max and weight_sum are per parameter, so a
parameter that misses steps follows the package run on it alone; a new
optimizer starts in train mode.  Kernel parity on every level and thread
count for the defaults comes from tests/test_kernels.py; here it is run
for the warm-up and weighting options too.
"""
import copy
import inspect

import numpy as np
import pytest

import fastopt
from fastopt import functional as F
from fastopt import reference as R
from conformance import RTOL, STEPS, assert_close, check_resume, problem

torch = pytest.importorskip("torch")
schedulefree = pytest.importorskip("schedulefree")

CLASSES = {
    "adamw": (fastopt.AdamWScheduleFree, "AdamWScheduleFree"),
    "sgd": (fastopt.SGDScheduleFree, "SGDScheduleFree"),
}
# options of the package's step, each away from its default
CONFIGS = {
    "adamw": [dict(),
              dict(lr=0.01, warmup_steps=10, weight_decay=0.01),
              dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, r=0.5,
                   weight_lr_power=1.0, warmup_steps=5),
              dict(lr=0.01, weight_lr_power=0.0, r=1.0, weight_decay=0.1)],
    "sgd": [dict(lr=0.1),
            dict(lr=0.1, warmup_steps=10, weight_decay=0.01),
            dict(lr=0.05, momentum=0.5, r=0.5, weight_lr_power=1.0,
                 warmup_steps=5),
            dict(lr=0.1, momentum=0.95, weight_lr_power=0.0, r=1.0,
                 weight_decay=0.1)],
}
IMPLS = {"foreach": {}, "for-loop": {"foreach": False}}
SWITCH = STEPS // 2


def _pkg(kind):
    return getattr(schedulefree, CLASSES[kind][1])


def _groups(params, configs):
    """Parameter groups: params split into len(configs) groups."""
    if len(configs) == 1:
        return [{"params": params, **configs[0]}]
    return [{"params": params[:1], **configs[0]},
            {"params": params[1:], **configs[1]}]


def _compare(opt, ours, topt, theirs, dtype, present=None):
    """Parameters, z, exp_avg_sq, steps and the per-group scalars."""
    rtol = RTOL[dtype]
    state = opt.state_dict()["state"]
    groups = {id(p): g for g in topt.param_groups for p in g["params"]}
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.dtype == dtype
        assert_close(a, b.numpy(), rtol, f"param {i}")
        tstate = topt.state[b]
        if present is not None and not present[i]:
            assert i not in state and "z" not in tstate
            continue
        assert set(state[i]) == set(tstate) | {"step", "lr_max", "weight_sum"}
        for key, value in tstate.items():
            assert state[i][key].dtype == dtype
            assert_close(state[i][key], value.numpy(), rtol, f"{key} of param {i}")
        group = groups[id(b)]
        assert state[i]["step"] == group["k"]
        assert state[i]["lr_max"].dtype == np.float64
        assert state[i]["lr_max"] == group["lr_max"]
        assert state[i]["weight_sum"] == group["weight_sum"]


def _run(kind, group_configs, dtype, impl, none_at=None, present=None):
    """Both optimizers over STEPS steps, eval() and train() (each twice) at
    SWITCH, eval() at the end; ``none_at(t, i)`` True: no gradient for
    parameter i at step t."""
    cls, _ = CLASSES[kind]
    params, curvature, noise = problem(dtype)
    ours = [p.copy() for p in params]
    theirs = [torch.tensor(p.copy()) for p in params]
    opt = cls(_groups(ours, group_configs))
    topt = _pkg(kind)(_groups(theirs, group_configs), **IMPLS[impl])
    topt.train()
    for t in range(STEPS):
        if t == SWITCH:
            opt.eval(), opt.eval()
            topt.eval(), topt.eval()
            assert opt.train_mode is False
            _compare(opt, ours, topt, theirs, dtype, present)
            opt.train(), opt.train()
            topt.train(), topt.train()
        grads = [None if none_at and none_at(t, i) else c * p + n
                 for i, (c, p, n) in enumerate(zip(curvature, ours, noise[t]))]
        before = [None if g is None else g.copy() for g in grads]
        opt.step(grads)
        for g, b in zip(grads, before):
            assert (g is None) == (b is None)
            if g is not None:
                assert g.tobytes() == b.tobytes()
        for i, (p, c, n) in enumerate(zip(theirs, curvature, noise[t])):
            p.grad = (None if none_at and none_at(t, i)
                      else torch.from_numpy(c) * p + torch.from_numpy(n))
        topt.step()
    opt.eval()
    topt.eval()
    return opt, ours, topt, theirs


# every config in both dtypes on the package's default (foreach) path; its
# for-loop path, whose operations are the same, in float64 for two
CASES = ([(kind, config, dtype, "foreach") for kind in CLASSES
          for config in range(4) for dtype in (np.float64, np.float32)]
         + [(kind, config, np.float64, "for-loop") for kind in CLASSES
            for config in range(2)])


@pytest.mark.parametrize("kind, config, dtype, impl", CASES,
                         ids=[f"{k}-{c}-{np.dtype(d).name}-{i}" for k, c, d, i in CASES])
def test_against_the_package(kind, config, dtype, impl):
    opt, ours, topt, theirs = _run(kind, [CONFIGS[kind][config]], dtype, impl)
    _compare(opt, ours, topt, theirs, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", list(CLASSES))
def test_parameter_groups(kind, dtype):
    opt, ours, topt, theirs = _run(kind, CONFIGS[kind][1:3], dtype, "foreach")
    _compare(opt, ours, topt, theirs, dtype)


@pytest.mark.parametrize("kind", list(CLASSES))
def test_none_grads_like_the_package(kind):
    """A parameter without gradients is left alone and gets no state, and
    the others, with a gradient at every step, follow the package exactly
    as without it."""
    opt, ours, topt, theirs = _run(kind, [CONFIGS[kind][1]], np.float64,
                                   "foreach", none_at=lambda t, i: i == 1,
                                   present=[True, False, True])
    params, _, _ = problem(np.float64)
    assert ours[1].tobytes() == params[1].tobytes()
    _compare(opt, ours, topt, theirs, np.float64, present=[True, False, True])


@pytest.mark.parametrize("kind", list(CLASSES))
def test_none_grads_where_fastopt_differs(kind):
    """A parameter that misses steps: the package advances its group's k,
    lr_max and weight_sum at every step, fastopt a parameter's own only
    when it has a gradient (as torch counts steps).  Such a parameter
    follows the package run on that parameter alone, fed only the steps it
    has a gradient in, and not the package run on the whole group."""
    dtype = np.float64
    config = CONFIGS[kind][1]
    cls, _ = CLASSES[kind]
    params, curvature, noise = problem(dtype)
    missing = {0, 3, 4, 10, 31}
    ours = [p.copy() for p in params]
    opt = cls(ours, **config)
    alone = torch.tensor(params[1].copy())
    talone = _pkg(kind)([alone], **config)
    together = [torch.tensor(p.copy()) for p in params]
    ttogether = _pkg(kind)(together, **config)
    talone.train(), ttogether.train()
    for t in range(STEPS):
        grads = [c * p + n for c, p, n in zip(curvature, ours, noise[t])]
        if t in missing:
            grads[1] = None
        opt.step(grads)
        if t not in missing:
            alone.grad = torch.from_numpy(curvature[1]) * alone + torch.from_numpy(noise[t][1])
            talone.step()
        for i, (p, c, n) in enumerate(zip(together, curvature, noise[t])):
            p.grad = (None if i == 1 and t in missing
                      else torch.from_numpy(c) * p + torch.from_numpy(n))
        ttogether.step()
    assert opt.state_dict()["state"][1]["step"] == STEPS - len(missing)
    assert_close(ours[1], alone.numpy(), RTOL[dtype], "param 1 against the lone run")
    assert_close(ours[0], together[0].numpy(), RTOL[dtype], "param 0")
    assert not np.allclose(ours[1], together[1].numpy(), rtol=1e-6, atol=0)


def test_defaults_are_the_packages():
    for kind, (cls, name) in CLASSES.items():
        ours = inspect.signature(cls).parameters
        theirs = inspect.signature(_pkg(kind)).parameters
        shared = [k for k in theirs if k not in ("params", "foreach")]
        assert list(ours)[1:len(shared) + 1] == shared
        for k in shared:
            assert ours[k].default == theirs[k].default, (name, k)
        assert ours["maximize"].kind is inspect.Parameter.KEYWORD_ONLY
        assert cls.__doc__.count("never written") == 1


@pytest.mark.parametrize("kind", list(CLASSES))
def test_grads_are_only_read(kind):
    """The package divides and decays p.grad in place; fastopt takes
    read-only gradients and leaves them as they were."""
    cls, _ = CLASSES[kind]
    params, curvature, noise = problem(np.float32)
    opt = cls([p.copy() for p in params], weight_decay=0.1)
    for t in range(3):
        grads = [c * p + n for c, p, n in zip(curvature, params, noise[t])]
        saved = [g.copy() for g in grads]
        for g in grads:
            g.flags.writeable = False
        opt.step(grads)
        assert all(g.tobytes() == s.tobytes() for g, s in zip(grads, saved))
        # functional door, same thing
        g = grads[0]
        p = params[0].copy()
        states = [np.zeros_like(p) for _ in cls.rule.states]
        scalars = [np.array([-1.0]), np.array([0.0])]
        getattr(F, cls.rule.name)(p, g, *states, *scalars, step=t + 1)
        assert g.tobytes() == saved[0].tobytes()


def _lerp64(a, b, w):
    """torch's lerp, in float64, element by element."""
    out = np.empty_like(a)
    for k, (x, y) in enumerate(zip(a.ravel(), b.ravel())):
        out.flat[k] = x + w * (y - x) if abs(w) < 0.5 else y - (y - x) * (1 - w)
    return out


@pytest.mark.parametrize("beta", [0.9, 0.4])
@pytest.mark.parametrize("kind", list(CLASSES))
def test_train_and_eval(kind, beta):
    """eval() sets x = lerp(y, z, 1 - 1/beta), train() y = lerp(x, z,
    1 - beta) (both of torch's branches: beta 0.9 and 0.4), each only once;
    a fresh parameter (no z) keeps its value; a step in eval mode raises
    and changes nothing."""
    cls, _ = CLASSES[kind]
    config = dict(betas=(beta, 0.999)) if kind == "adamw" else dict(momentum=beta)
    rng = np.random.default_rng(5)
    ps = [rng.standard_normal(6), rng.standard_normal(4)]
    opt = cls(ps, lr=0.1, **config)
    fresh = cls([p.copy() for p in ps], **config)
    before = [p.copy() for p in fresh.param_groups[0]["params"]]
    fresh.eval()
    fresh.train()
    assert all(a.tobytes() == b.tobytes()
               for a, b in zip(fresh.param_groups[0]["params"], before))
    for _ in range(3):
        opt.step([rng.standard_normal(6), None])
    z = opt.state_dict()["state"][0]["z"]
    y = ps[0].copy()
    untouched = ps[1].copy()
    opt.eval()
    x = ps[0].copy()
    assert x.tobytes() == _lerp64(y, z, 1 - 1 / beta).tobytes()
    opt.eval()
    assert ps[0].tobytes() == x.tobytes()
    assert ps[1].tobytes() == untouched.tobytes()
    with pytest.raises(RuntimeError, match=r"eval mode.*\.train\(\)"):
        opt.step([rng.standard_normal(6), rng.standard_normal(4)])
    assert ps[0].tobytes() == x.tobytes() and ps[1].tobytes() == untouched.tobytes()
    assert opt.state_dict()["state"][0]["step"] == 3
    opt.train()
    assert ps[0].tobytes() == _lerp64(x, z, 1 - beta).tobytes()
    np.testing.assert_allclose(ps[0], y, rtol=1e-12, atol=1e-12)
    assert opt.train_mode is True


@pytest.mark.parametrize("kind", list(CLASSES))
def test_swaps_against_the_package(kind):
    """The swaps of the package, on the same y and z, in float32 (torch
    rounds the weight to float as NumPy does)."""
    cls, name = CLASSES[kind]
    rng = np.random.default_rng(9)
    p = rng.standard_normal(1000).astype(np.float32)
    opt = cls([p.copy()])
    tp = torch.tensor(p.copy())
    topt = _pkg(kind)([tp])
    topt.train()
    g = rng.standard_normal(1000).astype(np.float32)
    opt.step([g])
    tp.grad = torch.tensor(g)
    topt.step()
    mine = opt.param_groups[0]["params"][0]
    assert_close(mine, tp.numpy(), RTOL[np.float32], "y")
    tp.copy_(torch.from_numpy(mine))
    topt.state[tp]["z"].copy_(torch.from_numpy(opt.state_dict()["state"][0]["z"]))
    opt.eval()
    topt.eval()
    assert_close(mine, tp.numpy(), 1e-6, "x")
    opt.train()
    topt.train()
    assert_close(mine, tp.numpy(), 1e-6, "y again")


@pytest.mark.parametrize("kind", list(CLASSES))
def test_eval_checks_hyperparameters_first(kind):
    """A bad hyperparameter set between steps, or beta = 0 (then y = z and x
    is lost; the package divides by zero), makes eval() raise before any
    parameter is written; beta = 0 steps as the package does."""
    cls, _ = CLASSES[kind]
    key = "betas" if kind == "adamw" else "momentum"
    for bad, match in [((1.5, 0.999) if kind == "adamw" else 1.5, "Invalid"),
                       ((0.0, 0.999) if kind == "adamw" else 0.0, r"> 0")]:
        ps = [np.ones(3), np.ones(2)]
        opt = cls([{"params": ps[:1]}, {"params": ps[1:]}])
        opt.step([np.full(3, 0.5), np.full(2, 0.5)])
        opt.param_groups[1][key] = bad
        saved = [p.copy() for p in ps]
        if match == r"> 0":
            opt.step([np.full(3, 0.5), np.full(2, 0.5)])
            saved = [p.copy() for p in ps]
        with pytest.raises(ValueError, match=match):
            opt.eval()
        assert all(a.tobytes() == b.tobytes() for a, b in zip(ps, saved))
        assert opt.train_mode is True


@pytest.mark.parametrize("kind", list(CLASSES))
def test_checkpoints_carry_the_mode(kind, tmp_path):
    cls, _ = CLASSES[kind]
    check_resume(cls, CONFIGS[kind][1], np.float64, stop=17)
    params, curvature, noise = problem(np.float32)
    opt = cls([p.copy() for p in params], **CONFIGS[kind][1])
    for t in range(5):
        opt.step([c * p + n for c, p, n in zip(curvature, params, noise[t])])
    opt.eval()
    opt.save(tmp_path / "sf.npz")
    fresh = cls([p.copy() for p in params])
    fresh.load(tmp_path / "sf.npz")
    assert fresh.train_mode is False
    assert fresh.state_dict().keys() == opt.state_dict().keys()
    with pytest.raises(RuntimeError, match="eval mode"):
        fresh.step([np.zeros_like(p) for p in params])
    sd = copy.deepcopy(opt.state_dict())
    del sd["train_mode"]
    other = cls([p.copy() for p in params])
    with pytest.raises(ValueError, match="train_mode"):
        other.load_state_dict(sd)
    assert other.train_mode is True and other.state_dict()["state"] == {}


OPTION_CASES = [dict(warmup_steps=3, r=0.5, weight_lr_power=1.0),
                dict(warmup_steps=4, weight_lr_power=0.0, maximize=True,
                     weight_decay=0.05),
                dict(lr=0.0, weight_decay=0.01)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(OPTION_CASES)))
@pytest.mark.parametrize("rule", ["adamw_schedulefree", "sgd_schedulefree"])
def test_kernel_is_the_reference(rule, case, dtype, exec_env, rng):
    """Bit for bit on every level and thread count, through the warm-up,
    the first step, both lerp branches and lr = 0 (ckp1 = 0: weight_sum
    stays 0)."""
    n = 1000
    p = rng.standard_normal(n).astype(dtype)
    nstates = len(fastopt.rules.RULES[rule].states)
    ours = [p.copy()] + [np.zeros(n, dtype) for _ in range(nstates)]
    theirs = [a.copy() for a in ours]
    sc_ours = [np.array([-1.0]), np.array([0.0])]
    sc_theirs = [a.copy() for a in sc_ours]
    for t in range(1, 7):
        g = rng.standard_normal(n).astype(dtype)
        getattr(F, rule)(ours[0], g, *ours[1:], *sc_ours, step=t, **OPTION_CASES[case])
        getattr(R, rule)(theirs[0], g, *theirs[1:], *sc_theirs, step=t,
                         **OPTION_CASES[case])
        for a, b in zip(ours + sc_ours, theirs + sc_theirs):
            assert a.tobytes() == b.tobytes(), t


@pytest.mark.parametrize("rule", ["adamw_schedulefree", "sgd_schedulefree"])
def test_first_step_takes_z_from_the_parameter(rule):
    """At step 1 z becomes the parameter (the package clones it); what the
    caller's z held is not read.  At step 2 it is."""
    rng = np.random.default_rng(3)
    p0, g = rng.standard_normal(9), rng.standard_normal(9)
    out = {}
    for fill in (0.0, np.nan):
        p = p0.copy()
        z = np.full(9, fill)
        extra = [np.zeros(9)] if rule.startswith("adamw") else []
        getattr(F, rule)(p, g, z, *extra, np.array([-1.0]), np.array([0.0]), step=1)
        out[fill] = (p, z)
    assert out[0.0][0].tobytes() == out[np.nan][0].tobytes()
    assert out[0.0][1].tobytes() == out[np.nan][1].tobytes()
    p = p0.copy()
    z = np.full(9, np.nan)
    extra = [np.zeros(9)] if rule.startswith("adamw") else []
    getattr(F, rule)(p, g, z, *extra, np.array([0.1]), np.array([0.01]), step=2)
    assert np.isnan(p).all()
