"""State precision: converting optimizer states between dtypes.

An optimizer made with ``state_dtype="bfloat16"`` keeps each array state as
bfloat16 bits in a uint16 array (see :class:`fastopt.Optimizer`).  These
functions move states between that stored form and float32, for reading a
state, for starting a bfloat16 run from a float32 checkpoint, or for going
back:

>>> import numpy as np, fastopt
>>> bits = fastopt.states.to_bfloat16(np.float32([1.0, 0.1]))
>>> fastopt.states.from_bfloat16(bits)
array([1.        , 0.10009766], dtype=float32)

``to_bfloat16`` rounds to nearest (ties to even): a conversion should not
depend on a seed, and a checkpoint converted twice gives the same bits.
The optimizers' own state writes round stochastically
(:func:`fastopt.reference.bf16_round`).
"""
import copy

import numpy as np

from fastopt import reference
from fastopt.rules import RULES

__all__ = ["to_bfloat16", "from_bfloat16", "convert_state_dict"]


def to_bfloat16(x):
    """bfloat16 bits (a uint16 array of x's shape) of float32 array ``x``,
    rounded to nearest, ties to even; a NaN stays a (quiet) NaN."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"x must be a float32 array, got {x.dtype}")
    return reference.bf16_nearest(x).reshape(x.shape)


def from_bfloat16(bits):
    """The float32 values (a new array of bits' shape) of bfloat16 bits, a
    uint16 array; exact."""
    bits = np.asarray(bits)
    if bits.dtype != np.uint16:
        raise TypeError(f"bits must be a uint16 array of bfloat16 bits, got {bits.dtype}")
    return reference.bf16_decode(bits).reshape(bits.shape)


def _rule_of(class_name):
    for rule in RULES.values():
        if any(name == class_name for name, *_ in rule.classes()):
            return rule
    raise ValueError(f"state_dict names no fastopt optimizer: {class_name!r}")


def convert_state_dict(state_dict, state_dtype, seed=0):
    """A copy of an optimizer's ``state_dict()`` whose array states are in
    ``state_dtype``: ``"bfloat16"`` (from float32 states, rounded to
    nearest; ``seed`` becomes the stochastic rounding's seed) or None
    (bfloat16 states decoded to float32).  Averages (``"ema"``) and
    accumulated gradients stay in the parameters' dtype."""
    if not isinstance(state_dict, dict) or "state" not in state_dict:
        raise ValueError("state_dict must be an optimizer's state_dict()")
    if state_dtype not in (None, "bfloat16"):
        raise ValueError(f"state_dtype must be None or 'bfloat16', got {state_dtype!r}")
    keys = set(_rule_of(state_dict.get("optimizer")).state_keys)
    current = state_dict.get("state_dtype")
    out = copy.deepcopy(state_dict)
    if current == state_dtype:
        return out
    for index, entry in out["state"].items():
        for key in keys & set(entry):
            value = entry[key]
            if state_dtype == "bfloat16":
                if value.dtype != np.float32:
                    raise ValueError(f"state[{index!r}][{key!r}] is {value.dtype}: "
                                     f"bfloat16 states are for float32 parameters")
                entry[key] = to_bfloat16(value)
            else:
                entry[key] = from_bfloat16(value)
    if state_dtype == "bfloat16":
        out["state_dtype"] = "bfloat16"
        out["seed"] = seed
    else:
        out.pop("state_dtype", None)
        out.pop("seed", None)
    return out
