"""fastopt.optim: the seed's vectors, bit-exactness with fastopt.reference,
groups, None grads, mixed dtypes, skip_nonfinite, state_dict, bad inputs
(table-driven, nothing changes) and threads."""
import copy
import itertools
import threading

import numpy as np
import pytest

import fastopt
from fastopt import optim, reference
from fastopt.optim import SGD, Adagrad, Adam, AdamW, Momentum, RMSprop
from fastopt.rules import RULES
from conformance import STEPS, check_resume

# ---------------------------------------------------------------------------
# Helpers


def _seed_inputs():
    """The course's test-vector inputs (optimizer-math.md)."""
    np.random.seed(1)
    params = {"W1": np.random.randn(2, 3), "b1": np.random.randn(2, 1),
              "W2": np.random.randn(3, 3), "b2": np.random.randn(3, 1)}
    grads = {"W1": np.random.randn(2, 3), "b1": np.random.randn(2, 1),
             "W2": np.random.randn(3, 3), "b2": np.random.randn(3, 1)}
    return params, grads


def _model(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {"W1": rng.standard_normal((5, 2)).astype(dtype),
            "b1": rng.standard_normal((5, 1)).astype(dtype),
            "W2": rng.standard_normal((1, 5)).astype(dtype),
            "b2": rng.standard_normal((1, 1)).astype(dtype)}


def _grads_like(params, rng):
    if isinstance(params, dict):
        return {k: rng.standard_normal(p.shape).astype(p.dtype) for k, p in params.items()}
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def _grid(**axes):
    keys = list(axes)
    return [dict(zip(keys, v)) for v in itertools.product(*axes.values())]


# Per class: which state kinds a configuration uses (in fastopt.reference's
# argument order), their initial value, and the reference rule.
def _sgd_kinds(h):
    return ["momentum_buffer" if h["momentum"] else None]


REFERENCE = {
    SGD: (_sgd_kinds, lambda h, kind: 0.0,
          lambda p, g, s, t, h: reference.sgd(p, g, *s, step=t, **h)),
    Momentum: (lambda h: ["velocity"], lambda h, kind: 0.0,
               lambda p, g, s, t, h: reference.momentum(p, g, *s, **h)),
    RMSprop: (lambda h: ["square_avg", "grad_avg" if h["centered"] else None,
                         "momentum_buffer" if h["momentum"] else None],
              lambda h, kind: 0.0,
              lambda p, g, s, t, h: reference.rmsprop(p, g, *s, **h)),
    Adam: (lambda h: ["exp_avg", "exp_avg_sq",
                      "max_exp_avg_sq" if h["amsgrad"] else None],
           lambda h, kind: 0.0,
           lambda p, g, s, t, h: reference.adam(p, g, *s, step=t, **h)),
    Adagrad: (lambda h: ["sum"], lambda h, kind: h["initial_accumulator_value"],
              lambda p, g, s, t, h: reference.adagrad(
                  p, g, *s, step=t, **{k: v for k, v in h.items()
                                       if k != "initial_accumulator_value"})),
}
REFERENCE[AdamW] = REFERENCE[Adam]


def _from_table(rule):
    """(kinds, initial, call) of a rule of the table, as REFERENCE holds."""
    kernel = [h.name for h in rule.kernel_hypers]
    starts = {s.state_key: s.initial for s in rule.states}
    starts.update((s.name, s.initial) for s in rule.scalar_states)

    def kinds(h):
        return [s.state_key if s.when is None or h[s.when] else None
                for s in rule.states] + list(rule.scalar_keys)

    def initial(h, kind=None):
        start = starts[kind] if kind else 0.0
        return float(h[start]) if isinstance(start, str) else float(start)

    def call(p, g, s, t, h):
        step = {} if rule.step is None else {"step": t}
        getattr(reference, rule.name)(p, g, *s, **step, **{k: h[k] for k in kernel})
    return kinds, initial, call


# every other class of the table
REFERENCE.update({getattr(fastopt, name): _from_table(rule)
                  for rule in RULES.values() for name, *_ in rule.classes()
                  if getattr(fastopt, name) not in REFERENCE})


SCALAR_KINDS = {s.name for rule in RULES.values() for s in rule.scalar_states}


class _Reference:
    """fastopt.reference run by hand, parameter by parameter, with torch's
    per-parameter step counts."""

    def __init__(self, cls, params, groups):
        self.kinds, self.initial, self.rule = REFERENCE[cls]
        self.params = params          # list of arrays
        self.groups = groups          # hyperparameters per parameter
        self.steps = [0] * len(params)
        self.state = [{} for _ in params]

    def step(self, grads):
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if g is None:
                continue
            h = self.groups[i]
            states = []
            for kind in self.kinds(h):
                if kind in SCALAR_KINDS and kind not in self.state[i]:
                    # per-tensor scalar states: float64, whatever p's dtype
                    self.state[i][kind] = np.array(self.initial(h, kind))
                elif kind is not None and kind not in self.state[i]:
                    self.state[i][kind] = np.full_like(p, self.initial(h, kind))
                states.append(None if kind is None else self.state[i][kind])
            self.steps[i] += 1
            self.rule(p, g, states, self.steps[i], h)


def _assert_state_equal(opt, ref):
    state = opt.state_dict()["state"]
    for i, p in enumerate(ref.params):
        if ref.steps[i] == 0:
            assert i not in state
            continue
        assert state[i]["step"] == ref.steps[i]
        for kind, value in ref.state[i].items():
            assert state[i][kind].dtype == value.dtype
            np.testing.assert_array_equal(state[i][kind], value, err_msg=kind)


def _snapshot(opt, arrays):
    """Bytes of every array plus the optimizer's full state."""
    sd = opt.state_dict() if opt is not None else None
    return ([(a.dtype, a.shape, a.tobytes()) for a in arrays],
            None if sd is None else _flatten_state(sd))


def _flatten_state(sd):
    out = dict(sd)
    out["state"] = {i: {k: (v.dtype, v.tobytes()) if isinstance(v, np.ndarray) else v
                        for k, v in e.items()} for i, e in sd["state"].items()}
    return out


CONFIGS = (
    [(SGD, c) for c in _grid(lr=[0.05], momentum=[0, 0.9], dampening=[0, 0.3],
                             weight_decay=[0, 0.1], nesterov=[False, True],
                             maximize=[False, True])
     if not (c["nesterov"] and (c["momentum"] == 0 or c["dampening"]))]
    + [(Momentum, c) for c in _grid(lr=[0.05], beta=[0.9, 0.5],
                                    weight_decay=[0, 0.1], maximize=[False, True])]
    + [(RMSprop, c) for c in _grid(lr=[0.01], momentum=[0, 0.9],
                                   centered=[False, True], weight_decay=[0, 0.1],
                                   maximize=[False, True])]
    + [(Adam, c) for c in _grid(lr=[0.01], weight_decay=[0, 0.1],
                                amsgrad=[False, True], maximize=[False, True],
                                decoupled_weight_decay=[False, True])]
    + [(AdamW, c) for c in _grid(lr=[0.01], amsgrad=[False, True],
                                 maximize=[False, True])]
    + [(Adagrad, c) for c in _grid(lr=[0.05], lr_decay=[0, 0.01],
                                   weight_decay=[0, 0.1],
                                   initial_accumulator_value=[0, 0.1],
                                   maximize=[False, True])]
)
# every other class of the table: each flag on and off at its defaults, with
# every state's option on
CONFIGS += tuple(
    (cls, {**{s.when: True if rule.hyper(s.when).check == "flag" else 0.5
              for s in rule.states if s.when is not None}, **c})
    for cls, rule in ((getattr(fastopt, name), rule) for rule in RULES.values()
                      for name, *_ in rule.classes())
    if cls not in {c for c, _ in CONFIGS}
    for c in _grid(**{h.name: [False, True] for h in rule.hypers if h.check == "flag"}))


def _config_id(case):
    cls, c = case
    return cls.__name__ + "-" + "-".join(f"{k}={v}" for k, v in c.items() if k != "lr")


# ---------------------------------------------------------------------------
# The seed's published vectors


def test_momentum_reproduces_the_seed_vector():
    params, grads = _seed_inputs()
    opt = Momentum(params, lr=0.01, beta=0.9)
    assert opt.step(grads) is True
    np.testing.assert_allclose(params["W1"], [[1.62544598, -0.61290114, -0.52907334],
                                              [-1.07347112, 0.86450677, -2.30085497]],
                               atol=1e-8)
    np.testing.assert_allclose(params["b1"].ravel(), [1.74493465, -0.76027113], atol=1e-8)
    np.testing.assert_allclose(params["b2"].ravel(), [-0.87809283, 0.04055394, 0.58207317],
                               atol=1e-8)
    state = opt.state_dict()["state"]
    np.testing.assert_allclose(state[0]["velocity"],
                               [[-0.11006192, 0.11447237, 0.09015907],
                                [0.05024943, 0.09008559, -0.06837279]], atol=1e-8)
    np.testing.assert_allclose(state[3]["velocity"].ravel(),
                               [0.02344157, 0.16598022, 0.07420442], atol=1e-8)
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["W1", "b1", "W2", "b2"]


def test_gradient_descent_reproduces_the_seed_vector():
    params, grads = _seed_inputs()
    SGD(params, lr=0.01).step(grads)
    np.testing.assert_allclose(params["W1"], [[1.63535156, -0.62320365, -0.53718766],
                                              [-1.07799357, 0.85639907, -2.29470142]],
                               atol=1e-8)
    np.testing.assert_allclose(params["b2"].ravel(), [-0.88020257, 0.02561572, 0.57539477],
                               atol=1e-8)


def _adam_at_step_two(lr, betas, eps):
    """The course's Adam vector: one update with t = 2 from zero moments."""
    params, grads = _seed_inputs()
    opt = Adam(params, lr=lr, betas=betas, eps=eps)
    sd = opt.state_dict()
    sd["state"] = {i: {"step": 1, "exp_avg": np.zeros_like(p),
                       "exp_avg_sq": np.zeros_like(p)}
                   for i, p in enumerate(params.values())}
    opt.load_state_dict(sd)
    opt.step(grads)
    return params, opt.state_dict()["state"]


def test_adam_reproduces_the_seed_vector():
    params, state = _adam_at_step_two(0.01, (0.9, 0.999), 1e-8)
    np.testing.assert_allclose(params["W1"], [[1.63178673, -0.61919778, -0.53561312],
                                              [-1.08040999, 0.85796626, -2.29409733]],
                               atol=1e-8)
    np.testing.assert_allclose(params["b1"].ravel(), [1.75225313, -0.75376553], atol=1e-8)
    np.testing.assert_allclose(params["W2"][2], [1.14121081, -1.09244991, -0.16498684],
                               atol=1e-8)
    np.testing.assert_allclose(params["b2"].ravel(), [-0.88529979, 0.03477238, 0.57537385],
                               atol=1e-8)
    np.testing.assert_allclose(state[0]["exp_avg_sq"],
                               [[0.00121136, 0.00131039, 0.00081287],
                                [0.0002525, 0.00081154, 0.00046748]], atol=1e-8)
    np.testing.assert_allclose(state[3]["exp_avg_sq"].ravel(),
                               [5.49507194e-05, 2.75494327e-03, 5.50629536e-04],
                               rtol=1e-7)
    assert state[0]["step"] == 2


def test_adam_reproduces_the_2021_seed_vector():
    params, state = _adam_at_step_two(0.02, (0.8, 0.888), 1e-2)
    np.testing.assert_allclose(params["W1"][0], [1.63942428, -0.6268425, -0.54320974],
                               atol=1e-8)
    np.testing.assert_allclose(params["b1"][0], [1.75854357], atol=1e-8)
    np.testing.assert_allclose(params["b2"][0], [-0.89228024], atol=1e-8)
    np.testing.assert_allclose(state[0]["exp_avg"][0], [-0.22012384, 0.22894474, 0.18031814],
                               atol=1e-8)
    np.testing.assert_allclose(state[0]["exp_avg_sq"][0], [0.13567261, 0.14676395, 0.09104097],
                               atol=1e-8)


# ---------------------------------------------------------------------------
# Bit for bit with fastopt.reference


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CONFIGS, ids=[_config_id(c) for c in CONFIGS])
def test_equals_reference_bit_for_bit(case, dtype):
    cls, config = case
    params = _model(dtype)
    ref_params = [p.copy() for p in params.values()]
    opt = cls(params, **config)
    ref = _Reference(cls, ref_params, [opt.defaults] * len(ref_params))
    rng = np.random.default_rng(7)
    for _ in range(40):
        grads = _grads_like(params, rng)
        opt.step(grads)
        ref.step(list(grads.values()))
    for p, r in zip(params.values(), ref_params):
        assert p.dtype == dtype
        np.testing.assert_array_equal(p, r)
    _assert_state_equal(opt, ref)


def test_adamw_is_adam_with_decoupled_decay():
    a, b = _model(), _model()
    opt_a = AdamW(a, lr=0.01)
    opt_b = Adam(b, lr=0.01, weight_decay=1e-2, decoupled_weight_decay=True)
    assert opt_a.defaults == opt_b.defaults
    rng = np.random.default_rng(0)
    for _ in range(20):
        g = _grads_like(a, rng)
        opt_a.step(g)
        opt_b.step(g)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


# ---------------------------------------------------------------------------
# Groups, changing hyperparameters, None grads, mixed dtypes


def test_param_groups_override_defaults_and_match_separate_optimizers():
    m1, m2 = _model(seed=1), _model(seed=2)
    s1, s2 = copy.deepcopy(m1), copy.deepcopy(m2)
    opt = Adam([{"params": m1}, {"params": list(m2.values()), "lr": 0.05, "amsgrad": True}],
               lr=0.01, betas=(0.8, 0.99))
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.05]
    assert opt.param_groups[1]["betas"] == (0.8, 0.99)
    sep1 = Adam(s1, lr=0.01, betas=(0.8, 0.99))
    sep2 = Adam(s2, lr=0.05, betas=(0.8, 0.99), amsgrad=True)
    rng = np.random.default_rng(3)
    for t in range(15):
        g1, g2 = _grads_like(m1, rng), _grads_like(m2, rng)
        opt.step(tuple(g1.values()) + tuple(g2.values()))   # flat, in group order
        sep1.step(g1)
        sep2.step(g2)
    for a, b in itertools.chain(zip(m1.values(), s1.values()), zip(m2.values(), s2.values())):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="given without names"):
        opt.step({**g1})
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert sd["param_groups"][0]["param_names"] == list(m1)
    assert "param_names" not in sd["param_groups"][1]
    assert "max_exp_avg_sq" in sd["state"][4] and "max_exp_avg_sq" not in sd["state"][0]


def test_groups_of_named_params_take_a_dict_or_a_list():
    a, b = _model(), _model()
    named = lambda m, pre: {pre + k: v for k, v in m.items()}  # noqa: E731
    opt_dict = SGD([{"params": named(a, "enc.")}, {"params": named(b, "dec."), "lr": 0.1}],
                   lr=0.01, momentum=0.9)
    a2, b2 = _model(), _model()
    opt_list = SGD([{"params": named(a2, "enc.")}, {"params": named(b2, "dec."), "lr": 0.1}],
                   lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    for _ in range(5):
        ga, gb = _grads_like(a, rng), _grads_like(b, rng)
        opt_dict.step({**named(ga, "enc."), **named(gb, "dec.")})
        opt_list.step([*ga.values(), *gb.values()])
    for x, y in zip([*a.values(), *b.values()], [*a2.values(), *b2.values()]):
        np.testing.assert_array_equal(x, y)


def test_hyperparameters_are_read_every_step():
    params = _model()
    ref_params = [p.copy() for p in params.values()]
    opt = SGD(params, lr=0.1, momentum=0.9)
    ref = _Reference(SGD, ref_params, [dict(opt.defaults)] * 4)
    rng = np.random.default_rng(0)
    for t in range(10):
        lr = 0.1 / (1 + t)
        opt.param_groups[0]["lr"] = lr
        ref.groups = [dict(opt.defaults, lr=lr)] * 4
        g = _grads_like(params, rng)
        opt.step(g)
        ref.step(list(g.values()))
    for p, r in zip(params.values(), ref_params):
        np.testing.assert_array_equal(p, r)


def test_amsgrad_switched_on_later_starts_its_state_at_zero():
    params = _model()
    opt = Adam(params, lr=0.01)
    rng = np.random.default_rng(0)
    opt.step(_grads_like(params, rng))
    opt.param_groups[0]["amsgrad"] = True
    opt.step(_grads_like(params, rng))
    state = opt.state_dict()["state"][0]
    np.testing.assert_array_equal(state["max_exp_avg_sq"], state["exp_avg_sq"])


@pytest.mark.parametrize("cls", [SGD, Momentum, RMSprop, Adam, Adagrad])
def test_none_grads_leave_param_state_and_step_alone(cls):
    config = {SGD: dict(momentum=0.9), Momentum: {}, RMSprop: dict(momentum=0.5, centered=True),
              Adam: dict(amsgrad=True), Adagrad: dict(lr_decay=0.1)}[cls]
    params = _model()
    ref_params = [p.copy() for p in params.values()]
    opt = cls(params, lr=0.05, **config)
    ref = _Reference(cls, ref_params, [opt.defaults] * 4)
    rng = np.random.default_rng(0)
    pattern = [(), ("b1",), ("W1", "W2"), (), ("b1", "b2"), ("W1", "b1", "W2", "b2"), ()]
    for absent in pattern:
        before = opt.state_dict()
        kept = {k: params[k].copy() for k in absent}
        grads = _grads_like(params, rng)
        for k in absent:
            grads[k] = None
        assert opt.step(grads) is True
        ref.step(list(grads.values()))
        after = opt.state_dict()
        for k in absent:
            i = list(params).index(k)
            np.testing.assert_array_equal(params[k], kept[k])
            assert _flatten_state(before)["state"].get(i) == _flatten_state(after)["state"].get(i)
    for p, r in zip(params.values(), ref_params):
        np.testing.assert_array_equal(p, r)
    _assert_state_equal(opt, ref)
    assert len({s["step"] for s in opt.state_dict()["state"].values()}) > 1


def test_mixed_dtypes_keep_their_dtype_and_match_the_reference():
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(d) for s, d in
              [((3, 4), np.float32), ((4,), np.float64), ((2, 2), np.float32), ((5,), np.float64)]]
    ref_params = [p.copy() for p in params]
    opt = Adam(params, lr=0.01, amsgrad=True)
    ref = _Reference(Adam, ref_params, [opt.defaults] * 4)
    for t in range(20):
        grads = _grads_like(params, rng)
        if t % 3 == 1:
            grads[1] = None
        opt.step(grads)
        ref.step(grads)
    for p, r in zip(params, ref_params):
        assert p.dtype == r.dtype
        np.testing.assert_array_equal(p, r)
    _assert_state_equal(opt, ref)


# ---------------------------------------------------------------------------
# skip_nonfinite


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("mixed", [False, True], ids=["one-dtype", "mixed-dtypes"])
def test_skip_nonfinite_skips_the_whole_step(bad, mixed):
    def make():
        m = _model(seed=4)
        if mixed:
            m["b1"] = m["b1"].astype(np.float32)
        return m
    params, clean = make(), make()
    opt = Adam(params, lr=0.01, skip_nonfinite=True)
    twin = Adam(clean, lr=0.01)
    rng = np.random.default_rng(0)
    for t in range(8):
        grads = _grads_like(params, rng)
        if t in (2, 5):
            grads["b2" if t == 2 else "b1"].flat[0] = bad
            arrays, before = _snapshot(opt, list(params.values()))
            skipped = before.pop("skipped_steps")
            assert opt.step(grads) is False
            arrays_after, after = _snapshot(opt, list(params.values()))
            assert after.pop("skipped_steps") == skipped + 1
            assert (arrays_after, after) == (arrays, before)
            continue
        assert opt.step(grads) is True
        twin.step(grads)
    assert opt.skipped_steps == 2
    for k in params:
        np.testing.assert_array_equal(params[k], clean[k])
    assert opt.state_dict()["state"][0]["step"] == 6


def test_without_skip_nonfinite_nan_propagates():
    params = _model()
    opt = SGD(params, lr=0.1)
    grads = _grads_like(params, np.random.default_rng(0))
    grads["W1"][0, 0] = np.nan
    assert opt.step(grads) is True
    assert np.isnan(params["W1"][0, 0]) and opt.skipped_steps == 0


# ---------------------------------------------------------------------------
# state_dict


def test_state_dict_copies_and_round_trips():
    params = _model()
    opt = RMSprop(params, lr=0.01, momentum=0.9, centered=True)
    rng = np.random.default_rng(0)
    for _ in range(5):
        opt.step(_grads_like(params, rng))
    sd = opt.state_dict()
    assert sd["format"] == "fastopt" and sd["version"] == 1 and sd["optimizer"] == "RMSprop"
    assert set(sd["state"][0]) == {"step", "square_avg", "grad_avg", "momentum_buffer"}
    sd["state"][0]["square_avg"][...] = 123.0           # a copy: the optimizer is unaffected
    assert not np.any(opt.state_dict()["state"][0]["square_avg"] == 123.0)
    sd = opt.state_dict()
    saved_params = copy.deepcopy(params)
    future = [_grads_like(params, rng) for _ in range(5)]
    for g in future:
        opt.step(g)
    expected = copy.deepcopy(params)
    fresh_params = saved_params
    fresh = RMSprop(fresh_params, lr=0.5)                # hyperparameters come from sd
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["lr"] == 0.01
    sd["state"][0]["square_avg"][...] = -1.0            # loading copied the arrays
    sd["state"][0]["square_avg"][...] = 0.0
    for g in future:
        fresh.step(g)
    for k in params:
        np.testing.assert_array_equal(fresh_params[k], expected[k])


def test_load_state_dict_without_entries_resets_state():
    params = _model()
    opt = Adagrad(params, initial_accumulator_value=0.5)
    empty = opt.state_dict()
    opt.step(_grads_like(params, np.random.default_rng(0)))
    opt.load_state_dict(empty)
    assert opt.state_dict()["state"] == {}
    other = _model()
    twin = Adagrad(other, initial_accumulator_value=0.5)
    for k in params:
        params[k][...] = other[k]
    g = _grads_like(params, np.random.default_rng(1))
    opt.step(g)
    twin.step(g)
    for k in params:
        np.testing.assert_array_equal(params[k], other[k])


# ---------------------------------------------------------------------------
# Hyperparameter messages (torch's wording)


@pytest.mark.parametrize("make, message", [
    (lambda p: SGD(p, lr=-1), "Invalid learning rate: -1"),
    (lambda p: Adam(p, eps=-1e-8), "Invalid epsilon value: -1e-08"),
    (lambda p: Adam(p, betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
    (lambda p: Adam(p, betas=(0.9, 1.5)), "Invalid beta parameter at index 1: 1.5"),
    (lambda p: AdamW(p, weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
    (lambda p: SGD(p, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    (lambda p: SGD(p, momentum=0.9, dampening=0.1, nesterov=True),
     "Nesterov momentum requires a momentum and zero dampening"),
    (lambda p: SGD(p, momentum=-0.5), "Invalid momentum value: -0.5"),
    (lambda p: RMSprop(p, alpha=-0.1), "Invalid alpha value: -0.1"),
    (lambda p: Adagrad(p, lr_decay=-1), "Invalid lr_decay value: -1"),
    (lambda p: Adagrad(p, initial_accumulator_value=-1),
     "Invalid initial_accumulator_value value: -1"),
    (lambda p: Momentum(p, beta=1.0), "Invalid beta value: 1.0"),
    (lambda p: Adam(p, lr=float("nan")), "Invalid learning rate: nan"),
])
def test_hyperparameter_messages(make, message):
    with pytest.raises(ValueError) as info:
        make(_model())
    # torch's sentence, then (for a range) the rule the value broke: one
    # message for every door
    assert str(info.value) == message or str(info.value).startswith(message + " (")


def test_constructor_defaults_match_torch():
    p = _model()
    assert SGD(p).defaults == dict(lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                                   nesterov=False, maximize=False)
    assert RMSprop(p).defaults == dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0,
                                       momentum=0, centered=False, maximize=False)
    assert Adam(p).defaults == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                                    amsgrad=False, maximize=False,
                                    decoupled_weight_decay=False)
    assert AdamW(p).defaults["weight_decay"] == 1e-2
    assert AdamW(p).defaults["decoupled_weight_decay"] is True
    assert Adagrad(p).defaults == dict(lr=1e-2, lr_decay=0, weight_decay=0,
                                       initial_accumulator_value=0, eps=1e-10,
                                       maximize=False)
    assert Momentum(p, 0.01).defaults == dict(lr=0.01, beta=0.9, weight_decay=0,
                                              maximize=False)
    with pytest.raises(TypeError):
        SGD(p, 0.1, 0.9, 0, 0, False, False)    # maximize is keyword-only
    # torch's classes first, then whatever else the rule table holds
    assert optim.__all__[:7] == ["Optimizer", "SGD", "Momentum", "RMSprop", "Adam",
                                 "AdamW", "Adagrad"]


# ---------------------------------------------------------------------------
# Bad inputs: a table; every array and the optimizer's state stay as they were


def _overlapping():
    base = np.zeros(10)
    return [base[:6], base[4:]]


def _bad_construction():
    m = _model()
    ro = _model()
    ro["b1"].flags.writeable = False
    return [
        ("bare-ndarray", lambda: SGD(m["W1"]), TypeError, "wrap a single array"),
        ("int-param", lambda: SGD({**m, "W2": np.ones((1, 5), np.int64)}), TypeError, "'W2'.*float32 or float64"),
        ("float16-param", lambda: SGD({**m, "b1": m["b1"].astype(np.float16)}), TypeError, "'b1'"),
        ("byteswapped", lambda: SGD([m["W1"], m["b1"].astype(">f8")]), TypeError, "parameter 1 .*native byte order"),
        ("non-contiguous", lambda: SGD({**m, "W1": m["W1"].T}), ValueError, "'W1' must be C-contiguous"),
        ("read-only", lambda: SGD(ro), ValueError, "'b1' is read-only"),
        ("not-an-array", lambda: SGD([m["W1"], [1.0, 2.0]]), TypeError, "parameter 1 must be a numpy.ndarray"),
        ("duplicate", lambda: SGD([m["W1"], m["b1"], m["W1"]]), ValueError, "parameter 2 overlaps parameter 0|parameter 0 overlaps parameter 2"),
        ("overlap", lambda: SGD(_overlapping()), ValueError, "overlaps"),
        ("empty", lambda: SGD([]), ValueError, "empty parameter list"),
        ("group-without-params", lambda: SGD([{"lr": 0.1}]), ValueError, "group 0 has no 'params'"),
        ("mixed-groups", lambda: SGD([{"params": [m["W1"]]}, m["b1"]]), TypeError, "all arrays or all group dicts"),
        ("group-bad-lr", lambda: SGD([{"params": [m["W1"]]}, {"params": [m["b1"]], "lr": -2}]), ValueError, "Invalid learning rate: -2"),
        ("non-str-name", lambda: SGD({1: m["W1"]}), TypeError, "names must be str"),
        ("duplicate-names", lambda: SGD([{"params": {"a": m["W1"]}}, {"params": {"a": m["b1"]}}]), ValueError, "unique"),
        ("string-lr", lambda: Adam(m, lr="0.1"), TypeError, "lr must be a real number"),
        ("int-maximize", lambda: Adam(m, maximize=1), TypeError, "maximize must be a bool"),
        ("bad-skip-flag", lambda: Adam(m, skip_nonfinite="yes"), TypeError, "skip_nonfinite"),
        ("bad-betas", lambda: Adam(m, betas=0.9), TypeError, "betas must be a pair"),
    ], [*m.values(), *ro.values()]


@pytest.mark.parametrize("index", range(len(_bad_construction()[0])),
                         ids=[c[0] for c in _bad_construction()[0]])
def test_bad_construction(index):
    cases, arrays = _bad_construction()
    _, make, exc, match = cases[index]
    before = _snapshot(None, arrays)
    with pytest.raises(exc, match=match):
        make()
    assert _snapshot(None, arrays) == before


def _stepped(cls=Adam, params=None, steps=2, **config):
    params = _model() if params is None else params
    opt = cls(params, **config)
    rng = np.random.default_rng(11)
    for _ in range(steps):
        opt.step(_grads_like(params, rng))
    return opt, params, _grads_like(params, rng)


def _values(x):
    return list(x.values()) if isinstance(x, dict) else list(x)


def _mixed_params():
    m = _model()
    m["b1"] = m["b1"].astype(np.float32)
    m["b2"] = m["b2"].astype(np.float32)
    return m


def _bad_steps():
    """(id, build) where build() -> (opt, arrays to watch, action, exc, match)."""
    def case(mutate, exc, match, cls=Adam, params=None, **config):
        def build():
            opt, params_, grads = _stepped(cls, params() if params else None, **config)
            action = mutate(opt, params_, grads)
            arrays = [*_values(params_), *(g for g in _values(grads) if g is not None)]
            return opt, arrays, action, exc, match
        return build

    def two_groups(opt_cls=Adam, **config):
        m = _model()
        opt = opt_cls([{"params": {"W1": m["W1"], "b1": m["b1"]}},
                       {"params": {"W2": m["W2"], "b2": m["b2"]}, "lr": 0.5}], **config)
        rng = np.random.default_rng(1)
        for _ in range(2):
            opt.step(_grads_like(m, rng))
        return opt, m, _grads_like(m, rng)

    def grouped(mutate, exc, match):
        def build():
            opt, m, grads = two_groups()
            action = mutate(opt, m, grads)
            return opt, [*m.values(), *(g for g in grads.values() if g is not None)], action, exc, match
        return build

    def setitem(d, k, v):
        d[k] = v
        return d

    return [
        ("ndarray-grads", case(lambda o, p, g: lambda: o.step(g["W1"]), TypeError, "grads must be a list or dict")),
        ("list-for-dict-params", case(lambda o, p, g: lambda: o.step(list(g.values())), TypeError, "must be a dict")),
        ("missing-key", case(lambda o, p, g: lambda: o.step({k: v for k, v in g.items() if k != "b2"}), ValueError, r"missing \['b2'\]")),
        ("extra-key", case(lambda o, p, g: lambda: o.step({**g, "W9": g["W1"]}), ValueError, r"unexpected \['W9'\]")),
        ("wrong-shape", case(lambda o, p, g: lambda: o.step(setitem(g, "b1", np.zeros((1, 5)))), ValueError, r"grad of parameter 'b1' has shape \(1, 5\)")),
        ("transposed", case(lambda o, p, g: lambda: o.step(setitem(g, "W1", np.zeros((2, 5)))), ValueError, "'W1'")),
        ("wrong-dtype", case(lambda o, p, g: lambda: o.step(setitem(g, "b1", g["b1"].astype(np.float32))), TypeError, "'b1'")),
        ("int-grad", case(lambda o, p, g: lambda: o.step(setitem(g, "b1", np.ones((5, 1), np.int64))), TypeError, "'b1'")),
        ("list-grad", case(lambda o, p, g: lambda: o.step(setitem(g, "b2", [[1.0]])), TypeError, "grad of parameter 'b2' must be a numpy.ndarray")),
        ("non-contiguous-grad", case(lambda o, p, g: lambda: o.step(setitem(g, "W1", np.zeros((2, 5)).T)), ValueError, "'W1'")),
        ("grad-is-param", case(lambda o, p, g: lambda: o.step(setitem(g, "W2", p["W2"])), ValueError, "overlaps")),
        ("shared-grad", case(lambda o, p, g: lambda: o.step({**g, "b2": g["W2"].reshape(-1)[:1].reshape(1, 1)}), ValueError, "overlaps")),
        ("negative-lr-later", case(lambda o, p, g: (setitem(o.param_groups[0], "lr", -1), lambda: o.step(g))[1], ValueError, "Invalid learning rate")),
        ("bad-betas-later", case(lambda o, p, g: (setitem(o.param_groups[0], "betas", (0.9, 1.0)), lambda: o.step(g))[1], ValueError, "beta parameter at index 1")),
        ("read-only-later", case(lambda o, p, g: (setattr(p["b2"].flags, "writeable", False), lambda: o.step(g))[1], ValueError, "'b2'")),
        ("list-grads-wrong-count", case(lambda o, p, g: lambda: o.step(g[:3]), ValueError, "got 3 gradients for 4 parameters", params=lambda: list(_model().values()))),
        ("list-params-dict-grads", case(lambda o, p, g: lambda: o.step({"a": 1}), TypeError, "must be a list", params=lambda: list(_model().values()))),
        ("group2-bad-shape", grouped(lambda o, m, g: lambda: o.step(setitem(g, "b2", np.zeros(3))), ValueError, "'b2'")),
        ("group2-bad-dtype", grouped(lambda o, m, g: lambda: o.step(setitem(g, "W2", g["W2"].astype(np.float32))), TypeError, "'W2'")),
        ("group2-bad-lr", grouped(lambda o, m, g: (setitem(o.param_groups[1], "lr", -3), lambda: o.step(g))[1], ValueError, "Invalid learning rate: -3")),
        ("group2-non-contiguous", grouped(lambda o, m, g: lambda: o.step(setitem(g, "W2", np.zeros((1, 10))[:, ::2])), ValueError, "'W2'")),
        ("group2-grad-aliases-group1", grouped(lambda o, m, g: lambda: o.step(setitem(g, "b2", m["b1"][:1])), ValueError, "overlaps")),
        ("group2-read-only", grouped(lambda o, m, g: (setattr(m["W2"].flags, "writeable", False), lambda: o.step(g))[1], ValueError, "'W2' is read-only")),
        ("mixed-second-bucket-dtype", case(lambda o, p, g: lambda: o.step(setitem(g, "b2", g["b2"].astype(np.float64))), TypeError, "'b2'", params=_mixed_params)),
        ("mixed-second-bucket-nan-skip", case(lambda o, p, g: lambda: o.step(setitem(g, "b2", np.full((1, 1), np.nan))), TypeError, "'b2'", params=_mixed_params, skip_nonfinite=True)),
        ("skip-nonfinite-bad-dtype", case(lambda o, p, g: lambda: o.step(setitem(g, "W1", np.full((5, 2), np.nan, np.float32))), TypeError, "'W1'", skip_nonfinite=True)),
        ("diverged-steps-bad-grad", case(lambda o, p, g: (o.step({**g, "W1": None}), lambda: o.step(setitem(g, "W2", np.zeros((1, 10))[:, ::2])))[1], ValueError, "'W2' must be C-contiguous")),
    ]


@pytest.mark.parametrize("index", range(len(_bad_steps())), ids=[c[0] for c in _bad_steps()])
def test_bad_step_changes_nothing(index):
    opt, arrays, action, exc, match = _bad_steps()[index][1]()
    before = _snapshot(opt, arrays)
    with pytest.raises(exc, match=match):
        action()
    assert _snapshot(opt, arrays) == before


def _bad_state_dicts():
    def edit(fn):
        def build(sd):
            fn(sd)
            return sd
        return build

    def first(sd):
        return sd["state"][0]

    return [
        ("not-a-dict", lambda sd: [sd], "must be a dict"),
        ("format", edit(lambda sd: sd.update(format="torch")), "not a fastopt state_dict"),
        ("version", edit(lambda sd: sd.update(version=2)), "unsupported state_dict version 2"),
        ("optimizer", edit(lambda sd: sd.update(optimizer="SGD")), "for optimizer 'SGD'"),
        ("group-count", edit(lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0]))), "2 parameter groups"),
        ("param-count", edit(lambda sd: sd["param_groups"][0]["params"].pop()), "has 3 parameters"),
        ("names", edit(lambda sd: sd["param_groups"][0].update(param_names=["a", "b", "c", "d"])), "names parameters"),
        ("names-not-a-list", edit(lambda sd: sd["param_groups"][0].update(param_names=None)), "names parameters None"),
        ("bad-lr", edit(lambda sd: sd["param_groups"][0].update(lr=-1)), "Invalid learning rate: -1"),
        ("bad-betas-type", edit(lambda sd: sd["param_groups"][0].update(betas="x")), "betas must be a pair"),
        ("missing-hyper", edit(lambda sd: sd["param_groups"][0].pop("eps")), r"lacks hyperparameters \['eps'\]"),
        ("shape", edit(lambda sd: first(sd).update(exp_avg=np.zeros((2, 5)))), r"state\[0\]\['exp_avg'\] must be a float64 array of shape \(5, 2\)"),
        ("dtype", edit(lambda sd: first(sd).update(exp_avg=first(sd)["exp_avg"].astype(np.float32))), "must be a float64 array"),
        ("not-array", edit(lambda sd: first(sd).update(exp_avg=[[0.0] * 2] * 5)), "got list"),
        ("negative-step", edit(lambda sd: first(sd).update(step=-1)), "step must be >= 0"),
        ("float-step", edit(lambda sd: first(sd).update(step=2.0)), "step must be an int"),
        ("bool-step", edit(lambda sd: first(sd).update(step=True)), "step must be an int"),
        ("huge-step", edit(lambda sd: first(sd).update(step=2 ** 62)), "step must be"),
        ("unknown-kind", edit(lambda sd: first(sd).update(momentum_buffer=np.zeros((5, 2)))), "unknown state 'momentum_buffer'"),
        ("missing-kind", edit(lambda sd: first(sd).pop("exp_avg_sq")), r"lacks states \['exp_avg_sq'\]"),
        ("unknown-index", edit(lambda sd: sd["state"].update({9: {"step": 1}})), r"state\[9\]"),
        ("bool-index", edit(lambda sd: sd["state"].update({True: sd["state"].pop(1)})), r"state\[True\]"),
        ("skipped", edit(lambda sd: sd.update(skipped_steps=-1)), "skipped_steps"),
        ("no-state", edit(lambda sd: sd.pop("state")), "'state'"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_state_dicts())),
                         ids=[c[0] for c in _bad_state_dicts()])
def test_bad_state_dict_changes_nothing(index):
    _, edit, match = _bad_state_dicts()[index]
    opt, params, _ = _stepped(Adam, lr=0.01)
    opt.param_groups[0]["lr"] = 0.02            # differs from the saved value
    sd = opt.state_dict()
    sd["param_groups"][0]["lr"] = 0.01
    for entry in sd["state"].values():
        for k in entry:
            if k != "step":
                entry[k] = entry[k] + 1.0       # differs from the live state
    bad = edit(sd)
    before = _snapshot(opt, list(params.values()))
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(bad)
    assert _snapshot(opt, list(params.values())) == before
    assert opt.param_groups[0]["lr"] == 0.02


# ---------------------------------------------------------------------------
# Threads


def test_two_threads_sharing_an_optimizer_serialize():
    rng = np.random.default_rng(0)
    shapes = [(300, 200), (200,), (200, 100), (100,)]   # above the no-GIL threshold
    start = [rng.standard_normal(s) for s in shapes]
    grads = [rng.standard_normal(s) for s in shapes]
    shared = [p.copy() for p in start]
    serial = [p.copy() for p in start]
    opt = Adam(shared, lr=1e-3, amsgrad=True)
    n = 150
    barrier = threading.Barrier(2)
    errors = []

    def worker():
        try:
            barrier.wait()
            for _ in range(n):
                opt.step(grads)
                opt.state_dict() if _ % 50 == 0 else None
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ref = Adam(serial, lr=1e-3, amsgrad=True)
    for _ in range(2 * n):
        ref.step(grads)
    assert {e["step"] for e in opt.state_dict()["state"].values()} == {2 * n}
    for a, b in zip(shared, serial):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls, before, after", [
    (SGD, dict(lr=0.1), dict(momentum=0.9)),
    (RMSprop, dict(), dict(centered=True, momentum=0.5)),
    (Adam, dict(), dict(amsgrad=True)),
])
def test_state_of_an_option_switched_on_later_loads_and_starts_afresh(cls, before, after):
    """A state saved after an option was switched on, before any step used
    it, lacks that option's buffer: it loads, and the buffer starts at zero
    as it would have without the round trip."""
    rng = np.random.default_rng(3)
    params = {"w": rng.standard_normal(7), "b": rng.standard_normal(2)}
    twin = {k: v.copy() for k, v in params.items()}
    grads = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(3)]
    a, b = cls(params, **before), cls(twin, **before)
    a.step(grads[0])
    b.step(grads[0])
    a.param_groups[0].update(after)
    b.param_groups[0].update(after)
    b.load_state_dict(a.state_dict())
    for g in grads[1:]:
        a.step(g)
        b.step(g)
    for k in params:
        np.testing.assert_array_equal(params[k], twin[k])


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cls", [getattr(fastopt, name) for rule in RULES.values()
                                 for name, *_ in rule.classes()],
                         ids=lambda cls: cls.__name__)
def test_every_class_resumes_bit_for_bit(cls, dtype):
    """Every class of the table, at its defaults: a state_dict taken
    mid-trajectory and loaded into a fresh optimizer continues with the same
    bits."""
    check_resume(cls, {}, dtype, STEPS // 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_state_buffers_sit_apart_from_the_parameter_within_a_page(dtype):
    """Buffers of 64 KiB or more start at distinct offsets modulo 4 KiB,
    away from the first parameter's (4 KiB aliasing), and still hold their
    start values: Adagrad's sum starts at initial_accumulator_value,
    Rprop's step sizes at lr, accumulation at zeros."""
    rng = np.random.default_rng(5)
    n = (1 << 16) // np.dtype(dtype).itemsize + 3
    p = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    opt = fastopt.Adagrad([p], lr=0.1, initial_accumulator_value=0.5,
                          ema_decay=0.9, accumulation_steps=2)
    opt.step([g])
    opt.step([g])
    plan = opt._plans[0]
    offsets = [(a.ctypes.data - p.ctypes.data) % 4096
               for a in (p, plan.state(0)[0], plan.ema()[0], plan.accumulated()[0])]
    assert len(set(offsets)) == 4, offsets
    assert all(o % 64 == 0 for o in offsets)
    state = opt.state_dict()["state"][0]
    np.testing.assert_array_equal(state["sum"], dtype(0.5) + g * g)
    rp = rng.standard_normal(n).astype(dtype)
    rprop = fastopt.Rprop([rp], lr=0.01)
    rprop.step([g])
    np.testing.assert_array_equal(rprop.state_dict()["state"][0]["step_size"],
                                  np.full(n, 0.01, dtype))
