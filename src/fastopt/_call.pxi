# Running a rule: the one call path of every door (functional calls, the
# multi-tensor call, the optimizers' plans).

# Releasing and retaking the GIL costs about 0.1 us, more than a step on a
# few thousand elements takes; below this many elements the kernel runs with
# the GIL held.
cdef size_t NOGIL_THRESHOLD = 4096

# The rule id of the traffic kernel (benchmarks' floor), after the table's.
cdef int R_TRAFFIC = -1

cdef Py_ssize_t _last_tensors = 0


def last_call_tensors():
    """The number of tensors the last kernel call ran over, after neighbours
    were fused (a diagnostic: 1 for a model laid out by FlatParams)."""
    return _last_tensors


cdef void _kernel(int rule, const fo_args *a, fo_tensor *t, size_t count,
                  int dt, const fo_fuse *f) noexcept nogil:
    if rule == R_TRAFFIC:
        fo_traffic(dt, t, count)
    else:
        fo_run_fused(rule, dt, a, t, count, f)


cdef int _run(int rule, const fo_args *a, fo_tensor *t, Py_ssize_t count,
              int dt, const fo_fuse *f=NULL, bint merge=True) except -1:
    """Fuse adjacent tensors (not for a rule with per-tensor reductions,
    nor when merge is False), then run the kernel, without the GIL when the
    step is large enough to pay for releasing it."""
    cdef size_t total = 0
    cdef Py_ssize_t i
    global _last_tensors
    # neither for bfloat16 states, whose random bits count elements from
    # each tensor's start, nor for 8-bit ones, whose blocks do
    count = _merge_adjacent(t, count, ITEMSIZE[dt], merge and fo_reductions(rule) == 0
                            and (f == NULL or not (f.flags & (FO_FUSE_BF16 | FO_FUSE_Q8))))
    _last_tensors = count
    for i in range(count):
        total += t[i].n
    if total >= NOGIL_THRESHOLD:
        with nogil:
            _kernel(rule, a, t, count, dt, f)
    elif count:
        _kernel(rule, a, t, count, dt, f)
    return 0


cdef inline int _call_one(_Rule r, const fo_args *a, double **sc, object p,
                          object g, object s0, object s1, object s2,
                          object s3) except -1:
    """One step of rule r on one tensor (fastopt.functional), its
    hyperparameters and states already checked: the arrays checked, then one
    kernel call; then the per-tensor scalar states (sc, NULL when the rule
    has none) take their next values from a."""
    cdef fo_tensor t
    cdef _Range ranges[NSLOTS]
    cdef int k, j
    dt = _fill_tensor(&t, r.slots, -1, None, p, g, s0, s1, s2, s3, -1)
    _overlap_pairs(ranges, _tensor_ranges(ranges, 0, &t, t.n * ITEMSIZE[dt], -1, True,
                                          t.n * ITEMSIZE[dt]),
                   r.slots, None, True)
    if sc != NULL:
        for k in range(r.nscalars):
            _scalar_overlap(&t, t.n * ITEMSIZE[dt], sc[k], r.scalar_names[k], r.slots)
            for j in range(k):
                if sc[j] == sc[k]:
                    raise ValueError(f"{r.scalar_names[k]} is the same memory as "
                                     f"{r.scalar_names[j]}; every array of a step "
                                     f"must be separate")
    _run(r.id, a, &t, 1, dt)
    if sc != NULL:
        for k in range(r.nscalars):
            sc[k][0] = a.sc[k]
    return 0


cdef int _check_matrix(_Rule r, object p, object label) except -1:
    """A rule with a matrix step takes matrices only."""
    if cnp.PyArray_NDIM(<cnp.ndarray>p) != 2:
        what = "param" if label is None else f"parameter {label!r}"
        raise ValueError(
            f"{r.entry.cls} takes 2-D parameters (matrices) only; {what} has "
            f"shape {np.shape(p)}: give biases, embeddings and other "
            f"parameters that are not 2-D to another optimizer, such as AdamW")
    return 0


cdef object _matrix_fn(_Rule r):
    """The rule's matrix step, a function of fastopt.matrix (imported on
    first use: that module uses this one)."""
    if r.matrix is None:
        import fastopt.matrix
        r.matrix = getattr(fastopt.matrix, r.entry.matrix)
    return r.matrix


cdef int _run_matrix(_Rule r, const fo_args *a, fo_tensor *t, Py_ssize_t n,
                     int dt, list shapes, object hyper, const fo_fuse *f1=NULL,
                     const fo_fuse *f2=NULL) except -1:
    """One step of a rule with a matrix step over n checked tensors (p the
    parameter, g the gradient, the states) of the given shapes: the first
    pass writes each tensor's work array (slot p), the matrix step turns
    each into its direction and scale, the second pass (option post)
    updates the parameters from them (slot g, and r[0]).  f1 is fused with
    the first pass (the mean of accumulated gradients), f2 with the second
    (the EMA of the parameters).  The work arrays are the rule's, not the
    caller's, so nothing the caller passed is written before the first
    pass runs."""
    cdef fo_tensor *w = NULL
    cdef fo_args post = a[0]
    cdef Py_ssize_t i
    if n == 0:
        return 0
    fn = _matrix_fn(r)
    name = _DTYPE_NAMES[dt]
    work = [np.empty(shape, dtype=name) for shape in shapes]
    w = <fo_tensor *>PyMem_Malloc(n * sizeof(fo_tensor))
    if w == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            w[i] = t[i]
            w[i].p = _data(work[i])
            w[i].ema = NULL
        _run(r.id, a, w, n, dt, f1, False)
        dirs = []
        for i in range(n):
            d, scale = fn(work[i], hyper)
            if not (isinstance(d, np.ndarray) and d.dtype == name
                    and d.shape == work[i].shape and d.flags.c_contiguous):
                raise RuntimeError(f"the matrix step {r.entry.matrix} returned "
                                   f"an array of the wrong kind")
            dirs.append(d)
            w[i] = t[i]
            w[i].g = _data(d)
            w[i].acc = NULL
            w[i].r[0] = float(scale)
        post.opts = a.opts | r.post_bit
        _run(r.id, &post, w, n, dt, f2, False)
    finally:
        PyMem_Free(w)
    return 0


cdef int _call_matrix(_Rule r, const fo_args *a, dict hyper, object p,
                      object g, object s0, object s1, object s2,
                      object s3) except -1:
    """One step of a rule with a matrix step on one tensor
    (fastopt.functional), its hyperparameters and states already checked:
    the arrays checked (the parameter a matrix), then _run_matrix."""
    cdef fo_tensor t
    cdef _Range ranges[NSLOTS]
    dt = _fill_tensor(&t, r.slots, -1, None, p, g, s0, s1, s2, s3, -1)
    _overlap_pairs(ranges, _tensor_ranges(ranges, 0, &t, t.n * ITEMSIZE[dt], -1, True,
                                          t.n * ITEMSIZE[dt]),
                   r.slots, None, True)
    _check_matrix(r, p, None)
    _run_matrix(r, a, &t, 1, dt, [np.shape(p)], hyper)
    return 0


cdef class _Tensors:
    """The checked tensors of one call: a buffer of fo_tensor and a dtype."""
    cdef fo_tensor *t
    cdef Py_ssize_t count
    cdef int dt

    def __dealloc__(self):
        PyMem_Free(self.t)

    cdef int reserve(self, Py_ssize_t n) except -1:
        self.count = n
        self.dt = -1
        self.t = <fo_tensor *>PyMem_Malloc(max(n, 1) * sizeof(fo_tensor))
        if self.t == NULL:
            raise MemoryError()
        return 0


def step_many(str rule, list params, list grads, states=None, *, step=None,
              labels=None, first=None, **hyper):
    """One step of ``rule`` over many tensors of one dtype, in one kernel call.

    ``states`` lists, per state slot of the rule, a list of arrays (one per
    parameter) or None for a slot the options do not use, then per
    per-tensor scalar state a list of float64 arrays of one element;
    hyperparameters are those of ``fastopt.functional.<rule>`` (defaults
    from the table), ``labels`` names the tensors in messages.  ``first``,
    a pair (count, {name: value}), gives the first ``count`` tensors those
    hyperparameters over the call's (a second kernel call; scikit-learn's
    raw coefficient gradients before its finished intercept gradients).
    Checked like a single call.  A rule with scalar states steps each tensor
    with its own coefficients (one kernel call per tensor)."""
    cdef _Rule r = _rule(rule)
    cdef _Hyper x
    cdef double h[FO_MAX_SCALARS]
    cdef double h_first[FO_MAX_SCALARS]
    cdef fo_args a, a_first
    cdef _Tensors ts = _Tensors.__new__(_Tensors)
    cdef Py_ssize_t i, n = len(params), n_first = 0
    cdef int k
    for name in hyper:
        if name not in r.kernel_by_name:
            raise TypeError(f"{rule} has no hyperparameter {name!r}")
    for x in r.kernel_hypers:
        x.convert(hyper.get(x.name, x.default), h)
    r.coefficients(h, r.step_count(step, h), &a)
    if first is not None:
        if (not isinstance(first, tuple) or len(first) != 2
                or not isinstance(first[1], dict)):
            raise TypeError(f"first must be a pair (count, {{name: value}}), got {first!r}")
        n_first = _count_arg(first[0], "first's count", n)
        for name in first[1]:
            if name not in r.kernel_by_name:
                raise TypeError(f"{rule} has no hyperparameter {name!r}")
            if name in hyper:
                raise TypeError(f"{name} is given twice, in first and as a keyword")
        if n_first and (r.entry.matrix or r.nscalars):
            raise ValueError(f"{rule} takes no first: its tensors step one by one")
        memcpy(h_first, h, sizeof(h))
        for name, value in first[1].items():
            (<_Hyper>r.kernel_by_name[name]).convert(value, h_first)
        for k in range(r.nstates):
            if r.needs(h, k) != r.needs(h_first, k):
                raise ValueError(f"first's hyperparameters need other states than "
                                 f"the call's ({r.slots[S0 + k]})")
        r.coefficients(h_first, r.step_count(step, h_first), &a_first)
    if states is None:
        states = []
    if not isinstance(states, (list, tuple)) or len(states) > r.nstates + r.nscalars:
        raise TypeError(f"states must be a list of at most {r.nstates + r.nscalars} "
                        f"lists (one per state of {rule}), got {states!r}")
    per_slot = [_as_list(states[k] if k < len(states) else None,
                         r.slots[S0 + k], n) for k in range(r.nstates)]
    per_slot += [None] * (FO_MAX_STATES - r.nstates)
    r.check_states(h, per_slot[0], per_slot[1], per_slot[2], per_slot[3], True)
    _check_labels(labels, n)
    _as_list(grads, "grad", n)
    ts.reserve(n)
    _fill_tensors(r, ts, params, grads, per_slot, labels)
    if r.entry.matrix:
        for i in range(n):
            _check_matrix(r, params[i], labels[i] if labels is not None else i)
        if n:
            _check_overlap(ts.t, n, ITEMSIZE[ts.dt], r.slots, labels, False)
        _run_matrix(r, &a, ts.t, n, ts.dt, [np.shape(params[i]) for i in range(n)],
                    {x.name: hyper.get(x.name, x.default) for x in r.kernel_hypers})
    elif r.nscalars:
        _step_each(r, h, step, ts, [
            _as_list(states[r.nstates + k] if r.nstates + k < len(states) else None,
                     r.scalar_names[k], n) for k in range(r.nscalars)], labels)
    elif n:
        _check_overlap(ts.t, n, ITEMSIZE[ts.dt], r.slots, labels, False)
        if n_first:
            _run(r.id, &a_first, ts.t, n_first, ts.dt)
        if n > n_first:
            _run(r.id, &a, ts.t + n_first, n - n_first, ts.dt)


cdef int _fill_tensors(_Rule r, _Tensors ts, list params, list grads, list per_slot,
                       object labels) except -1:
    """ts's tensors from the checked lists (per_slot: one list of arrays, or
    None, per state slot)."""
    cdef Py_ssize_t i
    cdef int k
    cdef list l0 = per_slot[0], l1 = per_slot[1], l2 = per_slot[2], l3 = per_slot[3]
    for i in range(ts.count):
        s0 = None if l0 is None else l0[i]
        s1 = None if l1 is None else l1[i]
        s2 = None if l2 is None else l2[i]
        s3 = None if l3 is None else l3[i]
        for k in range(r.nstates):
            if per_slot[k] is not None and (s0 if k == 0 else s1 if k == 1 else
                                            s2 if k == 2 else s3) is None:
                raise ValueError(f"{_slot_name(r.slots, S0 + k, i, labels)} is "
                                 f"None; every tensor needs this state")
        ts.dt = _fill_tensor(&ts.t[i], r.slots, i, labels, params[i], grads[i],
                             s0, s1, s2, s3, ts.dt)
    return 0


cdef Py_ssize_t _count_arg(object x, str name, Py_ssize_t n) except -1:
    """x as an int in [0, n]."""
    if not isinstance(x, int) or isinstance(x, bool):
        raise TypeError(f"{name} must be an int, got {x!r}")
    if not 0 <= x <= n:
        raise ValueError(f"{name} must be in [0, {n}], got {x}")
    return x


cdef int _step_each(_Rule r, const double *h, object step, _Tensors ts,
                    list scalars, object labels) except -1:
    """The multi-tensor call of a rule with per-tensor scalar states: every
    array and scalar checked and every tensor's coefficients made first,
    then one kernel call per tensor, then the scalars stored."""
    cdef Py_ssize_t i, n = ts.count
    cdef int k, j
    cdef long long t = r.step_count(step, h)
    cdef fo_args *a
    cdef double **sc
    if n and ts.dt >= 0:
        _check_overlap(ts.t, n, ITEMSIZE[ts.dt], r.slots, labels, False)
    a = <fo_args *>PyMem_Malloc(max(n, 1) * sizeof(fo_args))
    sc = <double **>PyMem_Malloc(max(n, 1) * FO_MAX_SCALAR_STATES * sizeof(double *))
    try:
        if a == NULL or sc == NULL:
            raise MemoryError()
        seen = set()
        for k in range(r.nscalars):
            if scalars[k] is None:
                raise ValueError(f"{r.scalar_names[k]}s are required")
            for i in range(n):
                name = f"{r.scalar_names[k]}[{labels[i] if labels is not None else i}]"
                sc[i * FO_MAX_SCALAR_STATES + k] = _scalar_state(scalars[k][i], name)
                _scalar_overlap(&ts.t[i], ts.t[i].n * ITEMSIZE[ts.dt],
                                sc[i * FO_MAX_SCALAR_STATES + k], name, r.slots)
                if <uintptr_t>sc[i * FO_MAX_SCALAR_STATES + k] in seen:
                    raise ValueError(f"{name} shares memory with another scalar "
                                     f"state; every array of a step must be separate")
                seen.add(<uintptr_t>sc[i * FO_MAX_SCALAR_STATES + k])
        for i in range(n):
            for k in range(r.nscalars):
                a[i].sc[k] = sc[i * FO_MAX_SCALAR_STATES + k][0]
            r.coefficients(h, t, &a[i])
        for i in range(n):
            _run(r.id, &a[i], &ts.t[i], 1, ts.dt)
        for i in range(n):
            for k in range(r.nscalars):
                sc[i * FO_MAX_SCALAR_STATES + k][0] = a[i].sc[k]
    finally:
        PyMem_Free(a)
        PyMem_Free(sc)
    return 0


# -- the two passes of a two-pass rule, taken apart ---------------------------
#
# For a caller that holds part of each tensor (fastopt.distributed: a shard
# of a flat buffer on each process).  reduce_ranges runs the first pass over
# given ranges of each tensor and returns each range's sums; given the
# ranges of fo_run's blocks (FO_SUMSQ_BLOCK elements from the tensor's
# start), they are fo_run's block sums, bit for bit, and a range of one
# element gives that element's squares.  The caller adds them into the
# tensors' sums in fo_run's order and hands them to step_given_sums, the
# update pass.  One fo_run step equals reduce_ranges over all blocks, the
# sums added block by block from 0.0, then step_given_sums.

cdef _Rule _two_pass_tensors(str rule, list params, list grads, object states,
                             object step, object labels, dict hyper, double *h,
                             fo_args *a, _Tensors ts):
    """step_many's checks for the two halves of a two-pass rule."""
    cdef _Rule r = _rule(rule)
    cdef _Hyper x
    cdef Py_ssize_t i, n = len(params)
    cdef int k
    if fo_reductions(r.id) == 0:
        raise ValueError(f"{rule} has no per-tensor reductions; step it with step_many")
    if r.nscalars:
        raise ValueError(f"{rule} has per-tensor scalar states, which the two "
                         f"halves of a step do not take")
    for name in hyper:
        if name not in r.kernel_by_name:
            raise TypeError(f"{rule} has no hyperparameter {name!r}")
    for x in r.kernel_hypers:
        x.convert(hyper.get(x.name, x.default), h)
    r.coefficients(h, r.step_count(step, h), a)
    if states is None:
        states = []
    if not isinstance(states, (list, tuple)) or len(states) > r.nstates:
        raise TypeError(f"states must be a list of at most {r.nstates} lists "
                        f"(one per state of {rule}), got {states!r}")
    per_slot = [_as_list(states[k] if k < len(states) else None,
                         r.slots[S0 + k], n) for k in range(r.nstates)]
    per_slot += [None] * (FO_MAX_STATES - r.nstates)
    r.check_states(h, per_slot[0], per_slot[1], per_slot[2], per_slot[3], True)
    _check_labels(labels, n)
    _as_list(grads, "grad", n)
    ts.reserve(n)
    _fill_tensors(r, ts, params, grads, per_slot, labels)
    if n:
        _check_overlap(ts.t, n, ITEMSIZE[ts.dt], r.slots, labels, False)
    return r


def reduce_ranges(str rule, list params, list grads, states=None, ranges=None, *,
                  step=None, labels=None, **hyper):
    """The first pass of a two-pass rule (LAMB, LARS) over ``ranges[k]``, an
    integer array of shape (m, 2) of [start, stop) ranges of tensor k (flat
    indices); returns per tensor a float64 array (m, number of sums), each
    range's sums.  Writes the states the first pass writes (LAMB's moments),
    so each element must be in exactly one range of one call.  Arguments as
    step_many; everything is checked before anything is written."""
    cdef double h[FO_MAX_SCALARS]
    cdef fo_args a
    cdef _Tensors ts = _Tensors.__new__(_Tensors)
    cdef Py_ssize_t i, b, m, n = len(params)
    cdef _Rule r = _two_pass_tensors(rule, params, grads, states, step, labels,
                                     hyper, h, &a, ts)
    cdef int nred = fo_reductions(r.id)
    cdef size_t *lo
    cdef size_t *hi
    cdef size_t total
    cdef double[:, ::1] out
    if not isinstance(ranges, (list, tuple)) or len(ranges) != n:
        raise TypeError(f"ranges must be a list of {n} integer arrays of shape "
                        f"(m, 2), one per tensor")
    checked = []
    for i in range(n):
        rg = np.asarray(ranges[i])
        if rg.dtype.kind not in "iu" or rg.ndim != 2 or rg.shape[1] != 2:
            raise TypeError(f"ranges[{i}] must be an integer array of shape (m, 2), "
                            f"got {rg.dtype} of shape {rg.shape}")
        rg = rg.astype(np.int64)
        if rg.size and (rg.min() < 0 or (rg[:, 1] < rg[:, 0]).any()
                        or rg.max() > <Py_ssize_t>ts.t[i].n):
            raise ValueError(f"ranges[{i}] must hold 0 <= start <= stop <= "
                             f"{ts.t[i].n}")
        checked.append(rg)
    results = []
    for i in range(n):
        m = checked[i].shape[0]
        res = np.zeros((m, nred), dtype=np.float64)
        results.append(res)
        if m == 0:
            continue
        out = res
        lo = <size_t *>PyMem_Malloc(m * sizeof(size_t))
        hi = <size_t *>PyMem_Malloc(m * sizeof(size_t))
        try:
            if lo == NULL or hi == NULL:
                raise MemoryError()
            total = 0
            for b in range(m):
                lo[b] = <size_t>checked[i][b, 0]
                hi[b] = <size_t>checked[i][b, 1]
                total += hi[b] - lo[b]
            if total >= NOGIL_THRESHOLD:
                with nogil:
                    fo_reduce_ranges(r.id, ts.dt, &a, &ts.t[i], lo, hi, m, &out[0, 0])
            else:
                fo_reduce_ranges(r.id, ts.dt, &a, &ts.t[i], lo, hi, m, &out[0, 0])
        finally:
            PyMem_Free(lo)
            PyMem_Free(hi)
    return results


cdef int _ema_fuse(fo_fuse *f, object ema_weight) except -1:
    """f for a call that moves the averages after its update: their first
    value (a copy of the stepped parameter) without a weight, else
    lerp(ema, param, ema_weight) with ema_weight in (0, 1]."""
    memset(f, 0, sizeof(fo_fuse))
    f.flags = FO_FUSE_EMA_COPY
    if ema_weight is not None:
        w = check_real(ema_weight, "ema_weight", 0.0, 1.0)
        if not 0.0 < w <= 1.0:
            raise ValueError(f"ema_weight must be in (0, 1], got {ema_weight!r}")
        f.flags = FO_FUSE_EMA
        f.ema_weight = w
    return 0


def step_given_sums(str rule, list params, list grads, states=None, sums=None, *,
                    step=None, labels=None, ema=None, ema_weight=None, **hyper):
    """The update pass of a two-pass rule: tensor k's per-tensor sums are
    ``sums[k]`` (a float64 array of shape (count, number of sums), as the
    first pass over the whole tensor makes them); from them the rule's
    per-tensor coefficients (the trust ratio), then its loop.  With ``ema``
    (one array per tensor, of its dtype and shape) each chunk's update is
    followed by ema = lerp(ema, param, ema_weight) in the same pass, as an
    optimizer's ``ema_decay`` does (``ema_weight`` None: ema = param, the
    first average).  Arguments as step_many; everything is checked before
    anything is written."""
    cdef double h[FO_MAX_SCALARS]
    cdef fo_args a
    cdef fo_fuse f
    cdef const fo_fuse *fp = NULL
    cdef _Tensors ts = _Tensors.__new__(_Tensors)
    cdef Py_ssize_t i, n = len(params)
    cdef _Rule r = _two_pass_tensors(rule, params, grads, states, step, labels,
                                     hyper, h, &a, ts)
    cdef int k, nred = fo_reductions(r.id)
    cdef size_t total = 0
    s = np.asarray(sums)
    if s.dtype != np.float64 or s.shape != (n, nred):
        raise TypeError(f"sums must be a float64 array of shape ({n}, {nred}), "
                        f"got {s.dtype} of shape {s.shape}")
    if ema is not None:
        ema = _as_list(ema, "ema", n)
        _ema_fuse(&f, ema_weight)
        for i in range(n):
            e = ema[i]
            if not (isinstance(e, np.ndarray) and e.dtype == _DTYPE_NAMES[ts.dt]
                    and e.shape == np.shape(params[i]) and e.flags.c_contiguous
                    and e.flags.writeable and e.flags.aligned):
                raise ValueError(f"ema[{i}] must be a writable C-contiguous array "
                                 f"of its parameter's dtype and shape")
        # every array of the call is C-contiguous: memory as byte ranges
        spans = sorted([(x.__array_interface__["data"][0], x.nbytes, -1) for x in
                        list(params) + list(grads) + [y for slot in (states or ())
                                                      if slot is not None
                                                      for y in slot if y is not None]]
                       + [(e.__array_interface__["data"][0], e.nbytes, i)
                          for i, e in enumerate(ema)])
        end, last = 0, -1
        for k in range(len(spans)):
            lo_, nb_, idx = spans[k]
            if nb_ and lo_ < end:
                culprit = idx if idx >= 0 else last
                raise ValueError(f"ema[{culprit}] shares memory with another array "
                                 f"of the step; every array of a step must be separate")
            if nb_ and lo_ + nb_ > end:
                end, last = lo_ + nb_, idx
        for i in range(n):
            ts.t[i].ema = _data(ema[i])
        fp = &f
    elif ema_weight is not None:
        raise ValueError("ema_weight without ema")
    for i in range(n):
        for k in range(nred):
            ts.t[i].r[k] = s[i, k]
        total += ts.t[i].n
    if total >= NOGIL_THRESHOLD:
        with nogil:
            fo_run_given_sums(r.id, ts.dt, &a, ts.t, n, fp)
    elif n:
        fo_run_given_sums(r.id, ts.dt, &a, ts.t, n, fp)
