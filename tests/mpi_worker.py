"""Run by tests/test_distributed.py under mpiexec: one scenario on every
rank, each rank writing what it ended with to OUT/rank<r>.npz for the test
to check.

    mpiexec -n P python tests/mpi_worker.py SCENARIO OUT [ARG]
"""
import os
import signal
import sys

import numpy as np
from mpi4py import MPI

import fastopt
from fastopt import checkpoint
from fastopt.distributed import ShardedOptimizer

from mpi_cases import (CASES, LEVEL_CASES, NAMES, NONE_CASES, RESHARD_CASES, SHAPES, STEPS,
                       grads, micro, none_grads, start)

if os.environ.get("MPI_WORKER_EXEC"):
    # "level:threads": a SIMD level and a thread count that splits even
    # small arrays (as tests/conftest.py's num_threads fixture does)
    level, threads = os.environ["MPI_WORKER_EXEC"].split(":")
    fastopt.set_simd_level(level)
    fastopt.set_num_threads(int(threads))
    fastopt._core.set_parallel_threshold(1)

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def run(case, opt, params, steps):
    case_id, _, hyper, dtype, max_norm = case
    k = hyper.get("accumulation_steps", 1)
    out = {}
    for t in steps:
        stepped = []
        for i in range(k):
            g = dict(zip(NAMES, micro(case_id, t, i, rank, dtype)))
            stepped.append(opt.step(g, max_norm=max_norm))
        out[f"{case_id}|stepped{t}"] = np.array(stepped)
        if max_norm is not None:
            out[f"{case_id}|norm{t}"] = np.array(opt.last_norm)
    if opt.ema_decay is not None:
        with opt.ema_weights():
            for name in NAMES:
                out[f"{case_id}|ema|{name}"] = params[name].copy()
                out[f"{case_id}|emaview|{name}"] = opt.params[name].copy()
    for name in NAMES:
        out[f"{case_id}|param|{name}"] = params[name]
        out[f"{case_id}|view|{name}"] = opt.params[name]
    out[f"{case_id}|sumsq"] = opt.sumsq(opt.param_shard, per_tensor=True)
    out[f"{case_id}|sumsq_all"] = np.array(opt.sumsq(opt.param_shard))
    out[f"{case_id}|state_nbytes"] = np.array(opt.state_nbytes())
    sd = opt.consolidated_state_dict()
    if sd is not None:
        for i, entry in sd["state"].items():
            for key, v in entry.items():
                out[f"{case_id}|state|{i}|{key}"] = np.asarray(v)
    return out


def make(case, deterministic=True):
    _, cls, hyper, dtype, _ = case
    params = dict(zip(NAMES, start(dtype)))
    opt = ShardedOptimizer(getattr(fastopt, cls), params, comm,
                           deterministic=deterministic, **hyper)
    return opt, params


def trajectory(out_dir, deterministic=True):
    out = {}
    cases = LEVEL_CASES if os.environ.get("MPI_WORKER_EXEC") else CASES
    for case in cases:
        opt, params = make(case, deterministic)
        out.update(run(case, opt, params, range(STEPS)))
    return out


def save(out_dir, folder):
    """STEPS steps of every case, a checkpoint of each."""
    out = {}
    for case in RESHARD_CASES:
        opt, params = make(case)
        out.update(run(case, opt, params, range(STEPS)))
        opt.save(os.path.join(folder, case[0]))
    return out


def resume(out_dir, folder):
    """The parameters of save()'s end, the checkpoint, STEPS more steps."""
    out = {}
    for case in RESHARD_CASES:
        opt, params = make(case)
        saved = np.load(os.path.join(folder, "params.npz"))
        for name in NAMES:
            np.copyto(params[name], saved[f"{case[0]}|param|{name}"])
            np.copyto(opt.params[name], params[name])
        opt.load(os.path.join(folder, case[0]))
        out.update(run(case, opt, params, range(STEPS, 2 * STEPS)))
    return out


def kill(out_dir, folder):
    """A checkpoint after STEPS steps; one more step; a second save in which
    the last rank dies half-way through writing its file."""
    case = next(c for c in CASES if c[0] == "Adam-float32")
    opt, params = make(case)
    run(case, opt, params, range(STEPS))
    opt.save(folder)
    run(case, opt, params, [STEPS])
    if rank == size - 1:
        def die(path, state_dict):
            with open(path + ".partial", "wb") as f:
                f.write(b"PK\x03\x04 half a file")
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.write_state = die
    opt.save(folder)
    return {}


def abort(out_dir, arg=None):
    """The last rank passes a gradient of the wrong shape."""
    case = CASES[0]
    opt, params = make(case)
    g = dict(zip(NAMES, grads(case[0], 0, rank, case[3])))
    if rank == size - 1:
        g["big"] = g["big"][:-1]
    opt.step(g)
    return {"stepped": np.array(1)}


def nones(out_dir, arg=None):
    """Steps with None gradients on some ranks, then a call where one
    parameter has None on every rank: each rank records the error and its
    parameters, which that call must not have changed."""
    out = {}
    for case in NONE_CASES:
        case_id, _, hyper, dtype, _ = case
        k = hyper.get("accumulation_steps", 1)
        opt, params = make(case)
        for t in range(STEPS):
            for i in range(k):
                opt.step(none_grads(case_id, t, i, rank, dtype))
        for name in NAMES:
            out[f"{case_id}|param|{name}"] = params[name].copy()
        g = none_grads(case_id, STEPS, 0, rank, dtype)
        g["w"] = None
        for i in range(k - 1):
            opt.step(g)
        try:
            opt.step(g)
            out[f"{case_id}|error"] = np.array("")
        except ValueError as e:
            out[f"{case_id}|error"] = np.array(str(e))
        for name in NAMES:
            out[f"{case_id}|after|{name}"] = params[name]
        sd = opt.consolidated_state_dict()
        if sd is not None:
            out[f"{case_id}|steps"] = np.array([e["step"] for e in sd["state"].values()])
    return out


def two_optimizers(out_dir, arg=None):
    """Two parameter groups of two dtypes as two ShardedOptimizers on one
    communicator, stepped in turn (the groups' and dtypes' workaround)."""
    p32 = dict(zip(NAMES[:2], start("float32")[:2]))
    p64 = dict(zip(NAMES[2:], start("float64")[2:]))
    a = ShardedOptimizer(fastopt.Adam, p32, comm, lr=0.01)
    b = ShardedOptimizer(fastopt.Adam, p64, comm, lr=0.003, weight_decay=0.1)
    for t in range(STEPS):
        g32 = grads("two-32", t, rank, "float32")
        g64 = grads("two-64", t, rank, "float64")
        a.step(dict(zip(NAMES[:2], g32[:2])))
        b.step(dict(zip(NAMES[2:], g64[2:])))
    return {f"param|{n}": v for n, v in {**p32, **p64}.items()}


def mismatch(out_dir, arg=None):
    """The last rank's parameter 'c' has another shape."""
    params = dict(zip(NAMES, start("float32")))
    if rank == size - 1:
        params["c"] = np.zeros(SHAPES[3][0] + 1, dtype=np.float32)
    try:
        ShardedOptimizer(fastopt.Adam, params, comm)
    except ValueError as e:
        return {"error": np.array(str(e))}
    return {"error": np.array("")}


if __name__ == "__main__":
    scenario, out_dir = sys.argv[1], sys.argv[2]
    arg = sys.argv[3] if len(sys.argv) > 3 else None
    if scenario == "nondeterministic":
        result = trajectory(out_dir, deterministic=False)
    else:
        result = globals()[scenario](out_dir, arg) if arg else globals()[scenario](out_dir)
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **result)
