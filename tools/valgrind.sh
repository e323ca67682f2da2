#!/usr/bin/env bash
# valgrind memcheck over a short run of every kernel and optimizer class.
#
#   bash tools/valgrind.sh            (uses the python on PATH, fastopt installed)
#
# Prints valgrind's summary; fails on any invalid read/write or any byte
# definitely lost in fastopt.  FASTOPT_SIMD=avx2 keeps valgrind on an
# instruction set it emulates.
set -euo pipefail
cd "$(dirname "$0")"
log="$(mktemp)"
PYTHONMALLOC=malloc FASTOPT_SIMD="${FASTOPT_SIMD:-avx2}" \
  valgrind --tool=memcheck --leak-check=full --errors-for-leak-kinds=definite \
  --show-leak-kinds=definite --error-exitcode=3 --log-file="$log" \
  python valgrind_workload.py
status=$?
grep -E "ERROR SUMMARY|definitely lost|Invalid (read|write)" "$log" | sort | uniq -c
exit $status
