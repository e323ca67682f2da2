"""The cases of the MPI tests, shared by tests/test_distributed.py (one
process, the reference) and tests/mpi_worker.py (every rank, sharded).

Gradients depend on (case, step, rank) through a seed alone, so any process
can make any rank's gradient; the reference steps the single-process class
on their mean summed in rank order, as ShardedOptimizer promises to.
"""
import numpy as np

import fastopt
import fastopt.rules

# Odd sizes: with 2 or 3 ranks the 9000-element parameter straddles shard
# boundaries, which also cut its 4096-element sum-of-squares blocks (at 4
# ranks one block spans three shards), and the last shard is padded.  The
# per-tensor sums of LAMB and LARS are put together across those cuts.
SHAPES = [(7, 3), (9000,), (1,), (13,)]
NAMES = ["w", "big", "b", "c"]
STEPS = 3

# Hyperparameters that switch a class's optional states and branches on.
EXTRA = {
    "SGD": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    "Adam": {"amsgrad": True, "weight_decay": 0.01},
    "RMSprop": {"centered": True, "momentum": 0.5},
    "LAMB": {"weight_decay": 0.01},
    "LARS": {"nesterov": True, "weight_decay": 0.01},
}


def _cases():
    cases = []
    for rule in fastopt.rules.RULES.values():
        if getattr(rule, "matrix", ""):
            continue     # matrix rules are refused by ShardedOptimizer
        for cls, *_ in rule.classes():
            for dtype in ("float32", "float64"):
                cases.append((f"{cls}-{dtype}", cls, EXTRA.get(cls, {}), dtype, None))
    # clipping by the global norm, active at every step (norms are ~95)
    cases.append(("Adam-clip-float32", "Adam", {}, "float32", 1.0))
    cases.append(("SGD-clip-float64", "SGD", {"momentum": 0.9}, "float64", 5.0))
    # averages of the weights and accumulation windows (both lerp branches:
    # weights 0.1 and 0.7), on element-wise and two-pass rules
    cases.append(("Adam-ema-acc-float32", "Adam", {"ema_decay": 0.9, "accumulation_steps": 2},
                  "float32", None))
    cases.append(("LAMB-ema-acc-clip-float64", "LAMB",
                  {"weight_decay": 0.01, "ema_decay": 0.3, "accumulation_steps": 3},
                  "float64", 5.0))
    cases.append(("LARS-ema-float32", "LARS", {"ema_decay": 0.9}, "float32", None))
    cases.append(("NAdam-acc-float64", "NAdam", {"accumulation_steps": 2}, "float64", None))
    # bfloat16 states: each part of a shard draws its parameter's random
    # bits; rules with one to three states, scalar states, start values
    # from the hyperparameters and from the group's lr
    bf16 = {"state_dtype": "bfloat16", "seed": 12345}
    for cls, extra in (("Adam", EXTRA["Adam"]), ("SGD", EXTRA["SGD"]), ("NAdam", {}),
                       ("Adagrad", {"initial_accumulator_value": 0.1}), ("Rprop", {}),
                       ("AdEMAMix", {}), ("RMSprop", EXTRA["RMSprop"])):
        cases.append((f"{cls}-bfloat16", cls, {**extra, **bf16}, "float32", None))
    cases.append(("Adam-bfloat16-ema-acc-clip", "Adam",
                  {**bf16, "ema_decay": 0.9, "accumulation_steps": 2}, "float32", 1.0))
    # 8-bit states: every parameter (here 21, 9000, 1 and 13 elements, none
    # a multiple of 256) starts on a block boundary of the flat layout, so
    # every part of a shard is whole blocks of its parameter
    q8 = {"state_dtype": "8bit", "seed": 777}
    cases.append(("Adam-8bit", "Adam", {**EXTRA["Adam"], **q8}, "float32", None))
    cases.append(("SGD-8bit", "SGD", {**EXTRA["SGD"], **q8}, "float32", None))
    cases.append(("Adam-8bit-ema-acc-clip", "Adam",
                  {**q8, "ema_decay": 0.9, "accumulation_steps": 2}, "float32", 1.0))
    return cases


CASES = _cases()
# Checkpoints are written with fsync: resharding is checked on the rules
# with scalar states, the most states, and clipping.
RESHARD_CASES = [c for c in CASES if c[0] in (
    "Adam-float32", "NAdam-float64", "ASGD-float32", "AdEMAMix-float64",
    "Rprop-float32", "SGD-clip-float64", "LAMB-float32", "Adam-ema-acc-float32",
    "Adam-bfloat16", "Rprop-bfloat16", "Adam-bfloat16-ema-acc-clip",
    "Adam-8bit", "Adam-8bit-ema-acc-clip")]
# Levels and threads are the kernels' business, checked at length by their
# own tests; here a few cases per level.
LEVEL_CASES = CASES[::5] + [c for c in CASES if c[0] == "LAMB-ema-acc-clip-float64"
                            and c not in CASES[::5]]


def start(dtype):
    rng = np.random.default_rng(7)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def grads(case_id, t, q, dtype):
    rng = np.random.default_rng([sum(map(ord, case_id)), t, q])
    return [(rng.standard_normal(s) * 0.5).astype(dtype) for s in SHAPES]


def micro(case_id, t, i, q, dtype):
    """Rank q's gradient at call i of window t (call 0: grads())."""
    return grads(case_id if i == 0 else f"{case_id}|{i}", t, q, dtype)


def window_mean(case_id, t, P, dtype, k):
    """With accumulation_steps=k: each rank's k gradients summed in call
    order from zeros, the sums added in rank order, divided by P (P > 1),
    then by k, in the gradients' dtype."""
    if k == 1:
        return mean(case_id, t, P, dtype)
    sums = []
    for q in range(P):
        acc = [np.zeros(s, dtype) for s in SHAPES]
        for i in range(k):
            for a, g in zip(acc, micro(case_id, t, i, q, dtype)):
                a += g
        sums.append(acc)
    total = sums[0]
    for q in range(1, P):
        for a, g in zip(total, sums[q]):
            a += g
    for a in total:
        if P > 1:
            a /= a.dtype.type(P)
        a /= a.dtype.type(k)
    return total


def mean(case_id, t, P, dtype):
    """(((g_0 + g_1) + g_2) + ...) / P, in the gradients' dtype."""
    total = [g.copy() for g in grads(case_id, t, 0, dtype)]
    for q in range(1, P):
        for a, g in zip(total, grads(case_id, t, q, dtype)):
            a += g
    if P > 1:
        for a in total:
            a /= a.dtype.type(P)
    return total


def reference(case, world_sizes):
    """One process stepping the class on the mean gradients; the world size
    of each step is given (a checkpoint may be resumed on another).
    Returns (params, optimizer, norms); the optimizer steps once per
    window, on the window's mean, without accumulating itself."""
    case_id, cls, hyper, dtype, max_norm = case
    hyper = dict(hyper)
    k = hyper.pop("accumulation_steps", 1)
    params = dict(zip(NAMES, start(dtype)))
    opt = getattr(fastopt, cls)(params, **hyper)
    norms = []
    for t, P in enumerate(world_sizes):
        g = dict(zip(NAMES, window_mean(case_id, t, P, dtype, k)))
        if max_norm is not None:
            norms.append(fastopt.clip_grad_norm_(g, max_norm))
        opt.step(g)
    return params, opt, norms


# None gradients: rank q passes None for parameter "b" at odd q and for "c"
# at rank 0 in step 1 (zeros from those ranks); "w" is None on every rank in
# the call after the last step (refused on every rank, nothing changed).
NONE_CASES = [c for c in CASES if c[0] in ("Adam-float32", "LAMB-float64",
                                           "NAdam-acc-float64")]


def none_grads(case_id, t, i, q, dtype):
    """micro() with the None gradients above, as a dict."""
    g = dict(zip(NAMES, micro(case_id, t, i, q, dtype)))
    if q % 2 == 1:
        g["b"] = None
    if q == 0 and t == 1:
        g["c"] = None
    return g


def none_reference(case, P):
    """One process on the mean with zeros for the None gradients."""
    case_id, cls, hyper, dtype, _ = case
    hyper = dict(hyper)
    k = hyper.pop("accumulation_steps", 1)
    params = dict(zip(NAMES, start(dtype)))
    opt = getattr(fastopt, cls)(params, **hyper)
    for t in range(STEPS):
        total = None
        for q in range(P):
            acc = {n: np.zeros(s, dtype) for n, s in zip(NAMES, SHAPES)}
            for i in range(k):
                for n, g in none_grads(case_id, t, i, q, dtype).items():
                    if g is not None:
                        acc[n] += g
            if total is None:
                total = acc
            else:
                for n in NAMES:
                    total[n] += acc[n]
        for n in NAMES:
            if P > 1:
                total[n] /= total[n].dtype.type(P)
            if k > 1:
                total[n] /= total[n].dtype.type(k)
        opt.step(total)
    return params
