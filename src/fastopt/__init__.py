"""fastopt: fused, bit-exact optimizer update rules for NumPy training loops.

``fastopt.functional`` updates arrays in place, one C loop per rule;
``fastopt.reference`` defines the same rules in plain NumPy.
"""
from fastopt._version import __version__
from fastopt import _config
from fastopt._config import (
    get_num_threads,
    get_simd_level,
    set_num_threads,
    set_simd_level,
    show_config,
)
from fastopt import functional, reference

_config._init_from_environment()

__all__ = [
    "__version__",
    "functional",
    "reference",
    "show_config",
    "get_num_threads",
    "set_num_threads",
    "get_simd_level",
    "set_simd_level",
]
