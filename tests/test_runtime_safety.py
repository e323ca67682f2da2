"""Runtime safety of the kernels: GIL, floating-point environment, leaks,
reference counts, threads."""
import os
import sys
import threading

import numpy as np
import pytest

import fastopt
from fastopt import _core
from fastopt import functional as F
from fastopt import reference as R
from conftest import many


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _subnormal_arithmetic():
    """Results of operations that flush-to-zero / denormals-are-zero / a
    changed rounding mode would alter."""
    tiny = np.array([1e-39], np.float32)          # a float32 subnormal
    return (
        (tiny * np.float32(1.0))[0] != 0,           # DAZ would read it as 0
        (np.array([1e-38], np.float32) * np.float32(0.01))[0] != 0,  # FTZ
        (np.array([5e-324]) * 1.0)[0] != 0,          # float64 subnormal
        1.0 + 2.0 ** -53 == 1.0,                     # ties to even
        1.0 + 3 * 2.0 ** -54 > 1.0,                  # round to nearest
        float(np.float32(1.0) + np.float32(2.0 ** -24)) == 1.0,
    )


def test_floating_point_environment_unchanged():
    before = _subnormal_arithmetic()
    assert all(before)
    rng = np.random.default_rng(0)
    for n in (17, 200_000):
        p, g = rng.standard_normal(n), rng.standard_normal(n)
        m, v = np.zeros(n), np.zeros(n)
        F.adam(p, g, m, v, step=1)
        F.rmsprop(p, g, m)
        _core.grad_sumsq([g])
    assert _subnormal_arithmetic() == before


def test_subnormals_are_computed_not_flushed():
    p = np.full(64, 1e-39, np.float32)
    g = np.full(64, 1e-39, np.float32)
    expect = p.copy()
    R.sgd(expect, g, lr=0.5)
    F.sgd(p, g, lr=0.5)
    assert np.array_equal(p, expect) and np.all(p != 0)


def test_gil_released_during_large_step(restore_config):
    """Another Python thread sees a step half done.

    It reads the first element, then the last: first already updated and
    last not yet means the kernel was between its first and last write while
    that thread held the GIL, impossible if the kernel held it throughout.
    Nothing is timed: the array grows until one step is caught in the middle,
    so a faster machine only needs a larger array."""
    fastopt.set_num_threads(1)   # index order, and a free core for the watcher
    target = [None]              # (param, its value before the step, after it)
    seen = []
    stop = threading.Event()

    def watch():
        while not (seen or stop.is_set()):
            cur = target[0]
            if cur is not None:
                p, before, after = cur
                if p[0] == after and p[-1] == before:   # p[0] read first
                    seen.append(p.size)

    t = threading.Thread(target=watch)
    t.start()
    calls = 0
    try:
        for n in [1 << k for k in range(16, 27, 2)]:   # 2 x 256 MiB at most
            p, g = np.empty(n, np.float32), np.ones(n, np.float32)
            # the largest size gets more tries: on a busy machine the
            # watcher may wait for a core longer than one step
            for _ in range(4 if n < 1 << 26 else 20):
                calls += 1
                # a value of its own per call: a stale target never matches
                p.fill(calls)
                target[0] = (p, calls, calls - 0.5)
                F.sgd(p, g, lr=0.5)
                assert p[0] == p[-1] == calls - 0.5
                if seen:
                    break
            if seen:
                break
    finally:
        stop.set()
        t.join()
    assert seen, f"no step of up to {n} elements seen half done by another thread in {calls} steps"


def _grow(fn, calls):
    fn()
    start = _rss_bytes()
    for _ in range(calls):
        fn()
    return _rss_bytes() - start


@pytest.mark.skipif(os.environ.get("FASTOPT_EMULATED") == "1",
                    reason="under qemu-user the emulator's own memory (its code "
                           "cache) grows the process's RSS, 1.9 MB in this test")
def test_no_leak_over_a_million_small_calls():
    p, g = np.ones(17), np.full(17, 1e-3)
    m, v, vmax = np.zeros(17), np.zeros(17), np.zeros(17)
    growth = _grow(lambda: F.adam(p, g, m, v, vmax, step=3, amsgrad=True), 10**6)
    assert growth <= 1 << 20, f"RSS grew by {growth} bytes"


def test_no_leak_over_erroring_calls():
    p, g = np.ones(17), np.full(17, 1e-3)
    m = np.zeros(17)
    g32 = g.astype(np.float32)

    def bad():
        for args, kw in (((p, g32, m, m.copy()), {"step": 1}),
                         ((p, g, m, m), {"step": 1}),
                         ((p, g, m, m.copy()), {"step": 0}),
                         ((p, g, m, m.copy()), {"step": 1, "lr": float("nan")})):
            try:
                F.adam(*args, **kw)
            except (TypeError, ValueError):
                pass
            else:
                raise AssertionError("no error")

    growth = _grow(bad, 25_000)  # 10^5 erroring calls
    assert growth <= 1 << 20, f"RSS grew by {growth} bytes"


def test_reference_counts_unchanged():
    p, g = np.ones(17), np.full(17, 1e-3)
    m, v = np.zeros(17), np.zeros(17)
    lr, betas = 1e-3, (0.9, 0.999)
    objs = (p, g, m, v, lr, betas)
    before = [sys.getrefcount(o) for o in objs]
    for _ in range(100):
        F.adam(p, g, m, v, step=2, lr=lr, betas=betas)
        with pytest.raises(ValueError):
            F.adam(p, g, m, m, step=2, lr=lr, betas=betas)
        many("adam")([p], [g], [m], [v], step=2, lr=lr, betas=betas)
        _core.grad_sumsq([g])
    assert [sys.getrefcount(o) for o in objs] == before


@pytest.mark.parametrize("threads", [1, 2])
def test_python_threads_with_internal_threads(threads):
    """Python threads each stepping large arrays while fastopt also splits
    them across its own threads: no deadlock, results as if serial."""
    threshold = _core.get_parallel_threshold()
    fastopt.set_num_threads(threads)
    _core.set_parallel_threshold(1 << 12)
    try:
        n, steps, workers = 100_000, 10, 4
        rng = np.random.default_rng(1)
        inits = [rng.standard_normal(n).astype(np.float32) for _ in range(workers)]
        grad = (rng.standard_normal(n) * 1e-2).astype(np.float32)

        def run(i, out):
            p = inits[i].copy()
            m, v = np.zeros_like(p), np.zeros_like(p)
            for step in range(1, steps + 1):
                F.adam(p, grad, m, v, step=step)
            out[i] = p

        serial, parallel = {}, {}
        for i in range(workers):
            run(i, serial)
        ts = [threading.Thread(target=run, args=(i, parallel)) for i in range(workers)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in ts)
        for i in range(workers):
            assert np.array_equal(serial[i], parallel[i])
    finally:
        fastopt.set_num_threads(None)
        _core.set_parallel_threshold(threshold)


def test_threadpoolctl_sees_and_limits_fastopt_threads():
    """fastopt's threads are an OpenMP pool: threadpoolctl lists it and its
    limits cap fastopt.get_num_threads()."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not _core.openmp_enabled():
        pytest.skip("built without OpenMP")
    apis = {info["internal_api"] for info in threadpoolctl.threadpool_info()}
    assert "openmp" in apis
    before = fastopt.get_num_threads()
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert fastopt.get_num_threads() == 1
    assert fastopt.get_num_threads() == before


@pytest.mark.parametrize("bad, kind", [(0, ValueError), (-2, ValueError),
                                        (1.5, TypeError), (True, TypeError),
                                        (None, TypeError), ("2", TypeError)])
def test_limit_threads_bad_input(bad, kind):
    before = fastopt.get_num_threads()
    with pytest.raises(kind, match="n must be"):
        fastopt.limit_threads(bad)
    assert fastopt.get_num_threads() == before


def test_limit_threads_caps_the_calling_thread_only(restore_config):
    """Inside the block the calling thread's steps use at most n threads, a
    nested block cannot raise the cap, other Python threads keep theirs,
    the cap ends with the block (an exception included), and the bits of a
    step do not change."""
    if not _core.openmp_enabled():
        pytest.skip("built without OpenMP")
    fastopt.set_num_threads(2)
    full = fastopt.get_num_threads()
    if full < 2:
        pytest.skip("OpenMP offers one thread")
    rng = np.random.default_rng(3)
    p0, g = rng.standard_normal((2, 1 << 16)).astype(np.float32)

    def adam_bits():
        p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
        for step in (1, 2):
            F.adam(p, g, m, v, step=step)
        return p.view(np.uint32)

    free = adam_bits()
    seen = {}
    with fastopt.limit_threads(1):
        assert fastopt.get_num_threads() == 1
        with fastopt.limit_threads(4):
            assert fastopt.get_num_threads() == 1
        assert fastopt.get_num_threads() == 1
        worker = threading.Thread(target=lambda: seen.update(n=fastopt.get_num_threads()))
        worker.start()
        worker.join()
        np.testing.assert_array_equal(adam_bits(), free)
    assert seen["n"] == full
    assert fastopt.get_num_threads() == full
    with pytest.raises(RuntimeError):
        with fastopt.limit_threads(1):
            raise RuntimeError
    assert fastopt.get_num_threads() == full
    with fastopt.limit_threads(8):
        assert fastopt.get_num_threads() == full
