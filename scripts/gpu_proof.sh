#!/usr/bin/env bash
# The GPU proof (README, "GPU proof"): the GPU tests, the kernel benchmark against Chainer,
# PyTorch and Mapillary's inplace_abn, the demo's GPU memory and the static model's fit, in
# two commands of at most 10 minutes each on the GPU machine.  The steps are in benchmarks/gpu_proof.py.
#
#   bash scripts/gpu_proof.sh prepare        # here: .gpu_carry/ (Chainer wheel, inplace-abn
#                                            # sdist); prints the two commands
#   bash scripts/gpu_proof.sh part1 [--out DIR]  # GPU machine: install, environment, GPU tests,
#                                            # inplace_abn built in the background
#   bash scripts/gpu_proof.sh part2          # GPU machine: kernels, demo, memory, model fit
#   bash scripts/gpu_proof.sh unpack DIR     # here: returned files -> benchmarks/results/
#   bash scripts/gpu_proof.sh check          # here: both parts' CPU paths (no GPU needed)
#
# On the GPU machine everything goes to --out DIR (default /tmp/gpu_proof/out), the log
# included; copy DIR back and unpack it here.
set -uo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  prepare)
    py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
    exec "$py" benchmarks/gpu_proof.py prepare "$@" ;;
  part1|part2|all)
    out=/tmp/gpu_proof/out
    if [ "${1:-}" = "--out" ]; then out=$2; shift 2; fi
    mkdir -p "$out"
    export PYTHONUNBUFFERED=1
    # python3 there is the interpreter that holds PyTorch and CuPy
    python3 benchmarks/gpu_proof.py "$cmd" --out "$out" "$@" 2>&1 | tee "$out/gpu_proof_$cmd.log"
    exit "${PIPESTATUS[0]}" ;;
  unpack)
    py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
    exec "$py" benchmarks/gpu_proof.py unpack "$@" ;;
  check)
    py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
    out=/tmp/gpu_proof/check
    if [ "${1:-}" = "--out" ]; then out=$2; shift 2; fi
    status=0
    for part in part1 part2; do
      "$py" benchmarks/gpu_proof.py "$part" --device cpu --out "$out" "$@" || status=1
    done
    exit $status ;;
  *)
    sed -n '2,14p' "$0" >&2
    exit 2 ;;
esac
