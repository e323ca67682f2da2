"""In-place update rules on NumPy arrays, one fused C loop each.

One function per rule of the rule table (:mod:`fastopt.rules`), written by
the build from it.  Every function updates ``param`` and its state arrays in
place, in one pass over memory, and returns None.  Arguments are checked
before anything is written: a bad argument raises TypeError or ValueError
naming it, and leaves every array as it was.  Requirements on arrays: one
dtype (float32 or float64) for all arrays of a call, one number of
elements, C-contiguous, aligned, native byte order; ``param`` and states
writable; no two arrays sharing memory.  The shape does not matter: arrays
are treated as flat.

Hyperparameters carry torch.optim's names and defaults.  :mod:`fastopt.reference`
holds the same functions in plain NumPy, the math line by line; the results
are identical bit for bit.
"""
from fastopt import _core
from fastopt.rules import FACTORED_RULES, RULES

__all__ = list(RULES) + list(FACTORED_RULES)

globals().update({fn.__name__: fn for fn in _core.FUNCTIONS})
# the factored rules' doors take states of their own shapes (_factored.pxi)
globals().update({name: getattr(_core, name) for name in FACTORED_RULES})
