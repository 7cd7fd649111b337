"""A fake multi-device CuPy for tests without a GPU.

CuPy allocates on the *current* device, and a launch needs its arrays on that device.  The
fake arrays here say "cupy" to the dispatch (their class's module is ``cupy._fake``), carry
the device they were made on, and count their device-to-host copies (``get``); the fake
backend runs the NumPy stages, asserting that every array it is handed lives on the current
device.  ``fake_cupy_module`` stands in for the ``cupy`` module where the library imports it
(the finiteness check's packing and its capture test).
"""
import types

import numpy as np
import pytest

from cupy_abn import _dispatch
from cupy_abn._numpy_backend import NumpyBackend

_current = [0]   # the fake CUDA current device


class FakeDevice:
    """``cupy.cuda.Device``: a context manager that makes its id current."""

    def __init__(self, i):
        self.id = i
        self._saved = []

    def __enter__(self):
        self._saved.append(_current[0])
        _current[0] = self.id
        return self

    def __exit__(self, *exc):
        _current[0] = self._saved.pop()


class _Flags:
    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous
        self.writeable = a.flags.writeable


class FakeArray:
    """A NumPy array that lives on a fake GPU (its ``device``)."""

    def __init__(self, arr, device=None):
        self.arr = arr
        self.device = FakeDevice(_current[0] if device is None else device)
        allocated.append(self)

    shape = property(lambda self: self.arr.shape)
    dtype = property(lambda self: self.arr.dtype)
    ndim = property(lambda self: self.arr.ndim)
    size = property(lambda self: self.arr.size)
    strides = property(lambda self: self.arr.strides)
    flags = property(lambda self: _Flags(self.arr))

    def _view(self, arr):   # a view stays on its array's device
        return FakeArray(arr, self.device.id)

    def reshape(self, shape):
        assert self.arr.flags.c_contiguous, "a copying reshape would allocate"
        return self._view(self.arr.reshape(shape))

    def transpose(self, axes):
        return self._view(self.arr.transpose(axes))

    def astype(self, dtype, copy=True):
        return FakeArray(self.arr.astype(dtype))   # a new array: on the current device

    def __setitem__(self, key, value):
        _on_current(self, value)
        self.arr[key] = value.arr if isinstance(value, FakeArray) else value

    def ravel(self):
        return self.reshape((self.size,))

    def get(self):
        transfers.append(self)
        return self.arr.copy()


FakeArray.__module__ = "cupy._fake"   # what array_family reads
allocated = []   # every FakeArray made
transfers = []   # every FakeArray copied to the host


def _on_current(*arrays):
    for a in arrays:
        if isinstance(a, FakeArray):
            assert a.device.id == _current[0], (
                f"an array on GPU {a.device.id} used while GPU {_current[0]} is current")


def _unwrap(v):
    if isinstance(v, FakeArray):
        _on_current(v)
        return v.arr
    if isinstance(v, (tuple, list)):
        return type(v)(_unwrap(u) for u in v)
    return v


def _wrap(v, given):
    if isinstance(v, np.ndarray):
        for g in given:   # the stages returned an input (or its memory): the same device
            if isinstance(g, FakeArray) and g.arr is v:
                return g
        return FakeArray(v)
    if isinstance(v, tuple):
        return tuple(_wrap(u, given) for u in v)
    return v


class FakeBackend:
    """The NumPy stages on fake device arrays: allocations on the current device."""

    def __init__(self):
        self.np = NumpyBackend()

    def ascontiguous(self, a):
        _on_current(a)
        return a if a.arr.flags.c_contiguous else FakeArray(np.ascontiguousarray(a.arr))

    def copy_into(self, dst, src):
        _on_current(dst, src)
        dst.arr[...] = src.arr

    def __getattr__(self, name):
        fn = getattr(self.np, name)

        def call(*args, **kw):
            given = list(args) + list(kw.values())
            out = fn(*_unwrap(list(args)), **{k: _unwrap(v) for k, v in kw.items()})
            return _wrap(out, given)
        return call


def _on(device, a):
    with FakeDevice(device):
        return FakeArray(np.array(a))


def fake_cupy_module(capturing: bool = False):
    """The parts of the ``cupy`` module the library calls outside the backend."""
    def concatenate(arrays):
        _on_current(*arrays)
        return FakeArray(np.concatenate([a.arr for a in arrays]))

    def full(shape, value, dtype):
        return FakeArray(np.full(shape, value, dtype))

    stream = types.SimpleNamespace(is_capturing=lambda: capturing)
    cuda = types.SimpleNamespace(get_current_stream=lambda: stream)
    return types.SimpleNamespace(concatenate=concatenate, full=full, cuda=cuda)


@pytest.fixture
def two_gpus(monkeypatch):
    """Two fake GPUs, GPU 0 current."""
    monkeypatch.setattr(_dispatch, "_CUPY", {0: FakeBackend(), 1: FakeBackend()})
    _current[0] = 0
    allocated.clear()
    transfers.clear()
    yield
    _current[0] = 0
