"""Graph safety of the in-place layers: when x may be overwritten, and what happens to x after.

Chainer keeps no list of a variable's consumers, so the in-place node checks what it can see
before writing and makes the rest fail loudly:

* before: x is written in place only if it has a creator (it is an intermediate result, not
  the network's input or a parameter), no node retains its array for backward (``node.data``
  is set by ``retain_inputs``/``retain_outputs``: a convolution that read x, an ``F.relu`` that
  produced it, a standard-mode ABN), and its array owns its memory or is a view that alone
  reaches it (a base that owns its memory and nothing else holds: a strided convolution's
  output on the CPU).  Otherwise the node reads x and writes its output into a new buffer,
  and warns (:class:`InPlaceFallbackWarning`); a non-contiguous x (Chainer's CPU convolution
  returns one) takes that route silently, since it is read through a contiguous copy anyway
  and is not shared.  The array
  must also have no Python reference besides its Variable's: one more means that someone
  else can see the memory (the caller, a view of it, a variable that ``F.identity`` passed it
  through from), and a copy is the safe answer.
* after: the input ``Variable`` object no longer refers to the overwritten array; any later use
  (the skip connection of a residual block that fed its input to the layer, ``F.relu(h)``)
  raises this module's ``RuntimeError``, naming the layer and the remedy, instead of reading
  the layer's output as if it were x.  Chainer's nodes take their inputs' arrays through
  ``Variable.raw_array``, so the overwritten Variable's class answers that with the error
  (Chainer's own check would otherwise see a foreign array type first and raise a TypeError
  about mixed array types).
"""
from __future__ import annotations

import sys
import warnings
from typing import Any, Optional, cast

import chainer
import numpy as np


class InPlaceFallbackWarning(UserWarning):
    """An in-place layer wrote its output into a new buffer because x must not be
    overwritten."""


def _after(layer: str) -> str:
    return (f"x was overwritten in place by {layer} and holds its output now: feed the layer a "
            "value that no other node uses (e.g. conv -> InPlaceABN), or keep x with "
            "out= (a buffer for the output: x survives, no copy), mode='standard', or an "
            "explicit F.copy(x) before the layer")


class OverwrittenArray:
    """Stands in for the array of a Variable that an in-place layer has overwritten.

    Every attribute access raises, so reusing the variable fails with a message instead of
    silently reading the layer's output.
    """
    __slots__ = ("shape_", "dtype_", "layer_")

    def __init__(self, shape, dtype, layer: str = "an InPlaceABN layer"):
        self.shape_, self.dtype_, self.layer_ = tuple(shape), dtype, layer

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"{_after(self.layer_)} (accessed .{name} of an array of shape "
                           f"{self.shape_})")

    def __repr__(self) -> str:
        return (f"<OverwrittenArray shape={self.shape_} dtype={self.dtype_}: "
                f"{_after(self.layer_)}>")

    def __array__(self, *args, **kwargs):
        raise RuntimeError(_after(self.layer_))

    def __len__(self) -> int:
        raise RuntimeError(_after(self.layer_))


class OverwrittenVariable(chainer.Variable):
    """The class an overwritten input Variable takes: every node it is fed to raises."""

    @property
    def raw_array(self):
        raise RuntimeError(_after(self._data[0].layer_))

    @property
    def array(self):
        return self._data[0]

    @array.setter
    def array(self, d) -> None:   # noqa: D401 - a new array makes the Variable usable again
        cast(Any, self).__class__ = chainer.Variable
        self.array = d

    data = array


def copy_reason(x: Any) -> Optional[str]:
    """Why ``x`` (a Variable or an array) must not be overwritten, or None if it may be."""
    if not isinstance(x, chainer.Variable):
        return "x is an array, not the output of another node (a network input)"
    if x.creator_node is None:
        return "x is a leaf variable (a network input or a parameter)"
    if x.node.data is not None:
        return (f"x's array is retained for backward by {x.creator_node.label} or by another "
                "node that read it")
    # Before binding the array to a local name, which would count as a reference.
    if _array_refs(x) > _BASELINE_REFS:
        return ("x's array is referenced outside the graph (by another variable, a view of "
                "it, or the caller)")
    arr: Any = x.raw_array
    if getattr(arr, "base", None) is not None and arr.flags.c_contiguous \
            and not _sole_view(arr):
        return "x's array is a view that may share memory with another variable"
    return None


def _base_refs(arr: Any) -> int:
    base = arr.base
    return sys.getrefcount(base)


def _sole_view(arr: Any) -> bool:
    """Whether ``arr`` is a view of an array that owns its memory and that nothing else
    references (a strided convolution's output on the CPU, a reshape of an intermediate):
    then only ``arr`` reaches that memory, and writing it in place is as safe as writing an
    array that owns its memory."""
    return getattr(arr.base, "base", None) is None and _base_refs(arr) <= _BASELINE_BASE_REFS


def _array_refs(v: "chainer.Variable") -> int:
    return sys.getrefcount(v._data[0])


# References to the array of a Variable that nothing else sees (its own, plus the call's).
_BASELINE_REFS = _array_refs(chainer.Variable(np.empty(1)))
# References to the base of a view that nothing else holds (the view's own, plus the call's).
_BASELINE_BASE_REFS = _base_refs(np.empty(2).reshape(1, 2))


def needs_copy(x: Any, stacklevel: int = 3) -> bool:
    """Whether the in-place node must leave ``x`` as it is (its output then goes into a new
    buffer); warns where x is protected."""
    reason = copy_reason(x)
    arr: Any = x.raw_array if isinstance(x, chainer.Variable) else x
    if reason is None:
        return not arr.flags.c_contiguous
    warnings.warn(f"InPlaceABN writes its output into a new buffer, not into x (one extra "
                  f"buffer of shape {tuple(arr.shape)}) because {reason}",
                  InPlaceFallbackWarning,
                  stacklevel=stacklevel)
    return True


def layer_name(kind: str, name: Optional[str]) -> str:
    """How errors name a layer: ``InPlaceABN 'bn1'``, or the kind alone."""
    return f"{kind} {name!r}" if name else f"an {kind} layer"


def invalidate(x: Any, layer: str = "an InPlaceABN layer") -> None:
    """Detach an overwritten input Variable from its array (see the module docstring).

    Writes ``Variable._data`` directly: the public setter accepts arrays only.  The node keeps
    its shape/dtype metadata, so backward through the graph is unaffected.
    """
    if isinstance(x, chainer.Variable):
        arr: Any = x.raw_array
        x._data[0] = OverwrittenArray(arr.shape, arr.dtype, layer)
        x.__class__ = OverwrittenVariable
