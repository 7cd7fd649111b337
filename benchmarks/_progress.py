"""A tqdm progress bar where tqdm is installed, and a silent stand-in where it is not (the
GPU proof runs the benchmarks on machines that may lack it)."""
from __future__ import annotations

from typing import Any


class _NoBar:
    """Stands in for a tqdm bar where tqdm is not installed."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int, progress: bool, desc: str) -> Any:
    """A tqdm bar of ``total`` steps named ``desc`` (disabled unless ``progress``)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:        # tqdm is optional: no bar
        return _NoBar()
    return tqdm(total=total, disable=not progress, desc=desc)
