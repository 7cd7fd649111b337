"""InPlaceABNSync: InPlace-ABN whose batch statistics are those of all ranks of a ChainerMN
communicator (docs/math.md, "Several processes"; the exchange is in :mod:`cupy_abn.sync`).

In place like the other in-place modes: in training the output is written into the input's array.
Evaluation exchanges nothing.  Gradient convention, as ChainerMN's
``MultiNodeBatchNormalization``: in training, ``gamma.grad`` and ``beta.grad`` are the sums over
the global batch divided by ``comm.size``, identical on every rank, so that the multi-node
optimizer (which averages gradients over ranks) applies the gradient of the mean of the ranks'
losses, like every other parameter; ``x.grad`` is this rank's slice of the global gradient.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import chainer

from . import _graph
from .functions import ABNFunction
from .links import _ABNLink


def inplace_abn_sync(x, gamma, beta, comm, running_mean=None, running_var=None, *,
                     decay=0.9, eps=2e-5, activation="leaky_relu", activation_param=0.01,
                     mode="inplace", training=None, name=None, residual=None, out=None):
    """Functional InPlaceABNSync; ``training`` defaults to ``chainer.config.train``.

    Every rank of ``comm`` calls it for the same layer with its slice of the global batch
    (its batch may be empty).  Running statistics, when given, are updated in place (training)
    or used (evaluation, which needs them and exchanges nothing).  ``name`` names the layer
    in the error raised when the overwritten x is used again.  ``residual``: this rank's r,
    added before the activation, and ``out``, as in :func:`cupy_abn.chainer.inplace_abn`.
    """
    if training is None:
        training = bool(chainer.config.train)
    copy = mode != "standard" and out is None and _graph.needs_copy(x, stacklevel=3)
    fn = ABNFunction(running_mean, running_var, training=training, decay=decay, eps=eps,
                     activation=activation, activation_param=activation_param, mode=mode,
                     copy_input=copy, comm=comm, residual=residual is not None, out=out)
    z, = fn.apply((x, gamma, beta) + ((residual,) if residual is not None else ()))
    if mode != "standard" and not copy and out is None:
        _graph.invalidate(x, _graph.layer_name("InPlaceABNSync", name))
    return z


def _communication_backend(comm, name: str) -> str:
    """``MultiNodeBatchNormalization``'s ``communication_backend`` rules: "mpi", "nccl" (a
    ``PureNcclCommunicator`` only) or "auto".  The statistics travel through
    :mod:`cupy_abn.sync`'s exchange (the communicator's allreduce) either way."""
    if name not in ("mpi", "nccl", "auto"):
        raise ValueError(f"InPlaceABNSync does not support communication_backend={name!r} "
                         f"(expected 'mpi', 'nccl' or 'auto')")
    nccl = type(comm).__name__ == "PureNcclCommunicator"
    if name == "nccl" and not nccl:
        raise ValueError(f"communication_backend='nccl' needs a PureNcclCommunicator, got "
                         f"{type(comm).__name__}")
    return name if name != "auto" else ("nccl" if nccl else "mpi")


class InPlaceABNSync(_ABNLink):
    """Synchronized InPlace-ABN layer: :class:`cupy_abn.chainer.InPlaceABN` (L.BatchNormalization's
    parameters and persistents, ``finetune``, an activation, a mode) whose batch statistics are
    those of all ranks of the ChainerMN communicator ``comm``.

    Every rank calls it (collectively) with its slice of the global batch.  In evaluation mode
    (``chainer.config.train`` False) nothing is exchanged.
    """
    _mode = "inplace"
    _size_or_axis = False   # channels on axis 1: size=None infers them at the first call

    def __init__(self, size: Optional[Any], comm, decay: float = 0.9, eps: float = 2e-5,
                 dtype=None, use_gamma: bool = True, use_beta: bool = True,
                 initial_gamma=None, initial_beta=None, activation: str = "leaky_relu",
                 activation_param: float = 0.01, mode: str = "inplace", *,
                 initial_avg_mean=None, initial_avg_var=None,
                 communication_backend: str = "auto"):
        backend = _communication_backend(comm, communication_backend)
        super().__init__(size, decay, eps, dtype, use_gamma, use_beta, initial_gamma,
                         initial_beta, activation, activation_param, mode,
                         initial_avg_mean=initial_avg_mean, initial_avg_var=initial_avg_var)
        self.comm = comm
        self.communication_backend = backend

    def _apply(self, x, gamma, beta, mean, var, **kw) -> chainer.Variable:
        return inplace_abn_sync(x, gamma, beta, self.comm, mean, var, mode=self.mode,
                                name=self.name, **kw)

    def __deepcopy__(self, memo):
        """A deep copy that shares the communicator (as ``MultiNodeBatchNormalization``): a
        communicator is a handle on the processes, not state to duplicate."""
        memo[id(self.comm)] = self.comm
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            object.__setattr__(new, key, copy.deepcopy(value, memo))
        return new
