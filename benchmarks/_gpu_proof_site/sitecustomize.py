"""Start-up step of the GPU proof's child processes (on ``PYTHONPATH`` there only).

Chainer 7.8.1 imports ``numpy.distutils.system_info`` at import time (to warn about macOS's
Accelerate).  NumPy 2 ships no ``numpy.distutils`` on Python >= 3.12, the GPU machine's
Python, so Chainer would not import there at all.  This serves a stand-in module for exactly
those two names, and only when the real ones cannot be found: the finder sits last on
``sys.meta_path``, so an installed ``numpy.distutils`` always wins.  Nothing is imported
here; the stand-in's ``get_info`` reports no BLAS information, which only the macOS check
reads.
"""
import importlib.abc
import importlib.machinery
import sys

_NAMES = ("numpy.distutils", "numpy.distutils.system_info")


class _Stub(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.get_info = lambda *args, **kwargs: {}
        module.__doc__ = "stand-in from benchmarks/_gpu_proof_site (no numpy.distutils here)"


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _NAMES:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Stub(),
                                              is_package=fullname == "numpy.distutils")


sys.meta_path.append(_Finder())
