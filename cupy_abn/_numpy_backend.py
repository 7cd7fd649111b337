"""The NumPy backend: the readable statement of the algorithm that the kernels match.

Every stage is vectorized over the whole tensor viewed as ``(N, C, S)``; nothing loops over
elements or channels in Python.  The per-channel stages mirror ``kernels/channel_*.cu`` line by
line, the elementwise stages mirror ``kernels/normalize_activate.cu`` and
``kernels/grad_input.cu``.
"""
from __future__ import annotations

import numpy as np

from ._geometry import as_ncs as _as_ncs

from ._activations import ACTIVATIONS
from ._state import (BETA, COEF_A, COEF_B, COEF_K, G, INVSTD, MEAN, N_COEF, N_ROWS, SCALE,
                     T_U, T_XHAT_FROM_X, T_XHAT_FROM_Y, VAR)


def _sign(gamma: np.ndarray, acc) -> np.ndarray:
    """d|gamma|/dgamma with the reference's convention: +1 at zero, so a zero gamma learns."""
    return np.where(gamma < 0, -1.0, 1.0).astype(acc)


class NumpyBackend:
    """Stages of the forward and backward pass for NumPy arrays (see ``cupy_abn.api``)."""

    def empty_like(self, a):
        return np.empty_like(a)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype)

    def ascontiguous(self, a):
        return np.ascontiguousarray(a)

    def copy_into(self, dst, src) -> None:
        dst[...] = src

    # ---- forward -------------------------------------------------------------------------
    def moments(self, x, acc, extrema: bool = False):
        """Per-channel ``(count, mean, m2)`` partials, each ``(C, 1)``, and the shift, in
        ``acc``; with ``extrema`` also x's min and max per channel, ``(C, 1)`` each.

        The data are shifted by the channel's first element before summing, so that a large
        common offset (mean 1e4, std 1e-2 in float32) does not swamp the deviations.
        """
        x3 = _as_ncs(x)
        n, c, s = x3.shape
        shift = x3[0, :, 0].astype(acc)
        d = np.subtract(x3, shift[None, :, None], dtype=acc)
        count = np.full((c, 1), n * s, dtype=acc)
        mean = (d.sum(axis=(0, 2), dtype=acc) / acc.type(n * s))[:, None]
        m2 = np.square(d - mean[None, :, 0, None]).sum(axis=(0, 2), dtype=acc)[:, None]
        if not extrema:
            return count, mean, m2, shift
        with np.errstate(invalid="ignore"):   # NaN is the moments' to report
            lo = np.fmin.reduce(x3, axis=(0, 2)).astype(acc)[:, None]
            hi = np.fmax.reduce(x3, axis=(0, 2)).astype(acc)[:, None]
        return count, mean, m2, shift, lo, hi

    def prepare_normalize(self, x, out, acc, activation, param_dtype, residual=None) -> None:
        """Nothing to build ahead (the kernel backend builds its kernel here)."""

    def channel_train(self, count, mean, m2, shift, gamma, beta, running_mean, running_var,
                      *, eps, decay, abs_gamma):
        """Merge the partials (Chan), finish the statistics, update the running ones."""
        acc = mean.dtype
        n = count.sum(axis=1)
        mu = (count * mean).sum(axis=1) / n
        m2_total = m2.sum(axis=1) + (count * np.square(mean - mu[:, None])).sum(axis=1)
        stats = np.empty((N_ROWS, mean.shape[0]), dtype=acc)
        stats[MEAN] = shift + mu
        stats[VAR] = m2_total / n
        self._finish(stats, gamma, beta, eps, abs_gamma)
        if running_mean is not None:
            # m / max(m - 1, 1): one value per channel (m == 1) leaves the variance 0.
            unbiased = stats[VAR] * n / np.maximum(n - 1, 1)
            running_mean[...] = decay * running_mean.astype(acc) + (1 - decay) * stats[MEAN]
            running_var[...] = decay * running_var.astype(acc) + (1 - decay) * unbiased
        return stats

    def normalize_train(self, x, out, gamma, beta, running_mean, running_var, *, eps, decay,
                        abs_gamma, activation, param, acc, residual=None):
        """A training forward without a synchronization hook: statistics, then ``out``."""
        stats = self.channel_train(*self.moments(x, acc), gamma, beta, running_mean,
                                   running_var, eps=eps, decay=decay, abs_gamma=abs_gamma)
        self.normalize_activate(x, out, stats, activation, param, residual)
        return stats

    def normalize_eval(self, x, out, gamma, beta, running_mean, running_var, *, eps, abs_gamma,
                       activation, param, acc, residual=None):
        """An evaluation forward: statistics from the running ones, then ``out``."""
        stats = self.channel_eval(gamma, beta, running_mean, running_var, eps=eps,
                                  abs_gamma=abs_gamma, acc=acc)
        self.normalize_activate(x, out, stats, activation, param, residual)
        return stats

    def channel_eval(self, gamma, beta, running_mean, running_var, *, eps, abs_gamma, acc):
        stats = np.empty((N_ROWS, gamma.shape[0]), dtype=acc)
        stats[MEAN] = running_mean
        stats[VAR] = running_var
        self._finish(stats, gamma, beta, eps, abs_gamma)
        return stats

    @staticmethod
    def _finish(stats, gamma, beta, eps, abs_gamma):
        acc = stats.dtype
        g = gamma.astype(acc)
        stats[INVSTD] = 1 / np.sqrt(stats[VAR] + acc.type(eps))
        stats[G] = np.abs(g) + acc.type(eps) if abs_gamma else g
        stats[SCALE] = stats[G] * stats[INVSTD]
        stats[BETA] = beta

    def normalize_activate(self, x, out, stats, activation, param, residual=None):
        """out = phi((x - mean) * g * invstd + beta [+ residual]); ``out`` may be ``x``."""
        act = ACTIVATIONS[activation]
        x3 = _as_ncs(x)
        col = lambda row: stats[row][None, :, None]  # noqa: E731
        y = np.subtract(x3, col(MEAN), dtype=stats.dtype)
        y *= col(SCALE)
        y += col(BETA)
        if residual is not None:   # the pre-activation v = y + r, in acc
            y += _as_ncs(residual)
        _as_ncs(out)[...] = act.forward(y, stats.dtype.type(param))

    # ---- backward ------------------------------------------------------------------------
    def backward_terms(self, z, dz, x, stats, activation, param, t, residual=None):
        """dy = dz * phi'(v) and the t of the mode, both from z (and x for plain ABN); after
        a residual add v = y + r, y = phi_inv(z) - r, and dL/dr = dy.

        Computed once per backward and used by both :meth:`grad_sums` and :meth:`grad_input`
        (the kernels recompute them in registers instead of keeping two arrays).
        """
        act = ACTIVATIONS[activation]
        acc = stats.dtype
        p = acc.type(param)
        z3 = _as_ncs(z).astype(acc, copy=False)
        dy = np.multiply(_as_ncs(dz), act.derivative(z3, p), dtype=acc)
        col = lambda row: stats[row][None, :, None]  # noqa: E731
        if t == T_XHAT_FROM_X:
            tt = np.subtract(_as_ncs(x), col(MEAN), dtype=acc)
            tt *= col(INVSTD)
        else:
            y = act.inverse(z3, p)
            if residual is not None:
                y = y - _as_ncs(residual)
            if t == T_XHAT_FROM_Y:
                tt = (y - col(BETA)) / col(G)
            else:   # T_U: u = y - beta, not y (sum dy*y - beta*sum dy cancels for small gamma)
                tt = y - col(BETA)
        return dy, tt, stats, t, (z, act, p)   # z: no copy kept (float16 z3 is one)

    def grad_sums(self, terms, saturated: bool = False):
        """Per-channel partial sums ``(sum dy, sum dy * t)``, each ``(C, 1)``; with
        ``saturated`` also the count of outputs the activation's inverse clamps (ELU at
        -alpha), ``(C, 1)``."""
        dy, tt = terms[:2]
        acc = dy.dtype
        sums = (dy.sum(axis=(0, 2), dtype=acc)[:, None],
                (dy * tt).sum(axis=(0, 2), dtype=acc)[:, None])
        if not saturated:
            return sums
        z, act, p = terms[4]
        z3 = _as_ncs(z).astype(acc, copy=False)
        return sums + (np.count_nonzero(act.saturated(z3, p), axis=(0, 2))[:, None],)

    def backward_local(self, terms, gamma, dx, *, m, training, abs_gamma, dres=None):
        """A backward without a synchronization hook: dx into ``dx`` (and dL/dr into
        ``dres``), returns dgamma, dbeta."""
        stats, t = terms[2:4]
        dgamma, dbeta, coef = self.channel_backward(*self.grad_sums(terms), stats, gamma, m=m,
                                                    t=t, training=training,
                                                    abs_gamma=abs_gamma)
        self.grad_input(terms, coef, dx, dres)
        return dgamma, dbeta

    def channel_backward(self, sum_dy, sum_dy_t, stats, gamma, *, m, t, training, abs_gamma):
        """dL/dgamma, dL/dbeta and the coefficients of dx = (dy - t*A - B) * K."""
        acc = stats.dtype
        sdy = sum_dy.sum(axis=1)
        sdt = sum_dy_t.sum(axis=1)
        g = stats[G]
        coef = np.zeros((N_COEF, g.shape[0]), dtype=acc)
        coef[COEF_K] = g * stats[INVSTD]
        dldg = sdt / g if t == T_U else sdt
        if training:
            m = acc.type(m)
            # INPLACE-ABN II in its stable form (docs/math.md, "Backward"): t = u = g * xhat,
            # so dL/dg = sum dy*u / g and the u term of dx carries one more 1/g.
            coef[COEF_A] = dldg / (g * m) if t == T_U else sdt / m
            coef[COEF_B] = sdy / m
        dgamma = dldg * _sign(gamma, acc) if abs_gamma else dldg
        return dgamma, sdy, coef

    def grad_input(self, terms, coef, dx, dres=None):
        """dx = (dy - t * A - B) * K, written into ``dx`` (which may be ``dz``); dL/dr = dy
        into ``dres`` after a residual add."""
        dy, tt = terms[:2]
        if dres is not None:
            _as_ncs(dres)[...] = dy
        col = lambda row: coef[row][None, :, None]  # noqa: E731
        # dy is this backward's own temporary; tt may be a view of z (identity, mode II).
        np.subtract(dy, tt * col(COEF_A), out=dy)
        dy -= col(COEF_B)
        dy *= col(COEF_K)
        _as_ncs(dx)[...] = dy
