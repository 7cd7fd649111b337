"""The kernel backend on a CUDA GPU through CuPy: the matrix of tests/_kernel_matrix.py (the
same cases the OpenCL tests run on a CPU) against the float64 reference and the NumPy backend,
plus network-sized shapes.  Skipped cleanly without a GPU."""
import numpy as np
import pytest

from tests._backends import NO_GPU, gpu_count
from tests._kernel_matrix import CASES, F16, F32, Case, check_case

cupy = pytest.importorskip("cupy")


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu_count() < 1, reason=NO_GPU)]

# A ResNet stem (B > 1 fills the GPU) and a late stage (many channels, small m: B = 1).
NET_CASES = [
    Case("stem", (32, 64, 112, 112), F32, "leaky_relu", "inplace", True),
    Case("late", (32, 2048, 7, 7), F16, "elu", "standard", True),
    Case("late", (32, 2048, 7, 7), F32, "leaky_relu", "inplace_v1", False),
]


@pytest.mark.parametrize("case", CASES + NET_CASES, ids=[c.id for c in CASES + NET_CASES])
def test_api_on_cupy_matches_reference_and_numpy(case, monkeypatch):
    if case in NET_CASES:
        _off_the_kink(monkeypatch)
    check_case(case, cupy.asarray, cupy.asnumpy)


def _off_the_kink(monkeypatch):
    """The network-sized cases' x with no output within 1e-4 of the activation's kink
    (``tests/_gpu_cases.away_from_kink``).  Their 3-26 M elements hold outputs closer to 0
    than two correct float32 computations of y agree on (the stem case: 4 within 1e-7 of 0,
    the nearest 3.2e-8), where the GPU and the NumPy backend (or the float64 reference) may
    take different sides of leaky_relu's or ELU's kink: dx differs there by O(1), and
    dgamma, dbeta with it.  The matrix's small cases keep their data, as on PoCL."""
    from tests import _kernel_matrix
    from tests._cases import ACTIVATIONS
    from tests._gpu_cases import away_from_kink
    real = _kernel_matrix.inputs

    def inputs(case):
        x, gamma, beta, rm, rv, dz = real(case)
        x = away_from_kink(x, gamma, beta, rm, rv, mode=case.mode, training=case.training,
                           activation=case.act, param=ACTIVATIONS.get(case.act, 0.0))
        return x, gamma, beta, rm, rv, dz

    monkeypatch.setattr(_kernel_matrix, "inputs", inputs)


@pytest.mark.parametrize("shape", [(32, 64, 112, 112), (32, 256, 56, 56), (32, 512, 28, 28),
                                   (32, 2048, 7, 7)], ids=lambda s: "x".join(map(str, s)))
def test_reduction_plan_fills_whole_waves(shape):
    """At the occupancy the driver reports for the compiled kernel, the reduction grid keeps
    at least 90% of the GPU's block slots busy over its waves."""
    from cupy_abn import _kernel_source as K
    from cupy_abn._kernel_backend import KernelBackend, wave_efficiency
    from cupy_abn._runtime_cupy import runtime_for
    be = KernelBackend(runtime_for(cupy.zeros(1)))
    plan = be.plan(shape)
    vector = shape[2] * shape[3] % 4 == 0
    fn = be.rt.function("channel_moments", "channel_moments",
                        K.defines("channel_moments", store=F32, param=F32, idx64=False,
                                  vector=vector))
    slots = be.rt.multiprocessors * be.rt.occupancy(fn, plan.block)
    assert wave_efficiency(shape[1] * plan.parts, slots) >= 0.9, (plan, slots)


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


def _offset_view(a):
    """``a`` on the GPU one element past a 256-byte boundary: C-contiguous, not 16-byte aligned
    (the scalar path), as a view into a larger buffer is."""
    a = np.ascontiguousarray(a)
    buf = cupy.empty(a.size + 1, a.dtype)
    view = buf[1:].reshape(a.shape)
    view[...] = cupy.asarray(a)
    return view


@pytest.mark.parametrize("dtype", [F32, F16], ids=["float32", "float16"])
def test_unaligned_views_take_the_scalar_path(dtype):
    from cupy_abn._kernel_backend import KernelBackend
    from cupy_abn._runtime_cupy import runtime_for
    case = Case("offset", (4, 3, 16, 16), dtype, "leaky_relu", "inplace", True)
    x = _offset_view(np.zeros(case.shape, dtype))
    assert not KernelBackend(runtime_for(x)).vector_path(x.shape, x)
    check_case(case, _offset_view, cupy.asnumpy)
