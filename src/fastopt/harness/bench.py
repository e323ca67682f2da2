"""Measure fastopt's update rules against the memory bandwidth, NumPy and torch.

For every rule, dtype, size and thread count, one run measures:

  floor     fastopt's traffic kernel: the rule's reads and writes with the
            math left out, same threads and instruction set (the bandwidth
            the machine gives this footprint)
  fastopt   the fused kernel (fastopt.functional)
  numpy     the NumPy reference (fastopt.reference)
  torch     torch.optim for-loop, foreach and fused, at torch's default thread
            count and at 1 thread, when torch is installed; for a rule that
            torch lacks, the package it conforms to (schedulefree's
            for-loop and foreach paths) on torch, the same way

and reports median nanoseconds per element, effective GB/s over the minimal
bytes (each array read once, each updated array written once), the share of
the floor's bandwidth reached, and speedups.  The floor and the kernel are
timed interleaved (one call of each in turn) so drifts of a shared machine
hit both alike; NumPy and the torch paths in rounds of their own.
Each kernel's result is checked against the reference before it is timed.

It also measures the fixed cost of small calls, a model of 200 tensors of
5,000 elements against one array of the same size, and the cost of the
non-finite gradient check.
"""
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

import fastopt
from fastopt import _core
from fastopt.rules import FACTORED_RULES
from fastopt.rules import RULES as TABLE
from fastopt import functional as F
from fastopt import reference as R
from fastopt.harness import sklearn_bench, state_bench

FULL_SIZES = [10**3, 10**4, 10**5, 10**6, 10**7, 5 * 10**7]
QUICK_SIZES = [10**3, 10**5, 10**6, 10**7]


class Rule:
    """How to run one bench row (an optimizer class of the rule table) with
    fastopt, the reference and torch.

    ``bind(fn, p, g, states)`` returns a callable making one call of ``fn``
    (the functional kernel or its reference, which share a signature) with
    the row's hyperparameters as plain keywords and a step count that grows
    by one per call, as in a training loop: the call costs what a user's
    call costs."""

    def __init__(self, name, entry, hp, torch_cls, torch_kwargs):
        self.name = name
        self.entry = entry
        self.hp = hp
        self.fastopt_fn = getattr(F, entry.name)
        self.reference_fn = getattr(R, entry.name)
        # a factored rule's row is a matrix: the states a matrix has
        self.states = [s for s in entry.states
                       if (s.when is None or hp[s.when])
                       and (not entry.factored or s.present(2))]
        self.nstates = len(self.states)
        self.torch_cls = torch_cls
        self.torch_kwargs = torch_kwargs
        # torch has a fused kernel for these (torch/optim/*.py, _fused_*)
        self.fused = torch_cls in ("Adam", "AdamW", "SGD", "Adagrad")

    def bytes_per_element(self, itemsize):
        return self.entry.bytes_per_element(itemsize, self.hp)

    def bind(self, fn, p, g, states, start=2):
        t = start
        step = self.entry.step is not None
        kw = {h.name: self.hp[h.name] for h in self.entry.kernel_hypers}
        # per-tensor scalar states (NAdam's mu_product, ...), at their start
        states = list(states) + [
            np.full(1, float(self.hp[s.initial] if isinstance(s.initial, str) else s.initial))
            for s in self.entry.scalar_states]

        if self.entry.factored:
            # the door takes every slot, None for those a matrix lacks
            given = iter(states)
            states = [next(given) if s.present(2) else None for s in self.entry.states]

        def run():
            nonlocal t
            t += 1
            if step:
                fn(p, g, *states, step=t, **kw)
            else:
                fn(p, g, *states, **kw)
        return run

    def call(self, fn, p, g, states, step):
        """One call at a given step count (for checks)."""
        run = self.bind(fn, p, g, states, step - 1)
        run()


def _rows():
    """A row per optimizer class of the table, at its defaults and the
    rule's bench settings; torch compared where torch has the class."""
    rows = {}
    for entry in list(TABLE.values()) + list(FACTORED_RULES.values()):
        for cls, fixed, defaults, _ in entry.classes():
            hp = {h.name: defaults.get(h.name, h.default) for h in entry.hypers}
            hp.update(fixed)
            hp.update(entry.bench)
            torch_kwargs = {h.name: hp[h.name] for h in entry.hypers
                            if h.name not in fixed and h.kernel}
            # torch.optim's class, or else the package the rule conforms
            # to (schedulefree), timed the same way as a peer
            peer = cls if entry.torch else (entry.package or None)
            rows[cls.lower()] = Rule(cls.lower(), entry, hp, peer, torch_kwargs)
    return rows


RULES = _rows()


def command_line(args):
    """The command as run (``python -m fastopt`` sets ``args.argv``), for the
    header of a saved table or the records of a run."""
    return " ".join(["python -m fastopt", *getattr(args, "argv", ["bench"])])


def _parse_sizes(text):
    return [int(float(s)) for s in text.split(",") if s.strip()]


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help="fewer sizes and repeats (every rule: about 5 minutes "
                             "on 2 cores; --rules narrows it)")
    parser.add_argument("--rules", default=",".join(RULES),
                        help=f"comma list among {', '.join(RULES)}")
    parser.add_argument("--sizes", type=_parse_sizes, default=None,
                        help="comma list of element counts, e.g. 1e3,1e6")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--threads", default=None,
                        help="comma list of fastopt thread counts "
                             "(default: 1 and all)")
    parser.add_argument("--parallel-threshold", type=int, default=None,
                        metavar="N", help="elements from which a step uses "
                        "more than one thread (default: the built-in value); "
                        "1 measures threads at every size")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip torch even when installed")
    parser.add_argument("--json", metavar="PATH", help="write the records as JSON")
    parser.add_argument("--markdown", metavar="PATH",
                        help="write the table as GitHub markdown (README's form)")
    parser.add_argument("--plot", metavar="PATH",
                        help="write a PNG of GB/s against size (needs matplotlib)")
    parser.add_argument("--distributed", action="store_true",
                        help="under mpiexec: a sharded step (fastopt.distributed) "
                             "on the launch's ranks, split into communication and "
                             "update, for the first of --rules and --dtypes and "
                             "--sizes (default 1e6,1e7); needs fastopt[mpi]")
    sklearn_bench.add_arguments(parser)
    state_bench.add_arguments(parser)


# ---------------------------------------------------------------------------
# timing

def _budget(quick):
    return 0.15 if quick else 0.6


def interleaved(calls, budget, min_reps=3, max_reps=1000, batch=1):
    """Median seconds per call of each callable, timed in turn.

    Each sample times `batch` calls in a row (small workloads: so that a
    sample is long against the clock and the caches see a steady stream of
    the same work).  The number of rounds is chosen from one probe of each
    so that all rounds together take about `budget` seconds."""
    def sample(fn):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        return (time.perf_counter() - t0) / batch

    probe = {name: sample(fn) for name, fn in calls.items()}
    per_round = sum(probe.values()) * batch
    reps = int(min(max_reps, max(min_reps, budget / max(per_round, 1e-9))))
    times = {name: [] for name in calls}
    for _ in range(reps):
        for name, fn in calls.items():
            times[name].append(sample(fn))
    return {name: statistics.median(v) for name, v in times.items()}


def _torch():
    if os.environ.get("FASTOPT_BENCH_NO_TORCH"):
        return None
    try:
        import torch  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    return torch


# ---------------------------------------------------------------------------
# per-size measurement

def _shape(rule, n):
    """n elements as a vector, or for a rule with a matrix step (Muon) as
    the squarest matrix of n elements."""
    if not rule.entry.matrix:
        return n
    rows = max(r for r in range(1, math.isqrt(max(n, 1)) + 1) if n % r == 0)
    return (rows, n // rows)


def _matrix_shape(n):
    """(rows, cols) with rows * cols = n, cols the divisor nearest sqrt(n)
    from below: a factored rule's row is one near-square matrix."""
    cols = max(1, int(math.isqrt(n)))
    while n % cols:
        cols -= 1
    return (n // cols, cols)


def _arrays(rule, n, dtype, rng):
    if rule.entry.factored:
        shape = _matrix_shape(n)
        p = rng.standard_normal(shape).astype(dtype)
        g = (rng.standard_normal(shape) * 1e-2).astype(dtype)
        return p, g, [np.zeros(s.shape_for(shape), dtype) for s in rule.states]
    n = _shape(rule, n)
    p = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * 1e-2).astype(dtype)
    # states at their start values (Adagrad's sum at a positive one, so the
    # first steps do not divide by a tiny root)
    states = [np.full(n, 0.1 if isinstance(s.initial, str) else s.initial, dtype)
              for s in rule.states]
    return p, g, states


def _placed(p, states):
    """Copies of the parameter-shaped ``states`` placed relative to ``p`` as
    the optimizer classes place their buffers (fastopt._core.placed_full:
    apart within a 4 KiB page); other states as they are."""
    out = []
    for k, s in enumerate(states):
        if s.shape != p.shape:
            out.append(s)
            continue
        x = _core.placed_full(s.size, 0, s.dtype, p, k).reshape(s.shape)
        x[...] = s
        out.append(x)
    return out


def _check_exact(rule, p, g, states):
    """One step of the kernel and of the reference from the same state."""
    kp, ks = p.copy(), [s.copy() for s in states]
    rp, rs = p.copy(), [s.copy() for s in states]
    for step in (1, 2):
        rule.call(rule.fastopt_fn, kp, g, ks, step)
        rule.call(rule.reference_fn, rp, g, rs, step)
    ok = np.array_equal(kp, rp, equal_nan=True) and all(
        np.array_equal(a, b, equal_nan=True) for a, b in zip(ks, rs))
    if not ok:
        raise AssertionError(f"{rule.name}: kernel differs from the reference")
    return kp, ks


def _package_stepper(torch, rule, p, g, impl):
    """A callable doing one step of the package class rule.torch_cls
    ("module.Class", e.g. schedulefree.AdamWScheduleFree, in train mode)
    on copies of p, g; impl "sf-foreach" is the package's default path,
    "sf-forloop" its single-tensor one.  The package writes the gradient
    in place at every step; that is its cost, timed as it is."""
    import importlib
    import inspect
    module, name = rule.torch_cls.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    takes = inspect.signature(cls).parameters
    kw = {k: v for k, v in rule.torch_kwargs.items() if k in takes}
    tp = torch.from_numpy(p.copy()).requires_grad_(False)
    tp.grad = torch.from_numpy(g.copy())
    opt = cls([tp], foreach=impl == "sf-foreach", **kw)
    opt.train()
    return opt.step, tp


def _torch_kwargs(cls, rule):
    """The row's hyperparameters that torch's class takes (torch's Muon has
    no maximize, which fastopt offers every rule)."""
    import inspect
    takes = inspect.signature(cls).parameters
    return {k: v for k, v in rule.torch_kwargs.items() if k in takes}


def _torch_stepper(torch, rule, p, g, impl):
    """A callable doing one torch.optim step of `impl` on copies of p, g."""
    if impl.startswith("sf-"):
        return _package_stepper(torch, rule, p, g, impl)
    tp = torch.from_numpy(p.copy()).requires_grad_(False)
    tp.grad = torch.from_numpy(g.copy())
    cls = getattr(torch.optim, rule.torch_cls)
    kw = _torch_kwargs(cls, rule)
    import inspect
    if "foreach" not in inspect.signature(cls).parameters:
        # a class with a single-tensor loop only (torch's Muon)
        if impl != "forloop":
            raise TypeError(f"torch.optim.{rule.torch_cls} has no {impl} path")
    elif impl == "fused":
        kw["fused"] = True
    else:
        kw["foreach"] = impl == "foreach"
    if rule.name == "adagrad":
        kw["initial_accumulator_value"] = 0.1
    opt = cls([tp], **kw)
    return opt.step, tp


def measure_size(rule, dtype, n, threads_list, budget, torch, rng,
                 torch_threads_default):
    """Records for one rule, dtype and size, one per fastopt thread count."""
    p, g, states = _arrays(rule, n, dtype, rng)
    kp, ks = _check_exact(rule, p, g, states)
    ks = _placed(kp, ks)
    # the floor moves the parameter-shaped arrays (a factored rule's row and
    # column states are a vanishing part of its traffic), placed alike
    fp = p.copy()
    floor_arrays = [fp, g.copy()] + _placed(fp, [s for s in states if s.shape == p.shape])
    run_fastopt = rule.bind(rule.fastopt_fn, kp, g, ks)
    rp, rs = p.copy(), [s.copy() for s in states]
    run_numpy = rule.bind(rule.reference_fn, rp, g, rs)

    def run_floor():
        _core.traffic(*floor_arrays)

    torch_calls = {}
    if torch is not None and rule.torch_cls:
        impls = (["sf-forloop", "sf-foreach"] if "." in rule.torch_cls
                 else ["forloop", "foreach"] + (["fused"] if rule.fused else []))
        for impl in impls:
            try:
                stepper, tp = _torch_stepper(torch, rule, p, g, impl)
                check = p.copy()
                cs = [s.copy() for s in states]
                # torch makes per-tensor scalar states (NAdam's mu_product,
                # ASGD's eta) at the first step, in its default dtype
                default = torch.get_default_dtype()
                if dtype == np.float64:
                    torch.set_default_dtype(torch.float64)
                try:
                    stepper()
                finally:
                    torch.set_default_dtype(default)
                rule.call(rule.fastopt_fn, check, g, cs, 1)
                tol = (1e-4, 1e-7) if dtype == np.float32 else (1e-9, 1e-13)
                if rule.entry.matrix:
                    # torch's Newton-Schulz is bfloat16: its step within
                    # 2^-4 of its largest entry (tests/test_muon.py)
                    tol = (0.0, 2.0 ** -4 * np.abs(tp.numpy() - p).max())
                if rule.entry.factored and dtype == np.float32:
                    # torch takes a float32 tensor's norm in float32: over
                    # 10^7 elements 3159.554 where the double sum gives
                    # 3160.708, so its step differs by about 4e-4 of itself
                    tol = (0.0, 1e-3 * float(np.abs(check - p).max()))
                if not np.allclose(tp.numpy(), check, rtol=tol[0], atol=tol[1]):
                    raise AssertionError(f"torch {impl} {rule.name} disagrees")
                torch_calls[impl] = stepper
            except (RuntimeError, TypeError, ValueError, ImportError) as exc:
                print(f"  torch {impl} {rule.name}: not available ({exc})",
                      file=sys.stderr)

    records = []
    numpy_time = None
    torch_times = {}
    batch = max(1, 20_000 // max(n, 1))   # samples of at least ~2e4 elements
    # below the parallel threshold every thread count runs on one thread
    if n < _core.get_parallel_threshold():
        threads_list = [1]
    for threads in threads_list:
        fastopt.set_num_threads(threads)
        # the floor and the kernel alternate on their own, so that a slow
        # NumPy reference does not leave them a handful of samples (at 10^7
        # elements it takes 10-30 times as long); NumPy's time is its own
        # median, taken once
        med = interleaved({"floor": run_floor, "fastopt": run_fastopt}, budget,
                          batch=batch)
        if numpy_time is None:
            numpy_time = interleaved({"numpy": run_numpy}, budget, batch=batch)["numpy"]
        if torch_calls and not torch_times:
            for tthreads in sorted({torch_threads_default, 1}, reverse=True):
                torch.set_num_threads(tthreads)
                tmed = interleaved(torch_calls, budget, batch=batch)
                for impl, t in tmed.items():
                    torch_times[f"torch_{impl}_{tthreads}t"] = t
            torch.set_num_threads(torch_threads_default)
        nbytes = rule.bytes_per_element(np.dtype(dtype).itemsize) * n
        rec = {
            "rule": rule.name, "dtype": np.dtype(dtype).name, "n": n,
            "threads": fastopt.get_num_threads(),
            "simd": fastopt.get_simd_level(),
            "bytes": nbytes,
            "fastopt_s": med["fastopt"], "floor_s": med["floor"],
            "numpy_s": numpy_time,
        }
        rec.update({f"{k}_s": v for k, v in torch_times.items()})
        records.append(rec)
    fastopt.set_num_threads(None)
    return records


# ---------------------------------------------------------------------------
# rules with a matrix step (Muon)

MATRIX_SHAPES = [(1024, 1024)]


def _torch_matrix_step(torch, rule, work, hyper):
    """torch's own matrix step for the row, when torch has one as a
    function (Muon's bfloat16 Newton-Schulz), else None."""
    if rule.torch_cls != "Muon":
        return None
    from torch.optim import _muon  # type: ignore[import-not-found, unused-ignore]
    tw = torch.from_numpy(work.copy())
    coefficients = tuple(hyper["ns_coefficients"])
    return lambda: _muon._zeropower_via_newtonschulz(
        tw, coefficients, hyper["ns_steps"], hyper["eps"])


def measure_matrix(rule, dtype, shape, budget, torch):
    """One step of a rule with a matrix step on one matrix, at all threads:
    the whole step, its matrix step alone (Newton-Schulz on a work array,
    NumPy's matmul) and the step without products (ns_steps=0: the two
    element-wise passes, the update's norm and its division), beside
    torch's class step, its own matrix step (bfloat16) and its step at
    ns_steps=0, at torch's thread count.  The step is checked against the
    reference, bit for bit, before it is timed."""
    from fastopt import matrix
    rng = np.random.default_rng(0)
    p = rng.standard_normal(shape).astype(dtype)
    g = (rng.standard_normal(shape) * 1e-2).astype(dtype)
    states = [np.zeros(shape, dtype) for _ in rule.states]
    kp, ks = _check_exact(rule, p, g, states)
    hyper = {h.name: rule.hp[h.name] for h in rule.entry.kernel_hypers}
    fn = getattr(matrix, rule.entry.matrix)
    work = ks[0].copy()
    # the step without products: the two passes and the normalisation of
    # the update (one sum of squares, one division), Newton-Schulz at 0 steps
    bare = Rule(rule.name, rule.entry,
                                      {**rule.hp, "ns_steps": 0},
                                      rule.torch_cls, {**rule.torch_kwargs, "ns_steps": 0})
    calls = {"step": rule.bind(rule.fastopt_fn, kp, g, ks),
             "matrix": lambda: fn(work, hyper),
             "passes": bare.bind(bare.fastopt_fn, kp.copy(), g, [s.copy() for s in ks])}
    med = interleaved(calls, budget, min_reps=5, max_reps=20)
    if torch is not None and rule.torch_cls:
        # timed apart from fastopt's calls, as in measure_size: torch's
        # OpenMP threads and NumPy's BLAS threads each spin a while after
        # their work, and on two cores one pool's spinning slows the other's
        # next call
        tcalls = {}
        cls = getattr(torch.optim, rule.torch_cls)
        for key, row in (("torch_step", rule), ("torch_passes", bare)):
            tp = torch.from_numpy(p.copy())
            tp.grad = torch.from_numpy(g.copy())
            tcalls[key] = cls([tp], **_torch_kwargs(cls, row)).step
        tm = _torch_matrix_step(torch, rule, work, hyper)
        if tm is not None:
            tcalls["torch_matrix"] = tm
        med.update(interleaved(tcalls, budget, min_reps=5, max_reps=20))
    return {"rule": rule.name, "dtype": np.dtype(dtype).name, "shape": list(shape),
            "threads": fastopt.get_num_threads(), "simd": fastopt.get_simd_level(),
            **{f"{k}_s": v for k, v in med.items()}}


def print_matrix_table(records, file=sys.stdout):
    print("rules with a matrix step, ms per step (medians): the step; its matrix "
          "step alone; the step without products (the element-wise passes and "
          "the update's normalisation: ns_steps=0); torch's the same",
          file=file)
    print(f"{'rule':6s} {'dtype':7s} {'shape':>11s} {'step':>8s} {'matrix':>8s} "
          f"{'passes':>7s} {'torch':>8s} {'t.matrix':>8s} {'t.passes':>8s} "
          f"{'xtorch':>6s}", file=file)
    for r in records:
        shape = "x".join(str(d) for d in r["shape"])
        line = (f"{r['rule']:6s} {r['dtype']:7s} {shape:>11s} {1e3 * r['step_s']:8.2f} "
                f"{1e3 * r['matrix_s']:8.2f} {1e3 * r['passes_s']:7.2f}")
        if "torch_step_s" in r:
            line += f" {1e3 * r['torch_step_s']:8.2f}"
            line += (f" {1e3 * r['torch_matrix_s']:8.2f} {1e3 * r['torch_passes_s']:8.2f}"
                     if "torch_matrix_s" in r else f" {'-':>8s} {'-':>8s}")
            line += f" {r['torch_step_s'] / r['step_s']:6.2f}"
        print(line, file=file)


# ---------------------------------------------------------------------------
# fixed costs and many tensors

def _moons_shapes():
    return [(5, 2), (5, 1), (2, 5), (2, 1), (1, 2), (1, 1)]


def _per_call(fn, budget, batch):
    """Median seconds of one call of fn, timed over batches of calls, less
    the cost of calling an empty function the same way."""
    med = interleaved({"x": fn, "empty": lambda: None}, budget, min_reps=5,
                      batch=batch)
    return med["x"] - med["empty"]


def measure_overheads(budget, torch, rng):
    """Fixed costs: calls on tiny arrays, where the work is negligible."""
    out = {}
    p, g = np.ones(10, np.float32), np.full(10, 1e-3, np.float32)
    m, v = np.zeros(10, np.float32), np.zeros(10, np.float32)
    out["functional_adam_10_us"] = 1e6 * _per_call(
        lambda: F.adam(p, g, m, v, step=5, lr=1e-3), budget, 1000)
    try:
        from fastopt.optim import Adam
    except ImportError:
        Adam = None
    if Adam is not None:
        params = {f"p{i}": rng.standard_normal(s) for i, s in enumerate(_moons_shapes())}
        grads = {k: rng.standard_normal(v.shape) * 1e-3 for k, v in params.items()}
        opt = Adam(params, lr=1e-3)
        opt.step(grads)
        out["class_adam_moons_step_us"] = 1e6 * _per_call(
            lambda: opt.step(grads), budget, 1000)
    if torch is not None:
        tp = torch.ones(10)
        tp.grad = torch.full((10,), 1e-3)
        topt = torch.optim.Adam([tp], lr=1e-3, fused=True)
        out["torch_fused_adam_10_us"] = 1e6 * _per_call(topt.step, budget, 50)
    return out


def measure_many(budget, torch, rng, threads):
    """200 tensors of 5,000 float32 elements against one array of 10^6."""
    k, size = 200, 5000
    fastopt.set_num_threads(threads)
    ps = [rng.standard_normal(size).astype(np.float32) for _ in range(k)]
    gs = [(rng.standard_normal(size) * 1e-2).astype(np.float32) for _ in range(k)]
    ms = [np.zeros(size, np.float32) for _ in range(k)]
    vs = [np.zeros(size, np.float32) for _ in range(k)]
    fp = np.concatenate(ps)
    fg = np.concatenate(gs)
    fm, fv = np.zeros_like(fp), np.zeros_like(fp)
    step = [1]

    def many():
        _core.step_many("adam", ps, gs, [ms, vs], step=step[0], lr=1e-3)

    def per_tensor():
        for p, g, m, v in zip(ps, gs, ms, vs):
            F.adam(p, g, m, v, step=step[0], lr=1e-3)

    def flat():
        F.adam(fp, fg, fm, fv, step=step[0], lr=1e-3)

    calls = {"many": many, "per_tensor": per_tensor, "flat": flat}
    try:
        from fastopt.optim import Adam
        cls_params = [p.copy() for p in ps]
        opt = Adam(cls_params, lr=1e-3)
        calls["class"] = lambda: opt.step(gs)
    except ImportError:
        pass
    if torch is not None:
        tps = [torch.from_numpy(p.copy()) for p in ps]
        for tp, g in zip(tps, gs):
            tp.grad = torch.from_numpy(g)
        topt = torch.optim.Adam(tps, lr=1e-3, fused=True)
        calls["torch_fused"] = topt.step
    med = interleaved(calls, budget, min_reps=20)
    fastopt.set_num_threads(None)
    return {f"{k}_ms": v * 1e3 for k, v in med.items()} | {"threads": threads}


def _adam_inplace(p, g, m, v, t, tmp, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """Adam as careful NumPy: every operation in place, one scratch array."""
    m *= b1
    np.multiply(g, 1 - b1, out=tmp)
    m += tmp
    v *= b2
    np.multiply(g, g, out=tmp)
    tmp *= 1 - b2
    v += tmp
    np.sqrt(v, out=tmp)
    tmp *= 1 / math.sqrt(1 - b2 ** t)
    tmp += eps
    np.divide(m, tmp, out=tmp)
    tmp *= lr / (1 - b1 ** t)
    p -= tmp


def _adam_seed(params, grads, v, s, t, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """Adam as the seed's course writes it: new arrays bound into dicts."""
    v["dW"] = b1 * v["dW"] + (1 - b1) * grads["dW"]
    v_corrected = v["dW"] / (1 - b1 ** t)
    s["dW"] = b2 * s["dW"] + (1 - b2) * np.power(grads["dW"], 2)
    s_corrected = s["dW"] / (1 - b2 ** t)
    params["W"] = params["W"] - lr * v_corrected / (np.sqrt(s_corrected) + eps)


def measure_numpy_styles(n, budget, rng):
    """Adam float32 on one thread: fastopt against careful in-place NumPy and
    the seed's style of NumPy code."""
    fastopt.set_num_threads(1)
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    arrays = {k: [p.copy(), np.zeros_like(p), np.zeros_like(p)] for k in ("f", "i")}
    tmp = np.empty_like(p)
    seed_params, seed_grads = {"W": p.copy()}, {"dW": g}
    seed_v, seed_s = {"dW": np.zeros_like(p)}, {"dW": np.zeros_like(p)}
    fp, fm, fv = arrays["f"]
    ip, im, iv = arrays["i"]
    med = interleaved({
        "fastopt": lambda: F.adam(fp, g, fm, fv, step=3, lr=1e-3),
        "inplace": lambda: _adam_inplace(ip, g, im, iv, 3, tmp),
        "seed": lambda: _adam_seed(seed_params, seed_grads, seed_v, seed_s, 3),
    }, budget)
    fastopt.set_num_threads(None)
    return {"n": n, **{f"{k}_ms": v * 1e3 for k, v in med.items()}}


def measure_around(n, threads, budget, rng):
    """What EMA and gradient accumulation add to a float32 Adam step of n
    elements (class steps over one tensor), beside the traffic floor of the
    arrays each moves: a step reads p, g, m, v and writes p, m, v (7 arrays);
    with EMA the average is read and written too (9); the k-th call of an
    accumulation window reads p, g, acc, m, v and writes p, acc, m, v (9);
    the other calls read acc and g and write acc (3)."""
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    arrays = [np.zeros(n, np.float32) for _ in range(6)]
    opts = {"plain": fastopt.Adam([p.copy()]),
            "ema": fastopt.Adam([p.copy()], ema_decay=0.999),
            "window": fastopt.Adam([p.copy()], accumulation_steps=2)}
    for opt in opts.values():       # states made, averages started
        opt.step([g])
        opt.step([g])
    fastopt.set_num_threads(threads)
    a = arrays

    calls = {
        "step": lambda: opts["plain"].step([g]),
        "ema_step": lambda: opts["ema"].step([g]),
        "window_of_2": lambda: (opts["window"].step([g]), opts["window"].step([g])),
        "floor_7": lambda: _core.traffic(a[0], g, a[1], a[2]),
        "floor_9": lambda: _core.traffic(a[0], g, a[1], a[2], a[3]),
        "floor_3": lambda: _core.traffic(a[4], g),
    }
    med = interleaved(calls, budget)
    fastopt.set_num_threads(None)
    return {"n": n, "threads": threads, **{f"{k}_ms": v * 1e3 for k, v in med.items()}}


def measure_nonfinite(sizes, budget, rng):
    """Cost of the all-finite gradient check against an Adam step, float32."""
    out = []
    for n in sizes:
        g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
        p = rng.standard_normal(n).astype(np.float32)
        m, v = np.zeros_like(p), np.zeros_like(p)
        med = interleaved({
            "check": lambda: _core.grad_allfinite([g]),
            "adam": lambda: F.adam(p, g, m, v, step=2, lr=1e-3)}, budget)
        out.append({"n": n, "check_s": med["check"], "adam_s": med["adam"]})
    return out


# ---------------------------------------------------------------------------
# report

def _ns(rec, key):
    return rec[key] * 1e9 / rec["n"]


def _torch_keys(records):
    return sorted({k for r in records for k in r if k.startswith("torch_")})


def _cells(r, torch_keys, missing):
    """A record's row as text: rule, dtype, elements, threads, fastopt and
    floor ns per element, GB/s over the minimal bytes, %floor, NumPy's and
    each torch path's time over fastopt's (``missing`` where it has none)."""
    t = r["fastopt_s"]
    return ([r["rule"], r["dtype"], f"{r['n']:.0e}", str(r["threads"]),
             f"{_ns(r, 'fastopt_s'):.3f}", f"{_ns(r, 'floor_s'):.3f}",
             f"{r['bytes'] / t / 1e9:.1f}", f"{100 * r['floor_s'] / t:.0f}%",
             f"{r['numpy_s'] / t:.1f}"]
            + [f"{r[k] / t:.2f}" if k in r else missing for k in torch_keys])


def print_table(records, file=sys.stdout):
    torch_keys = _torch_keys(records)
    names = ["rule", "dtype", "n", "thr", "fastopt", "floor", "GB/s", "%floor",
             "xnumpy"] + ["x" + k[6:-2] for k in torch_keys]
    widths = [-8, -7, 9, 3, 8, 8, 6, 6, 7] + [15] * len(torch_keys)

    def line(cells):
        return " ".join(c.ljust(-w) if w < 0 else c.rjust(w) for c, w in zip(cells, widths))

    print("ns per element (medians); GB/s over minimal bytes; "
          "%floor = floor time / fastopt time; xN = N's time / fastopt's", file=file)
    print(line(names), file=file)
    for r in records:
        print(line(_cells(r, torch_keys, "-")), file=file)


def _torch_column(key):
    """'torch_foreach_2t_s' -> ('foreach', 2): a torch column's path and
    thread count."""
    impl, threads = key[len("torch_"):-len("_s")].rsplit("_", 1)
    return impl, int(threads[:-1])


def _markdown_head(cols):
    """A markdown table's heading and rule lines: the two text columns (rule,
    dtype) left-aligned, the figures right-aligned."""
    return ["| " + " | ".join(cols) + " |",
            "|" + "|".join("---" if i < 2 else "---:" for i in range(len(cols))) + "|"]


def markdown_table(records, header=None):
    """The records as a GitHub markdown table, the columns of print_table:
    ns per element of fastopt and of its traffic floor, GB/s over the
    minimal bytes, the floor's share, and NumPy's and each torch path's time
    over fastopt's.  ``header``: a line put above the table."""
    order = {"fused": 0, "foreach": 1, "forloop": 2}
    torch_keys = sorted(_torch_keys(records),
                        key=lambda k: (order.get(_torch_column(k)[0], 3),
                                       _torch_column(k)[0], -_torch_column(k)[1]))
    cols = ["rule", "dtype", "elements", "threads", "fastopt ns/el", "floor ns/el",
            "GB/s", "%floor", "× NumPy"]
    cols += ["× torch %s %dt" % _torch_column(k) for k in torch_keys]
    lines = ([] if header is None else [header, ""]) + _markdown_head(cols)
    for r in records:
        lines.append("| " + " | ".join(_cells(r, torch_keys, "–")) + " |")
    return "\n".join(lines) + "\n"


def _fastest_torch(r):
    """The fastest torch path measured at the record's thread count, as
    (seconds, path), or None when there is none."""
    suffix = f"_{r['threads']}t_s"
    times = [(r[k], _torch_column(k)[0]) for k in r
             if k.startswith("torch_") and k.endswith(suffix)]
    return min(times) if times else None


def summary_table(records):
    """One markdown row per rule and dtype: the floor's share at the largest
    size on each thread count; at the largest thread count, the fastest
    torch path's time over fastopt's at each size (the path in brackets) and
    NumPy's at the largest size.  "–" where a record or a peer is missing."""
    sizes = sorted({r["n"] for r in records})
    threads = sorted({r["threads"] for r in records})
    big, top = sizes[-1], threads[-1]
    index = {(r["rule"], r["dtype"], r["n"], r["threads"]): r for r in records}
    cols = (["rule", "dtype"] + [f"%floor {big:.0e} {t}t" for t in threads]
            + [f"× torch {n:.0e} {top}t" for n in sizes] + [f"× NumPy {big:.0e} {top}t"])
    lines = _markdown_head(cols)
    for rule, dtype in dict.fromkeys((r["rule"], r["dtype"]) for r in records):
        cells = [rule, dtype]
        for t in threads:
            r = index.get((rule, dtype, big, t))
            cells.append("–" if r is None else f"{100 * r['floor_s'] / r['fastopt_s']:.0f}%")
        for n in sizes:
            r = index.get((rule, dtype, n, top))
            peer = None if r is None else _fastest_torch(r)
            cells.append("–" if peer is None
                         else f"{peer[0] / r['fastopt_s']:.2f} ({peer[1]})")
        r = index.get((rule, dtype, big, top))
        cells.append("–" if r is None else f"{r['numpy_s'] / r['fastopt_s']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(records, path):
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print("no matplotlib: pip install matplotlib (or fastopt[plot]) for the plot")
        return None
    rules = list(dict.fromkeys(r["rule"] for r in records))
    maxthreads = max(r["threads"] for r in records)
    # four panels a row: the default run's 23 rules in one row would make a
    # figure a hundred inches wide
    ncols = min(4, len(rules))
    nrows = -(-len(rules) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows),
                             squeeze=False)
    for ax in axes.flat[len(rules):]:
        ax.set_visible(False)
    for ax, rule in zip(axes.flat, rules):
        rs = [r for r in records if r["rule"] == rule and r["threads"] == maxthreads
              and r["dtype"] == "float32"] or \
             [r for r in records if r["rule"] == rule and r["threads"] == maxthreads]
        ns = [r["n"] for r in rs]
        for key, label in [("fastopt_s", "fastopt"), ("floor_s", "traffic floor"),
                           ("numpy_s", "NumPy reference"),
                           (f"torch_fused_{_torch_default_key(rs)}", "torch fused"),
                           (f"torch_foreach_{_torch_default_key(rs)}", "torch foreach")]:
            if all(key in r for r in rs):
                ax.plot(ns, [r["bytes"] / r[key] / 1e9 for r in rs], marker="o",
                        label=label)
        big = [r for r in rs if r["n"] >= 10**7]
        if big:
            bw = max(r["bytes"] / r["floor_s"] / 1e9 for r in big)
            ax.axhline(bw, color="gray", ls="--", lw=1, label=f"bandwidth {bw:.0f} GB/s")
        ax.set_xscale("log")
        ax.set_title(f"{rule} {rs[0]['dtype']}, {maxthreads} threads")
        ax.set_xlabel("elements")
        ax.set_ylabel("GB/s (minimal bytes)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _torch_default_key(rs):
    for k in rs[0]:
        if k.startswith("torch_fused_") and not k.endswith("_1t_s"):
            return k[len("torch_fused_"):]
    return "1t_s"


def main(args):
    if getattr(args, "distributed", False):
        from fastopt.harness import distributed_bench
        return distributed_bench.main(args)
    if getattr(args, "sklearn", False):
        return sklearn_bench.main(args)
    if getattr(args, "state_dtypes", False):
        return state_bench.main(args, None if args.no_torch else _torch())
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        print(f"unknown rules: {', '.join(unknown)}; choose among {', '.join(RULES)}",
              file=sys.stderr)
        return 2
    dtypes = [np.dtype(d.strip()).type for d in args.dtypes.split(",")]
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    ncpu = os.cpu_count() or 1
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else sorted({1, fastopt.get_num_threads()}))
    torch = None if args.no_torch else _torch()
    torch_default = torch.get_num_threads() if torch is not None else None
    budget = _budget(args.quick)
    rng = np.random.default_rng(0)
    if args.parallel_threshold is not None:
        _core.set_parallel_threshold(args.parallel_threshold)

    print(f"fastopt {fastopt.__version__} bench: {platform.machine()}, {ncpu} CPUs, "
          f"SIMD {fastopt.get_simd_level()}, numpy {np.__version__}"
          + (f", torch {torch.__version__} ({torch_default} threads)" if torch else
             ", torch not installed")
          + f"; threads from {_core.get_parallel_threshold()} elements")
    records = []
    matrix_records = []
    t_start = time.perf_counter()
    for name in rules:
        if RULES[name].entry.matrix:
            for dtype in dtypes:
                for shape in MATRIX_SHAPES:
                    rec = measure_matrix(RULES[name], dtype, shape, budget, torch)
                    matrix_records.append(rec)
                    print(f"  {name} {np.dtype(dtype).name} {shape}: step "
                          f"{1e3 * rec['step_s']:.2f} ms, matrix step "
                          f"{1e3 * rec['matrix_s']:.2f} ms", file=sys.stderr)
            continue
        for dtype in dtypes:
            for n in sizes:
                recs = measure_size(RULES[name], dtype, n, threads, budget, torch,
                                    rng, torch_default)
                records += recs
                for r in recs:
                    print(f"  {name} {np.dtype(dtype).name} n={n:.0e} "
                          f"threads={r['threads']}: {_ns(r, 'fastopt_s'):.3f} ns/el "
                          f"({100 * r['floor_s'] / r['fastopt_s']:.0f}% of floor)",
                          file=sys.stderr)
    print()
    print_table(records)
    if matrix_records:
        print()
        print_matrix_table(matrix_records)

    extra = {"overheads": measure_overheads(budget, torch, rng),
             "many_tensors": [measure_many(budget, torch, rng, t) for t in threads],
             "nonfinite_check": measure_nonfinite(sizes, budget, rng)}
    if "adam" in rules and np.float32 in dtypes:
        n_big = 10**7 if not args.quick else 10**6
        extra["numpy_styles"] = measure_numpy_styles(n_big, budget, rng)
        extra["around"] = [measure_around(n_big, t, budget, rng) for t in threads]
    o = extra["overheads"]
    print()
    print(f"fixed cost: functional adam on 10 elements {o['functional_adam_10_us']:.3f} us"
          + (f"; class Adam step on the 6-tensor moons model "
             f"{o['class_adam_moons_step_us']:.2f} us" if "class_adam_moons_step_us" in o else "")
          + (f"; torch fused Adam on 10 elements {o['torch_fused_adam_10_us']:.1f} us"
             if "torch_fused_adam_10_us" in o else ""))
    for m in extra["many_tensors"]:
        parts = ", ".join(f"{k[:-3]} {v:.3f} ms" for k, v in m.items() if k.endswith("_ms"))
        print(f"200 x 5000 float32 Adam, {m['threads']} thread(s): {parts}; "
              f"many/flat = {m['many_ms'] / m['flat_ms']:.2f}")
    print("non-finite check (float32) as a share of an Adam step: " + ", ".join(
        f"n={c['n']:.0e} {100 * c['check_s'] / c['adam_s']:.0f}%"
        for c in extra["nonfinite_check"]))
    if "numpy_styles" in extra:
        st = extra["numpy_styles"]
        print(f"Adam float32, {st['n']:.0e} elements, 1 thread: fastopt "
              f"{st['fastopt_ms']:.2f} ms, careful in-place NumPy {st['inplace_ms']:.2f} ms "
              f"({st['inplace_ms'] / st['fastopt_ms']:.1f}x), the seed's NumPy "
              f"{st['seed_ms']:.2f} ms ({st['seed_ms'] / st['fastopt_ms']:.1f}x)")
    for m in extra.get("around", []):
        print(f"Adam float32, {m['n']:.0e} elements, {m['threads']} thread(s): step "
              f"{m['step_ms']:.2f} ms (floor of 7 arrays {m['floor_7_ms']:.2f}); with "
              f"EMA {m['ema_step_ms']:.2f} ms (floor of 9 {m['floor_9_ms']:.2f}); "
              f"accumulation_steps=2, both calls {m['window_of_2_ms']:.2f} ms (floors "
              f"3 + 9 arrays {m['floor_3_ms'] + m['floor_9_ms']:.2f})")
    print(f"\ntotal bench time {time.perf_counter() - t_start:.0f} s")
    command = command_line(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "config": fastopt._config.config(),
                       "records": records,
                       "matrix_records": matrix_records, **extra}, f, indent=1,
                      default=str)
        print(f"wrote {args.json}")
    if args.markdown and records:
        torch_note = (f"torch {torch.__version__} (× columns: torch's time over "
                      f"fastopt's, torch at the threads named)" if torch else
                      "torch not measured")
        header = (f"`{command}`: fastopt {fastopt.__version__}, "
                  f"{platform.machine()}, {ncpu} CPUs, SIMD {fastopt.get_simd_level()}, "
                  f"NumPy {np.__version__}, {torch_note}; ns per element, medians; "
                  f"%floor = floor time / fastopt time")
        with open(args.markdown, "w") as f:
            f.write(header + "\n\nSummary: the floor's share at the largest size; the "
                    "fastest torch path's time over fastopt's at each size and "
                    "NumPy's at the largest, at the largest thread count\n\n")
            f.write(summary_table(records))
            f.write("\nEvery record\n\n")
            f.write(markdown_table(records))
        print(f"wrote {args.markdown}")
    if args.plot and records:
        if plot(records, args.plot):
            print(f"wrote {args.plot}")
    return 0
