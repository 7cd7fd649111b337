"""InPlace-ABN with statistics synchronized across processes (docs/math.md, "Several
processes").

Each rank runs :func:`cupy_abn.abn_forward` / :func:`cupy_abn.abn_backward` on its own slice
of the global batch; the hooks built here exchange the per-channel partials between the
stages, through a ChainerMN communicator (the transport is in ``cupy_abn/_exchange.py``).

What one rank sends per layer and training step (C channels, accumulation dtype A = float32,
or float64 for float64 input; R ranks):

=========  ====================================================  =====================
forward    Allgather of a header, int64                          11 values: 88 bytes
           (rejected?, elements per channel, C, A's itemsize,
           x's and gamma's dtypes, mode, activation, and
           the bits of activation_param, eps, decay)
forward    Allgather of its (mean, M2, shift)                    3*C values of A
backward   Allreduce-sum of (sum_dy, sum_dy_t)                   2*C values of A
=========  ====================================================  =====================

The header is what lets every rank know the global count ``m`` before the forward (for the
checks and for ``m / max(m - 1, 1)``; a global count of 1 warns as one process does) and the
per-rank counts for Chan's merge, so batch sizes may differ and a rank may hold no sample at
all; it also carries C, the dtypes, the mode, the activation and the scalars, so that ranks
that disagree raise the same error on every rank (ValueError naming what differs, with each
rank's value) instead of hanging in a mismatched collective or silently mixing layers.  The moments
are gathered, not summed: every rank then merges the same R partials with Chan's formula in
rank order, so all ranks get bit-identical statistics, as stable as one process's.

Arrays: NumPy (MPI on the arrays), CuPy (NCCL on the device, or MPI on host copies), and the
pyopencl arrays of the kernel backend's CPU test runtime (hooks run on host copies).

Evaluation mode exchanges nothing.  Gradients of gamma and beta come back as the global sums
(what one process would compute on the concatenated batch), identical on every rank.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike

from . import _finite
from . import _geometry as G
from . import _validation as V
from ._dispatch import device_scope
from ._exchange import Exchange
from ._precision import accum_dtype
from ._state import SavedState
from .api import _abn_backward, _abn_forward, abn_backward, abn_forward

__all__ = ["sync_abn_forward", "sync_abn_backward"]

# Columns of the header every rank sends before a synchronized forward.
(_REJECTED, _COUNT, _CHANNELS, _ITEMSIZE, _XDTYPE, _PDTYPE, _MODE, _ACTIVATION, _PARAM, _EPS,
 _DECAY) = range(11)
_HEADER = 11
_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
# Why a synchronized training pass cannot be captured in a CUDA graph.
_CAPTURE = ("synchronized layer: a training pass exchanges a header and the per-channel "
            "partials through the communicator, with host-side decisions between the "
            "stages, which a CUDA graph capture cannot hold; capture evaluation steps (no "
            "exchange), or layers without a communicator")


def _xp(a):
    """cupy for CuPy arrays; numpy for NumPy and host copies of other families."""
    if V.array_family(a) == "cupy":
        import cupy
        return cupy
    return np


def _on_host_for_opencl(hook: Callable) -> Callable:
    """Run ``hook`` on host copies for pyopencl arrays (the kernel backend's CPU test runtime)
    and hand the results back as pyopencl arrays; NumPy and CuPy arrays pass straight through.
    """
    def wrapped(*arrays):
        if V.array_family(arrays[0]) != "opencl":
            return hook(*arrays)
        import pyopencl.array as cla
        queue = arrays[0].queue
        out = hook(*(a.get() for a in arrays))
        return tuple(cla.to_device(queue, np.ascontiguousarray(o)) for o in out)
    return wrapped


def _merge_local(count, mean, m2):
    """Chan's merge of ``(C, B)`` partials into one ``(C,)`` triple; empty partials add nothing.

    ``mean`` stays relative to the partials' common shift.  A channel whose total count is 0
    gets mean 0 and M2 0 (no division by a zero count).
    """
    if count.shape[1] == 1:
        return count[:, 0], mean[:, 0], m2[:, 0]
    xp = _xp(mean)
    full = count > 0                     # what an empty partial holds is never read
    mean, m2 = xp.where(full, mean, 0), xp.where(full, m2, 0)
    n = count.sum(axis=1)
    mu = (count * mean).sum(axis=1) / xp.where(n > 0, n, 1)
    m2_total = m2.sum(axis=1) + (count * xp.square(mean - mu[:, None])).sum(axis=1)
    return n, mu, m2_total


def _make_combine_moments(exchange: Exchange, counts: ArrayLike) -> Callable:
    """The ``combine_moments`` hook: one partial per rank, as ``(C, R)`` partials.

    ``counts`` are the per-rank elements per channel (from :func:`_exchange_header`).  The
    means are re-expressed relative to the shift of the first non-empty rank, which is the
    shift one process would take for the concatenated batch (its first element).
    """
    per_rank = np.asarray(counts, np.int64)
    first = int(np.flatnonzero(per_rank)[0]) if per_rank.any() else 0

    def combine_moments(count, mean, m2, shift):
        xp = _xp(mean)
        c = mean.shape[0]
        _, mu, m2_local = _merge_local(count, mean, m2)
        gathered = exchange.allgather(xp.concatenate([mu, m2_local, shift.astype(mu.dtype)]))
        gathered = gathered.reshape(exchange.size, 3, c)
        shifts = gathered[:, 2]
        common = shifts[first]
        cnt = xp.asarray(per_rank.astype(mu.dtype))[:, None]        # (R, 1)
        means = xp.where(cnt > 0, gathered[:, 0] + (shifts - common[None, :]), 0)
        count_cr = xp.ascontiguousarray(xp.broadcast_to(cnt, (exchange.size, c)).T)
        return (count_cr, xp.ascontiguousarray(means.T.astype(mu.dtype)),
                xp.ascontiguousarray(gathered[:, 1].T), common.copy())

    return _on_host_for_opencl(combine_moments)


def _make_combine_sums(exchange: Exchange) -> Callable:
    """The ``combine_sums`` hook: ``(sum_dy, sum_dy_t)`` summed over ranks, each ``(C, 1)``."""

    def combine_sums(sum_dy, sum_dy_t):
        xp = _xp(sum_dy)
        c = sum_dy.shape[0]
        total = exchange.allreduce_sum(xp.concatenate([sum_dy.sum(axis=1),
                                                       sum_dy_t.sum(axis=1)]))
        return total[:c, None], total[c:, None]

    return _on_host_for_opencl(combine_sums)


def _code(value, choices) -> int:
    """Index of ``value`` in ``choices``, -1 when it is not one of them."""
    try:
        return list(choices).index(value)
    except (ValueError, TypeError):
        return -1


def _bits(value) -> int:
    """The float64 bit pattern of a number, as an int64 (-1 for what is not a number)."""
    try:
        return int(np.array([float(value)], np.float64).view(np.int64)[0])
    except (TypeError, ValueError):
        return -1


def _exchange_header(exchange: Exchange, x, rejected: Optional[BaseException],
                    gamma: Any = None, *, mode: Optional[str] = None,
                    activation: Optional[str] = None, activation_param: Any = None,
                    eps: Any = None, decay: Any = None) -> np.ndarray:
    """Allgather (rejected?, count, C, accumulation itemsize, x's and gamma's dtypes, mode,
    activation, activation_param, eps, decay) and raise the same error on every rank.

    Returns the per-rank elements per channel.  Ranks that disagree on C, a dtype, the mode,
    the activation or a scalar all raise a ValueError naming it and listing every rank's value.  A rank whose own input was rejected re-raises
    its error after the exchange; the others raise a RuntimeError naming it, so that no rank is
    left waiting in a collective that the rejecting rank will never enter.
    """
    shape = tuple(getattr(x, "shape", ()))
    ok_shape = rejected is None and len(shape) >= 2
    header = np.zeros(_HEADER, np.int64)
    header[_REJECTED] = rejected is not None
    if ok_shape:
        header[_COUNT] = G.count(shape)
        header[_CHANNELS] = G.channels(shape)
        header[_ITEMSIZE] = accum_dtype(x.dtype, getattr(gamma, "dtype", None)).itemsize
        header[_XDTYPE] = _code(np.dtype(x.dtype), _FLOATS)
        header[_PDTYPE] = _code(np.dtype(getattr(gamma, "dtype", x.dtype)), _FLOATS)
    from ._activations import ACTIVATIONS
    from ._state import MODES
    header[_MODE] = _code(mode, MODES)
    header[_ACTIVATION] = _code(activation, ACTIVATIONS)
    header[_PARAM], header[_EPS], header[_DECAY] = (_bits(v) for v in
                                                    (activation_param, eps, decay))
    table = exchange.allgather_host(header)
    if rejected is not None:
        raise rejected
    bad = np.flatnonzero(table[:, _REJECTED])
    if bad.size:
        raise RuntimeError(f"synchronized forward: rank(s) {bad.tolist()} rejected their input "
                           "(see the error raised there); no statistics were exchanged")
    from ._activations import ACTIVATIONS
    from ._state import MODES
    names = {_XDTYPE: [d.name for d in _FLOATS], _PDTYPE: [d.name for d in _FLOATS],
             _MODE: list(MODES), _ACTIVATION: list(ACTIVATIONS)}
    floats = (_PARAM, _EPS, _DECAY)
    for col, arg, what in (
            (_CHANNELS, "x", "the same number of channels (x.shape[1])"),
            (_XDTYPE, "x", "the same dtype"),
            (_PDTYPE, "gamma", "the same dtype"),
            (_ITEMSIZE, "x", "the same accumulation dtype (float64 x or parameters on all "
                             "ranks or on none)"),
            (_MODE, "mode", "the same mode"),
            (_ACTIVATION, "activation", "the same activation"),
            (_PARAM, "activation_param", "the same value"),
            (_EPS, "eps", "the same value"),
            (_DECAY, "decay", "the same value")):
        column = table[:, col]
        if (column == column[0]).all():
            continue
        if col in names:
            values = [names[col][v] if 0 <= v < len(names[col]) else "?" for v in column]
        elif col in floats:
            values = column.view(np.float64).tolist()
        else:
            values = column.tolist()
        V.fail(arg, f"{what} on every rank of the synchronized layer",
               f"{values} on ranks 0..{exchange.size - 1}")
    return table[:, _COUNT]


def sync_abn_forward(x, gamma, beta, running_mean, running_var, comm: Any, *,
                     training: bool = True, decay: float = 0.9, eps: float = 2e-5,
                     activation: str = "leaky_relu", activation_param: float = 0.01,
                     mode: str = "inplace", out: Any = None,
                     residual: Any = None) -> Tuple[Any, SavedState]:
    """:func:`cupy_abn.abn_forward` with the statistics of the batch of all ranks of ``comm``.

    Every rank of ``comm`` must call it (collectively) for the same layer, with its own slice
    ``x`` of the global batch: ``x.shape[0]`` may differ between ranks and may be 0.  The
    parameters and running statistics are expected to be the same on every rank; the running
    statistics are updated identically everywhere.  ``comm`` is a ChainerMN communicator (or an
    mpi4py communicator).  With ``training=False`` nothing is exchanged.  ``out`` and
    ``residual``: as :func:`cupy_abn.abn_forward`'s (this rank's output there, x left
    untouched; this rank's r, added before the activation: nothing of it is exchanged).

    Returns ``(z, saved)`` as :func:`cupy_abn.abn_forward`; ``saved.m`` is the global count.
    In training it raises :class:`cupy_abn.GraphCaptureError` on a stream that is capturing a
    CUDA graph, before anything is exchanged (the exchange decides on the host); evaluation
    exchanges nothing and can be captured.
    """
    out = None if out is x else out
    kw: Dict[str, Any] = dict(training=training, decay=decay, eps=eps, activation=activation,
                              activation_param=activation_param, mode=mode, out=out,
                              residual=residual)
    if not training:
        return abn_forward(x, gamma, beta, running_mean, running_var, **kw)
    _finite.refuse_capture(x, _CAPTURE)   # before any exchange (every rank captures alike)
    exchange = Exchange(comm)
    rejected = route = None
    try:
        # The element count is checked after the exchange, against the global count.
        route = V.check_forward(x, gamma, beta, running_mean, running_var, check_count=False,
                                **kw)
    except Exception as e:  # noqa: BLE001 - re-raised after telling the other ranks
        rejected = e
    counts = _exchange_header(exchange, x, rejected, gamma, mode=mode, activation=activation,
                             activation_param=activation_param, eps=eps, decay=decay)
    global_count = int(counts.sum())
    V.check_count_of(x, global_count)
    return _abn_forward(x, gamma, beta, running_mean, running_var, **kw,
                        combine_moments=_make_combine_moments(exchange, counts),
                        global_count=global_count, route=route)


def sync_abn_backward(saved: SavedState, grad_output, comm: Any, *, out=None
                      ) -> Tuple[Any, ...]:
    """:func:`cupy_abn.abn_backward` of a :func:`sync_abn_forward`, collectively over ``comm``.

    ``grad_x`` is this rank's slice of the gradient of the global batch; ``grad_gamma`` and
    ``grad_beta`` are the global sums, identical on every rank (divide by ``comm.size`` before
    an optimizer that averages gradients over ranks, as ChainerMN's does).  After a forward
    with a residual, this rank's ``grad_residual`` comes fourth.  A rank whose
    ``grad_output`` is rejected still joins the sum with NaN, so that the others do not hang
    (their gradients come out NaN), and raises its error.  A training backward raises
    :class:`cupy_abn.GraphCaptureError` during a CUDA graph capture, as the forward does.
    """
    if not saved.training:
        return abn_backward(saved, grad_output, out=out)
    _finite.refuse_capture(saved.z, _CAPTURE)
    exchange = Exchange(comm)
    try:
        family = V.check_backward(saved, grad_output, out)
    except Exception:
        stats = saved.stats
        with device_scope(stats, V.array_family(stats)):   # the NaNs on the layer's device
            exchange.allreduce_sum(_xp(stats).full(2 * stats.shape[1], np.nan, stats.dtype))
        raise
    return _abn_backward(saved, grad_output, out=out, combine_sums=_make_combine_sums(exchange),
                         family=family)
