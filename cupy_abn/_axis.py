"""Normalization over any set of axes (Chainer's ``axis``), on top of the (N, C, S) stages.

The layout (``_geometry.layout``) maps x to (outer, K, inner): a reshape when the kept axes
are consecutive (x must then be C-contiguous to be written in place), else a copy with the
kept axes moved first, whose output is moved back into x (in place) or into a new array.
Parameters of the kept axes' shape are flattened to (K,); running statistics that do not
flatten to a view are updated in a copy and written back.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

from . import _geometry as G
from . import _validation as V


def _flat(p: Any, k: int) -> Tuple[Any, bool]:
    """(p as (K,), whether that is a view of p)."""
    if p is None:
        return None, True
    contiguous = getattr(getattr(p, "flags", None), "c_contiguous", True)
    if contiguous:
        return p.reshape((k,)), True
    return _contiguous(p).reshape((k,)), False


def _contiguous(a: Any) -> Any:
    from ._dispatch import backend_for
    return backend_for(a, V.array_family(a)).ascontiguous(a)


def _assign(dst: Any, src: Any) -> None:
    from ._dispatch import backend_for
    backend_for(dst, V.array_family(dst)).copy_into(dst, src)


def to_ncs(lay: G.Layout, a: Any) -> Any:
    """``a`` (shaped like x) as the stages' (N, C, S)."""
    if lay.view:
        return a.reshape(lay.ncs)
    return _contiguous(a.transpose(lay.perm)).reshape(lay.ncs)


def from_ncs(lay: G.Layout, a3: Any, into: Optional[Any] = None) -> Any:
    """An (N, C, S) result shaped like x: a view, a moved-back copy, or written ``into``."""
    moved = a3.reshape(lay.from_ncs_shape())
    if not lay.view:
        moved = moved.transpose(lay.inverse_perm)
    if into is None:
        return moved if lay.view else _contiguous(moved)
    if into is not moved and not (lay.view and _same_memory(into, a3)):
        _assign(into, moved)
    return into


def _same_memory(a: Any, b: Any) -> bool:
    """Whether two arrays start at the same address (NumPy, CuPy; False when unknown, which
    only costs a copy onto itself)."""
    def start(v):
        try:
            iface = getattr(v, "__array_interface__", None)
            return iface["data"][0] if iface else v.data.ptr
        except Exception:  # noqa: BLE001 - pyopencl (no .ptr, or an offset): unknown
            return None
    sa = start(a)
    return sa is not None and sa == start(b)


def forward(forward_fn, x, gamma, beta, running_mean, running_var, *, axis, mode, training,
            **kw):
    """:func:`cupy_abn.abn_forward` over ``axis``: the stages on the (N, C, S) layout."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        V.check_x(x)   # names the type
    try:
        lay = G.layout(x.shape, axis)
    except ValueError as err:
        raise ValueError(f"{err} (x of shape {tuple(x.shape)})") from None
    for name, p in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if p is not None and tuple(p.shape) != lay.param_shape:
            V.fail(name, f"shape {lay.param_shape} (the axes of x not in axis={lay.axis})",
                   f"shape {tuple(p.shape)}")
    if mode != "standard":
        why = f"mode {mode!r} writes the output into x"
        if lay.view:   # a reshape of x itself: the stages write into x's memory
            V.check_in_place_target("x", x, why)
        else:          # the output is moved back into x
            V.check_writeable("x", x, why)
    k = lay.ncs[1]
    g, _ = _flat(gamma, k)
    b, _ = _flat(beta, k)
    rm, rm_view = _flat(running_mean, k)
    rv, rv_view = _flat(running_var, k)
    x3 = to_ncs(lay, x)
    z3, saved = forward_fn(x3, g, b, rm, rv, mode=mode, training=training, **kw)
    saved.layout = lay
    if training:
        for view, flat, ok in ((running_mean, rm, rm_view), (running_var, rv, rv_view)):
            if view is not None and not ok:
                _assign(view, flat.reshape(lay.param_shape))
    if mode == "standard":
        return from_ncs(lay, z3), saved
    return from_ncs(lay, z3, into=x), saved


def backward(backward_fn, saved, grad_output, out, **kw):
    """:func:`cupy_abn.abn_backward` of a forward over ``axis``."""
    lay = saved.layout
    if tuple(grad_output.shape) != lay.shape:
        V.fail("grad_output", f"shape {lay.shape} (the shape of the forward output)",
               f"shape {tuple(grad_output.shape)}")
    dz3 = to_ncs(lay, grad_output)
    dx3, dg, db = backward_fn(saved, dz3, **kw)
    dx = from_ncs(lay, dx3, into=out)
    return dx, dg.reshape(lay.param_shape), db.reshape(lay.param_shape)
