"""Accuracy of low-precision optimizer states against a float64 run.

    python tools/state_accuracy.py [--steps 1000] [--n 100000]

AdamW (lr 1e-2, no weight decay) on a noisy diagonal quadratic: curvatures
10^U(-2, 1), targets N(0, 1), gradient h * (x - target) + 0.1 * noise, the
same noise for every run.  Prints, for float32 states, bfloat16 states with
stochastic rounding (state_dtype="bfloat16"), bfloat16 states rounded to
nearest (float32 states rounded to the nearest bfloat16 after every step,
for comparison) and 8-bit states (state_dtype="8bit"): the parameters'
relative error and the loss gap against float64, and, after a second run
whose gradients shrink 100x half-way, the median of v / v_float64 and the
median and 99th percentile of |v / v_float64 - 1|.
"""
import argparse

import numpy as np

import fastopt
from fastopt import reference


def run(mode, steps, n, shrink_at=None):
    rng = np.random.default_rng(0)
    h = 10.0 ** rng.uniform(-2, 1, n)
    target = rng.standard_normal(n)
    dtype = np.float64 if mode == "float64" else np.float32
    x = np.zeros(n, dtype)
    state_dtype = {"bfloat16 stochastic": "bfloat16", "8bit": "8bit"}.get(mode)
    opt = fastopt.AdamW([x], lr=1e-2, weight_decay=0.0, state_dtype=state_dtype)
    noise = np.random.default_rng(1)
    for t in range(steps):
        g = h * (x - target) + 0.1 * noise.standard_normal(n)
        if shrink_at is not None and t >= shrink_at:
            g = g / 100.0
        opt.step([g.astype(dtype)])
        if mode == "bfloat16 nearest":
            for slot in range(2):
                for view in opt._plans[0].state(slot):
                    view[...] = reference.bf16_decode(reference.bf16_nearest(view))
    loss = 0.5 * float(np.sum(h * (x.astype(np.float64) - target) ** 2)) / n
    v = opt.state_float32(x)["exp_avg_sq"].astype(np.float64)
    return x.astype(np.float64), loss, v


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    modes = ["float64", "float32", "bfloat16 stochastic", "bfloat16 nearest", "8bit"]
    runs = {m: run(m, args.steps, args.n) for m in modes}
    shrunk = {m: run(m, args.steps, args.n, shrink_at=args.steps // 2) for m in modes}
    x64, loss64, _ = runs["float64"]
    v64 = shrunk["float64"][2]
    print(f"AdamW, {args.steps} steps, {args.n} elements; float64 loss {loss64:.6g}")
    print("| states | parameter relative error | loss gap | v after 100x smaller "
          "gradients: median of v / v_float64 | median, 99th percentile of "
          "abs(v / v_float64 - 1) |")
    print("|---|---|---|---|---|")
    for m in modes[1:]:
        x, loss, _ = runs[m]
        ratio = shrunk[m][2] / v64
        dev = np.abs(ratio - 1)
        print(f"| {m} | {np.linalg.norm(x - x64) / np.linalg.norm(x64):.2e} | "
              f"{abs(loss - loss64):.1e} | {np.median(ratio):.3f} | {np.median(dev):.3f}, "
              f"{np.quantile(dev, 0.99):.3f} |")


if __name__ == "__main__":
    main()
