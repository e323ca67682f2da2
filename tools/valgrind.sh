#!/usr/bin/env bash
# valgrind memcheck over a short run of every kernel and optimizer class.
#
#   bash tools/valgrind.sh            (uses the python on PATH, fastopt installed)
#   PATH=/tmp/venv-dev/bin:$PATH bash tools/valgrind.sh
#
# Prints valgrind's totals, then the errors and definitely-lost blocks whose
# stack passes through fastopt (its extension module _core, the kernels or
# the dispatcher).  Fails on any of those.  The interpreter, the dynamic
# loader and NumPy's import report errors of their own under memcheck (a
# Python built without valgrind support reads uninitialised memory on
# purpose in its allocator and int cache; glibc's SSE2 strncmp reads past a
# block end), so valgrind's exit status alone cannot be the verdict.
# FASTOPT_SIMD=avx2 keeps valgrind on an instruction set it emulates.
set -euo pipefail
cd "$(dirname "$0")"
log="${VALGRIND_LOG:-$(mktemp)}"
status=0
PYTHONMALLOC=malloc FASTOPT_SIMD="${FASTOPT_SIMD:-avx2}" \
  valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite --error-exitcode=3 \
  --num-callers=40 --log-file="$log" \
  python valgrind_workload.py > "$log.out" || status=$?
cat "$log.out"
echo "valgrind log: $log (workload exit status $status)"
echo "--- totals, all code:"
grep -E "ERROR SUMMARY|definitely lost:" "$log" || true
echo "    invalid reads:  $(grep -c 'Invalid read' "$log" || true)"
echo "    invalid writes: $(grep -c 'Invalid write' "$log" || true)"
# One record per error or leak: its first line and whether its stack
# mentions fastopt.
records="$(awk '
  /^==[0-9]+== [^ ]/ && !inrec { head = $0; inrec = 1; ours = 0; next }
  inrec && /(fastopt|_core\.cpython|kernels_isa|dispatch\.c|[^a-z_]fo_[a-z])/ { ours = 1 }
  inrec && /^==[0-9]+== $/ { if (ours) print head; inrec = 0 }
' "$log")"
ours_invalid=$(printf '%s\n' "$records" | grep -c -E "Invalid (read|write)" || true)
ours_lost=$(printf '%s\n' "$records" | grep -E "definitely lost in loss record" \
  | sed -E 's/^==[0-9]+== ([0-9,]+) .*/\1/; s/,//g' | awk '{s += $1} END {print s + 0}' || true)
ours_all=$(printf '%s\n' "$records" | grep -c . || true)
echo "--- in fastopt: $ours_all records; invalid read/write: $ours_invalid; definitely lost: $ours_lost bytes"
if [ -n "$records" ]; then printf '%s\n' "$records" | sort | uniq -c; fi
[ "$status" -eq 0 ] || [ "$status" -eq 3 ] || { echo "workload failed"; exit "$status"; }
# valgrind's exit status is 3 whenever the interpreter reports anything, so
# the workload's own verdict is its last line
grep -qx "workload done" "$log.out" || { echo "workload did not finish cleanly"; exit 1; }
[ "$ours_all" -eq 0 ]
