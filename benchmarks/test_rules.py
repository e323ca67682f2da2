"""pytest-benchmark suite: every rule, dtype and size, against the reference.

Run: pytest benchmarks --benchmark-only [--benchmark-group-by=group]

Each benchmark checks the kernel against fastopt.reference (bit for bit)
before it is timed, and records the instruction-set level and threads in
extra_info.  Groups are "<rule> <dtype> n=<size>", so the kernel, the NumPy
reference and the traffic floor of one workload sit side by side.
"""
import numpy as np
import pytest

import fastopt
from fastopt import _core
from fastopt.harness.bench import RULES, _arrays

SIZES = [10**3, 10**5, 10**6]
DTYPES = [np.float32, np.float64]


def _setup(rule, n, dtype):
    """The bench's workload of n elements: a vector, or for a factored rule
    (Adafactor) a near-square matrix with its row and column states."""
    return _arrays(rule, n, dtype, np.random.default_rng(n))


def _check(rule, p, g, states):
    kp, ks = p.copy(), [s.copy() for s in states]
    rp, rs = p.copy(), [s.copy() for s in states]
    for step in (1, 2, 3):
        rule.call(rule.fastopt_fn, kp, g, ks, step)
        rule.call(rule.reference_fn, rp, g, rs, step)
    assert np.array_equal(kp, rp, equal_nan=True)
    for a, b in zip(ks, rs):
        assert np.array_equal(a, b, equal_nan=True)


def _info(benchmark, rule, n, dtype):
    benchmark.extra_info.update(
        simd=fastopt.get_simd_level(), threads=fastopt.get_num_threads(),
        bytes=rule.bytes_per_element(np.dtype(dtype).itemsize) * n)


params = pytest.mark.parametrize(
    "name,dtype,n",
    # a rule with a matrix step (Muon) costs what its matrix step costs, not
    # per element: python -m fastopt bench times it on a 1024 x 1024 matrix
    [(r, d, n) for r in RULES if not RULES[r].entry.matrix
     for d in DTYPES for n in SIZES],
    ids=lambda v: v if isinstance(v, str) else (np.dtype(v).name if isinstance(v, type) else f"n{v}"))


@params
@pytest.mark.parametrize("impl", ["fastopt", "reference"])
def test_rule(benchmark, impl, name, dtype, n):
    rule = RULES[name]
    p, g, states = _setup(rule, n, dtype)
    _check(rule, p, g, states)
    benchmark.group = f"{name} {np.dtype(dtype).name} n={n}"
    _info(benchmark, rule, n, dtype)
    fn = rule.fastopt_fn if impl == "fastopt" else rule.reference_fn
    benchmark(rule.call, fn, p, g, states, 5)


@params
def test_traffic_floor(benchmark, name, dtype, n):
    rule = RULES[name]
    p, g, states = _setup(rule, n, dtype)
    benchmark.group = f"{name} {np.dtype(dtype).name} n={n}"
    _info(benchmark, rule, n, dtype)
    # the arrays of the parameter's shape, as the bench's floor
    benchmark(_core.traffic, p, g, *[s for s in states if s.shape == p.shape])
