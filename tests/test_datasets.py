import numpy as np
import pytest

from fastopt.course.datasets import course_moons, make_moons

SIZES = [1, 2, 3, 7, 100, 300, 301, (5, 9), (0, 4), (6, 0)]
NOISES = [None, 0.2]


def _counts(n_samples):
    if isinstance(n_samples, tuple):
        return n_samples
    return n_samples // 2, n_samples - n_samples // 2


@pytest.mark.parametrize("n_samples", SIZES)
def test_shapes_and_labels(n_samples):
    n_outer, n_inner = _counts(n_samples)
    X, y = make_moons(n_samples, noise=0.1, random_state=0)
    assert X.shape == (n_outer + n_inner, 2)
    assert X.dtype == np.float64
    assert y.shape == (n_outer + n_inner,)
    assert y.dtype == np.intp
    assert np.count_nonzero(y == 0) == n_outer
    assert np.count_nonzero(y == 1) == n_inner


def test_points_lie_on_the_half_circles_without_noise():
    X, y = make_moons(50, shuffle=False)
    outer, inner = X[y == 0], X[y == 1]
    np.testing.assert_allclose(np.hypot(*outer.T), 1.0)
    np.testing.assert_allclose(np.hypot(inner[:, 0] - 1, inner[:, 1] - 0.5), 1.0)
    assert np.all(outer[:, 1] >= 0) and np.all(inner[:, 1] <= 0.5)
    np.testing.assert_array_equal(y, np.repeat([0, 1], 25))


def test_shuffle_permutes_the_unshuffled_points():
    X0, y0 = make_moons(31, shuffle=False)
    X, y = make_moons(31, random_state=4)
    order = np.lexsort(X.T)
    order0 = np.lexsort(X0.T)
    np.testing.assert_array_equal(X[order], X0[order0])
    np.testing.assert_array_equal(y[order], y0[order0])


def test_int_seed_is_deterministic_and_leaves_global_state_alone():
    before = np.random.get_state()[1].copy()
    a = make_moons(40, noise=0.3, random_state=7)
    b = make_moons(40, noise=0.3, random_state=7)
    c = make_moons(40, noise=0.3, random_state=8)
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_none_draws_from_the_global_generator():
    np.random.seed(5)
    X, y = make_moons(40, noise=0.3)
    X2, y2 = make_moons(40, noise=0.3, random_state=np.random.RandomState(5))
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)


def test_generator_random_state_is_accepted():
    X, y = make_moons(20, noise=0.1, random_state=np.random.default_rng(0))
    assert X.shape == (20, 2) and y.shape == (20,)


def test_columns_layout_and_dtype():
    X, y = make_moons(11, noise=0.2, random_state=1)
    Xc, yc = make_moons(11, noise=0.2, random_state=1, layout="columns")
    assert Xc.shape == (2, 11) and yc.shape == (1, 11)
    assert Xc.flags.c_contiguous
    np.testing.assert_array_equal(Xc, X.T)
    np.testing.assert_array_equal(yc[0], y)
    X32, _ = make_moons(11, noise=0.2, random_state=1, dtype=np.float32)
    assert X32.dtype == np.float32
    np.testing.assert_array_equal(X32, X.astype(np.float32))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_samples": 0}, ValueError, "n_samples"),
        ({"n_samples": (1, 2, 3)}, ValueError, "n_samples"),
        ({"n_samples": (1, -2)}, ValueError, "n_samples"),
        ({"n_samples": "ten"}, ValueError, "n_samples"),
        ({"n_samples": (0, 2 ** 63)}, ValueError, "n_samples"),
        ({"n_samples": 2 ** 70}, ValueError, "n_samples"),
        ({"layout": "rowz"}, ValueError, "layout"),
        ({"dtype": np.int64}, ValueError, "dtype"),
        ({"random_state": "seed"}, TypeError, "random_state"),
        ({"random_state": 1.5}, TypeError, "random_state"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_moons(**kwargs)


def test_course_moons():
    before = np.random.get_state()[1].copy()
    X, Y = course_moons()
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    assert X.shape == (2, 300) and Y.shape == (1, 300)
    np.random.seed(3)
    X_rows, y = make_moons(n_samples=300, noise=0.2)
    np.testing.assert_array_equal(X, X_rows.T)
    np.testing.assert_array_equal(Y, y.reshape(1, -1))
    assert course_moons(dtype=np.float32)[0].dtype == np.float32


@pytest.mark.parametrize("seed", [0, 3, 42])
@pytest.mark.parametrize("n_samples", SIZES)
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("shuffle", [True, False])
def test_equals_scikit_learn(seed, n_samples, noise, shuffle):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    np.random.seed(seed)
    expected = sklearn_datasets.make_moons(n_samples, noise=noise, shuffle=shuffle)
    np.random.seed(seed)
    from_global = make_moons(n_samples, noise=noise, shuffle=shuffle)
    from_seed = make_moons(n_samples, noise=noise, shuffle=shuffle, random_state=seed)
    for X, y in (from_global, from_seed):
        np.testing.assert_array_equal(X, expected[0])
        np.testing.assert_array_equal(y, expected[1])
        assert y.dtype == expected[1].dtype


def test_course_moons_equals_scikit_learn():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    np.random.seed(3)
    X, y = sklearn_datasets.make_moons(n_samples=300, noise=0.2)
    X_course, Y_course = course_moons()
    np.testing.assert_array_equal(X_course, X.T)
    np.testing.assert_array_equal(Y_course, y.reshape((1, y.shape[0])))
