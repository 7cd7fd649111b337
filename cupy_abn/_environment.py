"""Where a demo or benchmark ran: the device and the versions that shape its numbers."""
from __future__ import annotations

import os
import platform
import sys
from typing import Any, Dict


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device: all mean "run on the CPU"
        return False


def use_gpu(choice: str) -> bool:
    """Resolve a ``--device`` option: "auto" (a GPU when CuPy sees one), "cpu" or "gpu".

    Raises
    ------
    SystemExit
        "gpu" without CuPy (saying how to install it) or without a CUDA device.
    """
    if choice not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device: expected 'auto', 'cpu' or 'gpu', got {choice!r}")
    if choice == "cpu":
        return False
    found = gpu_available()
    if choice == "gpu" and not found:
        try:
            import cupy  # noqa: F401
        except ImportError as err:
            raise SystemExit(f"--device gpu: CuPy is not installed ({err}); install it with the "
                             "extra of your CUDA version, from the repository: "
                             'pip install ".[cuda12]" (or ".[cuda13]")') from None
        raise SystemExit("--device gpu: CuPy sees no CUDA device")
    return found


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(gpu: bool) -> Dict[str, Any]:
    """Device name and library versions, for the JSON results."""
    import numpy
    info: Dict[str, Any] = {"python": sys.version.split()[0], "numpy": numpy.__version__}
    try:
        from . import chainer as _abn_chainer  # noqa: F401  (NumPy 2 step before Chainer)
        import chainer
        info["chainer"] = chainer.__version__
    except Exception:
        pass
    if gpu:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info.update(device=props["name"].decode() if isinstance(props["name"], bytes)
                    else str(props["name"]), cupy=cupy.__version__,
                    cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(),
                    cuda_driver=cupy.cuda.runtime.driverGetVersion())
    else:
        info.update(device=f"CPU: {_cpu_name()} ({os.cpu_count()} cores)")
    return info
