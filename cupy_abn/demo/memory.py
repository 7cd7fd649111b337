"""Peak memory of one training step: tracemalloc on the CPU, a CuPy memory hook on a GPU.

Both count the bytes allocated during the step and not yet freed: right after the forward (what
the graph keeps for backward) and at their highest (the step's peak), on top of what was held
before the step (parameters, optimizer state, the input batch).
NumPy reports its array buffers to tracemalloc; CuPy's memory pool reports every block it
hands out and takes back to its memory hooks, so pool caching does not inflate the count.
"""
from __future__ import annotations

import gc
import math
import tracemalloc
from dataclasses import dataclass
from typing import Callable, Dict, Tuple, TypeVar

T = TypeVar("T")


class _CupyCounter:
    """Live and highest sum of CuPy pool blocks allocated since entering."""

    def __init__(self):
        import cupy

        class Hook(cupy.cuda.MemoryHook):
            name = "cupy_abn_peak"

            def __init__(hook):
                super().__init__()
                hook.live, hook.peak = 0, 0

            def malloc_postprocess(hook, **kw):   # a pool block handed out
                hook.live += kw["mem_size"]
                hook.peak = max(hook.peak, hook.live)

            def free_postprocess(hook, **kw):     # a pool block taken back
                hook.live -= kw["mem_size"]

        self.hook = Hook()
        self.sync = cupy.cuda.Device().synchronize

    def __enter__(self):
        self.sync()
        self.hook.__enter__()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.hook.__exit__(*exc)

    def current(self) -> int:
        return self.hook.live

    def peak(self) -> int:
        return self.hook.peak


class _TracemallocCounter:
    def __enter__(self):
        gc.collect()
        tracemalloc.start()
        return self

    def __exit__(self, *exc):
        self._peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

    def current(self) -> int:
        return tracemalloc.get_traced_memory()[0]

    def peak(self) -> int:   # after the with block
        return self._peak


def step_memory(forward: Callable[[], T], rest: Callable[[T], object],
                gpu: bool) -> Tuple[T, int, int]:
    """Run ``rest(forward())`` and measure it.

    Returns
    -------
    value : what ``forward()`` returned
    kept : int
        Bytes allocated by ``forward()`` and still alive after it: what the graph keeps for
        backward (the activations), plus the loss.
    peak : int
        Highest bytes alive at once over the whole step.
    """
    counter = _CupyCounter() if gpu else _TracemallocCounter()
    with counter:
        value = forward()
        kept = counter.current()
        rest(value)
    gc.collect()
    return value, int(kept), int(counter.peak())


@dataclass(frozen=True)
class LinearFit:
    """``peak(batch) = fixed + per_sample * batch``, from two measured batch sizes."""
    fixed: float
    per_sample: float

    def largest_batch(self, budget: int) -> int:
        # The 1e-6 absorbs the least-squares rounding of an exact line; the caller measures
        # the answer anyway.
        return max(0, math.floor((budget - self.fixed) / self.per_sample + 1e-6))


def fit(peaks: Dict[int, int]) -> LinearFit:
    """Least-squares line through ``{batch: peak}`` (at least two batch sizes)."""
    import numpy as np
    b = np.array(sorted(peaks), float)
    p = np.array([peaks[k] for k in sorted(peaks)], float)
    slope, intercept = np.polyfit(b, p, 1)
    return LinearFit(float(intercept), float(slope))


def largest_batch(measure: Callable[[int], int], budget: int, probe: int) -> Dict[str, object]:
    """The largest batch whose training step peaks within ``budget`` bytes.

    The peak grows about linearly with the batch: it is measured at ``probe`` and
    ``2 * probe`` and the line predicts the answer.  If the prediction does not fit, the batch
    steps down by 2% until one fits, and bisection between that one and the smallest known
    misfit finds the largest batch that fits (for a peak that grows with the batch).
    """
    peaks = {probe: measure(probe), 2 * probe: measure(2 * probe)}

    def fits(batch: int) -> bool:
        if batch not in peaks:
            peaks[batch] = measure(batch)
        return peaks[batch] <= budget

    lo, hi = 0, fit(peaks).largest_batch(budget)
    if hi > 0 and fits(hi):
        lo = hi
    else:
        while hi > 1:
            cand = max(1, min(hi - 1, int(hi * 0.98)))
            if fits(cand):
                lo = cand
                break
            hi = cand
        while hi - lo > 1 and lo > 0:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return {"batch": lo, "peak_bytes": peaks.get(lo, 0),
            "measured": {str(k): v for k, v in sorted(peaks.items())}}
