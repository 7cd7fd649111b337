"""Timing and copy bandwidth, on a GPU (CUDA events) or the CPU (perf_counter)."""
from __future__ import annotations

import time
from typing import Callable, List

import numpy as np


class Clock:
    """``seconds(fn)``: median time of one call of ``fn`` after warm-up calls."""

    def __init__(self, xp, warmup: int, repeat: int):
        self.xp, self.warmup, self.repeat = xp, warmup, repeat
        self.gpu = xp.__name__ == "cupy"

    def seconds(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        times: List[float] = []
        if self.gpu:
            cuda = self.xp.cuda
            events = [(cuda.Event(), cuda.Event()) for _ in range(self.repeat)]
            cuda.Device().synchronize()
            for start, end in events:
                start.record()
                fn()
                end.record()
            events[-1][1].synchronize()
            times = [cuda.get_elapsed_time(s, e) / 1e3 for s, e in events]
        else:
            for _ in range(self.repeat):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return float(np.median(times))


def copy_bandwidth(clock: Clock, nbytes: int) -> float:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    xp = clock.xp
    src = xp.ones(nbytes // 4, xp.float32)
    dst = xp.empty_like(src)
    seconds = clock.seconds(lambda: xp.copyto(dst, src))
    return 2 * src.nbytes / seconds
