#!/usr/bin/env bash
# Installs everything xdprx needs on Debian 12 (run as root): system packages,
# a Python virtualenv in .venv with xdprx (editable) and its test/bench extras,
# the compiled XDP program and warm Numba caches.
set -euo pipefail
cd "$(dirname "$0")"

PKGS=(clang llvm libxdp-dev libxdp1 libbpf-dev libbpf1 xdp-tools bpftool iproute2
      iputils-ping util-linux ethtool gcc libc6-dev linux-libc-dev python3-venv python3-dev
      tcpdump)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install.sh: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e ".[test,bench]"

# bpffs for libxdp and bpftool (harmless if already mounted)
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true

# build the XDP program and fill the Numba cache once, so the first run starts fast
.venv/bin/python -c "import xdprx.kernel.bpfprog as b, xdprx.receiver as r; b.build(); r.warm()"
echo "install.sh: ready (.venv/bin/xdprx)"
