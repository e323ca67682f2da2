"""fastopt.flat.FlatParams and the fusing of back-to-back tensors into one:
done exactly when valid, bit-identical to the per-array path.

``_core.last_call_tensors()`` reports how many tensors the last kernel call
ran over after fusing."""
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
    rng = np.random.default_rng(1)
    for _ in range(25):
        for k, g in flat.grads.items():
            g[...] = rng.standard_normal(g.shape)       # backprop writes in place
        opt_flat.step(flat.grads)
        assert _core.last_call_tensors() == 1
        opt_sep.step({k: g.copy() for k, g in flat.grads.items()})
        assert _core.last_call_tensors() == len(m)
    for k in m:
        np.testing.assert_array_equal(flat.params[k], separate[k])
    a, b = opt_flat.state_dict()["state"], opt_sep.state_dict()["state"]
    for i in a:
        for kind in a[i]:
            np.testing.assert_array_equal(a[i][kind], b[i][kind])


def test_one_call_with_one_tensor():
    flat = FlatParams(_model())
    opt = Adam(flat.params)
    opt.step(flat.grads)
    assert _core.last_call_tensors() == 1
    other = FlatParams(_model())                       # another back-to-back buffer
    opt.step(other.grads)
    assert _core.last_call_tensors() == 1


def _fresh_grads(m):
    return {k: np.ones_like(v) for k, v in m.items()}


@pytest.mark.parametrize("how", ["fresh-arrays", "permuted", "gap", "one-none"])
def test_not_fused_unless_exactly_valid(how):
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
        off = [0, 10, 16, 21]                          # one element skipped before W2
        grads = {k: buf[o:o + v.size].reshape(v.shape) for (k, v), o in zip(m.items(), off)}
    elif how == "one-none":
        grads["b1"] = None
    opt.step(grads)
    # permuted: only W2 and b2 still follow one another; gap: W1+b1 and W2+b2;
    # one-none: the call covers W1, W2, b2, of which W2 and b2 touch
    expected = {"fresh-arrays": 4, "permuted": 3, "gap": 2, "one-none": 2}[how]
    assert _core.last_call_tensors() == expected


def test_strided_grads_are_refused_not_fused():
    m = _model()
    opt = Adam(FlatParams(m).params)
    buf = np.zeros(2 * 21, np.float32)[::2]
    grads = {"W1": buf[:10].reshape(5, 2), "b1": buf[10:15].reshape(5, 1),
             "W2": buf[15:20].reshape(1, 5), "b2": buf[20:21].reshape(1, 1)}
    before = {k: v.copy() for k, v in opt.state_dict()["state"].items()}
    with pytest.raises(ValueError, match="'W1' must be C-contiguous"):
        opt.step(grads)
    assert opt.state_dict()["state"].keys() == before.keys()


def test_separate_allocations_are_fused_only_when_they_touch():
    buf = np.zeros(30, np.float32)
    g = np.ones(30, np.float32)
    Adam([buf[0:10], buf[12:20]]).step([g[0:10], g[12:20]])      # a gap
    assert _core.last_call_tensors() == 2
    Adam([buf[10:20], buf[0:10]]).step([g[10:20], g[0:10]])      # out of order
    assert _core.last_call_tensors() == 2
    Adam([buf[0:10], buf[10:20].reshape(2, 5)]).step([g[0:10], g[10:20].reshape(2, 5)])
    assert _core.last_call_tensors() == 1
    a, b = np.zeros(10, np.float32), np.zeros(10, np.float32)
    Adam([a, b]).step([g[0:10], g[10:20]])                       # states fuse, params do not
    assert _core.last_call_tensors() == 2


def test_grad_views_reinterpreted_in_place_are_refused():
    m = _model()
    flat = FlatParams(m)
    opt = Adam(flat.params)
    opt.step(flat.grads)
    flat.grads["b1"].dtype = np.int32
    with pytest.raises(TypeError, match="'b1'"):
        opt.step(flat.grads)
    flat.grads["b1"].dtype = np.float32
    opt.step(flat.grads)
    assert _core.last_call_tensors() == 1


def test_mixed_dtype_flat_buffers_fuse_per_bucket():
    f32 = FlatParams(_model(np.float32, 1))
    f64 = FlatParams(_model(np.float64, 2))
    opt = Adam([*f32.params.values(), *f64.params.values()])
    opt.step([*f32.grads.values(), *f64.grads.values()])
    assert _core.last_call_tensors() == 1   # each bucket's call ran over one tensor
