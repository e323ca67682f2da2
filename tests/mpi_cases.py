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
# boundaries, which also cut its 4096-element sum-of-squares blocks, and the
# last shard is padded.
SHAPES = [(7, 3), (9000,), (1,), (13,)]
NAMES = ["w", "big", "b", "c"]
STEPS = 3

# Hyperparameters that switch a class's optional states and branches on.
EXTRA = {
    "SGD": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    "Adam": {"amsgrad": True, "weight_decay": 0.01},
    "RMSprop": {"centered": True, "momentum": 0.5},
}


def _cases():
    cases = []
    for rule in fastopt.rules.RULES.values():
        if getattr(rule, "reductions", ()) or getattr(rule, "matrix", ""):
            continue     # per-tensor and matrix rules are refused by ShardedOptimizer
        for cls, *_ in rule.classes():
            for dtype in ("float32", "float64"):
                cases.append((f"{cls}-{dtype}", cls, EXTRA.get(cls, {}), dtype, None))
    # clipping by the global norm, active at every step (norms are ~95)
    cases.append(("Adam-clip-float32", "Adam", {}, "float32", 1.0))
    cases.append(("SGD-clip-float64", "SGD", {"momentum": 0.9}, "float64", 5.0))
    return cases


CASES = _cases()
# Checkpoints are written with fsync: resharding is checked on the rules
# with scalar states, the most states, and clipping.
RESHARD_CASES = [c for c in CASES if c[0] in (
    "Adam-float32", "NAdam-float64", "ASGD-float32", "AdEMAMix-float64",
    "Rprop-float32", "SGD-clip-float64")]
# Levels and threads are the kernels' business, checked at length by their
# own tests; here a few cases per level.
LEVEL_CASES = CASES[::5]


def start(dtype):
    rng = np.random.default_rng(7)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def grads(case_id, t, q, dtype):
    rng = np.random.default_rng([sum(map(ord, case_id)), t, q])
    return [(rng.standard_normal(s) * 0.5).astype(dtype) for s in SHAPES]


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
    Returns (params, optimizer, norms)."""
    case_id, cls, hyper, dtype, max_norm = case
    params = dict(zip(NAMES, start(dtype)))
    opt = getattr(fastopt, cls)(params, **hyper)
    norms = []
    for t, P in enumerate(world_sizes):
        g = dict(zip(NAMES, mean(case_id, t, P, dtype)))
        if max_norm is not None:
            norms.append(fastopt.clip_grad_norm_(g, max_norm))
        opt.step(g)
    return params, opt, norms
