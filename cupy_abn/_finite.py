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
dy*t show a non-finite dz (or z) the same way.  What it costs is one blocking host copy per
pass (every per-channel array the checks read, packed on the device into one buffer:
:func:`fetch`) and the separate finish launch instead of the fused one; a capturing CUDA
stream cannot hold it (:class:`GraphCaptureError`).

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

from typing import Any, List, Optional, Sequence

import numpy as np

from ._activations import ACTIVATIONS
from ._validation import array_family

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


class GraphCaptureError(RuntimeError):
    """The finiteness check was asked for while the current CUDA stream is capturing a graph:
    it copies to the host and decides on the host, which a captured graph cannot replay."""


_CHECK_CAPTURE = ("check_finite: the finiteness check copies to the host and decides there, "
                  "which a CUDA graph capture cannot hold; turn it off "
                  "(check_finite=False, cupy_abn.set_check_finite(False)) for the captured "
                  "steps")


def refuse_capture(a: Any, message: str = _CHECK_CAPTURE) -> None:
    """Raise :class:`GraphCaptureError` (with ``message``: why the pass cannot be captured)
    when ``a`` is a CuPy array and the current stream is capturing a CUDA graph (before the
    pass launches or exchanges anything)."""
    if array_family(a) == "cupy":
        import cupy
        if cupy.cuda.get_current_stream().is_capturing():
            raise GraphCaptureError(message)


def fetch(*arrays: Any) -> List[np.ndarray]:
    """Small device arrays on the host in one blocking copy: packed on the device into one
    float64 buffer (exact for every dtype used here: float16/32/64 and uint32 counts), copied
    once, split.  NumPy arrays are returned as they are."""
    family = array_family(arrays[0])
    if family == "numpy":
        return list(arrays)
    flat = [a.ravel().astype(np.float64) for a in arrays]
    if family == "cupy":
        import cupy
        packed = cupy.concatenate(flat)
    else:   # pyopencl (the kernels' test runtime)
        import pyopencl.array as cla
        packed = cla.concatenate(flat)
    host = packed.get()
    out, start = [], 0
    for a in arrays:
        n = int(np.prod(a.shape))
        out.append(host[start:start + n].reshape(a.shape).astype(a.dtype))
        start += n
    return out


def _channels(bad: np.ndarray) -> str:
    idx = np.flatnonzero(bad).tolist()
    if len(idx) == 1:
        return f"channel {idx[0]}"
    return f"channels {idx[:8]}" + (f" and {len(idx) - 8} more" if len(idx) > 8 else "")


def check_forward(mean: Any, m2: Any, stats: Optional[Any], extrema: Sequence[Any], *,
                  eps: float, activation: str, param: float,
                  residual: Optional[Sequence[Any]] = None) -> None:
    """The checks of a training forward, from one host copy of the per-channel partials
    (``mean``, ``m2``: (C, B)), the statistics computed from them (``stats``, (6, C); None for
    an empty local batch) and, for float16 outputs, the partials' min and max of x
    (``extrema``; empty otherwise).  ``residual``: the same partials of a fused residual add's
    r, (mean, m2) and for float16 outputs (min, max), or None.

    Raises
    ------
    NonFiniteError
        x (or r) holds NaN or Inf; a scale 1 / sqrt(var + eps) is not finite; or a float16
        output would overflow.
    """
    res = list(residual or ())
    given = [mean, m2] + ([stats] if stats is not None else []) + list(extrema) + res
    host = fetch(*given)
    host_res = host[len(host) - len(res):]
    _check_moments(host[0], host[1])
    if res:
        _check_moments(host_res[0], host_res[1], "residual")
    if stats is not None:
        _check_stats(host[2], eps)
        if extrema:
            _check_float16_output(host[2], host[3], host[4], activation, param,
                                  host_res[2:4] if res else None)


def _check_moments(mean: np.ndarray, m2: np.ndarray, name: str = "x") -> None:
    """A channel's partial moments are not finite: ``name`` holds NaN or Inf there."""
    bad = ~(np.isfinite(mean) & np.isfinite(m2)).all(axis=1)
    if bad.any():
        raise NonFiniteError(f"check_finite: {name} holds NaN or Inf (or values whose squares "
                             f"overflow the accumulation) in {_channels(bad)}; nothing was "
                             f"written (x, running statistics)")


def _check_stats(st: np.ndarray, eps: float) -> None:
    """A channel's scale is not finite: a constant channel (variance 0) with an eps that
    vanishes in the accumulation dtype gives invstd = Inf, and y = 0 * Inf = NaN."""
    from ._state import INVSTD, SCALE
    bad = ~(np.isfinite(st[INVSTD]) & np.isfinite(st[SCALE]))
    if bad.any():
        raise NonFiniteError(f"check_finite: 1 / sqrt(var + eps) is not finite in "
                             f"{_channels(bad)} (eps={eps!r} vanishes next to a zero "
                             f"variance in {st.dtype}); nothing was written")


def _check_float16_output(stats: np.ndarray, xmin: np.ndarray, xmax: np.ndarray,
                          activation: str, param: float,
                          residual: Optional[Sequence[np.ndarray]] = None) -> None:
    """phi(y [+ r]) of some element would exceed float16's range: y is affine in x per
    channel and phi monotone, so the channel's min and max of x (and of r) bound it."""
    from ._state import BETA, MEAN, SCALE
    st = stats.astype(np.float64)
    lo = xmin.astype(np.float64).min(axis=1)
    hi = xmax.astype(np.float64).max(axis=1)
    phi = ACTIVATIONS[activation].forward
    y = [(v - st[MEAN]) * st[SCALE] + st[BETA] for v in (lo, hi)]
    y_lo, y_hi = np.minimum(*y), np.maximum(*y)
    if residual is not None:   # v = y + r lies in [y_lo + r_lo, y_hi + r_hi]
        y_lo = y_lo + residual[0].astype(np.float64).min(axis=1)
        y_hi = y_hi + residual[1].astype(np.float64).max(axis=1)
    ends = [phi(v, param) for v in (y_lo, y_hi)]
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


def check_backward(sum_dy: Any, sum_dy_t: Any, counts: Optional[Any], *, activation: str,
                   param: float, dtype: Any) -> None:
    """The checks of a backward, from one host copy of the per-channel partial sums (C, B)
    and, when the saturation is checked (:func:`saturation_checked`), the partial counts of
    outputs at ELU's asymptote (``counts``).

    Raises
    ------
    NonFiniteError
        grad_output (or the saved output) holds NaN or Inf.
    SaturatedActivationError
        Outputs sit at ELU's asymptote, from which y cannot be rebuilt.
    """
    host = fetch(sum_dy, sum_dy_t, *([counts] if counts is not None else []))
    a, b = host[0], host[1]
    bad = ~(np.isfinite(a) & np.isfinite(b)).all(axis=1)
    if bad.any():
        raise NonFiniteError(f"check_finite: grad_output (or the saved output) holds NaN or "
                             f"Inf in {_channels(bad)}; nothing was written (dx)")
    if counts is not None:
        _check_saturated(host[2], activation, param, dtype)


def _check_saturated(counts: np.ndarray, activation: str, param: float, dtype: Any) -> None:
    """A channel has outputs at ELU's asymptote (``counts``: (C, B) partial counts)."""
    n = counts.astype(np.int64).sum(axis=1)
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
