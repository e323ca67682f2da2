# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The boundary between Python and the C kernels.

Every public function here checks all of its arguments before the first
write, then calls one kernel with the GIL released.  Hyperparameters become
per-step coefficients through csrc/fastopt/scalars.h, which the NumPy
reference reaches through the helpers at the end of this file.
"""

cimport numpy as cnp
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
    if type(x) is float or type(x) is int:
        return float(x)
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    return float(x)


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
    if type(step) is int:
        t = step if -2 ** 62 < step < 2 ** 62 else 0
        if t >= 1:
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


cdef tuple _betas(object betas):
    cdef double b1, b2
    if type(betas) is tuple and len(<tuple>betas) == 2:
        x1, x2 = <tuple>betas
        if type(x1) is float and type(x2) is float:
            b1, b2 = x1, x2
            if 0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0:
                return (b1, b2)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return (_beta(betas[0], "betas[0]", "beta parameter at index 0"),
            _beta(betas[1], "betas[1]", "beta parameter at index 1"))


# ---------------------------------------------------------------------------
# Arrays

cdef str _slot_name(tuple slots, int slot, Py_ssize_t index, object labels):
    cdef str base = slots[slot]
    if index < 0:
        return base
    if labels is not None:
        return f"{base} of parameter {labels[index]!r}"
    return f"{base}s[{index}]"


cdef int _check_array(object x, tuple slots, int slot, Py_ssize_t index,
                      object labels, int dt, Py_ssize_t n,
                      bint writable) except -2:
    """Check one array of a call; return its dtype index (0 float32, 1 float64).

    dt < 0 means no dtype to match yet; n < 0 means no size to match."""
    cdef cnp.ndarray a
    cdef int tn, d
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
    cdef int k
    for k, s in enumerate((s0, s1, s2)):
        if ((required >> k) & 1) and s is None:
            raise ValueError(f"{_slot_name(slots, S0 + k, index, labels)} is "
                             f"None; every tensor needs this state")
    dt = _check_array(p, slots, P, index, labels, dt, -1, True)
    n = cnp.PyArray_SIZE(<cnp.ndarray>p)
    _check_array(g, slots, G, index, labels, dt, n, False)
    if s0 is not None:
        _check_array(s0, slots, S0, index, labels, dt, n, True)
    if s1 is not None:
        _check_array(s1, slots, S1, index, labels, dt, n, True)
    if s2 is not None:
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


cdef int _check_overlap(const fo_tensor *t, Py_ssize_t count, size_t itemsize,
                        tuple slots, object labels, bint single) except -1:
    """Raise ValueError if any two arrays of the call share memory."""
    cdef _Range stack_ranges[NSLOTS]
    cdef _Range *r = stack_ranges
    cdef Py_ssize_t i
    cdef int k = 0, j, widest
    cdef size_t nb
    if count > 1:
        r = <_Range *>PyMem_Malloc(count * NSLOTS * sizeof(_Range))
        if r == NULL:
            raise MemoryError()
    try:
        for i in range(count):
            nb = t[i].n * itemsize
            k = _add_range(r, k, t[i].p, nb, P, i)
            k = _add_range(r, k, t[i].g, nb, G, i)
            k = _add_range(r, k, t[i].s0, nb, S0, i)
            k = _add_range(r, k, t[i].s1, nb, S1, i)
            k = _add_range(r, k, t[i].s2, nb, S2, i)
        if k <= 8:
            _overlap_pairs(r, k, slots, labels, single)
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
    cdef size_t total

    def __dealloc__(self):
        if self.t != &self.one and self.t != NULL:
            PyMem_Free(self.t)


cdef _Tensors _collect_one(tuple slots, object p, object g, object s0,
                           object s1, object s2):
    cdef _Tensors ts = _Tensors.__new__(_Tensors)
    ts.t = &ts.one
    ts.count = 1
    ts.dt = _fill_tensor(ts.t, slots, -1, None, p, g, s0, s1, s2, -1,
                         (s0 is not None) | (s1 is not None) << 1 |
                         (s2 is not None) << 2)
    ts.total = ts.t.n
    _check_overlap(ts.t, 1, 4 if ts.dt == 0 else 8, slots, None, True)
    return ts


cdef inline object _item(object seq, Py_ssize_t i):
    return None if seq is None else seq[i]


cdef _Tensors _collect_many(tuple slots, object labels, list ps, list gs,
                            object s0s, object s1s, object s2s):
    cdef _Tensors ts = _Tensors.__new__(_Tensors)
    cdef Py_ssize_t i, n = len(ps)
    cdef int required = ((s0s is not None) | (s1s is not None) << 1 |
                         (s2s is not None) << 2)
    for seq, slot in ((gs, G), (s0s, S0), (s1s, S1), (s2s, S2)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"got {len(seq)} {slots[slot]} arrays for {n} "
                             f"parameters")
    ts.count = n
    ts.dt = -1
    ts.total = 0
    ts.t = &ts.one
    if n > 1:
        ts.t = <fo_tensor *>PyMem_Malloc(n * sizeof(fo_tensor))
        if ts.t == NULL:
            raise MemoryError()
    for i in range(n):
        ts.dt = _fill_tensor(&ts.t[i], slots, i, labels, ps[i], gs[i],
                             _item(s0s, i), _item(s1s, i), _item(s2s, i), ts.dt,
                             required)
        ts.total += ts.t[i].n
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

cdef int _run_sgd(const fo_sgd_args *a, _Tensors ts) except -1:
    if ts.total >= NOGIL_THRESHOLD:
        with nogil:
            (fo_sgd_f32 if ts.dt == 0 else fo_sgd_f64)(a, ts.t, ts.count)
    else:
        (fo_sgd_f32 if ts.dt == 0 else fo_sgd_f64)(a, ts.t, ts.count)
    return 0


cdef int _run_momentum(const fo_momentum_args *a, _Tensors ts) except -1:
    if ts.total >= NOGIL_THRESHOLD:
        with nogil:
            (fo_momentum_f32 if ts.dt == 0 else fo_momentum_f64)(a, ts.t, ts.count)
    else:
        (fo_momentum_f32 if ts.dt == 0 else fo_momentum_f64)(a, ts.t, ts.count)
    return 0


cdef int _run_rmsprop(const fo_rmsprop_args *a, _Tensors ts) except -1:
    if ts.total >= NOGIL_THRESHOLD:
        with nogil:
            (fo_rmsprop_f32 if ts.dt == 0 else fo_rmsprop_f64)(a, ts.t, ts.count)
    else:
        (fo_rmsprop_f32 if ts.dt == 0 else fo_rmsprop_f64)(a, ts.t, ts.count)
    return 0


cdef int _run_adam(const fo_adam_args *a, _Tensors ts) except -1:
    if ts.total >= NOGIL_THRESHOLD:
        with nogil:
            (fo_adam_f32 if ts.dt == 0 else fo_adam_f64)(a, ts.t, ts.count)
    else:
        (fo_adam_f32 if ts.dt == 0 else fo_adam_f64)(a, ts.t, ts.count)
    return 0


cdef int _run_adagrad(const fo_adagrad_args *a, _Tensors ts) except -1:
    if ts.total >= NOGIL_THRESHOLD:
        with nogil:
            (fo_adagrad_f32 if ts.dt == 0 else fo_adagrad_f64)(a, ts.t, ts.count)
    else:
        (fo_adagrad_f32 if ts.dt == 0 else fo_adagrad_f64)(a, ts.t, ts.count)
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
    a.beta1, a.beta2 = _betas(betas)
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
    cdef fo_sgd_args a
    _sgd_args(&a, lr, momentum, dampening, weight_decay, nesterov, maximize,
              step, momentum_buffer)
    _run_sgd(&a, _collect_one(SGD_SLOTS, param, grad, momentum_buffer, None, None))


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
    cdef fo_momentum_args a
    _momentum_args(&a, lr, beta, weight_decay, maximize)
    if velocity is None:
        raise ValueError("velocity is required")
    _run_momentum(&a, _collect_one(MOMENTUM_SLOTS, param, grad, velocity, None, None))


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
    cdef fo_rmsprop_args a
    _rmsprop_args(&a, lr, alpha, eps, weight_decay, momentum, centered, maximize)
    if square_avg is None:
        raise ValueError("square_avg is required")
    _require(grad_avg, a.centered, "grad_avg", "centered=True")
    _require(momentum_buffer, a.has_momentum, "momentum_buffer", "momentum != 0")
    _run_rmsprop(&a, _collect_one(RMSPROP_SLOTS, param, grad, square_avg,
                                  grad_avg, momentum_buffer))


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
    cdef fo_adam_args a
    _adam_args(&a, step, lr, betas, eps, weight_decay, amsgrad, maximize,
               decoupled_weight_decay)
    if exp_avg is None or exp_avg_sq is None:
        raise ValueError(f"{'exp_avg' if exp_avg is None else 'exp_avg_sq'} "
                         f"is required")
    _require(max_exp_avg_sq, a.amsgrad, "max_exp_avg_sq", "amsgrad=True")
    _run_adam(&a, _collect_one(ADAM_SLOTS, param, grad, exp_avg, exp_avg_sq,
                               max_exp_avg_sq))


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
    cdef fo_adagrad_args a
    _adagrad_args(&a, step, lr, lr_decay, weight_decay, eps, maximize)
    if state_sum is None:
        raise ValueError("state_sum is required")
    _run_adagrad(&a, _collect_one(ADAGRAD_SLOTS, param, grad, state_sum, None, None))


# ---------------------------------------------------------------------------
# Multi-tensor functions: one call for a list of tensors of one dtype.
# `labels` (optional) names the tensors in error messages.

def sgd_many(list params, list grads, momentum_buffers=None, *, lr=1e-3,
             momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
             maximize=False, step=None, labels=None):
    cdef fo_sgd_args a
    _sgd_args(&a, lr, momentum, dampening, weight_decay, nesterov, maximize,
              step, momentum_buffers)
    _run_sgd(&a, _collect_many(SGD_SLOTS, labels, params, grads,
                               momentum_buffers, None, None))


def momentum_many(list params, list grads, velocities, *, lr=1e-3, beta=0.9,
                  weight_decay=0.0, maximize=False, labels=None):
    cdef fo_momentum_args a
    _momentum_args(&a, lr, beta, weight_decay, maximize)
    _require(velocities, True, "velocities", "using momentum")
    _run_momentum(&a, _collect_many(MOMENTUM_SLOTS, labels, params, grads,
                                    velocities, None, None))


def rmsprop_many(list params, list grads, square_avgs, grad_avgs=None,
                 momentum_buffers=None, *, lr=1e-2, alpha=0.99, eps=1e-8,
                 weight_decay=0.0, momentum=0.0, centered=False,
                 maximize=False, labels=None):
    cdef fo_rmsprop_args a
    _rmsprop_args(&a, lr, alpha, eps, weight_decay, momentum, centered, maximize)
    _require(square_avgs, True, "square_avgs", "using RMSProp")
    _require(grad_avgs, a.centered, "grad_avgs", "centered=True")
    _require(momentum_buffers, a.has_momentum, "momentum_buffers", "momentum != 0")
    _run_rmsprop(&a, _collect_many(RMSPROP_SLOTS, labels, params, grads,
                                   square_avgs, grad_avgs, momentum_buffers))


def adam_many(list params, list grads, exp_avgs, exp_avg_sqs,
              max_exp_avg_sqs=None, *, step, lr=1e-3, betas=(0.9, 0.999),
              eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
              decoupled_weight_decay=False, labels=None):
    cdef fo_adam_args a
    _adam_args(&a, step, lr, betas, eps, weight_decay, amsgrad, maximize,
               decoupled_weight_decay)
    _require(exp_avgs, True, "exp_avgs", "using Adam")
    _require(exp_avg_sqs, True, "exp_avg_sqs", "using Adam")
    _require(max_exp_avg_sqs, a.amsgrad, "max_exp_avg_sqs", "amsgrad=True")
    _run_adam(&a, _collect_many(ADAM_SLOTS, labels, params, grads, exp_avgs,
                                exp_avg_sqs, max_exp_avg_sqs))


def adagrad_many(list params, list grads, state_sums, *, step, lr=1e-2,
                 lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False,
                 labels=None):
    cdef fo_adagrad_args a
    _adagrad_args(&a, step, lr, lr_decay, weight_decay, eps, maximize)
    _require(state_sums, True, "state_sums", "using Adagrad")
    _run_adagrad(&a, _collect_many(ADAGRAD_SLOTS, labels, params, grads,
                                   state_sums, None, None))


# ---------------------------------------------------------------------------
# Gradient utilities over lists of arrays of one dtype.

cdef _Tensors _collect_grads(list grads, object labels, bint writable):
    """Grads as tensors: the array in slot g when read, in slot p when written."""
    cdef _Tensors ts = _Tensors.__new__(_Tensors)
    cdef Py_ssize_t i, n = len(grads)
    cdef int d
    cdef void *data
    ts.count = n
    ts.dt = -1
    ts.total = 0
    ts.t = &ts.one
    if n > 1:
        ts.t = <fo_tensor *>PyMem_Malloc(n * sizeof(fo_tensor))
        if ts.t == NULL:
            raise MemoryError()
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
        ts.total += ts.t[i].n
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
    cdef _Tensors ts = _collect_one(TRAFFIC_SLOTS, param, grad, state0, state1, state2)
    if (state1 is not None and state0 is None) or (state2 is not None and state1 is None):
        raise ValueError("states must be given in order: state0, state1, state2")
    with nogil:
        (fo_traffic_f32 if ts.dt == 0 else fo_traffic_f64)(ts.t, ts.count)


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
