#!/usr/bin/env bash
# The 8-bit AdamW step of the library beside a plain C loop of the same
# arithmetic, in one process (tools/q8_probe.c): the library's C parts are
# compiled here with setup.py's flags (every x86-64 level, the widest
# used), so the figures leave Python and NumPy out.
#
#   bash tools/q8_probe.sh [N [REPS]]     (defaults 5e7 and 15)
#
# Prints, for one and two threads, with the prefetching on and off, the
# best step of each in ns an element and the library's time over the
# loop's.  x86-64 with AVX-512 only; needs csrc/fastopt/fo_table.h, which
# any build of the package writes (pip install -e ., or python setup.py
# build_ext --inplace).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-5e7}" reps="${2:-15}"
[ -f csrc/fastopt/fo_table.h ] || { echo "csrc/fastopt/fo_table.h is missing: build the package first" >&2; exit 1; }
grep -q avx512f /proc/cpuinfo || { echo "this probe needs AVX-512" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
common="-O3 -ffp-contract=off -fno-math-errno -std=c11 -fopenmp -Icsrc"
avx2="-march=x86-64-v3"
avx512="-march=x86-64-v4 -mprefer-vector-width=512"
for src in kernels_isa kernels_isa_ema; do
    gcc $common -DFO_ISA=baseline -c "csrc/$src.c" -o "$work/${src}_baseline.o" &
    gcc $common $avx2 -DFO_ISA=avx2 -c "csrc/$src.c" -o "$work/${src}_avx2.o" &
    gcc $common $avx512 -DFO_ISA=avx512 -c "csrc/$src.c" -o "$work/${src}_avx512.o" &
done
gcc $common -DFO_HAVE_AVX2=1 -DFO_HAVE_AVX512=1 -c csrc/dispatch.c -o "$work/dispatch.o" &
gcc $common -c csrc/coefficients.c -o "$work/coefficients.o" &
wait
gcc $common $avx512 tools/q8_probe.c "$work"/*.o -lm -o "$work/q8_probe"
for threads in 1 2; do
    for prefetch in 1 0; do
        "$work/q8_probe" "$n" "$reps" "$threads" "$prefetch"
    done
done
