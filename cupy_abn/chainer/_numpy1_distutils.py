"""The one step Chainer 7.8.1 needs to import under NumPy 1 with a recent setuptools.

``chainer/_environment_check.py`` imports ``numpy.distutils.system_info`` (used on macOS
only).  Under NumPy 1 on Python < 3.12 that imports ``distutils.msvccompiler`` and setuptools.
Setuptools' import hook (``distutils-precedence.pth``) and setuptools itself substitute
setuptools' own copy of distutils unless ``SETUPTOOLS_USE_DISTUTILS=stdlib``, and recent copies
(setuptools >= 74) have no ``msvccompiler``, so the import fails.  :func:`apply` makes the
choice that environment variable makes, before distutils is first imported: it sets it to
``stdlib`` for this process and its children and removes the hook.  It does nothing under
NumPy 2, on Python >= 3.12 (no standard library distutils), when distutils is already imported,
when the variable is set, or when setuptools' copy still has ``msvccompiler``.
"""
from __future__ import annotations

import importlib.util
import os
import sys

_VAR = "SETUPTOOLS_USE_DISTUTILS"


def _setuptools_distutils_lacks_msvccompiler() -> bool:
    spec = importlib.util.find_spec("setuptools")   # locates without importing setuptools
    if spec is None or spec.origin is None:
        return False
    bundled = os.path.join(os.path.dirname(spec.origin), "_distutils")
    return (os.path.isdir(bundled)
            and not os.path.exists(os.path.join(bundled, "msvccompiler.py")))


def apply() -> bool:
    """Use the standard library's distutils where setuptools' copy would break NumPy 1's
    ``numpy.distutils``; return whether anything was changed."""
    import numpy as np
    if (int(np.__version__.split(".")[0]) >= 2 or sys.version_info >= (3, 12)
            or "distutils" in sys.modules or _VAR in os.environ
            or not _setuptools_distutils_lacks_msvccompiler()):
        return False
    os.environ[_VAR] = "stdlib"
    try:
        import _distutils_hack
        _distutils_hack.remove_shim()
    except ImportError:   # no hook installed: the variable alone decides
        pass
    return True
