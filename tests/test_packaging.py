"""The kernel sources ship inside the installed distribution as ``cupy_abn.kernels``."""
import importlib.metadata as md

import pytest


def test_kernel_sources_are_package_data():
    try:
        files = md.files("cupy-abn")
    except md.PackageNotFoundError:
        pytest.skip("cupy-abn is not installed (running from a bare checkout)")
    names = {str(f).replace("\\", "/") for f in files or ()}
    cu = sorted(n for n in names if n.startswith("cupy_abn/kernels/") and
                n.endswith((".cu", ".cuh", ".h")))
    assert cu, f"no kernel sources under cupy_abn/kernels/ in the installed files: {names}"
    assert "cupy_abn/kernels/__init__.py" in names
