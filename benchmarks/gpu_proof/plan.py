"""The proof's steps in order of value, their shares of the budget, and when one is skipped.

Each step ends at the latest at its *cumulative* deadline: the start plus the budget times
the shares of this step and every step before it.  A step that finishes early leaves its
time to the next ones; a step that would start with less than its minimum is skipped with
the reason recorded, and the run goes on (a later step may still fit).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

DEFAULT_BUDGET_S = 480.0


@dataclass(frozen=True)
class Step:
    """One step of the proof.

    Attributes
    ----------
    name : str
        Its key in the summary.
    share : float
        Its fraction of the budget.
    min_s : float
        Below this many seconds left it is skipped (too short to say anything).
    needs_gpu : bool
        Skipped without a CUDA device, except in the dry run (which takes the CPU path).
    what : str
        One line for the summary and the console.
    """

    name: str
    share: float
    min_s: float
    needs_gpu: bool
    what: str


STEPS: Tuple[Step, ...] = (
    Step("environment", 0.06, 5.0, False, "installs, the device and the versions"),
    Step("tests", 0.42, 30.0, True, "the GPU tests (pytest -m gpu)"),
    Step("kernels", 0.24, 20.0, True,
         "cupy-abn's modes next to PyTorch, a plain CuPy composition and Chainer"),
    Step("memory", 0.10, 10.0, True, "training-step memory of the demo network"),
    Step("fit", 0.06, 5.0, False, "the static model's latency and bandwidth, fitted"),
    Step("inplace_abn", 0.08, 15.0, True,
         "Mapillary's inplace_abn, timed where its background build finished in time"),
)
# The rest: the archive and the summary at the end.
RESERVE = 1.0 - sum(s.share for s in STEPS)
assert 0.0 < RESERVE < 0.1, RESERVE


def step(name: str) -> Step:
    """The step called ``name``."""
    return next(s for s in STEPS if s.name == name)


class Budget:
    """Cumulative deadlines of the steps over ``total_s`` seconds from now.

    Parameters
    ----------
    total_s : float
        The whole run's wall time, installs included.
    steps : sequence of Step
        The steps in order.
    clock : callable
        Seconds, monotonic (a fake one in the tests).
    """

    def __init__(self, total_s: float, steps: Sequence[Step] = STEPS,
                 clock: Callable[[], float] = time.monotonic):
        self.total_s, self.clock = float(total_s), clock
        self.start = clock()
        self.shares = {s.name: s.share for s in steps}
        self._ends: Dict[str, float] = {}
        acc = 0.0
        for s in steps:
            acc += s.share
            self._ends[s.name] = self.start + acc * self.total_s

    def share_s(self, name: str) -> float:
        """The step's own share in seconds."""
        return self.shares[name] * self.total_s

    def end(self, name: str) -> float:
        """The clock time at which the step must have ended."""
        return self._ends[name]

    def left(self, name: str) -> float:
        """Seconds until the step's deadline (negative when it has passed)."""
        return self._ends[name] - self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        """Seconds until the end of the whole budget."""
        return self.start + self.total_s - self.clock()


def skip_reason(s: Step, budget: Budget, gpu: bool, dry_run: bool) -> Optional[str]:
    """Why step ``s`` cannot start now, or None.

    Parameters
    ----------
    s : Step
    budget : Budget
    gpu : bool
        Whether CuPy sees a CUDA device.
    dry_run : bool
        The CPU path: no step needs a GPU.
    """
    if s.needs_gpu and not gpu and not dry_run:
        return "no CUDA device: CuPy sees none"
    left = budget.left(s.name)
    if left < s.min_s:
        return (f"budget spent: {max(left, 0):.0f} s left for it (its share is "
                f"{budget.share_s(s.name):.0f} s of {budget.total_s:.0f} s; it needs at least "
                f"{s.min_s:.0f} s)")
    return None
