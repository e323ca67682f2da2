# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The boundary between Python and the C kernels.

Every public function here checks all of its arguments before the first
write, then calls one kernel with the GIL released.  Hyperparameters become
per-step coefficients through csrc/fastopt/scalars.h, which the NumPy
reference reaches through the helpers at the end of this file.
"""

cimport numpy as cnp
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport INFINITY, isfinite
from libc.stdint cimport uintptr_t
from libc.stdlib cimport qsort

from fastopt._kernels cimport *

import numbers

import numpy as np

cnp.import_array()

# Releasing and retaking the GIL costs about 0.1 us, more than a step on a
# few thousand elements takes; below this many elements the kernel runs with
# the GIL held.
cdef size_t NOGIL_THRESHOLD = 4096

# Slot indices and their names, per rule.
cdef enum:
    P = 0
    G = 1
    S0 = 2
    S1 = 3
    S2 = 4
    NSLOTS = 5

SGD_SLOTS = ("param", "grad", "momentum_buffer", None, None)
MOMENTUM_SLOTS = ("param", "grad", "velocity", None, None)
RMSPROP_SLOTS = ("param", "grad", "square_avg", "grad_avg", "momentum_buffer")
ADAM_SLOTS = ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
ADAGRAD_SLOTS = ("param", "grad", "state_sum", None, None)
GRAD_SLOTS = ("grad", "grad", None, None, None)
TRAFFIC_SLOTS = ("param", "grad", "state0", "state1", "state2")


# ---------------------------------------------------------------------------
# Hyperparameters

cdef inline double _real(object x, str name) except? -1.0:
    if type(x) is float:
        return <double>x
    if type(x) is not int and (isinstance(x, (bool, np.bool_))
                               or not isinstance(x, numbers.Real)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    try:
        return float(x)
    except OverflowError:
        raise ValueError(f"{name} is outside the float range: {x!r}") from None


cdef inline double _in_range(object x, str name, str label, double lo,
                             double hi, bint hi_open) except? -1.0:
    """x as a double, finite, lo <= x and x < hi (hi_open) or x <= hi."""
    cdef double v = _real(x, name)
    if not (isfinite(v) and v >= lo and (v < hi if hi_open else v <= hi)):
        if hi == INFINITY:
            rule = f">= {lo:g}"
        else:
            rule = f"in [{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"Invalid {label}: {x} ({name} must be finite and {rule})")
    return v


cdef inline double _nonneg(object x, str name, str label) except? -1.0:
    return _in_range(x, name, label, 0.0, INFINITY, True)


cdef inline double _lr(object lr) except? -1.0:
    return _nonneg(lr, "lr", "learning rate")


cdef inline double _beta(object x, str name, str label) except? -1.0:
    return _in_range(x, name, label, 0.0, 1.0, True)


cdef inline bint _flag(object x, str name) except -1:
    if x is True or x is False:
        return x is True
    if isinstance(x, np.bool_):
        return bool(x)
    raise TypeError(f"{name} must be a bool, got {type(x).__name__}")


cdef inline long long _step(object step) except -1:
    cdef long long t
    cdef int overflow = 0
    if type(step) is int:
        t = PyLong_AsLongLongAndOverflow(step, &overflow)
        if overflow == 0 and 1 <= t <= (1LL << 62):
            return t
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral):
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if step > 2 ** 62:
        raise ValueError(f"step is too large: {step}")
    return step


cdef inline double _sign(object maximize) except? 0.0:
    return -1.0 if _flag(maximize, "maximize") else 1.0


cdef int _betas(object betas, double *beta1, double *beta2) except -1:
    if type(betas) is tuple and len(<tuple>betas) == 2:
        x1, x2 = <tuple>betas
        if type(x1) is float and type(x2) is float:
            beta1[0], beta2[0] = x1, x2
            if 0.0 <= beta1[0] < 1.0 and 0.0 <= beta2[0] < 1.0:
                return 0
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    beta1[0] = _beta(betas[0], "betas[0]", "beta parameter at index 0")
    beta2[0] = _beta(betas[1], "betas[1]", "beta parameter at index 1")
    return 0


# ---------------------------------------------------------------------------
# Arrays

cdef str _slot_name(tuple slots, int slot, Py_ssize_t index, object labels):
    cdef str base = slots[slot]
    if index < 0:
        return base
    if labels is not None and index < len(labels):
        return f"{base} of parameter {_label(labels, index)!r}"
    return f"{base}s[{index}]"


cdef object _label(object labels, Py_ssize_t index):
    # bounds-checked: the module is compiled without bounds checks
    return list(labels)[index]


cdef int _check_labels(object labels, Py_ssize_t n) except -1:
    if labels is not None and (not isinstance(labels, (list, tuple))
                               or len(labels) != n):
        raise ValueError(f"labels must be None or a list of {n} names, one per "
                         f"tensor, got {labels!r}")
    return 0


cdef inline Py_ssize_t _size(cnp.ndarray a) noexcept:
    cdef Py_ssize_t n = 1
    cdef int k
    for k in range(cnp.PyArray_NDIM(a)):
        n *= cnp.PyArray_DIMS(a)[k]
    return n


cdef inline int _array_ok(object x, int dt, Py_ssize_t n, bint writable) noexcept:
    """The dtype index of x when it passes every check of _check_array, -1
    otherwise (then _check_array says why)."""
    cdef cnp.ndarray a
    cdef int tn, d
    cdef int need = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
    if not cnp.PyArray_Check(x):
        return -1
    a = <cnp.ndarray>x
    tn = cnp.PyArray_TYPE(a)
    d = 0 if tn == cnp.NPY_FLOAT32 else (1 if tn == cnp.NPY_FLOAT64 else -1)
    if writable:
        need |= cnp.NPY_ARRAY_WRITEABLE
    if (d >= 0 and (dt < 0 or d == dt)
            and (cnp.PyArray_FLAGS(a) & need) == need
            and cnp.PyArray_ISNOTSWAPPED(a)
            and (n < 0 or _size(a) == n)):
        return d
    return -1


cdef int _check_array(object x, tuple slots, int slot, Py_ssize_t index,
                      object labels, int dt, Py_ssize_t n,
                      bint writable) except -2:
    """Check one array of a call; return its dtype index (0 float32, 1 float64).

    dt < 0 means no dtype to match yet; n < 0 means no size to match."""
    cdef cnp.ndarray a
    cdef int tn, d, need
    d = _array_ok(x, dt, n, writable)
    if d >= 0:
        return d
    # one test failed: find which, for the message
    if not isinstance(x, cnp.ndarray):
        raise TypeError(f"{_slot_name(slots, slot, index, labels)} must be a "
                        f"numpy.ndarray, got {type(x).__name__}")
    a = <cnp.ndarray>x
    tn = cnp.PyArray_TYPE(a)
    if tn == cnp.NPY_FLOAT32:
        d = 0
    elif tn == cnp.NPY_FLOAT64:
        d = 1
    else:
        raise TypeError(f"{_slot_name(slots, slot, index, labels)} must have "
                        f"dtype float32 or float64, got {a.dtype}")
    if not cnp.PyArray_ISNOTSWAPPED(a):
        raise TypeError(f"{_slot_name(slots, slot, index, labels)} must be in "
                        f"native byte order, got {a.dtype}")
    if dt >= 0 and d != dt:
        # a parameter is compared with the first tensor's, a state or a
        # gradient with its own parameter
        ref = _slot_name(slots, P, 0 if slot == P else index, labels)
        raise TypeError(f"{_slot_name(slots, slot, index, labels)} has dtype "
                        f"{a.dtype} but {ref} has dtype "
                        f"{'float32' if dt == 0 else 'float64'}; one call takes "
                        f"one dtype")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"{_slot_name(slots, slot, index, labels)} must be "
                         f"C-contiguous")
    if not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{_slot_name(slots, slot, index, labels)} is not "
                         f"aligned to its dtype")
    if writable and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{_slot_name(slots, slot, index, labels)} is "
                         f"read-only; it is updated in place")
    if n >= 0 and cnp.PyArray_SIZE(a) != n:
        raise ValueError(f"{_slot_name(slots, slot, index, labels)} has "
                         f"{cnp.PyArray_SIZE(a)} elements but "
                         f"{_slot_name(slots, P, index, labels)} has {n}")
    return d


cdef inline void *_data(object x):
    return cnp.PyArray_DATA(<cnp.ndarray>x)


cdef int _fill_tensor(fo_tensor *t, tuple slots, Py_ssize_t index,
                      object labels, object p, object g, object s0,
                      object s1, object s2, int dt, int required) except -2:
    """Check one tensor's arrays and point t at them; return the dtype index.

    `required` has bit k set when state k must be present; the caller has
    checked that the rule needs exactly those.  States not required are None
    and stay NULL."""
    cdef Py_ssize_t n
    if ((required & 1 and s0 is None) or (required & 2 and s1 is None)
            or (required & 4 and s2 is None)):
        k = 0 if (required & 1 and s0 is None) else (1 if (required & 2 and s1 is None) else 2)
        raise ValueError(f"{_slot_name(slots, S0 + k, index, labels)} is "
                         f"None; every tensor needs this state")
    cdef int d = _array_ok(p, dt, -1, True)
    dt = d if d >= 0 else _check_array(p, slots, P, index, labels, dt, -1, True)
    n = _size(<cnp.ndarray>p)
    if _array_ok(g, dt, n, False) < 0:
        _check_array(g, slots, G, index, labels, dt, n, False)
    if s0 is not None and _array_ok(s0, dt, n, True) < 0:
        _check_array(s0, slots, S0, index, labels, dt, n, True)
    if s1 is not None and _array_ok(s1, dt, n, True) < 0:
        _check_array(s1, slots, S1, index, labels, dt, n, True)
    if s2 is not None and _array_ok(s2, dt, n, True) < 0:
        _check_array(s2, slots, S2, index, labels, dt, n, True)
    t.n = <size_t>n
    t.p = _data(p)
    t.g = _data(g)
    t.s0 = _data(s0) if s0 is not None else NULL
    t.s1 = _data(s1) if s1 is not None else NULL
    t.s2 = _data(s2) if s2 is not None else NULL
    return dt


# Overlap: arrays are contiguous, so two of them share memory exactly when
# their byte ranges intersect.

cdef struct _Range:
    uintptr_t lo
    uintptr_t hi
    int slot
    Py_ssize_t index


cdef int _range_cmp(const void *a, const void *b) noexcept nogil:
    cdef uintptr_t x = (<const _Range *>a).lo, y = (<const _Range *>b).lo
    return -1 if x < y else (1 if x > y else 0)


cdef void _insertion_sort(_Range *r, int k) noexcept nogil:
    """Sort by start address; for the tens of arrays of a model step this
    beats qsort's indirect comparisons."""
    cdef int i, j
    cdef _Range x
    for i in range(1, k):
        x = r[i]
        j = i - 1
        while j >= 0 and r[j].lo > x.lo:
            r[j + 1] = r[j]
            j -= 1
        r[j + 1] = x


cdef inline int _add_range(_Range *r, int k, const void *ptr, size_t nbytes,
                           int slot, Py_ssize_t index) noexcept:
    if ptr == NULL or nbytes == 0:
        return k
    r[k].lo = <uintptr_t>ptr
    r[k].hi = <uintptr_t>ptr + nbytes
    r[k].slot = slot
    r[k].index = index
    return k + 1


cdef int _raise_overlap(_Range a, _Range b, tuple slots, object labels,
                        bint single) except -1:
    raise ValueError(
        f"{_slot_name(slots, a.slot, -1 if single else a.index, labels)} overlaps "
        f"{_slot_name(slots, b.slot, -1 if single else b.index, labels)} in "
        f"memory; every array of a step must be separate")


cdef int _overlap_pairs(_Range *r, int k, tuple slots, object labels,
                        bint single) except -1:
    """The all-pairs test, faster than sorting for the few arrays of one tensor."""
    cdef int i, j
    for j in range(1, k):
        for i in range(j):
            if r[j].lo < r[i].hi and r[i].lo < r[j].hi:
                _raise_overlap(r[j], r[i], slots, labels, single)
    return 0


cdef inline int _tensor_ranges(_Range *r, int k, const fo_tensor *t, size_t nb,
                               Py_ssize_t index) noexcept:
    """Add the byte ranges of one tensor's arrays; return the new count."""
    k = _add_range(r, k, t.p, nb, P, index)
    k = _add_range(r, k, t.g, nb, G, index)
    k = _add_range(r, k, t.s0, nb, S0, index)
    k = _add_range(r, k, t.s1, nb, S1, index)
    return _add_range(r, k, t.s2, nb, S2, index)


cdef int _check_overlap(const fo_tensor *t, Py_ssize_t count, size_t itemsize,
                        tuple slots, object labels, bint single) except -1:
    """Raise ValueError if any two arrays of the call share memory."""
    cdef _Range stack_ranges[NSLOTS]
    cdef _Range *r = stack_ranges
    cdef Py_ssize_t i
    cdef int k = 0, j, widest
    if count > 1:
        r = <_Range *>PyMem_Malloc(count * NSLOTS * sizeof(_Range))
        if r == NULL:
            raise MemoryError()
    try:
        for i in range(count):
            k = _tensor_ranges(r, k, &t[i], t[i].n * itemsize, i)
        if k <= 8:
            _overlap_pairs(r, k, slots, labels, single)
        else:
            if k <= 256:
                _insertion_sort(r, k)
            else:
                qsort(r, k, sizeof(_Range), _range_cmp)
            widest = 0
            for j in range(1, k):
                if r[j].lo < r[widest].hi:
                    _raise_overlap(r[j], r[widest], slots, labels, single)
                if r[j].hi > r[widest].hi:
                    widest = j
    finally:
        if r != stack_ranges:
            PyMem_Free(r)
    return 0


cdef class _Tensors:
    """The checked tensors of one call: a buffer of fo_tensor and a dtype."""
    cdef fo_tensor *t
    cdef fo_tensor one
    cdef Py_ssize_t count
    cdef int dt

    def __dealloc__(self):
        if self.t != &self.one and self.t != NULL:
            PyMem_Free(self.t)

    cdef int reserve(self, Py_ssize_t n) except -1:
        self.count = n
        self.dt = -1
        self.t = &self.one
        if n > 1:
            self.t = <fo_tensor *>PyMem_Malloc(n * sizeof(fo_tensor))
            if self.t == NULL:
                raise MemoryError()
        return 0


cdef inline int _required(object s0, object s1, object s2):
    return (s0 is not None) | (s1 is not None) << 1 | (s2 is not None) << 2


cdef int _fill_one(fo_tensor *t, tuple slots, object p, object g, object s0,
                   object s1, object s2) except -2:
    """Check the arrays of a single-tensor call; return the dtype index."""
    cdef int dt = _fill_tensor(t, slots, -1, None, p, g, s0, s1, s2, -1,
                               _required(s0, s1, s2))
    # _check_overlap's path for one tensor, without its allocation guard
    # (a measurable share of a small call)
    cdef _Range r[NSLOTS]
    _overlap_pairs(r, _tensor_ranges(r, 0, t, t.n * (4 if dt == 0 else 8), -1),
                   slots, None, True)
    return dt


cdef inline object _item(list seq, Py_ssize_t i):
    return None if seq is None else seq[i]


cdef inline list _as_list(object seq, tuple slots, int slot, Py_ssize_t n):
    """seq (a list or tuple of n arrays, or None) as a list."""
    if seq is None:
        return None
    if type(seq) is not list:
        if not isinstance(seq, (list, tuple)):
            raise TypeError(f"the {slots[slot]} arrays must be given as a list, "
                            f"got {type(seq).__name__}")
        seq = list(seq)
    if len(<list>seq) != n:
        raise ValueError(f"got {len(<list>seq)} {slots[slot]} arrays for {n} "
                         f"parameters")
    return <list>seq


cdef _Tensors _collect_many(tuple slots, object labels, list ps, list gs,
                            object s0s, object s1s, object s2s):
    cdef _Tensors ts = _Tensors.__new__(_Tensors)
    cdef Py_ssize_t i, n = len(ps)
    cdef int required = _required(s0s, s1s, s2s)
    cdef list l0, l1, l2
    _check_labels(labels, n)
    _as_list(gs, slots, G, n)
    l0 = _as_list(s0s, slots, S0, n)
    l1 = _as_list(s1s, slots, S1, n)
    l2 = _as_list(s2s, slots, S2, n)
    ts.reserve(n)
    for i in range(n):
        ts.dt = _fill_tensor(&ts.t[i], slots, i, labels, ps[i], gs[i],
                             _item(l0, i), _item(l1, i), _item(l2, i), ts.dt,
                             required)
    if n:
        _check_overlap(ts.t, n, 4 if ts.dt == 0 else 8, slots, labels, False)
    return ts


cdef int _require(object buf, bint needed, str name, str when) except -1:
    if needed and buf is None:
        raise ValueError(f"{name} is required when {when}")
    if not needed and buf is not None:
        raise ValueError(f"{name} is given but not used: it is needed only "
                         f"when {when}")
    return 0


# ---------------------------------------------------------------------------
# Running a kernel

cdef enum:
    R_SGD = 0
    R_MOMENTUM = 1
    R_RMSPROP = 2
    R_ADAM = 3
    R_ADAGRAD = 4
    R_TRAFFIC = 5


cdef union _Args:
    fo_sgd_args sgd
    fo_momentum_args momentum
    fo_rmsprop_args rmsprop
    fo_adam_args adam
    fo_adagrad_args adagrad


cdef inline bint _adjacent(const void *a, const void *b, size_t nbytes) noexcept nogil:
    return (a == NULL and b == NULL) or (
        a != NULL and b != NULL and <const char *>a + nbytes == <const char *>b)


cdef Py_ssize_t _merge_adjacent(fo_tensor *t, Py_ssize_t count,
                                size_t itemsize) noexcept nogil:
    """Drop empty tensors and fuse neighbours whose every array continues
    where the previous one ends (views of one buffer, as FlatParams makes):
    an element-wise rule gives the same bits on the fused range, in one loop.
    Call only after the overlap check.  Returns the new count."""
    cdef Py_ssize_t i, k = 0
    cdef size_t nb
    for i in range(count):
        if t[i].n == 0:
            continue
        if k > 0:
            nb = t[k - 1].n * itemsize
            if (_adjacent(t[k - 1].p, t[i].p, nb) and _adjacent(t[k - 1].g, t[i].g, nb)
                    and _adjacent(t[k - 1].s0, t[i].s0, nb)
                    and _adjacent(t[k - 1].s1, t[i].s1, nb)
                    and _adjacent(t[k - 1].s2, t[i].s2, nb)):
                t[k - 1].n += t[i].n
                continue
        t[k] = t[i]
        k += 1
    return k


cdef void _kernel(int rule, const _Args *a, const fo_tensor *t, size_t count,
                  int dt) noexcept nogil:
    if rule == R_SGD:
        (fo_sgd_f32 if dt == 0 else fo_sgd_f64)(&a.sgd, t, count)
    elif rule == R_MOMENTUM:
        (fo_momentum_f32 if dt == 0 else fo_momentum_f64)(&a.momentum, t, count)
    elif rule == R_RMSPROP:
        (fo_rmsprop_f32 if dt == 0 else fo_rmsprop_f64)(&a.rmsprop, t, count)
    elif rule == R_ADAM:
        (fo_adam_f32 if dt == 0 else fo_adam_f64)(&a.adam, t, count)
    elif rule == R_ADAGRAD:
        (fo_adagrad_f32 if dt == 0 else fo_adagrad_f64)(&a.adagrad, t, count)
    elif rule == R_TRAFFIC:
        (fo_traffic_f32 if dt == 0 else fo_traffic_f64)(t, count)


cdef Py_ssize_t _last_tensors = 0


def last_call_tensors():
    """The number of tensors the last kernel call ran over, after neighbours
    were fused (a diagnostic: 1 for a model laid out by FlatParams)."""
    return _last_tensors


cdef int _run(int rule, const _Args *a, fo_tensor *t, Py_ssize_t count,
              int dt) except -1:
    """Fuse adjacent tensors, then run the kernel, without the GIL when the
    step is large enough to pay for releasing it."""
    cdef size_t total = 0
    cdef Py_ssize_t i
    global _last_tensors
    count = _merge_adjacent(t, count, 4 if dt == 0 else 8)
    _last_tensors = count
    for i in range(count):
        total += t[i].n
    if total >= NOGIL_THRESHOLD:
        with nogil:
            _kernel(rule, a, t, count, dt)
    elif count:
        _kernel(rule, a, t, count, dt)
    return 0


# ---------------------------------------------------------------------------
# Argument structs from hyperparameters

cdef int _sgd_args(fo_sgd_args *a, object lr, object momentum,
                   object dampening, object weight_decay, object nesterov,
                   object maximize, object step, object buffer) except -1:
    a.lr = _lr(lr)
    a.momentum = _nonneg(momentum, "momentum", "momentum value")
    cdef double damp = _in_range(dampening, "dampening", "dampening value",
                                 0.0, 1.0, False)
    a.one_minus_dampening = 1.0 - damp
    a.l2 = _nonneg(weight_decay, "weight_decay", "weight_decay value")
    a.sign = _sign(maximize)
    a.has_l2 = a.l2 != 0.0
    a.has_momentum = a.momentum != 0.0
    a.nesterov = _flag(nesterov, "nesterov")
    if a.nesterov and (a.momentum <= 0.0 or damp != 0.0):
        raise ValueError("Nesterov momentum requires a momentum and zero "
                         "dampening (nesterov=True needs momentum > 0 and "
                         "dampening == 0)")
    a.first_step = 0
    if a.has_momentum:
        if step is None:
            raise ValueError("step is required when momentum != 0: the "
                             "buffer starts as the gradient on step 1")
        a.first_step = _step(step) == 1
    elif step is not None:
        _step(step)
    _require(buffer, a.has_momentum, "momentum_buffer", "momentum != 0")
    return 0


cdef int _momentum_args(fo_momentum_args *a, object lr, object beta,
                        object weight_decay, object maximize) except -1:
    a.lr = _lr(lr)
    a.beta = _beta(beta, "beta", "beta value")
    a.one_minus_beta = 1.0 - a.beta
    a.l2 = _nonneg(weight_decay, "weight_decay", "weight_decay value")
    a.has_l2 = a.l2 != 0.0
    a.sign = _sign(maximize)
    return 0


cdef int _rmsprop_args(fo_rmsprop_args *a, object lr, object alpha,
                       object eps, object weight_decay, object momentum,
                       object centered, object maximize) except -1:
    a.lr = _lr(lr)
    a.alpha = _in_range(alpha, "alpha", "alpha value", 0.0, 1.0, False)
    a.one_minus_alpha = 1.0 - a.alpha
    a.eps = _nonneg(eps, "eps", "epsilon value")
    a.l2 = _nonneg(weight_decay, "weight_decay", "weight_decay value")
    a.momentum = _nonneg(momentum, "momentum", "momentum value")
    a.centered = _flag(centered, "centered")
    a.sign = _sign(maximize)
    a.has_l2 = a.l2 != 0.0
    a.has_momentum = a.momentum != 0.0
    return 0


cdef int _adam_args(fo_adam_args *a, object step, object lr, object betas,
                    object eps, object weight_decay, object amsgrad,
                    object maximize, object decoupled_weight_decay) except -1:
    cdef long long t = _step(step)
    cdef double lr_ = _lr(lr), wd
    _betas(betas, &a.beta1, &a.beta2)
    a.one_minus_beta1 = 1.0 - a.beta1
    a.one_minus_beta2 = 1.0 - a.beta2
    a.eps = _nonneg(eps, "eps", "epsilon value")
    wd = _nonneg(weight_decay, "weight_decay", "weight_decay value")
    a.amsgrad = _flag(amsgrad, "amsgrad")
    a.sign = _sign(maximize)
    if _flag(decoupled_weight_decay, "decoupled_weight_decay"):
        a.l2 = 0.0
        a.decay = fo_decay_factor(lr_, wd)
    else:
        a.l2 = wd
        a.decay = 1.0
    a.has_l2 = a.l2 != 0.0
    a.step_size = fo_adam_step_size(lr_, a.beta1, t)
    a.inv_sqrt_bc2 = fo_adam_inv_sqrt_bc2(a.beta2, t)
    return 0


cdef int _adagrad_args(fo_adagrad_args *a, object step, object lr,
                       object lr_decay, object weight_decay, object eps,
                       object maximize) except -1:
    cdef long long t = _step(step)
    cdef double lr_ = _lr(lr)
    cdef double decay = _nonneg(lr_decay, "lr_decay", "lr_decay value")
    a.eps = _nonneg(eps, "eps", "epsilon value")
    a.l2 = _nonneg(weight_decay, "weight_decay", "weight_decay value")
    a.has_l2 = a.l2 != 0.0
    a.sign = _sign(maximize)
    a.clr = fo_adagrad_clr(lr_, decay, t)
    return 0


# ---------------------------------------------------------------------------
# Single-tensor functions (fastopt.functional)

def sgd(param, grad, momentum_buffer=None, *, lr=1e-3, momentum=0.0,
        dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False,
        step=None):
    """Gradient descent, with torch.optim.SGD's heavy-ball momentum.

    ::

        g = -grad if maximize else grad
        g = g + weight_decay * param                  (if weight_decay != 0)
        if momentum != 0:
            b = g                                     (step == 1)
            b = momentum * b + (1 - dampening) * g    (step > 1)
            g = g + momentum * b if nesterov else b
        param = param - lr * g

    With momentum 0 this is the seed's gradient descent, ``p = p - lr * g``.
    ``momentum_buffer`` (b) and ``step`` (the update count, from 1) are
    required when momentum != 0; nesterov needs momentum > 0 and dampening 0.
    """
    cdef _Args a
    cdef fo_tensor t
    _sgd_args(&a.sgd, lr, momentum, dampening, weight_decay, nesterov, maximize,
              step, momentum_buffer)
    dt = _fill_one(&t, SGD_SLOTS, param, grad, momentum_buffer, None, None)
    _run(R_SGD, &a, &t, 1, dt)


def momentum(param, grad, velocity, *, lr=1e-3, beta=0.9, weight_decay=0.0,
             maximize=False):
    """Momentum in the seed's exponentially weighted form.

    ::

        g = -grad if maximize else grad
        g = g + weight_decay * param                  (if weight_decay != 0)
        v = beta * v + (1 - beta) * g
        param = param - lr * v

    ``velocity`` (v) starts at zero.  Unlike torch's SGD momentum, the first
    step gives v = (1 - beta) * g, not g.
    """
    cdef _Args a
    cdef fo_tensor t
    _momentum_args(&a.momentum, lr, beta, weight_decay, maximize)
    if velocity is None:
        raise ValueError("velocity is required")
    dt = _fill_one(&t, MOMENTUM_SLOTS, param, grad, velocity, None, None)
    _run(R_MOMENTUM, &a, &t, 1, dt)


def rmsprop(param, grad, square_avg, grad_avg=None, momentum_buffer=None, *,
            lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
            centered=False, maximize=False):
    """RMSProp, with torch.optim.RMSprop's centered and momentum variants.

    ::

        g = -grad if maximize else grad
        g = g + weight_decay * param                  (if weight_decay != 0)
        s = alpha * s + (1 - alpha) * (g * g)
        a = alpha * a + (1 - alpha) * g               (if centered)
        var = s - a * a if centered else s
        d = sqrt(var) + eps
        b = momentum * b + g / d                      (if momentum != 0)
        param = param - lr * b                        (if momentum != 0)
        param = param - lr * (g / d)                  (otherwise)

    With alpha = beta and no options this is the seed's RMSProp, eps outside
    the root.  ``square_avg`` (s) is always needed, ``grad_avg`` (a) when
    centered, ``momentum_buffer`` (b) when momentum != 0; all start at zero.
    """
    cdef _Args a
    cdef fo_tensor t
    _rmsprop_args(&a.rmsprop, lr, alpha, eps, weight_decay, momentum, centered,
                  maximize)
    if square_avg is None:
        raise ValueError("square_avg is required")
    _require(grad_avg, a.rmsprop.centered, "grad_avg", "centered=True")
    _require(momentum_buffer, a.rmsprop.has_momentum, "momentum_buffer",
             "momentum != 0")
    dt = _fill_one(&t, RMSPROP_SLOTS, param, grad, square_avg, grad_avg,
                   momentum_buffer)
    _run(R_RMSPROP, &a, &t, 1, dt)


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step,
         lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
         amsgrad=False, maximize=False, decoupled_weight_decay=False):
    """Adam with bias correction; AdamW with decoupled_weight_decay=True.

    ::

        g = -grad if maximize else grad
        g = g + weight_decay * param                  (L2, if not decoupled)
        p = param * (1 - lr * weight_decay)           (if decoupled; else p = param)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * (g * g)
        v_max = maximum(v_max, v)                     (if amsgrad; v_max replaces v below)
        denom = sqrt(v) * (1 / sqrt(1 - beta2**step)) + eps
        param = p - (lr / (1 - beta1**step)) * (m / denom)

    This is the seed's ``m_hat / (sqrt(s_hat) + eps)`` with eps outside the
    root, written with the bias corrections folded into two per-step scalars
    (computed in double from the integer ``step``, the update count from 1).
    ``exp_avg`` (m), ``exp_avg_sq`` (v) start at zero; ``max_exp_avg_sq``
    (v_max) is required with amsgrad and only then.
    """
    cdef _Args a
    cdef fo_tensor t
    _adam_args(&a.adam, step, lr, betas, eps, weight_decay, amsgrad, maximize,
               decoupled_weight_decay)
    if exp_avg is None or exp_avg_sq is None:
        raise ValueError(f"{'exp_avg' if exp_avg is None else 'exp_avg_sq'} "
                         f"is required")
    _require(max_exp_avg_sq, a.adam.amsgrad, "max_exp_avg_sq", "amsgrad=True")
    dt = _fill_one(&t, ADAM_SLOTS, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)
    _run(R_ADAM, &a, &t, 1, dt)


def adagrad(param, grad, state_sum, *, step, lr=1e-2, lr_decay=0.0,
            weight_decay=0.0, eps=1e-10, maximize=False):
    """Adagrad with torch.optim.Adagrad's semantics.

    ::

        g = -grad if maximize else grad
        g = g + weight_decay * param                  (if weight_decay != 0)
        clr = lr / (1 + (step - 1) * lr_decay)
        S = S + g * g
        param = param - clr * (g / (sqrt(S) + eps))

    ``state_sum`` (S) starts at torch's initial_accumulator_value (default 0).
    """
    cdef _Args a
    cdef fo_tensor t
    _adagrad_args(&a.adagrad, step, lr, lr_decay, weight_decay, eps, maximize)
    if state_sum is None:
        raise ValueError("state_sum is required")
    dt = _fill_one(&t, ADAGRAD_SLOTS, param, grad, state_sum, None, None)
    _run(R_ADAGRAD, &a, &t, 1, dt)


# ---------------------------------------------------------------------------
# Multi-tensor functions: one call for a list of tensors of one dtype.
# `labels` (optional) names the tensors in error messages.

def sgd_many(list params, list grads, momentum_buffers=None, *, lr=1e-3,
             momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
             maximize=False, step=None, labels=None):
    cdef _Args a
    _sgd_args(&a.sgd, lr, momentum, dampening, weight_decay, nesterov, maximize,
              step, momentum_buffers)
    ts = _collect_many(SGD_SLOTS, labels, params, grads, momentum_buffers,
                       None, None)
    _run(R_SGD, &a, ts.t, ts.count, ts.dt)


def momentum_many(list params, list grads, velocities, *, lr=1e-3, beta=0.9,
                  weight_decay=0.0, maximize=False, labels=None):
    cdef _Args a
    _momentum_args(&a.momentum, lr, beta, weight_decay, maximize)
    _require(velocities, True, "velocities", "using momentum")
    ts = _collect_many(MOMENTUM_SLOTS, labels, params, grads, velocities,
                       None, None)
    _run(R_MOMENTUM, &a, ts.t, ts.count, ts.dt)


def rmsprop_many(list params, list grads, square_avgs, grad_avgs=None,
                 momentum_buffers=None, *, lr=1e-2, alpha=0.99, eps=1e-8,
                 weight_decay=0.0, momentum=0.0, centered=False,
                 maximize=False, labels=None):
    cdef _Args a
    _rmsprop_args(&a.rmsprop, lr, alpha, eps, weight_decay, momentum, centered,
                  maximize)
    _require(square_avgs, True, "square_avgs", "using RMSProp")
    _require(grad_avgs, a.rmsprop.centered, "grad_avgs", "centered=True")
    _require(momentum_buffers, a.rmsprop.has_momentum, "momentum_buffers",
             "momentum != 0")
    ts = _collect_many(RMSPROP_SLOTS, labels, params, grads, square_avgs,
                       grad_avgs, momentum_buffers)
    _run(R_RMSPROP, &a, ts.t, ts.count, ts.dt)


def adam_many(list params, list grads, exp_avgs, exp_avg_sqs,
              max_exp_avg_sqs=None, *, step, lr=1e-3, betas=(0.9, 0.999),
              eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
              decoupled_weight_decay=False, labels=None):
    cdef _Args a
    _adam_args(&a.adam, step, lr, betas, eps, weight_decay, amsgrad, maximize,
               decoupled_weight_decay)
    _require(exp_avgs, True, "exp_avgs", "using Adam")
    _require(exp_avg_sqs, True, "exp_avg_sqs", "using Adam")
    _require(max_exp_avg_sqs, a.adam.amsgrad, "max_exp_avg_sqs", "amsgrad=True")
    ts = _collect_many(ADAM_SLOTS, labels, params, grads, exp_avgs, exp_avg_sqs,
                       max_exp_avg_sqs)
    _run(R_ADAM, &a, ts.t, ts.count, ts.dt)


def adagrad_many(list params, list grads, state_sums, *, step, lr=1e-2,
                 lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False,
                 labels=None):
    cdef _Args a
    _adagrad_args(&a.adagrad, step, lr, lr_decay, weight_decay, eps, maximize)
    _require(state_sums, True, "state_sums", "using Adagrad")
    ts = _collect_many(ADAGRAD_SLOTS, labels, params, grads, state_sums, None,
                       None)
    _run(R_ADAGRAD, &a, ts.t, ts.count, ts.dt)


# ---------------------------------------------------------------------------
# Plans: the checked parameters and states of an optimizer, for fast steps.

cdef inline bint _grad_fits(object g, cnp.ndarray p, int dt):
    """g is an array the kernel can read as p's gradient: same dtype and
    shape, C-contiguous, aligned, native byte order."""
    cdef cnp.ndarray a
    cdef int need = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
    cdef int nd, k
    if not cnp.PyArray_Check(g):
        return False
    a = <cnp.ndarray>g
    if (cnp.PyArray_TYPE(a) != (cnp.NPY_FLOAT32 if dt == 0 else cnp.NPY_FLOAT64)
            or (cnp.PyArray_FLAGS(a) & need) != need or not cnp.PyArray_ISNOTSWAPPED(a)):
        return False
    nd = cnp.PyArray_NDIM(a)
    if nd != cnp.PyArray_NDIM(p):
        return False
    for k in range(nd):
        if cnp.PyArray_DIMS(a)[k] != cnp.PyArray_DIMS(p)[k]:
            return False
    return True


cdef class Plan:
    """The parameters and states of one optimizer bucket, checked once.

    Parameters and states are checked (dtype, layout, no shared memory) when
    the plan is made; a step then checks only what can change between steps:
    each parameter is still writable and of its dtype, each gradient fits its
    parameter (dtype, shape, layout) and shares memory with no other array.
    The plan holds references to every array, so their memory cannot move.

    ``step`` returns 1 when it stepped, 2 when ``check_finite`` found a NaN
    or infinity among the gradients (nothing written), and 0, with nothing
    written, when the gradients are not all present and fitting; the caller
    then takes its general path, which reports errors in detail.  States are
    given per slot in the rule's order (None for a slot the plan lacks).
    Not thread-safe: the optimizer serialises steps.
    """
    cdef int dt
    cdef int rule
    cdef Py_ssize_t count
    cdef tuple slots
    cdef object labels
    cdef tuple names
    cdef list params
    cdef list states
    cdef fo_tensor *base      # parameters and states; g unset
    cdef fo_tensor *work      # base with this step's gradients
    cdef _Range *ranges       # parameters and states, sorted by address
    cdef _Range *granges      # this step's gradients
    cdef int nranges

    def __cinit__(self, str rule, list params, list states, labels=None,
                  names=None):
        cdef Py_ssize_t i, n = len(params)
        cdef int k, dt = -1
        cdef object s
        cdef tuple slots
        if rule not in _RULES:
            raise ValueError(f"rule must be one of {', '.join(_RULES)}, got {rule!r}")
        self.rule, slots = _RULES[rule]
        if n == 0:
            raise ValueError("a plan needs at least one parameter")
        if len(states) != 3:
            raise ValueError("states must list three slots (None when unused)")
        _check_labels(labels, n)
        self.slots = slots
        self.labels = labels
        self.names = None if names is None else tuple(names)
        if self.names is not None and len(self.names) != n:
            raise ValueError("names must name every parameter")
        self.params = list(params)
        self.states = [None if x is None else _as_list(x, slots, S0 + k, n)
                       for k, x in enumerate(states)]
        self.count = n
        self.base = <fo_tensor *>PyMem_Malloc(n * sizeof(fo_tensor))
        self.work = <fo_tensor *>PyMem_Malloc(n * sizeof(fo_tensor))
        self.ranges = <_Range *>PyMem_Malloc(4 * n * sizeof(_Range))
        self.granges = <_Range *>PyMem_Malloc(n * sizeof(_Range))
        if not (self.base and self.work and self.ranges and self.granges):
            raise MemoryError()
        for i in range(n):
            p = self.params[i]
            dt = _check_array(p, slots, P, i, labels, dt, -1, True)
            self.base[i].n = <size_t>cnp.PyArray_SIZE(<cnp.ndarray>p)
            self.base[i].p = _data(p)
            self.base[i].g = NULL
            for k in range(3):
                s = None if self.states[k] is None else self.states[k][i]
                if self.states[k] is not None:
                    _check_array(s, slots, S0 + k, i, labels, dt,
                                 <Py_ssize_t>self.base[i].n, True)
                (&self.base[i].s0)[k] = NULL if s is None else _data(s)
        self.dt = dt
        _check_overlap(self.base, n, 4 if dt == 0 else 8, slots, labels, False)
        self.nranges = 0
        for i in range(n):
            nb = self.base[i].n * (4 if dt == 0 else 8)
            self.nranges = _add_range(self.ranges, self.nranges, self.base[i].p, nb, P, i)
            self.nranges = _add_range(self.ranges, self.nranges, self.base[i].s0, nb, S0, i)
            self.nranges = _add_range(self.ranges, self.nranges, self.base[i].s1, nb, S1, i)
            self.nranges = _add_range(self.ranges, self.nranges, self.base[i].s2, nb, S2, i)
        qsort(self.ranges, self.nranges, sizeof(_Range), _range_cmp)

    def __dealloc__(self):
        PyMem_Free(self.base)
        PyMem_Free(self.work)
        PyMem_Free(self.ranges)
        PyMem_Free(self.granges)

    cdef bint _hits_owned(self, uintptr_t lo, uintptr_t hi) noexcept:
        """[lo, hi) intersects a parameter or state (sorted, disjoint)."""
        cdef int a = 0, b = self.nranges
        cdef int mid
        while a < b:  # first range starting at or after hi
            mid = (a + b) // 2
            if self.ranges[mid].lo < hi:
                a = mid + 1
            else:
                b = mid
        return a > 0 and self.ranges[a - 1].hi > lo

    cdef int _prepare(self, object grads) except -1:
        """Fill work with this step's gradients: 1, or 0 when they do not
        all fit (then nothing else happens)."""
        cdef Py_ssize_t i, n = self.count
        cdef object g
        cdef cnp.ndarray p
        cdef size_t item = 4 if self.dt == 0 else 8
        cdef int need = cnp.NPY_ARRAY_WRITEABLE
        cdef int ng = 0, j
        cdef uintptr_t lo, hi
        cdef list glist = None
        cdef dict gdict = None
        if type(grads) is list:
            glist = <list>grads
            if len(glist) != n or self.names is not None:
                return 0
        elif type(grads) is dict:
            gdict = <dict>grads
            if self.names is None or len(gdict) != n:
                return 0
        else:
            return 0
        for i in range(n):
            if glist is not None:
                g = glist[i]
            else:
                g = gdict.get(self.names[i])
            p = <cnp.ndarray>self.params[i]
            if ((cnp.PyArray_FLAGS(p) & need) != need
                    or cnp.PyArray_TYPE(p) != (cnp.NPY_FLOAT32 if self.dt == 0 else cnp.NPY_FLOAT64)
                    or not _grad_fits(g, p, self.dt)):
                return 0
            self.work[i] = self.base[i]
            self.work[i].g = _data(g)
            lo = <uintptr_t>self.work[i].g
            hi = lo + self.work[i].n * item
            if self.work[i].n:
                if self._hits_owned(lo, hi):
                    return 0
                ng = _add_range(self.granges, ng, self.work[i].g, hi - lo, G, i)
        if ng <= 8:
            for j in range(1, ng):
                for i in range(j):
                    if (self.granges[j].lo < self.granges[i].hi
                            and self.granges[i].lo < self.granges[j].hi):
                        return 0
        else:
            _insertion_sort(self.granges, ng)
            for j in range(1, ng):
                if self.granges[j].lo < self.granges[j - 1].hi:
                    return 0
        return 1

    cdef int _finish(self, int rule, const _Args *a, bint check_finite) except -1:
        """Run the prepared step, unless check_finite finds a NaN or an
        infinity among the gradients: then 2, nothing written."""
        cdef int ok = 1
        if check_finite:
            with nogil:
                ok = (fo_allfinite_f32 if self.dt == 0 else fo_allfinite_f64)(
                    <const fo_tensor *>self.work, self.count)
            if not ok:
                return 2
        _run(rule, a, self.work, self.count, self.dt)
        return 1

    cdef int _has(self, int k):
        return self.states[k] is not None

    def step(self, grads, step, dict group, bint check_finite=False):
        """One step of the plan's rule with the hyperparameters in `group`
        (an optimizer's parameter group, read now, so changes between steps
        count).  Returns 1, 2 or 0 as the class says; 0 also when the group
        needs a state the plan lacks (the caller's general path makes it)."""
        cdef _Args a
        cdef int rule = self.rule
        cdef int code
        code = self._prepare(grads)
        if code != 1:
            return code
        try:
            return self._step(rule, &a, step, group, check_finite)
        except KeyError:
            return 0                # the general path reports the missing key

    cdef int _step(self, int rule, _Args *a, object step, dict group,
                   bint check_finite) except -1:
        if rule == R_ADAM:
            _adam_args(&a.adam, step, group["lr"], group["betas"], group["eps"],
                       group["weight_decay"], group["amsgrad"], group["maximize"],
                       group["decoupled_weight_decay"])
            if not (self._has(0) and self._has(1)) or (a.adam.amsgrad and not self._has(2)):
                return 0
            self._use(True, True, a.adam.amsgrad)
        elif rule == R_SGD:
            momentum = group["momentum"]
            if momentum != 0 and not self._has(0):
                return 0
            _sgd_args(&a.sgd, group["lr"], momentum, group["dampening"],
                      group["weight_decay"], group["nesterov"], group["maximize"],
                      step, None if momentum == 0 else self.states[0])
            self._use(a.sgd.has_momentum, False, False)
        elif rule == R_MOMENTUM:
            _momentum_args(&a.momentum, group["lr"], group["beta"],
                           group["weight_decay"], group["maximize"])
            if not self._has(0):
                return 0
            self._use(True, False, False)
        elif rule == R_RMSPROP:
            _rmsprop_args(&a.rmsprop, group["lr"], group["alpha"], group["eps"],
                          group["weight_decay"], group["momentum"],
                          group["centered"], group["maximize"])
            if (not self._has(0) or (a.rmsprop.centered and not self._has(1))
                    or (a.rmsprop.has_momentum and not self._has(2))):
                return 0
            self._use(True, a.rmsprop.centered, a.rmsprop.has_momentum)
        else:
            _adagrad_args(&a.adagrad, step, group["lr"], group["lr_decay"],
                          group["weight_decay"], group["eps"], group["maximize"])
            if not self._has(0):
                return 0
            self._use(True, False, False)
        return self._finish(rule, a, check_finite)

    cdef void _use(self, bint s0, bint s1, bint s2) noexcept:
        """Leave out of this step the states its options do not use."""
        cdef Py_ssize_t i
        for i in range(self.count):
            if not s0:
                self.work[i].s0 = NULL
            if not s1:
                self.work[i].s1 = NULL
            if not s2:
                self.work[i].s2 = NULL


_RULES = {"sgd": (R_SGD, SGD_SLOTS), "momentum": (R_MOMENTUM, MOMENTUM_SLOTS),
          "rmsprop": (R_RMSPROP, RMSPROP_SLOTS), "adam": (R_ADAM, ADAM_SLOTS),
          "adagrad": (R_ADAGRAD, ADAGRAD_SLOTS)}


# ---------------------------------------------------------------------------
# Gradient utilities over lists of arrays of one dtype.

cdef _Tensors _collect_grads(list grads, object labels, bint writable):
    """Grads as tensors: the array in slot g when read, in slot p when written."""
    cdef _Tensors ts = _Tensors.__new__(_Tensors)
    cdef Py_ssize_t i, n = len(grads)
    cdef int d
    cdef void *data
    _check_labels(labels, n)
    ts.reserve(n)
    for i in range(n):
        d = _check_array(grads[i], GRAD_SLOTS, G, i, labels, -1, -1, writable)
        if ts.dt >= 0 and d != ts.dt:
            raise TypeError(f"{_slot_name(GRAD_SLOTS, G, i, labels)} has dtype "
                            f"{grads[i].dtype} but the first has "
                            f"{'float32' if ts.dt == 0 else 'float64'}; pass "
                            f"one dtype per call")
        ts.dt = d
        data = _data(grads[i])
        ts.t[i].n = <size_t>cnp.PyArray_SIZE(<cnp.ndarray>grads[i])
        ts.t[i].p = data if writable else NULL
        ts.t[i].g = NULL if writable else data
        ts.t[i].s0 = ts.t[i].s1 = ts.t[i].s2 = NULL
    if writable and n > 1:
        _check_overlap(ts.t, n, 4 if ts.dt == 0 else 8, GRAD_SLOTS, labels, False)
    return ts


def grad_sumsq(list grads, labels=None):
    """Sum of squares of every element of grads (one dtype), in double.

    Blocks of a fixed size are summed in a fixed order, so the result has the
    same bits on every instruction set and for every thread count."""
    cdef _Tensors ts = _collect_grads(grads, labels, False)
    cdef double s
    if ts.count == 0:
        return 0.0
    with nogil:
        s = (fo_sumsq_f32 if ts.dt == 0 else fo_sumsq_f64)(ts.t, ts.count)
    return s


def grad_allfinite(list grads, labels=None):
    """True when no element of grads (one dtype) is NaN or infinite."""
    cdef _Tensors ts = _collect_grads(grads, labels, False)
    cdef int ok
    if ts.count == 0:
        return True
    with nogil:
        ok = (fo_allfinite_f32 if ts.dt == 0 else fo_allfinite_f64)(ts.t, ts.count)
    return ok != 0


def grad_scale_(list grads, scale, labels=None):
    """grads[i] *= scale in place, scale rounded once to the grads' dtype."""
    cdef double s = _real(scale, "scale")
    cdef _Tensors ts = _collect_grads(grads, labels, True)
    if ts.count:
        with nogil:
            (fo_scale_f32 if ts.dt == 0 else fo_scale_f64)(s, ts.t, ts.count)


def grad_clamp_(list grads, clip, labels=None):
    """grads[i] = clip(grads[i], -clip, clip) in place; clip >= 0 (inf allowed)."""
    cdef double c = _real(clip, "clip")
    if not c >= 0.0:
        raise ValueError(f"clip must be >= 0, got {clip}")
    cdef _Tensors ts = _collect_grads(grads, labels, True)
    if ts.count:
        with nogil:
            (fo_clamp_f32 if ts.dt == 0 else fo_clamp_f64)(c, ts.t, ts.count)


def traffic(param, grad, state0=None, state1=None, state2=None):
    """The memory traffic of a rule without its math (the benchmarks' floor).

    Reads every array given and writes param and the states with their sum:
    the same bytes a rule over these arrays moves, at the same threads and
    instruction-set level.  Overwrites its arguments; for measurement only."""
    cdef fo_tensor t
    if (state1 is not None and state0 is None) or (state2 is not None and state1 is None):
        raise ValueError("states must be given in order: state0, state1, state2")
    dt = _fill_one(&t, TRAFFIC_SLOTS, param, grad, state0, state1, state2)
    _run(R_TRAFFIC, NULL, &t, 1, dt)


# ---------------------------------------------------------------------------
# Per-step scalars, shared with fastopt.reference

def bias_correction(double beta, long long step):
    """1 - beta**step, in double."""
    return fo_bias_correction(beta, step)


def adam_step_size(double lr, double beta1, long long step):
    """lr / (1 - beta1**step)."""
    return fo_adam_step_size(lr, beta1, step)


def adam_inv_sqrt_bc2(double beta2, long long step):
    """1 / sqrt(1 - beta2**step)."""
    return fo_adam_inv_sqrt_bc2(beta2, step)


def decay_factor(double lr, double weight_decay):
    """1 - lr * weight_decay (AdamW's decoupled decay)."""
    return fo_decay_factor(lr, weight_decay)


def adagrad_clr(double lr, double lr_decay, long long step):
    """lr / (1 + (step - 1) * lr_decay)."""
    return fo_adagrad_clr(lr, lr_decay, step)


# ---------------------------------------------------------------------------
# Configuration

LEVELS = ("baseline", "avx2", "avx512")


def simd_levels():
    """{level: (compiled, supported by this CPU)} for every level."""
    return {fo_level_name(i).decode(): (bool(fo_level_compiled(i)),
                                        bool(fo_level_supported(i)))
            for i in range(len(LEVELS))}


def cpu_features():
    """The CPU features that decide the SIMD level, as the CPU reports them."""
    return fo_cpu_features().decode().split()


def get_simd_level():
    return fo_level_name(fo_level_get()).decode()


def set_simd_level(str level):
    """Use the kernels compiled for `level`; it must be supported here."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if fo_level_set(LEVELS.index(level)) != 0:
        raise ValueError(f"level {level!r} is not available on this build and CPU")


def best_simd_level():
    cdef int i
    for i in range(len(LEVELS) - 1, -1, -1):
        if fo_level_supported(i):
            return LEVELS[i]
    return "baseline"


def get_num_threads():
    """Threads a large step uses: set_num_threads' value, capped by OpenMP's
    limit for the calling thread."""
    return fo_num_threads_get()


def set_num_threads(n):
    """Use at most n threads (n >= 1); None restores the default."""
    if n is None:
        fo_num_threads_set(0)
        return
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be an int or None, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    fo_num_threads_set(min(n, 1 << 16))


def get_parallel_threshold():
    return fo_parallel_threshold()


def set_parallel_threshold(size_t n):
    fo_parallel_threshold_set(n)


def openmp_enabled():
    return bool(fo_openmp_enabled())
