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
# Install once: again only when the packaging (setup.cfg, pyproject.toml, the build
# constraints) or the extras change, or cupy_abn no longer imports.  The stamp holds a hash
# of all of them.
spec=(-e ".[$extras]" 'numpy<2')
stamp=.venv/.cupy-abn-demo-install
want=$({ cat setup.cfg pyproject.toml .ci/build-constraints.txt 2>/dev/null; echo "${spec[*]}"; } \
       | .venv/bin/python -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c 'import cupy_abn' 2>/dev/null; then
  .venv/bin/python -m pip install -q "${spec[@]}"
  echo "$want" > "$stamp"
fi
exec .venv/bin/python -m cupy_abn.demo --out demo_out "$@"   # a later --out wins
