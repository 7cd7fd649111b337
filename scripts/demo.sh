#!/usr/bin/env bash
# Set up and run the demo on a fresh machine that has only Python 3: trains the same
# ResNet-style network with BatchNormalization + leaky_relu and with InPlaceABN, and writes
# demo_out/demo_<cpu|gpu>.json and .png.  Extra arguments go to the demo (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PIP_CONSTRAINT="$PWD/.ci/build-constraints.txt" PIP_BUILD_CONSTRAINT="$PWD/.ci/build-constraints.txt"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
extras="chainer,progress"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then extras="$extras,cuda12"; fi
.venv/bin/python -m pip install -q -e ".[$extras]" 'numpy<2'
exec .venv/bin/python -m cupy_abn.demo --out demo_out "$@"   # a later --out wins
