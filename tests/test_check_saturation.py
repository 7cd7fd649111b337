"""The finiteness check's ELU saturation (``cupy_abn/_finite.py``): in the in-place modes the
backward rebuilds y from z = alpha * (exp(y) - 1), which rounds to -alpha for y below about
-8.3 (float16) or -16.2 (float32), and ELU's inverse clamps there (float64: below -16.1), so
that dx comes out wrong with no NaN to show it.  With the check on, the backward's reduction
counts those outputs (the SATURATED variants of grad_sums, grad_sums_last) and raises
``SaturatedActivationError`` (a ``NonFiniteError``) naming each channel and its count, before
anything is written: dx, and grad_output when it is ``out``.  On NumPy and on the kernels
(PoCL); without the check nothing changes."""
import numpy as np
import pytest

import cupy_abn
from cupy_abn._activations import ACTIVATIONS
from tests._backends import api_backends, pocl_queue_or_skip

# What is checked does not depend on NumPy's, CuPy's or Chainer's version: np2 only.  Cases
# that repeat what another case covers go to the full tier (marked below).
pytestmark = pytest.mark.once
FULL = pytest.mark.full

SATURATING = {   # the two measured cases: (x, gamma, dtype)
    "float16-gamma5": (np.random.default_rng(0).standard_normal((8, 4, 16, 16)),
                       np.full(4, 5.0, np.float32), np.float16),
    "float32-gamma40-0001": (np.array([0, 0, 0, 1], np.float64).reshape(4, 1),
                             np.array([40.0], np.float32), np.float32),
}


@pytest.fixture(autouse=True)
def _switch_off():
    yield
    cupy_abn.set_check_finite(False)


def _forward(backend, x, gamma, dtype, activation="elu", mode="inplace", param=1.0,
             training=True):
    to_dev, _ = backend
    c = x.shape[1]
    return cupy_abn.abn_forward(to_dev(x.astype(dtype)), to_dev(gamma),
                                to_dev(np.zeros(c, np.float32)), to_dev(np.zeros(c, np.float32)),
                                to_dev(np.ones(c, np.float32)), activation=activation,
                                activation_param=param, mode=mode, training=training)


def _expected_counts(z, param=1.0):
    """Per channel: outputs where the NumPy inverse clamps (z = -alpha in these cases)."""
    z3 = np.asarray(z, np.float64 if z.dtype == np.float64 else np.float32)
    z3 = z3.reshape(z3.shape[0], z3.shape[1], -1)
    return np.count_nonzero(ACTIVATIONS["elu"].saturated(z3, z3.dtype.type(param)), axis=(0, 2))


@pytest.mark.parametrize("backend", api_backends())
@pytest.mark.parametrize("case", list(SATURATING))
@pytest.mark.parametrize("mode", ["inplace", "inplace_v1"])
def test_saturated_elu_raises_before_anything_is_written(backend, case, mode):
    to_dev, to_host = backend
    x, gamma, dtype = SATURATING[case]
    z, saved = _forward(backend, x, gamma, dtype, mode=mode)
    z_before = to_host(z).copy()
    counts = _expected_counts(z_before)
    assert counts.sum() > 0
    dz = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    dzd = to_dev(dz.copy())   # NumPy's asarray would not copy
    with pytest.raises(cupy_abn.SaturatedActivationError) as err:   # out=dz: in place
        cupy_abn.abn_backward(saved, dzd, out=dzd, check_finite=True)
    msg = str(err.value)
    assert isinstance(err.value, cupy_abn.NonFiniteError)
    for c in np.flatnonzero(counts):
        assert f"channel {c}: {counts[c]}" in msg, msg
    assert f"{counts.sum()} elu outputs at the asymptote -alpha = -1" in msg
    assert "leaky_relu" in msg and "mode='standard'" in msg and "|gamma|" in msg
    assert "nothing was written" in msg
    np.testing.assert_array_equal(to_host(dzd), dz)        # grad_output: bit-identical
    np.testing.assert_array_equal(to_host(z), z_before)    # the saved output too
    sentinel = np.full(x.shape, 7, dtype)
    out = to_dev(sentinel.copy())
    cupy_abn.set_check_finite(True)                        # the global switch
    with pytest.raises(cupy_abn.SaturatedActivationError):
        cupy_abn.abn_backward(saved, to_dev(dz), out=out)
    np.testing.assert_array_equal(to_host(out), sentinel)  # dx: not written


@pytest.mark.parametrize("backend", api_backends())
def test_without_the_check_the_wrong_gradient_is_unchanged(backend):
    """The measured float32 case: unchecked, dx of the saturated elements is -7.15 where the
    true gradient (plain ABN, which keeps x) is about 0."""
    to_dev, to_host = backend
    x, gamma, dtype = SATURATING["float32-gamma40-0001"]
    dz = np.ones(x.shape, dtype)
    _, saved = _forward(backend, x, gamma, dtype)
    dx = to_host(cupy_abn.abn_backward(saved, to_dev(dz), check_finite=False)[0])
    np.testing.assert_allclose(dx[:3, 0], -7.152106, rtol=1e-5)
    _, saved = _forward(backend, x, gamma, dtype, mode="standard")
    ref = to_host(cupy_abn.abn_backward(saved, to_dev(dz), check_finite=True)[0])
    assert np.abs(ref).max() < 1e-2      # 0.0025 and 0.0074


@pytest.mark.parametrize("backend", api_backends())
@pytest.mark.parametrize("case", list(SATURATING))
@pytest.mark.parametrize("activation,mode,training", [
    ("leaky_relu", "inplace", True), pytest.param("identity", "inplace_v1", True, marks=FULL),
    pytest.param("elu", "standard", True, marks=FULL),
    pytest.param("elu", "inplace", False, marks=FULL), ("elu", "inplace_v1", False)])
def test_invertible_activations_plain_abn_and_evaluation_never_raise(backend, case,
                                                                     activation, mode,
                                                                     training):
    """The same inputs: leaky_relu and identity have nothing to lose; plain ABN keeps x; an
    evaluation backward's dx does not use y.  The checked result equals the unchecked one."""
    to_dev, to_host = backend
    x, gamma, dtype = SATURATING[case]
    param = 0.01 if activation == "leaky_relu" else 1.0
    dz = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    got, want = [], []
    for check, out in ((True, got), (False, want)):
        _, saved = _forward(backend, x, gamma, dtype, activation, mode, param, training)
        out += [to_host(a) for a in cupy_abn.abn_backward(saved, to_dev(dz),
                                                          check_finite=check)]
    tol = 2e-3 if dtype == np.float16 else 1e-5
    for a, w in zip(got, want):
        np.testing.assert_allclose(a.astype(np.float64), w.astype(np.float64), rtol=tol,
                                   atol=tol)


@pytest.mark.parametrize("backend", api_backends())
@pytest.mark.parametrize("shape,dtype", [
    pytest.param((4, 3, 6, 5), np.float16, id="nchw-f16"),
    pytest.param((3, 2, 8, 8), np.float32, id="nchw-f32-packs"),
    pytest.param((50, 12), np.float32, id="rows-C12", marks=FULL),
    pytest.param((16, 2, 48, 48), np.float64, id="nchw-f64-B>1", marks=FULL)])
def test_non_saturated_elu_passes_and_equals_the_unchecked_call(backend, shape, dtype):
    to_dev, to_host = backend
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    gamma = rng.uniform(0.5, 1.5, shape[1]).astype(np.float32)
    dz = rng.standard_normal(shape).astype(dtype)
    res = []
    for check in (True, False):
        _, saved = _forward(backend, x, gamma, dtype, param=0.8)
        dzd = to_dev(dz.copy())
        res.append([to_host(a) for a in cupy_abn.abn_backward(saved, dzd, out=dzd,
                                                              check_finite=check)])
    tol = 2e-3 if dtype == np.float16 else 1e-5
    for a, w in zip(*res):
        np.testing.assert_allclose(a.astype(np.float64), w.astype(np.float64), rtol=tol,
                                   atol=tol)


def _clamp_values(dtype):
    """z / alpha values at the inverse's clamp (-1 + 1e-7 in the dtype), and whether it
    clamps there: -1, the value next above -1, the clamp, the value next below it, and two
    values in range."""
    f = np.dtype(dtype).type
    bound = f(-1 + 1e-7)
    return np.array([f(-1), np.nextafter(f(-1), f(0)), bound, np.nextafter(bound, f(-1)),
                     f(-0.5), f(0.25)], dtype), \
        np.array([True, True, False, True, False, False])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_counts_exactly_where_the_inverse_clamps(dtype):
    z, want = _clamp_values(dtype)
    elu = ACTIVATIONS["elu"]
    got = elu.saturated(z, z.dtype.type(1.0))
    np.testing.assert_array_equal(got, want)
    y = elu.inverse(z, z.dtype.type(1.0))
    np.testing.assert_array_equal(y[got], np.log1p(z.dtype.type(-1 + 1e-7)))   # clamped
    kept = z[~got]
    np.testing.assert_array_equal(y[~got], np.where(kept >= 0, kept,
                                                    np.log1p(np.minimum(kept, 0))))


@pytest.mark.parametrize("shape", [(16, 3, 48, 48), (4, 3, 7, 7), (2000, 8), (700, 37)],
                         ids=["nchw-packs-B>1", "nchw-scalar", "last-packs-B>1",
                              "last-scalar"])
@pytest.mark.parametrize("dtype", [np.float32, pytest.param(np.float64, marks=FULL)])
def test_kernel_counts_equal_numpy_at_the_clamp(shape, dtype):
    """The SATURATED variants of grad_sums and grad_sums_last on z planted with values at
    and next to the clamp, several partials per channel: the per-channel counts equal
    NumPy's, and the sums equal the unchecked variant's."""
    cla = pytest.importorskip("pyopencl.array")
    queue = pocl_queue_or_skip()
    from cupy_abn._kernel_backend import KernelBackend
    from cupy_abn._numpy_backend import NumpyBackend
    from cupy_abn._runtime_opencl import OpenCLRuntime
    from cupy_abn._state import N_ROWS, T_U
    rng = np.random.default_rng(11)
    values, _ = _clamp_values(dtype)
    z = rng.choice(values, size=shape).astype(dtype) * dtype(0.5)   # alpha = 0.5: exact
    z[0, 1] = 0.5                                                  # channel 1 with no hit
    z[:, 1] = np.abs(z[:, 1])
    dz = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    stats = np.ones((N_ROWS, c), dtype)
    be, npb = KernelBackend(OpenCLRuntime(queue)), NumpyBackend()
    d = lambda a: cla.to_device(queue, np.ascontiguousarray(a))  # noqa: E731
    terms = be.backward_terms(d(z), d(dz), None, d(stats), "elu", 0.5, T_U)
    sdy, sdt, counts = be.grad_sums(terms, saturated=True)
    assert counts.shape[1] > 1 or "B>1" not in str(shape)
    got = counts.get().astype(np.int64).sum(axis=1)
    nterms = npb.backward_terms(z, dz, None, stats, "elu", 0.5, T_U)
    want = np.asarray(npb.grad_sums(nterms, saturated=True)[2])[:, 0]
    np.testing.assert_array_equal(got, want)
    assert want[1] == 0 and want.sum() > 0
    plain = be.grad_sums(terms)
    for a, w in zip((sdy, sdt), plain):
        np.testing.assert_array_equal(a.get(), w.get())


def test_check_adds_no_launch(monkeypatch):
    """The count rides on the checked backward's own reduction: a checked ELU backward
    launches as many kernels as a checked leaky_relu one."""
    cla = pytest.importorskip("pyopencl.array")
    queue = pocl_queue_or_skip()
    from cupy_abn import _runtime_opencl
    launches = []
    real = _runtime_opencl.OpenCLRuntime.launch

    def spy(self, fn, grid, block, args):
        launches.append(fn)
        return real(self, fn, grid, block, args)

    monkeypatch.setattr(_runtime_opencl.OpenCLRuntime, "launch", spy)
    x = np.random.default_rng(4).standard_normal((16, 2, 48, 48)).astype(np.float32)
    n = {}
    for act in ("elu", "leaky_relu"):
        d = [cla.to_device(queue, a) for a in (x, np.ones(2, np.float32),
                                               np.zeros(2, np.float32), np.zeros(2, np.float32),
                                               np.ones(2, np.float32))]
        _, saved = cupy_abn.abn_forward(*d, activation=act, activation_param=0.5)
        del launches[:]
        cupy_abn.abn_backward(saved, cla.to_device(queue, x), check_finite=True)
        n[act] = len(launches)
    assert n["elu"] == n["leaky_relu"] == 3   # grad_sums, channel_backward, grad_input


def test_synchronized_hook_runs_before_the_rank_raises():
    """A synchronized layer's rank joins the exchange of the sums, then raises on its own
    saturated outputs (the other ranks do not wait on it)."""
    from cupy_abn import api
    x, gamma, dtype = SATURATING["float32-gamma40-0001"]
    _, saved = _forward((np.asarray, np.asarray), x, gamma, dtype)
    calls = []

    def combine(sum_dy, sum_dy_t):
        calls.append(sum_dy.shape)
        return sum_dy, sum_dy_t

    dz = np.ones(x.shape, dtype)
    with pytest.raises(cupy_abn.SaturatedActivationError, match="channel 0: 3"):
        api._abn_backward(saved, dz, out=dz, check_finite=True, combine_sums=combine)
    assert calls == [(1, 1)]
    np.testing.assert_array_equal(dz, 1)


def test_chainer_layer_raises_with_the_global_switch():
    C = pytest.importorskip("cupy_abn.chainer")
    import chainer
    x, gamma, dtype = SATURATING["float32-gamma40-0001"]
    layer = C.InPlaceABN(1, activation="elu", activation_param=1.0, initial_gamma=40.0)
    cupy_abn.set_check_finite(True)
    with chainer.using_config("train", True):
        y = layer(chainer.Variable(x.astype(dtype)) * 1)   # not a leaf: in place
        with pytest.raises(cupy_abn.SaturatedActivationError, match="channel 0: 3"):
            chainer.functions.sum(y).backward()
    assert layer.gamma.grad is None or not np.any(layer.gamma.grad)
    cupy_abn.set_check_finite(False)
    y = layer(chainer.Variable(x.astype(dtype)) * 1)
    chainer.functions.sum(y).backward()     # unchecked: runs (with the wrong gradient)
    assert layer.gamma.grad is not None
