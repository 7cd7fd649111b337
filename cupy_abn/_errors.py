"""Errors raised by the kernel runtimes."""
from __future__ import annotations

from typing import Sequence


class KernelCompileError(RuntimeError):
    """A kernel variant failed to compile.  Raised by the runtime when the variant is first
    asked for, with the family, the entry point and the defines that name the variant, and
    the compiler's message (and log)."""

    def __init__(self, runtime: str, family: str, entry: str, defines: Sequence[str],
                 message: str):
        self.family, self.entry, self.defines = family, entry, tuple(defines)
        super().__init__(f"{runtime}: compiling kernel family {family!r} (entry {entry!r}) "
                         f"with {' '.join(defines) or 'no defines'} failed: {message}")


class CudaSetupError(RuntimeError):
    """CuPy's CUDA setup cannot build the kernels on a device: no NVRTC loads, or the device
    is older than the NVRTC in use compiles for (:class:`UnsupportedDeviceError`).  Raised once
    per device, when the CUDA runtime of that device is created (the first call on it), before
    anything is compiled or written."""


class UnsupportedDeviceError(CudaSetupError):
    """A CUDA device below the minimum compute capability of the NVRTC in use (NVRTC 12:
    sm_50, NVRTC 13: sm_75; see ``docs/install.md``).  The message names the device, its compute
    capability, the NVRTC and CUDA majors, the minimum and what to install instead."""

    def __init__(self, message: str, *, device_id: int, device_name: str, arch: int,
                 nvrtc_major: int, cuda_major: int, minimum: int):
        self.device_id, self.device_name, self.arch = device_id, device_name, arch
        self.nvrtc_major, self.cuda_major, self.minimum = nvrtc_major, cuda_major, minimum
        super().__init__(message)


class NvrtcMismatchWarning(RuntimeWarning):
    """CuPy loaded an NVRTC of another CUDA major than its own (``cupy-cuda12x`` with NVRTC 13:
    CuPy 14 finds NVRTC through ``cuda.pathfinder``, which prefers ``libnvrtc.so.13`` whenever
    the ``nvidia-cuda-nvrtc`` wheel is installed or the library is already loaded).  The
    kernels then compile with that NVRTC and for its architectures."""
