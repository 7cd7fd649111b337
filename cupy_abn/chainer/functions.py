"""Chainer FunctionNodes over the array API: ABN (standard) and InPlace-ABN (I and II).

The node calls :func:`cupy_abn.abn_forward` / :func:`cupy_abn.abn_backward`, so NumPy arrays
run on the NumPy backend and CuPy arrays on the CUDA kernels.  In the in-place modes the output
is x's array; the node keeps the :class:`cupy_abn.SavedState` (the output and per-channel
vectors) and nothing of x's size besides.  Gradients are first order only.
"""
from __future__ import annotations

from typing import Any, Optional

import chainer
import numpy as np
from chainer.utils import type_check

from .. import api
from . import _graph

_DOUBLE = ("{label} supports first-order gradients only (its backward is rebuilt from the "
           "output and is not itself differentiable); call backward() without "
           "enable_double_backprop=True")


class ABNFunction(chainer.FunctionNode):
    """``(x, gamma, beta) -> z``: batch normalization fused with an activation.

    Parameters
    ----------
    running_mean, running_var : array or None
        Updated in place in training when given; used in evaluation.
    training : bool
        Batch statistics (True) or running statistics (False).
    mode : {"standard", "inplace", "inplace_v1"}
        In the in-place modes the output is written into x's array (or into a copy of it when
        ``copy_input``).
    copy_input : bool
        Work on a copy of x (the caller found that x must not be overwritten).
    decay, eps, activation, activation_param
        As in :func:`cupy_abn.abn_forward`.
    """

    def __init__(self, running_mean=None, running_var=None, *, training: bool = True,
                 decay: float = 0.9, eps: float = 2e-5, activation: str = "leaky_relu",
                 activation_param: float = 0.01, mode: str = "inplace",
                 copy_input: bool = False):
        self.running_mean, self.running_var = running_mean, running_var
        self.kw = dict(training=training, decay=decay, eps=eps, activation=activation,
                       activation_param=activation_param, mode=mode)
        self.copy_input = copy_input
        self.saved = None

    @property
    def label(self) -> str:
        return {"standard": "ABN", "inplace": "InPlaceABN",
                "inplace_v1": "InPlaceABNv1"}[self.kw["mode"]]

    def check_type_forward(self, in_types):
        type_check._argname(in_types, ("x", "gamma", "beta"))
        x, gamma, beta = in_types
        type_check.expect(x.dtype.kind == "f", x.ndim >= 2, gamma.ndim == 1,
                          gamma.shape[0] == x.shape[1], beta.shape == gamma.shape)

    def forward(self, inputs):
        x, gamma, beta = inputs
        in_place = self.kw["mode"] != "standard"
        if in_place and self.copy_input:
            xp = chainer.backend.get_array_module(x)
            x = xp.array(x, order="C", copy=True)
        z, self.saved = api.abn_forward(x, gamma, beta, self.running_mean, self.running_var,
                                        **self.kw)
        # Mark what the graph must not overwrite: x (standard mode keeps it) or z (in place).
        if in_place:
            self.retain_outputs((0,))
        else:
            self.retain_inputs((0,))
        return z,

    def backward(self, indexes, grad_outputs):
        if chainer.config.enable_backprop:
            raise NotImplementedError(_DOUBLE.format(label=self.label))
        gz, = grad_outputs
        z = self.saved.z
        xp = chainer.backend.get_array_module(z)
        gz = xp.zeros_like(z) if gz is None else gz.array
        dx, dgamma, dbeta = api.abn_backward(self.saved, gz)
        return tuple(chainer.Variable(g) for g in (dx, dgamma, dbeta))


def _apply(x, gamma, beta, running_mean, running_var, *, mode: str, training: Optional[bool],
           decay: float, eps: float, activation: str, activation_param: float):
    if training is None:
        training = bool(chainer.config.train)
    in_place = mode != "standard"
    copy = in_place and _graph.needs_copy(x, stacklevel=4)
    node = ABNFunction(running_mean, running_var, training=training, decay=decay, eps=eps,
                       activation=activation, activation_param=activation_param, mode=mode,
                       copy_input=copy)
    z, = node.apply((x, gamma, beta))
    if in_place and not copy:
        _graph.invalidate(x)
    return z


def abn(x: Any, gamma: Any, beta: Any, running_mean: Any = None, running_var: Any = None, *,
        training: Optional[bool] = None, decay: float = 0.9, eps: float = 2e-5,
        activation: str = "leaky_relu", activation_param: float = 0.01) -> chainer.Variable:
    """Batch normalization + activation in one node (plain ABN: x is kept, any activation).

    Parameters
    ----------
    x : Variable or array, shape (N, C, ...)
    gamma, beta : Variable or array, shape (C,)
    running_mean, running_var : array, optional
        Updated in place in training; required in evaluation.
    training : bool, optional
        Defaults to ``chainer.config.train``.
    decay, eps, activation, activation_param
        As in :func:`cupy_abn.abn_forward`.

    Returns
    -------
    Variable
    """
    return _apply(x, gamma, beta, running_mean, running_var, mode="standard",
                  training=training, decay=decay, eps=eps, activation=activation,
                  activation_param=activation_param)


def inplace_abn(x: Any, gamma: Any, beta: Any, running_mean: Any = None,
                running_var: Any = None, *, training: Optional[bool] = None,
                decay: float = 0.9, eps: float = 2e-5, activation: str = "leaky_relu",
                activation_param: float = 0.01, mode: str = "inplace") -> chainer.Variable:
    """InPlace-ABN: the output is written into x's array (INPLACE-ABN II by default).

    The scale applied is ``|gamma| + eps``.  x is overwritten only when it is the output of
    another node that nobody retains; otherwise the node works on a copy and warns
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

    Returns
    -------
    Variable
        Shares its array with x (or with x's copy).
    """
    if mode not in ("inplace", "inplace_v1"):
        raise ValueError(f"mode: expected 'inplace' or 'inplace_v1', got {mode!r} "
                         "(use cupy_abn.chainer.abn for the standard mode)")
    return _apply(x, gamma, beta, running_mean, running_var, mode=mode, training=training,
                  decay=decay, eps=eps, activation=activation,
                  activation_param=activation_param)


def inplace_abn_v1(x: Any, gamma: Any, beta: Any, running_mean: Any = None,
                   running_var: Any = None, **kwargs) -> chainer.Variable:
    """:func:`inplace_abn` with ``mode="inplace_v1"`` (INPLACE-ABN I)."""
    return inplace_abn(x, gamma, beta, running_mean, running_var, mode="inplace_v1", **kwargs)
