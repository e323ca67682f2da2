"""Alias of :mod:`fastopt.course.models`, kept for one version; import that instead."""
import sys
from fastopt.course import models as _module
sys.modules[__name__] = _module
