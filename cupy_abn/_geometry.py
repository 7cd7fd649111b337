"""The geometry of x, in one place for every stage: channels on axis 1, and x viewed as
(N, C, S) with S the product of the trailing axes, so a channel's m = N * S elements are N
rows of S contiguous values.  Backends, validation, the synchronized layer and the Chainer
nodes take channels, counts and views from here."""
from __future__ import annotations

import math
from typing import Any, Sequence, Tuple

CHANNEL_AXIS = 1


def channels(shape: Sequence[int]) -> int:
    """C: the length of the channel axis."""
    return int(shape[CHANNEL_AXIS])


def ncs(shape: Sequence[int]) -> Tuple[int, int, int]:
    """(N, C, S) of a shape with channels on axis 1."""
    return int(shape[0]), int(shape[1]), math.prod(int(d) for d in shape[2:])


def count(shape: Sequence[int]) -> int:
    """m: the elements of one channel (0 for an empty batch or zero channels)."""
    n, c, s = ncs(shape)
    return n * s if c else 0


def reduced_axes(ndim: int) -> Tuple[int, ...]:
    """The axes a channel's statistics reduce over."""
    return (0,) + tuple(range(2, ndim))


def param_shape(ndim: int, c: int) -> Tuple[int, ...]:
    """The shape that broadcasts a per-channel vector against x."""
    return (1, c) + (1,) * (ndim - 2)


def as_ncs(a: Any) -> Any:
    """The (N, C, S) view of a C-contiguous array (no copy)."""
    return a.reshape(ncs(a.shape))
