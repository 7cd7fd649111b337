"""Chainer layers of cupy-abn.

Importing this package first makes Chainer 7.8.1 importable under NumPy 2
(:mod:`cupy_abn.chainer._numpy2_compat`), under NumPy 1 with a recent setuptools
(:mod:`cupy_abn.chainer._numpy1_distutils`) and where ``numpy.distutils`` or ``pkg_resources``
is not installed (:mod:`cupy_abn.chainer._standins`), then imports Chainer.

Links: :class:`ABN`, :class:`InPlaceABN`, :class:`InPlaceABNSync`.  Functions:
:func:`abn`, :func:`inplace_abn`, :func:`inplace_abn_v1`, :func:`inplace_abn_sync`.
"""
from . import _numpy1_distutils, _numpy2_compat, _standins

_numpy2_compat.apply()
_numpy1_distutils.apply()
_standins.apply()

from ._graph import InPlaceFallbackWarning  # noqa: E402
from .functions import ABNFunction, abn, inplace_abn, inplace_abn_v1  # noqa: E402
from .links import ABN, InPlaceABN, NonInvertibleActivationError  # noqa: E402
from .sync import InPlaceABNSync, inplace_abn_sync  # noqa: E402

__all__ = ["ABN", "InPlaceABN", "InPlaceABNSync", "ABNFunction", "abn", "inplace_abn",
           "inplace_abn_v1", "inplace_abn_sync", "InPlaceFallbackWarning",
           "NonInvertibleActivationError"]
