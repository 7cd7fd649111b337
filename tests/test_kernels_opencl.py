"""The kernel backend on a CPU: the CUDA kernel sources and the launch logic of
``cupy_abn._kernel_backend`` run through pyopencl on PoCL, against the float64 reference and the
NumPy backend (tests/_kernel_matrix.py: the default tier runs a covering subset of the case
matrix, the full tier all of it)."""
import numpy as np
import pytest

from tests._kernel_matrix import (BIG, CASES, PATH_IDS, PATH_SHAPES, Case, check_case,
                                  opencl_launches, params)
from tests._backends import pocl_queue_or_skip
from tests._cases import make_inputs

cl = pytest.importorskip("pyopencl")
cla = pytest.importorskip("pyopencl.array")


@pytest.fixture(scope="module")
def queue():
    return pocl_queue_or_skip()


@pytest.fixture(params=["resident", "two-pass"])
def path(request, monkeypatch):
    """Channels that fit one block take the one-launch resident kernels; the two-pass path
    (reduction, then elementwise) is what larger channels take: both run every case."""
    from cupy_abn import _kernel_backend
    monkeypatch.setattr(_kernel_backend, "RESIDENT", request.param == "resident")
    return request.param


@pytest.mark.parametrize("case", params(CASES))
def test_api_on_opencl_matches_reference_and_numpy(queue, case, path):
    check_case(case, lambda a: cla.to_device(queue, np.ascontiguousarray(a)),
               lambda a: a.get())


def test_big_case_uses_several_blocks_per_channel(queue):
    from cupy_abn._kernel_backend import KernelBackend
    from cupy_abn._runtime_opencl import OpenCLRuntime
    plan = KernelBackend(OpenCLRuntime(queue)).plan(BIG)
    assert plan.parts > 1, plan


def _backend(queue):
    from cupy_abn._kernel_backend import KernelBackend
    from cupy_abn._runtime_opencl import OpenCLRuntime
    return KernelBackend(OpenCLRuntime(queue))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_channel_kernels_merge_uneven_partials_with_empty_ones(queue, dtype):
    """What a synchronized layer passes: (C, R) partials of different counts, some empty."""
    from cupy_abn._numpy_backend import NumpyBackend
    x, gamma, beta, rm, rv, dz = make_inputs((9, 3, 4), dtype, "partials")
    npb, be = NumpyBackend(), _backend(queue)
    pieces = [x[:0], x[:2], x[2:3], x[:0], x[3:]]   # counts 0, 8, 4, 0, 24 per channel
    parts = []
    for p in pieces:
        if p.shape[0]:
            parts.append(npb.moments(p, np.dtype(dtype)))
        else:
            z = np.zeros((3, 1), x.dtype)
            parts.append((z, z, z, np.zeros(3, x.dtype)))
    # Each piece is shifted by its own first element: bring the means to a common shift.
    shift = parts[1][3]
    count = np.concatenate([p[0] for p in parts], axis=1)
    mean = np.concatenate([p[1] + (p[3] - shift)[:, None] * (p[0] > 0) for p in parts], axis=1)
    m2 = np.concatenate([p[2] for p in parts], axis=1)
    want = npb.channel_train(*npb.moments(x, np.dtype(dtype)), gamma, beta, rm.copy(), rv.copy(), eps=2e-5,
                             decay=0.9, abs_gamma=True)
    d = lambda a: cla.to_device(queue, np.ascontiguousarray(a))  # noqa: E731
    rmd, rvd = d(rm), d(rv)
    got = be.channel_train(d(count), d(mean), d(m2), d(shift), d(gamma), d(beta), rmd, rvd,
                           eps=2e-5, decay=0.9, abs_gamma=True)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(got.get(), want, rtol=tol, atol=tol)
    # Backward sums: plain sums over any number of partials.
    sdy = np.random.default_rng(0).standard_normal((3, 5)).astype(dtype)
    sdt = np.random.default_rng(1).standard_normal((3, 5)).astype(dtype)
    for t in (0, 1, 2):
        w = npb.channel_backward(sdy, sdt, want, gamma, m=36, t=t, training=True,
                                 abs_gamma=True)
        g = be.channel_backward(d(sdy), d(sdt), d(want), d(gamma), m=36, t=t, training=True,
                                abs_gamma=True)
        for a, b in zip(g, w):   # the kernels' coef adds rows T0, T1 after A, B, K
            np.testing.assert_allclose(a.get()[:len(b)], b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float16, np.float64], ids=["float16", "float64"])
def test_64bit_indexing_variant(queue, dtype, monkeypatch):
    """The IDX64 variants (used from 2^31 elements) on a small tensor."""
    from cupy_abn import _kernel_source
    from tests._kernel_matrix import Case
    monkeypatch.setattr(_kernel_source, "IDX64_FROM", 0)
    case = Case("NCHW", (2, 3, 5, 7), dtype, "elu", "inplace", True)
    check_case(case, lambda a: cla.to_device(queue, np.ascontiguousarray(a)),
               lambda a: a.get())


@pytest.mark.parametrize("shape", [(3, 7, 13, 11), (5, 3, 1, 1), (2, 2, 300), (3, 5, 8, 8)],
                         ids=["3x7x13x11", "5x3x1x1", "2x2x300", "3x5x8x8-vector"])
def test_grid_smaller_than_the_rows(queue, shape, monkeypatch):
    """Elementwise grids of 1 or 2 blocks: every block walks many rows (channel wrap-around
    with a row step that is not a multiple of C), on the scalar and the vector path."""
    from cupy_abn import _kernel_backend
    from tests._kernel_matrix import Case
    monkeypatch.setattr(_kernel_backend, "RESIDENT", False)   # the elementwise kernels
    for grid in (1, 2):
        monkeypatch.setattr(_kernel_backend, "MAX_ROW_GRID", grid)
        for mode in ("standard", "inplace"):
            case = Case("walk", shape, np.float32, "leaky_relu", mode, True)
            check_case(case, lambda a: cla.to_device(queue, np.ascontiguousarray(a)),
                       lambda a: a.get())


@pytest.mark.parametrize("shape,dtype,vec", PATH_SHAPES, ids=PATH_IDS)
def test_launch_logic_picks_the_vector_or_scalar_path(queue, shape, dtype, vec, path,
                                                      monkeypatch):
    """Rows of whole 16-byte packs stream packs; other rows (7x7: 49 elements) elements."""
    seen = opencl_launches(queue, shape, dtype, monkeypatch)
    streaming = [(e, v) for e, v in seen if v is not None]
    want = ({"normalize_train_resident", "grad_resident"} if path == "resident" else
            {"channel_moments", "normalize_activate", "grad_sums", "grad_input"})
    assert {e for e, _ in streaming} == want
    assert {v for _, v in streaming} == {vec}, streaming


def test_a_training_step_takes_two_launches_each_way(queue, monkeypatch):
    """Channels too large for one block: the reductions finish in their last block."""
    seen = opencl_launches(queue, BIG, np.float32, monkeypatch)
    assert [e for e, _ in seen] == ["channel_moments", "normalize_activate", "grad_sums",
                                    "grad_input"], seen


def test_small_channels_take_one_launch_each_way(queue, monkeypatch):
    """32x2048x7x7-like channels (m = 1568 <= 8 elements x 256 threads) are held by one block:
    one launch per pass, x (z, dz) read once."""
    from cupy_abn._kernel_backend import resident_block
    seen = opencl_launches(queue, (32, 2, 7, 7), np.float32, monkeypatch)
    assert [e for e, _ in seen] == ["normalize_train_resident", "grad_resident"], seen
    assert resident_block(32 * 49, 1) == 256
    assert resident_block(32 * 784, 1) == 0           # 32x512x28x28: two passes


def test_scalar_path_on_rows_that_could_take_packs(queue, monkeypatch):
    """The scalar path on large aligned rows (what an offset view gets on a GPU)."""
    from cupy_abn._kernel_backend import KernelBackend
    monkeypatch.setattr(KernelBackend, "vector_path", lambda self, shape, *a, **kw: False)
    for dt, mode in ((np.float32, "inplace"), (np.float16, "standard")):
        check_case(Case("big", BIG, dt, "elu", mode, True),
                   lambda a: cla.to_device(queue, np.ascontiguousarray(a)), lambda a: a.get())


def test_results_are_identical_from_run_to_run(queue):
    """Fixed merge order everywhere (the last block merges partials b = 0 .. B-1)."""
    import cupy_abn
    x, gamma, beta, rm, rv, dz = make_inputs(BIG, np.float32, "repeat")
    d = lambda a: cla.to_device(queue, np.ascontiguousarray(a))  # noqa: E731
    runs = []
    for _ in range(3):
        xd, rmd, rvd = d(x), d(rm), d(rv)
        z, saved = cupy_abn.abn_forward(xd, d(gamma), d(beta), rmd, rvd, training=True)
        dx, dg, db = cupy_abn.abn_backward(saved, d(dz))
        runs.append([a.get() for a in (z, rmd, rvd, dx, dg, db)] + [saved.stats.get()])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
