"""``abn_forward(..., out=)``: the output written into ``out``, x left untouched in every mode,
and the in-place modes' backward rebuilt from the output alone (x not kept).  On NumPy and
on the kernels (PoCL; CuPy on a GPU): the same output and gradients as the call that
overwrites x, bit for bit.  Each bad ``out`` raises before anything is written."""
import numpy as np
import pytest

import cupy_abn
from tests._backends import api_backends
from tests._cases import make_inputs

MODES = ["inplace", "inplace_v1", "standard"]
# (shape, axis): channels on axis 1, channels-last (a view), kept axes apart (a copy).
LAYOUTS = [((4, 3, 5, 6), None), ((2, 4, 5, 3), (0, 1, 2)), ((2, 3, 4, 5), (1, 3))]


def _param_shape(shape, axis):
    return (shape[1],) if axis is None else tuple(
        d for i, d in enumerate(shape) if i not in axis)


def _inputs(shape, axis, dtype):
    x, _, _, _, _, dz = make_inputs(shape, dtype, "out")
    rng = np.random.default_rng(7)
    ps = _param_shape(shape, axis)
    g = rng.uniform(0.5, 1.5, ps).astype(np.float32)
    b = rng.standard_normal(ps).astype(np.float32)
    return x, g, b, np.zeros(ps, np.float32), np.ones(ps, np.float32), dz


@pytest.mark.parametrize("backend", api_backends())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape,axis", LAYOUTS, ids=["ncs", "view", "copy"])
def test_out_matches_the_call_that_writes_x(backend, mode, training, shape, axis):
    to_device, to_host = backend
    dtype = np.float16 if mode == "inplace_v1" else np.float32
    x, g, b, rm, rv, dz = _inputs(shape, axis, dtype)
    kw = dict(mode=mode, training=training, axis=axis)
    # the reference: the usual call (x overwritten in the in-place modes)
    ref = [to_device(a.copy()) for a in (x, g, b, rm, rv)]
    want_z, want_saved = cupy_abn.abn_forward(*ref, **kw)
    want_z = to_host(want_z)
    want = [to_host(a) for a in cupy_abn.abn_backward(want_saved, to_device(dz.copy()))]
    want_rm = to_host(ref[3])
    # the same with out=
    args = [to_device(a.copy()) for a in (x, g, b, rm, rv)]
    out = to_device(np.full(shape, 7, dtype))
    z, saved = cupy_abn.abn_forward(*args, out=out, **kw)
    assert z is out
    np.testing.assert_array_equal(to_host(args[0]), x)   # x untouched
    np.testing.assert_array_equal(to_host(z), want_z)
    np.testing.assert_array_equal(to_host(args[3]), want_rm)
    if mode != "standard":
        assert saved.x is None   # the backward needs the output only
    got = cupy_abn.abn_backward(saved, to_device(dz.copy()))
    for name, a, w in zip(("dx", "dgamma", "dbeta"), got, want):
        np.testing.assert_array_equal(to_host(a), w, err_msg=name)


def test_read_only_and_strided_x_with_out():
    x, g, b, rm, rv, dz = _inputs((4, 3, 5, 6), None, np.float32)
    want_z, _ = cupy_abn.abn_forward(x.copy(), g, b, rm.copy(), rv.copy())
    ro = x.copy()
    ro.flags.writeable = False
    out = np.empty_like(x)
    z, _ = cupy_abn.abn_forward(ro, g, b, rm.copy(), rv.copy(), out=out)
    np.testing.assert_array_equal(z, want_z)
    strided = np.asfortranarray(x)
    z, _ = cupy_abn.abn_forward(strided, g, b, rm.copy(), rv.copy(), out=np.empty_like(x))
    np.testing.assert_array_equal(z, want_z)
    np.testing.assert_array_equal(strided, x)


def test_out_is_x_is_the_usual_call():
    x, g, b, rm, rv, _ = _inputs((4, 3, 5, 6), None, np.float32)
    want_z, _ = cupy_abn.abn_forward(x.copy(), g, b, rm.copy(), rv.copy())
    z, _ = cupy_abn.abn_forward(x, g, b, rm, rv, out=x)
    assert z is x
    np.testing.assert_array_equal(z, want_z)


def _fortran(shape, dtype):
    return np.asfortranarray(np.empty(shape, dtype))


def _read_only(shape, dtype):
    a = np.empty(shape, dtype)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("make,exc,match", [
    (lambda s, d: np.empty(s[:-1] + (s[-1] + 1,), d), ValueError, r"out: expected shape"),
    (lambda s, d: np.empty(s, np.float64), ValueError, r"out: expected .*dtype float32"),
    (_fortran, ValueError, r"out: expected a C-contiguous array"),
    (_read_only, ValueError, r"out: expected a writeable array"),
    (lambda s, d: [[0.0]], TypeError, r"out: expected a numpy array like x"),
], ids=["shape", "dtype", "strided", "read-only", "type"])
@pytest.mark.parametrize("mode", ["inplace", "standard"])
def test_bad_out_raises_before_anything_is_written(make, exc, match, mode):
    shape = (4, 3, 5, 6)
    x, g, b, rm, rv, _ = _inputs(shape, None, np.float32)
    before = [a.copy() for a in (x, rm, rv)]
    with pytest.raises(exc, match=match):
        cupy_abn.abn_forward(x, g, b, rm, rv, mode=mode, out=make(shape, np.float32))
    for a, was in zip((x, rm, rv), before):
        np.testing.assert_array_equal(a, was)


@pytest.mark.parametrize("backend", api_backends())
def test_checked_forward_with_out_writes_nothing_on_a_nan(backend):
    to_device, to_host = backend
    x, g, b, rm, rv, _ = _inputs((4, 3, 5, 6), None, np.float32)
    x[1, 2, 3, 4] = np.nan
    args = [to_device(a.copy()) for a in (x, g, b, rm, rv)]
    out = to_device(np.zeros(x.shape, np.float32))
    with pytest.raises(cupy_abn.NonFiniteError, match="channel 2"):
        cupy_abn.abn_forward(*args, out=out, check_finite=True)
    assert not to_host(out).any()
    np.testing.assert_array_equal(to_host(args[3]), rm)


def test_chainer_fallback_reads_x_and_writes_a_new_buffer(monkeypatch):
    """Where x must survive, the in-place link passes x itself and ``out=`` (no copy of x)."""
    C = pytest.importorskip("cupy_abn.chainer")
    import chainer
    from cupy_abn import api
    seen = []
    real = api.abn_forward
    monkeypatch.setattr(api, "abn_forward",
                        lambda x, *a, **k: seen.append((x, k.get("out"))) or real(x, *a, **k))
    x = np.random.default_rng(3).standard_normal((4, 3, 5)).astype(np.float32)
    xv = chainer.Variable(x.copy())
    bn = C.InPlaceABN(3)
    with pytest.warns(C.InPlaceFallbackWarning, match="new buffer"):
        y = bn(xv)   # a leaf: must survive
    (passed, out), = seen
    assert passed is xv.array and out is y.array and out is not xv.array
    np.testing.assert_array_equal(xv.array, x)
    y.grad = np.ones_like(y.array)
    y.backward()
    assert xv.grad is not None and np.isfinite(xv.grad).all()
