"""The accumulation dtype, in one place for the backends, the kernels' variants and the API."""
from __future__ import annotations

import numpy as np

_WIDE = np.dtype(np.float64)
_NARROW = np.dtype(np.float32)


def accum_dtype(dtype, param_dtype=None) -> np.dtype:
    """float64 when x or the parameters are float64, float32 otherwise (docs/math.md,
    "Precision"; Chainer accumulates in the wider of the two, float16 never)."""
    if np.dtype(dtype) == _WIDE or (param_dtype is not None and np.dtype(param_dtype) == _WIDE):
        return _WIDE
    return _NARROW
