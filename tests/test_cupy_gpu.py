"""The kernel backend on a CUDA GPU through CuPy: the matrix of tests/_kernel_matrix.py (the
same cases the OpenCL tests run on a CPU) against the float64 reference and the NumPy backend,
plus network-sized shapes.  Skipped cleanly without a GPU."""
import numpy as np
import pytest

from tests._kernel_matrix import CASES, F16, F32, Case, check_case

cupy = pytest.importorskip("cupy")


def _gpu_count() -> int:
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_gpu_count() < 1, reason="no CUDA GPU")]

# A ResNet stem (B > 1 fills the GPU) and a late stage (many channels, small m: B = 1).
NET_CASES = [
    Case("stem", (32, 64, 112, 112), F32, "leaky_relu", "inplace", True),
    Case("late", (32, 2048, 7, 7), F16, "elu", "standard", True),
    Case("late", (32, 2048, 7, 7), F32, "leaky_relu", "inplace_v1", False),
]


@pytest.mark.parametrize("case", CASES + NET_CASES, ids=[c.id for c in CASES + NET_CASES])
def test_api_on_cupy_matches_reference_and_numpy(case):
    check_case(case, cupy.asarray, cupy.asnumpy)


def test_reduction_plan_fills_the_gpu():
    from cupy_abn._kernel_backend import KernelBackend
    from cupy_abn._runtime_cupy import runtime_for
    be = KernelBackend(runtime_for(cupy.zeros(1)))
    sms = be.rt.multiprocessors
    stem = be.plan((32, 64, 112, 112))
    assert stem.block == 256 and stem.parts * 64 >= 4 * sms, stem
    late = be.plan((32, 2048, 7, 7))
    assert late.parts == 1 and late.block <= 128, late


def test_modules_are_compiled_once_per_device():
    from cupy_abn import _runtime_cupy
    case = CASES[0]
    check_case(case, cupy.asarray, cupy.asnumpy)
    n = len(_runtime_cupy._MODULES)
    check_case(case, cupy.asarray, cupy.asnumpy)
    assert len(_runtime_cupy._MODULES) == n


def test_64bit_indexing_variant(monkeypatch):
    from cupy_abn import _kernel_source
    monkeypatch.setattr(_kernel_source, "IDX64_FROM", 0)
    check_case(Case("NCHW", (2, 3, 5, 7), F32, "elu", "inplace", True), cupy.asarray,
               cupy.asnumpy)
