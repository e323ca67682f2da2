"""Steps with and without the prefetching of the loops over bfloat16 and
8-bit states, from one build (README, "Optimizer states in bfloat16").

Two AdamW optimizers on copies of one problem take their steps in turn; the
prefetch threshold is set before each, so that one of them prefetches (the
library's default, 32 MiB) and the other never does.  Prints the median ns
an element of each and checks that both left the same bits.

    python tools/prefetch_ab.py 5e7 1 bfloat16 [rounds]
    FASTOPT_SIMD=avx2 python tools/prefetch_ab.py 5e7 1 8bit
"""
import sys
import time

import numpy as np

import fastopt
from fastopt import _core


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    n, threads, state_dtype = int(float(argv[0])), int(argv[1]), argv[2]
    rounds = int(argv[3]) if len(argv) > 3 else 15
    fastopt.set_num_threads(threads)
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    default = _core.get_prefetch_threshold()
    threshold = {"off": 1 << 62, "on": default}
    params = {k: p0.copy() for k in threshold}
    opts = {k: fastopt.AdamW([params[k]], lr=1e-3, state_dtype=state_dtype, seed=1)
            for k in threshold}
    times = {k: [] for k in threshold}
    try:
        for r in range(rounds + 2):
            for k, opt in opts.items():
                _core.set_prefetch_threshold(threshold[k])
                t = time.perf_counter()
                opt.step([g])
                if r >= 2:   # two warm-up steps each
                    times[k].append(time.perf_counter() - t)
    finally:
        _core.set_prefetch_threshold(default)
    med = {k: np.median(v) / n * 1e9 for k, v in times.items()}
    same = params["off"].tobytes() == params["on"].tobytes()
    print(f"{state_dtype} n={n:.0e} threads={threads} level={_core.get_simd_level()}: "
          f"off {med['off']:.3f} on {med['on']:.3f} ns an element, "
          f"on/off {med['on'] / med['off']:.3f}, same bits: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
