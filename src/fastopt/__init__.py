"""fastopt: fused, bit-exact optimizer update rules for NumPy training loops.

- ``fastopt.SGD``, ``Momentum``, ``RMSprop``, ``Adam``, ``AdamW``, ``Adagrad``,
  ...: torch.optim's classes over NumPy arrays, updated in place, one per
  entry of the rule table ``fastopt.rules.RULES``.
- ``fastopt.functional``: one in-place function per rule, one C loop each.
- ``fastopt.reference``: the same rules in plain NumPy; the kernels match them
  bit for bit.
- ``fastopt.lr_scheduler``, ``clip_grad_norm_``, ``clip_grad_value_``,
  ``FlatParams``, ``checkpoint``: schedules, clipping, a one-buffer layout and
  crash-safe checkpoints.
"""
from fastopt._version import __version__
from fastopt import _config
from fastopt._config import (
    get_num_threads,
    get_simd_level,
    limit_threads,
    set_num_threads,
    set_simd_level,
    show_config,
)
from fastopt import checkpoint, functional, lr_scheduler, reference
from fastopt.clip import clip_grad_norm_, clip_grad_value_
from fastopt.flat import FlatParams
from fastopt import optim, rules, states
from fastopt.optim import *  # noqa: F403  the classes of the rule table
from fastopt import factored
from fastopt.factored import *  # noqa: F403  the factored rules' classes

_config._init_from_environment()

__all__ = [
    "__version__",
    "FlatParams", "clip_grad_norm_", "clip_grad_value_",
    "checkpoint", "functional", "lr_scheduler", "reference", "rules", "states",
    "show_config", "get_num_threads", "set_num_threads", "limit_threads",
    "get_simd_level", "set_simd_level",
]
__all__ += optim.__all__
__all__ += factored.__all__
