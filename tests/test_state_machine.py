"""A Hypothesis state machine: the optimizer classes against a small NumPy
model of an optimizer built from fastopt.reference.

The model keeps, per parameter, a step count and a dict of states, and per
group the hyperparameters; a step calls the reference rule on each parameter
that has a gradient.  Rules: step (random None grads), change a group's
hyperparameters, state_dict / load_state_dict (the current state or an older
snapshot), save / load through a file.  After every rule the optimizer's
parameters and state equal the model's bit for bit.
"""
import copy
import os
import shutil
import tempfile

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant,
                                 precondition, rule)

import fastopt
from fastopt import reference
from fastopt.optim import SGD, Adagrad, Adam, AdamW, Momentum, RMSprop
from fastopt.rules import RULES

# ---------------------------------------------------------------------------
# The model

# From the rule table, per class: the state kinds a group's hyperparameters
# use, in the reference rule's argument order (None: slot unused), the call
# of the rule, and the group's hyperparameter names.

def _model(rule):
    kernel = [h.name for h in rule.kernel_hypers]

    def kinds(h):
        return [s.state_key if s.when is None or h[s.when] else None
                for s in rule.states] + list(rule.scalar_keys)

    def call(p, g, s, t, h):
        step = {} if rule.step is None else {"step": t}
        getattr(reference, rule.name)(p, g, *s, **step, **{k: h[k] for k in kernel})
    return kinds, call


CLASS_RULE = {getattr(fastopt, name): rule for rule in RULES.values()
              for name, *_ in rule.classes()}
MODEL = {cls: _model(rule) for cls, rule in CLASS_RULE.items()}
HYPER_NAMES = {cls: tuple(h.name for h in rule.hypers)
               for cls, rule in CLASS_RULE.items()}
_INITIAL = {s.state_key: s.initial for rule in RULES.values() for s in rule.states}
_INITIAL.update((s.name, s.initial) for rule in RULES.values() for s in rule.scalar_states)
SCALAR_KINDS = {s.name for rule in RULES.values() for s in rule.scalar_states}


def initial(h, kind):
    """A state's start value: a number, or a hyperparameter of the group."""
    start = _INITIAL[kind]
    return float(h[start]) if isinstance(start, str) else float(start)


class RefOptimizer:
    """The optimizer's semantics in plain NumPy: per-parameter step counts
    (torch's), states created at their initial value when first used.

    ``groups[i]`` is the hyperparameter dict of parameter i (shared by the
    parameters of a group; read at every step)."""

    def __init__(self, cls, params, groups):
        self.cls = cls
        self.kinds, self.rule = MODEL[cls]
        self.params = params
        self.groups = groups
        self.steps = [0] * len(params)
        self.states = [{} for _ in params]

    def hyper(self, i):
        return {k: self.groups[i][k] for k in HYPER_NAMES[self.cls]}

    def step(self, grads):
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if g is None:
                continue
            h = self.hyper(i)
            states = []
            for kind in self.kinds(h):
                if kind in SCALAR_KINDS and kind not in self.states[i]:
                    # per-tensor scalar states: float64, whatever p's dtype
                    self.states[i][kind] = np.array(initial(h, kind))
                elif kind is not None and kind not in self.states[i]:
                    self.states[i][kind] = np.full_like(p, initial(h, kind))
                states.append(None if kind is None else self.states[i][kind])
            self.steps[i] += 1
            self.rule(p, g, states, self.steps[i], h)


def _bits(a, nan_sign):
    """a's bytes; with nan_sign=False every NaN counts as the same NaN."""
    if not nan_sign and np.isnan(a).any():
        a = a.copy()
        a[np.isnan(a)] = np.nan
    return a.tobytes()


def assert_same(opt, params, ref, nan_sign=True):
    """params and opt's state equal ref's bit for bit (with nan_sign=False:
    except for the sign of NaNs).

    A kind the optimizer holds and the model never created (a buffer made
    for its bucket, not yet used by this parameter) must be at its initial
    value."""
    for i, (p, r) in enumerate(zip(params, ref.params)):
        assert p.dtype == r.dtype and _bits(p, nan_sign) == _bits(r, nan_sign), \
            f"param {i}"
    state = opt.state_dict()["state"]
    for i in range(len(params)):
        if ref.steps[i] == 0:
            assert i not in state, f"state for parameter {i} that never stepped"
            continue
        entry = state[i]
        assert entry["step"] == ref.steps[i], f"step of parameter {i}"
        assert set(ref.states[i]) <= set(entry) - {"step"}, i
        for kind, value in entry.items():
            if kind == "step":
                continue
            expect = ref.states[i].get(kind)
            if expect is None:
                expect = np.full_like(value, initial(ref.hyper(i), kind))
            assert value.dtype == expect.dtype
            assert _bits(value, nan_sign) == _bits(expect, nan_sign), \
                f"{kind} of parameter {i}"


# ---------------------------------------------------------------------------
# The machine

SHAPES = [("w", (3, 2), np.float64), ("b", (3,), np.float32),
          ("v", (5,), np.float32), ("c", (1,), np.float64)]
GROUP_OF = [0, 0, 1, 1]
# a rule with a matrix step (Muon) takes matrices: the same model as such
MATRIX_SHAPES = [("w", (3, 2), np.float64), ("b", (1, 3), np.float32),
                 ("v", (5, 1), np.float32), ("c", (1, 1), np.float64)]


def _shapes(cls):
    return MATRIX_SHAPES if cls.rule.matrix else SHAPES

OPTIONS = [
    (SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    (SGD, dict(lr=0.1, momentum=0.0)),
    (Momentum, dict(lr=0.1, beta=0.7)),
    (RMSprop, dict(lr=0.01, centered=True, momentum=0.5)),
    (Adam, dict(lr=0.01, amsgrad=False, weight_decay=0.1)),
    (AdamW, dict(lr=0.01, amsgrad=True)),
    (Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.2)),
]
# every other class of the table, with every state its rule has switched on
OPTIONS += [(cls, {s.when: True if rule.hyper(s.when).check == "flag" else 0.5
                   for s in rule.states if s.when is not None})
            for cls, rule in CLASS_RULE.items()
            if cls not in {c for c, _ in OPTIONS}]
# hyperparameters a rule may change between steps, with values to pick from
CHANGES = {
    "lr": [0.0, 0.003, 0.05, 0.2],
    "weight_decay": [0.0, 0.1],
    "maximize": [False, True],
    "momentum": [0.0, 0.5, 0.9],
    "dampening": [0.0, 0.25],
    "beta": [0.5, 0.95],
    "alpha": [0.9, 0.99],
    "centered": [False, True],
    "eps": [1e-8, 1e-3],
    "betas": [(0.9, 0.999), (0.5, 0.9)],
    "amsgrad": [False, True],
    "lr_decay": [0.0, 0.1],
}


class OptimizerVsModel(RuleBasedStateMachine):

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="fastopt-sm-")
        self.snapshots = []   # (optimizer state_dict, model copy)
        self.saved = None     # model copy matching the file

    def teardown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize(option=st.sampled_from(OPTIONS), seed=st.integers(0, 2 ** 16),
                second_lr=st.sampled_from([None, 0.02]))
    def build(self, option, seed, second_lr):
        cls, kw = option
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.cls = cls
        self.names = [n for n, _, _ in _shapes(cls)]
        self.params = [rng.standard_normal(s).astype(d) for _, s, d in _shapes(cls)]
        self.model_params = [p.copy() for p in self.params]
        groups = [{"params": {}}, {"params": {}}]
        for (n, _, _), p, k in zip(_shapes(cls), self.params, GROUP_OF):
            groups[k]["params"][n] = p
        if second_lr is not None:
            groups[1]["lr"] = second_lr
        self.opt = cls(groups, **kw)
        self.model_groups = [{k: g[k] for k in HYPER_NAMES[cls]}
                             for g in self.opt.param_groups]
        self.ref = RefOptimizer(cls, self.model_params,
                                [self.model_groups[k] for k in GROUP_OF])

    def _model_copy(self):
        return (copy.deepcopy(self.model_groups), list(self.ref.steps),
                [{k: v.copy() for k, v in s.items()} for s in self.ref.states])

    def _model_restore(self, saved):
        groups, steps, states = saved
        for mine, theirs in zip(self.model_groups, groups):
            mine.clear()
            mine.update(copy.deepcopy(theirs))
        self.ref.steps = list(steps)
        self.ref.states = [{k: v.copy() for k, v in s.items()} for s in states]

    @rule(nones=st.lists(st.booleans(), min_size=4, max_size=4), scale=st.sampled_from(
        [1.0, 1e-3, 100.0]))
    def step(self, nones, scale):
        grads = {}
        for (n, s, d), none in zip(_shapes(self.cls), nones):
            grads[n] = None if none else (self.rng.standard_normal(s) * scale).astype(d)
        assert self.opt.step(grads) is True
        self.ref.step([grads[n] for n in self.names])

    @rule(group=st.integers(0, 1), data=st.data())
    def change_hyperparameter(self, group, data):
        g = self.opt.param_groups[group]

        def fits(key, value):
            # a tuple only where the rule takes one of that length (pairs
            # of betas are not AdEMAMix's three)
            now = g[key]
            return (not isinstance(value, tuple)
                    or isinstance(now, tuple) and len(now) == len(value))
        names = [k for k in HYPER_NAMES[self.cls]
                 if k in CHANGES and any(fits(k, v) for v in CHANGES[k])]
        key = data.draw(st.sampled_from(names))
        value = data.draw(st.sampled_from([v for v in CHANGES[key] if fits(key, v)]))
        if self.cls is SGD and g["nesterov"] and key in ("momentum", "dampening"):
            return
        g[key] = value
        self.model_groups[group][key] = value

    @rule()
    def snapshot(self):
        self.snapshots.append((self.opt.state_dict(), self._model_copy()))

    @precondition(lambda self: self.snapshots)
    @rule(data=st.data())
    def load_snapshot(self, data):
        sd, model = data.draw(st.sampled_from(self.snapshots))
        self.opt.load_state_dict(sd)
        self._model_restore(model)

    @rule()
    def round_trip_state_dict(self):
        self.opt.load_state_dict(self.opt.state_dict())

    @rule()
    def save(self):
        self.opt.save(os.path.join(self.dir, "opt.npz"))
        self.saved = self._model_copy()

    @precondition(lambda self: self.saved is not None)
    @rule()
    def load(self):
        self.opt.load(os.path.join(self.dir, "opt.npz"))
        self._model_restore(self.saved)

    @invariant()
    def same_as_model(self):
        if not hasattr(self, "opt"):
            return
        assert_same(self.opt, self.params, self.ref)
        for g, m in zip(self.opt.param_groups, self.model_groups):
            assert {k: g[k] for k in m} == m
        assert sorted(os.listdir(self.dir)) in ([], ["opt.npz"])


OptimizerVsModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("FASTOPT_SM_EXAMPLES", "60")),
    stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestOptimizerVsModel = OptimizerVsModel.TestCase
