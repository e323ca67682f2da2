"""fastopt.flat.FlatParams and the optimizer's single-tensor path for
back-to-back buffers: taken exactly when valid, bit-identical to the
per-array path."""
import numpy as np
import pytest

from fastopt import _core
from fastopt.flat import FlatParams
from fastopt.optim import SGD, Adam, RMSprop


def _model(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return {"W1": rng.standard_normal((5, 2)).astype(dtype),
            "b1": rng.standard_normal((5, 1)).astype(dtype),
            "W2": rng.standard_normal((1, 5)).astype(dtype),
            "b2": rng.standard_normal((1, 1)).astype(dtype)}


@pytest.fixture
def tensor_counts(monkeypatch):
    """Record how many tensors each adam_many call receives."""
    counts = []
    real = _core.adam_many

    def spy(params, *args, **kwargs):
        counts.append(len(params))
        return real(params, *args, **kwargs)
    monkeypatch.setattr(_core, "adam_many", spy)
    return counts


def test_flatparams_copies_into_views():
    m = _model(np.float64)
    flat = FlatParams(m)
    assert list(flat.params) == list(m) and list(flat.grads) == list(m)
    offset = 0
    for k, a in m.items():
        v = flat.params[k]
        assert v.shape == a.shape and v.dtype == np.float64 and v.flags.c_contiguous
        np.testing.assert_array_equal(v, a)
        assert np.shares_memory(v, flat.param_buffer) and not np.shares_memory(v, a)
        assert np.shares_memory(flat.grads[k], flat.grad_buffer)
        np.testing.assert_array_equal(flat.param_buffer[offset:offset + a.size], a.ravel())
        offset += a.size
    assert not flat.grad_buffer.any()
    flat.grads["b1"][...] = 3.0
    flat.zero_grad()
    assert not flat.grad_buffer.any()


def test_flatparams_dtypes_and_lists():
    m = _model(np.float64)
    flat = FlatParams(list(m.values()), dtype=np.float32)
    assert isinstance(flat.params, list) and flat.param_buffer.dtype == np.float32
    np.testing.assert_array_equal(flat.params[0], m["W1"].astype(np.float32))
    mixed = FlatParams([np.zeros(2, np.float32), np.zeros(3)])
    assert mixed.dtype == np.float64
    with pytest.raises(TypeError, match="float32 or float64"):
        FlatParams([np.zeros(2, np.int64)])
    with pytest.raises(TypeError, match="parameter 'a'"):
        FlatParams({"a": [1.0]})
    with pytest.raises(TypeError):
        FlatParams(np.zeros(3))


@pytest.mark.parametrize("cls, config", [(Adam, dict(lr=0.01, amsgrad=True)),
                                         (SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
                                         (RMSprop, dict(centered=True, momentum=0.5))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flat_path_is_bit_identical_to_the_array_path(cls, config, dtype):
    m = _model(dtype)
    flat = FlatParams(m)
    separate = {k: v.copy() for k, v in m.items()}
    opt_flat = cls(flat.params, **config)
    opt_sep = cls(separate, **config)
    assert opt_flat._buckets[0].flat is not None
    assert opt_sep._buckets[0].flat is None
    rng = np.random.default_rng(1)
    for _ in range(25):
        for k, g in flat.grads.items():
            g[...] = rng.standard_normal(g.shape)       # backprop writes in place
        opt_flat.step(flat.grads)
        opt_sep.step({k: g.copy() for k, g in flat.grads.items()})
    for k in m:
        np.testing.assert_array_equal(flat.params[k], separate[k])
    a, b = opt_flat.state_dict()["state"], opt_sep.state_dict()["state"]
    for i in a:
        for kind in a[i]:
            np.testing.assert_array_equal(a[i][kind], b[i][kind])


def test_one_call_with_one_tensor(tensor_counts):
    flat = FlatParams(_model())
    opt = Adam(flat.params)
    opt.step(flat.grads)
    opt.step(flat.grads)
    assert tensor_counts == [1, 1]
    other = FlatParams(_model())                       # another back-to-back buffer
    opt.step(other.grads)
    assert tensor_counts[-1] == 1


def _fresh_grads(m):
    return {k: np.ones_like(v) for k, v in m.items()}


@pytest.mark.parametrize("how", ["fresh-arrays", "permuted", "gap",
                                 "one-none", "strided"])
def test_not_merged_unless_exactly_valid(tensor_counts, how):
    m = _model()
    flat = FlatParams(m)
    opt = Adam(flat.params)
    grads = dict(flat.grads)
    if how == "fresh-arrays":
        grads = _fresh_grads(m)
    elif how == "permuted":
        # The same buffer, but the views are laid out in another order.
        other = FlatParams({k: m[k] for k in ["b1", "W1", "W2", "b2"]})
        grads = {k: other.grads[k] for k in m}
    elif how == "gap":
        buf = np.zeros(flat.grad_buffer.size + 1, np.float32)
        off = [0, 10, 15, 21]                          # one element skipped before W2
        grads = {k: buf[o:o + v.size].reshape(v.shape) for (k, v), o in zip(m.items(), off)}
    elif how == "one-none":
        grads["b2"] = None
    elif how == "strided":
        buf = np.zeros(2 * flat.grad_buffer.size, np.float32)[::2]
        grads = {"W1": buf[:10].reshape(5, 2), "b1": buf[10:15].reshape(5, 1),
                 "W2": buf[15:20].reshape(1, 5), "b2": buf[20:21].reshape(1, 1)}
        with pytest.raises(ValueError, match="'W1' must be C-contiguous"):
            opt.step(grads)
        assert tensor_counts == [4]
        return
    opt.step(grads)
    assert tensor_counts == [4 if how != "one-none" else 3]


def test_params_not_back_to_back_are_not_merged():
    buf = np.zeros(30, np.float32)
    params = [buf[0:10], buf[12:20]]                   # a gap
    assert Adam(params)._buckets[0].flat is None
    params = [buf[10:20], buf[0:10]]                   # out of order
    assert Adam(params)._buckets[0].flat is None
    params = [buf[0:10], buf[10:20].reshape(2, 5)]
    assert Adam(params)._buckets[0].flat is not None
    a, b = np.zeros(10, np.float32), np.zeros(10, np.float32)
    assert Adam([a, b])._buckets[0].flat is None       # separate allocations


def test_cached_span_follows_changes_to_the_grad_views(tensor_counts):
    m = _model()
    flat = FlatParams(m)
    opt = Adam(flat.params)
    opt.step(flat.grads)
    opt.step(flat.grads)
    # The same view objects, reinterpreted in place: the cache must notice.
    flat.grads["b1"].dtype = np.int32
    with pytest.raises(TypeError, match="'b1'"):
        opt.step(flat.grads)
    flat.grads["b1"].dtype = np.float32
    opt.step(flat.grads)
    assert tensor_counts == [1, 1, 4, 1]   # the refused step went array by array


def test_mixed_dtype_flat_buffers_merge_per_bucket(monkeypatch):
    counts = []
    real = _core.adam_many
    monkeypatch.setattr(_core, "adam_many",
                        lambda p, *a, **k: (counts.append(len(p)), real(p, *a, **k))[1])
    f32 = FlatParams(_model(np.float32, 1))
    f64 = FlatParams(_model(np.float64, 2))
    opt = Adam([*f32.params.values(), *f64.params.values()])
    opt.step([*f32.grads.values(), *f64.grads.values()])
    assert counts == [1, 1]
