# fastopt's own powers, exp and log (csrc/fastopt/fo_math.h), element by
# element over float64 arrays: what the per-step scalars use, exposed so
# that their accuracy and their bits can be tested.


def _fo_math(str name, x, y=None):
    """fo_<name>(x[i]) or fo_<name>(x[i], y[i]) for name in 'exp', 'log',
    'pow', 'powi' (y: int64 exponents) as a new float64 array."""
    cdef double[::1] xv = np.ascontiguousarray(x, dtype=np.float64).ravel()
    cdef double[::1] yv
    cdef long long[::1] nv
    out = np.empty(xv.shape[0], dtype=np.float64)
    cdef double[::1] ov = out
    cdef Py_ssize_t i, n = xv.shape[0]
    if name == "exp":
        for i in range(n):
            ov[i] = fo_exp(xv[i])
    elif name == "log":
        for i in range(n):
            ov[i] = fo_log(xv[i])
    elif name == "pow":
        yv = np.ascontiguousarray(y, dtype=np.float64).ravel()
        if yv.shape[0] != n:
            raise ValueError("x and y must have the same number of elements")
        for i in range(n):
            ov[i] = fo_pow(xv[i], yv[i])
    elif name == "powi":
        nv = np.ascontiguousarray(y, dtype=np.int64).ravel()
        if nv.shape[0] != n:
            raise ValueError("x and y must have the same number of elements")
        for i in range(n):
            ov[i] = fo_powi(xv[i], nv[i])
    else:
        raise ValueError(f"name must be 'exp', 'log', 'pow' or 'powi', got {name!r}")
    return out
