#!/usr/bin/env bash
# Run part of the test suite on an emulated CPU without AVX (qemu-user,
# -cpu Nehalem: SSE4.2 only), to show that the portable build imports, picks
# the baseline level and computes the same bits there.
#
#   bash tools/test_without_avx2.sh [pytest args...]
#
# Needs qemu-user (apt-get install qemu-user) and fastopt with its test
# extra installed in the python on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v qemu-x86_64 >/dev/null || { echo "qemu-x86_64 not found: apt-get install qemu-user"; exit 2; }
py="$(python -c 'import sys; print(sys.executable)')"
cd tests/..  # rootdir for pytest; the installed package is imported
qemu-x86_64 -cpu Nehalem "$py" - <<'PY'
import fastopt
assert fastopt.get_simd_level() == "baseline", fastopt.get_simd_level()
assert "avx2" not in fastopt._core.cpu_features()
print("emulated CPU features:", " ".join(fastopt._core.cpu_features()))
PY
exec qemu-x86_64 -cpu Nehalem "$py" -m pytest -q -p no:cacheprovider \
  tests/test_seed_vectors.py tests/test_bad_input.py tests/test_grad_utils.py \
  tests/test_golden_trajectories.py tests/test_fo_math.py \
  "tests/test_kernels.py" -k "not 1048577 and not 65537" "$@"
