"""The fused residual add in Chainer: ``layer(h, residual=shortcut)`` and the functional
``residual=`` equal BatchNormalization + add + activation, gradients flow to both inputs, and
the in-place node keeps the shortcut safe from later in-place layers."""
import warnings

import numpy as np
import pytest

import cupy_abn.chainer as C   # first: it makes Chainer importable under NumPy 2
import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402
import chainer.links as L  # noqa: E402
from chainer import gradient_check  # noqa: E402

from tests._cases import rng_for  # noqa: E402


def _data(shape=(4, 3, 5, 5), dtype=np.float64):
    rng = rng_for("chainer-residual", shape)
    return (rng.normal(1, 2, shape).astype(dtype), rng.normal(0, 1, shape).astype(dtype),
            rng.normal(0, 1, shape).astype(dtype))


def _unfused(x, r, bn, slope):
    return F.leaky_relu(bn(x) + r, slope)


@pytest.mark.parametrize("kind", ["abn", "inplace", "inplace_v1"])
def test_link_with_residual_equals_batch_normalization_add_activation(kind):
    """Outputs, dx, d(shortcut), dgamma, dbeta and running statistics against Chainer's own
    BatchNormalization + add + leaky_relu (gamma positive: the in-place scale |gamma|+eps
    differs from gamma by eps only)."""
    x, r, gz = _data()
    slope = 0.1
    bn = L.BatchNormalization(3, eps=2e-5, dtype=np.float64)
    layer = (C.ABN(3, activation_param=slope, dtype=np.float64) if kind == "abn" else
             C.InPlaceABN(3, activation_param=slope, mode=kind, dtype=np.float64))
    bn.gamma.array[...] = layer.gamma.array[...] = [0.7, 1.3, 2.0]
    bn.beta.array[...] = layer.beta.array[...] = [0.1, -0.2, 0.3]
    xv, rv = chainer.Variable(x.copy()), chainer.Variable(r.copy())
    want = _unfused(xv, rv, bn, slope)
    want.grad = gz.copy()
    want.backward()

    xc, rc = chainer.Variable(x.copy()), chainer.Variable(r.copy())
    h = xc * 1.0   # an intermediate result: the in-place layer may overwrite it
    z = layer(h, residual=rc)
    got_z = z.array.copy()
    z.grad = gz.copy()
    z.backward()
    eps = 2e-5 if kind != "abn" else 0.0   # |gamma| + eps
    tol = dict(rtol=1e-5 + eps * 10, atol=1e-5 + eps * 10)
    np.testing.assert_allclose(got_z, want.array, **tol)
    np.testing.assert_allclose(xc.grad, xv.grad, **tol)
    np.testing.assert_allclose(rc.grad, rv.grad, **tol)
    np.testing.assert_allclose(layer.gamma.grad, bn.gamma.grad, **tol)
    np.testing.assert_allclose(layer.beta.grad, bn.beta.grad, **tol)
    np.testing.assert_allclose(layer.avg_mean, bn.avg_mean, rtol=1e-10)
    np.testing.assert_allclose(layer.avg_var, bn.avg_var, rtol=1e-10)
    np.testing.assert_array_equal(rc.array, r)   # the shortcut is only read


def test_functional_standard_residual_passes_gradient_check():
    """First and second order (plain ABN keeps x: differentiable twice), all four inputs."""
    x, r, gz = _data((3, 2, 4))
    rng = rng_for("gc")
    gamma, beta = rng.uniform(0.5, 1.5, 2), rng.normal(0, 0.3, 2)
    ggx, ggr = rng.normal(size=x.shape), rng.normal(size=x.shape)
    ggg, ggb = rng.normal(size=2), rng.normal(size=2)

    def f(x, gamma, beta, r):
        return C.abn(x, gamma, beta, training=True, activation="elu", activation_param=1.0,
                     residual=r)
    gradient_check.check_backward(f, (x, gamma, beta, r), gz, dtype=np.float64,
                                  atol=1e-6, rtol=1e-5)
    gradient_check.check_double_backward(f, (x, gamma, beta, r), gz,
                                         (ggx, ggg, ggb, ggr), dtype=np.float64,
                                         atol=1e-5, rtol=1e-4)


def test_in_place_node_retains_the_shortcut():
    """The in-place node retains r: an InPlaceABN fed the shortcut afterwards writes a new
    buffer (and warns) instead of overwriting what the first backward reads."""
    x, r, gz = _data()
    a, b = C.InPlaceABN(3, dtype=np.float64), C.InPlaceABN(3, dtype=np.float64)
    xv, rv = chainer.Variable(x), chainer.Variable(r)
    shortcut = rv * 1.0
    z1 = a(xv * 1.0, residual=shortcut)
    with pytest.warns(C.InPlaceFallbackWarning, match="retained"):
        z2 = b(shortcut)
    F.sum(z1 * z2).backward()
    assert shortcut.array is not z2.array
    assert np.isfinite(rv.grad).all()


def test_residual_that_is_x_takes_a_new_buffer():
    """bn(h, residual=h): z may not overwrite the r it reads; the node writes a new buffer."""
    x, _, gz = _data()
    layer = C.InPlaceABN(3, dtype=np.float64)
    h = chainer.Variable(x) * 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z = layer(h, residual=h)
    assert z.array is not h.array
    ref = C.ABN(3, dtype=np.float64)
    want = ref(chainer.Variable(x), residual=chainer.Variable(x))
    np.testing.assert_allclose(z.array, want.array, rtol=1e-4, atol=1e-4)


def test_residual_of_another_shape_is_a_type_error():
    x, r, _ = _data()
    with pytest.raises(chainer.utils.type_check.InvalidType):
        C.ABN(3, dtype=np.float64)(x, residual=r[:2])


@pytest.mark.parametrize("mode", ["inplace", "inplace_v1"])
def test_out_keeps_the_pre_activation_blocks_input(mode):
    """``h + conv(bn(h, out=buffer))``: h survives (no warning, no copy of h, no error on its
    reuse), z is the buffer, and the gradients are plain ABN's."""
    x, _, gz = _data()
    rng = rng_for("preact")
    w = rng.normal(0, 0.3, (3, 3, 3, 3))

    def block(layer, **kw):
        h = chainer.Variable(x.copy()) * 1.0
        z = layer(h, **kw)
        out = h + F.convolution_2d(z, w, pad=1)
        out.grad = gz.copy()
        out.backward()
        return h, z, out, layer

    gamma = np.array([0.7, 1.3, 2.0])
    std = C.ABN(3, dtype=np.float64, initial_gamma=gamma)
    h_ref, _, out_ref, _ = block(std)
    buffer = np.empty_like(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer = C.InPlaceABN(3, dtype=np.float64, mode=mode, initial_gamma=gamma - 2e-5)
        h, z, out, _ = block(layer, out=buffer)
    assert z.array is buffer
    np.testing.assert_array_equal(h.array, x)          # the block's input is untouched
    np.testing.assert_allclose(out.array, out_ref.array, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.gamma.grad, std.gamma.grad, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(layer.beta.grad, std.beta.grad, rtol=1e-8, atol=1e-10)


def test_functional_out_in_standard_mode():
    x, r, _ = _data((2, 3, 4))
    buffer = np.empty_like(x)
    z = C.abn(x, np.ones(3), np.zeros(3), training=True, out=buffer, residual=r)
    assert z.array is buffer
    want = C.abn(x, np.ones(3), np.zeros(3), training=True, residual=r)
    np.testing.assert_array_equal(buffer, want.array)
