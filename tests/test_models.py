import numpy as np
import pytest

from fastopt.course.data import course_minibatches
from fastopt.course.datasets import course_moons
from fastopt.course.models import MLP, he_init

ARCHITECTURES = [[2, 5, 2, 1], [3, 4, 1], [2, 1], [4, 6, 5, 3]]


def _batch(dims, m, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.standard_normal((dims[0], m))
    Y = rng.randint(0, 2, size=(dims[-1], m))
    return X, Y


def _course_forward(X, params, n_layers):
    """The course's forward pass: fresh arrays, np.dot(W, A) + b."""
    A = X
    activations = [X]
    for l in range(1, n_layers + 1):
        Z = np.dot(params[f"W{l}"], A) + params[f"b{l}"]
        A = np.maximum(0, Z) if l < n_layers else 1 / (1 + np.exp(-Z))
        activations.append(A)
    return activations


def _course_backward(Y, params, activations):
    """The course's backward pass, generalised to any depth."""
    n_layers = len(activations) - 1
    m = activations[0].shape[1]
    grads = {}
    dZ = 1.0 / m * (activations[-1] - Y)
    for l in range(n_layers, 0, -1):
        grads[f"dW{l}"] = np.dot(dZ, activations[l - 1].T)
        grads[f"db{l}"] = np.sum(dZ, axis=1, keepdims=True)
        if l > 1:
            dA = np.dot(params[f"W{l}"].T, dZ)
            dZ = np.multiply(dA, np.int64(activations[l - 1] > 0))
    return grads


def _course_cost(A, Y):
    return np.sum(np.multiply(-np.log(A), Y) + np.multiply(-np.log(1 - A), 1 - Y))


def test_he_init_matches_the_course():
    dims = [2, 5, 2, 1]
    before = np.random.get_state()[1].copy()
    params = he_init(dims, random_state=3)
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    np.random.seed(3)
    for l in range(1, len(dims)):
        expected = np.random.randn(dims[l], dims[l - 1]) * np.sqrt(2 / dims[l - 1])
        np.testing.assert_array_equal(params[f"W{l}"], expected)
        np.testing.assert_array_equal(params[f"b{l}"], np.zeros((dims[l], 1)))
    assert list(params) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    np.random.seed(3)
    from_global = he_init(dims)
    for name, value in params.items():
        np.testing.assert_array_equal(from_global[name], value)


def test_he_init_float32_rounds_the_float64_draws():
    params64 = he_init([3, 4, 1], random_state=0)
    params32 = he_init([3, 4, 1], random_state=0, dtype=np.float32)
    for name, value in params32.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, params64[name].astype(np.float32))


def test_he_init_accepts_a_generator():
    params = he_init([3, 4, 1], random_state=np.random.default_rng(0))
    assert params["W1"].shape == (4, 3)


@pytest.mark.parametrize("dims", ARCHITECTURES)
def test_shapes(dims):
    model = MLP(dims, random_state=0)
    assert model.n_layers == len(dims) - 1
    for l in range(1, len(dims)):
        assert model.params[f"W{l}"].shape == (dims[l], dims[l - 1])
        assert model.params[f"b{l}"].shape == (dims[l], 1)
    assert model.param_names == tuple(model.params)
    assert model.grad_names == tuple(model.grads)
    for pname, gname in zip(model.param_names, model.grad_names, strict=True):
        assert model.grads[gname].shape == model.params[pname].shape
    X, Y = _batch(dims, 9)
    assert model.forward(X).shape == (dims[-1], 9)
    assert model.predict(X).shape == (dims[-1], 9)


@pytest.mark.parametrize("dims", ARCHITECTURES)
@pytest.mark.parametrize("m", [1, 7, 64])
def test_bitwise_equal_to_the_course_formulas(dims, m):
    model = MLP(dims, random_state=1)
    params = model.params
    rng = np.random.RandomState(2)
    for name in params:
        params[name] += 0.1 * rng.standard_normal(params[name].shape)
    X, Y = _batch(dims, m, seed=3)
    activations = _course_forward(X, params, model.n_layers)
    expected = _course_backward(Y, params, activations)
    total = model.forward_backward(X, Y)
    assert total == _course_cost(activations[-1], Y)
    for name, value in expected.items():
        np.testing.assert_array_equal(model.grads[name], value)
    np.testing.assert_array_equal(model.forward(X), activations[-1])


@pytest.mark.parametrize("dims", ARCHITECTURES)
def test_gradients_match_central_differences(dims):
    model = MLP(dims, random_state=4)
    X, Y = _batch(dims, 13, seed=5)
    m = X.shape[1]

    def mean_cost():
        model.forward(X)
        return model.cost(Y) / m

    model.forward_backward(X, Y)
    analytic = {name: value.copy() for name, value in model.grads.items()}
    h = 1e-6
    for pname, gname in zip(model.param_names, model.grad_names, strict=True):
        param = model.params[pname]
        numeric = np.empty_like(param)
        for index in np.ndindex(param.shape):
            saved = param[index]
            param[index] = saved + h
            plus = mean_cost()
            param[index] = saved - h
            minus = mean_cost()
            param[index] = saved
            numeric[index] = (plus - minus) / (2 * h)
        np.testing.assert_allclose(analytic[gname], numeric, rtol=1e-5, atol=1e-8)


def test_float32_is_preserved():
    model = MLP([2, 5, 2, 1], dtype=np.float32, random_state=3)
    reference = MLP([2, 5, 2, 1], random_state=3)
    X, Y = _batch([2, 5, 2, 1], 20)
    for value in (*model.params.values(), *model.grads.values()):
        assert value.dtype == np.float32
    A = model.forward(X)
    assert A.dtype == np.float32
    total = model.forward_backward(X, Y)
    assert isinstance(total, float)
    reference_total = reference.forward_backward(X, Y)
    assert total == pytest.approx(reference_total, rel=1e-5)
    for name, value in model.grads.items():
        assert value.dtype == np.float32
        np.testing.assert_allclose(value, reference.grads[name], rtol=1e-4, atol=1e-6)
    assert model.predict(X).dtype == np.intp


def test_buffers_are_reused_between_steps():
    model = MLP([2, 5, 2, 1], random_state=3)
    grads_before = {name: value for name, value in model.grads.items()}
    X, Y = _batch([2, 5, 2, 1], 16)
    first = model.forward(X)
    model.backward(Y)
    second = model.forward(X)
    assert second is first
    model.forward_backward(X, Y)
    for name, value in model.grads.items():
        assert value is grads_before[name]


def test_gradients_into_views_of_one_flat_buffer():
    dims = [2, 5, 2, 1]
    model = MLP(dims, random_state=3)
    sizes = [model.params[name].size for name in model.param_names]
    flat = np.full(sum(sizes), np.nan)
    views = {}
    offset = 0
    for pname, gname, size in zip(
        model.param_names, model.grad_names, sizes, strict=True
    ):
        views[gname] = flat[offset : offset + size].reshape(model.params[pname].shape)
        offset += size
    X, Y = _batch(dims, 10)
    model.forward(X)
    assert model.backward(Y, grads=views) is views
    default = model.grads
    untouched = all(np.all(value == 0) for value in default.values())
    assert untouched
    model.backward(Y)
    np.testing.assert_array_equal(
        flat, np.concatenate([default[name].ravel() for name in model.grad_names])
    )
    model.forward_backward(X, Y, grads=views)
    assert not np.isnan(flat).any()


def test_params_are_used_without_copying():
    dims = [2, 5, 2, 1]
    source = he_init(dims, random_state=3)
    flat = np.concatenate([source[name].ravel() for name in source])
    params = {}
    offset = 0
    for name, value in source.items():
        params[name] = flat[offset : offset + value.size].reshape(value.shape)
        offset += value.size
    model = MLP(dims, params=params)
    for name in params:
        assert model.params[name] is params[name]
    X, _ = _batch(dims, 4)
    before = model.forward(X).copy()
    flat *= 2
    assert not np.array_equal(model.forward(X), before)


def test_dtype_is_taken_from_params():
    params = he_init([3, 2, 1], random_state=0, dtype=np.float32)
    assert MLP([3, 2, 1], params=params).dtype == np.float32


def test_predict_and_accuracy():
    model = MLP([2, 1], params={"W1": np.array([[1.0, 0.0]]), "b1": np.zeros((1, 1))})
    X = np.array([[-2.0, -1.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(model.predict(X), [[0, 0, 1, 1]])
    assert model.accuracy(X, np.array([[0, 1, 1, 1]])) == 0.75
    assert model.accuracy(X, np.array([0, 0, 1, 1])) == 1.0
    with pytest.raises(ValueError, match="Y must hold 4 labels"):
        model.accuracy(X, np.array([0, 1]))


def test_one_dimensional_labels_for_a_single_output():
    model = MLP([2, 3, 1], random_state=0)
    X, Y = _batch([2, 3, 1], 6)
    model.forward(X)
    assert model.cost(Y[0]) == model.cost(Y)


def _train_on_course_moons(learning_rate, num_epochs):
    X, Y = course_moons()
    model = MLP([2, 5, 2, 1], random_state=3)
    pairs = [
        (model.params[pname], model.grads[gname])
        for pname, gname in zip(model.param_names, model.grad_names, strict=True)
    ]
    costs = []
    for epoch in range(num_epochs):
        total = 0.0
        for X_batch, Y_batch in course_minibatches(X, Y, epoch):
            total += model.forward_backward(X_batch, Y_batch)
            for param, grad in pairs:
                param -= learning_rate * grad
        costs.append(total / X.shape[1])
    return model.accuracy(X, Y), costs


def test_first_epoch_cost_of_the_course():
    _, costs = _train_on_course_moons(0.0007, 1)
    assert costs[0] == pytest.approx(0.702405, abs=5e-7)


def test_training_on_the_course_moons_lowers_the_cost():
    accuracy, costs = _train_on_course_moons(0.05, 300)
    assert costs[-1] < 0.6 * costs[0]
    assert accuracy > 0.85


BAD_CONSTRUCTION = [
    ({"layer_dims": [2]}, ValueError, "layer_dims"),
    ({"layer_dims": [2, 0, 1]}, ValueError, "layer_dims"),
    ({"layer_dims": [2, 1.5, 1]}, ValueError, "layer_dims"),
    ({"layer_dims": [2, 1], "dtype": np.int32}, ValueError, "dtype"),
    ({"layer_dims": [2, 1], "dtype": np.float16}, ValueError, "dtype"),
    ({"layer_dims": [2, 1], "random_state": "x"}, TypeError, "random_state"),
    ({"layer_dims": [2, 1], "params": {"W1": np.zeros((1, 2))}}, TypeError, "b1"),
    (
        {
            "layer_dims": [2, 1],
            "params": {"W1": np.zeros((2, 1)), "b1": np.zeros((1, 1))},
        },
        ValueError,
        r"params\['W1'\] must have shape \(1, 2\)",
    ),
    (
        {
            "layer_dims": [2, 1],
            "dtype": np.float32,
            "params": he_init([2, 1], random_state=0),
        },
        ValueError,
        "dtype float32",
    ),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_CONSTRUCTION)
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        MLP(**kwargs)


def test_bad_calls():
    model = MLP([2, 3, 1], random_state=0)
    X, Y = _batch([2, 3, 1], 5)
    with pytest.raises(RuntimeError, match="forward"):
        model.backward(Y)
    with pytest.raises(RuntimeError, match="forward"):
        model.cost(Y)
    with pytest.raises(ValueError, match=r"X must have shape \(2, m\)"):
        model.forward(X.T)
    with pytest.raises(ValueError, match="m >= 1"):
        model.forward(np.empty((2, 0)))
    with pytest.raises(TypeError, match="X must be real"):
        model.forward(X + 1j)
    model.forward(X)
    with pytest.raises(TypeError, match="Y must be real"):
        model.backward(Y.astype(complex))
    with pytest.raises(ValueError, match=r"Y must have shape \(1, 5\)"):
        model.backward(Y[:, :4])
    bad = dict(model.grads, dW1=np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"grads\['dW1'\]"):
        model.backward(Y, grads=bad)
    strided = dict(model.grads, dW1=np.zeros((3, 4))[:, ::2])
    with pytest.raises(ValueError, match="C-contiguous"):
        model.backward(Y, grads=strided)
    readonly = {k: v.copy() for k, v in model.grads.items()}
    readonly["db1"].flags.writeable = False
    before = {k: v.copy() for k, v in readonly.items()}
    for call in (lambda: model.backward(Y, grads=readonly),
                 lambda: model.forward_backward(X, Y, grads=readonly)):
        with pytest.raises(ValueError, match=r"grads\['db1'\] must be writable"):
            call()
        assert all(np.array_equal(readonly[k], before[k]) for k in before)
    with pytest.raises(TypeError, match=r"grads\['db2'\]"):
        model.backward(Y, grads={k: v for k, v in model.grads.items() if k != "db2"})


def _saturating_model(z, dtype=np.float32):
    """A one-layer float32 model whose output for example i is sigmoid(z[i])."""
    model = MLP([1, 1], params={"W1": np.ones((1, 1), dtype), "b1": np.zeros((1, 1), dtype)})
    with np.errstate(over="ignore"):        # exp(200) in float32
        model.forward(np.asarray([z], dtype))
    return model


# NumPy warns of the saturated arithmetic (log(0), 0 * inf) these tests make
_saturating = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@_saturating
def test_cost_of_saturated_predictions_is_the_limit_not_nan():
    """float32 rounds sigmoid(200) to 1 and sigmoid(-200) to 0; the
    course's formula then multiplies log(0) by a zero label (NaN), a term
    whose limit is 0.  The other terms are the formula's, bit for bit."""
    z = [200.0, -200.0, 0.5, -1.5]
    Y = np.asarray([[1, 0, 1, 0]], np.float32)
    model = _saturating_model(z)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        A = model.forward(np.asarray([z], np.float32)).copy()
        formula = -(Y * np.log(A) + (1 - Y) * np.log(1 - A))
    assert A[0, :2].tolist() == [1.0, 0.0]
    assert np.isnan(formula[0, :2]).all() and np.isfinite(formula[0, 2:]).all()
    expected = np.add.reduce(np.asarray([0, 0, *formula[0, 2:]], np.float32), axis=None)
    assert model.cost(Y) == float(expected)
    # where the formula is defined nothing changes
    assert _saturating_model(z[2:]).cost(Y[:, 2:]) == float(np.add.reduce(formula[0, 2:]))


@_saturating
def test_cost_of_a_confidently_wrong_prediction_is_infinite():
    model = _saturating_model([200.0, 0.5])
    assert model.cost(np.asarray([[0, 1]], np.float32)) == np.inf


def test_cost_of_nan_activations_stays_nan():
    model = MLP([1, 1], params={"W1": np.full((1, 1), np.nan, np.float32),
                                "b1": np.zeros((1, 1), np.float32)})
    model.forward(np.asarray([[1.0, 2.0]], np.float32))
    assert np.isnan(model.cost(np.asarray([[1, 0]], np.float32)))
