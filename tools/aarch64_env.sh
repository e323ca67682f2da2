#!/usr/bin/env bash
# An emulated aarch64 Linux for fastopt, from Debian and PyPI packages only:
# the cross compiler and qemu-user from Debian, an arm64 python3.11 from
# Debian's arm64 .debs unpacked into a sysroot (dpkg -x, nothing installed
# for arm64 on the host), NumPy and the test requirements from their
# manylinux aarch64 / pure-Python wheels.  The arm64 interpreter runs
# through qemu-aarch64; the compiler it calls (aarch64-linux-gnu-gcc, as
# Debian's arm64 sysconfig names it) is an x86-64 program, which qemu-user
# leaves to the host kernel: builds run at native speed.
#
#   bash tools/aarch64_env.sh            set up (idempotent), print the python
#
# The environment lives in $FASTOPT_AARCH64_DIR (default
# ~/.cache/fastopt-aarch64): sysroot/, bin/python3.11 (the wrapper), venv/.
# Needs root for apt-get (as CI has); run on a Debian 12 x86-64 host.
set -euo pipefail
DIR="${FASTOPT_AARCH64_DIR:-$HOME/.cache/fastopt-aarch64}"
SYSROOT="$DIR/sysroot"
mkdir -p "$DIR"
log() { echo "aarch64_env: $*" >&2; }

need_host=()
command -v qemu-aarch64 >/dev/null || need_host+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || need_host+=(gcc-aarch64-linux-gnu)
[ -e /usr/aarch64-linux-gnu/lib/libc.so ] || need_host+=(libc6-dev-arm64-cross)
apt_updated=0
if [ ${#need_host[@]} -gt 0 ]; then
    log "installing ${need_host[*]}"
    apt-get update -qq && apt_updated=1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_host[@]}" >/dev/null
fi

# arm64 packages of the host's python3.11 and its run-time libraries
ARM64_DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
            libpython3.11-dev python3.11 libc6 libgcc-s1 libgomp1 libstdc++6
            libexpat1 zlib1g libffi8 libssl3 libbz2-1.0 liblzma5 libsqlite3-0
            libpython3.11 libncursesw6 libtinfo6 libreadline8 libuuid1 libcrypt1
            libdb5.3 libgdbm6 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3
            libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1)
if [ ! -x "$SYSROOT/usr/bin/python3.11" ]; then
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        dpkg --add-architecture arm64
        apt_updated=0
    fi
    [ "$apt_updated" = 1 ] || apt-get update -qq
    mkdir -p "$DIR/debs" "$SYSROOT"
    log "downloading ${#ARM64_DEBS[@]} arm64 packages"
    (cd "$DIR/debs" && apt-get download -qq "${ARM64_DEBS[@]/%/:arm64}")
    for deb in "$DIR"/debs/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
fi

# The interpreter: argv[0] (qemu -0) is the wrapper's own path, so that
# sys.executable, venvs made from it and subprocesses of it work.
mkdir -p "$DIR/bin"
cat > "$DIR/bin/python3.11" <<WRAP
#!/bin/sh
exec qemu-aarch64 -L "$SYSROOT" -0 "\$0" "$SYSROOT/usr/bin/python3.11" "\$@"
WRAP
chmod +x "$DIR/bin/python3.11"

VENV="$DIR/venv"
if [ ! -x "$VENV/bin/python" ]; then
    log "venv"
    "$DIR/bin/python3.11" -m venv --without-pip "$VENV"
fi
SITE="$VENV/lib/python3.11/site-packages"
if [ ! -d "$SITE/numpy" ] || [ ! -d "$SITE/pytest" ] || [ ! -d "$SITE/pip" ]; then
    log "wheels for aarch64 into $SITE"
    # the host's pip resolves and unpacks; nothing is compiled
    python3 -m pip install -q --disable-pip-version-check --upgrade \
        --target "$SITE" --platform manylinux2014_aarch64 \
        --python-version 3.11 --implementation cp --abi cp311 \
        --only-binary=:all: \
        pip setuptools wheel "Cython>=3.0" "numpy>=2.0" "pytest>=7" \
        "pytest-benchmark>=4" "hypothesis>=6"
fi
echo "$VENV/bin/python"
