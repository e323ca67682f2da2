"""Shared fixtures and the registry of update rules for the kernel tests.

Fixtures
  rng             a seeded numpy Generator, fresh per test
  simd_level      parametrizes a test over every SIMD level this build *and*
                  this CPU support; sets it, restores the previous level
  num_threads     parametrizes a test over 1 and 2 threads, at 2 with the
                  parallel threshold lowered to 1 element, so that two threads
                  really split even small arrays, at 1 with the library's
                  default (DEFAULT_PARALLEL_THRESHOLD); restores both afterwards
  exec_env        both of the above: (level, threads)
  restore_config  no parametrization; restores level, threads and threshold
                  after a test that changes them itself
  rules           {rule name: Rule}, how to build and call each update rule

A Rule knows the positional state slots of its functions (single and
``*_many``), which of them a set of hyperparameters needs, and whether the
rule takes ``step``; it does not hold test configurations (each test module
keeps its own table).
"""
import dataclasses
import os
from typing import Callable, Optional

# Idle OpenMP workers sleep instead of spinning.  The tests call kernels on
# small arrays thousands of times with NumPy work in between; with spinning
# workers a 2-thread Adam step on 257 elements took 150 us instead of 19 us
# on a 2-core machine, because the spinning worker competes with the main
# thread.  Must be set before fastopt (and with it libgomp) is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np

import pytest  # noqa: E402

import fastopt  # noqa: E402
import fastopt.rules  # noqa: E402
from fastopt import _config, _core, functional, reference  # noqa: E402

# ---------------------------------------------------------------------------
# Execution environment: SIMD level and threads

# The library's default, read from it (not restated) before any fixture
# lowers it.
DEFAULT_PARALLEL_THRESHOLD = _config.config()["parallel_threshold"]

AVAILABLE_LEVELS = [lvl for lvl, (compiled, supported) in _core.simd_levels().items()
                    if compiled and supported]
THREAD_COUNTS = [1, 2]


def _snapshot_config():
    return (_core.get_simd_level(), _core.get_num_threads(),
            _core.get_parallel_threshold())


def _restore_config(saved):
    level, threads, threshold = saved
    fastopt.set_simd_level(level)
    fastopt.set_num_threads(threads)
    _core.set_parallel_threshold(threshold)


@pytest.fixture
def restore_config():
    saved = _snapshot_config()
    yield
    _restore_config(saved)


@pytest.fixture(params=[False, True], ids=lambda on: "prefetch" if on else "plain")
def prefetching(request):
    """The loops over bfloat16 and 8-bit states as they run on small steps
    and with the prefetching they do on steps too large for the cache (the
    threshold lowered to 0 bytes, so that the tests' small arrays take it)"""
    saved = _core.get_prefetch_threshold()
    if request.param:
        _core.set_prefetch_threshold(0)
    yield request.param
    _core.set_prefetch_threshold(saved)


@pytest.fixture(params=AVAILABLE_LEVELS, ids=lambda lvl: f"simd={lvl}")
def simd_level(request):
    saved = _snapshot_config()
    fastopt.set_simd_level(request.param)
    yield request.param
    _restore_config(saved)


@pytest.fixture(params=THREAD_COUNTS, ids=lambda n: f"threads={n}")
def num_threads(request):
    saved = _snapshot_config()
    fastopt.set_num_threads(request.param)
    # split every array that has anything to split, not only those from
    # DEFAULT_PARALLEL_THRESHOLD elements up
    _core.set_parallel_threshold(1 if request.param > 1 else DEFAULT_PARALLEL_THRESHOLD)
    yield request.param
    _restore_config(saved)


@pytest.fixture
def exec_env(simd_level, num_threads):
    return simd_level, num_threads


@pytest.fixture
def rng(request):
    # seeded from the test id: stable across runs, different across tests
    seed = sum(request.node.nodeid.encode()) * 7919 % (2 ** 32)
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------
# The update rules

@dataclasses.dataclass(frozen=True)
class Rule:
    """How to call one update rule.

    slots: the state arguments in positional order, each with a predicate on
    the hyperparameters telling whether it is needed (None passed otherwise).
    """
    name: str
    slots: tuple
    needs: tuple               # one predicate per slot
    takes_step: bool
    kernel: Callable
    kernel_many: Callable
    ref: Callable
    init: Optional[str] = None  # hyperparameter naming a state's start value
    # per-tensor scalar states, the last slots: {name: start value, a number
    # or a hyperparameter's name}; each is a float64 array of one element
    scalars: dict = dataclasses.field(default_factory=dict)

    def used(self, hp):
        return [slot for slot, need in zip(self.slots, self.needs) if need(hp)]

    def kwargs(self, hp, step):
        kw = {k: v for k, v in hp.items() if k != self.init}
        if self.takes_step:
            kw["step"] = step
        return kw

    def new_states(self, hp, n, dtype, alloc=None):
        """{slot: array} for the slots hp needs, at the rule's start value."""
        alloc = alloc or (lambda n, dtype: np.empty(n, dtype))
        start = float(hp.get(self.init, 0.0)) if self.init else 0.0
        states = {}
        for slot in self.used(hp):
            if slot in self.scalars:
                states[slot] = np.full(1, self.scalar_start(slot, hp))
                continue
            a = alloc(n, dtype)
            a[...] = start
            states[slot] = a
        return states

    def scalar_start(self, slot, hp):
        init = self.scalars[slot]
        if isinstance(init, str):
            return float(hp.get(init, fastopt.rules.RULES[self.name].hyper(init).default))
        return float(init)

    def positional(self, states):
        return [states.get(slot) for slot in self.slots]

    def call(self, fn, param, grad, states, hp, step):
        fn(param, grad, *self.positional(states), **self.kwargs(hp, step))

    def call_many(self, params, grads, states_list, hp, step, **extra):
        per_slot = [[s[slot] for s in states_list] if slot in self.used(hp)
                    else None for slot in self.slots]
        self.kernel_many(params, grads, *per_slot, **self.kwargs(hp, step),
                         **extra)


def _needed_when(state, entry):
    """The predicate on hyperparameters: is this state needed?"""
    if state.when is None:
        return lambda hp: True
    default = entry.hyper(state.when).default
    return lambda hp: bool(hp.get(state.when, default))


def many(name):
    """The multi-tensor call of a rule with states as positional lists."""
    def call(params, grads, *states, step=None, labels=None, **hp):
        _core.step_many(name, params, grads, list(states), step=step,
                        labels=labels, **hp)
    return call


# From the rule table: a new rule is covered by every test that iterates it.
RULES = {
    name: Rule(name, tuple(s.name for s in entry.states) + entry.scalar_keys,
               tuple(_needed_when(s, entry) for s in entry.states)
               + tuple(lambda hp: True for _ in entry.scalar_states),
               entry.step is not None, getattr(functional, name), many(name),
               getattr(reference, name),
               init=next((s.initial for s in entry.states
                          if isinstance(s.initial, str)), None),
               scalars={s.name: s.initial for s in entry.scalar_states})
    for name, entry in fastopt.rules.RULES.items()
}


@pytest.fixture(scope="session")
def rules():
    return RULES


def pytest_make_parametrize_id(config, val, argname):
    if isinstance(val, np.dtype) or (isinstance(val, type) and
                                     issubclass(val, np.generic)):
        return np.dtype(val).name
    return None
