#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh machine that has only Python 3:
# a bootstrap venv with tox, then tox's NumPy 1 and NumPy 2 environments.
#   bash scripts/test.sh            # both environments
#   bash scripts/test.sh -e np1     # one environment (any tox arguments)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
if [ ! -x .venv-tox/bin/tox ]; then
  "$py" -m venv .venv-tox
  .venv-tox/bin/python -m pip install -q --upgrade pip
  .venv-tox/bin/python -m pip install -q 'tox>=4'
fi
if [ "$#" -eq 0 ]; then set -- -e np1,np2; fi
exec .venv-tox/bin/tox "$@"
