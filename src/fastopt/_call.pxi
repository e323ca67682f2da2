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
              int dt, const fo_fuse *f=NULL) except -1:
    """Fuse adjacent tensors (not for a rule with per-tensor reductions),
    then run the kernel, without the GIL when the step is large enough to
    pay for releasing it."""
    cdef size_t total = 0
    cdef Py_ssize_t i
    global _last_tensors
    # neither for bfloat16 states, whose random bits count elements from
    # each tensor's start, nor for 8-bit ones, whose blocks do
    count = _merge_adjacent(t, count, ITEMSIZE[dt], fo_reductions(rule) == 0
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
              labels=None, **hyper):
    """One step of ``rule`` over many tensors of one dtype, in one kernel call.

    ``states`` lists, per state slot of the rule, a list of arrays (one per
    parameter) or None for a slot the options do not use, then per
    per-tensor scalar state a list of float64 arrays of one element;
    hyperparameters are those of ``fastopt.functional.<rule>`` (defaults
    from the table), ``labels`` names the tensors in messages.  Checked like
    a single call.  A rule with scalar states steps each tensor with its
    own coefficients (one kernel call per tensor)."""
    cdef _Rule r = _rule(rule)
    cdef _Hyper x
    cdef double h[FO_MAX_SCALARS]
    cdef fo_args a
    cdef _Tensors ts = _Tensors.__new__(_Tensors)
    cdef Py_ssize_t i, n = len(params)
    cdef int k
    known = [x.name for x in r.kernel_hypers]
    for name in hyper:
        if name not in known:
            raise TypeError(f"{rule} has no hyperparameter {name!r}")
    for x in r.kernel_hypers:
        x.convert(hyper[x.name] if x.name in hyper else r.entry.hyper(x.name).default, h)
    r.coefficients(h, r.step_count(step, h), &a)
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
    for i in range(n):
        s = [None if slot is None else slot[i] for slot in per_slot]
        for k in range(r.nstates):
            if per_slot[k] is not None and s[k] is None:
                raise ValueError(f"{_slot_name(r.slots, S0 + k, i, labels)} is "
                                 f"None; every tensor needs this state")
        ts.dt = _fill_tensor(&ts.t[i], r.slots, i, labels, params[i], grads[i],
                             s[0], s[1], s[2], s[3], ts.dt)
    if r.nscalars:
        _step_each(r, h, step, ts, [
            _as_list(states[r.nstates + k] if r.nstates + k < len(states) else None,
                     r.scalar_names[k], n) for k in range(r.nscalars)], labels)
    elif n:
        _check_overlap(ts.t, n, ITEMSIZE[ts.dt], r.slots, labels, False)
        _run(r.id, &a, ts.t, n, ts.dt)


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
