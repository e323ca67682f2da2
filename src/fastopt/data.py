"""Alias of :mod:`fastopt.course.data`, kept for one version; import that instead."""
import sys
from fastopt.course import data as _module
sys.modules[__name__] = _module
