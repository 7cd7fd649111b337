"""ResNeXt-101 (32x4d) in Chainer, with the normalization + activation as a parameter: the
network of the InPlace-ABN paper's memory claim (Rota Bulò et al., CVPR 2018, Table 1 and
Sec. 4: "up to 50% less memory" at ImageNet scale).

Three forms of the same network (``FORMS``):

    bn                L.BatchNormalization + F.leaky_relu everywhere; a bottleneck ends with
                      BN, the shortcut added, then leaky_relu
    inplace           InPlaceABN (leaky_relu) everywhere; a bottleneck ends with InPlaceABN
                      (identity), the add, then F.leaky_relu (as Mapillary's ResNeXt does)
    inplace_residual  InPlaceABN everywhere; a bottleneck ends with
                      InPlaceABN(conv3(h), residual=shortcut): the add fused in place

Stem: 7x7/2 convolution (64), norm + activation, 3x3/2 max pooling; stages of 3, 4, 23 and 3
bottlenecks (1x1, grouped 3x3 with 32 groups of 4 * 2^s channels, 1x1 to 256 * 2^s), the first
of each stage with a projection shortcut (1x1 convolution + norm without activation); average
pooling and a 1000-way classifier.  ``on_layer(name)`` is called after every layer, in order,
so that a caller can read the memory alive at each point.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

import cupy_abn.chainer as abn   # first: the NumPy 2 compatibility step before Chainer
import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402
import chainer.links as L  # noqa: E402

FORMS = ("bn", "inplace", "inplace_residual")
LABELS = {"bn": "BN + leaky_relu", "inplace": "InPlaceABN",
          "inplace_residual": "InPlaceABN, residual add fused"}
DEPTHS = (3, 4, 23, 3)
GROUPS, GROUP_WIDTH = 32, 4
SLOPE = 0.01
Hook = Optional[Callable[[str], None]]


class _BNAct(chainer.Chain):
    def __init__(self, c: int, activation: str):
        super().__init__()
        self.activation = activation
        with self.init_scope():
            self.bn = L.BatchNormalization(c)

    def forward(self, x, residual=None):
        h = self.bn(x)
        if residual is not None:
            h = h + residual
        return F.leaky_relu(h, SLOPE) if self.activation == "leaky_relu" else h


def norm(form: str, c: int, activation: str = "leaky_relu") -> chainer.Link:
    """The normalization + activation layer of ``form``."""
    if form == "bn":
        return _BNAct(c, activation)
    return abn.InPlaceABN(c, activation=activation, activation_param=SLOPE)


class Bottleneck(chainer.Chain):
    def __init__(self, form: str, cin: int, width: int, cout: int, stride: int):
        super().__init__()
        self.form = form
        init = chainer.initializers.HeNormal()
        with self.init_scope():
            self.conv1 = L.Convolution2D(cin, width, 1, nobias=True, initialW=init)
            self.norm1 = norm(form, width)
            self.conv2 = L.Convolution2D(width, width, 3, stride=stride, pad=1, nobias=True,
                                         groups=GROUPS, initialW=init)
            self.norm2 = norm(form, width)
            self.conv3 = L.Convolution2D(width, cout, 1, nobias=True, initialW=init)
            # the last norm: its activation comes after the add unless the add is fused
            self.norm3 = norm(form, cout, "leaky_relu" if form == "inplace_residual"
                              else "identity")
            self.projected = stride != 1 or cin != cout
            if self.projected:
                self.proj = L.Convolution2D(cin, cout, 1, stride=stride, nobias=True,
                                            initialW=init)
                self.proj_norm = norm(form, cout, "identity")

    def forward(self, x, on_layer: Hook = None, name: str = ""):
        mark = on_layer or (lambda _: None)
        h = self.norm1(self.conv1(x))
        mark(f"{name}.conv1+norm1")
        h = self.norm2(self.conv2(h))
        mark(f"{name}.conv2+norm2")
        shortcut = self.proj_norm(self.proj(x)) if self.projected else x
        if self.projected:
            mark(f"{name}.proj+norm")
        if self.form == "inplace_residual":
            out = self.norm3(self.conv3(h), residual=shortcut)
        elif self.form == "bn":
            out = self.norm3(self.conv3(h), residual=shortcut)
            out = F.leaky_relu(out, SLOPE)
        else:
            out = F.leaky_relu(self.norm3(self.conv3(h)) + shortcut, SLOPE)
        mark(f"{name}.conv3+norm3+add")
        return out


class ResNeXt101(chainer.Chain):
    def __init__(self, form: str, classes: int = 1000, depths=DEPTHS):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form: expected one of {FORMS}, got {form!r}")
        init = chainer.initializers.HeNormal()
        self.depths = tuple(depths)
        with self.init_scope():
            self.stem = L.Convolution2D(3, 64, 7, stride=2, pad=3, nobias=True, initialW=init)
            self.stem_norm = norm(form, 64)
            blocks = []
            cin = 64
            for s, depth in enumerate(self.depths):
                width, cout = GROUPS * GROUP_WIDTH * 2 ** s, 256 * 2 ** s
                for b in range(depth):
                    blocks.append(Bottleneck(form, cin, width, cout,
                                             2 if (b == 0 and s > 0) else 1))
                    cin = cout
            self.blocks = chainer.ChainList(*blocks)
            self.fc = L.Linear(cin, classes, initialW=init)

    def block_names(self):
        names = []
        for s, depth in enumerate(self.depths):
            names += [f"stage{s + 1}.block{b + 1}" for b in range(depth)]
        return names

    def forward(self, x, on_layer: Hook = None):
        mark = on_layer or (lambda _: None)
        h = self.stem_norm(self.stem(x))
        h = F.max_pooling_2d(h, 3, stride=2, pad=1, cover_all=False)
        mark("stem")
        for block, name in zip(self.blocks, self.block_names()):
            h = block(h, on_layer, name)
        out = self.fc(F.average(h, axis=(2, 3)))
        mark("head")
        return out


def build(form: str, seed: int = 0, **kw) -> ResNeXt101:
    np.random.seed(seed)   # Chainer's initializers draw from NumPy's global generator
    return ResNeXt101(form, **kw)
