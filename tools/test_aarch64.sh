#!/usr/bin/env bash
# Build fastopt for aarch64 (linux_aarch64 wheel, `pip wheel .` run by an
# emulated arm64 python) and run tests on it under qemu-user.
#
#   bash tools/test_aarch64.sh            golden trajectories, per-step
#                                         scalars, seed vectors and kernel
#                                         parity for every rule option (CI)
#   bash tools/test_aarch64.sh --parity   all kernel-parity tests (every
#                                         size and alignment as well)
#   bash tools/test_aarch64.sh --all      the whole suite
#   bash tools/test_aarch64.sh -- ARGS    pytest ARGS instead
#
# The environment comes from tools/aarch64_env.sh (Debian and PyPI packages
# only).  FASTOPT_EMULATED=1 tells the suite that it runs under emulation
# (the RSS-growth test is skipped: qemu's own memory grows the process).
set -euo pipefail
cd "$(dirname "$0")/.."
py="$(bash tools/aarch64_env.sh)"
env_dir="$(dirname "$(dirname "$(dirname "$py")")")"
sysroot="$env_dir/sysroot"
wheels="$env_dir/wheelhouse"
rm -rf "$wheels" build/temp.linux-aarch64-* build/lib.linux-aarch64-*
start=$SECONDS
# Debian's arm64 sysconfig names aarch64-linux-gnu-gcc; the multiarch
# pyconfig.h it includes comes from the sysroot
CFLAGS="-I$sysroot/usr/include" "$py" -m pip wheel -q --no-build-isolation \
    --no-deps --disable-pip-version-check -w "$wheels" .
"$py" -m pip install -q --no-deps --force-reinstall --disable-pip-version-check \
    "$wheels"/fastopt-*-linux_aarch64.whl
echo "aarch64 wheel built and installed in $((SECONDS - start)) s: $(basename "$wheels"/fastopt-*.whl)"
cd tests/..   # the installed package is imported, not src/
"$py" - <<'PY'
import fastopt
c = fastopt._config.config()
assert c["architecture"] == "aarch64" and list(c["simd_levels"]) == ["baseline"], c
fastopt.show_config()
PY
export FASTOPT_EMULATED=1
case "${1:-}" in
    --all) set -- tests ;;
    --) shift ;;
    --parity) set -- tests/test_golden_trajectories.py tests/test_fo_math.py \
            tests/test_seed_vectors.py tests/test_grad_utils.py \
            tests/test_nonfinite.py tests/test_kernels.py \
            -k "not 1048577 and not 65537" ;;
    "") set -- tests/test_golden_trajectories.py tests/test_fo_math.py \
            tests/test_seed_vectors.py tests/test_kernels.py \
            -k "not test_kernels or parity_options or simd_levels" ;;
    *) echo "usage: $0 [--parity | --all | -- PYTEST_ARGS]" >&2; exit 2 ;;
esac
start=$SECONDS
"$py" -m pytest -q -p no:cacheprovider "$@"
echo "aarch64 tests under qemu-user: $((SECONDS - start)) s"
