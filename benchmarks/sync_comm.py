"""Communication per layer of InPlaceABNSync next to chainermn's MultiNodeBatchNormalization.

    python benchmarks/sync_comm.py            # launches itself under mpiexec -n 2 (CPU)

Both layers run one training step (forward + backward) on 2 ranks with ChainerMN's 'naive'
communicator, whose ``mpi_comm`` is replaced by a proxy that records every buffer handed to
MPI: bytes sent (the send buffer) and bytes received (the receive buffer) per rank, and the
number of collectives (each one is a latency).  The analytic counts, for R ranks, C channels
and a 4-byte accumulation dtype (float32 input):

    InPlaceABNSync   forward   Allgather header 11 x int64      send 88       recv 88 R
                               Allgather (mean, M2, shift)      send 12 C     recv 12 C R
                     backward  Allreduce (sum_dy, sum_dy_t)     send 8 C      recv 8 C
    MultiNodeBN      forward   Allreduce (mean, E[x^2])         send 8 C      recv 8 C
                     backward  Allreduce (sum gy, sum gy*xhat)  send 8 C      recv 8 C

(MultiNodeBN passes MPI_IN_PLACE: its send buffer is its receive buffer.)  Bytes on the wire
depend on MPI's algorithm: a ring Allgather sends (R-1) x the per-rank part, a ring Allreduce
2 (R-1)/R x the buffer.  What the extra forward bytes buy: exact statistics when batch sizes
differ between ranks (MultiNodeBN averages the ranks' means, right only for equal sizes),
empty ranks, and a variance merged with Chan's formula instead of E[x^2] - E[x]^2.

Writes benchmarks/results/sync_comm.json and prints a table.
"""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "sync_comm.json"
WIDTHS = (64, 256, 1024, 2048)
RANKS = 2
BATCH = (4, 8, 8)      # per rank: N, H, W


def _nbytes(buf, fallback=0):
    """Size of an mpi4py buffer argument: an array, (buffer, type), [buffer, counts, type]."""
    from mpi4py import MPI
    if buf is MPI.IN_PLACE:
        return fallback
    if isinstance(buf, (list, tuple)):
        return _nbytes(buf[0], fallback)
    if hasattr(buf, "nbytes"):
        return int(buf.nbytes)
    return int(ctypes.sizeof(buf))


class CountingMPI:
    """Forwards everything to an mpi4py communicator, recording the buffer collectives."""

    COLLECTIVES = ("Allgather", "Allgatherv", "Allreduce", "Bcast", "Reduce", "Gather")

    def __init__(self, mpi):
        self.mpi = mpi
        self.log = []

    def __getattr__(self, name):
        attr = getattr(self.mpi, name)
        if name in self.COLLECTIVES:
            def counted(sendbuf, recvbuf=None, *a, **k):
                recv = _nbytes(recvbuf) if recvbuf is not None else _nbytes(sendbuf)
                self.log.append((name, _nbytes(sendbuf, recv), recv))
                return attr(sendbuf, recvbuf, *a, **k) if recvbuf is not None \
                    else attr(sendbuf, *a, **k)
            return counted
        if name in ("allgather", "allreduce", "bcast", "gather"):   # pickled objects
            def counted_obj(obj, *a, **k):
                import pickle
                self.log.append((name, len(pickle.dumps(obj)), None))
                return attr(obj, *a, **k)
            return counted_obj
        return attr

    def take(self):
        log, self.log = self.log, []
        return {"collectives": len(log), "sent": sum(s for _, s, _ in log),
                "received": sum(r or 0 for _, _, r in log),
                "calls": [f"{n}({s} B)" for n, s, _ in log]}


def _step_abn_sync(comm, counting, c, rng):
    """One training step of cupy_abn's synchronized layer: (forward, backward) logs."""
    from cupy_abn.sync import sync_abn_backward, sync_abn_forward
    x = rng.standard_normal((BATCH[0], c) + BATCH[1:]).astype(np.float32)
    gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    z, saved = sync_abn_forward(x, gamma, beta, rm, rv, comm)
    fwd = counting.take()
    sync_abn_backward(saved, np.ones_like(z), comm)
    return fwd, counting.take()


def _step_link(link, counting, c, rng):
    import chainer
    x = chainer.Variable(rng.standard_normal((BATCH[0], c) + BATCH[1:]).astype(np.float32))
    with chainer.using_config("train", True):
        y = link(x)
    fwd = counting.take()
    y.grad = np.ones_like(y.array)
    y.backward()
    return fwd, counting.take()


def worker():
    warnings.simplefilter("ignore")
    from cupy_abn.chainer.sync import InPlaceABNSync   # first: the NumPy 2 step
    import chainer
    import chainermn
    from mpi4py import MPI
    comm = chainermn.create_communicator("naive", MPI.COMM_WORLD)
    counting = CountingMPI(comm.mpi_comm)
    comm.mpi_comm = counting
    rng = np.random.default_rng(comm.rank)
    rows = []
    for c in WIDTHS:
        fwd, bwd = _step_abn_sync(comm, counting, c, rng)
        rows.append(dict(layer="cupy_abn.sync (array API)", C=c, forward=fwd, backward=bwd,
                         analytic=dict(forward_sent=88 + 12 * c,
                                       forward_received=RANKS * (88 + 12 * c),
                                       backward_sent=8 * c, backward_received=8 * c)))
        link = InPlaceABNSync(c, comm)
        counting.take()
        fwd, bwd = _step_link(link, counting, c, rng)
        rows.append(dict(layer="cupy_abn.chainer.InPlaceABNSync", C=c, forward=fwd,
                         backward=bwd, analytic=rows[-1]["analytic"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mnbn = chainermn.links.MultiNodeBatchNormalization(c, comm)
        counting.take()
        fwd, bwd = _step_link(mnbn, counting, c, rng)
        rows.append(dict(layer="chainermn.links.MultiNodeBatchNormalization", C=c,
                         forward=fwd, backward=bwd,
                         analytic=dict(forward_sent=8 * c, forward_received=8 * c,
                                       backward_sent=8 * c, backward_received=8 * c)))
    if comm.rank == 0:
        result = dict(ranks=RANKS, dtype="float32", per_rank_batch=list(BATCH),
                      communicator="naive (MPI, CPU)",
                      unit="bytes per rank per training step of one layer",
                      chainer=chainer.__version__, rows=rows)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(result, indent=1) + "\n")
        _print_table(rows)
        print(f"written {OUT.relative_to(ROOT)}")


def _print_table(rows):
    head = (f"{'layer':46s} {'C':>5s} {'fwd sent':>9s} {'fwd recv':>9s} {'bwd sent':>9s} "
            f"{'bwd recv':>9s} {'colls':>5s} {'analytic ok':>11s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        f, b, a = r["forward"], r["backward"], r["analytic"]
        ok = (f["sent"], f["received"], b["sent"], b["received"]) == (
            a["forward_sent"], a["forward_received"], a["backward_sent"],
            a["backward_received"])
        print(f"{r['layer']:46s} {r['C']:5d} {f['sent']:9d} {f['received']:9d} "
              f"{b['sent']:9d} {b['received']:9d} "
              f"{f['collectives']:>2d}+{b['collectives']:<2d} {'yes' if ok else 'NO':>11s}")


def main():
    if "--worker" in sys.argv:
        return worker()
    here = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(here) if here.exists() else "mpiexec"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        PYTHONWARNINGS="ignore")
    cmd = [mpiexec, "-n", str(RANKS), sys.executable, __file__, "--worker"]
    return subprocess.run(cmd, env=env, timeout=300).returncode


if __name__ == "__main__":
    sys.exit(main() or 0)
