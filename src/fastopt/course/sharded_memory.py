"""Optimizer state per rank shrinking with the number of ranks.

    mpiexec -n 3 python -m fastopt.course.sharded_memory [--width 1500]

A wide MLP on the moons, [2, W, W, 1] (about W**2 parameters), trained for a
few data-parallel steps with Adam in float32 through
:class:`fastopt.distributed.ShardedOptimizer`.  Every rank prints the bytes
of optimizer state it holds; rank 0 also the bytes one process's Adam holds
for the same model (two moments per parameter), and checks that the
parameters equal one process's stepping on the mean gradients.
"""
import argparse

import numpy as np

import fastopt
from fastopt.course.datasets import course_moons
from fastopt.course.models import MLP, he_init


def main(argv=None):
    from fastopt.distributed import ShardedOptimizer, _mpi

    parser = argparse.ArgumentParser(prog="python -m fastopt.course.sharded_memory")
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    comm = _mpi().COMM_WORLD
    P, rank = comm.Get_size(), comm.Get_rank()
    dims = (2, args.width, args.width, 1)
    X, Y = course_moons(dtype=np.float32)
    Y = Y.astype(np.float32)
    init = he_init(dims, random_state=3, dtype=np.float32)
    # He's scale on a 1500-wide layer saturates the float32 sigmoid (a cost
    # of log(0)); a smaller last layer keeps the outputs inside it
    init[f"W{len(dims) - 1}"] *= np.float32(0.01)
    model = MLP(dims, params={k: v.copy() for k, v in init.items()})
    grads = {p: model.grads[g] for p, g in zip(model.param_names, model.grad_names)}
    opt = ShardedOptimizer(fastopt.Adam, model.params, comm, lr=1e-3)
    # one process, for the check: every rank's gradient, their mean in rank order
    ref = MLP(dims, params={k: v.copy() for k, v in init.items()})
    ref_grads = {p: ref.grads[g] for p, g in zip(ref.param_names, ref.grad_names)}
    one = fastopt.Adam(ref.params, lr=1e-3)
    m = X.shape[1]
    for t in range(args.steps):
        cols = [slice(q * m // P, (q + 1) * m // P) for q in range(P)]
        model.forward_backward(X[:, cols[rank]], Y[:, cols[rank]])
        opt.step(grads)
        mean = None
        for q in range(P):
            ref.forward_backward(X[:, cols[q]], Y[:, cols[q]])
            if mean is None:
                mean = {k: g.copy() for k, g in ref_grads.items()}
            else:
                for k in mean:
                    mean[k] += ref_grads[k]
        if P > 1:
            for g in mean.values():
                g /= np.float32(P)
        one.step(mean)
    same = all(model.params[k].tobytes() == ref.params[k].tobytes() for k in model.params)
    states = comm.gather(opt.state_nbytes(), root=0)
    if rank == 0:
        n = sum(p.size for p in model.params.values())
        single = sum(v.nbytes for e in one.state_dict()["state"].values()
                     for v in e.values() if isinstance(v, np.ndarray) and v.ndim)
        print(f"MLP {list(dims)}: {n:,} parameters, Adam float32, {P} rank(s)")
        print(f"one process: {single:,} bytes of optimizer state")
        for q, b in enumerate(states):
            print(f"rank {q}: {b:,} bytes of optimizer state ({b / single:.1%})")
        print(f"parameters after {args.steps} steps equal one process's: {same}")
    return 0 if comm.allreduce(int(same), op=_mpi().MIN) else 1


if __name__ == "__main__":
    raise SystemExit(main())
