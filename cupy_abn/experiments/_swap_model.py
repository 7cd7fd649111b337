"""The two networks of the activation-swap experiment, their training and their evaluation.

Both are the demo's ResNet (:class:`cupy_abn.demo.network.ResNet`) on 1-channel 8x8 digits,
built from the same seed (same convolution and classifier weights), with one of two
normalization+activation layers:

* ``"relu"``: ``ABN`` in standard mode with ``relu`` (BatchNormalization + ReLU);
* ``"leaky_relu"``: ``InPlaceABN`` with ``leaky_relu(0.01)``.

Validation swaps every layer's activation with ``set_activation``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Tuple

import numpy as np

from .. import chainer as abn  # first: the NumPy 2 compatibility step before Chainer
import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402

from ..demo import memory, network  # noqa: E402

ACTIVATIONS = ("relu", "leaky_relu")
SLOPE = 0.01
EPS = 2e-5
LABELS = {"relu": "BatchNorm + ReLU (ABN, standard mode)",
          "leaky_relu": "InPlaceABN + leaky ReLU (0.01)"}
SHORT = {"relu": "BN + ReLU\n(ABN)", "leaky_relu": "InPlaceABN\n+ leaky ReLU"}


@dataclass(frozen=True)
class Settings:
    """What every run shares."""
    epochs: int = 12
    batch: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    widths: Tuple[int, ...] = (16, 32, 64)
    blocks: int = 1


def _norm(activation: str) -> Callable[[int, str], chainer.Link]:
    """``make(size, _)`` for the layers of one network (the demo's activation name is
    replaced by this network's)."""
    if activation == "relu":
        return lambda size, _: abn.ABN(size, activation="relu")
    # InPlaceABN's scale is |gamma| + eps: start at 1, as the standard layers do.
    return lambda size, _: abn.InPlaceABN(size, eps=EPS, activation="leaky_relu",
                                          activation_param=SLOPE, initial_gamma=1.0 - EPS)


def build(activation: str, seed: int, settings: Settings, gpu: bool) -> network.ResNet:
    """The network trained with ``activation``; the same seed gives both the same weights."""
    np.random.seed(seed)   # Chainer's initializers draw from NumPy's global generator
    net = network.ResNet(_norm(activation), settings.widths, settings.blocks, classes=10,
                         in_channels=1)
    if gpu:
        net.to_device("@cupy:0")
    return net


def norm_layers(net: chainer.Link) -> Iterator[chainer.Link]:
    """The normalization+activation layers of ``net``."""
    return (link for link in net.links() if isinstance(link, (abn.ABN, abn.InPlaceABN)))


def set_activation(net: chainer.Link, activation: str) -> None:
    """Give every normalization layer of ``net`` ``activation`` (leaky: slope 0.01)."""
    for layer in norm_layers(net):
        layer.set_activation(activation, SLOPE)


def _step(net, opt, x, t) -> chainer.Variable:
    loss = F.softmax_cross_entropy(net(x), t)
    network.backward_update(net, opt, loss)
    return loss


def train(net: network.ResNet, x: np.ndarray, t: np.ndarray, seed: int, settings: Settings,
          on_step: Callable[[float], None], measure_step: int = 1) -> Dict[str, int]:
    """MomentumSGD with weight decay over ``settings.epochs`` shuffled epochs.

    Step ``measure_step`` (after the optimizer's first update has made its state) is measured
    with :func:`cupy_abn.demo.memory.step_memory`.

    Returns
    -------
    dict
        ``kept_for_backward_bytes`` and ``peak_step_bytes`` of the measured step.
    """
    opt = chainer.optimizers.MomentumSGD(lr=settings.lr)
    opt.setup(net)
    opt.add_hook(chainer.optimizer_hooks.WeightDecay(settings.weight_decay))
    xp, gpu = net.xp, net.xp is not np
    rs = np.random.RandomState(1000 + seed)
    steps = settings.epochs * (len(t) // settings.batch)
    mem: Dict[str, int] = {}
    step = 0
    for epoch in range(settings.epochs):
        # Cosine learning-rate decay per epoch; whole batches only (no 1-sample batch).
        opt.lr = settings.lr * 0.5 * (1 + np.cos(np.pi * epoch / settings.epochs))
        order = rs.permutation(len(t))
        for i in range(len(t) // settings.batch):
            idx = order[i * settings.batch:(i + 1) * settings.batch]
            xb, tb = xp.asarray(x[idx]), xp.asarray(t[idx])
            if step == measure_step:
                loss, kept, peak = memory.step_memory(
                    lambda: F.softmax_cross_entropy(net(xb), tb),
                    lambda loss: network.backward_update(net, opt, loss), gpu)
                mem = {"kept_for_backward_bytes": kept, "peak_step_bytes": peak}
            else:
                loss = _step(net, opt, xb, tb)
            on_step(float(loss.array))
            step += 1
    assert step == steps
    return mem


def evaluate(net: network.ResNet, x: np.ndarray, t: np.ndarray,
             batch: int = 256) -> Dict[str, float]:
    """Top-1 and top-3 accuracy (%) with the running statistics."""
    xp = net.xp
    hits1 = hits3 = 0
    with chainer.using_config("train", False):   # stays in place (no no_backprop_mode)
        for i in range(0, len(t), batch):
            logits = chainer.backend.CpuDevice().send(net(xp.asarray(x[i:i + batch])).array)
            top3 = np.argsort(-logits, axis=1)[:, :3]
            tb = t[i:i + batch]
            hits1 += int((top3[:, 0] == tb).sum())
            hits3 += int((top3 == tb[:, None]).any(axis=1).sum())
    return {"top1": 100.0 * hits1 / len(t), "top3": 100.0 * hits3 / len(t)}
