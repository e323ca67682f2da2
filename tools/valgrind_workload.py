"""A short run of every kernel and optimizer class, for tools/valgrind.sh.

Driven by the rule table: every rule's functional entry point and every
optimizer class, both dtypes, sizes around the vector widths, the threaded
path, bfloat16 and 8-bit states (with and without prefetching), the weight
average and accumulation, error paths, and the checkpoint round trip."""
import inspect
import os
import tempfile

import numpy as np

import fastopt
from fastopt import _core
from fastopt import functional as F
from fastopt.harness.bench import RULES as ROWS, _arrays
from fastopt.rules import RULES

rng = np.random.default_rng(0)
default_threshold = _core.get_parallel_threshold()
default_prefetch = _core.get_prefetch_threshold()


def arrays(n, dtype, k):
    return [rng.standard_normal(n).astype(dtype) for _ in range(k)]


unexpected = []


def attempt(what, fn):
    try:
        fn()
    except Exception as exc:   # reported at the end: the run should have none
        unexpected.append(f"{what}: {type(exc).__name__}: {exc}")


# every rule's functional entry point (the bench's table of rows), both
# dtypes, sizes around the vector widths, one thread and the threaded path
calls = 0
for threshold in (default_threshold, 1):
    _core.set_parallel_threshold(threshold)
    for name, row in ROWS.items():
        for dtype in (np.float32, np.float64):
            for n in (0, 1, 7, 17, 33, 1000):
                if row.entry.matrix and n == 0:
                    continue
                p, g, states = _arrays(row, n, dtype, rng)
                for step in (1, 2, 3):
                    attempt(f"{name} {np.dtype(dtype)} n={n} step={step}",
                            lambda: row.call(row.fastopt_fn, p, g, states, step))
                    calls += 1
    for dtype in (np.float32, np.float64):
        # the options with extra states (the rows run the defaults)
        for n in (0, 1, 7, 17, 33, 1000):
            p, g, a, b, c = arrays(n, dtype, 5)
            a, b, c = np.abs(a), np.abs(b), np.abs(c)
            for step in (1, 2):
                F.sgd(p, g, a, lr=0.1, momentum=0.9, nesterov=True, step=step)
                F.rmsprop(p, g, a, b, c, centered=True, momentum=0.5)
                F.adam(p, g, a, b, c, step=step, amsgrad=True, weight_decay=0.1)
                F.adagrad(p, g, a, step=step, lr_decay=0.1)
        p, g, a, b = arrays(1000, dtype, 4)
        _core.grad_sumsq([g, g.copy()])
        _core.grad_allfinite([g])
        _core.grad_scale_([g], 0.5)
        _core.grad_clamp_([g], 0.1)
        for bad in (lambda: F.adam(p, g.astype(np.float16), a, b, step=1),
                    lambda: F.adam(p, g, a, a, step=1),
                    lambda: F.sgd(p, g, lr=-1.0)):
            try:
                bad()
            except (TypeError, ValueError):
                pass
_core.set_parallel_threshold(default_threshold)


def hypers(rule, name):
    """The class's defaults with every optional state switched on."""
    cls = getattr(fastopt, name)
    probe = np.zeros((2, 2) if rule.matrix else 1, np.float32)
    h = dict(cls([probe]).defaults)
    for st in rule.states:
        if st.when is not None:
            h[st.when] = True if rule.hyper(st.when).check == "flag" else 0.5
    accepted = inspect.signature(cls).parameters
    return {k: v for k, v in h.items() if k in accepted and k != "params"}


# every optimizer class of the table: both dtypes, bfloat16 and 8-bit states
# where the rule has them, the weight average and accumulation, checkpoints
shapes = [(5, 2), (5, 1), (2, 5), (2, 1), (1, 2), (1, 1), (300, 3)]
steps = 0
for rule in RULES.values():
    for name, *_ in rule.classes():
        cls = getattr(fastopt, name)
        h = hypers(rule, name)
        variants = [(np.float32, {}), (np.float64, {}),
                    (np.float32, {"ema_decay": 0.9, "accumulation_steps": 2})]
        low = []
        if rule.states and not rule.reductions and not rule.matrix:
            low = [(np.float32, {"state_dtype": "bfloat16"}),
                   (np.float32, {"state_dtype": "8bit"})]
        # the low-precision loops once more with prefetching (threshold 0),
        # on a tensor long enough for their prefetches to be issued
        variants = ([(d, e, False) for d, e in variants + low]
                    + [(d, e, True) for d, e in low])
        for dtype, extra, prefetch in variants:
            params = {f"w{i}": rng.standard_normal(sh).astype(dtype)
                      for i, sh in enumerate(shapes + [(3000, 2)] * prefetch)
                      if not rule.matrix or min(sh) > 1}
            grads = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()}

            def run():
                opt = cls(params, **h, **extra)
                for _ in range(4):
                    opt.step(grads)
                with tempfile.TemporaryDirectory() as d:
                    path = os.path.join(d, "ckpt.npz")
                    opt.save(path)
                    opt.load(path)
                opt.load_state_dict(opt.state_dict())
                opt.step(grads)

            def run_prefetching():
                _core.set_prefetch_threshold(0)
                try:
                    run()
                finally:
                    _core.set_prefetch_threshold(default_prefetch)
            attempt(f"{name} {np.dtype(dtype)} {extra}{' prefetching' * prefetch}",
                    run_prefetching if prefetch else run)
            steps += 1

print(f"workload: {calls} functional calls, {steps} optimizer runs")
for u in unexpected:
    print("unexpected:", u)
print("workload done" if not unexpected else "workload had unexpected errors")
