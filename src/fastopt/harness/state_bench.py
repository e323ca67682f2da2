"""``python -m fastopt bench --state-dtypes``: AdamW on float32 parameters
with its states in each state dtype, against torch's fused AdamW (float32
states) and the traffic floors of the byte counts, measured in one run.

Rows per size and thread count (median ms per step; bnb in rounds of its
own, every other row timed interleaved, one call of each in turn, at least
15 rounds):

  float32     fastopt.AdamW, states in float32: 28 bytes an element
              (p read and written, g read, m and v read and written)
  bfloat16    fastopt.AdamW(state_dtype="bfloat16"): 20 bytes an element
  8bit        fastopt.AdamW(state_dtype="8bit"): 16 bytes an element (p read
              and written, g read, two uint8 codes read and written) plus
              a float32 scale per 256 elements and state
  floor_28    fastopt's traffic kernel over p, g and two float32 states
              (placed within a page as the optimizer places its states)
  floor_20    the same over p, g and one float32 state: 20 bytes an element,
              the bytes of a step with two 2-byte states
  floor_16    the same (p, g, one float32 state: 20 bytes an element) over
              0.8 n elements: 16 n bytes, those of a step with two 1-byte
              states (the traffic kernel moves 4-byte elements only)
  torch       torch.optim.AdamW(fused=True) on float32, at the same thread
              count (when torch is installed)
  bnb         bitsandbytes.optim.AdamW8bit on CPU tensors, when bitsandbytes
              is installed and runs on CPU (skipped with a message if not)

Ratios are to torch's fused step and to the floor of each row's bytes.
"""
import os
import platform
import sys
import time

import numpy as np

import fastopt
from fastopt import _core

STATE_DTYPES = ("float32", "bfloat16", "8bit")
DEFAULT_SIZES = [10**5, 10**6, 10**7, 5 * 10**7]


def add_arguments(parser):
    parser.add_argument("--state-dtypes", action="store_true",
                        help="AdamW with float32, bfloat16 and 8-bit states against torch's "
                             "fused AdamW and the byte floors (--sizes, --threads, "
                             "--plot and --markdown apply)")


def _median_ms(calls, budget, min_reps=5, max_reps=200):
    from fastopt.harness.bench import interleaved
    return {k: v * 1e3 for k, v in
            interleaved(calls, budget, min_reps=min_reps, max_reps=max_reps).items()}


def _bnb_step(torch, p0, g):
    """bitsandbytes' AdamW8bit step on CPU tensors, or None (with a message
    on stderr) when it is not installed or does not run on CPU."""
    try:
        import bitsandbytes  # type: ignore[import-not-found, unused-ignore]
    except Exception as e:  # ImportError, or a failure of its own import
        print(f"  bitsandbytes skipped: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    try:
        bp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        bp.grad = torch.from_numpy(g.copy())
        bopt = bitsandbytes.optim.AdamW8bit([bp], lr=1e-3, min_8bit_size=0)
        bopt.step()
        return bopt.step
    except Exception as e:
        print(f"  bitsandbytes AdamW8bit skipped on CPU: {type(e).__name__}: {e}",
              file=sys.stderr)
        return None


def measure(n, threads, budget, torch, rng):
    """One size: {threads: {name: median ms}} for every thread count."""
    p0 = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    calls = {}
    keep = []
    for sd in STATE_DTYPES:
        p = p0.copy()
        opt = fastopt.AdamW([p], lr=1e-3, state_dtype=None if sd == "float32" else sd)
        opt.step([g])          # the states exist before timing
        keep.append((opt, p))
        calls[sd] = (lambda o: lambda: o.step([g]))(opt)
    from fastopt.harness.bench import _placed
    # the floor's states placed as the optimizer places its buffers (apart
    # within a 4 KiB page, where NumPy starts every large array at one offset)
    fp = p0.copy()
    arrays = [fp, g.copy()] + _placed(fp, [np.zeros(n, np.float32), np.zeros(n, np.float32)])
    calls["floor_28"] = lambda: _core.traffic(*arrays)
    calls["floor_20"] = lambda: _core.traffic(*arrays[:3])
    m16 = n * 4 // 5
    a16 = [a[:m16] for a in arrays[:3]]
    calls["floor_16"] = lambda: _core.traffic(*a16)
    if torch is not None:
        tp = torch.from_numpy(p0.copy())
        tp.grad = torch.from_numpy(g.copy())
        topt = torch.optim.AdamW([tp], lr=1e-3, fused=True)
        topt.step()
        calls["torch"] = topt.step
        bnb = _bnb_step(torch, p0, g)
    else:
        bnb = None
    out = {}
    for t in threads:
        fastopt.set_num_threads(t)
        if torch is not None:
            torch.set_num_threads(t)
        # bitsandbytes' step takes 40-70 times the others': in their rounds
        # it would leave them five samples each at 5 * 10^7 elements
        out[t] = _median_ms(calls, budget, min_reps=15)
        if bnb is not None:
            out[t].update(_median_ms({"bnb": bnb}, budget, min_reps=3))
    fastopt.set_num_threads(None)
    return out


def _cells(n, t, m):
    """One size and thread count's figures as text, by name ("-" where torch
    or bitsandbytes was not measured)."""
    tt, bnb, q8 = m.get("torch"), m.get("bnb"), m["8bit"]

    def over_torch(k):
        return f"{m[k] / tt:.2f}" if tt else "-"
    return {"n": f"{n:.0e}", "threads": str(t),
            "float32": f"{m['float32']:.2f}", "bfloat16": f"{m['bfloat16']:.2f}",
            "8bit": f"{q8:.2f}", "torch": f"{tt:.2f}" if tt else "-",
            "float32/torch": over_torch("float32"),
            "bfloat16/torch": over_torch("bfloat16"), "8bit/torch": over_torch("8bit"),
            "floor_20/torch": over_torch("floor_20"),
            "floor_16/torch": over_torch("floor_16"),
            "float32%": f"{100 * m['floor_28'] / m['float32']:.0f}%",
            "bfloat16%": f"{100 * m['floor_20'] / m['bfloat16']:.0f}%",
            "8bit%": f"{100 * m['floor_16'] / q8:.0f}%",
            "bnb": f"{bnb:.2f}" if bnb else "-",
            "bnb/8bit": f"{bnb / q8:.0f}" if bnb else "-"}


# (figure, heading) of each table's columns: every figure, and the README's
# table of each low-precision dtype
ALL_COLUMNS = [
    ("n", "elements"), ("threads", "threads"), ("float32", "float32 ms"),
    ("bfloat16", "bfloat16 ms"), ("8bit", "8bit ms"), ("torch", "torch fused ms"),
    ("float32/torch", "float32 / torch"), ("bfloat16/torch", "bfloat16 / torch"),
    ("8bit/torch", "8bit / torch"), ("floor_20/torch", "20 B floor / torch"),
    ("floor_16/torch", "16 B floor / torch"), ("float32%", "float32 % of 28 B floor"),
    ("bfloat16%", "bfloat16 % of 20 B floor"), ("8bit%", "8bit % of 16 B floor"),
    ("bnb", "bnb AdamW8bit ms"), ("bnb/8bit", "bnb / 8bit")]
BFLOAT16_COLUMNS = [
    ("n", "elements"), ("threads", "threads"), ("float32", "float32 states ms"),
    ("bfloat16", "bfloat16 states ms"), ("torch", "torch fused AdamW ms"),
    ("float32/torch", "float32 / torch"), ("bfloat16/torch", "bfloat16 / torch"),
    ("floor_20/torch", "20 B floor / torch"),
    ("bfloat16%", "bfloat16, share of the 20 B floor")]
Q8_COLUMNS = [
    ("n", "elements"), ("threads", "threads"), ("float32", "float32 states ms"),
    ("bfloat16", "bfloat16 states ms"), ("8bit", "8-bit states ms"),
    ("torch", "torch fused AdamW ms"), ("8bit/torch", "8-bit / torch"),
    ("floor_16/torch", "16 B floor / torch"),
    ("8bit%", "8-bit, share of the 16 B floor"),
    ("bnb", "bitsandbytes AdamW8bit ms"), ("bnb/8bit", "bitsandbytes / 8-bit")]


def table(results, columns):
    """A markdown table of the results, one row per size and thread count."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |",
             "|" + "---|" * len(columns)]
    for n, per in results.items():
        for t, m in per.items():
            c = _cells(n, t, m)
            lines.append("| " + " | ".join(c[k] for k, _ in columns) + " |")
    return "\n".join(lines) + "\n"


def print_table(results, file=sys.stdout):
    print(table(results, ALL_COLUMNS), end="", file=file)


def markdown(results, header):
    """The README's two tables under a header line: bfloat16 states, then
    8-bit states."""
    return (f"{header}\n\nbfloat16 states\n\n{table(results, BFLOAT16_COLUMNS)}"
            f"\n8-bit states\n\n{table(results, Q8_COLUMNS)}")


def plot(results, path):
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print("no matplotlib: pip install matplotlib (or fastopt[plot]) for the plot")
        return None
    threads = sorted({t for per in results.values() for t in per})
    fig, axes = plt.subplots(1, len(threads), figsize=(5 * len(threads), 3.8), squeeze=False)
    sizes = list(results)
    labels = [("float32", "fastopt, float32 states"), ("bfloat16", "fastopt, bfloat16 states"),
              ("8bit", "fastopt, 8-bit states"),
              ("torch", "torch fused AdamW (float32)"), ("bnb", "bitsandbytes AdamW8bit"),
              ("floor_28", "28 B traffic floor"),
              ("floor_20", "20 B traffic floor"), ("floor_16", "16 B traffic floor")]
    for ax, t in zip(axes[0], threads):
        for key, label in labels:
            if all(key in results[n][t] for n in sizes):
                ax.plot(sizes, [results[n][t][key] / n * 1e6 for n in sizes], marker="o",
                        label=label, ls="--" if key.startswith("floor") else "-")
        ax.set_xscale("log")
        ax.set_yscale("log")   # bitsandbytes is 10-30x the rest
        ax.set_xlabel("elements")
        ax.set_ylabel("ns per element (log)")
        ax.set_title(f"AdamW float32 parameters, {t} thread(s)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(args, torch):
    sizes = args.sizes or DEFAULT_SIZES
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else sorted({1, fastopt.get_num_threads()}))
    budget = 0.3 if args.quick else 2.0
    rng = np.random.default_rng(0)
    print(f"fastopt {fastopt.__version__} state dtypes: SIMD {fastopt.get_simd_level()}"
          + (f", torch {torch.__version__}" if torch is not None else ", no torch"))
    start = time.perf_counter()
    results = {}
    for n in sizes:
        results[n] = measure(n, threads, budget, torch, rng)
        for t, m in results[n].items():
            print(f"  n={n:.0e} threads={t}: " + ", ".join(
                f"{k} {v:.2f} ms" for k, v in m.items()), file=sys.stderr)
    print()
    print_table(results)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.plot and plot(results, args.plot):
        print(f"wrote {args.plot}")
    if args.markdown:
        from fastopt.harness.bench import command_line
        command = command_line(args)
        peers = (f"torch {torch.__version__}" if torch is not None else "torch not measured")
        bnb = sys.modules.get("bitsandbytes")
        if bnb is not None:
            peers += f", bitsandbytes {getattr(bnb, '__version__', '?')}"
        header = (f"`{command}`: fastopt {fastopt.__version__}, {platform.machine()}, "
                  f"{os.cpu_count()} CPUs, SIMD {fastopt.get_simd_level()}, "
                  f"NumPy {np.__version__}, {peers}; AdamW on float32 parameters, "
                  f"median ms per step")
        with open(args.markdown, "w") as f:
            f.write(markdown(results, header))
        print(f"wrote {args.markdown}")
    return 0
