#!/usr/bin/env bash
# Set up and run the test suite on a fresh machine that has only Python 3: a bootstrap venv
# with tox, then tox's NumPy 1 and NumPy 2 environments.
#   bash scripts/test.sh                 # the default tier, both environments
#   bash scripts/test.sh --full          # the full tier: after a kernel or launch-logic
#                                        # change, and before a release
#   bash scripts/test.sh -e np1          # one environment (any tox arguments)
#   bash scripts/test.sh --full -e np2 -- tests/test_nvrtc_compile.py
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--full" ]; then
  export CUPY_ABN_TIER=full
  shift
fi
py=${PYTHON:-python3}
if [ ! -x .venv-tox/bin/tox ]; then
  "$py" -m venv .venv-tox
  .venv-tox/bin/python -m pip install -q --upgrade pip
  .venv-tox/bin/python -m pip install -q 'tox>=4'
fi
if [ "$#" -eq 0 ]; then set -- -e np1,np2; fi
start=$SECONDS
echo "cupy-abn tests: ${CUPY_ABN_TIER:-default} tier"
status=0
.venv-tox/bin/tox "$@" || status=$?
echo "cupy-abn tests: ${CUPY_ABN_TIER:-default} tier took $((SECONDS - start)) s (exit $status)"
exit $status
