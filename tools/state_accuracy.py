"""Accuracy of low-precision optimizer states against a float64 run.

    python tools/state_accuracy.py [--steps 1000] [--n 100000] [--scales]

AdamW (lr 1e-2, no weight decay) on a noisy diagonal quadratic: curvatures
10^U(-2, 1), targets N(0, 1), gradient h * (x - target) + 0.1 * noise, the
same noise for every run.  Prints, for float32 states, bfloat16 states with
stochastic rounding (state_dtype="bfloat16"), bfloat16 states rounded to
nearest (float32 states rounded to the nearest bfloat16 after every step,
for comparison) and 8-bit states (state_dtype="8bit"): the parameters'
relative error and the loss gap against float64, and, after a second run
whose gradients shrink 100x half-way, the median of v / v_float64 and the
median and 99th percentile of |v / v_float64 - 1|.

--scales adds two rows that weigh the 8-bit block scale: float32 states
recoded after every step with the 8-bit codec of fastopt.reference (code map
and stochastic rounding as stored), once with each block's absmax as its
scale (as stored) and once with the smallest power of two at or above it, a
scale whose reciprocal is exact and whose top code may go unused.  The
random bytes differ from the optimizer's, so the first of them matches the
8-bit row within its noise, not bit for bit.  It also prints, for both
scales, a never negative state decaying alone (v <- 0.999 v, 300 steps,
values over six decades): the share of codes that change a step and the
deviation from the exact decay.
"""
import argparse

import numpy as np

import fastopt
from fastopt import reference


def q8_pow2_encode(x, nonneg, key):
    """reference.q8_encode's codes and scales with each block's scale the
    smallest power of two >= its absmax instead of the absmax (the same map
    and rounding; blocks with a NaN, an infinity or a scale below 2^-126 are
    refused)"""
    blocks = np.zeros(-(-x.size // reference.Q8_BLOCK) * reference.Q8_BLOCK, np.float32)
    blocks[:x.size] = x
    blocks = blocks.reshape(-1, reference.Q8_BLOCK)
    absmax = np.abs(blocks).max(axis=1).astype(np.float64)
    _, exponent = np.frexp(absmax)   # absmax = f * 2^e with f in [0.5, 1)
    scales = np.where(absmax > 0, np.ldexp(1.0, exponent - (np.ldexp(0.5, exponent) == absmax)), 0.0)
    if not (np.isfinite(absmax).all() and np.all((scales == 0) | (scales >= 2.0 ** -126))):
        raise ValueError("x: blocks with a NaN, an infinity or a scale below 2^-126 are not handled")
    inv = np.where(scales > 0, 1.0 / np.where(scales > 0, scales, 1.0), 0.0).astype(np.float32)
    codes = reference._q8_block_codes(blocks, inv, np.ones(len(blocks), bool), nonneg, key)
    return codes.reshape(-1)[:x.size], scales.astype(np.float32)


ENCODERS = {"absmax": reference.q8_encode, "power of two": q8_pow2_encode}


def recode(opt, step, encode):
    """Every float32 state of opt's one tensor through an 8-bit codec"""
    key = reference.lowp_tensor_key(1, 0, step)   # keys as the optimizer's, of another seed
    for slot, nonneg in ((0, False), (1, True)):   # AdamW: m signed, v never negative
        for view in opt._plans[0].state(slot):
            codes, scales = encode(view.reshape(-1), nonneg, reference.lowp_slot_key(key, slot))
            view[...] = reference.q8_decode(codes, scales, nonneg).reshape(view.shape)


def pure_decay(encode, steps=300, blocks=100):
    """(codes changed a step, median and 99th percentile of the relative
    deviation from the exact decay) of a never negative state decaying alone"""
    rng = np.random.default_rng(0)
    codes, scales = encode((10.0 ** rng.uniform(-6, 0, reference.Q8_BLOCK * blocks)).astype(np.float32),
                           True, 0)
    v = reference.q8_decode(codes, scales, True)
    exact = v.astype(np.float64) * 0.999 ** steps
    changed = 0.0
    for t in range(1, steps + 1):
        key = reference.lowp_slot_key(reference.lowp_tensor_key(1, 0, t), 1)
        new, scales = encode(np.float32(0.999) * v, True, key)
        changed += np.mean(new != codes) / steps
        codes, v = new, reference.q8_decode(new, scales, True)
    dev = np.abs(v / exact - 1)
    return changed, np.median(dev), np.quantile(dev, 0.99)


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
        elif mode.startswith("8bit recoded, "):
            recode(opt, t + 1, ENCODERS[mode[len("8bit recoded, "):-len(" scales")]])
    loss = 0.5 * float(np.sum(h * (x.astype(np.float64) - target) ** 2)) / n
    v = opt.state_float32(x)["exp_avg_sq"].astype(np.float64)
    return x.astype(np.float64), loss, v


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--scales", action="store_true",
                        help="add the 8-bit codec's rows with absmax and power-of-two scales")
    args = parser.parse_args()
    modes = ["float64", "float32", "bfloat16 stochastic", "bfloat16 nearest", "8bit"]
    if args.scales:
        modes += [f"8bit recoded, {name} scales" for name in ENCODERS]
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
    if args.scales:
        for name, encode in ENCODERS.items():
            changed, med, p99 = pure_decay(encode)
            print(f"8-bit v decaying alone, {name} scales: {changed:.3f} of the codes change a "
                  f"step; deviation from the exact decay after 300 steps: median {med:.4f}, "
                  f"99th percentile {p99:.3f}")


if __name__ == "__main__":
    main()
