#!/usr/bin/env bash
# The 8-bit AdamW step of the library beside a plain C loop of the same
# arithmetic, in one process (tools/q8_probe.c), so the figures leave
# Python and NumPy out.  The library's C parts are the objects of the
# in-place build, which this script brings up to date first
# (python setup.py build_ext --inplace: setup.py's flags, every x86-64
# level, the widest used); the probe's own loop is compiled for that level.
#
#   bash tools/q8_probe.sh [N [REPS]]     (defaults 5e7 and 15)
#
# Prints, for one and two threads, with the prefetching on and off, the
# best step of each in ns an element and the library's time over the
# loop's.  x86-64 with AVX-512 only; the python on PATH must have the
# build's requirements (setuptools, Cython, NumPy).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-5e7}" reps="${2:-15}"
grep -q avx512f /proc/cpuinfo || { echo "this probe needs AVX-512" >&2; exit 1; }
python setup.py -q build_ext --inplace
objects=$(python - <<'PY'
import glob, sys, sysconfig
tag = f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
names = ["csrc/dispatch.o", "csrc/coefficients.o"] + [
    f"{level}/csrc/{src}.o" for level in ("baseline", "avx2", "avx512")
    for src in ("kernels_isa", "kernels_isa_ema")]
found = [glob.glob(f"build/{tag}/{name}") for name in names]
missing = [name for name, hits in zip(names, found) if not hits]
if missing:
    sys.exit(f"the build left no {', '.join(missing)} under build/{tag}")
print(" ".join(hits[0] for hits in found))
PY
)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# shellcheck disable=SC2086
gcc -O3 -ffp-contract=off -fno-math-errno -std=c11 -fopenmp -Icsrc \
    -march=x86-64-v4 -mprefer-vector-width=512 \
    tools/q8_probe.c $objects -lm -o "$work/q8_probe"
for threads in 1 2; do
    for prefetch in 1 0; do
        "$work/q8_probe" "$n" "$reps" "$threads" "$prefetch"
    done
done
