"""The two collectives a synchronized layer needs, over a ChainerMN communicator.

No transport of our own: every byte goes through the communicator's own channels.

* NumPy arrays: ``comm.mpi_comm.Allgather`` / ``Allreduce`` (mpi4py's buffer interface).
* CuPy arrays with ``PureNcclCommunicator``: its NCCL communicator (``comm.nccl_comm``,
  ``allGather`` / ``allReduce``) on the current stream; no host synchronization.
* CuPy arrays with any other communicator (``naive``, ``flat``, ``non_cuda_aware``): those use
  MPI, which may not be CUDA-aware, so the buffer is copied to the host, exchanged with
  ``mpi_comm`` and copied back.  The buffers are O(C) values (a few KiB), so the copy costs
  a synchronization, not bandwidth.

``comm`` may also be a bare mpi4py communicator (anything with ``Allgather``), which is what a
ChainerMN communicator wraps.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np


def _is_numpy(a: Any) -> bool:
    return isinstance(a, np.ndarray)


class Exchange:
    """``allgather`` and ``allreduce_sum`` of small 1-D buffers across the ranks of ``comm``."""

    def __init__(self, comm: Any):
        self.comm = comm
        self.mpi = getattr(comm, "mpi_comm", comm)
        if not hasattr(self.mpi, "Allgather"):
            raise TypeError("comm: expected a ChainerMN communicator (with .mpi_comm) or an "
                            f"mpi4py communicator, got {type(comm).__name__}")
        self.size = int(self.mpi.Get_size())

    # ---- host-side integers (the header exchanged before the forward) --------------------
    def allgather_host(self, values: np.ndarray) -> np.ndarray:
        """Allgather of a small host array; returns ``(size, *values.shape)``."""
        values = np.ascontiguousarray(values)
        out = np.empty((self.size,) + values.shape, values.dtype)
        self.mpi.Allgather(values, out)
        return out

    # ---- device-side float buffers --------------------------------------------------------
    def allgather(self, a):
        """Allgather of a 1-D contiguous buffer; returns ``(size, n)`` of the same family."""
        if _is_numpy(a):
            return self.allgather_host(a)
        nccl = self._nccl()
        if nccl is None:
            import cupy
            return cupy.asarray(self.allgather_host(cupy.asnumpy(a)))
        import cupy
        a = cupy.ascontiguousarray(a)
        out = cupy.empty((self.size, a.size), a.dtype)
        nccl.allGather(a.data.ptr, out.data.ptr, a.size, _nccl_type(a.dtype),
                       cupy.cuda.get_current_stream().ptr)
        return out

    def allreduce_sum(self, a):
        """Elementwise sum over ranks of a 1-D contiguous buffer, same family and shape."""
        if _is_numpy(a):
            a = np.ascontiguousarray(a)
            out = np.empty_like(a)
            self.mpi.Allreduce(a, out)
            return out
        nccl = self._nccl()
        import cupy
        if nccl is None:
            return cupy.asarray(self.allreduce_sum(cupy.asnumpy(a)))
        a = cupy.ascontiguousarray(a)
        out = cupy.empty_like(a)
        nccl.allReduce(a.data.ptr, out.data.ptr, a.size, _nccl_type(a.dtype), _NCCL_SUM,
                       cupy.cuda.get_current_stream().ptr)
        return out

    def _nccl(self) -> Optional[Any]:
        """The NCCL communicator of a ``PureNcclCommunicator`` (created on first use), or None."""
        if not hasattr(self.comm, "nccl_comm") or not hasattr(self.comm, "_init_comms"):
            return None
        if self.comm.nccl_comm is None:
            self.comm._init_comms()
        return self.comm.nccl_comm


# nccl.h's ncclDataType_t and ncclRedOp_t values (NCCL's ABI, which cupy.cuda.nccl re-exports
# only where libnccl loads): no import of ChainerMN's helpers, which import mpi4py.
_NCCL_TYPES = {np.dtype(np.float16): 6, np.dtype(np.float32): 7, np.dtype(np.float64): 8}
_NCCL_SUM = 0


def _nccl_type(dtype) -> int:
    return _NCCL_TYPES[np.dtype(dtype)]
