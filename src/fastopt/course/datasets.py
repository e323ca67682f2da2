"""Toy data sets.

:func:`make_moons` draws scikit-learn's two interleaving half circles with
the same construction and the same random draws, so that for any random
source it returns scikit-learn's arrays element for element.
:func:`course_moons` is the training set of the seed course.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .data import RandomSource, check_random_state

__all__ = ["course_moons", "make_moons"]

_LAYOUTS = ("rows", "columns")


def make_moons(
    n_samples: int | tuple[int, int] = 100,
    *,
    noise: float | None = None,
    shuffle: bool = True,
    random_state: RandomSource = None,
    dtype=np.float64,
    layout: str = "rows",
) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles, as scikit-learn's ``make_moons``.

    With θ = linspace(0, π, n) for each moon, class 0 is the outer half
    circle ``(cos θ, sin θ)`` and class 1 the inner one
    ``(1 − cos θ, 0.5 − sin θ)``. If ``shuffle``, the points are permuted by
    shuffling ``arange(n_samples)`` with the random source; then, if
    ``noise`` is set, ``normal(scale=noise)`` of shape ``(n_samples, 2)`` is
    drawn from the same source and added. These are scikit-learn's draws in
    scikit-learn's order, so ``np.random.seed(3); make_moons(300, noise=0.2)``
    equals ``sklearn.datasets.make_moons(300, noise=0.2)`` after the same
    seeding.

    Parameters
    ----------
    n_samples : int or tuple of two ints, default 100
        Total number of points, split ``n // 2`` outer and the rest inner;
        or ``(n_outer, n_inner)``.
    noise : float or None, default None
        Standard deviation of the Gaussian noise added to the points.
    shuffle : bool, default True
        Permute the points; otherwise class 0 comes first.
    random_state : None, int, numpy.random.RandomState or numpy.random.Generator
        Random source, as in :func:`fastopt.course.data.check_random_state`:
        ``None`` draws from NumPy's global generator, an int seeds a private
        ``RandomState``. A ``Generator`` is accepted too but draws different
        numbers than any ``RandomState``.
    dtype : float dtype, default float64
        Dtype of ``X``. Points are computed in float64 and rounded once.
    layout : {"rows", "columns"}, default "rows"
        ``"rows"`` returns ``X`` of shape ``(n_samples, 2)`` and ``y`` of
        shape ``(n_samples,)`` (scikit-learn). ``"columns"`` returns the
        course layout: ``X`` of shape ``(2, n_samples)`` and ``y`` of shape
        ``(1, n_samples)``, both C-contiguous.

    Returns
    -------
    X : ndarray of ``dtype``
        The points.
    y : ndarray of intp
        The class of each point, 0 or 1.
    """
    n_outer, n_inner = _split_samples(n_samples)
    if noise is not None:
        if isinstance(noise, (bool, np.bool_)) or not isinstance(noise, numbers.Real):
            raise TypeError(f"noise must be a real number or None, got "
                            f"{type(noise).__name__}")
        try:
            noise = float(noise)
        except OverflowError:
            noise = math.inf
        if not (math.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise must be finite and >= 0, got {noise!r}")
    if not isinstance(shuffle, (bool, np.bool_)):
        raise TypeError(f"shuffle must be a bool, got {type(shuffle).__name__}")
    if not isinstance(layout, str) or layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    try:
        dtype = np.dtype(dtype)
    except (TypeError, ValueError, SyntaxError):   # NumPy parses "a,b" as code
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype!r}") from None
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    generator = check_random_state(random_state)

    outer = np.linspace(0, np.pi, n_outer)
    inner = np.linspace(0, np.pi, n_inner)
    X = np.empty((n_outer + n_inner, 2))
    X[:n_outer, 0] = np.cos(outer)
    X[:n_outer, 1] = np.sin(outer)
    X[n_outer:, 0] = 1 - np.cos(inner)
    X[n_outer:, 1] = 1 - np.sin(inner) - 0.5
    y = np.zeros(n_outer + n_inner, dtype=np.intp)
    y[n_outer:] = 1

    if shuffle:
        order = np.arange(X.shape[0])
        generator.shuffle(order)
        X = X[order]
        y = y[order]
    if noise is not None:
        X += generator.normal(scale=noise, size=X.shape)

    if layout == "columns":
        return np.ascontiguousarray(X.T, dtype=dtype), y.reshape(1, -1)
    return X.astype(dtype, copy=False), y


def course_moons(*, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """The seed course's training set: 300 noisy moon points.

    The course calls ``np.random.seed(3)`` and then scikit-learn's
    ``make_moons(n_samples=300, noise=0.2)``, and transposes the result to
    put examples in columns. This returns the same arrays from a private
    ``RandomState(3)``, leaving NumPy's global generator untouched.

    Parameters
    ----------
    dtype : float dtype, default float64
        Dtype of ``X``.

    Returns
    -------
    X : ndarray of shape (2, 300)
        The points, one per column.
    Y : ndarray of intp, shape (1, 300)
        Their classes, 0 or 1.
    """
    return make_moons(300, noise=0.2, random_state=3, dtype=dtype, layout="columns")


# the most points whose (n, 2) float64 array NumPy could address
_MAX_SAMPLES = np.iinfo(np.intp).max // 16


def _split_samples(n_samples) -> tuple[int, int]:
    n_outer, n_inner = _counts(n_samples)
    if n_outer + n_inner > _MAX_SAMPLES:
        raise ValueError(f"n_samples must total at most {_MAX_SAMPLES} points, "
                         f"got {n_samples!r}")
    return n_outer, n_inner


def _counts(n_samples) -> tuple[int, int]:
    if isinstance(n_samples, numbers.Integral) and not isinstance(n_samples, bool):
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        n_outer = int(n_samples) // 2
        return n_outer, int(n_samples) - n_outer
    try:
        n_outer, n_inner = n_samples
    except (TypeError, ValueError):
        raise ValueError(
            f"n_samples must be an int or a tuple (n_outer, n_inner), got {n_samples!r}"
        ) from None
    for count in (n_outer, n_inner):
        is_int = isinstance(count, numbers.Integral) and not isinstance(count, bool)
        if not is_int or count < 0:
            raise ValueError(
                "n_samples must be an int or a tuple of two ints >= 0, "
                f"got {n_samples!r}"
            )
    return int(n_outer), int(n_inner)
