"""Backend selection: one backend per array library, the same stage interface for all.

``numpy.ndarray`` -> :class:`NumpyBackend`; ``cupy.ndarray`` -> the kernel backend on the CuPy
runtime; pyopencl arrays -> the kernel backend on the OpenCL test runtime (CPU, PoCL/Oclgrind).
"""
from __future__ import annotations

from typing import Any

from ._numpy_backend import NumpyBackend

_NUMPY = NumpyBackend()


def backend_for(x: Any, family: str):
    if family == "numpy":
        return _NUMPY
    if family == "cupy":
        from ._kernel_backend import KernelBackend
        from ._runtime_cupy import runtime_for
        return KernelBackend(runtime_for(x))
    if family == "opencl":
        from ._kernel_backend import KernelBackend
        from ._runtime_opencl import runtime_for
        return KernelBackend(runtime_for(x))
    raise TypeError(f"x: no backend for arrays of type {type(x).__name__}")
