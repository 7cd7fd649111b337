"""The CUDA runtime of the kernel backend: NVRTC compiles through ``cupy.RawModule``.

One runtime per device.  Its methods assume that the current CUDA device is its device: the
API enters ``cupy.cuda.Device`` once per call (``_dispatch.device_scope``) rather than every
allocation and launch entering it again.  Compiling is the exception: it happens once per
variant and enters the device itself, so that a kernel is built and loaded where it will run.

The final ``RawKernel`` of every (family, entry, defines) is kept by the runtime of its device,
as CuPy's ``memoize(for_each_device=True)`` users keep theirs: the hot path is one dict lookup,
with no lock, no source text in the key and no new ``RawKernel`` per launch.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, Tuple

import cupy

from . import _kernel_source as K
from ._errors import KernelCompileError

DEFAULT_OPTIONS = ("--std=c++11",)

# (device, family, defines) -> RawModule; a module holds every entry of its family.
_MODULES: Dict[Tuple, "cupy.RawModule"] = {}
_RUNTIMES: Dict[int, "CupyRuntime"] = {}
_COMPILE_LOCK = threading.Lock()   # taken on a cache miss only: one build per variant


def compile_options() -> Tuple[str, ...]:
    """The user options passed to ``RawModule`` before a variant's defines.

    ``cupy_abn._nvrtc.RUNTIME_OPTIONS`` when that module defines it (the options the offline
    NVRTC checks also use), else ``("--std=c++11",)``.
    """
    from . import _nvrtc
    return tuple(getattr(_nvrtc, "RUNTIME_OPTIONS", DEFAULT_OPTIONS))


class CupyRuntime:
    """Compile, allocate and launch on one CUDA device (see ``_kernel_backend``).

    Parameters
    ----------
    device_id : int
        The CUDA device this runtime serves.
    """

    target = "cuda"

    def __init__(self, device_id: int):
        self.device_id = device_id
        attrs = cupy.cuda.Device(device_id).attributes
        self.multiprocessors = int(attrs["MultiProcessorCount"])
        self.max_block = int(attrs["MaxThreadsPerBlock"])
        self._kernels: Dict[Tuple, Any] = {}      # (family, entry, defines) -> RawKernel
        self._occupancy: Dict[Tuple, int] = {}    # (RawKernel, block) -> blocks per SM

    # allocation: on the current device, which the API call has set to this one
    def empty(self, shape, dtype):
        """An uninitialized array."""
        return cupy.empty(shape, dtype)

    def zeros(self, shape, dtype):
        """A zero-filled array."""
        return cupy.zeros(shape, dtype)

    def empty_like(self, a):
        """An uninitialized array like ``a``."""
        return cupy.empty_like(a)

    def ascontiguous(self, a):
        """``a`` itself when C-contiguous, else a C-contiguous copy."""
        return cupy.ascontiguousarray(a)

    def copy_into(self, dst, src) -> None:
        """``dst[...] = src`` through any view ``dst``."""
        dst[...] = src

    def aligned(self, a: Any, nbytes: int) -> bool:
        """Whether the data of ``a`` starts on an ``nbytes`` boundary (vector loads)."""
        return a.data.ptr % nbytes == 0

    def function(self, family: str, entry: str, defines: Tuple[str, ...]):
        """The compiled kernel ``entry`` of ``family`` with ``defines``.

        Compiles (and loads on this device) on first use, so that a compile error is raised
        before anything is written.

        Returns
        -------
        cupy.RawKernel
            The same object on every call with the same arguments.
        """
        fn = self._kernels.get((family, entry, defines))
        if fn is None:
            fn = self._build(family, entry, defines)
        return fn

    def _build(self, family: str, entry: str, defines: Tuple[str, ...]):
        key = (family, entry, defines)
        with _COMPILE_LOCK, cupy.cuda.Device(self.device_id):
            fn = self._kernels.get(key)
            if fn is None:
                mkey = (self.device_id, family, defines)
                mod = _MODULES.get(mkey)
                try:
                    if mod is None:
                        mod = cupy.RawModule(code=K.source(family, "cuda"),
                                             options=compile_options() + tuple(defines))
                    # get_function compiles the module and loads the kernel on this device.
                    fn = mod.get_function(entry)
                except Exception as err:  # noqa: BLE001 - NVRTC or load error: name the variant
                    raise KernelCompileError("CUDA", family, entry, defines,
                                             f"{type(err).__name__}: {err}") from err
                _MODULES[mkey] = mod
                self._kernels[key] = fn
        return fn

    def occupancy(self, fn: Any, block: int) -> int:
        """Blocks of ``block`` threads of ``fn`` that one multiprocessor holds at once.

        The driver's answer for the compiled kernel (registers, static shared memory), with no
        dynamic shared memory; asked once per (kernel, block).
        """
        key = (fn, block)
        n = self._occupancy.get(key)
        if n is None:
            with cupy.cuda.Device(self.device_id):
                n = int(cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
                    fn.kernel.ptr, int(block), 0))
            self._occupancy[key] = n
        return n

    def launch(self, fn, grid: int, block: int, args) -> None:
        """Launch ``grid`` blocks of ``block`` threads on the current stream."""
        fn((int(grid),), (int(block),), tuple(args))


def runtime_for(x) -> CupyRuntime:
    """The runtime of the device that holds ``x``."""
    dev = x.device.id
    rt = _RUNTIMES.get(dev)
    if rt is None:
        rt = _RUNTIMES.setdefault(dev, CupyRuntime(dev))
    return rt
