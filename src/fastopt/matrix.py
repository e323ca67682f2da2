"""Matrix steps: the part of a rule's step that is matrix products.

A rule of the table may name a function of this module as its ``matrix``
(:mod:`fastopt.rules`).  Its step is then an element-wise pass of the
rule's loop, which writes a work array; the matrix step, which turns that
array into the direction of the update; and a second element-wise pass,
which applies the direction to the parameter (docs/adding-a-rule.md).  A
matrix step is ``fn(work, hyper) -> (direction, scale)``: ``work`` is a
C-contiguous matrix in the parameter's dtype, which it must not write;
``hyper`` holds the rule's hyperparameters by name, already checked; the
direction is a new C-contiguous array of the same shape and dtype, and
``scale`` a float that the second pass gets for this tensor.  The door of
the rule (``fastopt.functional``, the optimizers) and its NumPy reference
(``fastopt.reference``) call the same function.

The products are NumPy's ``matmul`` (BLAS) in the parameter's dtype, so
their bits are those of the BLAS library NumPy uses: the same from run to
run on one machine and configuration, not necessarily across machines or
BLAS thread counts, unlike the element-wise passes.
"""
import math

import numpy as np

from fastopt import _core

__all__ = ["newton_schulz", "muon_lr_ratio", "muon"]


def newton_schulz(x, coefficients, steps, eps):
    """The quintic Newton-Schulz iteration of Muon, as torch.optim.Muon's
    ``_zeropower_via_newtonschulz`` does it, in ``x``'s dtype::

        X = x^T if rows > cols else x        (the Gram matrix is the short side's)
        X = X / max(||x||_F, eps)
        repeat steps times:
            A = X X^T
            B = b A + c (A A)                (torch: addmm(A, A, A, beta=b, alpha=c))
            X = a X + B X                    (torch: addmm(X, B, X, beta=a))
        return X^T if rows > cols else X

    ||x||_F is computed in double, in a fixed order (fastopt's sum of
    squares), then rounded to the dtype for the division.  torch computes
    all of this in bfloat16 (8 bits of mantissa) whatever x's dtype; here
    float32 or float64, as x is.  ``x`` is not written."""
    a, b, c = (float(v) for v in coefficients)
    x = np.ascontiguousarray(x)
    rows, cols = x.shape
    norm = math.sqrt(_core.grad_sumsq([x]))
    y = x.T if rows > cols else x
    # NaN and infinity propagate silently, as through the element-wise
    # kernels (a norm beyond float32's range rounds to inf, and x / inf
    # is 0 where x is finite)
    with np.errstate(all="ignore"):
        y = y / x.dtype.type(max(norm, float(eps)))
        for _ in range(int(steps)):
            gram = y @ y.T
            poly = b * gram + c * (gram @ gram)
            y = a * y + poly @ y
    if rows > cols:
        y = y.T
    return np.ascontiguousarray(y)


def muon_lr_ratio(adjust_lr_fn, rows, cols):
    """The factor torch.optim.Muon's ``_adjust_lr`` applies to lr for a
    rows x cols parameter: None or "original" (Keller Jordan's Muon)
    sqrt(max(1, rows / cols)); "match_rms_adamw" (Moonshot's, Liu et al.
    2025) 0.2 * sqrt(max(rows, cols)), which gives the update the RMS of
    AdamW's.  A matrix without columns has no elements; its factor is 1."""
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1.0, rows / cols)) if cols else 1.0


def muon(work, hyper):
    """Muon's matrix step: the Newton-Schulz direction of the first pass's
    update, and the lr ratio of the parameter's shape."""
    direction = newton_schulz(work, hyper["ns_coefficients"], hyper["ns_steps"],
                              hyper["eps"])
    return direction, muon_lr_ratio(hyper["adjust_lr_fn"], *work.shape)
