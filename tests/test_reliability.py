"""The optimizer classes over long runs: memory (RSS over 10^4 create /
step / destroy cycles), reference counts of the arguments of a step, and
eight Python threads each with its own optimizer.  (Functional-call leaks,
GIL release and one optimizer shared by two threads are tested in
test_runtime_safety.py and test_optim.py.)"""
import gc
import os
import sys
import threading

import numpy as np
import pytest

import fastopt
from fastopt import FlatParams
from fastopt.optim import SGD, Adagrad, Adam, AdamW, Momentum, RMSprop
from fastopt.rules import RULES

CLASSES = [
    (SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (Momentum, dict(lr=0.1)),
    (RMSprop, dict(centered=True, momentum=0.5)),
    (Adam, dict(amsgrad=True, weight_decay=0.1)),
    (AdamW, dict()),
    (Adagrad, dict(lr_decay=0.01, initial_accumulator_value=0.1)),
]
# every other class of the table, at its defaults
CLASSES += [(getattr(fastopt, name), dict()) for rule in RULES.values()
            for name, *_ in rule.classes()
            if getattr(fastopt, name) not in {c for c, _ in CLASSES}]


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _model(rng):
    return [{"params": {"w": rng.standard_normal((8, 4)),
                        "b": rng.standard_normal(8).astype(np.float32)}},
            {"params": {"v": rng.standard_normal(17).astype(np.float32)}, "lr": 0.01}]


def _grads(rng):
    return {"w": rng.standard_normal((8, 4)), "b": rng.standard_normal(8).astype(np.float32),
            "v": rng.standard_normal(17).astype(np.float32)}


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer's quarantine holds freed memory")
def test_no_leak_over_ten_thousand_optimizer_lifetimes():
    """10^4 cycles of: construct (two groups, two dtypes), two steps (one
    with a None grad), state_dict + load_state_dict, a refused step, drop."""
    rng = np.random.default_rng(0)
    sets = {}
    for matrices in (False, True):     # a rule with a matrix step takes matrices
        groups = _model(rng)
        grads = _grads(rng)
        if matrices:
            for g in groups:
                g["params"] = {k: v.reshape(1, -1) for k, v in g["params"].items()}
            grads = {k: v.reshape(1, -1) for k, v in grads.items()}
        sets[matrices] = (groups, grads, dict(grads, b=None), dict(grads, w=np.zeros(3)))

    def cycle(i):
        cls, kw = CLASSES[i % len(CLASSES)]
        groups, grads, partial, bad = sets[bool(cls.rule.matrix)]
        opt = cls(groups, **kw)
        opt.step(grads)
        opt.step(partial)
        opt.load_state_dict(opt.state_dict())
        try:
            opt.step(bad)
        except ValueError:
            pass

    for i in range(3000):     # warm up: allocator pools and NumPy's bounded caches
        cycle(i)
    gc.collect()
    start = _rss_bytes()
    for i in range(10_000):
        cycle(i)
    gc.collect()
    growth = _rss_bytes() - start
    print(f"RSS growth over 10^4 optimizer lifetimes: {growth} bytes")
    assert growth <= 1 << 20, f"RSS grew by {growth} bytes"


@pytest.mark.parametrize("cls,kw", CLASSES, ids=[c.__name__ for c, _ in CLASSES])
@pytest.mark.parametrize("flat", [False, True], ids=["arrays", "flat"])
def test_step_leaves_reference_counts_alone(cls, kw, flat):
    rng = np.random.default_rng(1)
    b = (2, 4) if cls.rule.matrix else 8     # a rule with a matrix step takes matrices
    if flat:
        fp = FlatParams({"w": rng.standard_normal((8, 4)), "b": rng.standard_normal(b)})
        params, grads = fp.params, fp.grads
    else:
        params = {"w": rng.standard_normal((8, 4)), "b": rng.standard_normal(b)}
        grads = {"w": rng.standard_normal((8, 4)), "b": rng.standard_normal(b)}
    opt = cls(params, **kw)
    # Warm up: the first step allocates the states, and from the second on
    # the optimizer keeps one reference to each parameter (a cache; it does
    # not grow), so the counts are taken after two steps and a refused one.
    opt.step(grads)
    opt.step(grads)
    try:
        opt.step({**grads, "w": np.zeros(2)})
    except ValueError:
        pass
    lists = [grads, params] + list(grads.values()) + list(params.values())
    before = [sys.getrefcount(o) for o in lists]
    for _ in range(200):
        opt.step(grads)
    for _ in range(50):
        try:
            opt.step({**grads, "w": np.zeros(2)})
        except ValueError:
            pass
    opt.state_dict()
    after = [sys.getrefcount(o) for o in lists]
    assert after == before


def _run(seed, steps, out, key):
    rng = np.random.default_rng(seed)
    cls, kw = CLASSES[seed % len(CLASSES)]
    groups = _model(rng)
    params = {**groups[0]["params"], **groups[1]["params"]}
    opt = cls(groups, **kw)
    grads = [_grads(rng) for _ in range(8)]
    for t in range(steps):
        g = grads[t % 8]
        opt.step(dict(g, b=None) if t % 5 == 4 else g)
    sd = opt.state_dict()
    out[key] = ({k: p.tobytes() for k, p in params.items()},
                {i: {k: v.tobytes() if isinstance(v, np.ndarray) else v
                     for k, v in e.items()} for i, e in sd["state"].items()})


def test_eight_threads_each_with_an_optimizer_equal_serial_runs():
    steps = 1000
    serial, threaded = {}, {}
    for i in range(8):
        _run(i, steps, serial, i)
    errors = []

    def worker(i):
        try:
            _run(i, steps, threaded, i)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and not any(t.is_alive() for t in threads)
    assert threaded == serial
