#!/usr/bin/env bash
# Build fastopt for aarch64 (linux_aarch64 wheel, `pip wheel .` run by an
# emulated arm64 python) and run tests on it under qemu-user.
#
#   bash tools/test_aarch64.sh            golden trajectories, per-step
#                                         scalars, seed vectors and kernel
#                                         parity for every rule option (CI)
#   bash tools/test_aarch64.sh --parity   all kernel-parity tests (every
#                                         size and alignment as well)
#   bash tools/test_aarch64.sh --all      the whole suite, its test files
#                                         split over FASTOPT_TEST_JOBS
#                                         parallel runs (default: nproc)
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
# qemu's emulated CPU has SVE, for which NumPy's OpenBLAS picks its SVE
# kernels; with them np.linalg.svd of a 30 x 12 float64 matrix (a check in
# tests/test_muon.py) reports "SVD did not converge" under qemu, and with
# the NEON kernels it converges.  fastopt's own kernels do not use SVE.
export OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-ARMV8}"
if [ "${1:-}" = --all ]; then
    # qemu runs one emulated core per process: the test files are dealt to
    # `jobs` pytest processes, largest file first onto the lightest share
    jobs="${FASTOPT_TEST_JOBS:-$(nproc)}"
    mapfile -t shares < <(ls -S tests/test_*.py | awk -v n="$jobs" '
        { cmd = "wc -c < " $0; cmd | getline size; close(cmd)
          k = 0; for (i = 1; i < n; i++) if (load[i] < load[k]) k = i
          load[k] += size; files[k] = files[k] " " $0 }
        END { for (i = 0; i < n; i++) print files[i] }')
    mkdir -p build
    start=$SECONDS
    pids=()
    for i in "${!shares[@]}"; do
        # shellcheck disable=SC2086
        "$py" -m pytest -q -p no:cacheprovider ${shares[$i]} \
            > "build/aarch64-tests-$i.log" 2>&1 &
        pids+=($!)
    done
    status=0
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || status=1
        echo "share $i:$(echo " ${shares[$i]}" | sed 's| tests/| |g')"
        tail -n 3 "build/aarch64-tests-$i.log"
    done
    echo "aarch64 whole suite under qemu-user, $jobs processes: $((SECONDS - start)) s"
    exit $status
fi
case "${1:-}" in
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
