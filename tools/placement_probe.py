"""One step of element-wise rules at 10^7 elements with their state arrays
where NumPy puts them (every large array at the same offset within a 4 KiB
page) and placed as the optimizer classes place them (fastopt._core.
placed_full), interleaved; prints ns per element and the ratio.

    python tools/placement_probe.py [rules] [--threads 1,2]
"""
import argparse
import timeit

import numpy as np

import fastopt
from fastopt import _core
from fastopt import functional as F

STATES = {"asgd": 1, "nadam": 2, "radam": 2, "adadelta": 2, "rprop": 2, "adam": 2}


def call(name, p, g, states):
    if name == "asgd":
        eta, mu = np.full(1, 0.01), np.full(1, 1.0)
        return lambda: F.asgd(p, g, states[0], eta, mu, step=1)
    if name == "nadam":
        mu_product = np.ones(1)
        return lambda: F.nadam(p, g, *states, mu_product, step=5)
    if name in ("adadelta", "rprop"):
        return lambda: getattr(F, name)(p, g, *states)
    return lambda: getattr(F, name)(p, g, *states, step=5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rules", nargs="?", default=",".join(STATES))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--n", type=float, default=1e7)
    args = ap.parse_args()
    n = int(args.n)
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        p = rng.standard_normal(n).astype(dtype)
        g = (rng.standard_normal(n) * 1e-2).astype(dtype)
        for threads in map(int, args.threads.split(",")):
            fastopt.set_num_threads(threads)
            for name in args.rules.split(","):
                k = STATES[name]
                start = [0.1 if name == "rprop" and j == 1 else 0.0 for j in range(k)]
                plain = [np.full(n, v, dtype) for v in start]
                placed = [_core.placed_full(n, v, dtype, p, j) for j, v in enumerate(start)]
                fns = {"plain": call(name, p, g, plain), "placed": call(name, p, g, placed)}
                best = {key: float("inf") for key in fns}
                for _ in range(7):
                    for key, fn in fns.items():
                        best[key] = min(best[key], timeit.timeit(fn, number=3) / 3)
                a, b = (best[key] / n * 1e9 for key in ("plain", "placed"))
                print(f"{name:9s} {np.dtype(dtype).name} {threads}t  ns/element "
                      f"numpy's placement {a:.3f}  placed {b:.3f}  ratio {a / b:.2f}",
                      flush=True)
    fastopt.set_num_threads(None)


if __name__ == "__main__":
    main()
