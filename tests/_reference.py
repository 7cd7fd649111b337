"""An independent float64 InPlace-ABN, written from docs/math.md for the tests only.

It never calls the library: statistics with ``np.mean``/``np.var``, the textbook BatchNorm
gradient in terms of ``xhat``, and its own activation formulas.  Every backend is compared with
it through :func:`assert_close` and the tolerance table :data:`TOL`.
"""
from __future__ import annotations

import numpy as np

# Tolerances per dtype of x, for values of order 1 (|error| <= atol + rtol * |expected|).
# float16: inputs, outputs and dz are rounded to 11 bits (rel. 4.9e-4) and every elementwise
# stage rounds again, so forward errors of ~2 ulp and backward errors a few times larger
# (the gradient is a difference of terms of order 1) are expected.
TOL = {
    np.dtype(np.float64): {"forward": (1e-10, 1e-10), "backward": (1e-9, 1e-9),
                           "stats": (1e-12, 1e-12)},
    np.dtype(np.float32): {"forward": (2e-5, 2e-5), "backward": (1e-4, 1e-4),
                           "stats": (1e-5, 1e-5)},
    np.dtype(np.float16): {"forward": (4e-3, 4e-3), "backward": (2e-2, 2e-2),
                           "stats": (1e-5, 1e-5)},
}


def _phi(y, act, p):
    if act == "identity":
        return y
    if act == "leaky_relu":
        return np.where(y >= 0, y, p * y)
    if act == "elu":
        return np.where(y >= 0, y, p * (np.exp(np.minimum(y, 0)) - 1))
    if act == "relu":
        return np.maximum(y, 0)
    raise KeyError(act)


def _dphi(y, act, p):
    if act == "identity":
        return np.ones_like(y)
    if act == "leaky_relu":
        return np.where(y >= 0, 1.0, p)
    if act == "elu":
        return np.where(y >= 0, 1.0, p * np.exp(np.minimum(y, 0)))
    if act == "relu":
        return (y > 0).astype(np.float64)
    raise KeyError(act)


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _col(v, ndim):
    return np.asarray(v, np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def _g(gamma, eps, mode):
    gamma = np.asarray(gamma, np.float64)
    return np.abs(gamma) + eps if mode != "standard" else gamma


def ref_forward(x, gamma, beta, running_mean=None, running_var=None, *, training=True,
                decay=0.9, eps=2e-5, activation="leaky_relu", param=0.01, mode="inplace",
                residual=None):
    """Forward in float64: dict with z, y (the pre-activation: BN(x) + residual when one is
    given), xhat, mean, var and the updated running stats."""
    x = np.asarray(x, np.float64)
    ax = _axes(x)
    m = x.size // x.shape[1]
    if training:
        mean, var = x.mean(axis=ax), x.var(axis=ax)
    else:
        mean = np.asarray(running_mean, np.float64)
        var = np.asarray(running_var, np.float64)
    xhat = (x - _col(mean, x.ndim)) / np.sqrt(_col(var, x.ndim) + eps)
    y = _col(_g(gamma, eps, mode), x.ndim) * xhat + _col(beta, x.ndim)
    if residual is not None:
        y = y + np.asarray(residual, np.float64)
    out = {"z": _phi(y, activation, param), "y": y, "xhat": xhat, "mean": mean, "var": var}
    if running_mean is not None:
        rm = np.asarray(running_mean, np.float64)
        rv = np.asarray(running_var, np.float64)
        if training:
            rm = decay * rm + (1 - decay) * mean
            rv = decay * rv + (1 - decay) * var * m / (m - 1)
        out["running_mean"], out["running_var"] = rm, rv
    return out


def ref_backward(x, gamma, beta, dz, *, training=True, eps=2e-5, activation="leaky_relu",
                 param=0.01, mode="inplace", running_mean=None, running_var=None,
                 residual=None):
    """Textbook BatchNorm gradient in float64: (dx, dgamma, dbeta), and d(residual) (the
    gradient at the pre-activation) as a fourth value when a residual is given."""
    f = ref_forward(x, gamma, beta, running_mean, running_var, training=training, eps=eps,
                    activation=activation, param=param, mode=mode, residual=residual)
    xhat, y = f["xhat"], f["y"]
    ax = _axes(xhat)
    dy = np.asarray(dz, np.float64) * _dphi(y, activation, param)
    g = _g(gamma, eps, mode)
    invstd = 1 / np.sqrt(f["var"] + eps)
    k = _col(g * invstd, xhat.ndim)
    if training:
        dx = k * (dy - dy.mean(axis=ax, keepdims=True)
                  - xhat * (dy * xhat).mean(axis=ax, keepdims=True))
    else:
        dx = k * dy
    dg = (dy * xhat).sum(axis=ax)
    if mode != "standard":
        dg = dg * np.where(np.asarray(gamma) < 0, -1.0, 1.0)
    if residual is not None:
        return dx, dg, dy.sum(axis=ax), dy
    return dx, dg, dy.sum(axis=ax)


def assert_close(actual, expected, dtype, what: str, kind: str = "forward", scale=None):
    """|actual - expected| <= atol * scale + rtol * |expected|, with TOL[dtype][kind].

    ``scale`` (default: max(1, max|expected|)) makes atol relative to the magnitude of the
    quantity, which matters for sums over many elements such as dgamma.
    """
    rtol, atol = TOL[np.dtype(dtype)][kind]
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    if scale is None:
        scale = max(1.0, float(np.abs(e).max())) if e.size else 1.0
    err = np.abs(a - e)
    bound = atol * scale + rtol * np.abs(e)
    bad = ~(err <= bound)
    assert not bad.any(), (
        f"{what}: {int(bad.sum())}/{e.size} values off (dtype {np.dtype(dtype)}, {kind} "
        f"rtol={rtol}, atol={atol}*{scale:.3g}); worst |err|={err.max():.3g} at "
        f"{np.unravel_index(np.argmax(err - bound), e.shape)}")
