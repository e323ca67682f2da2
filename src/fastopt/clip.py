"""Gradient clipping, in place, over many arrays: torch.nn.utils's two clips.

``clip_grad_norm_`` rescales every gradient by one coefficient so that their
global norm is at most ``max_norm``; ``clip_grad_value_`` clamps every
element to ``[-clip_value, clip_value]``.  Both take the gradients as a
list, a tuple or a dict of NumPy arrays (or one array); None entries are
skipped, float32 and float64 arrays may be mixed.

The L2 norm is computed in C in one pass over memory, accumulated in double
(``_core.grad_sumsq`` per dtype), in an order fixed by the element index
alone: the norm has the same bits for every thread count and instruction-set
level.

Everything is checked before anything is written; a bad argument raises
TypeError or ValueError naming it and leaves every array as it was.  Every
gradient must be a float32 or float64 ndarray, C-contiguous, aligned, in
native byte order and writable (even when, as it turns out, no clipping is
needed: whether a call is valid does not depend on the values), and no two
may share memory (a gradient listed twice would count twice in the norm and
be scaled twice).
"""
import math
import numbers

import numpy as np

from fastopt import _core
from fastopt._typing import Grads as GradArrays

__all__ = ["clip_grad_norm_", "clip_grad_value_"]

# torch's guard against division by zero in clip_coef = max_norm / (norm + eps).
_EPS = 1e-6

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _collect(grads):
    """The non-None gradients, checked, and their names for messages.

    Returns (arrays, labels): labels[i] is how arrays[i] is named in errors.
    """
    if isinstance(grads, np.ndarray):
        items = [("grads", grads)]
    elif isinstance(grads, dict):
        items = [(f"grads[{k!r}]", g) for k, g in grads.items()]
    elif isinstance(grads, (list, tuple)):
        items = [(f"grads[{i}]", g) for i, g in enumerate(grads)]
    else:
        raise TypeError(f"grads must be a list, tuple or dict of numpy arrays "
                        f"(or one array), got {type(grads).__name__}")
    present = [(name, g) for name, g in items if g is not None]
    arrays, labels = [g for _, g in present], [name for name, _ in present]
    _core.check_arrays(arrays, labels, writable=True)
    return arrays, labels


def _by_dtype(arrays):
    """The arrays split by dtype, in a fixed order (float32, then float64),
    each keeping the order of ``grads``."""
    return [[a for a in arrays if a.dtype == dt] for dt in _FLOAT_DTYPES]


def _nonneg(x, name):
    """x as a float; a real number (not bool), not NaN, >= 0; inf allowed
    (the optimizers' check and message)."""
    return _core.check_real(x, name, 0.0, math.inf, closed=True, finite=False)


def _norm_type(norm_type):
    if isinstance(norm_type, str) and norm_type.lower() == "inf":
        return math.inf
    if isinstance(norm_type, (bool, np.bool_)) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type must be a number, got {type(norm_type).__name__}")
    # compared as given: float() of an int beyond the float range overflows
    if norm_type != 2 and norm_type != math.inf:
        raise ValueError(f"norm_type must be 2 or inf (only 2 and inf "
                         f"supported), got {norm_type!r}")
    return float(norm_type)


def _global_norm(groups, norm_type):
    if norm_type == 2.0:
        # One pass per dtype in C; the per-dtype sums (each in double, in a
        # fixed order) are added float32 first, then float64.
        total = 0.0
        for group in groups:
            if group:
                total += _core.grad_sumsq(group)
        return math.sqrt(total)
    # inf: the largest |g|, exact in any order, so deterministic as well.
    # NumPy's max propagates NaN, which the norm must report.
    norm = 0.0
    for group in groups:
        for a in group:
            if a.size:
                m = float(np.max(np.abs(a)))
                if m != m:
                    return m
                norm = max(norm, m)
    return norm


def clip_grad_norm_(grads: GradArrays, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    """Scale the gradients in place so that their global norm is <= max_norm.

    ``norm = sqrt(sum over every element of every gradient of g**2)`` (or, for
    ``norm_type=inf``, ``max |g|``); ``clip_coef = max_norm / (norm + 1e-6)``;
    when ``clip_coef < 1`` every gradient becomes ``g * clip_coef``, the
    coefficient computed in double and rounded once to each gradient's dtype.
    Returns the norm before clipping, as a Python float.

    Only ``norm_type`` 2 (the one in use almost everywhere, computed in C) and
    inf (exact in NumPy) are supported: other orders raise ValueError, since
    they would need a kernel of their own to keep the norm deterministic.

    Like torch: the norm is in double (torch reduces float32 gradients in
    float32, so float32 results agree with torch to about 1e-6 relative); a
    non-finite norm raises RuntimeError when ``error_if_nonfinite`` and
    otherwise propagates as torch does, every gradient multiplied by the
    coefficient: NaN for a NaN norm, 0 for an infinite one (so infinite
    elements become NaN).  ``max_norm=0`` zeroes the gradients.
    """
    arrays, _ = _collect(grads)
    max_norm = _nonneg(max_norm, "max_norm")
    norm_type = _norm_type(norm_type)
    if isinstance(error_if_nonfinite, np.bool_):
        error_if_nonfinite = bool(error_if_nonfinite)
    if error_if_nonfinite is not True and error_if_nonfinite is not False:
        raise TypeError(f"error_if_nonfinite must be a bool, got "
                        f"{type(error_if_nonfinite).__name__}")
    groups = _by_dtype(arrays)
    norm = _global_norm(groups, norm_type)
    if error_if_nonfinite and not math.isfinite(norm):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients is non-finite, "
            f"so it cannot be clipped. To disable this error and scale the "
            f"gradients by the non-finite norm anyway, set "
            f"`error_if_nonfinite=False`")
    clip_coef = max_norm / (norm + _EPS)
    # clip_coef >= 1 leaves the gradients alone; NaN does not (as torch).
    if not clip_coef >= 1.0:
        for group in groups:
            if group:
                _core.grad_scale_(group, clip_coef)
    return norm


def clip_grad_value_(grads: GradArrays, clip_value: float) -> None:
    """Clamp every element of the gradients to ``[-clip_value, clip_value]``
    in place (clip_value rounded to each gradient's dtype; NaN stays NaN, as
    in numpy.clip and torch.clamp).  Returns None.
    """
    arrays, _ = _collect(grads)
    clip_value = _nonneg(clip_value, "clip_value")
    for group in _by_dtype(arrays):
        if group:
            _core.grad_clamp_(group, clip_value)
