"""The README's Python examples run as written (each in a fresh interpreter, so that the
documented import order is the one exercised).  Without a CUDA device ``cupy`` is NumPy, as
the plain-loop example says the same calls run on the CPU."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests._backends import gpu_count

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(),
                    re.S | re.M)

# Without a GPU, "import cupy as cp" gets NumPy (only the array calls the examples use).
CPU_CUPY = "import sys, numpy\nsys.modules['cupy'] = numpy\n"


def _name(code: str) -> str:
    return "chainer" if "cupy_abn.chainer" in code else "array-api"


def test_readme_has_the_examples():
    assert sorted(_name(b) for b in BLOCKS) == ["array-api", "chainer"]


@pytest.mark.parametrize("code", BLOCKS, ids=[_name(b) for b in BLOCKS])
def test_readme_example_runs(code, tmp_path):
    if "cupy_abn.chainer" in code:
        pytest.importorskip("cupy_abn.chainer")
    prelude = "" if gpu_count() else CPU_CUPY
    script = tmp_path / "example.py"
    script.write_text(prelude + code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "InPlaceFallbackWarning" not in proc.stderr     # the example stays in place
