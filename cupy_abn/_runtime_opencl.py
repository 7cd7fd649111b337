"""The OpenCL runtime of the kernel backend (pyopencl): runs the CUDA kernel sources on a CPU
through PoCL, or under Oclgrind, so that the launch logic of ``_kernel_backend`` is tested
without a GPU.

The context and queue are those of the array; programs are built once per (context, kernel
family, source, defines), under a lock, so that threads asking for the same variant at once
share one build (``COMPILES`` counts the builds).  A failed build raises
:class:`~cupy_abn._errors.KernelCompileError` naming the variant, and caches nothing.
Launches take a lock too: an OpenCL kernel object's arguments are set and enqueued in two
calls, and ``clSetKernelArg`` is not thread-safe on a shared kernel.  A CUDA grid of ``grid``
blocks of ``block`` threads is the global size ``grid * block`` with local size ``block``.
"""
from __future__ import annotations

import collections
import threading
from typing import Dict, Tuple

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from . import _kernel_source as K
from ._errors import KernelCompileError

BUILD_OPTIONS = ("-cl-fp32-correctly-rounded-divide-sqrt",)
_KERNELS: Dict[Tuple, "cl.Kernel"] = {}
_LOCK = threading.Lock()          # builds: one per variant, even when threads race for it
_LAUNCH_LOCK = threading.Lock()   # set the arguments and enqueue as one step
# (family, defines) -> programs built in this process (tests check that each is built once)
COMPILES: "collections.Counter[Tuple[str, Tuple[str, ...]]]" = collections.Counter()


def build_program(context: "cl.Context", source: str, options) -> "cl.Program":
    """Build one program (a separate function, so that a test can make it fail)."""
    return cl.Program(context, source).build(options=list(options))


class OpenCLRuntime:
    target = "opencl"

    def __init__(self, queue: "cl.CommandQueue"):
        self.queue = queue
        self.context = queue.context
        dev = queue.device
        self.multiprocessors = int(dev.max_compute_units)
        self.max_block = int(dev.max_work_group_size)

    def empty(self, shape, dtype):
        return cla.empty(self.queue, shape, np.dtype(dtype))

    def zeros(self, shape, dtype):
        return cla.zeros(self.queue, shape, np.dtype(dtype))

    def empty_like(self, a):
        return cla.empty(self.queue, a.shape, a.dtype)

    def ascontiguous(self, a):
        if a.flags.c_contiguous and a.offset == 0:
            return a
        return cla.to_device(self.queue, np.ascontiguousarray(self._host_view(a)[1]))

    def copy_into(self, dst, src) -> None:
        """``dst[...] = src`` for any views ``dst`` and ``src`` (strided, offset).
        pyopencl assigns only between equal strides: a strided ``dst`` goes through the host
        (the bytes it spans, read, patched and written back on the same in-order queue)."""
        src = self.ascontiguous(src)
        if dst.flags.c_contiguous:
            # A byte copy: pyopencl's own assignment runs an elementwise kernel, which has no
            # float16 type ("unable to map dtype 'float16'").
            if dst.nbytes and not (dst.base_data == src.base_data and dst.offset == src.offset):
                cl.enqueue_copy(self.queue, dst.base_data, src.base_data, byte_count=dst.nbytes,
                                src_offset=src.offset, dst_offset=dst.offset)
            return
        (raw, start), view = self._host_view(dst)
        view[...] = src.get()
        cl.enqueue_copy(self.queue, dst.base_data, raw, dst_offset=start)

    def _host_view(self, a):
        """((bytes a spans, their offset in a's buffer), a's view of those bytes on the host)."""
        extent = [(n - 1) * s for n, s in zip(a.shape, a.strides)] if a.size else [0]
        lo = sum(min(0, e) for e in extent)
        hi = sum(max(0, e) for e in extent) + a.dtype.itemsize
        raw = np.empty(hi - lo, np.uint8)
        start = a.offset + lo
        cl.enqueue_copy(self.queue, raw, a.base_data, src_offset=start)
        view = np.ndarray(a.shape, a.dtype, buffer=raw, offset=-lo, strides=a.strides)
        return (raw, start), view

    def aligned(self, a, nbytes: int) -> bool:
        """Whether ``a`` starts on an ``nbytes`` boundary of its buffer (OpenCL buffers are
        aligned far beyond 16 bytes, CL_DEVICE_MEM_BASE_ADDR_ALIGN)."""
        return a.offset % nbytes == 0

    def occupancy(self, fn, block: int) -> int:
        """Blocks of ``block`` work-items resident per compute unit, by the thread limit of
        a CUDA multiprocessor (2048): a CPU has no occupancy of its own, and the launch logic
        under test should size grids as it does on a GPU."""
        return max(1, 2048 // int(block))

    def function(self, family: str, entry: str, defines: Tuple[str, ...]):
        src = K.source(family, "opencl")
        key = (self.context.int_ptr, family, src, defines, entry)
        with _LOCK:
            kern = _KERNELS.get(key)
            if kern is None:
                try:
                    prg = build_program(self.context, src, defines + BUILD_OPTIONS)
                    kernels = {name: cl.Kernel(prg, name) for name in K.FILES[family].entries}
                except Exception as err:  # noqa: BLE001 - any build failure: name the variant
                    raise KernelCompileError("OpenCL", family, entry, defines,
                                             f"{type(err).__name__}: {err}") from err
                COMPILES[(family, defines)] += 1
                for name, k in kernels.items():
                    _KERNELS[key[:-1] + (name,)] = k
                kern = _KERNELS[key]
        return kern

    def launch(self, fn, grid: int, block: int, args) -> None:
        cl_args = [a.data if isinstance(a, cla.Array) else a for a in args]
        with _LAUNCH_LOCK:
            fn(self.queue, (int(grid) * int(block),), (int(block),), *cl_args)


def runtime_for(x) -> OpenCLRuntime:
    return OpenCLRuntime(x.queue)
