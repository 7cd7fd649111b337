"""Argument checks, run before anything is written.

Each check is a declaration of what is expected; a failure names the argument, what it got and
what is expected, so that a failed call leaves every input and running statistic untouched.

The checks run on every call, so the happy path only compares: a message (f-strings,
``str(np.dtype)``, reprs) is built by :func:`fail` when a check has already failed.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, NamedTuple, NoReturn, Optional, Sequence, Tuple, Union

import numpy as np

from . import _geometry as G
from ._activations import ACTIVATIONS
from ._state import MODES

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_NUMBER = (int, float, np.floating)

ONE_VALUE_WARNING = ("training batch with one value per channel (x of shape {shape}): the "
                     "batch variance is 0 and the normalized output is beta; the running "
                     "variance is updated with the factor m / max(m - 1, 1) = 1. Running "
                     "evaluation with chainer.config.train=True, or the last batch of a "
                     "non-repeating iterator, can cause this")

def fail(arg: str, expected: str, got: Any, exc: type = ValueError) -> NoReturn:
    """Raise ``exc("<arg>: expected <expected>, got <got>")``.

    Parameters
    ----------
    arg : str
        The argument that failed its check.
    expected : str
        What the argument should have been.
    got : object
        What it was (formatted with ``str``).
    exc : type
        The exception class (``ValueError`` or ``TypeError``).
    """
    raise exc(f"{arg}: expected {expected}, got {got}")


def expect(ok: bool, arg: str, expected: Union[str, Callable[[], str]], got: Any,
           exc: type = ValueError) -> None:
    """Raise ``exc`` naming ``arg`` unless ``ok``.

    Parameters
    ----------
    ok : bool
        The outcome of the check.
    arg : str
        The argument checked.
    expected, got : str, object or callable
        The two halves of the message.  A callable is called (with no argument) only when the
        check fails, so that a message costly to format costs nothing on success.
    exc : type
        The exception class raised on failure.
    """
    if not ok:
        fail(arg, expected() if callable(expected) else expected,
             got() if callable(got) else got, exc)


def array_family(a: Any) -> Optional[str]:
    """'numpy', 'cupy' or 'opencl' for a supported array type, else None."""
    if isinstance(a, np.ndarray):
        return "numpy"
    mod = type(a).__module__
    if mod.startswith("cupy"):
        return "cupy"
    if mod.startswith("pyopencl"):
        return "opencl"
    return None


def _device_id(a: Any) -> Optional[int]:
    dev = getattr(a, "device", None)
    return getattr(dev, "id", None)


def check_same_family(x: Any, arrays: dict) -> str:
    """The family of ``x``; every other array must be of the same family and device.

    Parameters
    ----------
    x : array
        The array whose library (and GPU) the others must share.
    arrays : dict
        Argument name -> array or None (None is skipped).

    Returns
    -------
    str
        ``"numpy"``, ``"cupy"`` or ``"opencl"``.
    """
    fam = array_family(x)
    if fam is None:
        fail("x", "a numpy.ndarray, cupy.ndarray or pyopencl array", type(x).__name__,
             TypeError)
    dev = _device_id(x) if fam == "cupy" else None
    for name, a in arrays.items():
        if a is None:
            continue
        if array_family(a) != fam:
            fail(name, f"a {fam} array like x (arrays of different libraries cannot be mixed)",
                 f"{type(a).__module__}.{type(a).__name__}", TypeError)
        if fam == "cupy" and _device_id(a) != dev:
            fail(name, f"an array on GPU {dev} like x", f"an array on GPU {_device_id(a)}")
    return fam


def check_x(x: Any) -> None:
    """``x`` has channels on axis 1 and a floating dtype."""
    if x.ndim < 2:
        fail("x", "ndim >= 2 with channels on axis 1 (N, C, ...)",
             f"ndim={x.ndim} with shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:   # == comparisons, as np.dtype() did
        fail("x", "dtype float16, float32 or float64", f"dtype {np.dtype(x.dtype)}", TypeError)


def check_param(name: str, p: Any, shape: tuple, ref_dtype=None, what: str = "") -> None:
    """A per-channel parameter: ``shape`` (``(C,)``, or the kept axes' shape over ``axis``), a
    float dtype (any, whatever x's: the computation accumulates in the wider of the two, as
    Chainer) and, when ``ref_dtype`` is given, that very dtype (gamma's)."""
    if tuple(p.shape) != shape:
        fail(name, f"shape {shape} ({what or 'one value per channel of x'})",
             f"shape {tuple(p.shape)}")
    pd = p.dtype
    if pd not in FLOAT_DTYPES:
        fail(name, "dtype float16, float32 or float64", f"dtype {np.dtype(pd)}", TypeError)
    if ref_dtype is not None and pd != ref_dtype:
        fail(name, f"the dtype of gamma ({np.dtype(ref_dtype)})", f"dtype {np.dtype(pd)}",
             TypeError)


IN_PLACE_MODES = tuple(m for m in MODES if m != "standard")


def check_mode(mode: str, allowed: Sequence[str] = MODES, hint: str = "") -> None:
    """The one check of ``mode``: one of ``allowed`` (all modes by default), else a
    ``ValueError`` naming the choices and ``hint`` (e.g. where the other modes are)."""
    if mode not in allowed:
        fail("mode", "one of " + ", ".join(repr(m) for m in allowed),
             repr(mode) + (f" ({hint})" if hint else ""))


def check_activation(activation: str, activation_param: float, mode: str) -> None:
    """A known mode and activation, invertible with a positive parameter in place."""
    check_mode(mode)
    act = ACTIVATIONS.get(activation) if isinstance(activation, str) else None
    if act is None:
        fail("activation", "one of " + ", ".join(repr(a) for a in ACTIVATIONS),
             repr(activation))
    in_place = mode != "standard"
    if in_place and not act.invertible:
        fail("activation", f"an invertible activation in mode {mode!r} (use 'leaky_relu' "
             "instead of 'relu', or mode='standard')", repr(activation))
    if act.param_name is not None:
        if not (isinstance(activation_param, _NUMBER) and math.isfinite(activation_param)):
            fail("activation_param", f"a finite number ({act.param_name} of {activation})",
                 repr(activation_param), TypeError)
        if in_place and not activation_param > 0:
            fail("activation_param", f"{act.param_name} > 0 for {activation} in mode "
                 f"{mode!r} (the activation must be invertible)", activation_param)


def check_scalars(eps: float, decay: float) -> None:
    """``eps`` finite and positive, ``decay`` in [0, 1]."""
    if not (isinstance(eps, _NUMBER) and math.isfinite(eps) and eps > 0):
        fail("eps", "a finite number > 0", repr(eps))
    if not (isinstance(decay, _NUMBER) and 0 <= decay <= 1):
        fail("decay", "a number in [0, 1]", repr(decay))


def check_writeable(name: str, a: Any, why: str, flags: Any = None) -> None:
    """``a`` is not read-only."""
    if flags is None:
        flags = getattr(a, "flags", None)
    if not getattr(flags, "writeable", True):
        fail(name, f"a writeable array ({why})", "a read-only array")


def check_in_place_target(name: str, a: Any, why: str) -> None:
    """``a`` can be written in place: writeable and C-contiguous."""
    flags = getattr(a, "flags", None)    # numpy makes a new flags object per access
    check_writeable(name, a, why, flags)
    if not getattr(flags, "c_contiguous", True):
        fail(name, f"a C-contiguous array ({why})",
             f"a non-contiguous array with strides {tuple(a.strides)}")


class Route(NamedTuple):
    """What one checked call needs to run: the array family of x and its layout (None:
    channels on axis 1, the stages take x as it is; else the :class:`_geometry.Layout` of
    ``axis``)."""
    family: str
    layout: Optional[G.Layout]


def layout_of(x: Any, axis: Any) -> Optional[G.Layout]:
    """x's :class:`_geometry.Layout` over ``axis``; None for channels on axis 1 (``axis``
    None or every axis but 1), the layout the stages take x in as it is."""
    if axis is None:
        return None
    try:
        lay = G.layout(x.shape, axis)
    except ValueError as err:
        raise ValueError(f"{err} (x of shape {tuple(x.shape)})") from None
    if len(lay.shape) >= 2 and lay.kept == (G.CHANNEL_AXIS,):
        return None
    return lay


def check_forward(x, gamma, beta, running_mean, running_var, *, training: bool, decay: float,
                  eps: float, activation: str, activation_param: float, mode: str,
                  axis: Any = None, count: Optional[int] = None,
                  check_count: bool = True, out: Any = None, residual: Any = None) -> Route:
    """Check every argument of :func:`cupy_abn.abn_forward`, once, before anything is
    allocated or written.

    ``count`` overrides the per-channel element count checked in training (the global count
    of a synchronized layer, whose local batch may be empty); ``check_count=False`` leaves
    that check to the caller (a synchronized layer knows the global count only after its
    exchange: :func:`check_count_of`).  ``out``: where the output goes instead of x (None
    for x itself).  ``residual``: r of a fused residual add (None for none).

    Returns
    -------
    Route
        The array family of ``x`` (see :func:`array_family`) and its layout over ``axis``.

    Raises
    ------
    TypeError, ValueError
        Naming the first argument that fails its check.
    """
    fam = check_same_family(x, {"gamma": gamma, "beta": beta, "running_mean": running_mean,
                                "running_var": running_var, "out": out,
                                "residual": residual})
    lay = layout_of(x, axis)
    if lay is None:
        check_x(x)
        shape: Tuple[int, ...] = (G.channels(x.shape),)
        what = ""
        m = G.count(x.shape)
    else:
        if x.dtype not in FLOAT_DTYPES:
            fail("x", "dtype float16, float32 or float64", f"dtype {np.dtype(x.dtype)}",
                 TypeError)
        shape, what = lay.param_shape, f"the axes of x not in axis={lay.axis}"
        m = lay.ncs[0] * lay.ncs[2] if lay.ncs[1] else 0
    check_activation(activation, activation_param, mode)
    check_scalars(eps, decay)
    check_param("gamma", gamma, shape, what=what)
    gd = gamma.dtype
    check_param("beta", beta, shape, gd, what)
    if (running_mean is None) != (running_var is None):
        fail("running_mean/running_var", "both arrays or both None",
             f"running_mean={type(running_mean).__name__}, "
             f"running_var={type(running_var).__name__}", TypeError)
    if running_mean is not None:
        for name, r in (("running_mean", running_mean), ("running_var", running_var)):
            check_param(name, r, shape, gd, what)
            if training:   # strided views are fine: updated in a copy, written back
                check_writeable(name, r, "running statistics are updated in place")
    if not training:
        if running_mean is None:
            fail("running_mean", "an array in evaluation mode (training=False normalizes "
                 "with the running statistics)", "None", TypeError)
    elif check_count:
        check_count_of(x, count if count is not None else m, stacklevel=4)
    if out is not None:   # x is only read
        if tuple(out.shape) != tuple(x.shape) or out.dtype != x.dtype:
            fail("out", f"shape {tuple(x.shape)} and dtype {np.dtype(x.dtype)} (x's)",
                 f"shape {tuple(out.shape)} and dtype {np.dtype(out.dtype)}")
        _check_target("out", out, lay, "the output is written into it")
    elif mode != "standard":
        _check_target("x", x, lay, f"mode {mode!r} writes the output into x")
    if residual is not None:
        _check_residual(x, residual, out if out is not None else (
            None if mode == "standard" else x), "out" if out is not None else "x")
    return Route(fam, lay)


def _check_residual(x: Any, r: Any, target: Any, target_name: str) -> None:
    """r is shaped like x and lies apart from the output (``target``: None for a new
    array): the output is written while r is read, and the in-place backward reads r."""
    if tuple(r.shape) != tuple(x.shape) or r.dtype != x.dtype:
        fail("residual", f"shape {tuple(x.shape)} and dtype {np.dtype(x.dtype)} (x's)",
             f"shape {tuple(r.shape)} and dtype {np.dtype(r.dtype)}")
    if target is not None and may_overlap(r, target):
        fail("residual", f"an array apart from {target_name}, where the output is written "
             "(the in-place backward rebuilds y from the output and r: r must outlive the "
             "forward unchanged)", f"an array that shares memory with {target_name}")


def may_overlap(a: Any, b: Any) -> bool:
    """Whether the memory of ``a`` and ``b`` may overlap (their address ranges meet)."""
    if a is b:
        return True
    if array_family(a) == "numpy":
        return bool(np.may_share_memory(a, b))
    if a.size == 0 or b.size == 0:
        return False
    if array_family(a) == "cupy":
        return _meet(_extent(a, a.data.ptr), _extent(b, b.data.ptr))
    # pyopencl: offsets into one buffer
    return a.base_data == b.base_data and _meet(_extent(a, a.offset), _extent(b, b.offset))


def _extent(a: Any, start: int) -> Tuple[int, int]:
    """[low, high) bytes an array starting at ``start`` spans, strides of either sign."""
    steps = [(n - 1) * s for n, s in zip(a.shape, a.strides)]
    return (start + sum(d for d in steps if d < 0),
            start + sum(d for d in steps if d > 0) + a.itemsize)


def _meet(p: Tuple[int, int], q: Tuple[int, int]) -> bool:
    return p[0] < q[1] and q[0] < p[1]


def _check_target(name: str, a: Any, lay: Optional[G.Layout], why: str) -> None:
    """Where the forward's output goes: C-contiguous when the stages write its memory (the
    default layout or a view of x), else only writeable (the output is moved into it)."""
    if lay is None or lay.view:
        check_in_place_target(name, a, why)
    else:
        check_writeable(name, a, why)


def check_count_of(x: Any, m: int, stacklevel: int = 3) -> None:
    """Training needs elements in each channel: none is an error, one a warning (Chainer's
    behaviour: the batch variance is 0 and the output is beta)."""
    if not m > 1:
        if m < 1:
            fail("x", "at least one element per channel in training (batch statistics "
                 "of an empty batch are undefined)", f"0 elements per channel, shape "
                 f"{tuple(x.shape)}")
        warnings.warn(ONE_VALUE_WARNING.format(shape=tuple(x.shape)), UserWarning,
                      stacklevel=stacklevel)


def check_backward(saved, grad_output, out=None) -> str:
    """Check the arguments of :func:`cupy_abn.abn_backward`, once.

    Returns
    -------
    str
        The array family of the saved output.

    Raises
    ------
    TypeError, ValueError
        Naming the first argument that fails its check.
    """
    z = saved.z
    fam = check_same_family(z, {"grad_output": grad_output, "out": out})
    shape, dtype = saved.shape, z.dtype
    if tuple(grad_output.shape) != shape:
        fail("grad_output", f"shape {shape} (the shape of the forward output)",
             f"shape {tuple(grad_output.shape)}")
    if grad_output.dtype != dtype:
        fail("grad_output", f"dtype {np.dtype(dtype)} (the dtype of the forward output)",
             f"dtype {np.dtype(grad_output.dtype)}", TypeError)
    if out is not None:
        if tuple(out.shape) != shape or out.dtype != dtype:
            fail("out", f"shape {shape} and dtype {np.dtype(dtype)}",
                 f"shape {tuple(out.shape)} and dtype {np.dtype(out.dtype)}")
        check_in_place_target("out", out, "the input gradient is written into it")
    return fam
