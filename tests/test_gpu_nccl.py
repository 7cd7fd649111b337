"""The synchronized layer over NCCL, in one process (issue 20, part 3).

``cupy_abn/_exchange.py`` sends CuPy buffers through the NCCL communicator of a ChainerMN
``PureNcclCommunicator`` (``comm.nccl_comm``: ``allGather`` of the moments in the forward,
``allReduce`` of the gradient sums in the backward) and the small int64 header through its
``mpi_comm``.  Here the ranks are threads of this process: :class:`HostGroup` stands for
``mpi_comm`` (``Get_size``, ``Allgather``, ``Allreduce`` through a barrier), and
:class:`PureNccl` for the ChainerMN communicator, around a ``cupy.cuda.nccl``
communicator per device (``NcclCommunicator.initAll``).

* ``test_threads_on_numpy``, ``test_threads_on_pocl`` (CPU, default tier): the test body on
  NumPy and PoCL arrays, 1 to 3 ranks over the host group alone, against the unsynchronized
  layer on the whole batch.
* ``test_single_rank_nccl`` (``gpu``): one rank over NCCL equals the unsynchronized layer
  (float32 2e-5, float16 2e-3, dgamma and dbeta scaled by sqrt(m)) and, bit for bit, the
  same synchronized call whose buffers travel through the host instead (a one-rank
  allGather / allReduce is a copy).
* ``test_ranks_over_nccl_on_every_gpu`` (``gpu``, two GPUs or more): one rank per device,
  uneven batches, against the unsynchronized layer on device 0 (same tolerances); the
  statistics, running statistics, dgamma and dbeta are bit-identical on every rank.

GPU time: 3 + 2 small cases (at most 65 K elements per rank), about 15 variants to compile.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import threading

import numpy as np
import pytest

import cupy_abn
from cupy_abn.sync import sync_abn_backward, sync_abn_forward
from tests import _gpu_cases as G
from tests._backends import NO_GPU, NO_TWO_GPUS, gpu_count
from tests._kernel_matrix import AGREE

F16, F32, F64 = np.float16, np.float32, np.float64
SHAPE = (8, 32, 16, 16)       # the global batch of one rank; R ranks: N = 4R + 1 rows
GPU = [pytest.mark.gpu, pytest.mark.skipif(gpu_count() < 1, reason=NO_GPU)]
OUTPUTS = ("z", "dx", "dgamma", "dbeta", "running_mean", "running_var", "stats")
SHARED = ("dgamma", "dbeta", "running_mean", "running_var", "stats")   # the same on all ranks


class HostGroup:
    """``size`` ranks in threads of one process, and the mpi4py calls the exchange makes of
    ``mpi_comm``: ``Get_size``, ``Allgather(send, recv)`` and ``Allreduce(send, recv)`` (a
    sum in rank order).  Every call is collective: all ranks enter it, in the same order."""

    def __init__(self, size: int):
        self.size = size
        self._barrier = threading.Barrier(size, timeout=120)
        self._slots = [None] * size

    def comm(self, rank: int) -> "HostComm":
        return HostComm(self, rank)

    def _collect(self, rank, send):
        self._slots[rank] = np.array(send, copy=True)
        self._barrier.wait()
        out = [s for s in self._slots]
        self._barrier.wait()   # all have read before the next call overwrites a slot
        return out


class HostComm:
    def __init__(self, group: HostGroup, rank: int):
        self.group, self.rank = group, rank

    def Get_size(self) -> int:
        return self.group.size

    def Allgather(self, send, recv) -> None:
        recv[...] = np.stack(self.group._collect(self.rank, send)).reshape(recv.shape)

    def Allreduce(self, send, recv) -> None:
        parts = self.group._collect(self.rank, send)
        total = parts[0].copy()
        for p in parts[1:]:
            total += p
        recv[...] = total


class PureNccl:
    """What the exchange uses of ChainerMN's ``PureNcclCommunicator``: ``mpi_comm``,
    ``nccl_comm`` (a ``cupy.cuda.nccl.NcclCommunicator``) and ``_init_comms``."""

    def __init__(self, mpi_comm: HostComm, nccl_comm):
        self.mpi_comm, self.nccl_comm = mpi_comm, nccl_comm

    def _init_comms(self) -> None:   # the communicator is made already
        pass


class HostOnly:
    """A communicator without NCCL: the exchange copies CuPy buffers through the host."""

    def __init__(self, mpi_comm: HostComm):
        self.mpi_comm = mpi_comm


def _inputs(n_rows: int, dtype, mode: str):
    shape = (n_rows,) + SHAPE[1:]
    return G.ncs_inputs(shape, dtype, mode, True, key=("gpu-nccl",))


def _host(results):
    return {k: np.array(v) for k, v in results.items()}


def _layer(x, gamma, beta, rm, rv, dz, mode, comm=None):
    """Forward and backward, synchronized over ``comm`` or not; host copies of the results
    (the device arrays are read after the backward: the in-place modes keep z in x)."""
    kw = dict(training=True, mode=mode, activation=G.ACT, activation_param=G.PARAM)
    out = dz if mode != "standard" else None
    if comm is None:
        z, saved = cupy_abn.abn_forward(x, gamma, beta, rm, rv, **kw)
        dx, dg, db = cupy_abn.abn_backward(saved, dz, out=out)
    else:
        z, saved = sync_abn_forward(x, gamma, beta, rm, rv, comm, **kw)
        dx, dg, db = sync_abn_backward(saved, dz, comm, out=out)
    return dict(z=z, dx=dx, dgamma=dg, dbeta=db, running_mean=rm, running_var=rv,
                stats=saved.stats)


def run_ranks(size: int, work):
    """``work(rank)`` in ``size`` threads; their results in rank order (a rank's error is
    raised here; the others then fail at the barrier's timeout rather than hang)."""
    with concurrent.futures.ThreadPoolExecutor(size) as pool:
        futures = [pool.submit(work, r) for r in range(size)]
        return [f.result() for f in futures]


def check_sync(size: int, dtype, mode: str, comm_for, device_for, to_host,
               scope_for=lambda r: contextlib.nullcontext()):
    """``size`` ranks, each a slice of an uneven global batch (``np.array_split``), through
    the synchronized layer (rank r's thread inside ``scope_for(r)``, its arrays made by
    ``device_for(r)``); compared with the unsynchronized layer on the whole batch, on rank
    0's device.  Returns each rank's host results."""
    n_rows = 4 * size + 1 if size > 1 else SHAPE[0]
    x, gamma, beta, rm, rv, dz = _inputs(n_rows, dtype, mode)
    rows = np.array_split(np.arange(n_rows), size)

    def rank(r):
        with scope_for(r):
            d = device_for(r)
            arrays = [d(np.ascontiguousarray(a)) for a in
                      (x[rows[r]], gamma, beta, rm, rv, dz[rows[r]])]
            return {k: np.array(to_host(v)) for k, v in
                    _layer(*arrays, mode, comm=comm_for(r)).items()}

    got = run_ranks(size, rank)
    with scope_for(0):
        d = device_for(0)
        want = {k: np.array(to_host(v)) for k, v in
                _layer(*[d(np.array(a)) for a in (x, gamma, beta, rm, rv, dz)], mode).items()}
    tol = AGREE[np.dtype(dtype)]
    sums = float(np.sqrt(x.size // x.shape[1]))
    for name in ("z", "dx"):
        joined = np.concatenate([g[name] for g in got])
        np.testing.assert_allclose(joined.astype(F64), want[name].astype(F64), rtol=tol,
                                   atol=tol, err_msg=f"{name}: {size} ranks vs one process")
    for r, g in enumerate(got):
        for name in SHARED:
            scale = sums if name in ("dgamma", "dbeta") else 1.0
            np.testing.assert_allclose(g[name].astype(F64), want[name].astype(F64), rtol=tol,
                                       atol=tol * scale,
                                       err_msg=f"{name} on rank {r} vs one process")
            assert _bits(g[name]) == _bits(got[0][name]), f"{name}: rank {r} != rank 0"
    return got


def _bits(a) -> bytes:
    return np.ascontiguousarray(a).tobytes()


# ---- here: the body on NumPy ------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 3])
@pytest.mark.parametrize("dtype,mode", [(F32, "inplace"), (F64, "standard"),
                                        (F16, "inplace_v1")], ids=["f32-inplace",
                                                                   "f64-standard",
                                                                   "f16-inplace_v1"])
def test_threads_on_numpy(size, dtype, mode):
    group = HostGroup(size)
    check_sync(size, dtype, mode, group.comm, lambda r: np.array, np.asarray)


@pytest.mark.parametrize("size", [pytest.param(1, marks=pytest.mark.full), 2])
def test_threads_on_pocl(size):
    """The body on the kernel backend (PoCL arrays: the hooks run on host copies), whose
    partials and finish launches a GPU runs too."""
    import pyopencl.array as cla
    from tests._backends import pocl_queue_or_skip
    q = pocl_queue_or_skip()
    group = HostGroup(size)
    check_sync(size, F32, "inplace", group.comm, lambda r: lambda a: cla.to_device(q, a),
               lambda a: a.get())


# ---- on a GPU ---------------------------------------------------------------------------------
def _nccl_or_skip():
    """``cupy.cuda.nccl``, after checking that the exchange can use it here."""
    import cupy
    from cupy.cuda import nccl
    if not getattr(nccl, "available", False):
        pytest.skip("cupy.cuda.nccl is not available (libnccl.so.2 not found: pip install "
                    "nvidia-nccl-cu13, or the wheel matching CuPy's CUDA)")
    try:
        import cupy_abn.chainer  # noqa: F401 - Chainer importable (ChainerMN imports it)
    except ImportError as e:
        pytest.skip(f"the NCCL exchange uses ChainerMN's NCCL helpers, and Chainer cannot be "
                    f"imported: {e}")
    from cupy_abn._exchange import Exchange
    comm = PureNccl(HostGroup(1).comm(0), nccl.NcclCommunicator.initAll([0])[0])
    try:
        with cupy.cuda.Device(0):
            Exchange(comm).allgather(cupy.zeros(4, np.float32))
    except ImportError as e:
        pytest.skip(f"the NCCL exchange (cupy_abn/_exchange.py) cannot import what it needs "
                    f"here: {e!r} (ChainerMN's _communication_utility imports mpi4py)")
    return nccl


SINGLE = [(F32, "inplace"), (F32, "standard"), (F16, "inplace_v1")]


@pytest.mark.parametrize("dtype,mode", [pytest.param(*c, marks=GPU) for c in SINGLE],
                         ids=[f"{np.dtype(d).name}-{m}" for d, m in SINGLE])
def test_single_rank_nccl(dtype, mode):
    import cupy
    nccl = _nccl_or_skip()
    with cupy.cuda.Device(0):
        nccl_comm = nccl.NcclCommunicator.initAll([0])[0]
        group = HostGroup(1)
        over_nccl = check_sync(1, dtype, mode, lambda r: PureNccl(group.comm(r), nccl_comm),
                               lambda r: cupy.asarray, cupy.asnumpy)
        over_host = check_sync(1, dtype, mode, lambda r: HostOnly(group.comm(r)),
                               lambda r: cupy.asarray, cupy.asnumpy)
    for name in OUTPUTS:
        assert _bits(over_nccl[0][name]) == _bits(over_host[0][name]), (
            f"{name}: one rank over NCCL differs from the same exchange through the host")


MULTI = [(F32, "inplace"), (F16, "inplace_v1")]


@pytest.mark.parametrize("dtype,mode", [pytest.param(*c, marks=GPU) for c in MULTI],
                         ids=[f"{np.dtype(d).name}-{m}" for d, m in MULTI])
def test_ranks_over_nccl_on_every_gpu(dtype, mode):
    if gpu_count() < 2:
        pytest.skip(f"{NO_TWO_GPUS}: one rank per device (this machine has {gpu_count()})")
    import cupy
    nccl = _nccl_or_skip()
    size = min(gpu_count(), 8)
    comms = nccl.NcclCommunicator.initAll(list(range(size)))
    group = HostGroup(size)

    got = check_sync(size, dtype, mode, lambda r: PureNccl(group.comm(r), comms[r]),
                     lambda r: cupy.asarray, cupy.asnumpy, scope_for=cupy.cuda.Device)
    print(f"{size} ranks over NCCL, {np.dtype(dtype).name} {mode}: rows per rank "
          f"{[len(g['z']) for g in got]}")
