"""Mini-batch iteration over in-memory arrays.

:func:`minibatches` splits a data set into mini-batches along the example
axis: one batch of everything is batch gradient descent, batches of one are
stochastic gradient descent, anything between is mini-batch gradient descent.
:func:`course_minibatches` reproduces the per-epoch shuffling of the seed
course (Deep Learning Specialization, course 2 week 2) exactly.

Random sources follow scikit-learn's ``random_state`` convention, see
:func:`check_random_state`.
"""

from __future__ import annotations

import numbers
import threading
from collections.abc import Iterator

import numpy as np

__all__ = [
    "COURSE_FIRST_SEED",
    "check_random_state",
    "course_minibatches",
    "minibatches",
]

#: Seed of the course's first epoch: its counter starts at 10 and is
#: incremented before each epoch is shuffled.
COURSE_FIRST_SEED = 11

RandomSource = int | np.random.Generator | np.random.RandomState | None

# One reusable RandomState per thread for int seeds, see _permutation.
_seeded = threading.local()


def check_random_state(
    random_state: RandomSource,
) -> np.random.Generator | np.random.RandomState:
    """Turn ``random_state`` into a NumPy random generator.

    Parameters
    ----------
    random_state : None, int, numpy.random.RandomState or numpy.random.Generator
        ``None`` returns NumPy's global ``RandomState`` (the one that
        ``np.random.seed`` seeds), as scikit-learn does. An int returns
        ``np.random.RandomState(random_state)``, which draws the same numbers
        as ``np.random.seed(random_state)`` followed by calls on the global
        generator, without touching global state. A ``RandomState`` or
        ``Generator`` is returned as is, so draws advance its state.

    Returns
    -------
    numpy.random.RandomState or numpy.random.Generator
    """
    return _random_state(random_state, "random_state")


def minibatches(
    X,
    Y,
    batch_size: int | None,
    *,
    shuffle: bool = True,
    seed: RandomSource = None,
    axis: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Split ``(X, Y)`` into mini-batches covering each example exactly once.

    The ``m`` examples lie along ``axis`` of both arrays. They are permuted
    (if ``shuffle``) and cut into ``ceil(m / batch_size)`` consecutive
    batches; the last one holds the ``m mod batch_size`` remaining examples
    when ``batch_size`` does not divide ``m``.

    Parameters
    ----------
    X, Y : array_like
        Inputs and targets, with the same number of examples along ``axis``.
    batch_size : int or None
        Examples per batch. ``None`` or any value ``>= m`` gives a single
        batch (batch gradient descent); ``1`` gives stochastic gradient
        descent.
    shuffle : bool, default True
        Permute the examples first. Without shuffling every batch is a view
        of ``X`` and ``Y`` (basic slicing, no copy); with shuffling every
        batch is a new contiguous array.
    seed : None, int, numpy.random.RandomState or numpy.random.Generator
        Source of the permutation, as in :func:`check_random_state`. The
        permutation of an int seed is ``RandomState(seed).permutation(m)``,
        identical to the course's ``np.random.seed(seed);
        np.random.permutation(m)``. Since an int always gives the same
        permutation, pass a new one every epoch or a generator object, whose
        state advances from call to call. ``None`` draws from NumPy's global
        generator. Ignored when ``shuffle`` is false.
    axis : int, default 0
        Axis of the examples: 0 for rows (scikit-learn layout), 1 for
        columns (the course layout, ``X`` of shape ``(n_features, m)`` and
        ``Y`` of shape ``(1, m)``). Negative values count from the end.

    Returns
    -------
    iterator of (X_batch, Y_batch)
        The arguments are checked and the permutation drawn when this
        function is called, not when iteration starts.

    Raises
    ------
    TypeError
        If ``batch_size`` or ``axis`` is not an integer, ``shuffle`` is not a
        bool, or ``seed`` is not a random source.
    ValueError
        If ``batch_size < 1``, ``axis`` is out of range for ``X`` or ``Y``,
        or ``X`` and ``Y`` hold different numbers of examples.

    Examples
    --------
    >>> X = np.arange(10.0).reshape(5, 2)
    >>> y = np.arange(5)
    >>> [yb.tolist() for _, yb in minibatches(X, y, 2, shuffle=False)]
    [[0, 1], [2, 3], [4]]
    """
    X = np.asarray(X)
    Y = np.asarray(Y)
    x_axis = _normalize_axis(axis, X, "X")
    y_axis = _normalize_axis(axis, Y, "Y")
    m = X.shape[x_axis]
    if Y.shape[y_axis] != m:
        raise ValueError(
            f"X and Y must hold the same number of examples along axis {axis}, "
            f"got {m} and {Y.shape[y_axis]}"
        )
    size = _check_batch_size(batch_size, m)

    if not _is_bool(shuffle):
        raise TypeError(f"shuffle must be a bool, got {type(shuffle).__name__}")
    if not shuffle:
        return _slices(X, Y, x_axis, y_axis, m, size)
    return _gathers(X, Y, x_axis, y_axis, _permutation(seed, m), size)


def course_minibatches(
    X, Y, epoch: int, batch_size: int = 64
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Mini-batches of the course's training loop for one epoch.

    The course shuffles epoch ``i`` (counting from 0) with
    ``np.random.seed(11 + i); np.random.permutation(m)`` on the global
    generator, then cuts contiguous slices of ``batch_size`` columns. This
    yields the same batches, in the same order, from a private
    ``RandomState(11 + i)``; NumPy's global generator is left untouched.

    Parameters
    ----------
    X : array_like of shape (n_features, m)
        Inputs, one example per column.
    Y : array_like of shape (1, m)
        Labels, one example per column.
    epoch : int
        Index of the epoch, starting at 0.
    batch_size : int, default 64
        Columns per batch; the last batch keeps the remainder.

    Returns
    -------
    iterator of (X_batch, Y_batch)
        ``X_batch`` of shape ``(n_features, b)`` and ``Y_batch`` of shape
        ``(1, b)``.

    Examples
    --------
    >>> for epoch in range(num_epochs):  # doctest: +SKIP
    ...     for X_batch, Y_batch in course_minibatches(X, Y, epoch):
    ...         ...
    """
    if not isinstance(epoch, numbers.Integral) or isinstance(epoch, bool):
        raise TypeError(f"epoch must be an int, got {type(epoch).__name__}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return minibatches(X, Y, batch_size, seed=COURSE_FIRST_SEED + int(epoch), axis=1)


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def _random_state(value: RandomSource, name: str):
    if value is None:
        return np.random.mtrand._rand
    if isinstance(value, (np.random.RandomState, np.random.Generator)):
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return np.random.RandomState(int(value))
    raise TypeError(
        f"{name} must be None, an int, a numpy.random.RandomState or a "
        f"numpy.random.Generator, got {type(value).__name__}"
    )


def _permutation(seed: RandomSource, m: int) -> np.ndarray:
    """``check_random_state(seed).permutation(m)``, fast for int seeds."""
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        # RandomState(seed) takes about 0.3 ms to build (it first seeds its
        # bit generator from OS entropy), as long as a whole epoch of the
        # course's training; reseeding a cached one gives the same state in
        # about 3 us.
        generator = getattr(_seeded, "generator", None)
        if generator is None:
            generator = _seeded.generator = np.random.RandomState()
        generator.seed(int(seed))
        return generator.permutation(m)
    return _random_state(seed, "seed").permutation(m)


def _normalize_axis(axis: int, array: np.ndarray, name: str) -> int:
    if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -array.ndim <= axis < array.ndim:
        raise ValueError(
            f"axis {axis} is out of range for {name} with {array.ndim} dimension(s)"
        )
    return int(axis) % array.ndim


def _check_batch_size(batch_size: int | None, m: int) -> int:
    if batch_size is None:
        return max(m, 1)
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool):
        raise TypeError(
            f"batch_size must be an int or None, got {type(batch_size).__name__}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return int(min(batch_size, max(m, 1)))


def _slices(X, Y, x_axis, y_axis, m, size):
    x_index = [slice(None)] * X.ndim
    y_index = [slice(None)] * Y.ndim
    for start in range(0, m, size):
        x_index[x_axis] = y_index[y_axis] = slice(start, start + size)
        yield X[tuple(x_index)], Y[tuple(y_index)]


def _gathers(X, Y, x_axis, y_axis, permutation, size):
    for start in range(0, permutation.size, size):
        batch = permutation[start : start + size]
        yield X.take(batch, axis=x_axis), Y.take(batch, axis=y_axis)
