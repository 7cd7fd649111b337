"""Strided gamma, beta and running statistics, and a strided x in standard mode.

The kernels take raw pointers; the API hands them contiguous copies of strided parameters and
writes the updated running statistics back through the caller's views.  Checked on NumPy and
on the kernels (PoCL) against a float64 computation, and the entries the views skip stay
bit-for-bit untouched (an earlier kernel path read gamma[::2] as gamma's first C values, off
by up to 21, with no error)."""
import numpy as np
import pytest

import cupy_abn
from tests._backends import api_backends
from tests._cases import make_inputs
from tests._reference import ref_backward, ref_forward

SHAPE = (4, 3, 8, 8)
TOL = dict(rtol=2e-5, atol=2e-5)       # float32 forward against float64
TOL_GRAD = dict(rtol=1e-4, atol=1e-4)


def _strided(host, to_device, step=2):
    """A device view with stride ``step`` whose values are ``host``, and its full buffer
    (the skipped entries hold 7.0)."""
    full = np.full(host.shape[:-1] + (host.shape[-1] * step,), 7.0, host.dtype)
    full[..., ::step] = host
    dev = to_device(full)
    return dev[..., ::step], dev


@pytest.mark.parametrize("backend", api_backends())
@pytest.mark.parametrize("mode", ["standard", "inplace", "inplace_v1"])
@pytest.mark.parametrize("training", [True, False])
def test_strided_parameters_and_x(backend, mode, training):
    to_device, to_host = backend
    x, gamma, beta, rm, rv, dz = make_inputs(SHAPE, np.float32, "strided")
    ref = ref_forward(x, gamma, beta, rm, rv, training=training, mode=mode)
    rdx, rdg, rdb = ref_backward(x, gamma, beta, dz, training=training, mode=mode,
                                 running_mean=rm, running_var=rv)
    views = {k: _strided(v, to_device) for k, v in
             dict(gamma=gamma, beta=beta, running_mean=rm, running_var=rv).items()}
    if mode == "standard":   # x itself strided along W; in place x must be contiguous
        xv, xfull = _strided(x, to_device)
    else:
        xv = xfull = to_device(x)
    z, saved = cupy_abn.abn_forward(xv, *(views[k][0] for k in views), training=training,
                                    mode=mode)
    np.testing.assert_allclose(to_host(z), ref["z"], **TOL)
    for k in ("running_mean", "running_var"):
        full = to_host(views[k][1])
        np.testing.assert_allclose(full[::2], ref[k], **TOL, err_msg=k)
        assert (full[1::2] == 7.0).all(), f"{k}: entries outside the view were written"
    for k in ("gamma", "beta"):
        assert (to_host(views[k][1])[1::2] == 7.0).all()
    if mode == "standard":
        assert (to_host(xfull)[..., 1::2] == 7.0).all()
    dx, dg, db = cupy_abn.abn_backward(saved, to_device(dz))
    np.testing.assert_allclose(to_host(dx), rdx, **TOL_GRAD)
    np.testing.assert_allclose(to_host(dg), rdg, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(to_host(db), rdb, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", api_backends())
def test_offset_running_statistics_are_updated_in_place(backend):
    """A contiguous view that starts past its buffer's beginning (pyopencl: offset != 0)."""
    to_device, to_host = backend
    x, gamma, beta, rm, rv, _ = make_inputs(SHAPE, np.float32, "offset")
    ref = ref_forward(x, gamma, beta, rm, rv)
    c = SHAPE[1]
    buf = to_device(np.concatenate([np.full(2, 7, np.float32), rm, rv]))
    cupy_abn.abn_forward(to_device(x), to_device(gamma), to_device(beta), buf[2:2 + c],
                         buf[2 + c:])
    got = to_host(buf)
    assert (got[:2] == 7.0).all()
    np.testing.assert_allclose(got[2:2 + c], ref["running_mean"], **TOL)
    np.testing.assert_allclose(got[2 + c:], ref["running_var"], **TOL)
