"""InPlaceABNSync: InPlace-ABN whose batch statistics are those of all ranks of a ChainerMN
communicator (SPEC.md, "Several processes"; the exchange is in :mod:`cupy_abn.sync`).

In place like the other in-place modes: in training the output is written into the input's array.
Evaluation exchanges nothing.  Gradient convention, as ChainerMN's
``MultiNodeBatchNormalization``: in training, ``gamma.grad`` and ``beta.grad`` are the sums over
the global batch divided by ``comm.size``, identical on every rank, so that the multi-node
optimizer (which averages gradients over ranks) applies the gradient of the mean of the ranks'
losses, like every other parameter; ``x.grad`` is this rank's slice of the global gradient.
"""
from __future__ import annotations

from typing import Any, Optional

import chainer

from ..sync import sync_abn_backward, sync_abn_forward
from . import _graph
from .links import _ABNLink


class InPlaceABNSyncFunction(chainer.FunctionNode):
    """``(x, gamma, beta) -> z``, collectively over ``comm``; ``z`` is ``x``'s array in place."""

    def __init__(self, comm, running_mean=None, running_var=None, *, training=True,
                 decay=0.9, eps=2e-5, activation="leaky_relu", activation_param=0.01,
                 mode="inplace", copy_input=False):
        self.comm = comm
        self.copy_input = copy_input
        self.running_mean, self.running_var = running_mean, running_var
        self.kw = dict(training=training, decay=decay, eps=eps, activation=activation,
                       activation_param=activation_param, mode=mode)
        self.saved = None

    def forward(self, inputs):
        x, gamma, beta = inputs
        if self.copy_input:   # x must not be overwritten (cupy_abn.chainer._graph)
            xp = chainer.backend.get_array_module(x)
            x = xp.array(x, order="C", copy=True)
        # Mark what the graph must not overwrite: x (standard mode keeps it) or z (in place).
        if self.kw["mode"] == "standard":
            self.retain_inputs((0,))
        else:
            self.retain_outputs((0,))
        z, self.saved = sync_abn_forward(x, gamma, beta, self.running_mean, self.running_var,
                                         self.comm, **self.kw)
        return z,

    def backward(self, indexes, grad_outputs):
        gz, = grad_outputs
        saved, self.saved = self.saved, None
        xp = chainer.backend.get_array_module(saved.z)
        gz = xp.zeros_like(saved.z) if gz is None else gz.array
        dx, dg, db = sync_abn_backward(saved, gz, self.comm)
        if saved.training:
            size = self.comm.size
            dg, db = dg / dg.dtype.type(size), db / db.dtype.type(size)
        return chainer.Variable(dx), chainer.Variable(dg), chainer.Variable(db)


def inplace_abn_sync(x, gamma, beta, comm, running_mean=None, running_var=None, *,
                     decay=0.9, eps=2e-5, activation="leaky_relu", activation_param=0.01,
                     mode="inplace", training=None, name=None):
    """Functional InPlaceABNSync; ``training`` defaults to ``chainer.config.train``.

    Every rank of ``comm`` calls it for the same layer with its slice of the global batch
    (its batch may be empty).  Running statistics, when given, are updated in place (training)
    or used (evaluation, which needs them and exchanges nothing).  ``name`` names the layer
    in the error raised when the overwritten x is used again.
    """
    if training is None:
        training = bool(chainer.config.train)
    copy = mode != "standard" and _graph.needs_copy(x, stacklevel=3)
    fn = InPlaceABNSyncFunction(comm, running_mean, running_var, training=training,
                                decay=decay, eps=eps, activation=activation,
                                activation_param=activation_param, mode=mode,
                                copy_input=copy)
    z = fn.apply((x, gamma, beta))[0]
    if mode != "standard" and not copy:
        _graph.invalidate(x, _graph.layer_name("InPlaceABNSync", name))
    return z


class InPlaceABNSync(_ABNLink):
    """Synchronized InPlace-ABN layer: :class:`cupy_abn.chainer.InPlaceABN` (L.BatchNormalization's
    parameters and persistents, ``finetune``, an activation, a mode) whose batch statistics are
    those of all ranks of the ChainerMN communicator ``comm``.

    Every rank calls it (collectively) with its slice of the global batch.  In evaluation mode
    (``chainer.config.train`` False) nothing is exchanged.
    """
    _mode = "inplace"

    def __init__(self, size: Optional[Any], comm, decay: float = 0.9, eps: float = 2e-5,
                 dtype=None, use_gamma: bool = True, use_beta: bool = True,
                 initial_gamma=None, initial_beta=None, activation: str = "leaky_relu",
                 activation_param: float = 0.01, mode: str = "inplace", *,
                 initial_avg_mean=None, initial_avg_var=None):
        super().__init__(size, decay, eps, dtype, use_gamma, use_beta, initial_gamma,
                         initial_beta, activation, activation_param, mode,
                         initial_avg_mean=initial_avg_mean, initial_avg_var=initial_avg_var)
        self.comm = comm

    def _apply(self, x, gamma, beta, mean, var, **kw) -> chainer.Variable:
        return inplace_abn_sync(x, gamma, beta, self.comm, mean, var, mode=self.mode,
                                name=self.name, **kw)
