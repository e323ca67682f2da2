#!/usr/bin/env bash
# Build fastopt with AddressSanitizer + UndefinedBehaviorSanitizer and run the
# whole test suite under them.  Any sanitizer report fails the run.
#
#   bash tools/sanitize.sh [pytest args...]
#   bash tools/sanitize.sh tests/test_fuzz.py -k optimizer   (test paths: of the work tree)
#
# Python itself is not instrumented, so libasan is preloaded and leak
# detection (which would report the interpreter's own lifetime allocations) is
# off; memory errors and undefined behaviour in fastopt abort the run.
set -euo pipefail
cd "$(dirname "$0")/.."
tree="$PWD"
# Test paths among the arguments are relative to the work tree; without any,
# the whole suite runs.
args=() paths=0
for a in "$@"; do
  if [ -e "$tree/${a%%::*}" ]; then args+=("$tree/$a"); paths=1; else args+=("$a"); fi
done
[ "$paths" -eq 1 ] || args=("$tree/tests" "${args[@]}")
work="$(mktemp -d)"
python3 -m venv "$work/venv"
. "$work/venv/bin/activate"
python -m pip install --quiet --upgrade pip
# build from a copy, so that the build directory of the work tree is untouched
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/src"
FASTOPT_SANITIZE=1 pip install --quiet "$work/src[test]"
asan="$(gcc -print-file-name=libasan.so)"
log="$work/sanitizer"
# allocator_may_return_null: a request beyond any memory (the fuzzing asks
# NumPy for terabytes) gets NULL, and so MemoryError, as without ASan.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1:log_path=$log"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$log"
cd "$work"   # import the installed package, not the source tree
# UBSan (gcc 12, -fno-sanitize-recover) writes its report to stderr, not to
# log_path, and halts the process: pytest's default capture of file
# descriptor 2 would swallow it with the run, so only sys.stderr is
# captured, and the output is kept and counted as well as the log files.
out="$work/pytest.out"
set +e
LD_PRELOAD="$asan" python -m pytest -q -p no:cacheprovider --capture=sys "${args[@]}" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e
reports=$(cat "$log".* "$out" 2>/dev/null | grep -c -E "ERROR: AddressSanitizer|runtime error:" || true)
echo "sanitizer reports: $reports; pytest exit status: $status"
[ "$reports" -eq 0 ] && [ "$status" -eq 0 ]
