# The doors of the factored rules (rules.FACTORED_RULES): rules whose
# states are not all of the parameter's shape (State.shape "row", "col",
# "vector").  The kernel side is fo_run's (an axis pass, then the two passes
# of a rule with reductions); what differs is the checking of arrays, whose
# shapes follow the parameter's dimensions, and the scratch of the row and
# column sums, which this door allocates.

cdef extern from "fastopt/kernels.h" nogil:
    enum:
        FO_RULE_ADAFACTOR
    const char *fo_coef_adafactor(const double *h, long long step, fo_args *a)


cdef object _factored_array(object x, str name, object dtype, tuple shape,
                            bint writable):
    """x as the array the kernel can take: a C-contiguous, aligned,
    native-order ndarray of dtype (float32 or float64; None: either) and
    shape; written in place when writable."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype.type not in (np.float32, np.float64) or (
            dtype is not None and x.dtype.type != np.dtype(dtype).type):
        want = "float32 or float64" if dtype is None else f"{np.dtype(dtype).name} (the parameter's dtype)"
        raise TypeError(f"{name} must have dtype {want}, got {x.dtype}")
    if not x.dtype.isnative:
        raise ValueError(f"{name} must be in native byte order")
    if shape is not None and x.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {x.shape}")
    if not (x.flags.c_contiguous and x.flags.aligned):
        raise ValueError(f"{name} must be C-contiguous and aligned")
    if writable and not x.flags.writeable:
        raise ValueError(f"{name} must be writable (it is updated in place)")
    return x


def _adafactor_hypers(lr, beta2_decay, eps, d, weight_decay, maximize):
    """Adafactor's hyperparameters checked as torch.optim.Adafactor checks
    them, as the kernel's doubles: lr, beta2_decay, eps1 (FO_NO_COUNT for
    None), eps2, d, weight_decay, maximize."""
    h_lr = check_real(lr, "lr", 0.0, label="learning rate")
    h_b = check_real(beta2_decay, "beta2_decay", -INFINITY, 0.0, closed=True,
                     label="beta2_decay value")
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise TypeError(f"eps must be a tuple (eps1, eps2) of eps1 None or a "
                        f"real >= 0 and eps2 a real >= 0, got {eps!r}")
    h_e1 = FO_NO_COUNT if eps[0] is None else check_real(
        eps[0], "eps[0]", 0.0, label="epsilon1 value")
    h_e2 = check_real(eps[1], "eps[1]", 0.0, label="epsilon2 value")
    h_d = check_real(d, "d", 1.0, label="Clipping threshold d")
    h_wd = check_real(weight_decay, "weight_decay", 0.0, label="weight_decay value")
    h_m = 1.0 if check_flag(maximize, "maximize") else 0.0
    return (h_lr, h_b, h_e1, h_e2, h_d, h_wd, h_m)


def adafactor_coefficients(step, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3),
                           d=1.0, weight_decay=0.0, maximize=False):
    """Adafactor's per-step coefficients and options as the kernel sees them
    (for the NumPy reference): {name: float or bool}."""
    cdef double h[FO_MAX_SCALARS]
    cdef fo_args a
    cdef int k
    for k, v in enumerate(_adafactor_hypers(lr, beta2_decay, eps, d, weight_decay, maximize)):
        h[k] = v
    fo_coef_adafactor(h, _check_step(step), &a)
    entry = _table.FACTORED_RULES["adafactor"]
    out = {name: a.c[k] for k, name in enumerate(entry.coefficients)}
    out["maximize"] = bool(a.opts & FO_MAXIMIZE)
    out["dtype_eps"] = bool(a.opts & (1u << 2))
    return out


@cython.wraparound(True)
def adafactor(param, grad, row_var, col_var, variance, *, step, lr=1e-2,
              beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
              maximize=False, ema=None, ema_weight=None, grad_accum=None,
              mean_count=None):
    """Adafactor (torch.optim.Adafactor): one step on one tensor, in place.

    A parameter of 2 or more dimensions (the leading ones batch) has the
    factored states ``row_var`` (its shape with the last dimension 1) and
    ``col_var`` (the second-to-last 1), and ``variance`` None; a vector or
    scalar has ``variance`` (its shape), and ``row_var`` and ``col_var``
    None.  States start at zero; ``step`` counts this tensor's steps, 1 at
    its first.  Everything is checked before anything is written.

    The math, line by line: :func:`fastopt.reference.adafactor`.
    Source: Shazeer & Stern 2018; torch.optim.Adafactor (torch 2.13).

    Args:
        lr: learning rate (rho = min(lr, 1 / sqrt(step)))
        beta2_decay: exponent of the second moment's lerp weight step^beta2_decay (<= 0)
        eps: (eps1, eps2): eps1 floors the row mean and, squared, the
            variance estimate (None: the dtype's machine epsilon); eps2
            floors the parameter's RMS
        d: clipping threshold of the update's RMS (>= 1)
        weight_decay: decoupled decay, param * (1 - lr * weight_decay)
        maximize: ascend instead of descend
        ema: an average of the parameter (its dtype and shape), moved after
            the update: ema = lerp(ema, param, ema_weight) in torch.lerp's
            two forms, in the update's loop for weights below 0.5; with
            ema_weight None, ema = param (the first average)
        grad_accum, mean_count: gradient accumulation: the step runs on
            the mean (grad_accum + grad) / mean_count (grad_accum /
            mean_count with grad None), which its first pass makes into
            grad_accum and leaves there; mean_count >= 1
    """
    cdef double h[FO_MAX_SCALARS]
    cdef fo_args a
    cdef fo_tensor t
    cdef fo_fuse f
    cdef const fo_fuse *fp = NULL
    cdef long long st = _check_step(step)
    cdef int k, dt
    cdef Py_ssize_t B, R, C
    for k, v in enumerate(_adafactor_hypers(lr, beta2_decay, eps, d, weight_decay, maximize)):
        h[k] = v
    cdef double count = 0.0
    _factored_array(param, "param", None, None, True)
    arrays = [(param, "param")]
    if grad is not None or grad_accum is None:
        _factored_array(grad, "grad", param.dtype, param.shape, False)
        arrays.append((grad, "grad"))
    if grad_accum is not None:
        _factored_array(grad_accum, "grad_accum", param.dtype, param.shape, True)
        arrays.append((grad_accum, "grad_accum"))
        if mean_count is None:
            raise ValueError("grad_accum needs mean_count")
        count = check_real(mean_count, "mean_count", 1.0)
    elif mean_count is not None:
        raise ValueError("mean_count needs grad_accum")
    if param.ndim >= 2:
        if variance is not None:
            raise ValueError(f"variance must be None for a parameter of "
                             f"{param.ndim} dimensions (it has row_var and col_var)")
        shape = param.shape
        for x, name, sh in ((row_var, "row_var", shape[:-1] + (1,)),
                            (col_var, "col_var", shape[:-2] + (1,) + shape[-1:])):
            if x is None:
                raise ValueError(f"{name} is None; a parameter of "
                                 f"{param.ndim} dimensions needs it")
            _factored_array(x, name, param.dtype, sh, True)
            arrays.append((x, name))
    else:
        for x, name in ((row_var, "row_var"), (col_var, "col_var")):
            if x is not None:
                raise ValueError(f"{name} must be None for a parameter of "
                                 f"{param.ndim} dimensions (it has variance)")
        if variance is None:
            raise ValueError(f"variance is None; a parameter of {param.ndim} "
                             f"dimensions needs it")
        _factored_array(variance, "variance", param.dtype, param.shape, True)
        arrays.append((variance, "variance"))
    memset(&f, 0, sizeof(fo_fuse))
    if ema is not None:
        _factored_array(ema, "ema", param.dtype, param.shape, True)
        arrays.append((ema, "ema"))
        _ema_fuse(&f, ema_weight)
        fp = &f
    elif ema_weight is not None:
        raise ValueError("ema_weight needs ema")
    if grad_accum is not None:
        f.flags |= FO_FUSE_MEAN
        f.count = count
        fp = &f
    for i in range(len(arrays)):
        for j in range(i):
            if np.may_share_memory(arrays[i][0], arrays[j][0]):
                raise ValueError(f"{arrays[i][1]} shares memory with "
                                 f"{arrays[j][1]}; every array of a step must "
                                 f"be separate")
    fo_coef_adafactor(h, st, &a)
    dt = 0 if param.dtype == np.float32 else 1
    memset(&t, 0, sizeof(fo_tensor))
    t.p = _data(param)
    t.g = _data(grad) if grad is not None else NULL
    t.n = <size_t>param.size
    if grad_accum is not None:
        t.acc = _data(grad_accum)
    if param.ndim >= 2:
        R, C = param.shape[-2], param.shape[-1]
        B = param.size // (R * C) if R * C else 0
        t.rows, t.cols = R, C
        t.s[0] = _data(row_var)
        t.s[1] = _data(col_var)
        t.scratch = <double *>PyMem_Malloc(max(B * (R + C + 1), 1) * sizeof(double))
        if t.scratch == NULL:
            raise MemoryError()
    else:
        t.s[2] = _data(variance)
    if ema is not None:
        t.ema = _data(ema)
    try:
        _run(FO_RULE_ADAFACTOR, &a, &t, 1, dt, fp)
    finally:
        PyMem_Free(t.scratch)
