"""Normalization over any set of axes (Chainer's ``axis``): channels-last (N, H, W, C) with
``axis=(0, 1, 2)``, parameters of several axes (``axis=(0,)``), kept axes that are not
consecutive (a copy with them first), 2-D and 1-D x.  On NumPy and on the kernels (PoCL; CuPy
on a GPU), against an independent float64 computation over those axes, in every mode, in
training and evaluation; the in-place modes write into x itself."""
import numpy as np
import pytest

import cupy_abn
from tests._backends import api_backends
from tests._cases import case_id, rng_for

EPS = 2e-5
SLOPE = 0.01
CASES = [((2, 4, 5, 3), (0, 1, 2)),     # NHWC: C fastest, a reshape (outer, C, 1)
         ((2, 3, 4, 5), (0,)),          # parameters (3, 4, 5)
         ((2, 3, 4, 6), (0, 2, 3)),     # the default, spelled out
         ((3, 4, 5), (1,)),             # kept axes 0 and 2: not consecutive, a copy
         ((2, 3, 4, 5), (1, 3)),        # kept (0, 2): a copy
         ((7, 3), (0,)),
         ((9,), (0,))]                  # one channel, parameters of shape ()


def _ref(x, g, b, dz, axis, mode, training, rm, rv):
    """Forward and backward in float64 over ``axis`` from the definitions."""
    x = x.astype(np.float64)
    keep = [1 if i in axis else d for i, d in enumerate(x.shape)]
    col = lambda v: np.asarray(v, np.float64).reshape(keep)  # noqa: E731
    m = x.size // max(1, g.size)
    if training:
        mean, var = x.mean(axis=axis, keepdims=True), x.var(axis=axis, keepdims=True)
    else:
        mean, var = col(rm), col(rv)
    invstd = 1 / np.sqrt(var + EPS)
    xhat = (x - mean) * invstd
    gg = col(np.abs(g) + EPS if mode != "standard" else g)
    y = gg * xhat + col(b)
    z = np.where(y >= 0, y, SLOPE * y)
    dy = dz * np.where(y >= 0, 1.0, SLOPE)
    dbeta = dy.sum(axis=axis)
    dg = (dy * xhat).sum(axis=axis)
    if training:
        dx = gg * invstd * (dy - dy.mean(axis=axis, keepdims=True)
                            - xhat * (dy * xhat).mean(axis=axis, keepdims=True))
    else:
        dx = gg * invstd * dy
    if mode != "standard":
        dg = dg * np.where(g < 0, -1.0, 1.0)
    new_rm = 0.9 * rm + 0.1 * mean.reshape(rm.shape) if training else rm
    new_rv = 0.9 * rv + 0.1 * var.reshape(rv.shape) * m / max(m - 1, 1) if training else rv
    return z, dx, dg, dbeta, new_rm, new_rv


@pytest.mark.parametrize("backend", api_backends())
@pytest.mark.parametrize("mode", ["standard", "inplace", "inplace_v1"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape,axis", CASES, ids=[case_id(s, "axis", *a) for s, a in CASES])
def test_axis_against_float64(backend, mode, training, shape, axis):
    to_device, to_host = backend
    rng = rng_for("axis", shape, axis, mode, training)
    kept = tuple(d for i, d in enumerate(shape) if i not in axis)
    x = (0.3 + 1.5 * rng.standard_normal(shape)).astype(np.float32)
    g = (rng.uniform(0.5, 1.5, kept) * rng.choice([-1.0, 1.0], kept)).astype(np.float32)
    b = rng.normal(0, 0.5, kept).astype(np.float32)
    rm = rng.normal(0, 1, kept).astype(np.float32)
    rv = rng.uniform(0.5, 2, kept).astype(np.float32)
    dz = rng.standard_normal(shape).astype(np.float32)
    want = _ref(x, g, b, dz, axis, mode, training, rm.astype(np.float64),
                rv.astype(np.float64))
    xd, rmd, rvd = to_device(x), to_device(rm), to_device(rv)
    z, saved = cupy_abn.abn_forward(xd, to_device(g), to_device(b), rmd, rvd, axis=axis,
                                    training=training, mode=mode, activation_param=SLOPE)
    if mode != "standard":
        assert z is xd
    else:
        np.testing.assert_array_equal(to_host(xd), x)   # standard mode keeps x
    dx, dg, db = cupy_abn.abn_backward(saved, to_device(dz))
    got = [to_host(a) for a in (z, dx, dg, db, rmd, rvd)]
    names = ("z", "dx", "dgamma", "dbeta", "running_mean", "running_var")
    for name, a, w in zip(names, got, want):
        assert a.shape == np.shape(w), name
        scale = max(1.0, float(np.abs(w).max()))
        tol = 1e-4 if name in ("dx", "dgamma", "dbeta") else 2e-5
        if name in ("dgamma", "dbeta"):
            scale *= np.sqrt(x.size / max(1, g.size))
        np.testing.assert_allclose(a, w, rtol=tol, atol=tol * scale, err_msg=name)


@pytest.mark.parametrize("axis, match", [((4,), "axis"), ((0, 0), "distinct"),
                                         ((0, 1, 2, 3), None)])
def test_bad_axis_raises_before_writing(axis, match):
    x = np.ones((2, 3, 4, 5), np.float32)
    before = x.copy()
    g = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=match):
        cupy_abn.abn_forward(x, g, g, axis=axis)
    assert np.array_equal(x, before)


def test_parameters_must_have_the_kept_axes_shape():
    x = np.ones((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"gamma: expected shape \(3, 4\)"):
        cupy_abn.abn_forward(x, np.ones(3, np.float32), np.ones(3, np.float32), axis=(0,))


@pytest.mark.parametrize("kind", ["ABN", "InPlaceABN"])
@pytest.mark.parametrize("shape,axis,size", [
    ((4, 5, 6, 3), (0, 1, 2), None),      # channels last
    ((4, 3, 5), (0,), (3, 5)),            # 2-D parameters
    ((4, 3, 5), None, (3, 5)),            # 2-D parameters, Chainer's default axis (0,)
    ((3, 4, 5), (1,), None)])             # kept axes 0 and 2
def test_links_match_batch_normalization_over_axis(kind, shape, axis, size):
    """ABN/InPlaceABN(axis=...) with identity: L.BatchNormalization(axis=...) (positive
    gamma, the in-place scale being |gamma| + eps) in output, gradients and statistics."""
    C = pytest.importorskip("cupy_abn.chainer")
    import chainer
    import chainer.functions as F
    import chainer.links as L
    rng = rng_for("axis-link", kind, shape, axis)
    x = rng.standard_normal(shape)
    ours = getattr(C, kind)(size, dtype=np.float64, activation="identity", axis=axis)
    theirs = L.BatchNormalization(size, dtype=np.float64, axis=axis)
    outs = []
    for link in (ours, theirs):
        h = chainer.Variable(x.copy()) * 1          # an intermediate: overwritten in place
        link.cleargrads()
        y = link(h)
        F.sum(y * y * y).backward()
        outs.append([y.array.copy(), link.gamma.grad, link.beta.grad, link.avg_mean,
                     link.avg_var])
    # in place the scale is |gamma| + eps = 1 + 2e-5 where BatchNormalization's is 1
    for name, a, b in zip(("y", "dgamma", "dbeta", "avg_mean", "avg_var"), *outs):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-4 if kind == "InPlaceABN" else 1e-10,
                                   atol=1e-9, err_msg=name)


def test_link_infers_parameter_shape_from_axis():
    C = pytest.importorskip("cupy_abn.chainer")
    bn = C.ABN(axis=(0, 1, 2))
    bn(np.ones((2, 3, 4, 5), np.float32))
    assert bn.gamma.shape == bn.avg_mean.shape == (5,)


@pytest.mark.parametrize("axis", [(0, 1, 2), (1, 3)], ids=["view", "copy"])
def test_node_backward_without_output_gradient_over_axis(axis):
    """A missing output gradient is zeros of x's shape (not of the stages' (N, C, S))."""
    C = pytest.importorskip("cupy_abn.chainer")
    import chainer
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    bn = C.ABN(axis=axis)
    y = bn(chainer.Variable(x.copy()))
    with chainer.using_config("enable_backprop", False):
        dx, dgamma, dbeta = y.creator.backward((0, 1, 2), (None,))
    assert dx.shape == x.shape and dgamma.shape == bn.gamma.shape
    assert not np.asarray(dx.array).any() and not np.asarray(dbeta.array).any()


def test_standard_double_backward_over_axis():
    """Standard mode stays twice differentiable with axis (gradient check of the backward)."""
    C = pytest.importorskip("cupy_abn.chainer")
    from chainer import gradient_check
    rng = rng_for("axis-double")
    x = rng.standard_normal((4, 3, 2))
    g, b = rng.uniform(0.5, 1.5, (3, 2)), rng.normal(0, 1, (3, 2))
    gy, ggx = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 3, 2))
    ggg, ggb = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))

    def f(x, g, b):
        return C.abn(x, g, b, activation="elu", activation_param=1.0, axis=(0,))
    gradient_check.check_double_backward(f, (x, g, b), gy, (ggx, ggg, ggb), eps=1e-6,
                                         atol=1e-5, rtol=1e-4)
