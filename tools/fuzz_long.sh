#!/usr/bin/env bash
# The long fuzz run: every entry point of tests/test_fuzz.py with
# FASTOPT_FUZZ_EXAMPLES examples (default 10,000) instead of 200.
#
#   bash tools/fuzz_long.sh [pytest args...]      (python on PATH, fastopt installed)
#   FASTOPT_FUZZ_EXAMPLES=2000 bash tools/fuzz_long.sh -k optimizer
#
# --hypothesis-show-statistics prints, per entry point, how many examples
# passed, failed and were invalid; the pytest summary gives the failures.
set -euo pipefail
cd "$(dirname "$0")/.."
export FASTOPT_FUZZ_EXAMPLES="${FASTOPT_FUZZ_EXAMPLES:-10000}"
export FASTOPT_FUZZ_LOG="${FASTOPT_FUZZ_LOG:-/tmp/fastopt-fuzz-long.log}"
echo "example counts: $FASTOPT_FUZZ_LOG"
exec python -m pytest tests/test_fuzz.py -q -p no:cacheprovider \
  --hypothesis-show-statistics "$@"
