"""Chainer FunctionNodes over the array API: ABN (standard) and InPlace-ABN (I and II).

The node calls :func:`cupy_abn.abn_forward` / :func:`cupy_abn.abn_backward`, so NumPy arrays
run on the NumPy backend and CuPy arrays on the CUDA kernels.  In the in-place modes the output
is x's array; the node keeps the :class:`cupy_abn.SavedState` (the output and per-channel
vectors) and nothing of x's size besides.

Standard mode is a drop-in for ``F.batch_normalization`` / ``F.fixed_batch_normalization``:
in evaluation the running statistics are inputs of the node (gradients with respect to them
when they are Variables), and its backward is differentiable (double backprop) when Chainer
asks for it.  The in-place modes are first-order only: their backward is rebuilt from the
output, which no longer determines the graph of x.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import chainer
import chainer.functions as F
import numpy as np
from chainer.utils import type_check

from .. import _geometry as geometry
from .. import _validation, api
from ..sync import sync_abn_backward, sync_abn_forward
from .._precision import accum_dtype
from . import _graph

_DOUBLE = ("{label} supports first-order gradients only (its backward is rebuilt from the "
           "output, or exchanges statistics across ranks, and is not itself differentiable); "
           "call backward() without enable_double_backprop=True, or use mode='standard' "
           "without a communicator (cupy_abn.chainer.abn / ABN)")


class ABNFunction(chainer.FunctionNode):
    """``(x, gamma, beta[, mean, var][, r]) -> z``: batch normalization fused with an
    activation, and with a residual add ``z = phi(BN(x) + r)`` when ``residual``.

    The inputs are ``(x, gamma, beta)``, plus ``(mean, var)`` in standard-mode evaluation
    (see :attr:`takes_stats`), where the statistics are differentiable inputs as in
    ``F.fixed_batch_normalization``, plus r last with ``residual``.  In the in-place modes
    the node retains r (the backward rebuilds y from z and r), so that no later in-place
    layer overwrites it.

    Parameters
    ----------
    running_mean, running_var : array or None
        Updated in place in training when given; used in evaluation unless they are inputs.
    training : bool
        Batch statistics (True) or running statistics (False).
    mode : {"standard", "inplace", "inplace_v1"}
        In the in-place modes the output is written into x's array (or into a new buffer when
        ``copy_input``).
    copy_input : bool
        Leave x as it is and write the output into a new buffer (the caller found that x
        must not be overwritten).
    decay, eps, activation, activation_param
        As in :func:`cupy_abn.abn_forward`.
    axis : int or tuple of int, optional
        The axes normalized over, as Chainer's ``axis`` (default: 0 and the axes after
        gamma's, which start at axis 1).
    comm : ChainerMN communicator, optional
        Synchronized batch statistics over the ranks of ``comm`` in training
        (:mod:`cupy_abn.sync`), with ``MultiNodeBatchNormalization``'s gradient convention:
        ``gamma.grad`` and ``beta.grad`` are the global sums divided by ``comm.size``.  Such a
        node is first order in every mode, and evaluation exchanges nothing.
    residual : bool
        The last input is r, added before the activation (its gradient is ``dz * phi'``).
    out : array, optional
        Where the output is written (x is then only read, in every mode), as
        :func:`cupy_abn.abn_forward`'s ``out``.
    """

    def __init__(self, running_mean=None, running_var=None, *, training: bool = True,
                 decay: float = 0.9, eps: float = 2e-5, activation: str = "leaky_relu",
                 activation_param: float = 0.01, mode: str = "inplace",
                 copy_input: bool = False, comm: Any = None, axis: Any = None,
                 residual: bool = False, out: Any = None):
        self.running_mean, self.running_var = running_mean, running_var
        self.kw: Dict[str, Any] = dict(
            training=training, decay=decay, eps=eps, activation=activation,
            activation_param=activation_param, mode=mode)
        self.axis = (axis,) if isinstance(axis, int) else axis   # Chainer's axis
        self.copy_input = copy_input
        self.comm = comm
        self.residual = residual
        self.out = out
        self.saved = None
        self.x_layout = None   # x's Chainer memory layout, set by forward

    @property
    def label(self) -> str:
        name = {"standard": "ABN", "inplace": "InPlaceABN",
                "inplace_v1": "InPlaceABNv1"}[self.kw["mode"]]
        return name if self.comm is None else name + "Sync"

    @property
    def takes_stats(self) -> bool:
        """Whether mean and var are inputs 3 and 4 (standard mode, evaluation, no comm)."""
        return self.kw["mode"] == "standard" and not self.kw["training"] and self.comm is None

    def check_type_forward(self, in_types):
        names = (("x", "gamma", "beta") + (("mean", "var") if self.takes_stats else ())
                 + (("residual",) if self.residual else ()))
        type_check._argname(in_types, names)
        if self.residual:
            r = in_types[-1]
            type_check.expect(r.dtype == in_types[0].dtype, r.shape == in_types[0].shape)
            in_types = in_types[:-1]
        x, gamma = in_types[:2]
        type_check.expect(x.dtype.kind == "f", gamma.dtype.kind == "f")
        if self.axis is None:
            # Rank first, in its own expect: a 1-D x must fail here, not index x.shape[1].
            type_check.expect(x.ndim >= gamma.ndim + 1, gamma.ndim >= 1)
        else:
            type_check.expect(x.ndim >= len(self.axis), x.ndim > max(self.axis))
        x_ndim = type_check.eval(x.ndim)
        axis = geometry.chainer_axis(x_ndim, type_check.eval(gamma.ndim), self.axis)
        kept = [i for i in range(x_ndim) if i not in (axis or geometry.reduced_axes(x_ndim))]
        type_check.expect(gamma.ndim == len(kept))
        for j, i in enumerate(kept):
            type_check.expect(x.shape[i] == gamma.shape[j])
        for other in in_types[2:]:
            type_check.expect(other.shape == gamma.shape)

    def check_layout_forward(self, inputs):
        """x may carry a Chainer memory layout (``CUDNN_CHANNEL_LAST_X``: the array is NHWC,
        the Variable's shape NCHW); the parameters and statistics may not."""
        bad = [i for i, v in enumerate(inputs[1:], 1) if v.layout is not None]
        if bad:
            raise RuntimeError(f"{self.label}: only x may have a memory layout, got "
                               f"{[str(inputs[i].layout) for i in bad]} for inputs {bad}")

    def _raw_axis(self, x, gamma):
        """The reduced axes of the array of x (None: the default layout).  With a memory
        layout the array's axes are a permutation of the Variable's, as in
        ``F.batch_normalization``: NHWC reduces over (0, 1, 2)."""
        axis = geometry.chainer_axis(x.ndim, gamma.ndim, self.axis)
        layout = self.input_layouts[0] if self.input_layouts else None
        if layout is None:
            return axis
        t = chainer.memory_layouts._get_layout_transpose_axes(x.ndim, None, layout, True)
        logical = axis if axis is not None else geometry.reduced_axes(x.ndim)
        return tuple(sorted(t[i] for i in logical)) if t is not None else axis

    def forward(self, inputs):
        x, gamma, beta = inputs[:3]
        r = inputs[-1] if self.residual else None
        mean, var = inputs[3:5] if self.takes_stats else (self.running_mean,
                                                          self.running_var)
        in_place = self.kw["mode"] != "standard"
        out, self.out = self.out, None   # the node keeps no reference to it
        if out is None and in_place and self.copy_input:   # a new buffer: x is only read
            out = chainer.backend.get_array_module(x).empty(x.shape, x.dtype)
        axis = self._raw_axis(x, gamma)
        self.x_layout = self.input_layouts[0] if self.input_layouts else None
        self.output_layouts = (self.x_layout,)
        if self.comm is not None and axis is not None:
            raise ValueError(f"axis: the synchronized layer normalizes over every axis but 1, "
                             f"got axis={self.axis} for x of ndim {x.ndim}")
        if self.comm is None:
            z, self.saved = api.abn_forward(x, gamma, beta, mean, var, axis=axis, out=out,
                                            residual=r, **self.kw)
        else:
            z, self.saved = sync_abn_forward(x, gamma, beta, mean, var, self.comm, out=out,
                                             residual=r, **self.kw)
        # Mark what the graph must not overwrite: x (standard mode keeps it) or z (in place),
        # and r (the in-place backward reads it).  Standard mode also keeps the (per-channel)
        # parameters for its differentiable backward.
        if in_place:
            self.retain_outputs((0,))
            if self.residual:
                self.retain_inputs((len(inputs) - 1,))
        else:
            self.retain_inputs(tuple(range(len(inputs))))
        return z,

    def backward(self, indexes, grad_outputs):
        if chainer.config.enable_backprop:
            if self.kw["mode"] != "standard" or self.comm is not None:
                raise NotImplementedError(_DOUBLE.format(label=self.label))
            if self.x_layout is not None:
                raise NotImplementedError(f"{self.label}: double backward of x with a memory "
                                          f"layout ({self.x_layout}) is not supported")
            return _differentiable_backward(self, grad_outputs[0])
        gz, = grad_outputs
        z = self.saved.z
        xp = chainer.backend.get_array_module(z)
        gz = xp.zeros(self.saved.shape, z.dtype) if gz is None else gz.array
        if self.comm is None:
            dx, dgamma, dbeta, *dr = api.abn_backward(self.saved, gz)
        else:
            dx, dgamma, dbeta, *dr = sync_abn_backward(self.saved, gz, self.comm)
            if self.saved.training:   # MultiNodeBatchNormalization's convention
                size = dgamma.dtype.type(self.comm.size)
                dgamma, dbeta = dgamma / size, dbeta / size
        grads = [dx, dgamma, dbeta]
        if self.takes_stats:
            grads += _stats_grads(self.saved, self.get_retained_inputs(), dgamma, dbeta,
                                  self.kw["eps"])
        out = [chainer.Variable(g) for g in grads[1:]]
        if dr:
            out.append(chainer.Variable(dr[0], layout=self.x_layout))
        return (chainer.Variable(dx, layout=self.x_layout),) + tuple(out)


def _stats_grads(saved, retained, dgamma, dbeta, eps):
    """dL/dmean and dL/dvar of the evaluation forward from dL/dgamma and dL/dbeta.

    With ``y = g * (x - mean) * invstd + beta`` and ``invstd = (var + eps)^-1/2``:
    ``dL/dmean = -dL/dbeta * g * invstd`` and ``dL/dvar = -g * dL/dg * invstd^2 / 2``
    (``dL/dg = sum dy * xhat``), per channel; no pass over x is needed.
    """
    _, gamma, _, mean, var = (v.array for v in retained[:5])
    xp = chainer.backend.get_array_module(gamma)
    acc = np.promote_types(saved.stats.dtype, var.dtype)
    g, v = gamma.astype(acc), var.astype(acc)
    inv_var = 1 / (v + acc.type(eps))
    dmean = -dbeta.astype(acc) * g * xp.sqrt(inv_var)
    dvar = acc.type(-0.5) * g * dgamma.astype(acc) * inv_var
    return [dmean.astype(mean.dtype, copy=False), dvar.astype(var.dtype, copy=False)]


def _activation_grad(y, gz, activation: str, param: float):
    """``gz * phi'(y)`` as Chainer functions of ``y`` and ``gz`` (differentiable)."""
    if activation == "identity":
        return gz
    xp = chainer.backend.get_array_module(y.array)
    if activation == "relu":
        return F.where(y.array > 0, gz, xp.zeros_like(gz.array))
    up = y.array >= 0   # the side of the kink; its derivative is 0 almost everywhere
    if activation == "leaky_relu":
        return F.where(up, gz, gz * param)
    # elu: phi'(y) = alpha * exp(y) below 0; exp only of the clamped y (no overflow above 0).
    below = F.where(up, xp.zeros_like(y.array), y)
    return F.where(up, gz, gz * (F.exp(below) * param))


def _differentiable_backward(node: ABNFunction, gz):
    """The standard-mode gradients built from Chainer functions, so that they can be
    differentiated again (``enable_double_backprop=True``): the forward is recomputed from
    the retained x and parameters, and the textbook gradients are expressed on it.
    """
    kw = node.kw
    retained = node.get_retained_inputs()
    x0, gamma0 = retained[:2]
    acc = accum_dtype(x0.dtype, gamma0.dtype)

    def cast(v):
        return v if v.dtype == acc else F.cast(v, acc)

    x, gamma, beta = (cast(v) for v in retained[:3])
    if gz is None:
        xp = chainer.backend.get_array_module(x0.array)
        gz = chainer.Variable(xp.zeros(x0.shape, x0.dtype))
    gz = cast(gz)
    axes = (geometry.chainer_axis(x.ndim, gamma.ndim, node.axis)
            or geometry.reduced_axes(x.ndim))
    pshape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))

    def bc(v):   # gamma's shape -> broadcast against x
        return F.broadcast_to(F.reshape(v, pshape), x.shape)

    eps = float(kw["eps"])
    if kw["training"]:
        m = x.size // max(1, gamma.size)
        mean = F.sum(x, axis=axes) / m
        xc = x - bc(mean)
        var = F.sum(xc * xc, axis=axes) / m
    else:
        mean, var = (cast(v) for v in retained[3:5])
        xc = x - bc(mean)
    invstd = F.rsqrt(var + eps)
    xhat = xc * bc(invstd)
    y = xhat * bc(gamma) + bc(beta)
    if node.residual:
        y = y + cast(retained[-1])
    dy = _activation_grad(y, gz, kw["activation"], kw["activation_param"])
    sum_dy = F.sum(dy, axis=axes)
    sum_dy_xhat = F.sum(dy * xhat, axis=axes)
    scale = bc(gamma * invstd)
    if kw["training"]:
        gx = scale * (dy - bc(sum_dy) / m - xhat * bc(sum_dy_xhat) / m)
    else:
        gx = dy * scale
    grads = [gx, sum_dy_xhat, sum_dy]
    if not kw["training"]:
        grads += [-sum_dy * gamma * invstd, -0.5 * gamma * sum_dy_xhat * invstd * invstd]
    if node.residual:
        grads.append(dy)
    return tuple(g if g.dtype == r.dtype else F.cast(g, r.dtype)
                 for g, r in zip(grads, retained))


def _apply(x, gamma, beta, running_mean, running_var, *, mode: str, training: Optional[bool],
           decay: float, eps: float, activation: str, activation_param: float,
           name: Optional[str] = None, axis: Any = None, residual: Any = None,
           out: Any = None):
    if training is None:
        training = bool(chainer.config.train)
    in_place = mode != "standard"
    # With ``out`` x is only read: nothing to protect, nothing to invalidate.
    copy = in_place and out is None and (_graph.needs_copy(x, stacklevel=4)
                                         or _shares(residual, x))
    stats_inputs = (mode == "standard" and not training and running_mean is not None
                    and running_var is not None)
    if not stats_inputs:
        # Updated in place (training) or read (in-place evaluation): arrays, not graph nodes.
        running_mean, running_var = (v.array if isinstance(v, chainer.Variable) else v
                                     for v in (running_mean, running_var))
    node = ABNFunction(None if stats_inputs else running_mean,
                       None if stats_inputs else running_var, training=training,
                       decay=decay, eps=eps, activation=activation,
                       activation_param=activation_param, mode=mode, copy_input=copy,
                       axis=axis, residual=residual is not None, out=out)
    inputs = ((x, gamma, beta) + ((running_mean, running_var) if stats_inputs else ())
              + ((residual,) if residual is not None else ()))
    z, = node.apply(inputs)
    if in_place and not copy and out is None:
        _graph.invalidate(x, _graph.layer_name("InPlaceABN", name))
    return z


def _shares(r: Any, x: Any) -> bool:
    """Whether the residual's array overlaps x's (then z goes into a new buffer)."""
    if r is None:
        return False
    raw = [v.raw_array if isinstance(v, chainer.Variable) else v for v in (r, x)]
    return _validation.may_overlap(*raw)


def abn(x: Any, gamma: Any, beta: Any, running_mean: Any = None, running_var: Any = None, *,
        training: Optional[bool] = None, decay: float = 0.9, eps: float = 2e-5,
        activation: str = "leaky_relu", activation_param: float = 0.01,
        axis: Any = None, residual: Any = None, out: Any = None) -> chainer.Variable:
    """Batch normalization + activation in one node (plain ABN: x is kept, any activation).

    Parameters
    ----------
    x : Variable or array, shape (N, C, ...)
    gamma, beta : Variable or array, shape (C,)
    running_mean, running_var : array or Variable, optional
        Training: arrays updated in place (``F.batch_normalization``'s ``running_mean`` /
        ``running_var``).  Evaluation: required, the statistics normalized with; when they
        are Variables they receive gradients (``F.fixed_batch_normalization``'s
        ``mean`` / ``var``).
    training : bool, optional
        Defaults to ``chainer.config.train``.
    decay, eps, activation, activation_param
        As in :func:`cupy_abn.abn_forward`.
    axis : int or tuple of int, optional
        The axes normalized over, as ``F.batch_normalization``'s ``axis`` (default: 0 and the
        axes after gamma's, which start at axis 1); gamma has the shape of the other axes.
    residual : Variable or array, optional
        r like x, added before the activation: ``phi(BN(x) + r)`` in one pass (a
        post-activation residual block's add); it receives a gradient.
    out : array, optional
        Where the output is written (x's shape, dtype and device, C-contiguous), e.g. a
        buffer reused across steps; the returned Variable's array is it.

    Returns
    -------
    Variable
        Differentiable twice (``enable_double_backprop=True``), like Chainer's batch
        normalization.
    """
    return _apply(x, gamma, beta, running_mean, running_var, mode="standard",
                  training=training, decay=decay, eps=eps, activation=activation,
                  activation_param=activation_param, axis=axis, residual=residual,
                  out=out)


def inplace_abn(x: Any, gamma: Any, beta: Any, running_mean: Any = None,
                running_var: Any = None, *, training: Optional[bool] = None,
                decay: float = 0.9, eps: float = 2e-5, activation: str = "leaky_relu",
                activation_param: float = 0.01, mode: str = "inplace",
                name: Optional[str] = None, axis: Any = None,
                residual: Any = None, out: Any = None) -> chainer.Variable:
    """InPlace-ABN: the output is written into x's array (INPLACE-ABN II by default).

    The scale applied is ``|gamma| + eps``.  x is overwritten only when it is the output of
    another node that nobody retains; otherwise the node writes a new buffer and warns
    (:class:`InPlaceFallbackWarning`).  After an in-place call the input Variable must not be
    used again (its array is the output now; using it raises).

    Parameters
    ----------
    x : Variable, shape (N, C, ...)
    gamma, beta : Variable or array, shape (C,)
    running_mean, running_var : array, optional
        Updated in place in training; required in evaluation.
    training : bool, optional
        Defaults to ``chainer.config.train``.
    mode : {"inplace", "inplace_v1"}
        INPLACE-ABN II (backward from the output) or I (backward from xhat rebuilt from it).
    decay, eps, activation, activation_param
        As in :func:`cupy_abn.abn_forward`; the activation must be invertible.
    name : str, optional
        The layer's name, for the error raised when the overwritten x is used again (the
        links pass theirs).
    axis : int or tuple of int, optional
        As in :func:`abn`.
    residual : Variable or array, optional
        r like x: ``z = phi(BN(x) + r)`` written into x's array.  r must not share x's
        memory; the node retains it (its backward rebuilds y = phi^-1(z) - r), so a later
        in-place layer fed r writes a new buffer instead of overwriting it.
    out : array, optional
        Write the output there and leave x untouched (a pre-activation residual block, whose
        input survives): no copy of x, no warning, and x stays usable; the backward still
        needs the output only.

    Returns
    -------
    Variable
        Shares its array with x (or with x's copy).

    Raises
    ------
    RuntimeError
        Later, when the overwritten input Variable is fed to another node or its array is
        read; the message names the layer and the remedy.
    """
    _validation.check_mode(mode, _validation.IN_PLACE_MODES,
                           "use cupy_abn.chainer.abn for the standard mode")
    return _apply(x, gamma, beta, running_mean, running_var, mode=mode, training=training,
                  decay=decay, eps=eps, activation=activation,
                  activation_param=activation_param, name=name, axis=axis,
                  residual=residual, out=out)


def inplace_abn_v1(x: Any, gamma: Any, beta: Any, running_mean: Any = None,
                   running_var: Any = None, **kwargs) -> chainer.Variable:
    """:func:`inplace_abn` with ``mode="inplace_v1"`` (INPLACE-ABN I)."""
    return inplace_abn(x, gamma, beta, running_mean, running_var, mode="inplace_v1", **kwargs)
