"""Alias of :mod:`fastopt.course.demo`, kept for one version; import that instead."""
import sys
from fastopt.course import demo as _module
sys.modules[__name__] = _module
