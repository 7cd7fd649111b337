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

import chainer
import numpy as np

from ..sync import sync_abn_backward, sync_abn_forward
from . import _graph


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
                     mode="inplace", training=None):
    """Functional InPlaceABNSync; ``training`` defaults to ``chainer.config.train``.

    Every rank of ``comm`` calls it for the same layer with its slice of the global batch
    (its batch may be empty).  Running statistics, when given, are updated in place (training)
    or used (evaluation, which needs them and exchanges nothing).
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
        _graph.invalidate(x)
    return z


class InPlaceABNSync(chainer.Link):
    """Synchronized InPlace-ABN layer: L.BatchNormalization's parameters and persistents
    (``gamma``, ``beta``, ``avg_mean``, ``avg_var``, ``N``, ``decay``, ``eps``), an activation,
    a mode, and the ChainerMN communicator ``comm`` over whose ranks the statistics are taken.

    Every rank calls it (collectively) with its slice of the global batch; ``finetune=True``
    accumulates population statistics with ``decay = 1 - 1/N`` as L.BatchNormalization does.
    In evaluation mode (``chainer.config.train`` False) nothing is exchanged.
    """

    def __init__(self, size, comm, decay=0.9, eps=2e-5, dtype=None, initial_gamma=None,
                 initial_beta=None, activation="leaky_relu", activation_param=0.01,
                 mode="inplace"):
        super().__init__()
        self.comm = comm
        self.decay, self.eps = decay, eps
        self.activation, self.activation_param, self.mode = activation, activation_param, mode
        dtype = chainer.get_dtype(dtype, map_mixed16=np.float32)
        self.avg_mean = np.zeros(size, dtype)
        self.register_persistent("avg_mean")
        self.avg_var = np.ones(size, dtype)
        self.register_persistent("avg_var")
        self.N = 0
        self.register_persistent("N")
        with self.init_scope():
            g = chainer.initializers._get_initializer(1 if initial_gamma is None
                                                      else initial_gamma)
            b = chainer.initializers._get_initializer(0 if initial_beta is None
                                                      else initial_beta)
            g.dtype = b.dtype = dtype
            self.gamma = chainer.Parameter(g, size)
            self.beta = chainer.Parameter(b, size)

    def forward(self, x, finetune=False):
        training = bool(chainer.config.train)
        decay = self.decay
        if training and finetune:
            self.N += 1
            decay = 1.0 - 1.0 / self.N
        return inplace_abn_sync(x, self.gamma, self.beta, self.comm, self.avg_mean,
                                self.avg_var, decay=decay, eps=self.eps,
                                activation=self.activation,
                                activation_param=self.activation_param, mode=self.mode,
                                training=training)

    def start_finetuning(self):
        """Resets the population count, as L.BatchNormalization.start_finetuning."""
        self.N = 0
