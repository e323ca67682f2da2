"""Weight EMA (``ema_decay``) and gradient accumulation (``accumulation_steps``)
around every rule, fused into the step's pass over memory.

The model these tests hold fastopt to, bit for bit: the rule's NumPy
reference stepping each parameter; after each step the average
``ema = lerp(ema, p, w)`` with w = 1 - ema_decay, as torch.lerp computes it
(``ema + w * (p - ema)`` for w < 0.5, ``p - (p - ema) * (1 - w)`` otherwise),
starting as a copy of the parameter after its first step
(torch.optim.swa_utils.AveragedModel with get_ema_multi_avg_fn, which is
also compared directly); with accumulation, the k-th call steps on
``(((g_1 + g_2) + ...) + g_k) / k`` (a missing gradient adds nothing), as
optax.MultiSteps steps every k-th call.
"""
import contextlib

import numpy as np
import pytest

import fastopt
from fastopt import _core, reference
from fastopt.flat import FlatParams
from fastopt.rules import RULES

# rules with one pass, with per-tensor scalar states (NAdam) and with two
# passes (LAMB), each with settings that use their states
CASES = {
    "Adam": dict(lr=1e-2),
    "SGD": dict(lr=1e-2, momentum=0.9, nesterov=True),
    "NAdam": dict(lr=1e-2),
    "LAMB": dict(lr=1e-2, weight_decay=0.01),
}
SHAPES = [(33, 5), (7,), (4097,)]


def _rule_of(cls_name):
    for rule in RULES.values():
        for name, fixed, defaults, _ in rule.classes():
            if name == cls_name:
                return rule, fixed, defaults
    raise KeyError(cls_name)


class Model:
    """The rule's reference per parameter, with the average and the
    accumulated gradients kept beside it."""

    def __init__(self, cls_name, params, hp, ema_decay=None, k=1):
        self.rule, fixed, defaults = _rule_of(cls_name)
        self.hp = {h.name: defaults.get(h.name, h.default) for h in self.rule.hypers}
        self.hp.update(fixed)
        self.hp.update(hp)
        self.p = [x.copy() for x in params]
        self.states = [None] * len(params)
        self.scalars = [None] * len(params)
        self.step_count = [0] * len(params)
        self.ema = [None] * len(params)
        self.w = None if ema_decay is None else 1.0 - ema_decay
        self.k = k
        self.acc = [None] * len(params)
        self.calls = 0

    def _states(self, i):
        if self.states[i] is None:
            x = self.p[i]
            self.states[i] = [
                np.full_like(x, float(self.hp[s.initial]) if isinstance(s.initial, str)
                             else s.initial)
                if s.when is None or self.hp[s.when] else None
                for s in self.rule.states]
            self.scalars[i] = [
                np.full(1, float(self.hp[s.initial]) if isinstance(s.initial, str)
                        else float(s.initial))
                for s in self.rule.scalar_states]
        return self.states[i]

    def _step_one(self, i, g):
        states = self._states(i)
        self.step_count[i] += 1
        kw = {h.name: self.hp[h.name] for h in self.rule.kernel_hypers}
        if self.rule.step is not None:
            kw["step"] = self.step_count[i]
        getattr(reference, self.rule.name)(self.p[i], g, *states, *self.scalars[i], **kw)
        if self.w is None:
            return
        p = self.p[i]
        if self.ema[i] is None:
            self.ema[i] = p.copy()
        elif self.w < 0.5:
            self.ema[i] = self.ema[i] + self.w * (p - self.ema[i])
        else:
            self.ema[i] = p - (p - self.ema[i]) * (1.0 - self.w)

    def step(self, grads):
        self.calls += 1
        if self.k == 1:
            for i, g in enumerate(grads):
                if g is not None:
                    self._step_one(i, g)
            return
        for i, g in enumerate(grads):
            if g is not None:
                self.acc[i] = g.copy() + 0 if self.acc[i] is None else self.acc[i] + g
        if self.calls % self.k == 0:
            for i, a in enumerate(self.acc):
                if a is not None:
                    self._step_one(i, a / self.p[i].dtype.type(self.k))
            self.acc = [None] * len(self.p)


def _problem(dtype, steps, rng, none_every=0):
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[(rng.standard_normal(s) * 0.1).astype(dtype) for s in SHAPES]
             for _ in range(steps)]
    if none_every:
        for t, gs in enumerate(grads):
            if t % none_every == 1:
                gs[1] = None
    return params, grads


def _same(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape, what
    np.testing.assert_array_equal(a, b, err_msg=what)


def _check(opt, ps, model):
    for i, (p, q) in enumerate(zip(ps, model.p)):
        _same(p, q, f"parameter {i}")
    state = opt.state_dict()["state"]
    for i, e in enumerate(model.ema):
        if e is not None:
            _same(state[i]["ema"], e, f"ema {i}")
        else:
            assert "ema" not in state.get(i, {})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", list(CASES))
@pytest.mark.parametrize("decay", [0.9, 0.3])
def test_ema_is_the_model_bit_for_bit(cls, dtype, decay, exec_env, rng):
    params, grads = _problem(dtype, 6, rng, none_every=3)
    ps = [p.copy() for p in params]
    opt = getattr(fastopt, cls)(ps, ema_decay=decay, **CASES[cls])
    model = Model(cls, params, CASES[cls], ema_decay=decay)
    for gs in grads:
        opt.step(gs)
        model.step(gs)
    _check(opt, ps, model)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", list(CASES))
@pytest.mark.parametrize("k", [2, 3])
def test_accumulation_is_the_model_bit_for_bit(cls, dtype, k, exec_env, rng):
    """Windows of k calls with None gradients among them: each k-th call
    steps on the mean, summed in call order, and only it returns True."""
    params, grads = _problem(dtype, 3 * k, rng, none_every=2)
    ps = [p.copy() for p in params]
    opt = getattr(fastopt, cls)(ps, accumulation_steps=k, ema_decay=0.8, **CASES[cls])
    model = Model(cls, params, CASES[cls], ema_decay=0.8, k=k)
    for t, gs in enumerate(grads, start=1):
        assert opt.step(gs) is (t % k == 0)
        model.step(gs)
        _check(opt, ps, model)


def test_a_parameter_without_gradients_in_the_window_does_not_step(rng):
    params, grads = _problem(np.float64, 3, rng)
    for gs in grads:
        gs[0] = None
    ps = [p.copy() for p in params]
    opt = fastopt.Adam(ps, accumulation_steps=3)
    for gs in grads:
        opt.step(gs)
    _same(ps[0], params[0], "untouched parameter")
    state = opt.state_dict()["state"]
    assert 0 not in state and state[1]["step"] == 1
    # a gradient in one call of the window is enough
    grads[1][0] = np.ones(SHAPES[0])
    opt2 = fastopt.Adam([p.copy() for p in params], accumulation_steps=3)
    for gs in grads:
        opt2.step(gs)
    assert opt2.state_dict()["state"][0]["step"] == 1


@pytest.mark.parametrize("where", [0, 2])
def test_nonfinite_gradient_skips_the_whole_window(where, rng):
    """skip_nonfinite: a NaN in any micro-batch skips the accumulated step
    (nothing changes, the buffer is cleared, skipped_steps counts it); the
    next window starts afresh."""
    params, grads = _problem(np.float64, 6, rng)
    grads[where][2][5] = np.nan
    ps = [p.copy() for p in params]
    opt = fastopt.Adam(ps, accumulation_steps=3, skip_nonfinite=True, ema_decay=0.5)
    results = [opt.step(gs) for gs in grads[:3]]
    assert results == [False, False, False] and opt.skipped_steps == 1
    for p, q in zip(ps, params):
        _same(p, q, "parameter")
    assert opt.state_dict()["state"] == {}
    assert opt.step(grads[3]) is False and opt.step(grads[4]) is False
    assert opt.step(grads[5]) is True
    model = Model("Adam", params, {}, ema_decay=0.5, k=3)
    for gs in grads[3:]:
        model.step(gs)
    _check(opt, ps, model)


def test_without_skip_nonfinite_nan_reaches_the_step(rng):
    params, grads = _problem(np.float64, 2, rng)
    grads[0][0][0, 0] = np.nan
    ps = [p.copy() for p in params]
    opt = fastopt.SGD(ps, lr=0.1, accumulation_steps=2)
    opt.step(grads[0])
    opt.step(grads[1])
    assert np.isnan(ps[0][0, 0]) and np.isfinite(ps[0][0, 1])


@pytest.mark.parametrize("cls", ["Adam", "LAMB"])
@pytest.mark.parametrize("stop", [1, 2, 4])
def test_state_dict_and_checkpoint_resume_mid_window(cls, stop, tmp_path, rng):
    """Saving after `stop` calls (inside a window of 3) and resuming in a
    new optimizer gives the same bits as never stopping."""
    params, grads = _problem(np.float32, 9, rng, none_every=4)
    kw = dict(accumulation_steps=3, ema_decay=0.75, **CASES[cls])
    ps = [p.copy() for p in params]
    whole = getattr(fastopt, cls)(ps, **kw)
    for gs in grads:
        whole.step(gs)
    qs = [p.copy() for p in params]
    first = getattr(fastopt, cls)(qs, **kw)
    for gs in grads[:stop]:
        first.step(gs)
    first.save(tmp_path / "ckpt.npz")
    sd = first.state_dict()
    assert sd["accumulation"]["count"] == stop % 3
    rs = [q.copy() for q in qs]
    for resumed in (getattr(fastopt, cls)(rs, **kw),):
        resumed.load(tmp_path / "ckpt.npz")
        for gs in grads[stop:]:
            resumed.step(gs)
    for a, b in zip(ps, rs):
        _same(a, b, "parameter")
    x, y = whole.state_dict(), resumed.state_dict()
    assert x["state"].keys() == y["state"].keys()
    for i in x["state"]:
        assert x["state"][i].keys() == y["state"][i].keys()
        for key in x["state"][i]:
            if key != "step":
                _same(np.asarray(x["state"][i][key]), np.asarray(y["state"][i][key]), key)


def test_ema_weights_swaps_exactly_and_back(rng):
    params, grads = _problem(np.float64, 4, rng)
    grads[0][2] = None           # parameter 2 gets its average one step later
    ps = [p.copy() for p in params]
    opt = fastopt.AdamW(ps, ema_decay=0.5)
    opt.step(grads[0])
    before = [p.copy() for p in ps]
    state = opt.state_dict()["state"]
    with opt.ema_weights() as same:
        assert same is opt
        _same(ps[0], state[0]["ema"], "average in place")
        _same(ps[2], before[2], "no average yet: own values")
        with pytest.raises(RuntimeError, match="inside ema_weights"):
            opt.step(grads[1])
        with pytest.raises(RuntimeError, match="already active"):
            with opt.ema_weights():
                pass
    for p, b in zip(ps, before):
        _same(p, b, "restored")
    # an exception inside the block restores too
    with contextlib.suppress(KeyError):
        with opt.ema_weights():
            raise KeyError
    for p, b in zip(ps, before):
        _same(p, b, "restored after an error")
    with pytest.raises(ValueError, match="ema_decay"):
        with fastopt.Adam([np.zeros(3)]).ema_weights():
            pass


@pytest.mark.parametrize("cls", ["Adam", "LAMB"])
def test_fused_neighbours_give_the_same_bits(cls, restore_config, rng):
    """Views of one buffer (FlatParams) are stepped as one tensor where the
    rule allows; EMA and accumulation keep the bits of separate arrays,
    on two threads splitting the arrays."""
    fastopt.set_num_threads(2)
    fastopt._core.set_parallel_threshold(1)
    params, grads = _problem(np.float32, 6, rng)
    flat = FlatParams([p.copy() for p in params])
    separate = [p.copy() for p in params]
    kw = dict(ema_decay=0.9, accumulation_steps=2, **CASES[cls])
    a = getattr(fastopt, cls)(flat.params, **kw)
    b = getattr(fastopt, cls)(separate, **kw)
    for gs in grads:
        for view, g in zip(flat.grads, gs):
            view[...] = g
        a.step(flat.grads)
        b.step(gs)
    for x, y in zip(flat.params, separate):
        _same(x, y, "parameter")
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    for i in sb:
        _same(sa[i]["ema"], sb[i]["ema"], "ema")


def test_ema_conforms_to_torch_averaged_model():
    torch = pytest.importorskip("torch")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    rng = np.random.default_rng(0)
    params, grads = _problem(np.float64, 50, rng)
    ps = [p.copy() for p in params]
    opt = fastopt.Adam(ps, lr=1e-2, ema_decay=0.95)
    module = torch.nn.ParameterList([torch.nn.Parameter(torch.from_numpy(p.copy()))
                                     for p in params])
    topt = torch.optim.Adam(module.parameters(), lr=1e-2)
    averaged = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(0.95))
    for gs in grads:
        opt.step(gs)
        for tp, g in zip(module, gs):
            tp.grad = torch.from_numpy(g.copy())
        topt.step()
        averaged.update_parameters(module)
    state = opt.state_dict()["state"]
    for i, tp in enumerate(averaged.module):
        np.testing.assert_allclose(state[i]["ema"], tp.detach().numpy(), rtol=1e-10)


@pytest.mark.parametrize("kw, error, match", [
    (dict(ema_decay=1.0), ValueError, "ema_decay"),
    (dict(ema_decay=-0.1), ValueError, "ema_decay"),
    (dict(ema_decay=float("nan")), ValueError, "ema_decay"),
    (dict(ema_decay="0.9"), TypeError, "ema_decay"),
    (dict(ema_decay=True), TypeError, "ema_decay"),
    (dict(accumulation_steps=0), ValueError, "accumulation_steps"),
    (dict(accumulation_steps=2.0), TypeError, "accumulation_steps"),
    (dict(accumulation_steps=True), TypeError, "accumulation_steps"),
])
def test_bad_settings_name_the_argument(kw, error, match):
    with pytest.raises(error, match=match):
        fastopt.Adam([np.zeros(3)], **kw)


def test_state_dicts_that_do_not_fit_are_refused_and_change_nothing(rng):
    params, grads = _problem(np.float64, 2, rng)
    with_both = fastopt.Adam([p.copy() for p in params], ema_decay=0.9,
                             accumulation_steps=2)
    for gs in grads[:3]:
        with_both.step(gs)
    with_both.step(grads[0])
    sd = with_both.state_dict()
    plain = fastopt.Adam([p.copy() for p in params])
    plain.step(grads[0])
    before = plain.state_dict()
    with pytest.raises(ValueError, match="ema_decay=None"):
        plain.load_state_dict(sd)
    no_acc = fastopt.Adam([p.copy() for p in params], ema_decay=0.9)
    with pytest.raises(ValueError, match="accumulation_steps=1"):
        no_acc.load_state_dict(sd)
    other_k = fastopt.Adam([p.copy() for p in params], ema_decay=0.9,
                           accumulation_steps=5)
    bad = dict(sd, accumulation=dict(sd["accumulation"], count=7))
    with pytest.raises(ValueError, match="count"):
        other_k.load_state_dict(bad)
    after = plain.state_dict()
    assert before.keys() == after.keys()
    for i in before["state"]:
        for key, value in before["state"][i].items():
            if key != "step":
                _same(value, after["state"][i][key], key)


@pytest.mark.parametrize("cls", [name for rule in RULES.values()
                                 for name, *_ in rule.classes()])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_class_moves_its_average_in_its_loop(cls, dtype, rng):
    """Every class of the table, at its defaults, with an average whose
    weight is below one half (moved inside the rule's own loop) after the
    first step (a copy): the model's bits."""
    rule, _, _ = _rule_of(cls)
    shapes = [(33, 5), (6, 4)] if getattr(rule, "matrix", "") else SHAPES
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ps = [p.copy() for p in params]
    opt = getattr(fastopt, cls)(ps, ema_decay=0.9)
    model = Model(cls, params, {}, ema_decay=0.9)
    for _ in range(3):
        gs = [(rng.standard_normal(s) * 0.1).astype(dtype) for s in shapes]
        opt.step(gs)
        model.step(gs)
    _check(opt, ps, model)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ema_beside_a_streamed_state(dtype, exec_env, rng):
    """ASGD before t0 stores ax around the cache from _core.STREAM_MIN_BYTES
    up; the average moved in the same loop stays the model's."""
    n = _core.STREAM_MIN_BYTES // np.dtype(dtype).itemsize + 1003
    params = [rng.standard_normal(n).astype(dtype), rng.standard_normal(5).astype(dtype)]
    ps = [p.copy() for p in params]
    opt = fastopt.ASGD(ps, lr=1e-2, ema_decay=0.9)
    model = Model("ASGD", params, dict(lr=1e-2), ema_decay=0.9)
    for _ in range(3):
        gs = [(rng.standard_normal(p.shape) * 0.1).astype(dtype) for p in params]
        opt.step(gs)
        model.step(gs)
    _check(opt, ps, model)
    ax = opt.state_dict()["state"][0]["ax"]
    _same(ax, model.states[0][0], "ax")
