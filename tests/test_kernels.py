"""The C kernels against the NumPy reference, bit for bit.

Every rule configuration of CONFIGS runs 20 consecutive steps (step = 1..20,
a new gradient each step) on every SIMD level this machine supports and at 1
and 2 threads (parallel threshold lowered to 1, see conftest.num_threads);
after every step the parameter and every state must equal the reference's
exactly (np.array_equal(equal_nan=True)).

Coverage is split to keep the run short:
  - test_parity_options: every config, at OPTION_SIZES;
  - test_parity_sizes: one representative config per rule at every size of
    SIZES (the largest with BIG_STEPS steps);
  - test_parity_unaligned: the representative configs on views that start 1
    to 15 elements into a larger buffer, each array at its own offset, and
    the buffer around each view must stay untouched;
  - test_many_equals_single: the *_many functions against one single-tensor
    call per tensor, zero-size tensors included.
"""
import dataclasses

import numpy as np
import pytest

import fastopt
import fastopt.rules
from fastopt import _core

DTYPES = [np.float32, np.float64]

SIZES = [0, 1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129,
         255, 256, 257, 1000, 4097, 65537, 1048577]
OPTION_SIZES = [0, 1, 7, 17, 64, 129, 257]
STEPS = 20
BIG = 1 << 20          # at and above this size: BIG_STEPS steps
BIG_STEPS = 3          # covers SGD's first-step path and two later steps


# ---------------------------------------------------------------------------
# The table of rule configurations

@dataclasses.dataclass(frozen=True)
class Config:
    id: str
    rule: str
    hp: dict


def _fmt(key, value):
    short = {"momentum": "mom", "dampening": "damp", "weight_decay": "wd",
             "decoupled_weight_decay": "decoupled", "lr_decay": "lrdecay",
             "initial_accumulator_value": "init"}.get(key, key)
    if value is True:
        return short
    return f"{short}{value:g}"


def _config(rule, **hp):
    shown = [_fmt(k, v) for k, v in hp.items()
             if v not in (False, 0, 0.0) and k not in ("lr", "eps", "betas", "alpha")]
    return Config("-".join([rule] + shown) if shown else f"{rule}-plain", rule, hp)


CONFIGS = (
    # torch.optim.SGD; nesterov needs momentum > 0 and no dampening
    [_config("sgd", lr=0.05, momentum=mom, dampening=damp, nesterov=nest,
             weight_decay=wd, maximize=mx)
     for mom in (0.0, 0.9) for damp in (0.0, 0.1) for nest in (False, True)
     for wd in (0.0, 0.01) for mx in (False, True)
     if not (nest and (mom == 0 or damp != 0))]
    # the seed's exponentially weighted momentum
    + [_config("momentum", lr=0.05, beta=beta, weight_decay=wd, maximize=mx)
       for beta in (0.9, 0.5) for wd in (0.0, 0.01) for mx in (False, True)]
    + [_config("rmsprop", lr=0.01, alpha=0.99, eps=1e-8, centered=c,
               momentum=mom, weight_decay=wd, maximize=mx)
       for c in (False, True) for mom in (0.0, 0.9) for wd in (0.0, 0.01)
       for mx in (False, True)]
    + [_config("adam", lr=0.01, betas=(0.9, 0.999), eps=1e-8, amsgrad=ams,
               weight_decay=wd, decoupled_weight_decay=dec, maximize=mx)
       for ams in (False, True) for wd in (0.0, 0.01) for dec in (False, True)
       for mx in (False, True)]
    + [_config("adagrad", lr=0.1, lr_decay=lrd, weight_decay=wd, eps=1e-10,
               maximize=mx, initial_accumulator_value=init)
       for lrd in (0.0, 0.01) for wd in (0.0, 0.01) for mx in (False, True)
       for init in (0.0, 0.1)]
    # scikit-learn's rules, with given gradients and with raw sums they
    # finish (a power-of-two divisor is a multiplication in the loop)
    + [_config("sklearn_sgd", lr=0.05, momentum=0.9, nesterov=nest, maximize=mx,
               alpha=alpha, divisor=div)
       for nest in (False, True) for mx in (False, True)
       for alpha, div in ((0.0, 0.0), (1e-4, 32.0), (0.01, 200.0))]
    + [_config("sklearn_adam", lr=0.01, maximize=mx, alpha=alpha, divisor=div)
       for mx in (False, True) for alpha, div in ((0.0, 0.0), (1e-4, 32.0), (0.01, 200.0))]
)


def _table_configs(entry):
    """Configs for a rule the grid above does not list: its defaults, with
    every flag on and off and weight decay off and on."""
    flags = [h.name for h in entry.kernel_hypers if h.check == "flag"]
    configs = []
    for mask in range(2 ** len(flags)):
        for wd in (0.0, 0.01):
            hp = {f: bool(mask >> k & 1) for k, f in enumerate(flags)}
            if any(h.name == "weight_decay" for h in entry.hypers):
                hp["weight_decay"] = wd
            elif wd:
                continue
            configs.append(_config(entry.name, **hp))
    return configs


# a rule added to the table is covered here without editing this file;
# a rule with a matrix step (Muon) takes matrices only and its step has a
# BLAS part between its two passes: tests/test_muon.py runs both passes
# against the reference on every level and at 1 and 2 threads
CONFIGS += [c for name, entry in fastopt.rules.RULES.items()
            if name not in {c.rule for c in CONFIGS} and not entry.matrix
            for c in _table_configs(entry)]
CONFIG_BY_ID = {c.id: c for c in CONFIGS}
assert len(CONFIG_BY_ID) == len(CONFIGS), "config ids must be unique"

# one config per rule that switches on every state and most options
REPRESENTATIVE = [CONFIG_BY_ID[i] for i in (
    "sgd-mom0.9-nesterov-wd0.01",
    "momentum-beta0.9-wd0.01-maximize",
    "rmsprop-centered-mom0.9-wd0.01",
    "adam-amsgrad-wd0.01-decoupled",
    "adagrad-lrdecay0.01-wd0.01-init0.1",
)] + [next(c for c in reversed(CONFIGS) if c.rule == name)
      for name in fastopt.rules.RULES
      if name not in ("sgd", "momentum", "rmsprop", "adam", "adagrad")
      and not fastopt.rules.RULES[name].matrix]


# ---------------------------------------------------------------------------
# Helpers

def _view(n, dtype, offset, fill=np.nan):
    """n elements starting `offset` elements into a larger buffer, which is
    filled with `fill` so that writes outside the view show."""
    buf = np.full(n + offset + 16, fill, dtype=dtype)
    return buf, buf[offset:offset + n]


def _gradient(rng, n, dtype):
    scale = 10.0 ** rng.uniform(-3, 1)
    return (rng.standard_normal(n) * scale).astype(dtype)


def _assert_same(actual, expected, what):
    assert actual.dtype == expected.dtype, what
    if not np.array_equal(actual, expected, equal_nan=True):
        bad = np.flatnonzero(~((actual == expected) |
                               (np.isnan(actual) & np.isnan(expected))))
        i = bad[0]
        raise AssertionError(
            f"{what}: {bad.size} of {actual.size} elements differ, first at "
            f"[{i}]: kernel {actual.ravel()[i]!r} vs reference "
            f"{expected.ravel()[i]!r}")


def run_parity(rule, hp, n, dtype, rng, steps, offsets=None):
    """Step kernel and reference side by side; compare after every step.

    offsets: {array name: offset into its buffer} for unaligned views."""
    offsets = offsets or {}
    buffers = []

    def alloc(name):
        buf, view = _view(n, dtype, offsets.get(name, 0))
        buffers.append((name, buf, buf.copy(), offsets.get(name, 0)))
        return view

    p_ref = rng.standard_normal(n).astype(dtype)
    p = alloc("param")
    p[...] = p_ref
    states = {}
    for slot, start in rule.new_states(hp, n, dtype).items():
        # per-tensor scalar states are float64 arrays of one element
        states[slot] = start if slot in rule.scalars else alloc(slot)
        states[slot][...] = start
    s_ref = {k: v.copy() for k, v in states.items()}
    g = alloc("grad")
    for step in range(1, steps + 1):
        g[...] = _gradient(rng, n, dtype)
        rule.call(rule.kernel, p, g, states, hp, step)
        with np.errstate(all="ignore"):
            rule.call(rule.ref, p_ref, g.copy(), s_ref, hp, step)
        _assert_same(p, p_ref, f"param after step {step} (n={n})")
        for slot in states:
            _assert_same(states[slot], s_ref[slot],
                         f"{slot} after step {step} (n={n})")
    # nothing written outside the views
    for name, buf, before, off in buffers:
        outside = np.r_[0:off, off + n:buf.size]
        np.testing.assert_array_equal(buf[outside], before[outside],
                                      err_msg=f"{name}: write outside the view")


def _steps(n):
    return BIG_STEPS if n >= BIG else STEPS


# ---------------------------------------------------------------------------
# Parity

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.id)
def test_parity_options(cfg, dtype, exec_env, rules, rng):
    for n in OPTION_SIZES:
        run_parity(rules[cfg.rule], cfg.hp, n, dtype, rng, STEPS)


# The rules the kernels were first written for run at every size and
# offset; they exercise the shared driver (thread splits, fusing, the tails
# of every vector width).  Every other rule runs at a sample that still
# covers each remainder class of the widest vectors (n mod 16: 0, 1, 7, 8,
# 15, 17, 33), a size past the parallel threshold, and offsets that put the
# arrays on different alignments; the suite then grows slowly with the table.
FIRST_RULES = ("sgd", "momentum", "rmsprop", "adam", "adagrad")
SAMPLED_SIZES = [0, 1, 7, 8, 15, 17, 33, 64, 129, 257, 4097, 65537]
SAMPLED_OFFSETS = [1, 4, 8, 13]


def _by_rule(values, sampled):
    return [(cfg, v) for cfg in REPRESENTATIVE
            for v in (values if cfg.rule in FIRST_RULES else sampled)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg, n", _by_rule(SIZES, SAMPLED_SIZES),
                         ids=lambda x: x.id if hasattr(x, "id") else f"n={x}")
def test_parity_sizes(cfg, dtype, n, exec_env, rules, rng):
    run_parity(rules[cfg.rule], cfg.hp, n, dtype, rng, _steps(n))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg, offset", _by_rule(range(1, 16), SAMPLED_OFFSETS),
                         ids=lambda x: x.id if hasattr(x, "id") else f"offset={x}")
def test_parity_unaligned(cfg, dtype, offset, exec_env, rules, rng):
    rule = rules[cfg.rule]
    names = ["param", "grad", *rule.slots]
    # every array at its own offset in 1..15
    offsets = {name: (offset - 1 + 4 * k) % 15 + 1 for k, name in enumerate(names)}
    for n in (1, 15, 33, 129, 1000):
        run_parity(rule, cfg.hp, n, dtype, rng, 5, offsets)


@pytest.mark.parametrize("dtype", DTYPES)
def test_parity_streamed_state(dtype, exec_env, rules, rng):
    """ASGD's ax before t0 is written without being read; from
    _core.STREAM_MIN_BYTES up it is stored around the cache, 16, 32 or 64
    bytes at a time (by level) after an unaligned head.  ax starts 3
    elements into its buffer and the size is odd, so head, tail and the
    thread split are all partial."""
    n = _core.STREAM_MIN_BYTES // np.dtype(dtype).itemsize + 1003
    run_parity(rules["asgd"], {"weight_decay": 0.01}, n, dtype, rng, 2,
               {"ax": 3, "param": 1})


# ---------------------------------------------------------------------------
# Multi-tensor functions

MANY_SIZES = [0, 1, 17, 0, 4097, 3, 128, 65, 0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.id)
def test_many_equals_single(cfg, dtype, num_threads, rules, rng):
    check_many(rules[cfg.rule], cfg.hp, dtype, MANY_SIZES, rng)


@pytest.mark.parametrize("sizes", [[0, 0], [], [257]],
                         ids=["all-empty", "no-tensors", "one"])
@pytest.mark.parametrize("cfg", REPRESENTATIVE, ids=lambda c: c.id)
def test_many_edge_lists(cfg, sizes, rules, rng):
    check_many(rules[cfg.rule], cfg.hp, np.float64, sizes, rng)


def check_many(rule, hp, dtype, sizes, rng):
    cfg = Config("", rule.name, hp)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    states = [rule.new_states(cfg.hp, n, dtype) for n in sizes]
    params_1 = [p.copy() for p in params]
    states_1 = [{k: v.copy() for k, v in s.items()} for s in states]
    for step in range(1, 6):
        grads = [_gradient(rng, n, dtype) for n in sizes]
        rule.call_many(params, grads, states, cfg.hp, step)
        for p, g, s in zip(params_1, grads, states_1):
            rule.call(rule.kernel, p, g, s, cfg.hp, step)
        for k, (p, p1) in enumerate(zip(params, params_1)):
            _assert_same(p, p1, f"params[{k}] after step {step}")
            for slot in states[k]:
                _assert_same(states[k][slot], states_1[k][slot],
                             f"{slot}s[{k}] after step {step}")


def test_many_accepts_labels(rules):
    rule = rules["adam"]
    hp = REPRESENTATIVE[3].hp
    params = [np.ones(3), np.ones(4)]
    states = [rule.new_states(hp, p.size, p.dtype) for p in params]
    rule.call_many(params, [np.ones(3), np.ones(4)], states, hp, 1,
                   labels=["W1", "b1"])
    assert all(np.all(p < 1) for p in params)


# ---------------------------------------------------------------------------
# Calls in general

@pytest.mark.parametrize("cfg", REPRESENTATIVE, ids=lambda c: c.id)
def test_returns_none_and_keeps_shape(cfg, rules):
    rule = rules[cfg.rule]
    p = np.ones((3, 4), np.float32)
    g = np.full((12,), 0.5, np.float32)           # shapes need not match
    states = {k: v if k in rule.scalars else v.reshape(2, 6) for k, v in
              rule.new_states(cfg.hp, 12, np.float32).items()}
    # step 2: a first step may only initialise a state (ADOPT's sets v)
    assert rule.kernel(p, g, *rule.positional(states),
                       **rule.kwargs(cfg.hp, 2)) is None
    assert p.shape == (3, 4) and p.dtype == np.float32
    assert np.all(p != 1)


def test_simd_levels_report(restore_config):
    levels = _core.simd_levels()
    assert set(levels) == set(_core.LEVELS)
    assert levels["baseline"] == (True, True)
    for level, (compiled, supported) in levels.items():
        if supported:
            fastopt.set_simd_level(level)
            assert fastopt.get_simd_level() == level
        else:
            with pytest.raises(ValueError, match=level):
                fastopt.set_simd_level(level)
    with pytest.raises(ValueError, match="level must be one of"):
        fastopt.set_simd_level("sse9")


def test_num_threads_setting(restore_config):
    fastopt.set_num_threads(1)
    assert fastopt.get_num_threads() == 1
    for bad, exc in ((0, ValueError), (-1, ValueError), (1.5, TypeError),
                     (True, TypeError)):
        with pytest.raises(exc, match="n must be"):
            fastopt.set_num_threads(bad)
    assert fastopt.get_num_threads() == 1
    fastopt.set_num_threads(None)
    assert fastopt.get_num_threads() >= 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_amsgrad_maximum_keeps_the_old_value_on_a_signed_zero_tie(dtype):
    """max(v_max = -0, v = +0): kernel and reference both keep -0."""
    start = [np.zeros(3, dtype) for _ in range(4)] + [np.full(3, -0.0, dtype)]
    ours, ref = [a.copy() for a in start], [a.copy() for a in start]
    fastopt.functional.adam(*ours, step=1, amsgrad=True, eps=0.0)
    with np.errstate(all="ignore"):
        fastopt.reference.adam(*ref, step=1, amsgrad=True, eps=0.0)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(ours, ref))
    assert np.signbit(ours[4]).all()
