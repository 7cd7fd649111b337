"""Backend selection: one backend per array library, the same stage interface for all.

``numpy.ndarray`` -> :class:`NumpyBackend`; ``cupy.ndarray`` -> the kernel backend on the CuPy
runtime; pyopencl arrays -> the kernel backend on the OpenCL test runtime (CPU, PoCL/Oclgrind).

The CuPy backend is built once per device and kept: a call then costs a dict lookup, not an
import statement and a new backend object.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Dict, Optional

from ._numpy_backend import NumpyBackend

_NUMPY = NumpyBackend()
_CUPY: Dict[int, Any] = {}            # device id -> KernelBackend on that device's runtime
_NO_DEVICE = contextlib.nullcontext()  # reusable: entering it does nothing


def backend_for(x: Any, family: Optional[str]) -> Any:
    """The backend that runs the stages on arrays like ``x``.

    Parameters
    ----------
    x : array
        The input (forward) or output (backward) array.
    family : str or None
        ``array_family(x)``: ``"numpy"``, ``"cupy"`` or ``"opencl"`` (None, an unsupported
        type, raises ``TypeError``).

    Returns
    -------
    NumpyBackend or KernelBackend
    """
    if family == "numpy":
        return _NUMPY
    if family == "cupy":
        dev = x.device.id
        be = _CUPY.get(dev)
        if be is None:
            from ._kernel_backend import KernelBackend
            from ._runtime_cupy import runtime_for
            be = _CUPY.setdefault(dev, KernelBackend(runtime_for(x)))
        return be
    if family == "opencl":
        from ._kernel_backend import KernelBackend
        from ._runtime_opencl import runtime_for as opencl_runtime_for
        return KernelBackend(opencl_runtime_for(x))
    raise TypeError(f"x: no backend for arrays of type {type(x).__name__}")


def device_scope(x: Any, family: Optional[str]) -> ContextManager:
    """The context to run the stages of one API call in.

    For CuPy this is the device of ``x`` (``x.device``, a ``cupy.cuda.Device``), entered once
    per call so that the runtime's allocations and launches need not each enter it; for the
    other families it does nothing.
    """
    if family == "cupy":
        return x.device
    return _NO_DEVICE
