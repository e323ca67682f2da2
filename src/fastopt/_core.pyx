# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The boundary between Python and the C kernels.

Every entry point checks all of its arguments before the first write, then
calls the kernels with the GIL released.  The parts, one job each:

  _hyper.pxi        hyperparameters, checked as the rule table says
  _arrays.pxi       arrays and the overlap test
  _call.pxi         the one call path into C (fo_coefficients, fo_run)
  _functional.pxi   fastopt.functional, written by setup.py from the table
  _factored.pxi     the doors of the factored rules (rules.FACTORED_RULES)
  _plan.pxi         the optimizers' step engine
  _grads.pxi        gradient utilities (norms, clipping, finiteness)
  _runtime.pxi      instruction-set level and threads
"""

cimport cython
cimport numpy as cnp
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from libc.math cimport INFINITY, isfinite
from libc.stdint cimport uint8_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport qsort
from libc.string cimport memcmp, memcpy, memset

from fastopt._kernels cimport *

import numbers

import numpy as np

from fastopt import rules as _table

cnp.import_array()

include "_hyper.pxi"
include "_arrays.pxi"
include "_call.pxi"
include "_functional.pxi"
include "_factored.pxi"
include "_plan.pxi"
include "_grads.pxi"
include "_runtime.pxi"
include "_fo_math.pxi"
