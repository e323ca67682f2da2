"""Alias of :mod:`fastopt.course.datasets`, kept for one version; import that instead."""
import sys
from fastopt.course import datasets as _module
sys.modules[__name__] = _module
