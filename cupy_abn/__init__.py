"""cupy-abn: In-Place Activated BatchNorm for CuPy, NumPy and Chainer.

The array API is :func:`abn_forward` / :func:`abn_backward`; Chainer layers live in
:mod:`cupy_abn.chainer`.
"""
from ._activations import ACTIVATIONS
from ._errors import CudaSetupError, NvrtcMismatchWarning, UnsupportedDeviceError
from ._finite import (GraphCaptureError, NonFiniteError, SaturatedActivationError,
                      check_finite_enabled, set_check_finite)
from ._state import MODES, SavedState
from .api import abn_backward, abn_forward

__all__ = ["abn_forward", "abn_backward", "SavedState", "ACTIVATIONS", "MODES",
           "set_check_finite", "check_finite_enabled", "NonFiniteError",
           "SaturatedActivationError", "GraphCaptureError", "CudaSetupError",
           "UnsupportedDeviceError", "NvrtcMismatchWarning"]
__version__ = "0.1.0"
