"""The geometry of x, in one place for every stage: channels on axis 1, and x viewed as
(N, C, S) with S the product of the trailing axes, so a channel's m = N * S elements are N
rows of S contiguous values.  Backends, validation, the synchronized layer and the Chainer
nodes take channels, counts and views from here."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

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


def as_ncs(a: Any) -> Any:
    """The (N, C, S) view of a C-contiguous array (no copy)."""
    return a.reshape(ncs(a.shape))


@dataclass(frozen=True)
class Layout:
    """How x of ``shape`` is normalized over the reduced axes ``axis`` (Chainer's ``axis``):
    the kept axes are the "channels", ``param_shape`` their shape, and the stages see x as
    (outer, K, inner) = (N, C, S).

    When the kept axes are consecutive that is a reshape of C-contiguous x (no copy;
    channels-last x with ``axis=(0, 1, 2)`` is (N*H*W, C, 1)).  Otherwise ``perm`` moves the
    kept axes first, and the stages work on a (1, K, m) copy.
    """
    shape: Tuple[int, ...]
    axis: Tuple[int, ...]
    kept: Tuple[int, ...]
    param_shape: Tuple[int, ...]
    ncs: Tuple[int, int, int]
    perm: Optional[Tuple[int, ...]]

    @property
    def view(self) -> bool:
        """x reshapes to (N, C, S) without a copy (C-contiguous x)."""
        return self.perm is None

    def from_ncs_shape(self) -> Tuple[int, ...]:
        """The shape of an (N, C, S) result before it is moved back (``perm`` order)."""
        return tuple(self.shape[i] for i in self.perm) if self.perm else self.shape

    @property
    def inverse_perm(self) -> Tuple[int, ...]:
        perm = self.perm if self.perm is not None else tuple(range(len(self.shape)))
        inv = [0] * len(perm)
        for i, p in enumerate(perm):
            inv[p] = i
        return tuple(inv)


def layout(shape: Sequence[int], axis: Any = None) -> Layout:
    """The :class:`Layout` of ``shape`` reduced over ``axis`` (an int or a tuple of ints,
    negative counted from the end; None: every axis but 1).

    Raises
    ------
    ValueError
        For an axis out of range, given twice, or a shape with nothing to reduce.
    """
    shape = tuple(int(d) for d in shape)
    ndim = len(shape)
    if axis is None:
        axis = reduced_axes(ndim) if ndim >= 2 else (0,)
    elif isinstance(axis, int):
        axis = (axis,)
    given = []
    for a in axis:
        if not isinstance(a, int) or not -ndim <= a < ndim:
            raise ValueError(f"axis: expected axes of x (ndim {ndim}) in [-{ndim}, {ndim}), "
                             f"got {axis!r}")
        given.append(a % ndim)
    if len(set(given)) != len(given) or not given:
        raise ValueError(f"axis: expected distinct axes to reduce over, got {axis!r}")
    axes = tuple(sorted(given))
    kept = tuple(i for i in range(ndim) if i not in axes)
    param_shape = tuple(shape[i] for i in kept)
    k = math.prod(param_shape)
    if not kept or kept == tuple(range(kept[0], kept[-1] + 1)):
        first = kept[0] if kept else ndim
        last = kept[-1] + 1 if kept else ndim
        ncs_ = (math.prod(shape[:first]), k, math.prod(shape[last:]))
        return Layout(shape, axes, kept, param_shape, ncs_, None)
    perm = kept + axes
    return Layout(shape, axes, kept, param_shape, (1, k, math.prod(shape[i] for i in axes)),
                  perm)


def chainer_axis(x_ndim: int, gamma_ndim: int, axis: Any = None) -> Optional[Tuple[int, ...]]:
    """The reduced axes as Chainer computes them (``axis``, or 0 and the axes after gamma's,
    which starts at axis 1), or None when that is the default layout (channels on axis 1)."""
    if isinstance(axis, int):
        axis = (axis,)
    if axis is None:
        axis = (0,) + tuple(range(gamma_ndim + 1, x_ndim))
    axis = tuple(sorted(a % x_ndim for a in axis)) if x_ndim else tuple(axis)
    return None if (x_ndim >= 2 and axis == reduced_axes(x_ndim)) else axis
