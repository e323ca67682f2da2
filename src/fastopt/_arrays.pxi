# Arrays: one set of checks for every call, and the overlap test.
#
# A call's arrays live in slots: P (the parameter), G (the gradient), then
# the rule's states; slot names come from the rule table for messages.

cdef enum:
    P = 0
    G = 1
    S0 = 2
    NSLOTS = 2 + FO_MAX_STATES

# Per dtype index (0 float32, 1 float64)
cdef size_t ITEMSIZE[2]
ITEMSIZE[:] = [4, 8]
cdef int NPY_TYPE[2]
NPY_TYPE[:] = [cnp.NPY_FLOAT32, cnp.NPY_FLOAT64]
_DTYPE_NAMES = ("float32", "float64")


cdef str _slot_name(tuple slots, int slot, Py_ssize_t index, object labels):
    if slot < 0:   # a named array (check_disjoint): the label is its name
        return str(_label(labels, index))
    cdef str base = slots[slot]
    if index < 0:
        return base
    if labels is not None and index < len(labels):
        if slot == P:
            return f"parameter {_label(labels, index)!r}"
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


cdef inline int _dtype_index(int typenum) noexcept:
    return 0 if typenum == cnp.NPY_FLOAT32 else (1 if typenum == cnp.NPY_FLOAT64 else -1)


cdef inline int _array_ok(object x, int dt, Py_ssize_t n, bint writable) noexcept:
    """The dtype index of x when it passes every check of _check_array, -1
    otherwise (then _check_array says why)."""
    cdef cnp.ndarray a
    cdef int d
    cdef int need = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
    if not cnp.PyArray_Check(x):
        return -1
    a = <cnp.ndarray>x
    d = _dtype_index(cnp.PyArray_TYPE(a))
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
    cdef int d = _array_ok(x, dt, n, writable)
    if d >= 0:
        return d
    # one test failed: find which, for the message
    what = _slot_name(slots, slot, index, labels)
    if not isinstance(x, cnp.ndarray):
        raise TypeError(f"{what} must be a numpy.ndarray, got {type(x).__name__}")
    a = <cnp.ndarray>x
    d = _dtype_index(cnp.PyArray_TYPE(a))
    if d < 0:
        raise TypeError(f"{what} must have dtype float32 or float64, got {a.dtype}")
    if not cnp.PyArray_ISNOTSWAPPED(a):
        raise TypeError(f"{what} must be in native byte order, got {a.dtype}")
    if dt >= 0 and d != dt:
        # a parameter is compared with the first tensor's, a state or a
        # gradient with its own parameter
        ref = _slot_name(slots, P, 0 if slot == P else index, labels)
        raise TypeError(f"{what} has dtype {a.dtype} but {ref} has dtype "
                        f"{_DTYPE_NAMES[dt]}; one call takes one dtype")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        if writable:
            raise ValueError(
                f"{what} must be C-contiguous: the update is written into this "
                f"very array, so a contiguous copy would leave yours unchanged; "
                f"make the array contiguous once where it is created (e.g. "
                f"np.ascontiguousarray) and pass that same array at every step")
        raise ValueError(f"{what} must be C-contiguous: pass a contiguous "
                         f"array (np.ascontiguousarray makes one)")
    if not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{what} is not aligned to its dtype")
    if writable and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(
            f"{what} is read-only; it is updated in place, so it must be a "
            f"writable array of your own (a copy would take the update and "
            f"leave yours unchanged): not a broadcast view or a frozen buffer")
    if n >= 0 and cnp.PyArray_SIZE(a) != n:
        raise ValueError(f"{what} has {cnp.PyArray_SIZE(a)} elements but "
                         f"{_slot_name(slots, P, index, labels)} has {n}")
    return d


cdef inline void *_data(object x):
    return cnp.PyArray_DATA(<cnp.ndarray>x)


cdef inline int _fill_state(fo_tensor *t, int k, object s, tuple slots,
                            Py_ssize_t index, object labels, int dt,
                            Py_ssize_t n) except -1:
    if s is None:
        t.s[k] = NULL
        return 0
    if _array_ok(s, dt, n, True) < 0:
        _check_array(s, slots, S0 + k, index, labels, dt, n, True)
    t.s[k] = _data(s)
    return 0


cdef int _fill_tensor(fo_tensor *t, tuple slots, Py_ssize_t index,
                      object labels, object p, object g, object s0,
                      object s1, object s2, object s3, int dt) except -2:
    """Check one tensor's arrays and point t at them; return the dtype index.
    States that are None stay NULL (the caller checked which are needed)."""
    cdef Py_ssize_t n
    cdef int d = _array_ok(p, dt, -1, True)
    dt = d if d >= 0 else _check_array(p, slots, P, index, labels, dt, -1, True)
    n = _size(<cnp.ndarray>p)
    if _array_ok(g, dt, n, False) < 0:
        _check_array(g, slots, G, index, labels, dt, n, False)
    t.n = <size_t>n
    t.p = _data(p)
    t.g = _data(g)
    t.acc = NULL
    t.ema = NULL
    t.key = 0
    t.at = 0
    memset(t.scale, 0, sizeof(t.scale))
    _fill_state(t, 0, s0, slots, index, labels, dt, n)
    _fill_state(t, 1, s1, slots, index, labels, dt, n)
    _fill_state(t, 2, s2, slots, index, labels, dt, n)
    _fill_state(t, 3, s3, slots, index, labels, dt, n)
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


cdef void _sort_ranges(_Range *r, int k) noexcept nogil:
    if k <= 256:
        _insertion_sort(r, k)
    else:
        qsort(r, k, sizeof(_Range), _range_cmp)


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


cdef int _overlap_sorted(_Range *r, int k, tuple slots, object labels) except -1:
    """Raise if two of the k ranges intersect; sorts them."""
    cdef int j, widest = 0
    if k <= 8:
        return _overlap_pairs(r, k, slots, labels, False)
    _sort_ranges(r, k)
    for j in range(1, k):
        if r[j].lo < r[widest].hi:
            _raise_overlap(r[j], r[widest], slots, labels, False)
        if r[j].hi > r[widest].hi:
            widest = j
    return 0


cdef inline int _tensor_ranges(_Range *r, int k, const fo_tensor *t, size_t nb,
                               Py_ssize_t index, bint with_grad, size_t snb) noexcept:
    """Add the byte ranges of one tensor's arrays (nb bytes each, its states
    snb); return the new count."""
    cdef int s
    k = _add_range(r, k, t.p, nb, P, index)
    if with_grad:
        k = _add_range(r, k, t.g, nb, G, index)
    for s in range(FO_MAX_STATES):
        k = _add_range(r, k, t.s[s], snb, S0 + s, index)
    return k


cdef int _check_overlap(const fo_tensor *t, Py_ssize_t count, size_t itemsize,
                        tuple slots, object labels, bint single) except -1:
    """Raise ValueError if any two arrays of the call share memory."""
    cdef _Range stack_ranges[NSLOTS]
    cdef _Range *r = stack_ranges
    cdef Py_ssize_t i
    cdef int k = 0
    if count > 1:
        r = <_Range *>PyMem_Malloc(count * NSLOTS * sizeof(_Range))
        if r == NULL:
            raise MemoryError()
    try:
        for i in range(count):
            k = _tensor_ranges(r, k, &t[i], t[i].n * itemsize, i, True,
                               t[i].n * itemsize)
        if single or k <= 8:
            _overlap_pairs(r, k, slots, labels, single)
        else:
            _overlap_sorted(r, k, slots, labels)
    finally:
        if r != stack_ranges:
            PyMem_Free(r)
    return 0


cdef inline bint _adjacent(const void *a, const void *b, size_t nbytes) noexcept nogil:
    return (a == NULL and b == NULL) or (
        a != NULL and b != NULL and <const char *>a + nbytes == <const char *>b)


cdef Py_ssize_t _merge_adjacent(fo_tensor *t, Py_ssize_t count,
                                size_t itemsize, bint fuse_ok) noexcept nogil:
    """Drop empty tensors and, when fuse_ok, fuse neighbours whose every
    array continues where the previous one ends (views of one buffer, as
    FlatParams makes): an element-wise rule gives the same bits on the fused
    range, in one loop (a rule with per-tensor reductions does not, so it
    passes fuse_ok=False).  Call only after the overlap check.  Returns the
    new count."""
    cdef Py_ssize_t i, k = 0
    cdef size_t nb
    cdef int s
    cdef bint fuse
    for i in range(count):
        if t[i].n == 0:
            continue
        if k > 0 and fuse_ok:
            nb = t[k - 1].n * itemsize
            fuse = (_adjacent(t[k - 1].p, t[i].p, nb)
                    and _adjacent(t[k - 1].g, t[i].g, nb))
            for s in range(FO_MAX_STATES):
                fuse = fuse and _adjacent(t[k - 1].s[s], t[i].s[s], nb)
            fuse = (fuse and _adjacent(t[k - 1].acc, t[i].acc, nb)
                    and _adjacent(t[k - 1].ema, t[i].ema, nb))
            if fuse:
                t[k - 1].n += t[i].n
                continue
        t[k] = t[i]
        k += 1
    return k


cdef inline list _as_list(object seq, str what, Py_ssize_t n):
    """seq (a list or tuple of n arrays, or None) as a list."""
    if seq is None:
        return None
    if type(seq) is not list:
        if not isinstance(seq, (list, tuple)):
            raise TypeError(f"the {what} arrays must be given as a list, "
                            f"got {type(seq).__name__}")
        seq = list(seq)
    if len(<list>seq) != n:
        raise ValueError(f"got {len(<list>seq)} {what} arrays for {n} parameters")
    return <list>seq


def check_arrays(list arrays, list names, bint writable=True):
    """The array checks of every call, for callers outside the rules (the
    optimizers' construction, clipping): each array a C-contiguous, aligned,
    native float32 or float64 numpy.ndarray (writable when it is written),
    no two sharing memory; messages name array i by names[i]."""
    cdef Py_ssize_t i
    if len(names) != len(arrays):
        raise ValueError("names must name every array")
    for i in range(len(arrays)):
        _check_array(arrays[i], (names[i],), 0, -1, None, -1, -1, writable)
    check_disjoint(arrays, names)


def check_disjoint(list arrays, list names):
    """ValueError naming two arrays (C-contiguous ones) that share memory."""
    cdef Py_ssize_t i, n = len(arrays)
    cdef int k = 0
    cdef _Range *r = <_Range *>PyMem_Malloc(max(n, 1) * sizeof(_Range))
    cdef cnp.ndarray a
    if r == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            a = <cnp.ndarray?>arrays[i]
            k = _add_range(r, k, cnp.PyArray_DATA(a), cnp.PyArray_NBYTES(a), -1, i)
        _overlap_sorted(r, k, ("array",), names)
    finally:
        PyMem_Free(r)


cdef double *_scalar_state(object x, str name) except NULL:
    """A per-tensor scalar state given to a functional call: a writable
    float64 array of one element, updated in place after the step."""
    cdef cnp.ndarray a
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a float64 numpy.ndarray of one element "
                        f"(a per-tensor state, updated in place), got "
                        f"{type(x).__name__}")
    a = <cnp.ndarray>x
    if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT64 or cnp.PyArray_SIZE(a) != 1:
        raise ValueError(f"{name} must be a float64 array of one element, got "
                         f"{x.dtype} of shape {x.shape}")
    if not cnp.PyArray_ISWRITEABLE(a) or not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{name} must be writable and aligned: the step "
                         f"stores its next value there")
    return <double *>cnp.PyArray_DATA(a)


cdef int _scalar_overlap(const fo_tensor *t, size_t nb, const double *x,
                         str name, tuple slots) except -1:
    """A scalar state must not share memory with the tensor's arrays."""
    cdef uintptr_t lo = <uintptr_t>x, hi = lo + sizeof(double)
    cdef uintptr_t b
    cdef int k
    cdef const void *arrays[2 + FO_MAX_STATES]
    arrays[0] = t.p
    arrays[1] = t.g
    for k in range(FO_MAX_STATES):
        arrays[2 + k] = t.s[k]
    for k in range(2 + FO_MAX_STATES):
        b = <uintptr_t>arrays[k]
        if arrays[k] != NULL and b < hi and lo < b + nb:
            raise ValueError(f"{name} overlaps {slots[k]} in memory; every "
                             f"array of a step must be separate")
    return 0
