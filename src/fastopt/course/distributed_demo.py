"""The moons demo trained data-parallel over MPI ranks with a sharded optimizer.

    mpiexec -n 2 python -m fastopt demo --distributed

Every rank holds the whole model.  Each mini-batch of the course (the same
batches, seeds and initial weights as ``python -m fastopt demo``) is split
into P consecutive slices of columns; rank r computes the gradient of its
slice's mean cost and scales it by ``P * n_r / m_batch``, so that the mean
over the ranks that :class:`fastopt.distributed.ShardedOptimizer` takes is
the mini-batch's mean gradient (up to rounding: the slices' sums are added
in another order than one process's matrix product adds them, so the last
bits of a run may differ from the single process's).  The optimizer keeps
1/P of the state on each rank.  Rank 0 prints the single process's table.
"""
from __future__ import annotations

import time

import numpy as np

from .data import course_minibatches
from .demo import (DECAY_RATE, LAYER_DIMS, TIME_INTERVAL, Run, _optimizer_table,
                   make_optimizer, OPTIMIZERS, setup)
from .models import MLP
from ..lr_scheduler import scheduled_inverse_time_decay


def train(name, X, Y, init_params, comm, *, epochs, batch_size=64, lr=None,
          lr_decay=False, state_dtype=None):
    """As :func:`fastopt.course.demo.train`, data-parallel over ``comm``."""
    from ..distributed import ShardedOptimizer

    spec = OPTIMIZERS[name]
    if lr is None:
        lr = spec.decay_lr0 if lr_decay else spec.lr
    P, rank = comm.Get_size(), comm.Get_rank()
    model = MLP(LAYER_DIMS, params={k: v.copy() for k, v in init_params.items()})
    grads = {p: model.grads[g] for p, g in zip(model.param_names, model.grad_names)}
    # the demo's own optimizer settings, read off the single-process class
    single = make_optimizer(name, model.params, lr)
    hyper = {k: v for k, v in single.param_groups[0].items()
             if k not in ("params", "param_names")}
    if state_dtype is not None:
        hyper["state_dtype"] = state_dtype
    opt = ShardedOptimizer(type(single), model.params, comm, **hyper)
    group = opt.param_groups[0]
    Y = np.asarray(Y, dtype=model.dtype)
    m = X.shape[1]
    costs = np.empty(epochs)
    clock = time.perf_counter
    step_time = 0.0
    steps = 0
    # float32 weights saturate the sigmoid (as in the one-process demo)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        start = clock()
        for epoch in range(epochs):
            total = 0.0
            for X_batch, Y_batch in course_minibatches(X, Y, epoch, batch_size):
                mb = X_batch.shape[1]
                lo, hi = rank * mb // P, (rank + 1) * mb // P
                if hi > lo:
                    total += model.forward_backward(X_batch[:, lo:hi], Y_batch[:, lo:hi])
                    scale = model.dtype.type(P * (hi - lo) / mb)
                    for g in grads.values():
                        g *= scale
                else:
                    for g in grads.values():
                        g.fill(0)
                t0 = clock()
                opt.step(grads)
                step_time += clock() - t0
                steps += 1
            # every rank gets every rank's summed cost and adds them in rank order
            costs[epoch] = sum(comm.allgather(total)) / m
            if lr_decay:
                group["lr"] = scheduled_inverse_time_decay(lr, epoch, DECAY_RATE, TIME_INTERVAL)
        wall = clock() - start
    return Run(name=name, label=spec.label, batch_size=min(batch_size, m), lr=lr,
               costs=costs, accuracy=model.accuracy(X, Y), wall_time=wall,
               step_time=step_time, steps=steps, model=model), opt


def main(args) -> int:
    """``python -m fastopt demo --distributed``: the demo's table, from rank 0."""
    from ..distributed import _mpi

    comm = _mpi().COMM_WORLD
    P, rank = comm.Get_size(), comm.Get_rank()
    cfg = setup(args)
    if cfg is None:
        return 2
    epochs, state_dtype = cfg.epochs, cfg.state_dtype
    X, Y, init_params, published = cfg.X, cfg.Y, cfg.init_params, cfg.published
    if rank == 0:
        print(f"{cfg.header}, data-parallel on {P} rank{'s' if P > 1 else ''} "
              "(fastopt.distributed)", flush=True)
    runs, state = [], []
    for name in args.optimizers:
        run, opt = train(name, X, Y, init_params, comm, epochs=epochs,
                         batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay,
                         state_dtype=state_dtype)
        runs.append(run)
        state.append(comm.gather(opt.state_nbytes(), root=0))
    if rank == 0:
        print()
        print(_optimizer_table(runs, published))
        total = sum(run.wall_time for run in runs)
        print(f"\ntotal training time {total:.2f} s (rank 0)")
        print("optimizer state bytes per rank: " + "; ".join(
            f"{run.name} {'/'.join(map(str, s))}" for run, s in zip(runs, state)))
    return 0
