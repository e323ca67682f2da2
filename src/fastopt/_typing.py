"""Type aliases of fastopt's public API (for annotations and the stubs)."""
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
import numpy.typing as npt

__all__ = ["FloatArray", "ScalarState", "Labels", "Params", "Grads"]

#: a float32 or float64 array; one dtype for all the arrays of one call
FloatArray = Union[npt.NDArray[np.float32], npt.NDArray[np.float64]]
#: a per-tensor scalar state: a writable float64 array of one element
ScalarState = npt.NDArray[np.float64]
#: names of tensors in messages, or None for their positions
Labels = Union[Sequence[object], None]
#: an optimizer's parameters: a list or tuple of arrays, a dict name ->
#: array, or group dicts {"params": list or dict, **hyperparameters}
Params = Union[Sequence[FloatArray], Mapping[str, FloatArray],
               Sequence[dict[str, Any]]]
#: gradients with the parameters' structure (None skips a parameter)
Grads = Union[Sequence[Union[FloatArray, None]], Mapping[str, Union[FloatArray, None]]]
