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
(:func:`fastopt.reference.bf16_round`).  With the optional package
ml_dtypes (``pip install "fastopt[bfloat16]"``), ``as_bfloat16`` views the
bits as an ``ml_dtypes.bfloat16`` array without a copy, and
``from_bfloat16`` takes such arrays too; ``to_bfloat16`` gives the bits
ml_dtypes' own conversion gives (NaNs aside: both keep a NaN a NaN of the
same sign, ml_dtypes without its payload).

With ``state_dtype="8bit"`` each state is uint8 codes plus a float32 scale
per block of 256 elements; ``to_8bit``/``from_8bit`` convert one array
(``nonneg=True`` for states that are never negative, coded without a sign).
Both run the C codec the optimizers use, single-threaded, which gives the
bits of its NumPy specification, ``fastopt.reference.q8_encode`` and
``q8_decode``, in a fiftieth of their time or less (10^6 elements: about
0.1 ns an element to encode, against 20-26 for the specification).
"""
import copy

import numpy as np

from fastopt import _core, reference
from fastopt.rules import RULES

__all__ = ["to_bfloat16", "from_bfloat16", "as_bfloat16", "to_8bit",
           "from_8bit", "convert_state_dict"]


def to_bfloat16(x):
    """bfloat16 bits (a uint16 array of x's shape) of float32 array ``x``,
    rounded to nearest, ties to even; a NaN stays a (quiet) NaN."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"x must be a float32 array, got {x.dtype}")
    return reference.bf16_nearest(x).reshape(x.shape)


def from_bfloat16(bits):
    """The float32 values (a new array of bits' shape) of bfloat16 bits, a
    uint16 array or an ``ml_dtypes.bfloat16`` array; exact."""
    bits = np.asarray(bits)
    if bits.dtype.name == "bfloat16" and bits.dtype.itemsize == 2:
        bits = bits.view(np.uint16)
    if bits.dtype != np.uint16:
        raise TypeError(f"bits must be a uint16 array of bfloat16 bits, got {bits.dtype}")
    return _core.bf16_decode(bits)


def as_bfloat16(bits):
    """bfloat16 bits (a uint16 array, as ``state_dict()`` holds the states
    of ``state_dtype="bfloat16"``) seen as an ``ml_dtypes.bfloat16`` array:
    a view of the same memory, no copy.  Needs the optional package
    ml_dtypes (``pip install "fastopt[bfloat16]"``)."""
    if not isinstance(bits, np.ndarray) or bits.dtype != np.uint16:
        got = bits.dtype if isinstance(bits, np.ndarray) else f"a {type(bits).__name__}, not an array"
        raise TypeError(f"bits must be a uint16 array of bfloat16 bits, got {got}")
    try:
        import ml_dtypes  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise ImportError('as_bfloat16 needs the optional package ml_dtypes: '
                          'pip install "fastopt[bfloat16]"') from exc
    return bits.view(ml_dtypes.bfloat16)


def to_8bit(x, nonneg=False):
    """The 8-bit form of float32 array ``x``: (codes, scales), a uint8
    array of x's shape and a float32 array of one scale per block of 256
    elements of x flattened (fastopt.reference.q8_encode).  ``nonneg``: x
    is never negative (e.g. Adam's exp_avg_sq), coded without a sign."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"x must be a float32 array, got {x.dtype}")
    if not isinstance(nonneg, (bool, np.bool_)):
        raise TypeError(f"nonneg must be a bool, got {type(nonneg).__name__}")
    codes, scales = _core.q8_encode(x, bool(nonneg))
    return codes.reshape(x.shape), scales


def from_8bit(codes, scales, nonneg=False):
    """The float32 values (a new array of codes' shape) of 8-bit ``codes``
    (uint8) and their block ``scales`` (float32, one per 256 elements)."""
    codes, scales = np.asarray(codes), np.asarray(scales)
    if codes.dtype != np.uint8:
        raise TypeError(f"codes must be a uint8 array, got {codes.dtype}")
    if scales.dtype != np.float32 or scales.ndim != 1:
        raise TypeError(f"scales must be a 1-D float32 array, got {scales.dtype} "
                        f"of shape {scales.shape}")
    if not isinstance(nonneg, (bool, np.bool_)):
        raise TypeError(f"nonneg must be a bool, got {type(nonneg).__name__}")
    return _core.q8_decode(codes, scales, bool(nonneg)).reshape(codes.shape)


def _rule_of(class_name):
    for rule in RULES.values():
        if any(name == class_name for name, *_ in rule.classes()):
            return rule
    raise ValueError(f"state_dict names no fastopt optimizer: {class_name!r}")


def convert_state_dict(state_dict, state_dtype, seed=0):
    """A copy of an optimizer's ``state_dict()`` whose array states are in
    ``state_dtype``: ``"bfloat16"`` (from float32 states, rounded to
    nearest; ``seed`` becomes the stochastic rounding's seed), ``"8bit"``
    (codes under each state's key, scales under ``key + ".scale"``) or None
    (decoded to float32); between the two low-precision forms through
    float32.  Averages (``"ema"``) and
    accumulated gradients stay in the parameters' dtype."""
    if not isinstance(state_dict, dict) or "state" not in state_dict:
        raise ValueError("state_dict must be an optimizer's state_dict()")
    if state_dtype not in (None, "bfloat16", "8bit"):
        raise ValueError(f"state_dtype must be None, 'bfloat16' or '8bit', got "
                         f"{state_dtype!r}")
    rule = _rule_of(state_dict.get("optimizer"))
    nonneg = {st.state_key: st.sign == "nonneg" for st in rule.states}
    keys = set(rule.state_keys)
    current = state_dict.get("state_dtype")
    out = copy.deepcopy(state_dict)
    if current == state_dtype:
        return out
    for index, entry in out["state"].items():
        for key in keys & set(entry):
            value = entry[key]
            if current == "bfloat16":
                value = from_bfloat16(value)
            elif current == "8bit":
                value = from_8bit(value, entry.pop(key + ".scale"), nonneg[key])
            if state_dtype is not None and value.dtype != np.float32:
                raise ValueError(f"state[{index!r}][{key!r}] is {value.dtype}: "
                                 f"{state_dtype} states are for float32 parameters")
            if state_dtype == "bfloat16":
                entry[key] = to_bfloat16(value)
            elif state_dtype == "8bit":
                entry[key], entry[key + ".scale"] = to_8bit(value, nonneg[key])
            else:
                entry[key] = value
    if state_dtype is not None:
        out["state_dtype"] = state_dtype
        out["seed"] = seed
    else:
        out.pop("state_dtype", None)
        out.pop("seed", None)
    return out
