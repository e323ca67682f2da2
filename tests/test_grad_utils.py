"""Gradient utilities (grad_sumsq, grad_allfinite, grad_scale_, grad_clamp_)
and the per-step scalar helpers shared by kernels and reference."""
import math

import numpy as np
import pytest

import fastopt
from fastopt import _core

AVAILABLE_LEVELS = [lvl for lvl, (compiled, supported) in _core.simd_levels().items()
                    if compiled and supported]
THREAD_COUNTS = [1, 2]

DTYPES = [np.float32, np.float64]

# lists of tensor sizes: block (4096) and lane (8) boundaries, empty tensors,
# more than a window (256 blocks) of blocks, many small tensors
SIZE_LISTS = {
    "empty-list": [],
    "one-empty": [0],
    "single": [1],
    "lanes": [7, 8, 9, 15, 16, 17],
    "blocks": [4095, 4096, 4097, 0, 8193],
    "big": [1048577],
    "many-small": [3] * 300 + [0, 5],
    "over-window": [4096 * 300 + 17],
    "mixed": [0, 100_000, 1, 65537, 0, 31],
}


def _grads(rng, sizes, dtype):
    return [(rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3)).astype(dtype)
            for n in sizes]


def _each_env():
    """(level, threads) for every combination; threshold lowered to 1."""
    for level in AVAILABLE_LEVELS:
        for threads in THREAD_COUNTS:
            fastopt.set_simd_level(level)
            fastopt.set_num_threads(threads)
            _core.set_parallel_threshold(1)
            yield level, threads


# ---------------------------------------------------------------------------
# grad_sumsq

@pytest.mark.parametrize("sizes", list(SIZE_LISTS.values()), ids=list(SIZE_LISTS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_sumsq_matches_numpy(sizes, dtype, rng, simd_level):
    grads = _grads(rng, sizes, dtype)
    expected = sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads)
    got = _core.grad_sumsq(grads)
    assert isinstance(got, float)
    if expected == 0:
        assert got == 0.0
    else:
        assert got == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("sizes", list(SIZE_LISTS.values()), ids=list(SIZE_LISTS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_sumsq_same_bits_everywhere(sizes, dtype, rng, restore_config):
    grads = _grads(rng, sizes, dtype)
    results = {env: _core.grad_sumsq(grads).hex() for env in _each_env()}
    assert len(set(results.values())) == 1, results


def test_sumsq_does_not_depend_on_the_split_into_tensors(rng, restore_config):
    """Blocks start at each tensor's start, so splitting a tensor may change
    the bits; but the same list gives the same bits on every run."""
    grads = _grads(rng, [70000, 3, 9000], np.float32)
    first = _core.grad_sumsq(grads)
    for _ in _each_env():
        for _ in range(3):
            assert _core.grad_sumsq(grads) == first


@pytest.mark.parametrize("dtype", DTYPES)
def test_sumsq_special_values(dtype):
    assert _core.grad_sumsq([np.array([3.0, -4.0], dtype)]) == 25.0
    assert math.isnan(_core.grad_sumsq([np.array([1.0, np.nan], dtype)]))
    assert _core.grad_sumsq([np.array([1.0, -np.inf], dtype)]) == math.inf
    big = np.full(4, np.finfo(dtype).max, dtype)
    with np.errstate(over="ignore"):
        expected = float(np.float64(np.finfo(dtype).max) ** 2 * 4)
    assert _core.grad_sumsq([big]) == expected   # inf for float64, finite for f32
    tiny = np.full(5, np.finfo(dtype).smallest_subnormal, dtype)
    assert _core.grad_sumsq([tiny]) == 5 * float(tiny[0]) ** 2


# ---------------------------------------------------------------------------
# grad_allfinite

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("sizes", [[1], [255, 256, 257], [0, 4097], [3] * 50,
                                   [1048577]],
                         ids=["1", "256-block", "4097", "many", "big"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_allfinite(dtype, sizes, bad, rng, exec_env):
    grads = _grads(rng, sizes, dtype)
    assert _core.grad_allfinite(grads) is True
    nonempty = [k for k, n in enumerate(sizes) if n]
    # the very last element, then the first, then one in the middle
    positions = [(nonempty[-1], sizes[nonempty[-1]] - 1), (nonempty[0], 0),
                 (nonempty[len(nonempty) // 2], sizes[nonempty[len(nonempty) // 2]] // 2)]
    for k, i in positions:
        old = grads[k][i]
        grads[k][i] = bad
        assert _core.grad_allfinite(grads) is False, (k, i)
        grads[k][i] = old
        assert _core.grad_allfinite(grads) is True


@pytest.mark.parametrize("dtype", DTYPES)
def test_allfinite_edges(dtype):
    assert _core.grad_allfinite([]) is True
    assert _core.grad_allfinite([np.zeros(0, dtype)]) is True
    fi = np.finfo(dtype)
    assert _core.grad_allfinite([np.array([fi.max, -fi.max, fi.smallest_subnormal,
                                           -0.0], dtype)]) is True


# ---------------------------------------------------------------------------
# grad_scale_ / grad_clamp_

SPECIALS = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, 5e-324, 3e38, 1e308, -2.5]


def _with_specials(rng, n, dtype):
    x = (rng.standard_normal(n) * 100).astype(dtype)
    with np.errstate(over="ignore"):
        sp = np.array(SPECIALS, dtype=dtype)
    k = min(n, sp.size)
    x[:k] = sp[:k]
    return x


@pytest.mark.parametrize("scale", [0.5, -3.0, 0.0, 1e-30, 1e30, 1 / 3],
                         ids=lambda s: f"scale={s:g}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_equals_numpy(dtype, scale, rng, exec_env):
    sizes = [0, 1, 17, 4097, 70001]
    grads = [_with_specials(rng, n, dtype) for n in sizes]
    with np.errstate(all="ignore"):
        expected = [g * dtype(scale) for g in grads]
    _core.grad_scale_(grads, scale)
    for g, e in zip(grads, expected):
        assert g.dtype == e.dtype
        assert np.array_equal(g, e, equal_nan=True)
        # signed zeros too
        assert np.array_equal(np.signbit(g), np.signbit(e))


@pytest.mark.parametrize("clip", [1.0, 0.0, 1e-40, 2.5, 1e30, np.inf],
                         ids=lambda c: f"clip={c:g}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_clamp_equals_numpy(dtype, clip, rng, exec_env):
    sizes = [0, 1, 17, 4097, 70001]
    grads = [_with_specials(rng, n, dtype) for n in sizes]
    c = dtype(clip)
    expected = [np.clip(g, -c, c) for g in grads]
    _core.grad_clamp_(grads, clip)
    for g, e in zip(grads, expected):
        assert g.dtype == e.dtype
        assert np.array_equal(g, e, equal_nan=True)


def test_scale_and_clamp_empty():
    _core.grad_scale_([], 2.0)
    _core.grad_clamp_([np.zeros(0)], 1.0)


# ---------------------------------------------------------------------------
# Per-step scalars: the formulas of optimizer-math.md, computed in Python

STEPS = [1, 2, 3, 10, 1000, 10 ** 6, 2 ** 40]
BETAS = [0.0, 0.5, 0.8, 0.888, 0.9, 0.99, 0.999, 0.9999999]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("beta", BETAS)
def test_bias_correction_helpers(beta, step):
    bc = 1.0 - beta ** step
    assert _core.bias_correction(beta, step) == bc
    if bc > 0 and beta < 1:
        lr = 0.0007
        c = _core.coefficients("adam", step, lr=lr, betas=(beta, beta))
        assert c["step_size"] == lr / bc
        assert c["inv_sqrt_bc2"] == 1.0 / math.sqrt(bc)


@pytest.mark.parametrize("lr, wd", [(1e-3, 1e-2), (0.1, 0.0), (0.0, 5.0),
                                    (0.3, 0.25), (1.0, 1.0), (1e-8, 1e-8)])
def test_decay_factor(lr, wd):
    c = _core.coefficients("adam", 1, lr=lr, weight_decay=wd,
                           decoupled_weight_decay=True)
    assert c["decay"] == 1.0 - lr * wd and c["l2"] == 0.0


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("lr, lr_decay", [(0.01, 0.0), (0.5, 1.0), (0.3, 0.25),
                                          (0.1, 1e-3)])
def test_adagrad_clr(lr, lr_decay, step):
    c = _core.coefficients("adagrad", step, lr=lr, lr_decay=lr_decay)
    assert c["clr"] == lr / (1.0 + (step - 1) * lr_decay)


def test_step_helpers_use_the_integer_step():
    """No running product: step t alone fixes the value."""
    a = _core.bias_correction(0.999, 5000)
    for t in (1, 2, 4999):
        _core.bias_correction(0.999, t)
    assert _core.bias_correction(0.999, 5000) == a
