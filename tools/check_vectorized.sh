#!/usr/bin/env bash
# Compile the kernels of every x86-64 level into a scratch directory and
# check them with tools/check_simd.py: each level's vector width in every
# rule and in the 8-bit codec, and no fused multiply-add.  The aarch64
# objects that tools/test_aarch64.sh leaves in build/, when present, are
# checked as well.  Needs the build requirements (pyproject.toml) in the
# running python; installs them when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY' 2>/dev/null || python -m pip install -q --disable-pip-version-check "setuptools>=77" "Cython>=3.0" "numpy>=2.0"
import Cython, numpy, setuptools
assert int(Cython.__version__.split(".")[0]) >= 3
assert int(setuptools.__version__.split(".")[0]) >= 77
assert int(numpy.__version__.split(".")[0]) >= 2
PY
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
start=$SECONDS
python setup.py -q build_ext --build-temp "$out/temp.check" --build-lib "$out/lib" > "$out/log" 2>&1 \
    || { cat "$out/log"; exit 1; }
for arm in build/temp.linux-aarch64-*; do
    [ -d "$arm" ] && cp -r "$arm" "$out/"
done
echo "kernels compiled for the check in $((SECONDS - start)) s"
python tools/check_simd.py "$out"
