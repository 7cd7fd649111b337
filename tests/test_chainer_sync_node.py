"""InPlaceABNSync in one process: the synchronized layer is the same node as InPlaceABN with a
communicator injected (its type check, its double-backward guard), and a deep copy of the layer
keeps the communicator.  A one-rank communicator (the mpi4py calls the exchange makes, on one
process) stands in for ChainerMN's; the multi-process behaviour is in test_sync_mpi.py."""
import copy

import numpy as np
import pytest

C = pytest.importorskip("cupy_abn.chainer")
import chainer  # noqa: E402  (after cupy_abn.chainer: NumPy 2 compatibility step)
import chainer.functions as F  # noqa: E402
from chainer.utils import type_check  # noqa: E402

from cupy_abn.chainer.sync import InPlaceABNSync, inplace_abn_sync  # noqa: E402


class OneRank:
    """A communicator of one process: gathering or summing over it is a copy."""
    size = 1

    @property
    def mpi_comm(self):
        return self

    def Get_size(self):
        return 1

    def Get_rank(self):
        return 0

    def Allgather(self, send, recv):
        np.copyto(recv.reshape(send.shape), send)

    def Allreduce(self, send, recv, op=None):
        np.copyto(recv, send)

    def __deepcopy__(self, memo):
        raise AssertionError("a communicator must not be copied")


def _data(seed=0):
    rs = np.random.RandomState(seed)
    return rs.randn(4, 3, 5).astype(np.float32)


def test_sync_layer_on_one_rank_is_inplace_abn():
    x = _data()
    a, b = InPlaceABNSync(3, OneRank()), C.InPlaceABN(3)
    outs = []
    for layer in (a, b):
        h = chainer.Variable(x.copy()) * 1
        y = layer(h)
        F.sum(y * y).backward()
        outs.append((y.array.copy(), layer.gamma.grad.copy(), layer.avg_mean.copy()))
    for u, v in zip(*outs):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6)
    assert isinstance(y.creator, C.ABNFunction)


def test_sync_node_type_check():
    with pytest.raises(type_check.InvalidType):
        inplace_abn_sync(chainer.Variable(np.ones(3, np.float32)), np.ones(3, np.float32),
                         np.zeros(3, np.float32), OneRank())


@pytest.mark.parametrize("mode", ["inplace", "standard"])
def test_sync_node_refuses_double_backward(mode):
    """No silent detach: a second-order gradient through the exchange is refused."""
    h = chainer.Variable(_data()) * 1
    layer = InPlaceABNSync(3, OneRank(), mode=mode)
    y = layer(h)
    with pytest.raises(NotImplementedError, match="first-order"):
        F.sum(y * y).backward(enable_double_backprop=True)


def test_deepcopy_keeps_the_communicator():
    comm = OneRank()
    layer = InPlaceABNSync(3, comm)
    twin = copy.deepcopy(layer)
    assert twin.comm is comm
    assert twin.gamma is not layer.gamma and twin.avg_mean is not layer.avg_mean
    twin.gamma.array[...] = 2
    assert (layer.gamma.array == 1).all()
    h = chainer.Variable(_data(1)) * 1
    twin.cleargrads()
    F.sum(twin(h)).backward()
    # Chainer fills an initialized parameter's gradient with NaN until a backward writes it
    assert np.isfinite(twin.gamma.grad).all() and np.isnan(layer.gamma.grad).all()


@pytest.mark.parametrize("backend,want", [("auto", "mpi"), ("mpi", "mpi")])
def test_communication_backend_as_multi_node_batch_normalization(backend, want):
    """MultiNodeBatchNormalization's keyword: "mpi" or "auto" (MPI for a non-NCCL
    communicator); anything else, or "nccl" without a PureNcclCommunicator, is a ValueError
    at construction."""
    assert InPlaceABNSync(3, OneRank(), communication_backend=backend).communication_backend \
        == want
    for bad in ("nccl", "dummy"):
        with pytest.raises(ValueError, match="communication_backend"):
            InPlaceABNSync(3, OneRank(), communication_backend=bad)
