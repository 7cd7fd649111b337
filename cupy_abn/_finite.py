"""The opt-in finiteness check: ``check_finite=True`` (or :func:`set_check_finite`) makes a NaN
or Inf in x (training forward) or in grad_output (backward), and a float16 output that would
overflow, raise :class:`NonFiniteError` before anything is written: x, the running
statistics, dx.  In the in-place modes' training backward with ELU, outputs at the asymptote
-alpha, from which y cannot be rebuilt, raise :class:`SaturatedActivationError` (a
NonFiniteError) the same way.

It costs no extra pass over x.  The statistics reduction reads every element already: a NaN
or Inf makes its partial's mean or M2 non-finite, and with the check on it also writes each
partial's min and max of x, which bound y = (x - mean) * scale + beta per channel before the
output is written (``kernels/channel_extrema.cuh``).  The backward's partial sums of dy and
dy*t show a non-finite dz (or z) the same way.  What it costs is a host round trip per pass
and the separate finish launch instead of the fused one.

ELU's saturation: z = alpha * (exp(y) - 1) rounds to -alpha once exp(y) is below about a
quarter of the storage dtype's eps (y < -8.3 in float16, -17.3 in float32), and the inverse
clamps z / alpha at -1 + 1e-7 (``kernels/activation.cuh``), so that y is lost below about
-8.3 (float16), -16.2 (float32) and -16.1 (float64, where the clamp, not the rounding,
binds).  The backward then applies a wrong y in dx's ``t * A`` term, with no NaN to show it
(tests/test_check_saturation.py: dx of -7.15 where the true value is about 0).  With the
check on, the same reduction that sums dy and dy*t counts the outputs where the inverse
clamps (``kernels/channel_saturated.cuh``, the check's SATURATED variants of ``grad_sums``):
no extra pass over z, one more small (C, B) array to the host.  Evaluation-mode backward is not
checked: its dx does not use y (only dgamma's negligible terms do).  In a synchronized layer
each rank counts its own outputs, after the exchange of the sums (the other ranks do not
wait on it).

Without the check nothing is inspected: a NaN or Inf stays in its channel, as in Chainer
(``tests/test_nonfinite.py`` pins what happens).  Evaluation has no reduction to piggy-back
on and is not checked.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ._activations import ACTIVATIONS

FLOAT16_MAX = float(np.finfo(np.float16).max)   # 65504

_enabled = False


class NonFiniteError(FloatingPointError):
    """A NaN, an Inf or a float16 overflow found by the finiteness check; nothing was
    written."""


class SaturatedActivationError(NonFiniteError):
    """ELU outputs at the asymptote -alpha in an in-place mode's training backward: y cannot
    be rebuilt from them and the gradient would be wrong; found by the finiteness check
    before dx was written."""


def set_check_finite(enabled: bool) -> None:
    """Turn the finiteness check on or off for every call that does not pass
    ``check_finite`` (default: off).

    Parameters
    ----------
    enabled : bool
        True: :func:`cupy_abn.abn_forward` (training) and :func:`cupy_abn.abn_backward` raise
        :class:`NonFiniteError` before writing anything when x, grad_output or a float16
        output is not finite.
    """
    global _enabled
    _enabled = bool(enabled)


def check_finite_enabled() -> bool:
    """Whether the global finiteness check is on (:func:`set_check_finite`)."""
    return _enabled


def resolve(flag: Optional[bool]) -> bool:
    """A call's ``check_finite``: the keyword when given, else the global switch."""
    return _enabled if flag is None else bool(flag)


def _host(a: Any) -> np.ndarray:
    return np.asarray(a.get() if hasattr(a, "get") else a)


def _channels(bad: np.ndarray) -> str:
    idx = np.flatnonzero(bad).tolist()
    if len(idx) == 1:
        return f"channel {idx[0]}"
    return f"channels {idx[:8]}" + (f" and {len(idx) - 8} more" if len(idx) > 8 else "")


def check_moments(count: Any, mean: Any, m2: Any) -> None:
    """Raise when a channel's partial moments are not finite: x holds NaN or Inf there."""
    mean_h, m2_h = _host(mean), _host(m2)
    bad = ~(np.isfinite(mean_h) & np.isfinite(m2_h)).all(axis=1)
    if bad.any():
        raise NonFiniteError(f"check_finite: x holds NaN or Inf (or values whose squares "
                             f"overflow the accumulation) in {_channels(bad)}; nothing was "
                             f"written (x, running statistics)")


def check_stats(stats: Any, eps: float) -> None:
    """Raise when a channel's scale is not finite: a constant channel (variance 0) with an
    eps that vanishes in the accumulation dtype gives invstd = Inf, and y = 0 * Inf = NaN."""
    from ._state import INVSTD, SCALE
    st = _host(stats)
    bad = ~(np.isfinite(st[INVSTD]) & np.isfinite(st[SCALE]))
    if bad.any():
        raise NonFiniteError(f"check_finite: 1 / sqrt(var + eps) is not finite in "
                             f"{_channels(bad)} (eps={eps!r} vanishes next to a zero "
                             f"variance in {st.dtype}); nothing was written")


def check_float16_output(stats: Any, xmin: Any, xmax: Any, activation: str,
                         param: float) -> None:
    """Raise when phi(y) of some element would exceed float16's range: y is affine in x per
    channel and phi monotone, so the channel's min and max of x bound it."""
    from ._state import BETA, MEAN, SCALE
    st = _host(stats).astype(np.float64)
    lo = _host(xmin).astype(np.float64).min(axis=1)
    hi = _host(xmax).astype(np.float64).max(axis=1)
    phi = ACTIVATIONS[activation].forward
    ends = [phi((v - st[MEAN]) * st[SCALE] + st[BETA], param) for v in (lo, hi)]
    bound = np.maximum(np.abs(ends[0]), np.abs(ends[1]))
    bad = ~(bound <= FLOAT16_MAX)
    if bad.any():
        c = int(np.flatnonzero(bad)[0])
        raise NonFiniteError(f"check_finite: the float16 output would overflow in "
                             f"{_channels(bad)} (|z| up to {bound[c]:.6g} > {FLOAT16_MAX:g}, "
                             f"x in [{lo[c]:.6g}, {hi[c]:.6g}]); the in-place backward could "
                             f"not rebuild y from it; nothing was written")


def saturation_checked(activation: str, t: int, training: bool) -> bool:
    """Whether a checked backward counts saturated outputs: an activation whose inverse
    clamps (ELU), t rebuilt from z (the in-place modes), training (dx uses y)."""
    from ._state import T_XHAT_FROM_X
    return training and t != T_XHAT_FROM_X and ACTIVATIONS[activation].saturated is not None


def check_saturated(counts: Any, activation: str, param: float, dtype: Any) -> None:
    """Raise when a channel has outputs at ELU's asymptote (``counts``: (C, B) partial
    counts)."""
    n = _host(counts).astype(np.int64).sum(axis=1)
    bad = n > 0
    if not bad.any():
        return
    idx = np.flatnonzero(bad).tolist()
    where = ", ".join(f"channel {c}: {n[c]}" for c in idx[:8])
    if len(idx) > 8:
        where += f", and {len(idx) - 8} more channels"
    raise SaturatedActivationError(
        f"check_finite: {int(n.sum())} {activation} outputs at the asymptote "
        f"-alpha = {-param:g} ({where}), from which the in-place backward cannot rebuild y "
        f"(y below about {_elu_bound(dtype):.1f} in {np.dtype(dtype)}): the gradient would be "
        f"wrong; nothing was written (dx).  Use activation='leaky_relu', mode='standard', or "
        f"a smaller |gamma| in those channels")


def _elu_bound(dtype: Any) -> float:
    """The y below which ELU's inverse clamps, for outputs stored in ``dtype``."""
    return {np.dtype(np.float16): -8.3, np.dtype(np.float32): -16.2}.get(np.dtype(dtype), -16.1)


def check_sums(sum_dy: Any, sum_dy_t: Any) -> None:
    """Raise when a channel's partial gradient sums are not finite."""
    a, b = _host(sum_dy), _host(sum_dy_t)
    bad = ~(np.isfinite(a) & np.isfinite(b)).all(axis=1)
    if bad.any():
        raise NonFiniteError(f"check_finite: grad_output (or the saved output) holds NaN or "
                             f"Inf in {_channels(bad)}; nothing was written (dx)")
