"""Property tests: kernel == reference exactly, for drawn sizes,
hyperparameters, data and execution environment.

Data includes zeros of both signs, subnormals, huge values, infinities and
NaN, in the gradient, the parameter and the state arrays alike; states start
anywhere (a negative square average makes both sides NaN).  The SIMD level
and the thread count (with the parallel threshold at 1) are drawn too.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastopt
from fastopt import _core
from fastopt.rules import RULES

LEVELS = [lvl for lvl, (compiled, supported) in _core.simd_levels().items()
          if compiled and supported]
DTYPES = [np.float32, np.float64]

PROFILE = settings(max_examples=60, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow,
                                          HealthCheck.function_scoped_fixture])


def _specials(dtype):
    fi = np.finfo(dtype)
    return [0.0, -0.0, float(fi.smallest_subnormal), -float(fi.smallest_subnormal),
            float(fi.tiny), float(fi.max), -float(fi.max), float(fi.max) / 3,
            np.inf, -np.inf, np.nan, 1.0, -1.0]


def elements(dtype):
    width = 32 if dtype == np.float32 else 64
    return st.one_of(
        st.floats(width=width, allow_nan=True, allow_infinity=True,
                  allow_subnormal=True),
        st.sampled_from(_specials(dtype)),
        st.floats(-10, 10, width=width),
    )


def data_array(dtype, n):
    return hnp.arrays(dtype, n, elements=elements(dtype))


# ---- hyperparameter strategies, one per rule --------------------------------

nonneg = st.one_of(st.sampled_from([0.0, 1e-8, 0.01, 0.5, 1.0, 1e30]),
                   st.floats(0, 10), st.floats(0, 1e300))
unit_open = st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.999]),
                      st.floats(0, 1, exclude_max=True))
unit_closed = st.one_of(st.sampled_from([0.0, 0.99, 1.0]), st.floats(0, 1))
flag = st.booleans()


@st.composite
def sgd_hp(draw):
    hp = dict(lr=draw(nonneg), momentum=draw(st.sampled_from([0.0, 0.9]) | nonneg),
              weight_decay=draw(nonneg), maximize=draw(flag))
    hp["nesterov"] = hp["momentum"] > 0 and draw(flag)
    hp["dampening"] = 0.0 if hp["nesterov"] else draw(unit_closed)
    return hp


HYPERPARAMS = {
    "sgd": sgd_hp(),
    "momentum": st.fixed_dictionaries(dict(lr=nonneg, beta=unit_open,
                                           weight_decay=nonneg, maximize=flag)),
    "rmsprop": st.fixed_dictionaries(dict(
        lr=nonneg, alpha=unit_closed, eps=nonneg, weight_decay=nonneg,
        momentum=st.sampled_from([0.0, 0.9]) | nonneg, centered=flag,
        maximize=flag)),
    "adam": st.fixed_dictionaries(dict(
        lr=nonneg, betas=st.tuples(unit_open, unit_open), eps=nonneg,
        weight_decay=nonneg, amsgrad=flag, maximize=flag,
        decoupled_weight_decay=flag)),
    "adagrad": st.fixed_dictionaries(dict(
        lr=nonneg, lr_decay=nonneg, weight_decay=nonneg, eps=nonneg,
        maximize=flag)),
}


def _strategy(h):
    """Any valid value of a hyperparameter of the table.  A tuple stays at
    its default: its elements may be constrained together (Rprop's etas)."""
    if h.check == "flag":
        return flag
    if h.length:
        return st.just(h.default)
    if h.check == "count":
        return st.one_of(st.none(), st.integers(int(h.lo), 50))
    if h.check == "int":
        return st.integers(int(h.lo), min(int(h.hi), 8))
    if h.check == "choice":
        return st.sampled_from(h.choices)
    if h.hi == math.inf:
        return nonneg if h.lo == 0 else st.floats(h.lo, 1e300)
    return st.floats(h.lo, h.hi, exclude_max=not h.closed)


# every other rule of the table
HYPERPARAMS.update({
    name: st.fixed_dictionaries({h.name: _strategy(h) for h in rule.kernel_hypers})
    for name, rule in RULES.items() if name not in HYPERPARAMS})

sizes = st.one_of(st.integers(0, 20), st.sampled_from([31, 64, 65, 127, 128,
                                                       129, 200, 257]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule_name", list(HYPERPARAMS))
@PROFILE
@given(data=st.data())
def test_kernel_equals_reference(rule_name, dtype, data, rules, restore_config):
    rule = rules[rule_name]
    hp = data.draw(HYPERPARAMS[rule_name], label="hp")
    n = data.draw(sizes, label="n")
    level = data.draw(st.sampled_from(LEVELS), label="level")
    threads = data.draw(st.sampled_from([1, 2]), label="threads")
    first_step = data.draw(st.integers(1, 10 ** 6), label="first_step")
    n_steps = data.draw(st.integers(1, 3), label="n_steps")

    fastopt.set_simd_level(level)
    fastopt.set_num_threads(threads)
    _core.set_parallel_threshold(1)

    # a rule with a matrix step takes matrices: its arrays as 1 x n
    shaped = ((lambda a: a.reshape(1, -1)) if RULES[rule_name].matrix
              else (lambda a: a))
    p = shaped(data.draw(data_array(dtype, n), label="param"))
    # array states drawn like the data; per-tensor scalar states (one float64
    # each) at their start or anywhere: kernel and reference share the
    # coefficients computed from them
    states = {slot: np.full(1, data.draw(st.one_of(
                  st.just(rule.scalar_start(slot, hp)), st.floats(-2.0, 2.0)), label=slot))
              if slot in rule.scalars else shaped(data.draw(data_array(dtype, n), label=slot))
              for slot in rule.used(hp)}
    p_ref = p.copy()
    s_ref = {k: v.copy() for k, v in states.items()}
    for step in range(first_step, first_step + n_steps):
        g = shaped(data.draw(data_array(dtype, n), label=f"grad@{step}"))
        rule.call(rule.kernel, p, g, states, hp, step)
        with np.errstate(all="ignore"):
            rule.call(rule.ref, p_ref, g.copy(), s_ref, hp, step)
        assert np.array_equal(p, p_ref, equal_nan=True), (step, p, p_ref)
        for slot in states:
            assert np.array_equal(states[slot], s_ref[slot], equal_nan=True), \
                (step, slot, states[slot], s_ref[slot])


@pytest.mark.parametrize("dtype", DTYPES)
@PROFILE
@given(data=st.data())
def test_sumsq_and_allfinite(dtype, data, restore_config):
    grads = data.draw(st.lists(sizes.flatmap(lambda n: data_array(dtype, n)),
                               max_size=5), label="grads")
    level = data.draw(st.sampled_from(LEVELS), label="level")
    fastopt.set_simd_level(level)
    fastopt.set_num_threads(data.draw(st.sampled_from([1, 2])))
    _core.set_parallel_threshold(1)
    wide = [g.astype(np.float64) for g in grads]
    finite = all(np.isfinite(g).all() for g in grads)
    assert _core.grad_allfinite(grads) is finite
    with np.errstate(all="ignore"):
        expected = sum(float(np.sum(w * w)) for w in wide)
    got = _core.grad_sumsq(grads)
    if np.isnan(expected) or np.isinf(expected):
        # the order of summation decides inf + -inf... but squares are >= 0
        assert (np.isnan(got) and np.isnan(expected)) or got == expected
    else:
        assert got == pytest.approx(expected, rel=1e-12, abs=0)
