"""The CUDA runtime of the kernel backend: NVRTC compiles through ``cupy.RawModule``.

One runtime per device.  Its methods assume that the current CUDA device is its device: the
API enters ``cupy.cuda.Device`` once per call (``_dispatch.device_scope``) rather than every
allocation and launch entering it again.  Compiling is the exception: it happens once per
variant and enters the device itself, so that a kernel is built and loaded where it will run.

The final ``RawKernel`` of every (family, entry, defines) is kept by the runtime of its device,
as CuPy's ``memoize(for_each_device=True)`` users keep theirs: the hot path is one dict lookup,
with no lock, no source text in the key and no new ``RawKernel`` per launch.

Creating the runtime of a device (once per device) checks CuPy's CUDA setup against it
(:func:`check_device`): NVRTC loads; the device is not older than that NVRTC compiles for
(NVRTC 12: sm_50, NVRTC 13: sm_75), else :class:`~cupy_abn._errors.UnsupportedDeviceError`;
and NVRTC's major is CuPy's CUDA major, else a
:class:`~cupy_abn._errors.NvrtcMismatchWarning` (CuPy 14 for CUDA 12 loads NVRTC 13 whenever
the ``nvidia-cuda-nvrtc`` wheel is installed).
"""
from __future__ import annotations

import threading
import warnings
from typing import Any, Dict, Optional, Tuple

import cupy

from . import _kernel_source as K
from . import _nvrtc
from ._errors import (CudaSetupError, KernelCompileError, NvrtcMismatchWarning,
                      UnsupportedDeviceError)

DEFAULT_OPTIONS = ("--std=c++11",)

# (device, family, defines) -> RawModule; a module holds every entry of its family.
_MODULES: Dict[Tuple, "cupy.RawModule"] = {}
_RUNTIMES: Dict[int, "CupyRuntime"] = {}
_COMPILE_LOCK = threading.Lock()   # taken on a cache miss only: one build per variant


def _cc(arch: int) -> str:
    """75 -> "7.5 (sm_75)"."""
    return f"{arch // 10}.{arch % 10} (sm_{arch})"


def _device_name(device_id: int) -> str:
    try:
        name = cupy.cuda.runtime.getDeviceProperties(device_id)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - the name is for the message only
        return "name unknown"


def _install_for(target: int, cuda_major: int, nv_major: int) -> str:
    """The pip commands that leave CuPy and NVRTC of CUDA ``target`` (and no newer NVRTC
    wheel) where CuPy for ``cuda_major`` loaded NVRTC ``nv_major``."""
    drop = ([f"cupy-cuda{cuda_major}x"] if cuda_major != target else []) + \
        [_nvrtc.NVRTC_WHEELS[m] for m in sorted(_nvrtc.NVRTC_WHEELS)
         if m > target and m >= nv_major]
    wheel = _nvrtc.NVRTC_WHEELS.get(target, f"the NVRTC of CUDA {target}")
    add = ([f"'cupy-cuda{target}x>=13'"] if cuda_major != target else []) + \
        [f"'{wheel}=={target}.*'"]
    steps = ([f"pip uninstall {' '.join(drop)}"] if drop else []) + [f"pip install {' '.join(add)}"]
    return f"{'; '.join(steps)} (the cuda{target} extra of cupy-abn: pip install '.[cuda{target}]')"


def _why(cuda_major: int, version: Tuple[int, ...]) -> str:
    return (f"CuPy for CUDA {cuda_major} (cupy-cuda{cuda_major}x) loaded NVRTC "
            f"{version[0]}.{version[1]}: CuPy 14 finds NVRTC through cuda.pathfinder, which takes "
            f"an NVRTC already loaded in the process, else the newest in site-packages "
            f"(libnvrtc.so.13 before libnvrtc.so.12), before the system's")


def check_device(device_id: int) -> None:
    """Check CuPy's CUDA setup against device ``device_id``; once per device (the runtime).

    Raises
    ------
    CudaSetupError
        CuPy loads no NVRTC.
    UnsupportedDeviceError
        The device's compute capability is below the oldest that the NVRTC CuPy loaded
        compiles for (``cupy_abn._nvrtc.min_arch``): the message names the device, its
        compute capability, the NVRTC and CUDA majors, the minimum and what to install.

    Warns
    -----
    NvrtcMismatchWarning
        NVRTC's major is not CuPy's CUDA major (``runtimeGetVersion``).
    """
    cuda_major = int(cupy.cuda.runtime.runtimeGetVersion()) // 1000
    nvrtc = cupy.cuda.nvrtc
    try:
        version = tuple(int(v) for v in nvrtc.getVersion())[:2]
    except Exception as err:  # noqa: BLE001 - CuPy's loader: name what to install
        raise CudaSetupError(
            f"CUDA device {device_id}: CuPy for CUDA {cuda_major} loads no NVRTC, which "
            f"compiles cupy-abn's kernels ({type(err).__name__}: {err}); install it: "
            f"{_install_for(cuda_major, cuda_major, cuda_major)}, or a CUDA {cuda_major} "
            f"toolkit") from err
    try:
        supported: Optional[Tuple[int, ...]] = tuple(int(a) for a in nvrtc.getSupportedArchs())
    except Exception:  # noqa: BLE001 - an NVRTC without the call: the table
        supported = None
    nv_major = version[0]
    minimum = _nvrtc.min_arch(nv_major, supported)
    arch = int(cupy.cuda.Device(device_id).compute_capability)
    if arch < minimum:
        name = _device_name(device_id)
        fits = [m for m in sorted(_nvrtc.NVRTC_MIN_ARCH, reverse=True)
                if _nvrtc.min_arch(m) <= arch]
        if fits:
            instead = (f"NVRTC {fits[0]} compiles for sm_{_nvrtc.min_arch(fits[0])} and newer: "
                       f"install CuPy and NVRTC for CUDA {fits[0]} instead: "
                       f"{_install_for(fits[0], cuda_major, nv_major)}")
        else:
            first = min(_nvrtc.NVRTC_MIN_ARCH)
            instead = (f"no CUDA major that cupy-abn supports compiles for it (the oldest "
                       f"GPUs supported: sm_{_nvrtc.min_arch(first)}, with CUDA {first})")
        why = f"  ({_why(cuda_major, version)}.)" if nv_major != cuda_major else ""
        raise UnsupportedDeviceError(
            f"CUDA device {device_id} ({name}) has compute capability {_cc(arch)}, below "
            f"sm_{minimum}, the oldest that NVRTC {version[0]}.{version[1]} (CUDA {nv_major}, "
            f"the NVRTC CuPy loaded) compiles for: cupy-abn cannot build its kernels for it.  "
            f"{instead}.{why}  See 'Supported GPUs' in docs/install.md.",
            device_id=device_id, device_name=name, arch=arch, nvrtc_major=nv_major,
            cuda_major=cuda_major, minimum=minimum)
    if nv_major != cuda_major:
        fix = _install_for(cuda_major, cuda_major, nv_major)
        if nv_major > cuda_major:
            fix += f", or use CuPy for CUDA {nv_major} (pip install '.[cuda{nv_major}]')"
        warnings.warn(
            f"CUDA device {device_id}: {_why(cuda_major, version)}.  The kernels compile with "
            f"NVRTC {nv_major}, for sm_{minimum} and newer.  Keep CuPy and NVRTC of one CUDA "
            f"major: {fix}.", NvrtcMismatchWarning, stacklevel=3)


def compile_options() -> Tuple[str, ...]:
    """The user options passed to ``RawModule`` before a variant's defines.

    ``cupy_abn._nvrtc.RUNTIME_OPTIONS`` when that module defines it (the options the offline
    NVRTC checks also use), else ``("--std=c++11",)``.
    """
    return tuple(getattr(_nvrtc, "RUNTIME_OPTIONS", DEFAULT_OPTIONS))


class CupyRuntime:
    """Compile, allocate and launch on one CUDA device (see ``_kernel_backend``).

    Parameters
    ----------
    device_id : int
        The CUDA device this runtime serves.

    Raises
    ------
    CudaSetupError, UnsupportedDeviceError
        From :func:`check_device`, when CuPy's CUDA setup cannot build the kernels there.
    """

    target = "cuda"

    def __init__(self, device_id: int):
        check_device(device_id)   # once per device: the runtime is kept (runtime_for)
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
