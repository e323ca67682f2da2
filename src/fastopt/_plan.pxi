# Plans: the one step engine of the optimizers.

cdef inline bint _grad_fits(object g, cnp.ndarray p, int dt):
    """g is an array the kernel can read as p's gradient: same dtype and
    shape, C-contiguous, aligned, native byte order."""
    cdef cnp.ndarray a
    cdef int need = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
    cdef int nd, k
    if not cnp.PyArray_Check(g):
        return False
    a = <cnp.ndarray>g
    if (cnp.PyArray_TYPE(a) != NPY_TYPE[dt]
            or (cnp.PyArray_FLAGS(a) & need) != need or not cnp.PyArray_ISNOTSWAPPED(a)):
        return False
    nd = cnp.PyArray_NDIM(a)
    if nd != cnp.PyArray_NDIM(p):
        return False
    for k in range(nd):
        if cnp.PyArray_DIMS(a)[k] != cnp.PyArray_DIMS(p)[k]:
            return False
    return True


cdef object _MISSING = object()


def lowp_tensor_key(seed, index, step):
    """fo_lowp_tensor_key (fastopt.reference.lowp_tensor_key)"""
    return fo_lowp_tensor_key(<uint64_t>seed, <uint64_t>index, <uint64_t>step)


def lowp_slot_key(key, int slot):
    """fo_lowp_slot_key (fastopt.reference.lowp_slot_key)"""
    return fo_lowp_slot_key(<uint64_t>key, slot)


cdef cnp.ndarray _c_array(object x, object dtype):
    """x as a C-contiguous and aligned array of dtype, copied only where it
    is not one already: the C codecs read it through typed pointers, and a
    contiguous view at an odd byte offset (a uint16 view of a uint8 buffer)
    is not aligned, which np.ascontiguousarray does not fix."""
    return np.require(x, dtype=dtype, requirements=("C", "A"))


def bf16_round(x, key, start=0, bint low=False):
    """The active level's stochastic rounding of a contiguous float32 array
    (fastopt.reference.bf16_round): bfloat16 bits, uint16."""
    cdef cnp.ndarray a = _c_array(x, np.float32)
    cdef cnp.ndarray out = np.empty(a.size, dtype=np.uint16)
    fo_bf16_encode(<const float *>cnp.PyArray_DATA(a), cnp.PyArray_DATA(out),
                   <size_t>a.size, <uint32_t>key, <size_t>start, low)
    return out.reshape(np.shape(x))


def bf16_decode(bits):
    """The active level's decoding of a contiguous uint16 array."""
    cdef cnp.ndarray a = _c_array(bits, np.uint16)
    cdef cnp.ndarray out = np.empty(a.size, dtype=np.float32)
    fo_bf16_decode(cnp.PyArray_DATA(a), <float *>cnp.PyArray_DATA(out), <size_t>a.size)
    return out.reshape(np.shape(bits))


def q8_encode(x, nonneg, key=0, start=0):
    """The C codec of 8-bit states (fastopt.reference.q8_encode): a flat
    float32 array's uint8 codes and float32 scales per block of 256, the
    codes rounded with the random bits of slot key ``key`` from element
    ``start`` on."""
    cdef cnp.ndarray a = _c_array(x, np.float32).reshape(-1)
    cdef cnp.ndarray codes = np.empty(a.size, dtype=np.uint8)
    cdef cnp.ndarray scales = np.empty((a.size + FO_Q8_BLOCK - 1) // FO_Q8_BLOCK,
                                       dtype=np.float32)
    fo_q8_encode(<const float *>cnp.PyArray_DATA(a), <uint8_t *>cnp.PyArray_DATA(codes),
                 <float *>cnp.PyArray_DATA(scales), <size_t>a.size, 1 if nonneg else 0,
                 <uint32_t>key, <size_t>start)
    return codes, scales


def q8_decode(codes, scales, nonneg):
    """float32 values of 8-bit codes and their block scales (flat)."""
    cdef cnp.ndarray c = _c_array(codes, np.uint8).reshape(-1)
    cdef cnp.ndarray sc = _c_array(scales, np.float32).reshape(-1)
    if sc.size != (c.size + FO_Q8_BLOCK - 1) // FO_Q8_BLOCK:
        raise ValueError(f"scales must have {(c.size + FO_Q8_BLOCK - 1) // FO_Q8_BLOCK} "
                         f"elements for {c.size} codes, got {sc.size}")
    cdef cnp.ndarray out = np.empty(c.size, dtype=np.float32)
    fo_q8_decode(<const uint8_t *>cnp.PyArray_DATA(c), <const float *>cnp.PyArray_DATA(sc),
                 <float *>cnp.PyArray_DATA(out), <size_t>c.size, 1 if nonneg else 0)
    return out


cdef tuple _q8_constant(double value, unsigned nonneg):
    """The code and scale of a block whose elements all equal value."""
    cdef float x = <float>value, scale
    cdef uint8_t code
    # the block's largest element gets the largest code: no random bits
    fo_q8_encode(&x, &code, &scale, 1, <int>nonneg, 0, 0)
    return int(code), float(scale)


cdef int _bf16_nearest(double value) noexcept:
    """The bfloat16 bits nearest to float32(value), ties to even (a NaN: the
    quiet NaN of its sign); fastopt.reference.bf16_nearest"""
    cdef float f = <float>value
    cdef uint32_t u
    memcpy(&u, &f, 4)
    if (u & 0x7fffffffu) > 0x7f800000u:
        return <int>((u >> 16) | 0x0040u)
    return <int>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)

# A state buffer of at least this many bytes starts 512 * (k + 1) bytes past
# the first parameter modulo 4 KiB (k: the buffer's place among the plan's
# buffers).  NumPy's large arrays all start at the same offset within a
# page, and a loop whose streams share that offset loses time to 4 KiB
# aliasing (loads falsely waiting on stores to other arrays): one step at
# 10^7 elements, one thread, ASGD 9-18% and Rprop 6-8% faster with its
# states placed apart, Adam, NAdam, RAdam and Adadelta 1-7%
# (tools/placement_probe.py).
cdef enum:
    _PLACED_MIN_BYTES = 1 << 16


cdef object _placed_full(Py_ssize_t total, object value, object dtype,
                         object anchor, int k):
    """np.full(total, value, dtype), placed as the comment above says."""
    dt = np.dtype(dtype)
    cdef Py_ssize_t nbytes = total * dt.itemsize
    cdef size_t base, want, start
    if nbytes < _PLACED_MIN_BYTES or anchor is None:
        return np.full(total, value, dtype=dt)
    raw = np.empty(nbytes + 4096, np.uint8)
    base = <size_t>_data(raw)
    want = (<size_t>_data(anchor) + 512 * <size_t>(k + 1)) & 4095 & ~(<size_t>dt.itemsize - 1)
    start = (want - base) & 4095
    out = raw[start:start + nbytes].view(dt)
    out.fill(value)
    return out


def placed_full(Py_ssize_t total, value, dtype, anchor, int k):
    """A state buffer as an optimizer class allocates its k-th one for a
    plan whose first parameter is ``anchor`` (the benchmark's states)."""
    if not isinstance(anchor, np.ndarray):
        raise TypeError("anchor must be a NumPy array")
    if total < 0 or k < 0:
        raise ValueError("total and k must be >= 0")
    return _placed_full(total, value, dtype, anchor, k)


# Range slots of the arrays a plan adds around the rule (messages)
cdef enum:
    SLOT_ACC = NSLOTS
    SLOT_EMA = NSLOTS + 1


cdef class Plan:
    """One optimizer bucket (the parameters of a group that share a dtype)
    with its states and step counts: everything a step needs, checked once.

    Parameters are checked (dtype, layout, no shared memory) when the plan is
    made.  ``prepare(grads)`` checks what can change between steps: the
    group's hyperparameters (read from ``group`` each step, so changes
    count), each parameter still writable, each gradient present or None and
    fitting its parameter, no gradient sharing memory with another array.
    ``run()`` then allocates the states the options need (one buffer per
    state, with a view per parameter, at the state's start value) and steps
    every parameter that has a gradient, one kernel call per distinct step
    count and per-tensor scalar states (one call in the common case).  Nothing is written before
    ``run``.  The plan holds every array, so their memory cannot move.
    Not thread-safe: the optimizer serialises steps.

    Around the rule, in the same pass over memory (fo_run_fused): with
    ``enable_ema(weight)`` every step ends by averaging each parameter into
    its EMA (a copy at the parameter's first step); with
    ``enable_accumulation()`` ``accumulate()`` adds micro-batch gradients
    into a buffer, and ``run(mean_count=k)`` steps on the mean
    (buffer + gradient) / k and clears the buffer.
    """
    cdef _Rule r
    cdef readonly int dt
    cdef readonly Py_ssize_t count
    cdef readonly dict group
    cdef readonly list params
    cdef list labels
    cdef tuple names
    cdef list buffers          # per state slot: one 1-D array, or None
    cdef list views            # per state slot: a view per parameter, or None
    cdef long long *steps
    cdef double *sc            # per parameter: its scalar states, FO_MAX_SCALAR_STATES apart
    cdef char *mark            # per parameter: stepped by this run's calls
    cdef fo_tensor *base       # parameters and states; g unset
    cdef fo_tensor *work       # this step's tensors
    cdef fo_tensor *sel        # a selection of them for one call
    cdef char *present         # per parameter: a gradient this step
    cdef _Range *ranges        # parameters and states, sorted by address
    cdef _Range *granges       # this step's gradients
    cdef int nranges
    cdef double h[FO_MAX_SCALARS]
    cdef fo_args args          # coefficients at the first parameter's next step
    cdef double init[FO_MAX_STATES]   # start values of states made by run
    cdef double sinit[FO_MAX_SCALAR_STATES]  # start values of scalar states
    cdef bint prepared
    cdef bint all_present
    cdef list acc_views        # accumulated gradients, a view per parameter, or None
    cdef object acc_buffer
    cdef list ema_views        # averaged parameters, a view per parameter, or None
    cdef object ema_buffer
    cdef double ema_weight
    cdef char *seen            # per parameter: a gradient accumulated since its last step
    cdef char *ema_ready       # per parameter: its average has been started
    cdef bint null_grads       # prepared: a parameter steps on accumulated gradients alone
    cdef readonly str state_format  # "native" (the parameters' dtype) or "bfloat16"
    cdef uint64_t seed         # of the random keys of stochastic rounding
    cdef list positions        # per parameter: its index in those keys
    cdef list scale_buffers    # 8-bit states, per slot: the blocks' scales, or None
    cdef list scale_views      # per slot: a view per parameter, or None
    cdef unsigned q8_nonneg    # 8-bit states: bit k set when state k is never negative

    def __cinit__(self, str rule, list params, dict group, labels=None,
                  names=None):
        cdef Py_ssize_t i, n = len(params)
        cdef int dt = -1
        self.r = _rule(rule)
        if n == 0:
            raise ValueError("a plan needs at least one parameter")
        _check_labels(labels, n)
        self.labels = list(labels) if labels is not None else list(range(n))
        self.names = None if names is None else tuple(names)
        if self.names is not None and len(self.names) != n:
            raise ValueError("names must name every parameter")
        self.group = group
        self.params = list(params)
        self.count = n
        self.state_format = "native"
        self.positions = list(range(n))
        self.buffers = [None] * FO_MAX_STATES
        self.views = [None] * FO_MAX_STATES
        self.scale_buffers = [None] * FO_MAX_STATES
        self.scale_views = [None] * FO_MAX_STATES
        self.steps = <long long *>PyMem_Calloc(n, sizeof(long long))
        self.sc = <double *>PyMem_Calloc(n * FO_MAX_SCALAR_STATES, sizeof(double))
        self.mark = <char *>PyMem_Malloc(n)
        self.base = <fo_tensor *>PyMem_Calloc(n, sizeof(fo_tensor))
        self.work = <fo_tensor *>PyMem_Malloc(n * sizeof(fo_tensor))
        self.sel = <fo_tensor *>PyMem_Malloc(n * sizeof(fo_tensor))
        self.present = <char *>PyMem_Malloc(n)
        self.ranges = <_Range *>PyMem_Malloc((3 + FO_MAX_STATES) * n * sizeof(_Range))
        self.granges = <_Range *>PyMem_Malloc(n * sizeof(_Range))
        self.seen = <char *>PyMem_Calloc(n, 1)
        self.ema_ready = <char *>PyMem_Calloc(n, 1)
        if not (self.steps and self.sc and self.mark and self.base and self.work and self.sel and self.present
                and self.ranges and self.granges and self.seen and self.ema_ready):
            raise MemoryError()
        for i in range(n):
            p = self.params[i]
            dt = _check_array(p, self.r.slots, P, i, self.labels, dt, -1, True)
            if self.r.entry.matrix:
                _check_matrix(self.r, p, self.labels[i])
            self.base[i].n = <size_t>cnp.PyArray_SIZE(<cnp.ndarray>p)
            self.base[i].p = _data(p)
        self.dt = dt
        _check_overlap(self.base, n, ITEMSIZE[dt], self.r.slots, self.labels, False)
        self._index_ranges()

    def __dealloc__(self):
        PyMem_Free(self.steps)
        PyMem_Free(self.sc)
        PyMem_Free(self.mark)
        PyMem_Free(self.base)
        PyMem_Free(self.work)
        PyMem_Free(self.sel)
        PyMem_Free(self.present)
        PyMem_Free(self.ranges)
        PyMem_Free(self.granges)
        PyMem_Free(self.seen)
        PyMem_Free(self.ema_ready)

    cdef void _index_ranges(self) noexcept:
        cdef Py_ssize_t i
        cdef size_t nb
        self.nranges = 0
        for i in range(self.count):
            nb = self.base[i].n * ITEMSIZE[self.dt]
            self.nranges = _tensor_ranges(self.ranges, self.nranges, &self.base[i],
                                          nb, i, False,
                                          self.base[i].n * 2 if self._bf16() else
                                          self.base[i].n if self._q8() else nb)
            self.nranges = _add_range(self.ranges, self.nranges, self.base[i].acc,
                                      nb, SLOT_ACC, i)
            self.nranges = _add_range(self.ranges, self.nranges, self.base[i].ema,
                                      nb, SLOT_EMA, i)
        qsort(self.ranges, self.nranges, sizeof(_Range), _range_cmp)

    # -- states and step counts ----------------------------------------------

    cdef inline bint _bf16(self) noexcept:
        return self.state_format == "bfloat16"

    cdef inline bint _q8(self) noexcept:
        return self.state_format == "8bit"

    def set_state_format(self, str fmt, seed=0, positions=None, offsets=None, nonneg=()):
        """Keep the states as ``fmt``: "native" (the parameters' dtype) or
        "bfloat16" (their uint16 bits, written with stochastic rounding
        whose random keys come from ``seed``, each parameter's entry of
        ``positions`` (default: its index in the plan) and its step).
        ``offsets`` (default zeros): per parameter, the index its first
        element has in the random bits, for a parameter that is a part of
        a larger one (a shard) and must draw that one's bits.
        "8bit" keeps each state as uint8 codes with one float32 scale per
        block of 256 elements (fo_q8_encode); the slots in ``nonneg`` are
        coded without a sign.  Only before any state exists."""
        if any(b is not None for b in self.buffers):
            raise RuntimeError("the state format is set before the first state exists")
        if fmt not in ("native", "bfloat16", "8bit"):
            raise ValueError(f"unknown state format {fmt!r}")
        cdef unsigned mask = 0
        for k in nonneg:
            if not (type(k) is int and 0 <= k < self.r.nstates):
                raise ValueError(f"nonneg must hold state slots, got {k!r}")
            mask |= 1u << <int>k
        if fmt != "native":
            if self.dt != 0:
                raise ValueError(
                    f"state_dtype={fmt!r} needs float32 parameters; parameter "
                    f"{self.labels[0]!r} is {_DTYPE_NAMES[self.dt]} (keep float64 "
                    f"parameters' states in float64)")
            if fo_reductions(self.r.id):
                raise ValueError(
                    f"state_dtype={fmt!r} is not available for {self.r.name}: "
                    f"its first pass reads the states it writes")
            if self.r.entry.matrix:
                raise ValueError(
                    f"state_dtype={fmt!r} is not available for {self.r.name}: "
                    f"its step has a matrix step between two passes")
        if not (type(seed) is int and 0 <= seed < 2 ** 64):
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        if positions is None:
            positions = list(range(self.count))
        if len(positions) != self.count or not all(
                type(k) is int and 0 <= k < 2 ** 63 for k in positions):
            raise ValueError(f"positions must be {self.count} ints >= 0")
        if offsets is None:
            offsets = [0] * self.count
        if len(offsets) != self.count or not all(
                type(k) is int and 0 <= k < 2 ** 63 for k in offsets):
            raise ValueError(f"offsets must be {self.count} ints >= 0")
        for i in range(self.count):
            self.base[i].at = <size_t>offsets[i]
        self.state_format = fmt
        self.q8_nonneg = mask
        self.seed = seed
        self.positions = list(positions)
        self._index_ranges()

    def set_seed(self, seed):
        """The seed of the random keys (a checkpoint's)."""
        if not (type(seed) is int and 0 <= seed < 2 ** 64):
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        self.seed = seed

    cdef object _stored(self, double value):
        """value as a state element is stored: itself, or its bfloat16
        bits (rounded to nearest even)"""
        if self._bf16():
            return _bf16_nearest(value)
        return value

    def scales(self, int slot):
        """8-bit states: the block scales of state ``slot`` (a float32 view
        of ceil(n / 256) per parameter), None when the state was never
        needed or is not 8-bit."""
        if not 0 <= slot < self.r.nstates:
            raise IndexError(slot)
        return self.scale_views[slot]

    def fill_state(self, int slot, Py_ssize_t i, double value):
        """Set every element of parameter i's state ``slot`` to value, as
        stored."""
        if self._q8():
            code, scale = _q8_constant(value, (self.q8_nonneg >> slot) & 1u)
            self.views[slot][i].fill(code)
            self.scale_views[slot][i].fill(scale)
        else:
            self.views[slot][i].fill(self._stored(value))

    def state(self, int slot):
        """The views of state ``slot`` (one per parameter), None when the
        state was never needed."""
        if not 0 <= slot < self.r.nstates:
            raise IndexError(slot)
        return self.views[slot]

    def allocate(self, int slot, double value):
        """Give state ``slot`` its buffer, filled with ``value``; keep it if
        it has one (then fill nothing)."""
        cdef Py_ssize_t i
        if not 0 <= slot < self.r.nstates:
            raise IndexError(slot)
        if self.buffers[slot] is not None:
            return
        if self._q8():
            self._allocate_q8(slot, value)
            buf = self._buffer(_q8_constant(value, (self.q8_nonneg >> slot) & 1u)[0],
                               np.uint8, slot)
        else:
            buf = self._buffer(self._stored(value),
                               np.uint16 if self._bf16() else _DTYPE_NAMES[self.dt], slot)
        views = self._views(buf)
        for i in range(self.count):
            self.base[i].s[slot] = _data(views[i])
        self.buffers[slot] = buf
        self.views[slot] = views
        self._index_ranges()

    cdef _allocate_q8(self, int slot, double value):
        cdef Py_ssize_t i, offset = 0, nb
        code, scale = _q8_constant(value, (self.q8_nonneg >> slot) & 1u)
        counts = [(<Py_ssize_t>self.base[i].n + FO_Q8_BLOCK - 1) // FO_Q8_BLOCK
                  for i in range(self.count)]
        buf = np.full(sum(counts), scale, dtype=np.float32)
        views = []
        for i in range(self.count):
            nb = counts[i]
            views.append(buf[offset:offset + nb])
            self.base[i].scale[slot] = _data(views[i])
            offset += nb
        self.scale_buffers[slot] = buf
        self.scale_views[slot] = views

    cdef object _buffer(self, object value, object dtype, int k):
        """One buffer for every parameter's elements, filled with value,
        the plan's k-th (placed by _placed_full against the first
        parameter)."""
        cdef Py_ssize_t i
        total = sum(self.base[i].n for i in range(self.count))
        return _placed_full(total, value, dtype,
                            self.params[0] if self.count else None, k)

    cdef list _views(self, object buf):
        cdef Py_ssize_t i, offset = 0
        views = []
        for i in range(self.count):
            views.append(buf[offset:offset + <Py_ssize_t>self.base[i].n]
                         .reshape(np.shape(self.params[i])))
            offset += self.base[i].n
        return views

    def enable_ema(self, double weight):
        """Average every stepped parameter into its EMA with
        ema = lerp(ema, param, weight) at the end of each step (the first
        step of a parameter copies it)."""
        cdef Py_ssize_t i
        if not (0.0 < weight <= 1.0):
            raise ValueError(f"the EMA weight must be in (0, 1], got {weight!r}")
        self.ema_weight = weight
        if self.ema_buffer is not None:
            return
        self.ema_buffer = self._buffer(0, _DTYPE_NAMES[self.dt], FO_MAX_STATES)
        self.ema_views = self._views(self.ema_buffer)
        for i in range(self.count):
            self.base[i].ema = _data(self.ema_views[i])
        self._index_ranges()

    def enable_accumulation(self):
        """Give every parameter a buffer of accumulated gradients (zeros)."""
        cdef Py_ssize_t i
        if self.acc_buffer is not None:
            return
        self.acc_buffer = self._buffer(0, _DTYPE_NAMES[self.dt], FO_MAX_STATES + 1)
        self.acc_views = self._views(self.acc_buffer)
        for i in range(self.count):
            self.base[i].acc = _data(self.acc_views[i])
        self._index_ranges()

    def ema(self):
        """The averaged parameters (a view per parameter), None without EMA."""
        return self.ema_views

    def accumulated(self):
        """The accumulated gradients (a view per parameter), None without."""
        return self.acc_views

    def get_flags(self, str which):
        """Per parameter: "seen" (a gradient accumulated since its last
        step) or "ema" (its average started), as bools."""
        cdef char *f = self._flags(which)
        return [bool(f[i]) for i in range(self.count)]

    def set_flags(self, str which, list values):
        cdef char *f = self._flags(which)
        cdef Py_ssize_t i
        if len(values) != self.count:
            raise ValueError(f"need {self.count} flags, got {len(values)}")
        for i in range(self.count):
            f[i] = 1 if values[i] else 0

    cdef char *_flags(self, str which) except NULL:
        if which == "seen":
            return self.seen
        if which == "ema":
            return self.ema_ready
        raise ValueError(f"unknown flags {which!r}")

    def clear_accumulation(self):
        """Drop the accumulated gradients (zeros, nothing seen)."""
        cdef Py_ssize_t i
        if self.acc_buffer is not None:
            self.acc_buffer.fill(0)
        for i in range(self.count):
            self.seen[i] = 0

    def get_steps(self):
        return [self.steps[i] for i in range(self.count)]

    def set_steps(self, list steps):
        cdef Py_ssize_t i
        if len(steps) != self.count:
            raise ValueError(f"got {len(steps)} step counts for {self.count} parameters")
        for t in steps:
            if not (type(t) is int and 0 <= t < 2 ** 62):
                raise ValueError(f"step counts must be ints in [0, 2**62), got {t!r}")
        for i in range(self.count):
            self.steps[i] = steps[i]

    def get_scalars(self):
        """Per parameter, the tuple of its scalar states (start values are
        set at the parameter's first step)."""
        cdef Py_ssize_t i
        cdef int k
        return [tuple(self.sc[i * FO_MAX_SCALAR_STATES + k] for k in range(self.r.nscalars))
                for i in range(self.count)]

    def set_scalars(self, list values):
        """Set every parameter's scalar states (a tuple of floats each)."""
        cdef Py_ssize_t i
        cdef int k
        if len(values) != self.count or not all(
                isinstance(v, tuple) and len(v) == self.r.nscalars for v in values):
            raise ValueError(f"need a tuple of {self.r.nscalars} floats for each "
                             f"of {self.count} parameters")
        rows = [[float(x) for x in v] for v in values]
        for i in range(self.count):
            for k in range(self.r.nscalars):
                self.sc[i * FO_MAX_SCALAR_STATES + k] = rows[i][k]

    # -- a step ---------------------------------------------------------------

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

    cdef int _grad_error(self, object g, Py_ssize_t i) except -1:
        label = self.labels[i]
        p = self.params[i]
        if not isinstance(g, np.ndarray):
            raise TypeError(f"grad of parameter {label!r} must be a "
                            f"numpy.ndarray or None, got {type(g).__name__}")
        if g.shape != p.shape:
            raise ValueError(f"grad of parameter {label!r} has shape {g.shape} "
                             f"but the parameter has shape {p.shape}")
        _check_array(g, self.r.slots, G, i, self.labels, self.dt,
                     <Py_ssize_t>self.base[i].n, False)
        raise AssertionError("unreachable")

    cdef int _owned_error(self, Py_ssize_t i) except -1:
        """Name the parameter or state that gradient i overlaps."""
        cdef uintptr_t lo = <uintptr_t>self.work[i].g
        cdef uintptr_t hi = lo + self.work[i].n * ITEMSIZE[self.dt]
        cdef int k
        for k in range(self.nranges):
            if self.ranges[k].lo < hi and lo < self.ranges[k].hi:
                if self.ranges[k].slot >= NSLOTS:
                    what = ("the accumulated gradient" if self.ranges[k].slot == SLOT_ACC
                            else "the EMA") + f" of parameter {self.labels[self.ranges[k].index]!r}"
                else:
                    what = _slot_name(self.r.slots, self.ranges[k].slot,
                                      self.ranges[k].index, self.labels)
                raise ValueError(
                    f"grad of parameter {self.labels[i]!r} overlaps {what}"
                    f" in memory; every array of a step must be separate")
        return 0

    cdef int _names_error(self, dict grads) except -1:
        missing = [k for k in self.names if k not in grads]
        extra = [k for k in grads if k not in self.names]
        raise ValueError(f"grads must have the parameters' names; "
                         f"missing {missing}, unexpected {extra}")

    cdef int _prepare(self, object grads, bint accumulated=False) except -1:
        cdef Py_ssize_t i, n = self.count
        cdef object g
        cdef cnp.ndarray p
        cdef int need = cnp.NPY_ARRAY_WRITEABLE
        cdef int ng = 0, slot
        cdef list glist = None
        cdef dict gdict = None
        self.prepared = False
        self.r.read_group(self.group, self.h)
        # the checks across hyperparameters, and the coefficients of the
        # common case (every count equal), kept for run
        self.r.coefficients(self.h, self.steps[0] + 1, &self.args)
        for slot in range(self.r.nstates):
            if self.r.needs(self.h, slot) and (self.buffers[slot] is None
                                               or self.r.init_from_group[slot]):
                self.init[slot] = self.r.initial(slot, self.group)
        for slot in range(self.r.nscalars):
            self.sinit[slot] = self.r.scalar_initial(slot, self.group)
        if type(grads) is list:
            glist = <list>grads
            if len(glist) != n:
                raise ValueError(f"got {len(glist)} gradients for {n} parameters")
        elif type(grads) is dict:
            gdict = <dict>grads
            if self.names is None:
                raise TypeError("grads must be a list: the parameters were "
                                "given without names")
            if len(gdict) != n:
                self._names_error(gdict)
        else:
            raise TypeError(f"grads must be a list or dict of arrays, got "
                            f"{type(grads).__name__}")
        self.all_present = True
        self.null_grads = False
        for i in range(n):
            if glist is not None:
                g = glist[i]
            else:
                g = gdict.get(self.names[i], _MISSING)
                if g is _MISSING:
                    self._names_error(gdict)
            p = <cnp.ndarray>self.params[i]
            if (cnp.PyArray_FLAGS(p) & need) != need or cnp.PyArray_TYPE(p) != NPY_TYPE[self.dt]:
                _check_array(p, self.r.slots, P, i, self.labels, self.dt, -1, True)
                raise ValueError(f"parameter {self.labels[i]!r} changed since "
                                 f"the optimizer was made")
            if g is None:
                if accumulated and self.seen[i]:
                    # steps on its accumulated gradients alone
                    self.present[i] = 1
                    self.work[i] = self.base[i]
                    self.work[i].g = NULL
                    self.null_grads = True
                    continue
                self.present[i] = 0
                self.all_present = False
                continue
            if not _grad_fits(g, p, self.dt):
                self._grad_error(g, i)
            self.present[i] = 1
            self.work[i] = self.base[i]
            self.work[i].g = _data(g)
            if self.work[i].n:
                if self._hits_owned(<uintptr_t>self.work[i].g,
                                    <uintptr_t>self.work[i].g + self.work[i].n * ITEMSIZE[self.dt]):
                    self._owned_error(i)
                ng = _add_range(self.granges, ng, self.work[i].g,
                                self.work[i].n * ITEMSIZE[self.dt], G, i)
        _overlap_sorted(self.granges, ng, self.r.slots, self.labels)
        self.prepared = True
        return 0

    def prepare(self, grads, bint accumulated=False):
        """Check this step's gradients (a list aligned with the parameters,
        or a dict by name when the plan has names; None for no gradient)
        and hyperparameters; write nothing.  ``accumulated``: the step will
        run on accumulated gradients, so a parameter whose gradient is None
        but which has accumulated ones since its last step still steps."""
        self._prepare(grads, accumulated)

    cdef Py_ssize_t _select(self, bint acc) noexcept:
        """Copy into sel the prepared tensors with this call's gradient, in
        order (or, with acc, the accumulated gradients of the parameters
        that have them, in slot g); return how many."""
        cdef Py_ssize_t i, k = 0
        for i in range(self.count):
            if acc:
                if self.seen[i] and self.base[i].acc != NULL:
                    self.sel[k] = self.base[i]
                    self.sel[k].g = self.base[i].acc
                    k += 1
            elif self.present[i] and self.work[i].g != NULL:
                self.sel[k] = self.work[i]
                k += 1
        return k

    def allfinite(self, bint accumulated=False):
        """After prepare: no gradient holds a NaN or an infinity (nor, with
        ``accumulated``, any accumulated gradient)."""
        cdef Py_ssize_t k
        cdef int ok
        if not self.prepared:
            raise RuntimeError("prepare() first")
        k = self._select(False)
        with nogil:
            ok = fo_allfinite(self.dt, self.sel, k) if k else 1
        if ok and accumulated:
            k = self._select(True)
            with nogil:
                ok = fo_allfinite(self.dt, self.sel, k) if k else 1
        return ok != 0

    def accumulate(self):
        """After prepare: add each given gradient into its parameter's
        accumulated gradients (parameters, states and step counts stay)."""
        cdef Py_ssize_t i, k = 0
        cdef size_t total = 0
        if not self.prepared:
            raise RuntimeError("prepare() first")
        if self.acc_buffer is None:
            raise RuntimeError("enable_accumulation() first")
        self.prepared = False
        for i in range(self.count):
            if self.present[i] and self.work[i].g != NULL:
                self.sel[k] = self.work[i]
                total += self.sel[k].n
                k += 1
                self.seen[i] = 1
        if total >= NOGIL_THRESHOLD:
            with nogil:
                fo_accumulate(self.dt, self.sel, k)
        elif k:
            fo_accumulate(self.dt, self.sel, k)

    cdef inline bint _same(self, Py_ssize_t i, Py_ssize_t j) noexcept:
        """Parameters i and j step with the same coefficients: equal step
        counts and scalar states (bit for bit), and both averages started
        or both not."""
        return self.steps[i] == self.steps[j] and self.ema_ready[i] == self.ema_ready[j] and (
            self.r.nscalars == 0
            or memcmp(&self.sc[i * FO_MAX_SCALAR_STATES], &self.sc[j * FO_MAX_SCALAR_STATES],
                      self.r.nscalars * sizeof(double)) == 0)

    cdef inline const fo_fuse *_fuse(self, fo_fuse *f, Py_ssize_t i,
                                     double mean_count) noexcept:
        """What runs around the rule for a call whose first parameter is i."""
        f.flags = 0
        if mean_count > 0:
            f.flags |= FO_FUSE_MEAN
            f.count = mean_count
        if self._bf16():
            f.flags |= FO_FUSE_BF16
        if self._q8():
            f.flags |= FO_FUSE_Q8
            f.q8_nonneg = self.q8_nonneg
        if self.ema_buffer is not None:
            f.flags |= FO_FUSE_EMA if self.ema_ready[i] else FO_FUSE_EMA_COPY
            f.ema_weight = self.ema_weight
        return f if f.flags else NULL

    cdef int _run(self, double mean_count=0.0) except -1:
        cdef Py_ssize_t i, j, k
        cdef int slot
        cdef long long t
        cdef fo_args a
        cdef fo_fuse f
        cdef _Rule r = self.r
        if not self.prepared:
            raise RuntimeError("prepare() first")
        if mean_count > 0 and self.acc_buffer is None:
            raise RuntimeError("enable_accumulation() first")
        if self.null_grads and not mean_count > 0:
            raise RuntimeError("prepared for a step on accumulated gradients: "
                               "run(mean_count=k)")
        self.prepared = False
        for slot in range(r.nstates):
            if r.needs(self.h, slot) and self.buffers[slot] is None:
                self.allocate(slot, self.init[slot])
            elif r.needs(self.h, slot) and r.init_from_group[slot]:
                # a start value from the group is the one of the parameter's
                # first step, as torch makes state then (Rprop's step_size
                # starts at the lr of that step)
                for i in range(self.count):
                    if self.present[i] and self.steps[i] == 0:
                        self.fill_state(slot, i, self.init[slot])
        for i in range(self.count):
            for slot in range(FO_MAX_STATES):
                self.work[i].s[slot] = (self.base[i].s[slot]
                                        if slot < r.nstates and r.needs(self.h, slot)
                                        else NULL)
                self.work[i].scale[slot] = (self.base[i].scale[slot]
                                            if slot < r.nstates and r.needs(self.h, slot)
                                            else NULL)
            if self._bf16() or self._q8():
                self.work[i].key = fo_lowp_tensor_key(
                    self.seed, <uint64_t>self.positions[i], <uint64_t>(self.steps[i] + 1))
        if r.nscalars:
            # a parameter's scalar states start at its first step
            for i in range(self.count):
                if self.present[i] and self.steps[i] == 0:
                    for slot in range(r.nscalars):
                        self.sc[i * FO_MAX_SCALAR_STATES + slot] = self.sinit[slot]
        if r.entry.matrix:
            self._step_matrix(mean_count)
            return 0
        if self.all_present:
            for i in range(1, self.count):
                if not self._same(0, i):
                    break
            else:
                if r.nscalars == 0:
                    _run(r.id, &self.args, self.work, self.count, self.dt,
                         self._fuse(&f, 0, mean_count))
                else:
                    memcpy(a.sc, self.sc, r.nscalars * sizeof(double))
                    r.coefficients(self.h, self.steps[0] + 1, &a)
                    _run(r.id, &a, self.work, self.count, self.dt,
                         self._fuse(&f, 0, mean_count))
                    for i in range(self.count):
                        memcpy(&self.sc[i * FO_MAX_SCALAR_STATES], a.sc,
                               r.nscalars * sizeof(double))
                for i in range(self.count):
                    self.steps[i] += 1
                self._after_step()
                return 0
        # parameters without gradients, or step counts (or scalar states)
        # that differ: one call per distinct step count and scalar states
        # over the parameters that have them; the counts advance after every
        # call is made
        for i in range(self.count):
            self.mark[i] = 0
        for i in range(self.count):
            if self.present[i] and not self.mark[i]:
                memcpy(a.sc, &self.sc[i * FO_MAX_SCALAR_STATES], r.nscalars * sizeof(double))
                r.coefficients(self.h, self.steps[i] + 1, &a)
                k = 0
                for j in range(i, self.count):
                    if self.present[j] and not self.mark[j] and self._same(i, j):
                        self.sel[k] = self.work[j]
                        self.mark[j] = 2
                        k += 1
                _run(r.id, &a, self.sel, k, self.dt, self._fuse(&f, i, mean_count))
                for j in range(i, self.count):
                    if self.mark[j] == 2:
                        memcpy(&self.sc[j * FO_MAX_SCALAR_STATES], a.sc,
                               r.nscalars * sizeof(double))
                        self.mark[j] = 1
        for i in range(self.count):
            if self.present[i]:
                self.steps[i] += 1
        self._after_step()
        return 0

    cdef int _step_matrix(self, double mean_count) except -1:
        """The step of a rule with a matrix step: the prepared parameters
        with a gradient, in groups that fuse alike (the EMA started or not),
        each through _run_matrix; the mean of accumulated gradients is fused
        with the first pass, the EMA with the second."""
        cdef Py_ssize_t i, j, k
        cdef fo_fuse f, f1, f2
        for i in range(self.count):
            self.mark[i] = 0
        for i in range(self.count):
            if self.present[i] and not self.mark[i]:
                k = 0
                shapes = []
                for j in range(i, self.count):
                    if self.present[j] and not self.mark[j] and self._same(i, j):
                        self.sel[k] = self.work[j]
                        shapes.append(np.shape(self.params[j]))
                        self.mark[j] = 1
                        k += 1
                self._fuse(&f, i, mean_count)
                f1 = f
                f1.flags = f.flags & FO_FUSE_MEAN
                f2 = f
                f2.flags = f.flags & ~FO_FUSE_MEAN
                _run_matrix(self.r, &self.args, self.sel, k, self.dt, shapes,
                            self.group, &f1 if f1.flags else NULL,
                            &f2 if f2.flags else NULL)
        for i in range(self.count):
            if self.present[i]:
                self.steps[i] += 1
        self._after_step()
        return 0

    cdef void _after_step(self) noexcept:
        """The stepped parameters' averages exist, and their accumulated
        gradients were used up (the kernel cleared them)."""
        cdef Py_ssize_t i
        for i in range(self.count):
            if self.present[i]:
                if self.ema_buffer is not None:
                    self.ema_ready[i] = 1
                self.seen[i] = 0

    def run(self, double mean_count=0.0):
        """Step every parameter with a gradient (after prepare); with
        ``mean_count`` k > 0, on the mean (accumulated + given) / k of its
        gradients."""
        self._run(mean_count)

    def step(self, grads, bint check_finite=False):
        """prepare, then run; returns 1 when it stepped, 2 when
        check_finite found a NaN or an infinity (nothing written)."""
        self._prepare(grads)
        if check_finite and not self.allfinite():
            return 2
        self._run()
        return 1
