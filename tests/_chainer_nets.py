"""The small network the Chainer link tests train: conv -> norm -> conv -> norm -> residual add
-> pool -> linear, with the normalization layer as a parameter."""
import numpy as np

import cupy_abn.chainer as C   # first: it makes Chainer importable under NumPy 2
import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402
import chainer.links as L  # noqa: E402


class Net(chainer.Chain):
    """conv -> norm -> conv -> norm -> residual add -> pool -> linear (``norm(size)`` makes a
    normalization layer, with its activation)."""

    def __init__(self, norm, width=4, dtype=np.float64):
        super().__init__()
        init = chainer.initializers.Normal(0.3, dtype=dtype)
        with self.init_scope():
            self.c1 = L.Convolution2D(3, width, 3, pad=1, initialW=init, initial_bias=init)
            self.n1 = norm(width)
            self.c2 = L.Convolution2D(width, width, 3, pad=1, initialW=init,
                                      initial_bias=init)
            self.n2 = norm(width)
            self.fc = L.Linear(width, 5, initialW=init, initial_bias=init)

    def forward(self, x):
        h = self.n1(self.c1(x))
        h = h + self.n2(self.c2(h))
        return self.fc(F.average_pooling_2d(h, h.shape[2:]))


def abn_norm(kind, dtype, slope):
    """A ``norm`` for :class:`Net`: cupy-abn's ``ABN`` (``kind == "abn"``) or ``InPlaceABN`` in
    mode ``kind``, with a leaky_relu of slope ``slope``."""
    if kind == "abn":
        return lambda s: C.ABN(s, dtype=dtype, activation_param=slope)
    return lambda s: C.InPlaceABN(s, dtype=dtype, activation_param=slope, mode=kind)
