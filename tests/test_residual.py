"""The fused residual add, z = phi(BN(x) + r) (``abn_forward(residual=r)``), against the
independent float64 reference (tests/_reference.py) on NumPy and on the kernels (PoCL), in
every mode, activation and dtype; its gradient dL/dr; and the guards on r.

The default tier runs every mode x activation in float32 training and, per mode, one
activation in evaluation and in the other dtypes, and a covering subset of the other paths;
the full tier runs the whole product."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import cupy_abn
from cupy_abn import abn_backward, abn_forward
from tests._backends import api_backends
from tests._cases import ACTIVATIONS, case_id, make_inputs, rng_for
from tests._reference import assert_close, ref_backward, ref_forward

F16, F32, F64 = np.float16, np.float32, np.float64
MODES = ("inplace", "inplace_v1", "standard")
ACTS = dict(ACTIVATIONS, relu=0.0)   # relu: plain ABN only


def _cases():
    out = []
    for dt, mode, act, tr in itertools.product((F32, F64, F16), MODES, ACTS, (True, False)):
        if act == "relu" and mode != "standard":
            continue
        # Default tier: every mode and activation in float32 training, and per mode one
        # activation in evaluation and in float64 and float16 training; the full tier all.
        first = {"inplace": "leaky_relu", "inplace_v1": "elu", "standard": "identity"}[mode]
        full = (act != first) if (dt != F32 or not tr) else False
        full = full or (dt != F32 and not tr)
        out.append(pytest.param((dt, mode, act, tr), id=case_id(dt, mode, act,
                                                                 "train" if tr else "eval"),
                                marks=[pytest.mark.full] if full else []))
    return out


def _inputs(shape, dt, *key):
    x, gamma, beta, rm, rv, dz = make_inputs(shape, dt, "residual", *key)
    r = rng_for("r", shape, np.dtype(dt).name, *key).normal(0, 1.5, shape).astype(dt)
    return x, gamma, beta, rm, rv, dz, r


def _check(shape, dt, mode, act, training, to_dev, to_host, last=False):
    """One case on the API; ``last``: x (N, C, H, W) given as NHWC, normalized over
    axis=(0, 1, 2) (the channels-last kernels), and compared back in NCHW."""
    x, gamma, beta, rm, rv, dz, r = _inputs(shape, dt, mode, act, training)
    p = ACTS[act]
    nhwc = (lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))) if last else np.copy
    nchw = (lambda a: np.moveaxis(a, -1, 1)) if last else (lambda a: a)
    dev = [to_dev(nhwc(a)) for a in (x, dz, r)] + [to_dev(a.copy())
                                                    for a in (gamma, beta, rm, rv)]
    xd, dzd, rd, gd, bd, rmd, rvd = dev
    z, saved = abn_forward(xd, gd, bd, rmd, rvd, training=training, activation=act,
                           activation_param=p, mode=mode, residual=rd,
                           axis=(0, 1, 2) if last else None)
    if mode != "standard":
        assert z is xd, "in-place modes write z into x"
    z_host = nchw(to_host(z).copy())
    out = abn_backward(saved, dzd)
    assert len(out) == 4, "a forward with a residual returns dL/dr too"
    dx, dr = (nchw(to_host(a)) for a in (out[0], out[3]))
    dg, db = (to_host(a) for a in out[1:3])
    np.testing.assert_array_equal(nchw(to_host(rd)), r)   # r is only read

    ref = ref_forward(x, gamma, beta, rm, rv, training=training, activation=act, param=p,
                      mode=mode, residual=r)
    rdx, rdg, rdb, rdr = ref_backward(x, gamma, beta, dz, training=training, activation=act,
                                      param=p, mode=mode, running_mean=rm, running_var=rv,
                                      residual=r)
    m = x.size // x.shape[1]
    sums = max(1.0, float(np.sqrt(m)))
    tag = case_id(shape, dt, mode, act, training)
    assert_close(z_host, ref["z"], dt, f"z {tag}")
    assert_close(dx, rdx, dt, f"dx {tag}", "backward")
    assert_close(dr, rdr, dt, f"dresidual {tag}", "backward")
    assert_close(dg, rdg, dt, f"dgamma {tag}", "backward", scale=sums)
    assert_close(db, rdb, dt, f"dbeta {tag}", "backward", scale=sums)
    assert dr.dtype == np.dtype(dt) and dr.shape == x.shape


@pytest.fixture(params=api_backends())
def backend(request):
    return request.param


@pytest.mark.parametrize("case", _cases())
def test_fused_residual_matches_float64(backend, case):
    """NCHW, every mode, activation and dtype; the kernels' one-launch (resident) path."""
    dt, mode, act, tr = case
    _check((2, 3, 4, 8), dt, mode, act, tr, *backend)


@pytest.mark.parametrize("dt,mode,tr", [
    (F32, "inplace", True), (F16, "inplace_v1", True),
    pytest.param(F32, "standard", True, marks=pytest.mark.full),
    pytest.param(F64, "inplace_v1", True, marks=pytest.mark.full),
    pytest.param(F32, "inplace", False, marks=pytest.mark.full)], ids=str)
def test_fused_residual_two_pass_and_scalar_paths(backend, dt, mode, tr, monkeypatch):
    """The reductions + elementwise kernels (channels too big for one block, forced here)
    on packs (8x8) and on single elements (7x7)."""
    from cupy_abn import _kernel_backend
    monkeypatch.setattr(_kernel_backend, "RESIDENT", False)
    for shape in ((2, 3, 8, 8), (3, 2, 7, 7)):
        _check(shape, dt, mode, "leaky_relu", tr, *backend)


@pytest.mark.parametrize("dt,mode,act", [
    (F32, "inplace", "leaky_relu"), (F32, "standard", "relu"), (F64, "inplace_v1", "elu"),
    pytest.param(F16, "inplace", "leaky_relu", marks=pytest.mark.full),
    pytest.param(F32, "inplace_v1", "identity", marks=pytest.mark.full)], ids=str)
def test_fused_residual_channels_last(backend, dt, mode, act):
    """NHWC normalized over axis=(0, 1, 2): the *_last kernels."""
    _check((4, 16, 5, 6), dt, mode, act, True, *backend, last=True)


def test_fused_residual_equals_unfused_numpy():
    """phi(BN(x) + r) fused equals BN with identity, + r, then phi (float64, NumPy)."""
    x, gamma, beta, rm, rv, dz, r = _inputs((3, 4, 5, 6), F64, "unfused")
    z, _ = abn_forward(x.copy(), gamma, beta, rm.copy(), rv.copy(), activation="elu",
                       activation_param=1.2, mode="standard", residual=r)
    y, _ = abn_forward(x.copy(), gamma, beta, rm.copy(), rv.copy(), activation="identity",
                       mode="standard")
    v = y + r
    np.testing.assert_allclose(z, np.where(v >= 0, v, 1.2 * np.expm1(np.minimum(v, 0))),
                               rtol=1e-12, atol=1e-12)


def test_without_residual_backward_returns_three():
    x, gamma, beta, rm, rv, dz, r = _inputs((2, 3, 4), F32, "three")
    _, saved = abn_forward(x, gamma, beta, rm, rv)
    assert len(abn_backward(saved, dz)) == 3
    assert not saved.has_residual and saved.residual is None


def test_in_place_modes_keep_r_standard_does_not():
    x, gamma, beta, rm, rv, dz, r = _inputs((2, 3, 4), F32, "keep")
    _, saved = abn_forward(x.copy(), gamma, beta, residual=r)
    assert saved.residual is r            # not copied: r must stay unchanged until backward
    _, saved = abn_forward(x.copy(), gamma, beta, mode="standard", residual=r)
    assert saved.residual is None and saved.has_residual


def test_residual_with_out_leaves_x_and_r_untouched():
    x, gamma, beta, rm, rv, dz, r = _inputs((2, 3, 4, 4), F32, "out")
    x0, r0 = x.copy(), r.copy()
    out = np.empty_like(x)
    z, saved = abn_forward(x, gamma, beta, out=out, residual=r)
    assert z is out
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(r, r0)
    zr, _ = abn_forward(x0.copy(), gamma, beta, residual=r0)
    np.testing.assert_array_equal(out, zr)
    assert len(abn_backward(saved, dz)) == 4


def test_residual_over_a_copied_axis_layout():
    """axis=(0, 2) of a 4-D x is a copy layout: r is moved like x, dL/dr comes back in x's
    shape."""
    x, gamma, beta, rm, rv, dz, r = _inputs((3, 4, 5, 2), F64, "axis")
    g2 = np.abs(gamma[:4])[:, None] * np.ones((4, 2))
    b2 = np.zeros((4, 2))
    z, saved = abn_forward(x.copy(), g2, b2, residual=r, axis=(0, 2), mode="standard",
                           activation="identity")
    dx, dg, db, dr = abn_backward(saved, dz)
    assert dr.shape == x.shape and dg.shape == (4, 2)
    np.testing.assert_allclose(dr, dz)     # identity: dL/dr = dz
    mu = x.mean(axis=(0, 2), keepdims=True)
    sd = np.sqrt(x.var(axis=(0, 2), keepdims=True) + 2e-5)
    np.testing.assert_allclose(z, (x - mu) / sd * g2[None, :, None, :] + r, rtol=1e-10,
                               atol=1e-10)


# ---- bad input: a clear exception before anything is written --------------------------------
def _bad(residual_of, match, mode="inplace", exc=ValueError, **kw):
    x, gamma, beta, rm, rv, dz, r = _inputs((2, 3, 4), F32, "bad", mode)
    x0, rm0, rv0 = x.copy(), rm.copy(), rv.copy()
    with pytest.raises(exc, match=match):
        abn_forward(x, gamma, beta, rm, rv, mode=mode, residual=residual_of(x, r), **kw)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)


def test_residual_of_another_shape_is_refused():
    _bad(lambda x, r: r[:1], "residual.*shape")


def test_residual_of_another_dtype_is_refused():
    _bad(lambda x, r: r.astype(F64), "residual.*dtype")


def test_residual_of_another_library_is_refused():
    class NotAnArray:
        shape, dtype = (2, 3, 4), np.dtype(F32)
    _bad(lambda x, r: NotAnArray(), "residual", exc=TypeError)


@pytest.mark.parametrize("mode", ["inplace", "inplace_v1"])
def test_residual_that_is_x_is_refused_in_place(mode):
    """z overwrites x: r = x would be lost before the backward rebuilds y from it."""
    _bad(lambda x, r: x, "residual.*shares memory with x", mode=mode)
    _bad(lambda x, r: x[:, ::-1], "residual.*shares memory with x", mode=mode)


def test_residual_that_overlaps_out_is_refused():
    out = np.empty((2, 3, 4), F32)
    _bad(lambda x, r: out, "residual.*shares memory with out", out=out)


def test_residual_may_be_x_in_standard_mode():
    """Plain ABN writes a new z and keeps x: phi(BN(x) + x) is well defined."""
    x, gamma, beta, rm, rv, dz, r = _inputs((2, 3, 4), F64, "same")
    z, saved = abn_forward(x, gamma, beta, mode="standard", residual=x)
    ref = ref_forward(x, gamma, beta, mode="standard", residual=x)
    assert_close(z, ref["z"], F64, "z")


@pytest.mark.parametrize("where", ["x", "residual"])
def test_check_finite_covers_r(where):
    x, gamma, beta, rm, rv, dz, r = _inputs((2, 3, 4), F32, "finite")
    (x if where == "x" else r)[1, 2, 3] = np.nan
    x0, rm0 = x.copy(), rm.copy()
    with pytest.raises(cupy_abn.NonFiniteError, match=f"{where} holds NaN or Inf .* in channel 2"):
        abn_forward(x, gamma, beta, rm, rv, residual=r, check_finite=True)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(rm, rm0)


def test_check_finite_bounds_float16_output_with_r():
    """y alone fits float16; y + r may not (the channel's max of y plus r's max): refused
    before x is written."""
    x, gamma, beta, rm, rv, dz, r = _inputs((2, 3, 4), F16, "overflow")
    r[1, 1, 1] = 65504    # float16's largest
    x0 = x.copy()
    with pytest.raises(cupy_abn.NonFiniteError, match="float16 output would overflow"):
        abn_forward(x, gamma, beta, rm, rv, residual=r, check_finite=True)
    np.testing.assert_array_equal(x, x0)
    z, _ = abn_forward(x, gamma, beta, rm, rv, residual=r * 0, check_finite=True)


@pytest.mark.parametrize("dt,last", [
    (F16, True), (F32, False),
    pytest.param(F16, False, marks=pytest.mark.full),
    pytest.param(F32, True, marks=pytest.mark.full)],
    ids=["float16-channels-last", "float32-nchw", "float16-nchw", "float32-channels-last"])
def test_checked_backward_with_residual(backend, dt, last, monkeypatch):
    """The check's reductions with r (their SATURATED + RESIDUAL variants; float16
    channels-last takes the scalar path): the gradients of the unchecked backward (to
    rounding: other summation orders), no saturation reported, and ELU outputs at -alpha
    through r counted and refused."""
    from cupy_abn import _kernel_backend
    monkeypatch.setattr(_kernel_backend, "RESIDENT", False)
    to_dev, to_host = backend
    x, gamma, beta, rm, rv, dz, r = _inputs((4, 16, 5, 6), dt, "checked", last)
    nhwc = (lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))) if last else np.copy
    axis = (0, 1, 2) if last else None

    def run(r_host, check):
        z, saved = abn_forward(to_dev(nhwc(x)), to_dev(gamma), to_dev(beta), residual=to_dev(
            nhwc(r_host)), activation="elu", activation_param=1.0, axis=axis)
        return [to_host(a) for a in abn_backward(saved, to_dev(nhwc(dz)), check_finite=check)]

    tol = {np.dtype(F32): 1e-5, np.dtype(F16): 2e-3}[np.dtype(dt)]
    for got, want in zip(run(r, True), run(r, False)):   # other reduction orders: rounding
        scale = max(1.0, float(np.abs(want.astype(F64)).max()))
        np.testing.assert_allclose(got.astype(F64), want.astype(F64), rtol=tol,
                                   atol=tol * scale)
    r_low = r.copy()
    r_low[0, 3, 0, :3] = -60    # phi(y + r) rounds to -alpha: y + r cannot be rebuilt
    with pytest.raises(cupy_abn.SaturatedActivationError, match="3 elu outputs.*channel 3: 3"):
        run(r_low, True)


@pytest.mark.parametrize("dt,mode", [
    (F16, "inplace")] + [pytest.param(d, m, marks=pytest.mark.full)
                         for d in (F16, F32) for m in MODES if (d, m) != (F16, "inplace")],
    ids=str)
def test_fused_residual_with_float64_parameters(backend, dt, mode, monkeypatch):
    """float64 gamma with narrower x: float64 accumulators (the residual variants that keep
    fewer packs in flight), on the resident and the two-pass paths."""
    from cupy_abn import _kernel_backend
    to_dev, to_host = backend
    rng = rng_for("f64-params", np.dtype(dt).name, mode)
    act = "elu" if mode != "standard" else "relu"
    for resident, shape in ((True, (3, 4, 5, 7)), (False, (2, 3, 8, 8))):
        monkeypatch.setattr(_kernel_backend, "RESIDENT", resident)
        x, r, dz = (rng.normal(1, 2, shape).astype(dt) for _ in range(3))
        g, b = rng.uniform(0.5, 1.5, shape[1]), rng.normal(0, 0.5, shape[1])
        z, saved = abn_forward(to_dev(x.copy()), to_dev(g), to_dev(b), residual=to_dev(r),
                               mode=mode, activation=act, activation_param=1.0)
        z = to_host(z).copy()
        dx, dg, db, dr = (to_host(a) for a in abn_backward(saved, to_dev(dz)))
        kw = dict(mode=mode, activation=act, param=1.0, residual=r)
        rdx, rdg, rdb, rdr = ref_backward(x, g, b, dz, **kw)
        sums = max(1.0, float(np.sqrt(x.size // shape[1])))
        assert_close(z, ref_forward(x, g, b, **kw)["z"], dt, "z")
        assert_close(dx, rdx, dt, "dx", "backward")
        assert_close(dr, rdr, dt, "dresidual", "backward")
        assert_close(dg, rdg, dt, "dgamma", "backward", scale=sums)
        assert_close(db, rdb, dt, "dbeta", "backward", scale=sums)
        assert dg.dtype == np.float64
