"""The kernel sources ship inside the installed distribution as ``cupy_abn.kernels``.

Checked in a child interpreter started outside the checkout: pytest puts the repository root on
``sys.path``, where a build leaves ``cupy_abn.egg-info`` and the source tree shadows the installed
package.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# What the install put in site-packages, the same under either NumPy: one environment.
pytestmark = pytest.mark.once

_PROBE = r"""
import importlib.metadata as md, importlib.resources, json
import cupy_abn
from cupy_abn import _kernel_source
try:
    files = [str(f).replace("\\", "/") for f in (md.files("cupy-abn") or ())]
except md.PackageNotFoundError:
    files = None
root = importlib.resources.files("cupy_abn.kernels")
print(json.dumps({
    "module": cupy_abn.__file__,
    "files": files,
    "kernels": sorted(p.name for p in root.iterdir() if p.name.endswith((".cu", ".cuh", ".h"))),
    "source_len": len(_kernel_source.source("normalize_activate", "cuda")),
}))
"""


def _probe(tmp_path):
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0 and "No module named 'cupy_abn'" in out.stderr:
        pytest.skip("cupy-abn is not installed (running from a bare checkout)")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kernel_sources_are_package_data(tmp_path):
    info = _probe(tmp_path)
    shipped = {p.name for p in (REPO / "kernels").iterdir()
               if p.suffix in (".cu", ".cuh", ".h")}
    assert set(info["kernels"]) == shipped
    assert info["source_len"] > 0
    if Path(info["module"]).resolve().is_relative_to(REPO) or info["files"] is None:
        return  # editable install: the package is the checkout itself
    names = set(info["files"])
    assert {f"cupy_abn/kernels/{n}" for n in shipped} <= names, sorted(names)
    assert "cupy_abn/kernels/__init__.py" in names
