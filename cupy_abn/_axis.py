"""Normalization over any set of axes (Chainer's ``axis``): x as the stages' (N, C, S), and
the results back in x's shape.

The layout (``_geometry.layout``, computed once by the validation) maps x to (outer, K,
inner): a reshape when the kept axes are consecutive (x must then be C-contiguous to be
written in place), else a copy with the kept axes moved first, whose output is moved back
into x (in place) or into a new array.  Parameters of the kept axes' shape are flattened to
(K,); running statistics that do not flatten to a view are updated in a copy and written
back.  ``layout`` None is channels on axis 1, which the stages take as it is.

Every function here takes the call's backend and runs inside the call's device scope, so that
each copy is made on x's device.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

from . import _geometry as G


def params_in(be: Any, k: int, params: Sequence[Any]) -> Tuple[List[Any], List[Tuple]]:
    """``params`` as contiguous (K,) arrays (None stays None), and the (caller's array, copy)
    pairs of those that are copies, to be written back after an update."""
    flat: List[Any] = []
    copies: List[Tuple[Any, Any]] = []
    for p in params:
        if p is None:
            flat.append(None)
            continue
        c = be.ascontiguous(p)
        if c is not p:
            copies.append((p, c))
        flat.append(c if c.ndim == 1 else c.reshape((k,)))
    return flat, copies


def write_back(be: Any, copies: Sequence[Tuple], updated: Sequence[Any]) -> None:
    """Copy the copies of the ``updated`` arrays (the running statistics) back through the
    caller's views."""
    for view, copy in copies:
        if any(view is u for u in updated):
            be.copy_into(view, copy)


def to_ncs(be: Any, lay: Optional[G.Layout], a: Any, copy_strided: bool = True) -> Any:
    """``a`` (shaped like x) as the stages see it: itself (``lay`` None), its (N, C, S) view,
    or a copy with the kept axes first.  ``copy_strided``: a non-contiguous ``a`` is copied
    (what the stages read); False only where the validation has required it contiguous."""
    if lay is not None and not lay.view:
        return be.ascontiguous(a.transpose(lay.perm)).reshape(lay.ncs)
    if copy_strided:
        a = be.ascontiguous(a)
    return a if lay is None else a.reshape(lay.ncs)


def from_ncs(be: Any, lay: Optional[G.Layout], a3: Any, into: Optional[Any] = None) -> Any:
    """A result of the stages shaped like x: itself, a view, a moved-back copy, or ``into``
    (written into it here when the layout is a copy; with a view the stages wrote it)."""
    if lay is None:
        return a3 if into is None else into
    if lay.view:
        return a3.reshape(lay.shape) if into is None else into
    moved = a3.reshape(lay.from_ncs_shape()).transpose(lay.inverse_perm)
    if into is None:
        return be.ascontiguous(moved)
    be.copy_into(into, moved)
    return into


def out_ncs(lay: Optional[G.Layout], out: Optional[Any]) -> Optional[Any]:
    """Where the stages may write a result meant for ``out`` (C-contiguous, validated): itself,
    its (N, C, S) view, or None when the layout needs a copy moved back."""
    if out is None or lay is None:
        return out
    return out.reshape(lay.ncs) if lay.view else None
