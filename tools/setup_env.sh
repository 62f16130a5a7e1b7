#!/usr/bin/env bash
# Creates .venv and installs the project with training (CPU torch) and test extras.
# torch is pinned to the CPU build (2.13.0); an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[train,test]"
# The second-product benchmark (product_bench) and its tests read Fashion-MNIST from Debian's
# package dataset-fashion-mnist (30 MB, /usr/share/datasets/fashion-mnist).
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && command -v apt-get >/dev/null; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    { $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; } \
      || echo "setup_env: could not install the Debian package dataset-fashion-mnist (needs root or sudo);" \
              "tests/test_second_product.py needs it: apt-get install dataset-fashion-mnist" >&2
fi
