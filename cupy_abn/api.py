"""The array API: validate once, then run the backend's stages in order.

The pipeline is the same for every backend: statistics -> channel math -> normalize+activate
in the forward; reductions -> channel math -> elementwise gradient in the backward.  A
synchronized layer (:mod:`cupy_abn.sync`) calls the private :func:`_abn_forward` /
:func:`_abn_backward` with ``combine_moments`` / ``combine_sums`` hooks that merge the
per-channel partials across processes between those stages; nothing else differs.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np

from . import _axis
from . import _finite
from . import _geometry as G
from . import _validation as V
from ._dispatch import backend_for, device_scope
from ._precision import accum_dtype
from ._state import SavedState, t_kind

Array = Any  # numpy.ndarray, cupy.ndarray or a pyopencl array


def abn_forward(x: Array, gamma: Array, beta: Array, running_mean: Optional[Array] = None,
                running_var: Optional[Array] = None, *, training: bool = True,
                decay: float = 0.9, eps: float = 2e-5, activation: str = "leaky_relu",
                activation_param: float = 0.01, mode: str = "inplace", axis: Any = None,
                check_finite: Optional[bool] = None, out: Optional[Array] = None,
                residual: Optional[Array] = None) -> Tuple[Array, SavedState]:
    """Batch normalization fused with an activation, in place in the in-place modes; with
    ``residual``, ``z = phi(BN(x) + residual)`` (a post-activation residual block's add).

    Parameters
    ----------
    x : array, shape (N, C, ...)
        Input with channels on axis 1; float16, float32 or float64.  In the modes
        ``"inplace"`` and ``"inplace_v1"`` it is overwritten with the output, unless
        ``out`` is given.
    gamma, beta : array, shape (C,)
        Scale and shift, of any float dtype (beta in gamma's); the computation accumulates in
        the wider of x's accumulation type (float32 for float16 x) and gamma's dtype.  In the
        in-place modes the scale applied is ``|gamma| + eps``.
    running_mean, running_var : array, shape (C,), optional
        Running statistics, updated in place in training; required when ``training=False``.
        Any of gamma, beta and these may be strided views (a contiguous copy is computed
        with; the running statistics are written back through the view).
    training : bool
        Normalize with batch statistics (True) or with the running statistics (False).
    decay : float
        Running statistics: ``avg = decay * avg + (1 - decay) * batch`` (variance unbiased).
    eps : float
        Added to the variance (and to ``|gamma|`` in the in-place modes); must be > 0.
    activation : {"identity", "leaky_relu", "elu", "relu"}
        ``"relu"`` is not invertible and only allowed with ``mode="standard"``.
    activation_param : float
        Slope of ``leaky_relu`` or alpha of ``elu`` (> 0 in the in-place modes).
    mode : {"inplace", "inplace_v1", "standard"}
        INPLACE-ABN II (default), INPLACE-ABN I, or plain ABN, which keeps ``x``.
    axis : int or tuple of int, optional
        The axes to normalize over, as Chainer's ``axis``; the parameters then have the shape
        of the other axes.  Default: every axis but 1 (channels on axis 1).  Consecutive kept
        axes (``(0, 1, 2)`` for channels-last NHWC, ``(0,)``) are a reshape of x; others go
        through a copy with the kept axes first.
    check_finite : bool, optional
        In training, raise :class:`cupy_abn.NonFiniteError` before anything is written
        when x holds NaN or Inf or a float16 output would overflow (default: the global
        switch, :func:`cupy_abn.set_check_finite`, off).  No extra pass over x: the statistics
        reduction records it; the cost is one blocking host copy of a few values per
        channel (it drains the stream), and it cannot run during a CUDA graph capture
        (:class:`cupy_abn.GraphCaptureError`).  ELU outputs saturated at
        -alpha (y below about -8.3 for float16 outputs, -16.2 for float32, -16.1 for
        float64), which the in-place backward cannot invert, are caught by the backward's
        check (:func:`abn_backward`).
    out : array, optional
        Where to write the output instead (same shape, dtype and device as x; C-contiguous
        unless ``axis`` needs a copy; it must not overlap x unless it is x).  x is then only
        read, and is left untouched in every mode: in a pre-activation residual block the
        residual stream survives with no copy.  The in-place modes' backward still needs the
        output only: x is not kept.
    residual : array, optional
        r, added after the normalization and before the activation:
        ``z = phi((x - mean) * scale + beta + r)``, in one pass (no y written and read back).
        Same shape, dtype and device as x; it must not overlap the output (x in the
        in-place modes, or ``out``).  Its gradient is returned by :func:`abn_backward`.  The
        in-place modes' backward rebuilds ``y = phi^-1(z) - r`` from it, so **r must be left
        unchanged until the backward has run** (in a residual block it is the block's input,
        which the network keeps anyway); it is kept in ``saved``, not copied (a strided r is
        read through a contiguous copy, which is kept instead).  Plain ABN keeps x and does
        not need r in the backward.

    Returns
    -------
    z : array
        The output: ``out`` when given, else ``x`` itself in the in-place modes.
    saved : SavedState
        What :func:`abn_backward` needs: ``z`` and per-channel vectors only (plus ``x`` in
        ``"standard"`` mode, and ``residual`` in the in-place modes).

    Raises
    ------
    TypeError
        For an argument of the wrong type, before anything is written.
    ValueError
        For any other bad input (the message names the argument), before anything is
        written.
    NonFiniteError
        With the finiteness check on (``check_finite``), before anything is written.
    """
    return _abn_forward(x, gamma, beta, running_mean, running_var, training=training,
                        decay=decay, eps=eps, activation=activation,
                        activation_param=activation_param, mode=mode, axis=axis,
                        check_finite=check_finite, out=out, residual=residual)


def _abn_forward(x: Array, gamma: Array, beta: Array, running_mean: Optional[Array] = None,
                 running_var: Optional[Array] = None, *, training: bool = True,
                 decay: float = 0.9, eps: float = 2e-5, activation: str = "leaky_relu",
                 activation_param: float = 0.01, mode: str = "inplace", axis: Any = None,
                 check_finite: Optional[bool] = None, out: Optional[Array] = None,
                 residual: Optional[Array] = None,
                 combine_moments: Optional[Callable] = None,
                 global_count: Optional[int] = None,
                 route: Optional[V.Route] = None) -> Tuple[Array, SavedState]:
    """:func:`abn_forward` with the synchronized layer's hooks.

    ``combine_moments``: ``(count, mean, m2, shift) -> (count, mean, m2, shift)``, called on
    the per-channel partial moments before they are merged (the exchange across processes).
    ``global_count``: the elements per channel over all processes.  ``route``: the
    validation's result when the caller has checked the arguments already.

    One pass: the arguments checked and x's layout computed once, x's device entered before
    anything is allocated, x and the parameters viewed (or copied) as the stages take them,
    the stages run, the results written back.
    """
    if out is x:
        out = None
    if route is None:
        route = V.check_forward(x, gamma, beta, running_mean, running_var, training=training,
                                decay=decay, eps=eps, activation=activation,
                                activation_param=activation_param, mode=mode, axis=axis,
                                count=global_count, out=out, residual=residual)
    fam, lay = route
    be = backend_for(x, fam)
    standard = mode == "standard"
    into = out if out is not None else (None if standard else x)
    with device_scope(x, fam):   # every copy and output below lands on x's device
        k = G.channels(x.shape) if lay is None else lay.ncs[1]
        (g, b, rm, rv), copies = _axis.params_in(be, k, (gamma, beta, running_mean,
                                                         running_var))
        # Written in place only where the validation required x C-contiguous.
        x3 = _axis.to_ncs(be, lay, x, copy_strided=into is not x)
        r3 = None if residual is None else _axis.to_ncs(be, lay, residual)
        z3, saved = _forward(be, x3, g, b, rm, rv, training, decay, eps, activation,
                             float(activation_param), mode, combine_moments, global_count,
                             _finite.resolve(check_finite), _axis.out_ncs(lay, out), r3)
        if training:
            _axis.write_back(be, copies, (running_mean, running_var))
        z = _axis.from_ncs(be, lay, z3, into=into)
    saved.layout = lay
    return z, saved


def _forward(be, x, gamma, beta, running_mean, running_var, training, decay, eps, activation,
             activation_param, mode, combine_moments, global_count, check=False, out=None,
             residual=None):
    """The stages of :func:`abn_forward` on checked arguments, contiguous x (N, C, ...),
    residual (or None) and (C,) parameters; the output goes into ``out`` when given, else
    into x in the in-place modes and a new array in standard mode."""
    abs_gamma = mode != "standard"
    acc = accum_dtype(x.dtype, gamma.dtype)
    size = x.size
    m = global_count if global_count is not None else G.count(x.shape)
    if out is not None:
        z = out
    else:
        z = be.empty_like(x) if mode == "standard" else x
    if training and combine_moments is None and not check:   # 1-2 launches on a GPU
        stats = be.normalize_train(x, z, gamma, beta, running_mean, running_var, eps=eps,
                                   decay=decay, abs_gamma=abs_gamma, activation=activation,
                                   param=activation_param, acc=acc, residual=residual)
    elif training:   # the partials cross processes (or are checked) before the finish
        if check:
            _finite.refuse_capture(x)
        if size:   # a kernel that fails to build must fail before anything is written
            be.prepare_normalize(x, z, acc, activation, acc, residual)
        partials = (be.moments(x, acc, extrema=True) if check else be.moments(x, acc)) \
            if size else _empty_moments(be, x, acc)
        partials, extrema = partials[:4], partials[4:]
        if combine_moments is not None:
            partials = combine_moments(*partials)
        if check:   # before anything is written (x, the running statistics)
            # The statistics alone (no running update) bound the output; one host copy of
            # them, the partials and the extrema decides every check.
            bounds = be.channel_train(*partials, gamma, beta, None, None, eps=eps,
                                      decay=decay, abs_gamma=abs_gamma) if size else None
            half = np.dtype(z.dtype) == np.float16
            # r is read once more, by the check only: its moments show NaN or Inf, its
            # extrema widen the output's bound
            res = be.moments(residual, acc, extrema=half) if residual is not None and size \
                else None
            _finite.check_forward(partials[1], partials[2], bounds, extrema if half else (),
                                  eps=eps, activation=activation, param=activation_param,
                                  residual=None if res is None else
                                  (res[1], res[2]) + (tuple(res[4:]) if half else ()))
        stats = be.channel_train(*partials, gamma, beta, running_mean,
                                 running_var, eps=eps, decay=decay, abs_gamma=abs_gamma)
        if size:
            be.normalize_activate(x, z, stats, activation, activation_param, residual)
    elif size:   # one launch on a GPU
        stats = be.normalize_eval(x, z, gamma, beta, running_mean, running_var, eps=eps,
                                  abs_gamma=abs_gamma, activation=activation,
                                  param=activation_param, acc=acc, residual=residual)
    else:
        stats = be.channel_eval(gamma, beta, running_mean, running_var, eps=eps,
                                abs_gamma=abs_gamma, acc=acc)
    saved = SavedState(mode=mode, activation=activation, activation_param=activation_param,
                       training=training, m=float(m), z=z,
                       x=x if mode == "standard" else None, stats=stats, gamma=gamma,
                       param_dtype=np.dtype(gamma.dtype), has_residual=residual is not None,
                       residual=None if mode == "standard" else residual)
    return z, saved


def _empty_moments(be, x, acc):
    """Partials of an empty local batch: zero count, contributing nothing to the merge."""
    c = G.channels(x.shape)
    return (be.zeros((c, 1), acc), be.zeros((c, 1), acc), be.zeros((c, 1), acc),
            be.zeros((c,), acc))


def abn_backward(saved: SavedState, grad_output: Array, *, out: Optional[Array] = None,
                 check_finite: Optional[bool] = None) -> Tuple[Array, ...]:
    """Gradients of :func:`abn_forward` rebuilt from its output.

    Parameters
    ----------
    saved : SavedState
        The second value returned by :func:`abn_forward`.
    grad_output : array
        dL/dz, same shape and dtype as the forward output.
    out : array, optional
        Where to write dL/dx; may be ``grad_output`` itself to save memory.
    check_finite : bool, optional
        Raise :class:`cupy_abn.NonFiniteError` before dx is written when grad_output (or the
        saved output) holds NaN or Inf (default: :func:`cupy_abn.set_check_finite`).  In the
        in-place modes' training backward with ELU, also raise
        :class:`cupy_abn.SaturatedActivationError` (a NonFiniteError, naming each channel and
        its count) when outputs sit at the asymptote -alpha, from which y cannot be rebuilt
        and the gradient would be silently wrong: y below about -8.3 for float16 outputs
        (z rounds to -alpha), -16.2 for float32, and -16.1 for float64 (where the inverse's
        clamp at z / alpha = -1 + 1e-7 binds first).  The reduction that reads z anyway
        counts them: no extra pass.  Nothing is written before either error, not even
        ``out=grad_output``.

    Returns
    -------
    grad_x, grad_gamma, grad_beta : arrays
        ``grad_x`` like ``x``; ``grad_gamma`` and ``grad_beta`` in the dtype of gamma.
    grad_residual : array
        Only when the forward had a ``residual``: ``dz * phi'(z)``, like x (a fourth value).
    """
    return _abn_backward(saved, grad_output, out=out, check_finite=check_finite)


def _abn_backward(saved: SavedState, grad_output: Array, *, out: Optional[Array] = None,
                  check_finite: Optional[bool] = None,
                  combine_sums: Optional[Callable] = None,
                  family: Optional[str] = None) -> Tuple[Array, ...]:
    """:func:`abn_backward` with the synchronized layer's hook ``combine_sums``:
    ``(sum_dy, sum_dy_t) -> (sum_dy, sum_dy_t)``, called on the per-channel partial sums.
    ``family``: the validation's result when the caller has checked the arguments already.

    One pass, as the forward: checked once, the device of the saved output entered before
    anything is allocated, grad_output (and ``out``) viewed or copied as the stages take them,
    the stages run, dx moved back into x's shape.
    """
    if family is None:
        family = V.check_backward(saved, grad_output, out)
    z, lay = saved.z, saved.layout
    be = backend_for(z, family)
    with device_scope(z, family):   # every copy and output below lands on z's device
        dz3 = _axis.to_ncs(be, lay, grad_output)
        dres3 = be.empty_like(z) if saved.has_residual else None
        dx3, dgamma, dbeta = _backward(be, saved, z, dz3, _axis.out_ncs(lay, out),
                                       combine_sums, _finite.resolve(check_finite), dres3)
        dx = _axis.from_ncs(be, lay, dx3, into=out)
        dres = None if dres3 is None else _axis.from_ncs(be, lay, dres3)
    # The backends return dgamma/dbeta in gamma's dtype already: no copy then.
    dtype = saved.param_dtype
    dgamma, dbeta = _as_dtype(dgamma, dtype), _as_dtype(dbeta, dtype)
    if lay is not None and len(lay.param_shape) != 1:
        dgamma, dbeta = dgamma.reshape(lay.param_shape), dbeta.reshape(lay.param_shape)
    return (dx, dgamma, dbeta) if dres is None else (dx, dgamma, dbeta, dres)


def _backward(be, saved, z, grad_output, out, combine_sums, check=False, dres=None):
    """The stages of :func:`abn_backward` on checked arguments and contiguous grad_output;
    dL/dr goes into ``dres`` after a residual add."""
    t = t_kind(saved.mode, saved.training)
    size = z.size
    abs_gamma = saved.mode != "standard"
    if size:
        terms = be.backward_terms(z, grad_output, saved.x, saved.stats, saved.activation,
                                  saved.activation_param, t,
                                  saved.residual if saved.has_residual else None)
    if check:
        _finite.refuse_capture(z)
    dx = be.empty_like(z) if out is None else out
    if size and combine_sums is None and not check:   # 1-2 launches on a GPU
        dgamma, dbeta = be.backward_local(terms, saved.gamma, dx, m=saved.m,
                                          training=saved.training, abs_gamma=abs_gamma,
                                          dres=dres)
    else:   # the partial sums cross processes between the reduction and its finish
        # The check also counts ELU outputs whose y is lost, in the same read of z.
        saturated = bool(size) and check and _finite.saturation_checked(
            saved.activation, t, saved.training)
        counts = None
        if not size:
            sums = _empty_moments(be, z, saved.stats.dtype)[1:3]
        elif saturated:
            partials = be.grad_sums(terms, saturated=True)
            sums, counts = partials[:2], partials[2]
        else:
            sums = be.grad_sums(terms)
        if combine_sums is not None:
            sums = combine_sums(*sums)
        if check:   # before dx is written; one host copy
            _finite.check_backward(*sums, counts, activation=saved.activation,
                                   param=saved.activation_param, dtype=z.dtype)
        dgamma, dbeta, coef = be.channel_backward(*sums, saved.stats, saved.gamma, m=saved.m,
                                                  t=t, training=saved.training,
                                                  abs_gamma=abs_gamma)
        if size:
            be.grad_input(terms, coef, dx, dres)
    return dx, dgamma, dbeta


def _as_dtype(a: Array, dtype) -> Array:
    """``a`` itself when it has ``dtype``, else a cast copy (numpy, cupy and pyopencl alike:
    pyopencl's ``astype`` has no ``copy=False``)."""
    return a if a.dtype == dtype else a.astype(dtype)
