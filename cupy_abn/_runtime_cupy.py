"""The CUDA runtime of the kernel backend: NVRTC compiles through ``cupy.RawModule``.

Modules are built once per (device, kernel family, source, defines) and kept for the process.
"""
from __future__ import annotations

import threading
from typing import Dict, Tuple

import cupy

from . import _kernel_source as K

_MODULES: Dict[Tuple, "cupy.RawModule"] = {}
_RUNTIMES: Dict[int, "CupyRuntime"] = {}
_LOCK = threading.Lock()


class CupyRuntime:
    target = "cuda"

    def __init__(self, device_id: int):
        self.device_id = device_id
        attrs = cupy.cuda.Device(device_id).attributes
        self.multiprocessors = int(attrs["MultiProcessorCount"])
        self.max_block = int(attrs["MaxThreadsPerBlock"])

    # allocation: on this runtime's device
    def empty(self, shape, dtype):
        with cupy.cuda.Device(self.device_id):
            return cupy.empty(shape, dtype)

    def zeros(self, shape, dtype):
        with cupy.cuda.Device(self.device_id):
            return cupy.zeros(shape, dtype)

    def empty_like(self, a):
        with cupy.cuda.Device(self.device_id):
            return cupy.empty_like(a)

    def ascontiguous(self, a):
        with cupy.cuda.Device(self.device_id):
            return cupy.ascontiguousarray(a)

    def function(self, family: str, entry: str, defines: Tuple[str, ...]):
        src = K.source(family, "cuda")
        key = (self.device_id, family, src, defines)
        with _LOCK:
            mod = _MODULES.get(key)
            if mod is None:
                with cupy.cuda.Device(self.device_id):
                    mod = cupy.RawModule(code=src, options=("--std=c++11",) + defines)
                _MODULES[key] = mod
        with cupy.cuda.Device(self.device_id):
            return mod.get_function(entry)

    def launch(self, fn, grid: int, block: int, args) -> None:
        with cupy.cuda.Device(self.device_id):
            fn((int(grid),), (int(block),), tuple(args))


def runtime_for(x) -> CupyRuntime:
    dev = x.device.id
    rt = _RUNTIMES.get(dev)
    if rt is None:
        rt = _RUNTIMES.setdefault(dev, CupyRuntime(dev))
    return rt
