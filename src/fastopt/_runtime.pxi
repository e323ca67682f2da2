# Run-time configuration: instruction-set level and threads.

# this build's architecture and its levels: x86 has three, every other
# architecture one, its baseline (on aarch64 NEON)
ARCH = fo_arch_name().decode()
LEVELS = ("baseline", "avx2", "avx512")[:fo_level_count()]
# a state written without being read is stored around the cache (where the
# architecture can) from this many bytes up: tests size their arrays by it
STREAM_MIN_BYTES = FO_STREAM_MIN


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


def swap_thread_cap(int n):
    """Cap the steps the calling thread makes at n threads (0: no cap) and
    return the previous cap (fastopt.limit_threads is the public form)."""
    return fo_thread_cap_swap(n)


def get_parallel_threshold():
    return fo_parallel_threshold()


def set_parallel_threshold(size_t n):
    fo_parallel_threshold_set(n)


def get_prefetch_threshold():
    """Steps whose arrays take at least this many bytes prefetch in their
    loops over bfloat16 and 8-bit states (no value changes with it)."""
    return fo_prefetch_threshold()


def set_prefetch_threshold(size_t n):
    fo_prefetch_threshold_set(n)


def openmp_enabled():
    return bool(fo_openmp_enabled())
