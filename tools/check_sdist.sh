#!/usr/bin/env bash
# Build the source distribution, check what it holds, install it into a
# fresh virtual environment (compiling from scratch) and run a smoke test
# from outside the source tree.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
python -m pip install --quiet --upgrade pip build
python -m build --sdist --outdir "$work/dist" . >/dev/null
sdist=("$work"/dist/fastopt-*.tar.gz)
tar tzf "${sdist[0]}" > "$work/files"
for want in LICENSE README.md CHANGELOG.md setup.py pyproject.toml \
            csrc/fastopt/rules.h csrc/kernels_isa.c src/fastopt/_core.pyx \
            src/fastopt/_functional.pxi.tp src/fastopt/_core.pyi.tp \
            src/fastopt/py.typed tests/conftest.py; do
    grep -q "^fastopt-[^/]*/$want\$" "$work/files" || { echo "sdist lacks $want"; exit 1; }
done
if grep -E '\.(so|o)$|/_core\.c$|fo_table\.h$|/_functional\.pxi$|\.pyi$|_build_info\.py$' "$work/files"; then
    echo "sdist holds build products (above)"; exit 1
fi
python -m pip install --quiet "${sdist[0]}"
cd "$work"
python -m fastopt info > info.txt && head -3 info.txt
python - <<'PY'
import numpy as np
import fastopt
from fastopt import functional, reference
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    p = rng.standard_normal(1001).astype(dtype)
    arrays = [p, p.copy(), np.zeros_like(p), np.zeros_like(p)]
    ref = [a.copy() for a in arrays]
    for t in range(1, 6):
        g = rng.standard_normal(1001).astype(dtype)
        functional.adam(arrays[0], g, arrays[2], arrays[3], step=t, lr=1e-2)
        reference.adam(ref[0], g, ref[2], ref[3], step=t, lr=1e-2)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(arrays, ref)), dtype
import pathlib
here = pathlib.Path(fastopt.__file__).parent
assert (here / "py.typed").is_file() and (here / "_core.pyi").is_file()
print("sdist install: Adam equals the reference bit for bit; stubs installed")
PY
