"""The array backends a test can run the public API on: NumPy, the kernel backend on PoCL
(pyopencl arrays) where an OpenCL CPU device is installed, and on CuPy where a GPU is."""
from __future__ import annotations

import numpy as np
import pytest

# The reasons a test may skip under tox (tests/conftest.py): a missing CUDA device, and
# nothing else.  Every GPU test's skip reason starts with one of these.
NO_GPU = "no CUDA GPU"
NO_TWO_GPUS = "needs two CUDA GPUs"
GPU_SKIP_REASONS = (NO_GPU, NO_TWO_GPUS)


def pocl_queue():
    """A command queue on the first PoCL device, or None."""
    try:
        import pyopencl as cl
        for plat in cl.get_platforms():
            if "Portable Computing Language" in plat.name:
                devs = plat.get_devices()
                if devs:
                    return cl.CommandQueue(cl.Context(devs[:1]))
    except Exception:  # noqa: BLE001 - no pyopencl, no platform: no PoCL queue
        pass
    return None


def pocl_queue_or_skip():
    """The PoCL queue, or a skip naming what to install (tox turns it into a failure)."""
    q = pocl_queue()
    if q is None:
        pytest.skip("no PoCL OpenCL device (pip install pocl-binary-distribution)")
    return q


def gpu_count() -> int:
    """CUDA devices CuPy sees (0 without CuPy or a driver)."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device
        return 0


def api_backends():
    """pytest params of (to_device, to_host): NumPy, then the kernels on PoCL and on a GPU
    where present (the GPU ones marked ``gpu``)."""
    out = [pytest.param((np.asarray, np.asarray), id="numpy")]
    queue = pocl_queue()
    if queue is not None:
        import pyopencl.array as cla
        out.append(pytest.param(
            (lambda a: cla.to_device(queue, np.array(a, order="C")), lambda a: a.get()),
            id="kernels-pocl"))
    if gpu_count():
        import cupy
        out.append(pytest.param((cupy.asarray, cupy.asnumpy), id="kernels-cupy",
                                marks=pytest.mark.gpu))
    return out
