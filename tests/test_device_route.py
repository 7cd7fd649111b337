"""Every allocation of a call lands on x's GPU, whichever GPU is current: a fake multi-device
CuPy, no GPU needed.

CuPy allocates on the *current* device.  The API enters x's device once per call; anything
made before that (the axis view's copies, the synchronized layer's NaN buffer) would land on
the current device instead (``tests/_fake_cupy.py``: arrays that remember their device, and
a backend that asserts every array it is handed lives on the current device, as a real
launch requires).
"""
import sys

import numpy as np
import pytest

import cupy_abn
from cupy_abn import _validation as V
from cupy_abn import sync
from tests._fake_cupy import (FakeArray, FakeDevice, _current, _on, allocated,  # noqa: F401
                              fake_cupy_module, two_gpus)

def _inputs(shape, param_shape, device=1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.uniform(0.5, 1.5, param_shape).astype(np.float32)
    b = rng.standard_normal(param_shape).astype(np.float32)
    host = (x, g, b, np.zeros(param_shape, np.float32), np.ones(param_shape, np.float32))
    return host, tuple(_on(device, a) for a in host)


# x (2, 3, 4, 5) normalized over (1, 3): kept axes 0 and 2, not consecutive, so a copy with
# them first; and channels-last (2, 4, 5, 3) over (0, 1, 2): a view.
CASES = [((2, 3, 4, 5), (1, 3), (2, 4)), ((2, 4, 5, 3), (0, 1, 2), (3,)),
         ((2, 3, 4), None, (3,))]


@pytest.mark.parametrize("mode", ["standard", "inplace"])
@pytest.mark.parametrize("shape,axis,param_shape", CASES, ids=["copy", "view", "default"])
def test_every_array_lands_on_the_device_of_x(two_gpus, mode, shape, axis, param_shape):
    host, (x, g, b, rm, rv) = _inputs(shape, param_shape)
    want_z, want_saved = cupy_abn.abn_forward(*[a.copy() for a in host], mode=mode, axis=axis)
    dz = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    want = cupy_abn.abn_backward(want_saved, dz.copy())
    allocated.clear()
    assert _current[0] == 0   # GPU 0 is current; x and its parameters are on GPU 1
    z, saved = cupy_abn.abn_forward(x, g, b, rm, rv, mode=mode, axis=axis)
    grads = cupy_abn.abn_backward(saved, _on(1, dz))
    assert _current[0] == 0
    assert {a.device.id for a in allocated} == {1}
    np.testing.assert_array_equal(z.arr, want_z)
    for got, exp in zip(grads, want):
        assert isinstance(got, FakeArray) and got.device.id == 1
        np.testing.assert_array_equal(got.arr, exp)
    if mode != "standard":
        assert z is x


def test_running_statistics_updated_through_the_device_of_x(two_gpus):
    host, (x, g, b, rm, rv) = _inputs((2, 3, 4, 5), (2, 4))
    cupy_abn.abn_forward(*host, axis=(1, 3))   # the NumPy result
    cupy_abn.abn_forward(x, g, b, rm, rv, axis=(1, 3))
    np.testing.assert_array_equal(rm.arr, host[3])
    np.testing.assert_array_equal(rv.arr, host[4])
    assert not np.array_equal(host[3], 0)


def test_parameters_on_another_device_are_rejected_before_anything_is_made(two_gpus):
    host, (x, g, b, rm, rv) = _inputs((2, 3, 4, 5), (2, 4))
    g0 = _on(0, host[1])
    before = x.arr.copy()
    allocated.clear()
    with pytest.raises(ValueError, match="gamma: expected an array on GPU 1 like x"):
        cupy_abn.abn_forward(x, g0, b, rm, rv, axis=(1, 3))
    assert allocated == [] and np.array_equal(x.arr, before)


class _RecordingExchange:
    """The exchange a rejected synchronized backward still joins (with NaNs)."""
    buffers = []

    def __init__(self, comm):
        pass

    def allreduce_sum(self, a):
        self.buffers.append((a, _current[0]))
        return a


def test_sync_backward_rejection_buffer_on_the_device_of_the_layer(two_gpus, monkeypatch):
    host, (x, g, b, rm, rv) = _inputs((2, 3, 4), (3,))
    _, saved = cupy_abn.abn_forward(x, g, b, rm, rv)
    monkeypatch.setattr(sync, "Exchange", _RecordingExchange)
    monkeypatch.setattr(sync, "_xp", lambda a: fake_cupy_module())
    # the capture check asks the (fake) cupy for the current stream
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy_module())
    _RecordingExchange.buffers.clear()
    with pytest.raises(ValueError, match="grad_output"):
        cupy_abn.sync.sync_abn_backward(saved, _on(1, np.ones((2, 3, 5), np.float32)), None)
    (buf, current), = _RecordingExchange.buffers
    assert buf.device.id == 1 and current == 1 and np.isnan(buf.arr).all()


def test_the_route_checks_once(two_gpus, monkeypatch):
    """The validation runs once per call (it was re-entered by the axis view)."""
    calls = []
    real = V.check_forward
    monkeypatch.setattr(V, "check_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    host, (x, g, b, rm, rv) = _inputs((2, 3, 4, 5), (2, 4))
    cupy_abn.abn_forward(x, g, b, rm, rv, axis=(1, 3))
    assert len(calls) == 1
