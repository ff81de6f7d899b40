#!/usr/bin/env bash
# Set up navsvc on a fresh Debian machine (CPU only): system packages, a virtual
# environment in .venv, the CPU build of torch, and the project with its dev extras.
# Idempotent: a second run only checks and returns in a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${NAVSVC_VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${NAVSVC_TORCH:-torch==2.13.0}

# --- system packages -------------------------------------------------------
# libusb-1.0-0: needed by open3d's shared library.
# libopenigtlink-dev + openigtlink-examples + g++: the reference OpenIGTLink C++
# client used by the interoperability tests.
need_apt=()
for pkg in libusb-1.0-0 libopenigtlink-dev openigtlink-examples g++; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing system packages: ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# --- virtual environment ----------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q)

stamp="$VENV/.navsvc-setup-stamp"
want=$( (cat pyproject.toml; echo "$TORCH_SPEC") | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import navsvc" 2>/dev/null; then
    exit 0
fi
# torch first, pinned, so that no dependency pulls the multi-GB CUDA build.
"$VENV/bin/python" -c "import torch" 2>/dev/null || "${PIP[@]}" "$TORCH_SPEC"
echo "setup: installing navsvc and its dependencies"
"${PIP[@]}" -e ".[dev]"
echo "$want" > "$stamp"
echo "setup: done ($VENV)"
