import math

import numpy as np
import pytest

from fastopt.course.data import check_random_state, course_minibatches, minibatches

CASES = [
    # (m, batch_size, expected batch sizes)
    (300, 64, [64, 64, 64, 64, 44]),
    (256, 64, [64, 64, 64, 64]),
    (5, 2, [2, 2, 1]),
    (5, 1, [1, 1, 1, 1, 1]),
    (5, 5, [5]),
    (5, 7, [5]),
    (5, None, [5]),
    (1, 3, [1]),
]


def _data(m, axis=0):
    """X holds each example's index in every feature; Y holds it once."""
    X = np.repeat(np.arange(m, dtype=np.float64)[:, None], 3, axis=1)
    Y = np.arange(m)
    if axis == 1:
        return np.ascontiguousarray(X.T), Y.reshape(1, m)
    return X, Y


def _course_random_mini_batches(X, Y, mini_batch_size, seed):
    """The course's random_mini_batches, global seeding included."""
    np.random.seed(seed)
    m = X.shape[1]
    permutation = list(np.random.permutation(m))
    shuffled_X = X[:, permutation]
    shuffled_Y = Y[:, permutation].reshape((1, m))
    batches = []
    complete = math.floor(m / mini_batch_size)
    for k in range(complete):
        window = slice(k * mini_batch_size, (k + 1) * mini_batch_size)
        batches.append((shuffled_X[:, window], shuffled_Y[:, window]))
    if m % mini_batch_size != 0:
        window = slice(complete * mini_batch_size, m)
        batches.append((shuffled_X[:, window], shuffled_Y[:, window]))
    return batches


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("m, batch_size, sizes", CASES)
def test_every_example_exactly_once(m, batch_size, sizes, shuffle, axis):
    X, Y = _data(m, axis)
    batches = list(minibatches(X, Y, batch_size, shuffle=shuffle, seed=0, axis=axis))
    assert [yb.shape[axis] for _, yb in batches] == sizes
    for xb, yb in batches:
        assert xb.shape[axis] == yb.shape[axis]
        np.testing.assert_array_equal(np.moveaxis(xb, axis, 0)[:, 0], yb.ravel())
    seen = np.concatenate([yb.ravel() for _, yb in batches])
    np.testing.assert_array_equal(np.sort(seen), np.arange(m))
    if not shuffle:
        np.testing.assert_array_equal(seen, np.arange(m))


def test_unshuffled_batches_are_views():
    X, Y = _data(10, axis=1)
    for xb, yb in minibatches(X, Y, 3, shuffle=False, axis=1):
        assert np.shares_memory(xb, X) and np.shares_memory(yb, Y)


def test_shuffled_batches_are_copies():
    X, Y = _data(10)
    for xb, yb in minibatches(X, Y, 3, seed=1):
        assert not np.shares_memory(xb, X) and not np.shares_memory(yb, Y)
        assert xb.flags.c_contiguous


def test_higher_dimensional_examples():
    X = np.arange(7 * 2 * 3).reshape(7, 2, 3)
    Y = np.arange(7)
    batches = list(minibatches(X, Y, 3, seed=2))
    order = np.concatenate([yb for _, yb in batches])
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in batches]), X[order])


def test_negative_axis():
    X, Y = _data(6, axis=1)
    batches = list(minibatches(X, Y, 4, shuffle=False, axis=-1))
    assert [xb.shape for xb, _ in batches] == [(3, 4), (3, 2)]


@pytest.mark.parametrize("seed", [0, 1, 11, 2**32 - 1])
def test_int_seed_matches_global_seeding(seed):
    X, Y = _data(300, axis=1)
    np.random.seed(seed)
    expected = np.random.permutation(300)
    state = np.random.get_state()[1].copy()
    batches = list(minibatches(X, Y, 64, seed=seed, axis=1))
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    order = np.concatenate([yb[0] for _, yb in batches])
    np.testing.assert_array_equal(order, expected)
    np.testing.assert_array_equal(
        np.random.RandomState(seed).permutation(300), expected
    )


def test_none_seed_draws_from_the_global_generator():
    X, Y = _data(50)
    np.random.seed(9)
    first = np.concatenate([yb for _, yb in minibatches(X, Y, 8)])
    np.testing.assert_array_equal(first, np.random.RandomState(9).permutation(50))


@pytest.mark.parametrize("make", [np.random.default_rng, np.random.RandomState])
def test_generator_seed_advances_between_epochs(make):
    X, Y = _data(40)
    generator = make(0)
    epochs = [
        np.concatenate([yb for _, yb in minibatches(X, Y, 16, seed=generator)])
        for _ in range(2)
    ]
    assert not np.array_equal(epochs[0], epochs[1])
    np.testing.assert_array_equal(epochs[0], make(0).permutation(40))


@pytest.mark.parametrize("m", [300, 256, 65])
def test_course_minibatches_match_the_course(m):
    rng = np.random.RandomState(0)
    X = rng.standard_normal((2, m))
    Y = rng.randint(0, 2, size=(1, m))
    before = np.random.get_state()[1].copy()
    ours = [list(course_minibatches(X, Y, epoch)) for epoch in range(4)]
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    seed = 10
    for epoch in range(4):
        seed += 1
        expected = _course_random_mini_batches(X, Y, 64, seed)
        assert len(ours[epoch]) == len(expected)
        for (xb, yb), (x_ref, y_ref) in zip(ours[epoch], expected, strict=True):
            np.testing.assert_array_equal(xb, x_ref)
            np.testing.assert_array_equal(yb, y_ref)


def test_course_minibatches_batch_size():
    X, Y = _data(10, axis=1)
    assert [yb.shape for _, yb in course_minibatches(X, Y, 0, batch_size=4)] == [
        (1, 4),
        (1, 4),
        (1, 2),
    ]


BAD = [
    # (arguments, exception, message fragment)
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ({"batch_size": -3}, ValueError, "batch_size must be >= 1"),
    ({"batch_size": 2.0}, TypeError, "batch_size"),
    ({"batch_size": True}, TypeError, "batch_size"),
    ({"batch_size": "64"}, TypeError, "batch_size"),
    ({"axis": 2}, ValueError, "axis 2 is out of range for X"),
    ({"axis": -3}, ValueError, "axis -3 is out of range for X"),
    ({"axis": 1.0}, TypeError, "axis"),
    ({"Y": np.arange(9)}, ValueError, "same number of examples"),
    ({"Y": np.arange(10), "axis": 1}, ValueError, "out of range for Y"),
    ({"seed": "0"}, TypeError, "seed must be"),
    ({"seed": 0.5}, TypeError, "seed must be"),
]


@pytest.mark.parametrize("overrides, error, match", BAD)
def test_bad_inputs_raise_when_called(overrides, error, match):
    X, Y = _data(10)
    arguments = {"X": X, "Y": Y, "batch_size": 4, **overrides}
    with pytest.raises(error, match=match):
        minibatches(**arguments)


@pytest.mark.parametrize(
    "epoch, error", [(-1, ValueError), (1.0, TypeError), (None, TypeError)]
)
def test_course_minibatches_bad_epoch(epoch, error):
    X, Y = _data(10, axis=1)
    with pytest.raises(error, match="epoch"):
        course_minibatches(X, Y, epoch)


def test_check_random_state():
    assert check_random_state(None) is np.random.mtrand._rand
    generator = np.random.default_rng(0)
    assert check_random_state(generator) is generator
    state = check_random_state(4)
    assert isinstance(state, np.random.RandomState)
    np.testing.assert_array_equal(state.randn(5), np.random.RandomState(4).randn(5))
