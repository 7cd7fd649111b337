"""The public API's type hints pass mypy, with the configuration of setup.cfg's ``[mypy]``.

That configuration names the files (the package, :mod:`cupy_abn.api`, :mod:`cupy_abn.sync`
and :mod:`cupy_abn.chainer`; mypy follows their imports) and the optional libraries it may
skip where they are not installed (CuPy, Chainer, PyOpenCL, mpi4py).  The package ships
``py.typed`` (tests/test_wheel.py checks that it is in the wheel).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# mypy reads the sources, not the environment's NumPy version: one tox environment runs it.
pytestmark = pytest.mark.once


def test_mypy_public_api():
    pytest.importorskip("mypy")
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "MYPY_CACHE_DIR")}
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "setup.cfg",
                          "--no-error-summary"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"mypy:\n{out.stdout}{out.stderr}"
