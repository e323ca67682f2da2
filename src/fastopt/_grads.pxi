# Gradient utilities over lists of arrays of one dtype, and the traffic
# kernel of the benchmarks.

GRAD_SLOTS = ("grad", "grad")

# The block of the deterministic sums (grad_sumsq and the per-tensor sums of
# the two-pass rules): fastopt.reference.sumsq follows the same order.
SUMSQ_BLOCK = FO_SUMSQ_BLOCK

cdef _Tensors _collect_grads(list grads, object labels, bint writable):
    """Grads as tensors: the array in slot g when read, in slot p when written."""
    cdef _Tensors ts = _Tensors.__new__(_Tensors)
    cdef Py_ssize_t i, n = len(grads)
    cdef int d, k
    cdef void *data
    _check_labels(labels, n)
    ts.reserve(n)
    for i in range(n):
        d = _check_array(grads[i], GRAD_SLOTS, G, i, labels, -1, -1, writable)
        if ts.dt >= 0 and d != ts.dt:
            raise TypeError(f"{_slot_name(GRAD_SLOTS, G, i, labels)} has dtype "
                            f"{grads[i].dtype} but the first has "
                            f"{_DTYPE_NAMES[ts.dt]}; pass one dtype per call")
        ts.dt = d
        data = _data(grads[i])
        ts.t[i].n = <size_t>cnp.PyArray_SIZE(<cnp.ndarray>grads[i])
        ts.t[i].p = data if writable else NULL
        ts.t[i].g = NULL if writable else data
        for k in range(FO_MAX_STATES):
            ts.t[i].s[k] = NULL
        ts.t[i].acc = NULL
        ts.t[i].ema = NULL
    if writable and n > 1:
        _check_overlap(ts.t, n, ITEMSIZE[ts.dt], GRAD_SLOTS, labels, False)
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
        s = fo_sumsq(ts.dt, ts.t, ts.count)
    return s


def grad_sumsq_blocks(list grads, labels=None):
    """The block sums that grad_sumsq adds, as a float64 array.

    Each gradient is cut into blocks of SUMSQ_BLOCK elements from its first
    element (its last block may be shorter); the array holds each block's
    sum of squares, in double, gradients in order.  ``grad_sumsq(grads)`` is
    0.0 plus these, left to right, so a sum over a buffer that processes
    hold in pieces can be put back together with its bits."""
    cdef _Tensors ts = _collect_grads(grads, labels, False)
    cdef cnp.ndarray out
    cdef double *o
    if ts.count == 0:
        return np.zeros(0, dtype=np.float64)
    out = np.empty(fo_sumsq_block_count(ts.t, ts.count), dtype=np.float64)
    o = <double *>cnp.PyArray_DATA(out)
    with nogil:
        fo_sumsq_blocks(ts.dt, ts.t, ts.count, o)
    return out


def grad_allfinite(list grads, labels=None):
    """True when no element of grads (one dtype) is NaN or infinite."""
    cdef _Tensors ts = _collect_grads(grads, labels, False)
    cdef int ok
    if ts.count == 0:
        return True
    with nogil:
        ok = fo_allfinite(ts.dt, ts.t, ts.count)
    return ok != 0


def grad_scale_(list grads, scale, labels=None):
    """grads[i] *= scale in place, scale rounded once to the grads' dtype."""
    cdef double s = _real(scale, "scale")
    cdef _Tensors ts = _collect_grads(grads, labels, True)
    if ts.count:
        with nogil:
            fo_scale(ts.dt, s, ts.t, ts.count)


def grad_clamp_(list grads, clip, labels=None):
    """grads[i] = clip(grads[i], -clip, clip) in place; clip >= 0 (inf allowed)."""
    cdef double c = _real(clip, "clip")
    if not c >= 0.0:
        raise ValueError(f"clip must be >= 0, got {clip}")
    cdef _Tensors ts = _collect_grads(grads, labels, True)
    if ts.count:
        with nogil:
            fo_clamp(ts.dt, c, ts.t, ts.count)


TRAFFIC_SLOTS = ("param", "grad") + tuple(f"state{k}" for k in range(FO_MAX_STATES))


def traffic(param, grad, state0=None, state1=None, state2=None, state3=None):
    """The memory traffic of a rule without its math (the benchmarks' floor).

    Reads every array given and writes param and the states with their sum:
    the same bytes a rule over these arrays moves, at the same threads and
    instruction-set level.  Overwrites its arguments; for measurement only."""
    cdef fo_tensor t
    cdef _Range ranges[NSLOTS]
    states = (state0, state1, state2, state3)
    if any(states[k] is not None and states[k - 1] is None for k in range(1, 4)):
        raise ValueError("states must be given in order: state0, state1, ...")
    dt = _fill_tensor(&t, TRAFFIC_SLOTS, -1, None, param, grad, state0, state1,
                      state2, state3, -1)
    _overlap_pairs(ranges, _tensor_ranges(ranges, 0, &t, t.n * ITEMSIZE[dt], -1, True,
                                          t.n * ITEMSIZE[dt]),
                   TRAFFIC_SLOTS, None, True)
    _run(R_TRAFFIC, NULL, &t, 1, dt)


def bias_correction(double beta, long long step):
    """1 - beta**step, in double, as every rule's coefficients compute it."""
    return fo_bias_correction(beta, step)
