"""Channels-last x on the kernels (PoCL): x viewed as (M, C, 1), C the fastest axis, as NHWC
reduced over ``axis=(0, 1, 2)`` or 2-D x gives it.  The ``*_last`` kernels
(kernels/channel_tile.cuh) against the float64 reference and the NumPy backend, their launch
logic (tiles along C, blocks per tile, vector or scalar path) and the partials a synchronized
layer exchanges."""
import numpy as np
import pytest

import cupy_abn
from tests._backends import pocl_queue_or_skip
from tests._cases import make_inputs
from tests._kernel_matrix import LAST_CASES, check_case, opencl_launches

cl = pytest.importorskip("pyopencl")
cla = pytest.importorskip("pyopencl.array")


@pytest.fixture(scope="module")
def queue():
    return pocl_queue_or_skip()


def _dev(queue):
    return lambda a: cla.to_device(queue, np.ascontiguousarray(a))


def _backend(queue):
    from cupy_abn._kernel_backend import KernelBackend
    from cupy_abn._runtime_opencl import OpenCLRuntime
    return KernelBackend(OpenCLRuntime(queue))


@pytest.mark.parametrize("case", LAST_CASES, ids=[c.id for c in LAST_CASES])
def test_channels_last_matches_reference_and_numpy(queue, case):
    check_case(case, _dev(queue), lambda a: a.get())


@pytest.mark.parametrize("shape,dtype,vec", [
    ((64, 40), np.float32, "4"), ((64, 48), np.float16, "8"), ((64, 6), np.float64, "2"),
    ((64, 37), np.float32, "1"), ((64, 12), np.float16, "1"), ((8, 16, 1, 1), np.float32, "4")],
    ids=["f32-C40", "f16-C48", "f64-C6", "f32-C37-scalar", "f16-C12-scalar", "NCHW-1x1"])
def test_channels_last_takes_the_last_kernels(queue, shape, dtype, vec, monkeypatch):
    """S == 1 (2-D x, or 1x1 spatial): the *_last kernels, two launches each way (never the
    resident ones), packs along C when C is a whole number of packs."""
    seen = opencl_launches(queue, shape, dtype, monkeypatch)
    assert [e for e, _ in seen] == ["channel_moments_last", "normalize_activate_last",
                                    "grad_sums_last", "grad_input_last"], seen
    assert {v for _, v in seen} == {vec}, seen


def test_plan_tiles_and_blocks_per_tile(queue):
    """The matrix's large cases reach B > 1 blocks per tile on this device; the tile covers
    at most 32 packs."""
    from cupy_abn._kernel_backend import tile_width
    be = _backend(queue)
    assert be.plan((640, 40)).parts > 1
    assert be.plan((384, 320), np.float16).parts > 1
    assert [tile_width(p) for p in (1, 3, 10, 32, 40, 1000)] == [1, 4, 16, 32, 32, 32]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_partials_of_a_synchronized_layer(queue, dtype):
    """moments() and grad_sums() (what a synchronized layer exchanges, then finishes with
    channel_train / channel_backward) on channels-last x equal the NumPy backend's."""
    from cupy_abn._numpy_backend import NumpyBackend
    from cupy_abn._state import T_U
    x, gamma, beta, rm, rv, dz = make_inputs((500, 40), dtype, "last-partials")
    npb, be, d = NumpyBackend(), _backend(queue), _dev(queue)
    acc = np.dtype(dtype)
    parts = be.moments(d(x), acc)
    assert parts[0].shape[1] > 1   # several partials per channel
    got = be.channel_train(*parts, d(gamma), d(beta), d(rm), d(rv), eps=2e-5, decay=0.9,
                           abs_gamma=True).get()
    want = npb.channel_train(*npb.moments(x, acc), gamma, beta, rm.copy(), rv.copy(), eps=2e-5,
                             decay=0.9, abs_gamma=True)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    z = np.maximum(x, 0.01 * x).astype(dtype)   # any values in the activation's range
    terms = be.backward_terms(d(z), d(dz), None, d(want), "leaky_relu", 0.01, T_U)
    sdy, sdt = (a.get().sum(axis=1) for a in be.grad_sums(terms))
    nterms = npb.backward_terms(z, dz, None, want, "leaky_relu", 0.01, T_U)
    nsdy, nsdt = (np.asarray(a).sum(axis=1) for a in npb.grad_sums(nterms))
    np.testing.assert_allclose(sdy, nsdy, rtol=tol * 10, atol=tol * 30)
    np.testing.assert_allclose(sdt, nsdt, rtol=tol * 10, atol=tol * 30)


@pytest.mark.parametrize("mode", ["standard", "inplace"])
def test_nhwc_through_axis(queue, mode):
    """(N, H, W, C) reduced over axis=(0, 1, 2): a reshape to (N*H*W, C, 1), no copy, on
    the vector path; the result equals the NumPy backend's."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 9, 9, 48)).astype(np.float32) * 3 + 1
    g = rng.uniform(0.5, 1.5, 48).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32)
    rm, rv = np.zeros(48, np.float32), np.ones(48, np.float32)
    dz = rng.standard_normal(x.shape).astype(np.float32)
    d = _dev(queue)
    outs = []
    for to, get in ((d, lambda a: a.get()), (np.array, np.asarray)):
        xd, rmd, rvd = to(x), to(rm), to(rv)
        z, saved = cupy_abn.abn_forward(xd, to(g), to(b), rmd, rvd, training=True, mode=mode,
                                        axis=(0, 1, 2))
        zv = get(z).copy()
        dx, dg, db = cupy_abn.abn_backward(saved, to(dz))
        outs.append([zv, get(dx), get(dg), get(db), get(rmd), get(rvd)])
    for got, want in zip(*outs):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-4)
