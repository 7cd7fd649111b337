"""The one step Chainer 7.8.1 needs to import and run under NumPy 2.

Chainer reads ``numpy.sctypes`` (removed in NumPy 2.0) at import time
(``chainer/functions/array/as_strided.py``: integer index dtypes by size, and float dtypes in
its backward).  Nothing else Chainer or ChainerMN use was removed, so restoring that one
attribute, with NumPy 1's content for the kinds Chainer reads, is enough.  It is applied by
``import cupy_abn.chainer`` before Chainer is imported; code that imports Chainer under NumPy 2
should import ``cupy_abn.chainer`` (or call :func:`apply`) first.  Under NumPy 1 it does nothing.
"""
from __future__ import annotations

import numpy as np


def apply() -> bool:
    """Restore ``numpy.sctypes`` if NumPy lacks it; return whether anything was changed."""
    if hasattr(np, "sctypes"):
        return False
    # setattr: NumPy 2's type stubs (rightly) have no such attribute
    setattr(np, "sctypes", {
        "int": [np.int8, np.int16, np.int32, np.int64],
        "uint": [np.uint8, np.uint16, np.uint32, np.uint64],
        "float": [np.float16, np.float32, np.float64, np.longdouble],
        "complex": [np.complex64, np.complex128, np.clongdouble],
        "others": [bool, object, bytes, str, np.void],
    })
    return True
