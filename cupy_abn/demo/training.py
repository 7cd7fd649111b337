"""One network of the demo with its optimizer on its device: plain and measured steps."""
from __future__ import annotations

from typing import Tuple

from . import memory, network


class Trainer:
    """A network of one kind (``network.KINDS``), MomentumSGD, on the CPU or GPU 0."""

    def __init__(self, kind: str, cfg: network.Config, lr: float, gpu: bool):
        import chainer
        self.kind, self.gpu = kind, gpu
        self.net = network.build(kind, cfg)
        if gpu:
            self.net.to_device("@cupy:0")
        self.opt = chainer.optimizers.MomentumSGD(lr=lr)
        self.opt.setup(self.net)
        self.xp = self.net.xp

    def step(self, x, t) -> float:
        """A training step; returns the loss (a float: waits for the GPU)."""
        return network.train_step(self.net, self.opt, x, t)

    def measured_step(self, x, t) -> Tuple[float, int, int]:
        """A training step and its memory: (loss, bytes kept for backward, peak bytes)."""
        loss, kept, peak = memory.step_memory(
            lambda: network.forward(self.net, x, t),
            lambda loss: network.backward_update(self.net, self.opt, loss), self.gpu)
        return float(loss.array), kept, peak

    def sync(self) -> None:
        if self.gpu:
            import cupy
            cupy.cuda.Device().synchronize()
