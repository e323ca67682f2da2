"""Alias of :mod:`fastopt.harness.bench`, kept for one version; import that instead."""
import sys
from fastopt.harness import bench as _module
sys.modules[__name__] = _module
