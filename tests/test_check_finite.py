"""The opt-in finiteness check (``check_finite=True`` / ``cupy_abn.set_check_finite``): NaN and
Inf in x (training) and in grad_output, float16 outputs that would overflow, and an eps that
vanishes next to a zero variance raise ``NonFiniteError`` naming the channel, before anything
is written (x, the running statistics, dx), on NumPy and on the kernels (PoCL: the NCS and
the channels-last statistics kernels with their EXTREMA variants); what the check lets
through equals the unchecked call.  Without the check: tests/test_nonfinite.py."""
import numpy as np
import pytest

import cupy_abn
from tests._backends import api_backends, pocl_queue_or_skip

# rows-C12: channels-last; float32 packs of 4, float16 single elements (PoCL builds float16
# channels-last packs slowly: tests/test_channels_last.py covers them).
SHAPES = {"NCHW": (4, 3, 6, 5), "NCHW-packs": (3, 2, 8, 8), "rows-C12": (50, 12)}


def _inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.uniform(0.5, 1.5, c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    return x, g, b, np.zeros(c, np.float32), np.ones(c, np.float32)


def _run(backend, x, g, b, rm, rv, **kw):
    to_dev, to_host = backend
    d = [to_dev(a) for a in (x, g, b, rm, rv)]
    err = None
    try:
        cupy_abn.abn_forward(*d, **kw)
    except cupy_abn.NonFiniteError as e:
        err = e
    return err, [to_host(a) for a in (d[0], d[3], d[4])]


@pytest.fixture(autouse=True)
def _switch_off():
    yield
    cupy_abn.set_check_finite(False)


@pytest.mark.parametrize("backend", api_backends())
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
def test_non_finite_x_raises_before_anything_is_written(backend, shape, bad, dtype):
    x, g, b, rm, rv = _inputs(shape, dtype)
    x[(1, 1) + (2,) * (len(shape) - 2)] = bad
    err, (x_after, rm_after, rv_after) = _run(backend, x, g, b, rm, rv, check_finite=True)
    assert err is not None and "x holds NaN or Inf" in str(err) and "channel 1" in str(err)
    np.testing.assert_array_equal(x_after, x)            # in place: nothing written
    np.testing.assert_array_equal(rm_after, rm)
    np.testing.assert_array_equal(rv_after, rv)


@pytest.mark.parametrize("backend", api_backends())
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("mode,activation", [("inplace", "leaky_relu"), ("standard", "relu"),
                                             ("inplace_v1", "elu")])
def test_float16_overflow_raises_and_a_safe_call_equals_the_unchecked_one(backend, shape,
                                                                           mode, activation):
    x, g, b, rm, rv = _inputs(shape, np.float16)
    g_big = g.copy()
    g_big[0] = 6e4                      # |y| ~ 6e4 * |xhat| > 65504 where xhat > 1.1
    err, (x_after, rm_after, _) = _run(backend, x, g_big, b, rm, rv, check_finite=True,
                                       mode=mode, activation=activation)
    assert err is not None and "float16 output would overflow in channel 0" in str(err)
    np.testing.assert_array_equal(x_after, x)
    np.testing.assert_array_equal(rm_after, rm)
    # In range: the checked call computes what the unchecked one does.
    got = _run(backend, x, g, b, rm, rv, check_finite=True, mode=mode, activation=activation)
    want = _run(backend, x, g, b, rm, rv, check_finite=False, mode=mode,
                activation=activation)
    assert got[0] is None and want[0] is None
    if mode != "standard":
        for a, w in zip(got[1], want[1]):
            np.testing.assert_allclose(a.astype(np.float64), w.astype(np.float64),
                                       rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("backend", api_backends())
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("mode", ["standard", "inplace"])
def test_non_finite_grad_output_raises_before_dx_is_written(backend, bad, mode):
    to_dev, to_host = backend
    x, g, b, rm, rv = _inputs((4, 3, 6, 5), np.float32)
    z, saved = cupy_abn.abn_forward(*(to_dev(a) for a in (x, g, b, rm, rv)), mode=mode)
    dz = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    dz[2, 2, 1, 1] = bad
    dzd = to_dev(dz)
    with pytest.raises(cupy_abn.NonFiniteError, match="grad_output .* in channel 2"):
        cupy_abn.abn_backward(saved, dzd, out=dzd, check_finite=True)
    np.testing.assert_array_equal(to_host(dzd), dz)   # out=dz: untouched
    dz[2, 2, 1, 1] = 0.5
    dx, dg, db = cupy_abn.abn_backward(saved, to_dev(dz), check_finite=True)
    dx0, dg0, db0 = cupy_abn.abn_backward(saved, to_dev(dz), check_finite=False)
    for a, w in ((dx, dx0), (dg, dg0), (db, db0)):
        np.testing.assert_allclose(to_host(a), to_host(w), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", api_backends())
def test_tiny_eps_on_a_constant_channel_and_huge_eps(backend):
    """eps that vanishes in float32 next to a zero variance: invstd = Inf, y = NaN without
    the check, an error with it; a huge eps is finite and passes (y ~ beta)."""
    x, g, b, rm, rv = _inputs((4, 3, 6, 5), np.float32)
    x[:, 1] = 2.0
    err, (x_after, rm_after, _) = _run(backend, x, g, b, rm, rv, eps=1e-46, check_finite=True)
    assert err is not None and "not finite in channel 1" in str(err)
    np.testing.assert_array_equal(x_after, x)
    np.testing.assert_array_equal(rm_after, rm)
    # Standard mode (the in-place modes also add eps to |gamma|): y ~ beta, finite.
    to_dev, to_host = backend
    z, _ = cupy_abn.abn_forward(*(to_dev(a) for a in (x, g, b, rm, rv)), eps=1e30,
                                check_finite=True, mode="standard")
    np.testing.assert_allclose(to_host(z), np.broadcast_to(
        np.maximum(b, 0.01 * b)[None, :, None, None], x.shape), rtol=1e-4, atol=1e-6)



@pytest.mark.parametrize("backend", api_backends())
def test_global_switch_and_keyword(backend):
    x, g, b, rm, rv = _inputs((4, 3, 6, 5), np.float32)
    x[0, 0, 0, 0] = np.nan
    assert not cupy_abn.check_finite_enabled()
    cupy_abn.set_check_finite(True)
    assert cupy_abn.check_finite_enabled()
    assert _run(backend, x, g, b, rm, rv)[0] is not None               # the switch
    assert _run(backend, x, g, b, rm, rv, check_finite=False)[0] is None   # the keyword wins
    cupy_abn.set_check_finite(False)
    assert _run(backend, x, g, b, rm, rv)[0] is None


@pytest.mark.parametrize("shape,dtype", [((6, 5, 40, 40), np.float32), ((3, 2, 16, 16),
                                          np.float16), ((4, 3, 7, 7), np.float64),
                                         ((700, 40), np.float32), ((300, 36), np.float16),
                                         ((90, 37), np.float32)],
                         ids=["nchw-f32-B>1", "nchw-f16", "nchw-f64-scalar",
                              "last-f32-B>1", "last-f16", "last-f32-scalar"])
def test_kernel_extrema_are_each_channels_min_and_max(shape, dtype):
    """The EXTREMA variants of channel_moments and channel_moments_last: the partials' min
    and max merge to each channel's, with several blocks per channel and both paths."""
    cla = pytest.importorskip("pyopencl.array")
    queue = pocl_queue_or_skip()
    from cupy_abn._kernel_backend import KernelBackend
    from cupy_abn._runtime_opencl import OpenCLRuntime
    x = (np.random.default_rng(5).standard_normal(shape) * 3 + 1).astype(dtype)
    be = KernelBackend(OpenCLRuntime(queue))
    acc = np.dtype(np.float64 if dtype == np.float64 else np.float32)
    out = be.moments(cla.to_device(queue, x), acc, extrema=True)
    lo, hi = out[4].get(), out[5].get()
    axes = tuple(i for i in range(x.ndim) if i != 1)
    # shift + (x - shift): within an ulp or two of x in the accumulation dtype
    tol = 2 * float(np.finfo(acc).eps)
    np.testing.assert_allclose(lo.min(axis=1), x.min(axis=axes).astype(acc), rtol=tol)
    np.testing.assert_allclose(hi.max(axis=1), x.max(axis=axes).astype(acc), rtol=tol)
    if "B>1" in str(shape) or x.size > 20000:
        assert lo.shape[1] > 1
