"""Argument checks, run before anything is written.

Each check is a declaration of what is expected; a failure names the argument, what it got and
what is expected, so that a failed call leaves every input and running statistic untouched.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from ._activations import ACTIVATIONS
from ._state import MODES

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def expect(ok: bool, arg: str, expected: str, got: Any, exc: type = ValueError) -> None:
    """Raise ``exc`` naming ``arg`` unless ``ok``."""
    if not ok:
        raise exc(f"{arg}: expected {expected}, got {got}")


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


def _is_writeable(a: Any) -> bool:
    flags = getattr(a, "flags", None)
    return bool(getattr(flags, "writeable", True))


def _is_c_contiguous(a: Any) -> bool:
    flags = getattr(a, "flags", None)
    return bool(getattr(flags, "c_contiguous", True))


def check_same_family(x: Any, arrays: dict) -> str:
    """The family of ``x``; every other array must be of the same family and device."""
    fam = array_family(x)
    expect(fam is not None, "x", "a numpy.ndarray, cupy.ndarray or pyopencl array",
           type(x).__name__, TypeError)
    for name, a in arrays.items():
        if a is None:
            continue
        other = array_family(a)
        expect(other == fam, name, f"a {fam} array like x (arrays of different libraries "
               "cannot be mixed)", f"{type(a).__module__}.{type(a).__name__}", TypeError)
        if fam == "cupy":
            expect(_device_id(a) == _device_id(x), name, f"an array on GPU {_device_id(x)} "
                   "like x", f"an array on GPU {_device_id(a)}")
    return fam


def check_x(x: Any) -> None:
    expect(x.ndim >= 2, "x", "ndim >= 2 with channels on axis 1 (N, C, ...)",
           f"ndim={x.ndim} with shape {tuple(x.shape)}")
    expect(np.dtype(x.dtype) in FLOAT_DTYPES, "x", "dtype float16, float32 or float64",
           f"dtype {np.dtype(x.dtype)}", TypeError)


def param_dtypes(x_dtype: np.dtype) -> tuple:
    """Dtypes the parameters may have for an input of ``x_dtype``."""
    x_dtype = np.dtype(x_dtype)
    if x_dtype == np.float16:
        return (np.dtype(np.float16), np.dtype(np.float32))
    return (x_dtype,)


def check_param(name: str, p: Any, channels: int, dtype: np.dtype, ref_dtype=None) -> None:
    allowed = param_dtypes(dtype)
    expect(tuple(p.shape) == (channels,), name, f"shape ({channels},) (one value per channel "
           "of x)", f"shape {tuple(p.shape)}")
    expect(np.dtype(p.dtype) in allowed, name,
           "dtype " + " or ".join(str(d) for d in allowed) + f" for x of dtype {dtype}",
           f"dtype {np.dtype(p.dtype)}", TypeError)
    if ref_dtype is not None:
        expect(np.dtype(p.dtype) == np.dtype(ref_dtype), name,
               f"the dtype of gamma ({np.dtype(ref_dtype)})", f"dtype {np.dtype(p.dtype)}",
               TypeError)


def check_activation(activation: str, activation_param: float, mode: str) -> None:
    expect(mode in MODES, "mode", "one of " + ", ".join(repr(m) for m in MODES), repr(mode))
    expect(activation in ACTIVATIONS, "activation",
           "one of " + ", ".join(repr(a) for a in ACTIVATIONS), repr(activation))
    act = ACTIVATIONS[activation]
    if mode != "standard":
        expect(act.invertible, "activation",
               f"an invertible activation in mode {mode!r} (use 'leaky_relu' instead of "
               "'relu', or mode='standard')", repr(activation))
    if act.param_name is not None:
        ok = isinstance(activation_param, (int, float, np.floating)) and \
            math.isfinite(activation_param)
        expect(ok, "activation_param", f"a finite number ({act.param_name} of {activation})",
               repr(activation_param), TypeError)
        if mode != "standard":
            expect(activation_param > 0, "activation_param",
                   f"{act.param_name} > 0 for {activation} in mode {mode!r} (the activation "
                   "must be invertible)", activation_param)


def check_scalars(eps: float, decay: float) -> None:
    expect(isinstance(eps, (int, float, np.floating)) and math.isfinite(eps) and eps > 0,
           "eps", "a finite number > 0", repr(eps))
    expect(isinstance(decay, (int, float, np.floating)) and 0 <= decay <= 1,
           "decay", "a number in [0, 1]", repr(decay))


def check_in_place_target(name: str, a: Any, why: str) -> None:
    expect(_is_writeable(a), name, f"a writeable array ({why})", "a read-only array")
    expect(_is_c_contiguous(a), name, f"a C-contiguous array ({why})",
           f"a non-contiguous array with strides {tuple(a.strides)}")


def check_forward(x, gamma, beta, running_mean, running_var, *, training: bool, decay: float,
                  eps: float, activation: str, activation_param: float, mode: str,
                  count: Optional[int] = None) -> str:
    """Check every argument of :func:`cupy_abn.abn_forward`; return the array family.

    ``count`` overrides the per-channel element count checked in training (the global count
    of a synchronized layer, whose local batch may be empty).
    """
    fam = check_same_family(x, {"gamma": gamma, "beta": beta, "running_mean": running_mean,
                                "running_var": running_var})
    check_x(x)
    check_activation(activation, activation_param, mode)
    check_scalars(eps, decay)
    channels = x.shape[1]
    check_param("gamma", gamma, channels, x.dtype)
    check_param("beta", beta, channels, x.dtype, gamma.dtype)
    expect((running_mean is None) == (running_var is None), "running_mean/running_var",
           "both arrays or both None", f"running_mean={type(running_mean).__name__}, "
           f"running_var={type(running_var).__name__}", TypeError)
    if running_mean is not None:
        for name, r in (("running_mean", running_mean), ("running_var", running_var)):
            check_param(name, r, channels, x.dtype, gamma.dtype)
            check_in_place_target(name, r, "running statistics are updated in place")
    if not training:
        expect(running_mean is not None, "running_mean",
               "an array in evaluation mode (training=False normalizes with the running "
               "statistics)", "None", TypeError)
    else:
        m = count if count is not None else int(np.prod(x.shape)) // channels
        expect(m > 1, "x", "more than one element per channel in training (the variance "
               "of a single value is undefined)", f"{m} element(s) per channel, shape "
               f"{tuple(x.shape)}")
    if mode != "standard":
        check_in_place_target("x", x, f"mode {mode!r} writes the output into x")
    return fam


def check_backward(saved, grad_output, out=None) -> None:
    """Check the arguments of :func:`cupy_abn.abn_backward`."""
    z = saved.z
    check_same_family(z, {"grad_output": grad_output, "out": out})
    expect(tuple(grad_output.shape) == tuple(z.shape), "grad_output",
           f"shape {tuple(z.shape)} (the shape of the forward output)",
           f"shape {tuple(grad_output.shape)}")
    expect(np.dtype(grad_output.dtype) == np.dtype(z.dtype), "grad_output",
           f"dtype {np.dtype(z.dtype)} (the dtype of the forward output)",
           f"dtype {np.dtype(grad_output.dtype)}", TypeError)
    if out is not None:
        expect(tuple(out.shape) == tuple(z.shape) and
               np.dtype(out.dtype) == np.dtype(z.dtype), "out",
               f"shape {tuple(z.shape)} and dtype {np.dtype(z.dtype)}",
               f"shape {tuple(out.shape)} and dtype {np.dtype(out.dtype)}")
        check_in_place_target("out", out, "the input gradient is written into it")
