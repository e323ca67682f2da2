# Hyperparameters: one set of checks for every door (functional calls,
# optimizer groups, schedulers, clipping), driven by the rule table.

cdef inline double _real(object x, str name) except? -1.0:
    """x as a double: any real number but a bool; ValueError past the float
    range."""
    if type(x) is float:
        return <double>x
    if type(x) is not int and (isinstance(x, (bool, np.bool_))
                               or not isinstance(x, numbers.Real)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    try:
        return float(x)
    except OverflowError:
        raise ValueError(f"{name} is outside the float range: {x!r}") from None


cdef inline double _check_real(object x, str name, str label, double lo,
                               double hi, bint closed) except? -1.0:
    """x as a double, finite, lo <= x and x < hi (x <= hi when closed)."""
    cdef double v = _real(x, name)
    if isfinite(v) and v >= lo and (v <= hi if closed else v < hi):
        return v
    return _range_error(x, name, label, lo, hi, closed)


cdef double _range_error(object x, str name, str label, double lo, double hi,
                         bint closed, bint lo_open=False,
                         bint finite=True) except? -1.0:
    """The one message of a number out of its range, at every door."""
    if hi == INFINITY and lo == -INFINITY:
        rule = "a number"
    elif hi == INFINITY:
        rule = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        rule = (f"in {'(' if lo_open else '['}{lo:g}, "
                f"{hi:g}{']' if closed else ')'}")
    if finite:
        rule = "a finite number" if rule == "a number" else "finite and " + rule
    if label:
        raise ValueError(f"Invalid {label}: {x} ({name} must be {rule})")
    raise ValueError(f"{name} must be {rule}, got {x!r}")


cdef inline bint _check_flag(object x, str name) except -1:
    if x is True or x is False:
        return x is True
    if isinstance(x, np.bool_):
        return bool(x)
    raise TypeError(f"{name} must be a bool, got {type(x).__name__}")


cdef str _tuple_words(str name, int n):
    """A pair (betas[0], betas[1]), a triple (...), a tuple of n (...)."""
    word = "pair" if n == 2 else "triple" if n == 3 else f"tuple of {n}"
    return f"a {word} ({', '.join(f'{name}[{i}]' for i in range(n))})"


cdef int _check_tuple(object x, str name, str label, double lo, double hi,
                      bint closed, int n, double *out) except -1:
    """A tuple or list of n reals, each checked as a real hyperparameter."""
    cdef int i
    cdef bint fast = type(x) is tuple and len(<tuple>x) == n
    if fast:
        for i in range(n):
            xi = (<tuple>x)[i]
            if type(xi) is not float:
                fast = False
                break
            out[i] = <double>xi
            if not (lo <= out[i] < hi) or not isfinite(out[i]):
                fast = False
                break
        if fast:
            return 0
    if not isinstance(x, (tuple, list)) or len(x) != n:
        raise TypeError(f"{name} must be {_tuple_words(name, n)}, got {x!r}")
    for i in range(n):
        out[i] = _check_real(x[i], f"{name}[{i}]", f"{label} at index {i}",
                             lo, hi, closed)
    return 0


cdef inline int _check_pair(object x, str name, str label, double lo, double hi,
                            bint closed, double *out) except -1:
    return _check_tuple(x, name, label, lo, hi, closed, 2, out)


# counts reach the kernel as doubles, exact up to 2**53
cdef object _MAX_COUNT = 2 ** 53


cdef double _check_count(object x, str name, str label, double lo) except? -2.0:
    """None (as FO_NO_COUNT) or an int >= lo, as a double."""
    if x is None:
        return FO_NO_COUNT
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be None or an int, got {type(x).__name__}")
    if lo <= x <= _MAX_COUNT:
        return <double>int(x)
    rule = f">= {lo:g}" if x < lo else "<= 2**53"
    if label:
        raise ValueError(f"Invalid {label}: {x} ({name} must be None or an int {rule})")
    raise ValueError(f"{name} must be None or an int {rule}, got {x!r}")


cdef double _check_int(object x, str name, str label, double lo,
                       double hi) except? -2.0:
    """An int in [lo, hi] (not None, not a bool), as a double."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    if lo <= x <= hi:
        return <double>int(x)
    rule = f"an int in [{lo:g}, {hi:g}]"
    if label:
        raise ValueError(f"Invalid {label}: {x} ({name} must be {rule})")
    raise ValueError(f"{name} must be {rule}, got {x!r}")


cdef double _check_choice(object x, str name, str label, tuple choices) except? -2.0:
    """One of ``choices`` (None or strings), as its index."""
    cdef Py_ssize_t i
    for i in range(len(choices)):
        c = choices[i]
        if (x is None and c is None) or (type(x) is str and x == c):
            return <double>i
    words = ", ".join(repr(c) for c in choices)
    if x is not None and not isinstance(x, str):
        raise TypeError(f"{name} must be one of {words}, got {type(x).__name__}")
    if label:
        raise ValueError(f"Invalid {label}: {x!r} ({name} must be one of {words})")
    raise ValueError(f"{name} must be one of {words}, got {x!r}")


cdef long long _check_step(object step) except -1:
    """The step count: an int in [1, 2**62]."""
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


cdef enum:
    K_REAL = 0
    K_FLAG = 1
    K_TUPLE = 2
    K_COUNT = 3
    K_INT = 4
    K_CHOICE = 5


@cython.final
cdef class _Hyper:
    """A hyperparameter of the table, ready for checking: where its doubles
    go in the kernel's array (index, -1 for a class-only one)."""
    cdef readonly str name
    cdef readonly object default        # the table's default
    cdef str label
    cdef int kind
    cdef int index
    cdef int size                       # the entries of a K_TUPLE
    cdef tuple choices                  # the values of a K_CHOICE
    cdef double lo, hi
    cdef bint closed

    cdef double real(self, object x) except? -1.0:
        """x checked as this real hyperparameter, as a double."""
        return _check_real(x, self.name, self.label, self.lo, self.hi, self.closed)

    cdef inline int convert(self, object x, double *h) except -1:
        """Check x; store its doubles at h[index] when the kernel takes it."""
        cdef double entries[FO_MAX_SCALARS]
        cdef double v
        cdef int i
        if self.kind == K_REAL:
            v = _check_real(x, self.name, self.label, self.lo, self.hi, self.closed)
        elif self.kind == K_FLAG:
            v = 1.0 if _check_flag(x, self.name) else 0.0
        elif self.kind == K_COUNT:
            v = _check_count(x, self.name, self.label, self.lo)
        elif self.kind == K_INT:
            v = _check_int(x, self.name, self.label, self.lo, self.hi)
        elif self.kind == K_CHOICE:
            v = _check_choice(x, self.name, self.label, self.choices)
        else:
            _check_tuple(x, self.name, self.label, self.lo, self.hi, self.closed,
                         self.size, entries)
            if self.index >= 0:
                for i in range(1, self.size):
                    h[self.index + i] = entries[i]
            v = entries[0]
        if self.index >= 0:
            h[self.index] = v
        return 0


cdef enum:
    STEP_NONE = 0
    STEP_REQUIRED = 1
    STEP_WHEN = 2


@cython.final
cdef inline int _coefficients(const char *msg) except -1:
    """Raise the message of an invalid combination of hyperparameters."""
    if msg != NULL:
        raise ValueError(msg.decode())
    return 0


cdef class _Rule:
    """What the boundary needs of one table entry."""
    cdef readonly int id
    cdef readonly str name
    cdef readonly object entry          # the rules.Rule
    cdef readonly tuple slots           # ("param", "grad", state names...)
    cdef tuple hypers                   # _Hyper, every hyperparameter
    cdef tuple kernel_hypers            # _Hyper, those the kernel takes
    cdef dict kernel_by_name            # their names: _Hyper
    cdef int nstates
    cdef int when[FO_MAX_STATES]        # h index making state k needed, -1: always
    cdef bint init_from_group[FO_MAX_STATES]  # state k starts at a hyperparameter
    cdef tuple when_text                # "amsgrad=True", "momentum != 0", ...
    cdef int step_mode
    cdef int step_when
    cdef str step_when_text
    cdef readonly int nscalars          # per-tensor scalar states
    cdef readonly tuple scalar_names
    cdef object matrix                  # the matrix step (fastopt.matrix), once loaded
    cdef unsigned post_bit              # the option of a matrix rule's second pass

    cdef inline bint needs(self, const double *h, int k) noexcept:
        return self.when[k] < 0 or h[self.when[k]] != 0.0

    cdef int read_group(self, dict group, double *h) except -1:
        """The kernel's hyperparameters from an optimizer's group."""
        cdef _Hyper x
        for x in self.kernel_hypers:
            x.convert(group[x.name], h)
        return 0

    cdef inline int check_states(self, const double *h, object s0, object s1,
                                 object s2, object s3, bint plural) except -1:
        """Each state given exactly when the options need it."""
        cdef int k
        cdef bint given
        for k in range(self.nstates):
            given = (s0 if k == 0 else s1 if k == 1 else s2 if k == 2 else s3) is not None
            if given != self.needs(h, k):
                self._state_error(k, given, plural)
        return 0

    cdef int _state_error(self, int k, bint given, bint plural) except -1:
        name = self.slots[2 + k]
        if plural:   # the lists of a multi-tensor call
            name = name[:len(name) - 1] + "ies" if name.endswith("y") else name + "s"
        if self.when[k] < 0:
            raise ValueError(f"{name} is required")
        if not given:
            raise ValueError(f"{name} is required when {self.when_text[k]}")
        raise ValueError(f"{name} is given but not used: it is needed "
                         f"only when {self.when_text[k]}")

    cdef double initial(self, int k, dict group) except? -1.0:
        """The start value of state k: a number, or a hyperparameter of the
        group, checked as such."""
        cdef _Hyper x
        init = self.entry.states[k].initial
        if not isinstance(init, str):
            return float(init)
        for x in self.hypers:
            if x.name == init:
                return x.real(group[init])
        raise KeyError(init)

    cdef double scalar_initial(self, int k, dict group) except? -1.0:
        """The start value of scalar state k, as initial() for arrays."""
        cdef _Hyper x
        init = self.entry.scalar_states[k].initial
        if not isinstance(init, str):
            return float(init)
        for x in self.hypers:
            if x.name == init:
                return x.real(group[init])
        raise KeyError(init)

    cdef inline long long step_count(self, object step, const double *h) except -1:
        """The step for the coefficients: checked, or 0 when not used."""
        if self.step_mode == STEP_REQUIRED:
            return _check_step(step)
        if self.step_mode == STEP_WHEN and h[self.step_when] != 0.0:
            if step is None:
                raise ValueError(f"step is required when {self.step_when_text}")
            return _check_step(step)
        if step is not None:
            _check_step(step)
        return 0

    cdef inline int coefficients(self, const double *h, long long step,
                                 fo_args *a) except -1:
        return _coefficients(fo_coefficients(self.id, h, step, a))


cdef str _when_text(object entry, str name):
    h = entry.hyper(name)
    return f"{name}=True" if h.check == "flag" else f"{name} != 0"


cdef _Rule _make_rule(int rid, object entry):
    cdef _Rule r = _Rule.__new__(_Rule)
    cdef _Hyper x
    cdef int k, index = 0
    r.id = rid
    r.name = entry.name
    r.entry = entry
    r.slots = ("param", "grad") + tuple(s.name for s in entry.states)
    hypers, positions = [], {}
    for spec in entry.hypers:
        x = _Hyper.__new__(_Hyper)
        x.name = spec.name
        x.default = spec.default
        x.label = spec.label
        x.kind = {"real": K_REAL, "flag": K_FLAG, "pair": K_TUPLE,
                  "tuple": K_TUPLE, "count": K_COUNT, "int": K_INT,
                  "choice": K_CHOICE}[spec.check]
        x.choices = tuple(spec.choices)
        x.size = spec.length
        if not 0 <= x.size <= FO_MAX_SCALARS:
            raise RuntimeError(f"{entry.name}: {spec.name} has too many entries")
        x.lo, x.hi, x.closed = spec.lo, spec.hi, spec.closed
        x.index = -1
        if spec.kernel:
            x.index = index
            positions[spec.name] = index
            index += len(spec.scalars())
        hypers.append(x)
    r.hypers = tuple(hypers)
    kernel = []
    for x in hypers:
        if x.index >= 0:
            kernel.append(x)
    r.kernel_hypers = tuple(kernel)
    r.kernel_by_name = {x.name: x for x in kernel}
    r.nstates = len(entry.states)
    r.when_text = tuple(None if s.when is None else _when_text(entry, s.when)
                        for s in entry.states)
    for k in range(FO_MAX_STATES):
        r.when[k] = -1
        r.init_from_group[k] = False
    for k, s in enumerate(entry.states):
        if s.when is not None:
            r.when[k] = positions[s.when]
        r.init_from_group[k] = isinstance(s.initial, str)
    r.matrix = None
    r.post_bit = 0
    if entry.matrix:
        if "post" not in entry.options:
            raise RuntimeError(f"{entry.name}: a rule with a matrix step needs "
                               f"an option 'post'")
        r.post_bit = 1u << (2 + entry.options.index("post"))
    r.nscalars = len(entry.scalar_states)
    r.scalar_names = tuple(s.name for s in entry.scalar_states)
    if r.nscalars > FO_MAX_SCALAR_STATES:
        raise RuntimeError(f"{entry.name}: too many scalar states")
    r.step_mode, r.step_when, r.step_when_text = STEP_NONE, -1, None
    if entry.step == "required":
        r.step_mode = STEP_REQUIRED
    elif entry.step is not None:
        r.step_mode = STEP_WHEN
        r.step_when = positions[entry.step]
        r.step_when_text = _when_text(entry, entry.step)
    return r


# The table, as the boundary uses it: by name and by id (the order of
# rules.RULES, which is also the order of FO_RULE_LIST).
_RULES = {}
cdef list _RULE_BY_ID = []
for _rid, _entry in enumerate(_table.RULES.values()):
    _RULES[_entry.name] = _make_rule(_rid, _entry)
    _RULE_BY_ID.append(_RULES[_entry.name])


cdef _Rule _rule(object name):
    try:
        return _RULES[name]
    except (KeyError, TypeError):
        raise ValueError(f"rule must be one of {', '.join(_RULES)}, got {name!r}") from None


def check_hyperparameters(str rule, dict group):
    """Check every hyperparameter of ``rule`` in ``group`` (an optimizer's
    parameter group, or any dict holding them all), as every door checks
    them: TypeError or ValueError naming the first bad one."""
    cdef _Rule r = _rule(rule)
    cdef _Hyper x
    cdef double h[FO_MAX_SCALARS]
    cdef fo_args a
    cdef int k
    for x in r.hypers:
        if x.name not in group:
            raise ValueError(f"{x.name} is missing")
        x.convert(group[x.name], h)
    # the per-tensor scalar states at their start values, as at a first
    # step (the schedule-free rules' coefficients read them)
    for k in range(r.nscalars):
        a.sc[k] = r.scalar_initial(k, group)
    r.coefficients(h, 1, &a)


def check_real(x, str name, double lo=0.0, double hi=INFINITY, *,
               bint closed=False, bint lo_open=False, bint finite=True,
               str label=""):
    """x as a float: a real number (not a bool), not NaN, finite unless
    finite=False, above lo (or at it unless lo_open) and below hi (or at it
    when closed).  The check and the message of every number fastopt takes:
    hyperparameters, schedules, clipping."""
    cdef double v = _real(x, name)
    if (v == v and (isfinite(v) or not finite)
            and (v > lo if lo_open else v >= lo)
            and (v <= hi if closed else v < hi)):
        return v
    return _range_error(x, name, label, lo, hi, closed, lo_open, finite)


def check_flag(x, str name):
    return _check_flag(x, name)


def check_step(step):
    return _check_step(step)


def coefficients(str rule, step=None, scalars=None, **hyper):
    """The per-step coefficients and options of ``rule`` as the kernel sees
    them (for the NumPy reference): {name: float or bool}, and for a rule
    with per-tensor scalar states, given in ``scalars`` (floats in the
    table's order; None: their start values, as at a tensor's first step),
    their values after the step under "next".  Missing hyperparameters take
    the table's defaults; nothing else is checked beyond what the kernel's
    door checks."""
    cdef _Rule r = _rule(rule)
    cdef _Hyper x
    cdef double h[FO_MAX_SCALARS]
    cdef fo_args a
    cdef long long t
    cdef int k
    for x in r.kernel_hypers:
        x.convert(hyper.get(x.name, x.default), h)
    t = r.step_count(step, h)
    if scalars is None:
        group = {x.name: hyper.get(x.name, x.default)
                 for x in r.hypers}
        scalars = [r.scalar_initial(k, group) for k in range(r.nscalars)]
    if len(scalars) != r.nscalars:
        raise ValueError(f"{rule} has {r.nscalars} scalar states, got {len(scalars)}")
    for k in range(r.nscalars):
        a.sc[k] = float(scalars[k])
    r.coefficients(h, t, &a)
    out = {name: a.c[k] for k, name in enumerate(r.entry.coefficients)}
    out["next"] = tuple(a.sc[k] for k in range(r.nscalars))
    out["maximize"] = bool(a.opts & FO_MAXIMIZE)
    out["has_l2"] = bool(a.opts & FO_L2)
    for k, name in enumerate(r.entry.options):
        out[name] = bool(a.opts & (1u << (k + 2)))
    return out
