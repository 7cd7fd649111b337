"""The skip guard of tests/conftest.py: under ``CUPY_ABN_ONLY_GPU_SKIPS=1`` only a missing CUDA
device may skip; a reason that merely mentions CUDA or a GPU (a missing NVRTC, cuobjdump,
PoCL or mpiexec) is turned into a failure."""
from types import SimpleNamespace

import pytest

from tests import conftest


def _report(reason):
    return SimpleNamespace(skipped=True, outcome="skipped",
                           longrepr=("tests/x.py", 1, f"Skipped: {reason}"))


@pytest.mark.parametrize("reason", ["no CUDA GPU", "needs two CUDA GPUs",
                                    "no CUDA GPU with 10 bytes free (3 free)"])
def test_a_missing_device_may_skip(reason, monkeypatch):
    monkeypatch.setenv("CUPY_ABN_ONLY_GPU_SKIPS", "1")
    rep = _report(reason)
    conftest._fail_non_gpu_skip(rep)
    assert rep.outcome == "skipped"


@pytest.mark.parametrize("reason", [
    "NVRTC 12 not found (pip install .[nvrtc])", "CUDA 12 NVRTC not found",
    "CUDA tools missing: NVRTC none", "no PoCL OpenCL device", "mpiexec not found",
    "CuPy (no GPU needed) for cupy_abn._runtime_cupy", "could not import 'chainer'"])
def test_anything_else_fails_under_tox(reason, monkeypatch):
    monkeypatch.setenv("CUPY_ABN_ONLY_GPU_SKIPS", "1")
    rep = _report(reason)
    conftest._fail_non_gpu_skip(rep)
    assert rep.outcome == "failed" and reason in rep.longrepr


def test_skips_stay_skips_outside_tox(monkeypatch):
    monkeypatch.delenv("CUPY_ABN_ONLY_GPU_SKIPS", raising=False)
    rep = _report("no PoCL OpenCL device")
    conftest._fail_non_gpu_skip(rep)
    assert rep.outcome == "skipped"
