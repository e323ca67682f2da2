"""Run-time configuration: instruction-set level and threads.

At import fastopt uses the best instruction-set level that both the build and
the CPU support.  FASTOPT_SIMD=baseline|avx2|avx512 asks for a lower one (a
higher one than the CPU has falls back to the best available, with a
warning).  FASTOPT_NUM_THREADS=n caps the threads of large steps.

Waiting threads.  After a parallel step GNU OpenMP's worker threads
busy-wait GOMP_SPINCOUNT iterations (300,000 by default, about a
millisecond) for the next one.  In a training loop that alternates steps
with NumPy's matrix products, OpenBLAS's threads, which busy-wait too, then
share the cores with them: on 2 cores scikit-learn's MLP with (256, 256)
layers ran 2-5x slower than with single-threaded steps.  Unless the
environment sets OMP_WAIT_POLICY or GOMP_SPINCOUNT, fastopt loads its OpenMP
runtime with GOMP_SPINCOUNT=3000 (then sleeps): back-to-back steps still
find their threads awake.  The variable is set only while the extension
loads; it takes effect when fastopt is the first to load that libgomp (a
wheel vendors its own).
"""
import numbers
import os
import platform
import sys
import warnings
from typing import Any, Optional, TextIO

import numpy as np

# before the extension loads its OpenMP runtime, which reads it once
_SPIN = ("OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ)
if _SPIN:
    os.environ["GOMP_SPINCOUNT"] = "3000"
try:
    from fastopt import _core
finally:
    if _SPIN:
        del os.environ["GOMP_SPINCOUNT"]

__all__ = ["show_config", "config", "get_num_threads", "set_num_threads", "limit_threads",
           "get_simd_level", "set_simd_level"]

get_num_threads = _core.get_num_threads
get_simd_level = _core.get_simd_level


def set_num_threads(n: Optional[int]) -> None:
    """Use at most ``n`` threads for large steps; ``None`` restores the default.

    OpenMP's limit for the calling thread (OMP_NUM_THREADS, or threadpoolctl's
    ``threadpool_limits``) caps the count as well.
    """
    _core.set_num_threads(n)


class limit_threads:
    """``with fastopt.limit_threads(n): ...``: the steps the calling thread
    makes inside the block use at most ``n`` threads; other threads, and
    the code after the block, are not affected.  Blocks nest: inside both,
    the smaller cap holds.

    For steps made right after other multithreaded work, such as NumPy's
    matrix products on OpenBLAS's threads: waking fastopt's sleeping
    threads there can cost more than a small step gains from them
    (``fastopt.sklearn`` uses one thread below 2**19 elements for that
    reason).  Results are the same bits for any thread count.
    """

    __slots__ = ("n", "_saved")
    n: int
    _saved: int

    def __init__(self, n: int) -> None:
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
            raise TypeError(f"n must be an int, got {type(n).__name__}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = int(min(n, 1 << 16))
        self._saved = 0

    def __enter__(self) -> "limit_threads":
        saved = _core.swap_thread_cap(self.n)
        if 0 < saved < self.n:
            _core.swap_thread_cap(saved)
        self._saved = saved
        return self

    def __exit__(self, *exc: object) -> None:
        _core.swap_thread_cap(self._saved)


def set_simd_level(level: str) -> None:
    """Run the kernels compiled for ``level`` ('baseline', 'avx2' or 'avx512'
    on x86-64; 'baseline' alone, NEON, on aarch64).

    Every level computes the same bits; only speed differs.
    """
    _core.set_simd_level(level)


def _init_from_environment():
    best = _core.best_simd_level()
    wanted = os.environ.get("FASTOPT_SIMD", "").strip().lower()
    level = best
    if wanted:
        if wanted not in _core.LEVELS:
            warnings.warn(f"FASTOPT_SIMD={wanted!r} is not one of "
                          f"{', '.join(_core.LEVELS)}; using {best}",
                          RuntimeWarning, stacklevel=3)
        elif _core.LEVELS.index(wanted) > _core.LEVELS.index(best):
            warnings.warn(f"FASTOPT_SIMD={wanted!r} is not supported on this "
                          f"CPU/build; using {best}", RuntimeWarning, stacklevel=3)
        else:
            level = wanted
    _core.set_simd_level(level)
    threads = os.environ.get("FASTOPT_NUM_THREADS", "").strip()
    if threads:
        try:
            _core.set_num_threads(int(threads))
        except ValueError:
            warnings.warn(f"FASTOPT_NUM_THREADS={threads!r} is not a positive "
                          f"integer; ignored", RuntimeWarning, stacklevel=3)


def config() -> dict[str, Any]:
    """The configuration as a dict (what :func:`show_config` prints)."""
    from fastopt import __version__
    try:
        from fastopt._build_info import BUILD
    except ImportError:  # built by a tool that skipped setup.py's build_ext
        BUILD = {}
    build: dict[str, Any] = dict(BUILD)
    return {
        "version": __version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "architecture": _core.ARCH,
        "compiler": build.get("compiler", "unknown"),
        "common_flags": " ".join(build.get("common_flags", [])),
        "level_flags": {k: " ".join(v) or "(none)"
                        for k, v in build.get("level_flags", {}).items()},
        "cpu_features": _core.cpu_features(),
        "simd_levels": _core.simd_levels(),
        "simd_level": _core.get_simd_level(),
        "openmp": _core.openmp_enabled(),
        "openmp_reason": build.get("openmp_reason", ""),
        "num_threads": _core.get_num_threads(),
        "parallel_threshold": _core.get_parallel_threshold(),
        "sanitize": build.get("sanitize", False),
    }


def show_config(file: Optional[TextIO] = None) -> None:
    """Print version, build flags, CPU features, SIMD level and threads."""
    if file is not None and not callable(getattr(file, "write", None)):
        raise TypeError(f"file must have a write method, got {type(file).__name__}")
    c = config()
    out = sys.stdout if file is None else file
    print(f"fastopt {c['version']} (Python {c['python']}, {c['machine']})", file=out)
    print(f"  architecture:       {c['architecture']} (levels: "
          f"{', '.join(c['simd_levels'])})", file=out)
    print(f"  compiler:           {c['compiler']}", file=out)
    print(f"  flags:              {c['common_flags']}", file=out)
    for level, (compiled, supported) in c["simd_levels"].items():
        state = ("in use" if level == c["simd_level"] else
                 "available" if supported else
                 "compiled, not supported by this CPU" if compiled else "not compiled")
        flags = c["level_flags"].get(level, "")
        if c["architecture"] == "aarch64" and level == "baseline":
            flags = "NEON, the AArch64 baseline"
        print(f"  level {level:<9s}    {state}  [{flags}]", file=out)
    print(f"  cpu features:       {' '.join(c['cpu_features']) or 'unknown'}", file=out)
    print(f"  openmp:             {c['openmp']}"
          + (f" ({c['openmp_reason']})" if c["openmp_reason"] else ""), file=out)
    print(f"  threads:            {c['num_threads']} (parallel from "
          f"{c['parallel_threshold']} elements)", file=out)
    if c["sanitize"]:
        print("  sanitizers:         address, undefined", file=out)
