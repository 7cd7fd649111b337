"""A small ResNet with a pluggable normalization+activation layer, and synthetic data.

Both variants are built from the same seed, so convolutions and the classifier start with the
same weights; the in-place layers start with ``gamma = 1 - eps`` so that their scale
``|gamma| + eps`` equals the standard layers' ``gamma = 1``.  The two networks then compute the
same function and their losses track each other up to rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Tuple

import numpy as np

from .. import chainer as abn  # first: the NumPy 2 compatibility step before Chainer
import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402
import chainer.links as L  # noqa: E402

KINDS = ("standard", "inplace")
LABELS = {"standard": "BatchNormalization + leaky_relu", "inplace": "InPlaceABN"}


# Residual blocks: "add" sums the block's input after the second activation; "post" adds it
# before (the post-activation ResNet block, phi(BN(conv(h)) + x)), which InPlaceABN fuses
# (``residual=``) and the baseline computes as BatchNormalization, add, leaky_relu.
BLOCKS = ("add", "post")


class BNLeakyReLU(chainer.Chain):
    """The baseline: ``L.BatchNormalization``, the residual when given, then ``F.leaky_relu``
    (or nothing)."""

    def __init__(self, size: int, activation: str, slope: float, dtype):
        super().__init__()
        self.activation, self.slope = activation, slope
        with self.init_scope():
            self.bn = L.BatchNormalization(size, dtype=dtype)

    def forward(self, x, residual=None):
        h = self.bn(x)
        if residual is not None:
            h = h + residual
        return F.leaky_relu(h, self.slope) if self.activation == "leaky_relu" else h


def norm_factory(kind: str, slope: float, dtype) -> Callable[[int, str], chainer.Link]:
    """``make(size, activation)`` for the layers of one network kind."""
    if kind == "standard":
        return lambda size, act: BNLeakyReLU(size, act, slope, dtype)
    if kind == "inplace":
        def make(size, act):
            eps = 2e-5
            return abn.InPlaceABN(size, eps=eps, dtype=dtype, activation=act,
                                  activation_param=slope, initial_gamma=1.0 - eps)
        return make
    raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")


class Block(chainer.Chain):
    """conv -> norm+leaky_relu -> conv -> norm+leaky_relu -> + input (``post=False``), or
    conv -> norm+leaky_relu -> conv -> leaky_relu(norm + input) (``post=True``).

    Both convolutions are followed by a fused layer; the result is the next block's input.
    """

    def __init__(self, width: int, norm, init, post: bool = False):
        super().__init__()
        self.post = post
        with self.init_scope():
            self.conv1 = L.Convolution2D(width, width, 3, pad=1, nobias=True, initialW=init)
            self.norm1 = norm(width, "leaky_relu")
            self.conv2 = L.Convolution2D(width, width, 3, pad=1, nobias=True, initialW=init)
            self.norm2 = norm(width, "leaky_relu")

    def forward(self, x):
        h = self.conv2(self.norm1(self.conv1(x)))
        return self.norm2(h, residual=x) if self.post else self.norm2(h) + x


class ResNet(chainer.Chain):
    """A stem, then per stage a strided conv + norm and ``blocks`` residual blocks.

    Normalization layers: ``len(widths) * (1 + 2 * blocks)``; the default (3 stages of 2
    blocks) has 15.  Every norm layer reads a convolution's output, never the network input,
    so the in-place layers overwrite their input without a fallback copy.
    """

    def __init__(self, norm, widths: Sequence[int] = (16, 32, 64), blocks: int = 2,
                 classes: int = 10, in_channels: int = 3, dtype=np.float32,
                 block: str = "add"):
        super().__init__()
        init = chainer.initializers.HeNormal(dtype=dtype)
        self.n_stages = len(widths)
        with self.init_scope():
            prev = in_channels
            for s, width in enumerate(widths):
                stride = 1 if s == 0 else 2
                setattr(self, f"down{s}", L.Convolution2D(prev, width, 3, stride=stride, pad=1,
                                                          nobias=True, initialW=init))
                setattr(self, f"dnorm{s}", norm(width, "leaky_relu"))
                setattr(self, f"stage{s}", chainer.ChainList(
                    *[Block(width, norm, init, post=block == "post") for _ in range(blocks)]))
                prev = width
            self.fc = L.Linear(prev, classes, initialW=init,
                                initial_bias=chainer.initializers.Zero(dtype))

    def forward(self, x):
        h = x
        for s in range(self.n_stages):
            h = getattr(self, f"dnorm{s}")(getattr(self, f"down{s}")(h))
            for block in getattr(self, f"stage{s}"):
                h = block(h)
        return self.fc(F.average(h, axis=(2, 3)))


@dataclass(frozen=True)
class Config:
    """What both networks and the data share."""
    widths: Tuple[int, ...] = (16, 32, 64)
    blocks: int = 2
    classes: int = 10
    size: int = 16          # images are size x size, 3 channels
    slope: float = 0.01     # leaky_relu
    dtype: str = "float32"
    seed: int = 0
    block: str = "add"      # BLOCKS: the residual add after or before the activation


def build(kind: str, cfg: Config) -> ResNet:
    """The network of one kind; the same seed gives both kinds the same weights."""
    dtype = np.dtype(cfg.dtype)
    np.random.seed(cfg.seed)   # Chainer's initializers draw from NumPy's global generator
    if cfg.block not in BLOCKS:
        raise ValueError(f"block: expected one of {BLOCKS}, got {cfg.block!r}")
    return ResNet(norm_factory(kind, cfg.slope, dtype), cfg.widths, cfg.blocks, cfg.classes,
                  dtype=dtype, block=cfg.block)


def norm_layers(net: ResNet) -> int:
    """How many normalization+activation layers ``net`` has."""
    return sum(isinstance(link, (BNLeakyReLU, abn.InPlaceABN)) for link in net.links())


class SyntheticData:
    """Images of ``classes`` noisy templates: learnable, reproducible, made on the fly."""

    def __init__(self, cfg: Config, noise: float = 2.0):
        rs = np.random.RandomState(cfg.seed + 1)
        self.cfg, self.noise = cfg, noise
        self.templates = rs.standard_normal((cfg.classes, 3, cfg.size, cfg.size))

    def batch(self, step: int, batch: int, xp=np) -> Tuple[object, object]:
        """Batch number ``step``: the same for every network and every run."""
        rs = np.random.RandomState(10_000 + step)
        t = rs.randint(0, self.cfg.classes, batch).astype(np.int32)
        x = self.templates[t] + self.noise * rs.standard_normal(self.templates[t].shape)
        return xp.asarray(x.astype(self.cfg.dtype)), xp.asarray(t)


def forward(net: ResNet, x, t) -> chainer.Variable:
    """The training loss of one batch (the graph kept for backward hangs off it)."""
    return F.softmax_cross_entropy(net(x), t)


def backward_update(net: ResNet, optimizer, loss: chainer.Variable) -> None:
    net.cleargrads()
    loss.backward()
    optimizer.update()


def train_step(net: ResNet, optimizer, x, t) -> float:
    """Forward, backward and update; returns the loss."""
    loss = forward(net, x, t)
    backward_update(net, optimizer, loss)
    return float(loss.array)
