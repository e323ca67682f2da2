"""A model's parameters and gradients laid out in two contiguous buffers.

:class:`FlatParams` copies the parameters into one buffer and hands back
views with the original shapes and keys; a second buffer holds gradients the
same way.  Train on the views (write gradients with ``out=`` or
``grads[k][...] = ...``) and an optimizer given ``flat.params`` and stepped
with ``flat.grads`` updates each bucket as ONE tensor: a single pass over
one buffer instead of a loop over many small arrays.
"""
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np
from numpy.typing import DTypeLike

from fastopt._typing import FloatArray

__all__ = ["FlatParams"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class FlatParams:
    """Parameters (and gradients) as views into one contiguous buffer each.

    ``params``: a dict name -> array or a list/tuple of arrays; the values
    are copied.  ``dtype``: float32 or float64; None takes the arrays'
    common dtype (``np.result_type``), which must be one of the two.

    Attributes: ``params`` and ``grads`` (same structure and shapes as the
    input, views of ``param_buffer`` and ``grad_buffer``, in input order and
    back to back); gradients start at zero.
    """

    def __init__(self, params: Union[Sequence[FloatArray], Mapping[str, FloatArray]],
                 dtype: Optional[DTypeLike] = None) -> None:
        if isinstance(params, dict):
            keys, arrays = list(params), list(params.values())
        elif isinstance(params, (list, tuple)):
            keys, arrays = None, list(params)
        else:
            raise TypeError(f"params must be a dict or a list of arrays, got "
                            f"{type(params).__name__}")
        labels = keys if keys is not None else range(len(arrays))
        for a, label in zip(arrays, labels):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"parameter {label!r} must be a numpy.ndarray, "
                                f"got {type(a).__name__}")
        if dtype is None:
            dtype = np.result_type(*arrays) if arrays else np.float64
        try:
            dtype = np.dtype(dtype)
        except (TypeError, ValueError, SyntaxError):   # NumPy parses "a,b" as code
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if dtype not in _FLOATS:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.dtype = dtype
        total = sum(a.size for a in arrays)
        self.param_buffer = np.empty(total, dtype=dtype)
        self.grad_buffer = np.zeros(total, dtype=dtype)
        param_views, grad_views, offset = [], [], 0
        for a in arrays:
            end = offset + a.size
            param_views.append(self.param_buffer[offset:end].reshape(a.shape))
            grad_views.append(self.grad_buffer[offset:end].reshape(a.shape))
            np.copyto(param_views[-1], a, casting="same_kind")
            offset = end
        # lists in the order given, or dicts by name when given by name
        self.params: Any
        self.grads: Any
        if keys is None:
            self.params, self.grads = param_views, grad_views
        else:
            self.params = dict(zip(keys, param_views))
            self.grads = dict(zip(keys, grad_views))

    def zero_grad(self) -> None:
        """Set every gradient to zero."""
        self.grad_buffer.fill(0)

    def __repr__(self) -> str:
        return (f"FlatParams({len(self.params)} arrays, "
                f"{self.param_buffer.size} elements, {self.dtype})")
