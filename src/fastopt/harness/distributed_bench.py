"""``mpiexec -n P python -m fastopt bench --distributed``: a sharded step's
time on P ranks, split into its parts, with bytes moved and state per rank.

For each size, each rank steps a :class:`fastopt.distributed.ShardedOptimizer`
over one parameter of that many elements (the rule of ``--rules``, first
dtype of ``--dtypes``), with deterministic=True and False, and the parts of
each step are timed on every rank:

  pack     copying the gradients into the flat buffer
  reduce   the mean over ranks (Alltoall + ordered sum, or Reduce_scatter)
  update   the fused kernel on the rank's shard
  gather   Allgather of the updated shards
  unpack   copying the flat buffer back into the caller's arrays

Reported: the median over steps of the slowest rank's time of each part
(a step is as slow as its slowest rank), the bytes each rank sends (and
receives) per step, and the state bytes per rank; beside it, rank 0 alone
steps the plain class over the same number of elements (the others wait in
a barrier): the single-process step.  The result is checked against one
process before anything is timed.
"""
import statistics
import sys
import time

import numpy as np

import fastopt
from fastopt.rules import RULES as TABLE

PARTS = ("pack", "reduce", "update", "gather", "unpack")


def _sharded_step_bytes(P, S, itemsize):
    """Bytes one rank sends per step (it receives as many), either
    reduction: it sends P-1 of its P blocks of S elements (Alltoall; a ring
    reduce-scatter moves the same), and the Allgather passes P-1 blocks
    through each rank (as a ring)."""
    return 2 * (P - 1) * S * itemsize


def measure(cls, n, dtype, comm, steps, deterministic):
    from fastopt.distributed import ShardedOptimizer, _mpi

    P, rank = comm.Get_size(), comm.Get_rank()
    rng = np.random.default_rng(rank)
    params = [np.zeros(n, dtype=dtype)]
    grads = [rng.standard_normal(n).astype(dtype)]
    opt = ShardedOptimizer(cls, params, comm, deterministic=deterministic)
    opt.step(grads)                                   # first step allocates state
    per_step = []
    for _ in range(steps):
        before = dict(opt.times)
        comm.Barrier()
        t0 = time.perf_counter()
        opt.step(grads)
        total = time.perf_counter() - t0
        parts = np.array([opt.times[k] - before[k] for k in PARTS] + [total])
        comm.Allreduce(_mpi().IN_PLACE, parts, op=_mpi().MAX)
        per_step.append(parts)
    med = np.median(np.array(per_step), axis=0)
    return {"P": P, "n": n, "deterministic": deterministic,
            **{k: float(v) for k, v in zip(PARTS + ("step",), med)},
            "bytes_sent": _sharded_step_bytes(P, opt.shard_size, np.dtype(dtype).itemsize),
            "state_bytes": comm.allreduce(opt.state_nbytes(), op=_mpi().MAX)}


def single(cls, n, dtype, steps):
    rng = np.random.default_rng(0)
    p = np.zeros(n, dtype=dtype)
    g = rng.standard_normal(n).astype(dtype)
    opt = cls([p])
    opt.step([g])
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.step([g])
        times.append(time.perf_counter() - t0)
    nbytes = sum(v.nbytes for v in opt.state_dict()["state"][0].values()
                 if isinstance(v, np.ndarray) and v.ndim)
    return statistics.median(times), nbytes


def _check(cls, comm, dtype):
    """3 steps of the sharded class against one process, before timing."""
    from fastopt.distributed import ShardedOptimizer

    P, rank = comm.Get_size(), comm.Get_rank()
    n = 100_003
    start = np.random.default_rng(99).standard_normal(n).astype(dtype)
    mine, ref = [start.copy()], [start.copy()]
    opt, one = ShardedOptimizer(cls, mine, comm), cls(ref)
    for t in range(3):
        gs = [np.random.default_rng([t, q]).standard_normal(n).astype(dtype)
              for q in range(P)]
        opt.step([gs[rank]])
        mean = gs[0].copy()
        for g in gs[1:]:
            mean += g
        if P > 1:
            mean /= dtype(P)
        one.step([mean])
    if mine[0].tobytes() != ref[0].tobytes():
        raise SystemExit(f"rank {rank}: the sharded step differs from one process")


def main(args):
    from fastopt.distributed import _mpi

    comm = _mpi().COMM_WORLD
    P, rank = comm.Get_size(), comm.Get_rank()
    rule = args.rules.split(",")[0].strip()
    if rule not in TABLE:
        print(f"unknown rule {rule!r}", file=sys.stderr)
        return 2
    cls = getattr(fastopt, TABLE[rule].cls)
    dtype = np.dtype(args.dtypes.split(",")[0].strip()).type
    sizes = args.sizes or [10**6, 10**7]
    steps = 5 if args.quick else 11
    _check(cls, comm, dtype)
    if rank == 0:
        print(f"fastopt {fastopt.__version__} distributed bench: {cls.__name__} "
              f"{np.dtype(dtype).name}, {P} rank(s), {fastopt.get_num_threads()} "
              f"thread(s) per rank, SIMD {fastopt.get_simd_level()}; median of "
              f"{steps} steps, slowest rank per part; checked against one process")
        header = ("| P | elements | deterministic | step ms | pack | reduce | update "
                  "| gather | unpack | MB sent/rank | state MB/rank | 1-process step ms "
                  "| 1-process state MB |")
        print()
        print(header)
        print("|---:|---:|---|" + "---:|" * 10)
    for n in sizes:
        rows = [measure(cls, n, dtype, comm, steps, det) for det in (True, False)]
        comm.Barrier()
        one, one_bytes = single(cls, n, dtype, steps) if rank == 0 else (None, None)
        comm.Barrier()
        if rank == 0:
            for r in rows:
                ms = {k: 1e3 * r[k] for k in PARTS + ("step",)}
                print(f"| {P} | {n:.0e} | {r['deterministic']} | {ms['step']:.2f} | "
                      + " | ".join(f"{ms[k]:.2f}" for k in PARTS)
                      + f" | {r['bytes_sent'] / 1e6:.1f} | {r['state_bytes'] / 1e6:.1f}"
                      f" | {1e3 * one:.2f} | {one_bytes / 1e6:.1f} |", flush=True)
    return 0
