"""The finiteness check's cost in host round trips: one device-to-host copy per checked pass,
and a clear error instead of a broken graph when the stream is capturing one.

Each copy (``.get()``) blocks the host and drains the stream.  The check used to make 3 per
training forward (6 for float16 outputs) and 2 or 3 per backward; the partials, statistics,
extrema and counts are now packed on the device into one buffer and copied once.
Counted on the kernels (PoCL, pyopencl arrays) and on a fake CuPy (the packing's CuPy branch).
"""
import sys

import numpy as np
import pytest

import cupy_abn
from cupy_abn._finite import GraphCaptureError
from tests._backends import pocl_queue_or_skip
from tests._cases import make_inputs
from tests._fake_cupy import _on, fake_cupy_module, transfers, two_gpus  # noqa: F401

# (dtype, activation): float16 also copies the extrema; ELU also copies the saturation counts.
CASES = [(np.float32, "leaky_relu"), (np.float16, "leaky_relu"), (np.float32, "elu")]


@pytest.fixture
def counted_gets(monkeypatch):
    """pyopencl's Array.get, counted."""
    cla = pytest.importorskip("pyopencl.array")
    calls = []
    real = cla.Array.get
    monkeypatch.setattr(cla.Array, "get", lambda self, *a, **k: calls.append(self.shape)
                        or real(self, *a, **k))
    return calls


@pytest.mark.parametrize("dtype,activation", CASES, ids=["f32", "f16", "f32-elu"])
def test_one_host_copy_per_checked_pass_on_the_kernels(counted_gets, dtype, activation):
    queue = pocl_queue_or_skip()
    import pyopencl.array as cla
    host = make_inputs((4, 3, 40), dtype, "transfers")
    x, g, b, rm, rv, dz = (cla.to_device(queue, np.ascontiguousarray(a)) for a in host)
    counted_gets.clear()
    z, saved = cupy_abn.abn_forward(x, g, b, rm, rv, activation=activation,
                                    activation_param=1.0 if activation == "elu" else 0.01,
                                    check_finite=True)
    assert len(counted_gets) == 1, counted_gets
    counted_gets.clear()
    cupy_abn.abn_backward(saved, cla.to_device(queue, host[5].astype(dtype)),
                          check_finite=True)
    assert len(counted_gets) == 1, counted_gets


@pytest.mark.parametrize("dtype,activation", CASES, ids=["f32", "f16", "f32-elu"])
def test_one_host_copy_per_checked_pass_on_cupy(two_gpus, monkeypatch, dtype,
                                                activation):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy_module())
    host = make_inputs((4, 3, 40), dtype, "transfers")
    x, g, b, rm, rv, dz = (_on(0, a) for a in host)
    param = 1.0 if activation == "elu" else 0.01
    want_z, _ = cupy_abn.abn_forward(*[a.copy() for a in host[:5]], activation=activation,
                                     activation_param=param)
    transfers.clear()
    z, saved = cupy_abn.abn_forward(x, g, b, rm, rv, activation=activation,
                                    activation_param=param, check_finite=True)
    assert len(transfers) == 1
    np.testing.assert_array_equal(z.arr, want_z)
    transfers.clear()
    cupy_abn.abn_backward(saved, dz, check_finite=True)
    assert len(transfers) == 1


def test_the_check_still_finds_a_nan_from_the_packed_copy(two_gpus, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy_module())
    host = make_inputs((4, 3, 40), np.float16, "transfers")
    host[0][1, 2, 3] = np.nan
    x, g, b, rm, rv, dz = (_on(0, a) for a in host)
    before = x.arr.copy()
    with pytest.raises(cupy_abn.NonFiniteError, match="channel 2"):
        cupy_abn.abn_forward(x, g, b, rm, rv, check_finite=True)
    np.testing.assert_array_equal(x.arr, before)


@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_check_during_graph_capture_raises_before_anything_is_written(two_gpus, monkeypatch,
                                                                      pass_):
    host = make_inputs((4, 3, 40), np.float32, "capture")
    x, g, b, rm, rv, dz = (_on(0, a) for a in host)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy_module(capturing=False))
    z, saved = cupy_abn.abn_forward(x, g, b, rm, rv)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy_module(capturing=True))
    before = [a.arr.copy() for a in (x, rm, rv, dz)]
    with pytest.raises(GraphCaptureError, match="CUDA graph capture"):
        if pass_ == "forward":
            cupy_abn.abn_forward(x, g, b, rm, rv, check_finite=True)
        else:
            cupy_abn.abn_backward(saved, dz, out=dz, check_finite=True)
    for a, was in zip((x, rm, rv, dz), before):
        np.testing.assert_array_equal(a.arr, was)
    cupy_abn.abn_forward(x, g, b, rm, rv)   # unchecked: no host copy, capturable
    assert cupy_abn.GraphCaptureError is GraphCaptureError


class _NoComm:
    """A communicator that must not be used."""

    def __getattr__(self, name):
        raise AssertionError(f"the communicator was used ({name}) during a capture")


@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_synchronized_training_during_graph_capture_raises_before_any_exchange(
        two_gpus, monkeypatch, pass_):
    """The synchronized layer's training passes exchange through the communicator and decide
    on the host: a capturing stream gets GraphCaptureError, nothing exchanged or written."""
    from cupy_abn.sync import sync_abn_backward, sync_abn_forward
    host = make_inputs((4, 3, 40), np.float32, "sync-capture")
    x, g, b, rm, rv, dz = (_on(0, a) for a in host)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy_module(capturing=False))
    z, saved = cupy_abn.abn_forward(x, g, b, rm, rv)     # a training forward's state
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy_module(capturing=True))
    before = [a.arr.copy() for a in (x, rm, rv, dz)]
    with pytest.raises(GraphCaptureError, match="synchronized layer"):
        if pass_ == "forward":
            sync_abn_forward(x, g, b, rm, rv, _NoComm())
        else:
            sync_abn_backward(saved, dz, _NoComm(), out=dz)
    for a, was in zip((x, rm, rv, dz), before):
        np.testing.assert_array_equal(a.arr, was)
    if pass_ == "forward":   # evaluation exchanges nothing: capturable
        sync_abn_forward(x, g, b, rm, rv, _NoComm(), training=False)
