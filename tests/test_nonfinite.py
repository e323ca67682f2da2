"""Non-finite data in the optimizer classes.

skip_nonfinite=True: a NaN or infinity in any one gradient of a model with
two groups and two dtypes skips the whole step (nothing written, step counts
kept, step() returns False, skipped_steps counts), and the trajectory equals
one in which that step never happened.  skip_nonfinite=False: NaN and
infinities in gradients and parameters propagate exactly as in
fastopt.reference (compared byte for byte, NaN payloads and signs included).
"""
import numpy as np
import pytest

from fastopt import FlatParams
from fastopt.optim import SGD, Adagrad, Adam, AdamW, Momentum, RMSprop
from test_state_machine import CLASS_RULE, RefOptimizer, assert_same

CONFIGS = [
    (SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
    (SGD, dict(lr=0.05, momentum=0.9, dampening=0.3, maximize=True)),
    (SGD, dict(lr=0.05)),
    (Momentum, dict(lr=0.05, beta=0.8, weight_decay=0.1)),
    (RMSprop, dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.1)),
    (RMSprop, dict(lr=0.01, maximize=True)),
    (Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    (Adam, dict(lr=0.01, maximize=True, decoupled_weight_decay=True)),
    (AdamW, dict(lr=0.01, amsgrad=True)),
    (Adagrad, dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1,
                   weight_decay=0.1)),
]
# every other class of the table, with every state its rule has switched on
CONFIGS += [(cls, {"lr": rule.hyper("lr").default,
                   **{s.when: True if rule.hyper(s.when).check == "flag" else 0.5
                      for s in rule.states if s.when is not None}})
            for cls, rule in CLASS_RULE.items()
            if cls not in {c for c, _ in CONFIGS}]
IDS = [f"{cls.__name__}-{i}" for i, (cls, _) in enumerate(CONFIGS)]
BAD = [np.nan, np.inf, -np.inf]
SHAPES = {"W1": ((4, 3), np.float64), "b1": ((4,), np.float32),
          "W2": ((2, 4), np.float32), "b2": ((2,), np.float64)}
GROUP_OF = {"W1": 0, "b1": 0, "W2": 1, "b2": 1}


def _rows(arrays, matrices):
    """The biases as 1 x n matrices for a rule that takes matrices only."""
    if not matrices:
        return arrays
    return {k: a.reshape(1, -1) if a.ndim == 1 else a for k, a in arrays.items()}


def _model(seed=0, matrices=False):
    rng = np.random.default_rng(seed)
    return _rows({k: rng.standard_normal(s).astype(d) for k, (s, d) in SHAPES.items()},
                 matrices)


def _grads(t, matrices=False):
    rng = np.random.default_rng(100 + t)
    return _rows({k: rng.standard_normal(s).astype(d) for k, (s, d) in SHAPES.items()},
                 matrices)


def _groups(params, second):
    return [{"params": {k: params[k] for k in ("W1", "b1")}},
            {"params": {k: params[k] for k in ("W2", "b2")}, **second}]


def _snapshot(opt, params):
    sd = opt.state_dict()
    state = {i: {k: (v.dtype.str, v.tobytes()) if isinstance(v, np.ndarray) else v
                 for k, v in e.items()} for i, e in sd["state"].items()}
    return ({k: p.tobytes() for k, p in params.items()}, state,
            repr(sd["param_groups"]))


@pytest.mark.parametrize("case", CONFIGS, ids=IDS)
@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
def test_any_one_bad_grad_skips_the_whole_step(case, bad):
    """Every parameter of both groups and both dtypes, first and last
    element; the bad step is in the middle of a run, with a None grad in it."""
    cls, kw = case
    m = bool(cls.rule.matrix)
    for name in SHAPES:
        for where in (0, -1):
            params, clean = _model(matrices=m), _model(matrices=m)
            opt = cls(_groups(params, {"lr": kw["lr"] / 2}), **kw, skip_nonfinite=True)
            twin = cls(_groups(clean, {"lr": kw["lr"] / 2}), **kw)
            for t in range(5):
                grads = _grads(t, m)
                if t == 2:
                    grads[name].flat[where] = bad
                    grads["b2" if name != "b2" else "W1"] = None
                    before = _snapshot(opt, params)
                    assert opt.step(grads) is False
                    assert opt.skipped_steps == 1
                    assert _snapshot(opt, params) == before
                    continue
                if t == 3:
                    grads["W2"] = None
                assert opt.step(grads) is True
                twin.step(grads)
            assert opt.skipped_steps == 1
            a, b = _snapshot(opt, params), _snapshot(twin, clean)
            assert a[0] == b[0] and a[1] == b[1], (name, where)


@pytest.mark.parametrize("case", CONFIGS, ids=IDS)
def test_skipped_steps_then_trajectory_equals_reference(case):
    """Many bad steps, at random, of every kind: the optimizer equals the
    reference model fed only the good steps, and counts the bad ones."""
    cls, kw = case
    m = bool(cls.rule.matrix)
    rng = np.random.default_rng(7)
    params = _model(1, m)
    ref_params = _model(1, m)
    opt = cls(_groups(params, {}), **kw, skip_nonfinite=True)
    names = list(SHAPES)
    ref = RefOptimizer(cls, [ref_params[k] for k in names],
                       [opt.param_groups[GROUP_OF[k]] for k in names])
    skipped = 0
    for t in range(30):
        grads = _grads(t, m)
        if rng.random() < 0.2:
            grads[names[rng.integers(4)]] = None
        bad = rng.random() < 0.3
        if bad:
            k = names[rng.integers(4)]
            grads[k] = grads[k] if grads[k] is not None else np.zeros_like(_grads(t, m)[k])
            grads[k].flat[rng.integers(grads[k].size)] = BAD[rng.integers(3)]
            skipped += 1
        assert opt.step(grads) is (not bad)
        if not bad:
            ref.step([grads[k] for k in names])
    assert opt.skipped_steps == skipped
    assert_same(opt, [params[k] for k in names], ref)
    assert opt.state_dict()["skipped_steps"] == skipped


def test_skip_on_the_flat_path():
    flat = FlatParams(_model(2))
    twin = FlatParams(_model(2))
    opt = Adam(flat.params, lr=0.01, amsgrad=True, skip_nonfinite=True)
    ref = Adam(twin.params, lr=0.01, amsgrad=True)
    for t in range(6):
        g = _grads(t)
        for k in g:
            flat.grads[k][...] = g[k].astype(flat.dtype)
            twin.grads[k][...] = g[k].astype(twin.dtype)
        if t == 3:
            flat.grads["b1"][1] = np.nan
            before = flat.param_buffer.tobytes()
            assert opt.step(flat.grads) is False
            assert flat.param_buffer.tobytes() == before
            continue
        assert opt.step(flat.grads) is True
        ref.step(twin.grads)
    assert flat.param_buffer.tobytes() == twin.param_buffer.tobytes()


def test_invalid_step_raises_even_with_a_nan():
    """A skipped step is never an invalid one: a NaN does not hide a bad grad."""
    params = _model()
    opt = Adam(_groups(params, {}), skip_nonfinite=True)
    grads = _grads(0)
    grads["W1"][0, 0] = np.nan
    grads["b2"] = np.zeros(3)                      # wrong shape
    with pytest.raises(ValueError, match="b2"):
        opt.step(grads)
    grads = _grads(0)
    grads["W1"][0, 0] = np.nan
    grads["b1"] = grads["b1"].astype(np.float64)   # wrong dtype
    with pytest.raises(TypeError, match="b1"):
        opt.step(grads)
    assert opt.skipped_steps == 0


def test_nonfinite_params_and_states_are_not_checked_by_skip():
    """skip_nonfinite looks at gradients only: a NaN parameter still steps."""
    params = _model()
    params["W1"][0, 0] = np.nan
    opt = SGD(_groups(params, {}), lr=0.1, skip_nonfinite=True)
    assert opt.step(_grads(0)) is True and np.isnan(params["W1"][0, 0])


# ---------------------------------------------------------------------------
# skip_nonfinite=False: exactly the reference

# Without NaN among the inputs every NaN is made by an invalid operation
# (inf - inf, 0 * inf) and is the processor's one default NaN, so results
# must match byte for byte whatever order the compiler gives the operands.
NONNAN = np.array([np.inf, -np.inf, 0.0, -0.0, 1e308, -3e38, 5e-324, 1e-40])
# With NaN inputs the NaNs' signs may differ (see test_nan_sign_with_maximize).
SPECIALS = np.concatenate([NONNAN, [np.nan, -np.nan]])


def _spoiled(arrays, rng, fraction, values):
    for a in arrays:
        mask = rng.random(a.shape) < fraction
        with np.errstate(all="ignore"):
            a[mask] = rng.choice(values, mask.sum()).astype(a.dtype)


def _run_default(case, values, nan_sign):
    cls, kw = case
    m = bool(cls.rule.matrix)
    rng = np.random.default_rng(11)
    params = _model(3, m)
    _spoiled(params.values(), rng, 0.15, values)     # non-finite parameters
    ref_params = {k: p.copy() for k, p in params.items()}
    names = list(SHAPES)
    opt = cls(_groups(params, {"lr": kw["lr"] * 2}), **kw)
    ref = RefOptimizer(cls, [ref_params[k] for k in names],
                       [opt.param_groups[GROUP_OF[k]] for k in names])
    with np.errstate(all="ignore"):
        for t in range(8):
            grads = _grads(t, m)
            _spoiled(grads.values(), rng, 0.1, values)   # and gradients
            if t == 4:
                grads["b1"] = None
            assert opt.step(grads) is True
            ref.step([grads[k] for k in names])
            assert_same(opt, [params[k] for k in names], ref, nan_sign=nan_sign)
    assert opt.skipped_steps == 0


@pytest.mark.parametrize("case", CONFIGS, ids=IDS)
def test_default_propagates_exactly_like_the_reference(case):
    """inf, huge, subnormal and signed-zero inputs: byte for byte."""
    _run_default(case, NONNAN, nan_sign=True)


@pytest.mark.parametrize("case", CONFIGS, ids=IDS)
def test_default_propagates_nan_like_the_reference(case):
    """NaN inputs as well: every value, every NaN position, every bit of
    every non-NaN value."""
    _run_default(case, SPECIALS, nan_sign=False)


@pytest.mark.parametrize("rule", ["momentum", "sgd", "adam"])
def test_nan_with_maximize_matches_the_reference(rule):
    """NaN gradients under maximize: NaN in the same places as the reference.

    The sign and payload of a NaN are not part of the guarantee: IEEE 754
    leaves them unspecified for arithmetic, and compilers fold negations
    into neighbouring multiplies (so a NaN's sign can differ between the
    kernel and NumPy, and between builds)."""
    from fastopt import functional, reference
    p, s0, s1 = np.ones(4), np.zeros(4), np.zeros(4)
    g = np.full(4, np.nan)
    g[1] = -g[1]
    kw = {"momentum": dict(lr=0.1, maximize=True),
          "sgd": dict(lr=0.1, maximize=True, step=1),
          "adam": dict(lr=0.1, maximize=True, step=1)}[rule]
    states = {"momentum": [s0], "sgd": [], "adam": [s0, s1]}[rule]
    mine = [p.copy()] + [s.copy() for s in states]
    ref = [p.copy()] + [s.copy() for s in states]
    with np.errstate(all="ignore"):
        getattr(functional, rule)(mine[0], g, *mine[1:], **kw)
        getattr(reference, rule)(ref[0], g, *ref[1:], **kw)
    for a, b in zip(mine, ref):
        assert np.array_equal(a, b, equal_nan=True)
