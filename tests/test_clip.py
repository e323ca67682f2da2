import math

import numpy as np
import pytest

import fastopt
from fastopt import _core
from fastopt.clip import clip_grad_norm_, clip_grad_value_

F32, F64 = np.float32, np.float64


@pytest.fixture
def restore_settings():
    """Put threads, parallel threshold and SIMD level back after the test."""
    threshold = _core.get_parallel_threshold()
    level = fastopt.get_simd_level()
    yield
    fastopt.set_num_threads(None)
    _core.set_parallel_threshold(threshold)
    fastopt.set_simd_level(level)


def available_levels():
    return [lv for lv, (_, supported) in _core.simd_levels().items() if supported]


def make_grads(spec, seed=0, scale=1.0):
    """spec: list of (shape, dtype) or None."""
    rng = np.random.default_rng(seed)
    return [None if s is None else np.asarray(scale * rng.standard_normal(s[0]), s[1])
            for s in spec]


def copies(grads):
    return [None if g is None else g.copy() for g in grads]


def numpy_norm(grads, norm_type=2.0):
    arrays = [g.astype(F64).ravel() for g in grads if g is not None]
    if not arrays:
        return 0.0
    x = np.concatenate(arrays)
    if norm_type == math.inf:
        return float(np.max(np.abs(x))) if x.size else 0.0
    return float(np.sqrt(np.sum(x * x)))


# Gradient sets: dtypes, sizes across the 4096-element blocks, None entries,
# empty arrays.
SPECS = {
    "f32": [((5, 3), F32), ((7,), F32)],
    "f64": [((5, 3), F64), ((7,), F64)],
    "mixed": [((64, 33), F32), None, ((100,), F64), ((1,), F32), ((0,), F64)],
    "large": [((300, 70), F32), ((9000,), F64), ((4097,), F32), ((3,), F64)],
    "scalar": [((), F64)],
}
MAX_NORMS = [0.5, 1.0, 1e6, 0.0]


def _check_clipped(before, after, norm, max_norm):
    coef = max_norm / (norm + 1e-6)
    for b, a in zip(before, after):
        if b is None:
            assert a is None
        elif coef < 1:
            np.testing.assert_array_equal(a, b * b.dtype.type(coef))
        else:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("max_norm", MAX_NORMS)
@pytest.mark.parametrize("spec", SPECS, ids=list(SPECS))
def test_norm_and_clip_against_numpy(spec, max_norm):
    grads = make_grads(SPECS[spec], scale=0.1)
    before = copies(grads)
    norm = clip_grad_norm_(grads, max_norm)
    assert type(norm) is float
    np.testing.assert_allclose(norm, numpy_norm(before), rtol=1e-12)
    _check_clipped(before, grads, norm, max_norm)
    if max_norm and max_norm / (norm + 1e-6) < 1:
        np.testing.assert_allclose(numpy_norm(grads), max_norm, rtol=1e-5)


@pytest.mark.parametrize("spec", SPECS, ids=list(SPECS))
def test_inf_norm_against_numpy(spec):
    grads = make_grads(SPECS[spec])
    before = copies(grads)
    norm = clip_grad_norm_(grads, 0.5, norm_type=math.inf)
    assert norm == numpy_norm(before, math.inf)
    _check_clipped(before, grads, norm, 0.5)
    assert clip_grad_norm_(copies(before), 0.5, norm_type="inf") == norm


def test_dict_tuple_and_single_array():
    grads = make_grads(SPECS["mixed"], seed=3)
    expected = numpy_norm(grads)
    as_dict = dict(zip("abcde", copies(grads)))
    assert clip_grad_norm_(as_dict, 1e9) == pytest.approx(expected, rel=1e-12)
    before = copies(grads)
    norm = clip_grad_norm_(tuple(grads), 0.1)
    _check_clipped(before, grads, norm, 0.1)
    one = make_grads([((10,), F32)])[0]
    one_before = one.copy()
    norm = clip_grad_norm_(one, 0.1)
    _check_clipped([one_before], [one], norm, 0.1)


def test_none_and_empty():
    assert clip_grad_norm_([], 1.0) == 0.0
    assert clip_grad_norm_([None, None], 1.0) == 0.0
    assert clip_grad_norm_({"a": None}, 1.0, norm_type=math.inf) == 0.0
    empty = np.zeros(0, F32)
    assert clip_grad_norm_([empty, None], 0.0) == 0.0
    clip_grad_value_([None, empty], 1.0)


def test_norm_is_the_sum_of_per_dtype_sums_in_fixed_order():
    grads = make_grads(SPECS["large"], seed=5)
    f32 = [g for g in grads if g.dtype == F32]
    f64 = [g for g in grads if g.dtype == F64]
    expected = math.sqrt(0.0 + _core.grad_sumsq(f32) + _core.grad_sumsq(f64))
    assert clip_grad_norm_(copies(grads), 1e9) == expected
    # interleaving the dtypes differently does not matter: float32 comes first
    swapped = [grads[1], grads[0], grads[2], grads[3]]
    assert clip_grad_norm_(copies(swapped), 1e9) == expected


def test_max_norm_inf_and_zero():
    grads = make_grads(SPECS["f64"])
    before = copies(grads)
    norm = clip_grad_norm_(grads, math.inf)
    _check_clipped(before, grads, norm, math.inf)
    clip_grad_norm_(grads, 0.0)
    for g in grads:
        assert not np.any(g)


# ---------------------------------------------------------------------------
# Determinism

def _large_grads():
    return make_grads([((200_001,), F32), ((50_000,), F64), ((4096 * 3 + 5,), F32),
                       ((123_457,), F64)], seed=11)


def test_norm_bits_across_threads_and_simd_levels(restore_settings):
    grads = _large_grads()
    _core.set_parallel_threshold(1)
    results = {}
    for level in available_levels():
        fastopt.set_simd_level(level)
        for threads in (1, 2, 3):
            fastopt.set_num_threads(threads)
            g = copies(grads)
            norm = clip_grad_norm_(g, 1.0)
            results[(level, threads)] = (norm.hex(), [a.tobytes() for a in g])
    reference = next(iter(results.values()))
    for key, value in results.items():
        assert value[0] == reference[0], key
        assert value[1] == reference[1], key
    np.testing.assert_allclose(float.fromhex(reference[0]), numpy_norm(grads), rtol=1e-12)


def test_clip_value_across_threads_and_simd_levels(restore_settings):
    grads = _large_grads()
    _core.set_parallel_threshold(1)
    for level in available_levels():
        fastopt.set_simd_level(level)
        for threads in (1, 2):
            fastopt.set_num_threads(threads)
            g = copies(grads)
            clip_grad_value_(g, 0.7)
            for a, b in zip(g, grads):
                np.testing.assert_array_equal(a, np.clip(b, -b.dtype.type(0.7),
                                                         b.dtype.type(0.7)))


# ---------------------------------------------------------------------------
# Non-finite gradients

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_error_leaves_grads_alone(bad):
    grads = make_grads(SPECS["mixed"])
    grads[0][3, 4] = bad
    before = copies(grads)
    for norm_type in (2.0, math.inf):
        with pytest.raises(RuntimeError, match="non-finite"):
            clip_grad_norm_(grads, 1.0, norm_type=norm_type, error_if_nonfinite=True)
        for a, b in zip(grads, before):
            if b is not None:
                np.testing.assert_array_equal(a, b)


def test_nonfinite_without_error_propagates_like_torch():
    grads = make_grads(SPECS["f64"])
    grads[0][0, 0] = np.nan
    assert math.isnan(clip_grad_norm_(grads, 1.0))
    assert all(np.isnan(g).all() for g in grads)
    grads = make_grads(SPECS["f64"])
    grads[1][2] = np.inf
    assert clip_grad_norm_(grads, 1.0) == math.inf
    assert np.isnan(grads[1][2]) and not np.any(np.delete(grads[1], 2))
    assert not np.any(grads[0])


def test_clip_value_keeps_nan():
    g = np.array([np.nan, -5.0, 0.25, 5.0, -np.inf], F32)
    clip_grad_value_([g], 1.0)
    np.testing.assert_array_equal(g, np.array([np.nan, -1.0, 0.25, 1.0, -1.0], F32))


@pytest.mark.parametrize("clip", [0.0, 0.3, 1e6, math.inf])
@pytest.mark.parametrize("spec", SPECS, ids=list(SPECS))
def test_clip_value_against_numpy(spec, clip):
    grads = make_grads(SPECS[spec])
    before = copies(grads)
    assert clip_grad_value_(grads, clip) is None
    for a, b in zip(grads, before):
        if b is not None:
            c = b.dtype.type(clip)
            np.testing.assert_array_equal(a, np.clip(b, -c, c))


# ---------------------------------------------------------------------------
# Bad inputs: the error names the argument; no array changes.

def _base():
    return make_grads([((4, 3), F32), ((5,), F64)], seed=7)


def _readonly():
    a = np.ones(3, F32)
    a.flags.writeable = False
    return a


BAD_GRADS = [
    (lambda: _base() + [[1.0, 2.0]], TypeError, r"grads\[2\] must be a numpy.ndarray"),
    (lambda: _base() + [np.ones(3, np.int64)], TypeError, r"grads\[2\] must have dtype"),
    (lambda: _base() + [np.ones(3, np.float16)], TypeError, r"grads\[2\] must have dtype"),
    (lambda: _base() + [np.ones(3, ">f8")], TypeError, r"grads\[2\] must be in native"),
    (lambda: _base() + [np.ones((4, 4), F32)[:, 1]], ValueError,
     r"grads\[2\] must be C-contiguous"),
    (lambda: _base() + [_readonly()], ValueError, r"grads\[2\] is read-only"),
    (lambda: (lambda b: b + [b[0]])(_base()), ValueError, r"grads\[2\] overlaps grads\[0\]"),
    (lambda: (lambda b: b + [b[1][2:]])(_base()), ValueError, r"overlaps"),
    (lambda: dict(zip("ab", _base()), c="x"), TypeError, r"grads\['c'\] must be a numpy"),
    (lambda: set(), TypeError, "grads must be a list, tuple or dict"),
    (lambda: (g for g in _base()), TypeError, "grads must be a list, tuple or dict"),
]


def _arrays(grads):
    vals = grads.values() if isinstance(grads, dict) else grads
    return [g for g in vals if isinstance(g, np.ndarray)]


@pytest.mark.parametrize("make,exc,msg", BAD_GRADS)
def test_bad_grads_leave_arrays_alone(make, exc, msg):
    for call in (lambda g: clip_grad_norm_(g, 1e-3),
                 lambda g: clip_grad_norm_(g, 1e-3, norm_type=math.inf),
                 lambda g: clip_grad_value_(g, 1e-3)):
        grads = make()
        before = [a.copy() for a in _arrays(grads)] if not hasattr(grads, "send") else []
        with pytest.raises(exc, match=msg):
            call(grads)
        if before:
            for a, b in zip(_arrays(grads), before):
                np.testing.assert_array_equal(a, b)


BAD_ARGS = [
    (dict(max_norm=-1.0), ValueError, "max_norm must be >= 0"),
    (dict(max_norm=math.nan), ValueError, "max_norm"),
    (dict(max_norm="1.0"), TypeError, "max_norm must be a real number"),
    (dict(max_norm=True), TypeError, "max_norm must be a real number"),
    (dict(max_norm=None), TypeError, "max_norm"),
    (dict(max_norm=1e-3, norm_type=1), ValueError, "only 2 and inf supported"),
    (dict(max_norm=1e-3, norm_type=-math.inf), ValueError, "only 2 and inf supported"),
    (dict(max_norm=1e-3, norm_type="fro"), TypeError, "norm_type"),
    (dict(max_norm=1e-3, error_if_nonfinite="yes"), TypeError, "error_if_nonfinite"),
]


@pytest.mark.parametrize("kw,exc,msg", BAD_ARGS)
def test_bad_clip_norm_arguments(kw, exc, msg):
    grads = _base()
    before = copies(grads)
    with pytest.raises(exc, match=msg):
        clip_grad_norm_(grads, **kw)
    for a, b in zip(grads, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("clip,exc,msg", [
    (-0.5, ValueError, "clip_value must be >= 0"),
    (math.nan, ValueError, "clip_value"),
    ("1", TypeError, "clip_value must be a real number"),
])
def test_bad_clip_value_arguments(clip, exc, msg):
    grads = _base()
    before = copies(grads)
    with pytest.raises(exc, match=msg):
        clip_grad_value_(grads, clip)
    for a, b in zip(grads, before):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# Against torch.nn.utils

def _torch_params(torch, grads):
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(g.shape, dtype=getattr(torch, str(g.dtype))))
        p.grad = torch.from_numpy(g.copy())
        params.append(p)
    return params


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
@pytest.mark.parametrize("dtype,rtol", [(F32, 1e-6), (F64, 1e-12)])
def test_clip_grad_norm_against_torch(dtype, rtol, max_norm, norm_type):
    torch = pytest.importorskip("torch")
    grads = make_grads([((300, 70), dtype), ((9000,), dtype), ((3,), dtype)], seed=2)
    params = _torch_params(torch, grads)
    expected = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
    norm = clip_grad_norm_(grads, max_norm, norm_type=norm_type)
    np.testing.assert_allclose(norm, float(expected), rtol=rtol)
    for g, p in zip(grads, params):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=rtol, atol=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_against_torch(bad):
    torch = pytest.importorskip("torch")
    grads = make_grads([((5, 3), F64), ((7,), F64)])
    grads[0][1, 1] = bad
    params = _torch_params(torch, grads)
    expected = torch.nn.utils.clip_grad_norm_(params, 1.0)
    norm = clip_grad_norm_(grads, 1.0)
    np.testing.assert_equal(norm, float(expected))
    for g, p in zip(grads, params):
        np.testing.assert_array_equal(g, p.grad.numpy())
    with pytest.raises(RuntimeError):
        torch.nn.utils.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_clip_grad_value_against_torch(dtype):
    torch = pytest.importorskip("torch")
    grads = make_grads([((50, 7), dtype), ((100,), dtype)], seed=4)
    grads[1][5] = np.nan
    params = _torch_params(torch, grads)
    torch.nn.utils.clip_grad_value_(params, 0.3)
    clip_grad_value_(grads, 0.3)
    for g, p in zip(grads, params):
        np.testing.assert_array_equal(g, p.grad.numpy())
