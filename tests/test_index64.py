"""Beyond 2^31 elements (issue 13, part 5): the 64-bit index variants (``IDX64``, compiled
in from ``_kernel_source.IDX64_FROM`` = 2^31 elements of x) on a real float16 tensor of
2 x 64 x (2^24 + 8) = 2^31 + 1024 elements (4 GiB), forward (training) and backward, checked
channel by channel against the NumPy backend.

Every row (n, c) is a seeded rotation of one normal base row, scaled and offset per row; rows
are uploaded one at a time and made again for the reference, so the host holds one channel
(2^25 elements) per checking thread besides the device's two 4 GiB buffers (x, then z in
place; dz, then dx in place).  The reference checks channels on every core the process may
use (``check_threads``: a thread per core, at most one per ``THREAD_BYTES`` of available
memory, what a thread's channel and the NumPy backend's temporaries take); each channel's
check is independent of the others, so the result does not depend on the thread count.

Where it runs: on a GPU (``-m gpu``), and on PoCL in the full tier (``bash scripts/test.sh
--full``: once, in tox's np2 environment) or where ``CUPY_ABN_INDEX64_POCL=1``.  PoCL's
``CL_DEVICE_MAX_MEM_ALLOC_SIZE`` follows the memory hwloc finds on the device's NUMA node: on
a VM whose memory was added after boot that is part of the machine (8.3 of 24 GiB: a 2 GiB
limit), and the test then runs itself again in a child whose ``HWLOC_SYNTHETIC`` describes the
whole machine (8 GiB limit).  Opted in, a device that cannot hold one 4 GiB tensor even so
fails the test rather than skipping it.  The same checker runs in every environment on a small tensor with ``IDX64_FROM`` lowered to 0.

Measured here (PoCL 3.0, 2 shared cores, 23 GiB, ``CUPY_ABN_INDEX64_POCL=1 pytest -s
tests/test_index64.py``): 3 min 57 s for the file; upload 52 s, forward + backward 22 s on
the device, the check 161 s (two threads); peak RSS 10.7 GiB.  Worst |error|: z and dx 3.9e-3
(float16 rounding), running variance 8.4e-7 relative.

The running variance is checked at 1e-5: the reductions cap the packs a thread sums before
its block's Chan merge (``_kernel_backend.MAX_THREAD_PACKS``).  Without the cap PoCL's grid
gave each thread 2^16 float16 packs, and the batch variance came out 1e-4 relative off
(2^31 elements in 8 channels: 1.2999845 against NumPy's 1.3000250).
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
import resource
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import cupy_abn
from tests._backends import NO_GPU, gpu_count, pocl_queue
from tests._reference import TOL

OPT_IN = "CUPY_ABN_INDEX64_POCL"   # run the big case on PoCL outside the full tier too
BIG = (2, 64, 2 ** 24 + 8)         # 2^31 + 1024 elements, rows of whole 16-byte packs
SMALL = (2, 3, 40)
THREAD_BYTES = 3 << 29             # host memory per checking thread (0.96 GiB peak measured)
KW = dict(mode="inplace", activation="leaky_relu", activation_param=0.1, eps=1e-5, decay=0.9)


@functools.lru_cache(maxsize=4)
def _base(kind, length, seed):
    """One standard normal float32 row per kind and length: drawing 2^32 normals would take
    minutes, so every row is a rotation of this one, scaled and offset."""
    return np.random.default_rng([seed, 0 if kind == "x" else 1]).standard_normal(
        length, dtype=np.float32)


def _row(kind, n, c, length, seed=0):
    """Row (n, c) of x (about N(c/8 - 3 + n/2, (1 + c/64)^2)) or dz (N(0, 1)), float16, the
    same on every call: the base row rotated by a different amount for every (kind, n, c), so
    an element read from the wrong row or offset changes the result."""
    rng = np.random.default_rng([seed, n, c, 0 if kind == "x" else 1])
    r = np.roll(_base(kind, length, seed), int(rng.integers(length)))
    if kind == "x":
        r = r * np.float32(1 + c / 64) + np.float32(c / 8 - 3 + n / 2)
    return r.astype(np.float16)


class _Cupy:
    name = "cupy"

    def __init__(self):
        import cupy
        self.cp = cupy

    def empty(self, shape, dtype):
        return self.cp.empty(shape, dtype)

    def put_row(self, a, n, c, row):
        a[n, c] = self.cp.asarray(row)

    def channel(self, a, c):
        return self.cp.asnumpy(a[:, c])

    def asarray(self, a):
        return self.cp.asarray(a)

    def get(self, a):
        return self.cp.asnumpy(a)

    def fits(self, nbytes):
        free, _ = self.cp.cuda.runtime.memGetInfo()
        return (True, "") if free > 2.2 * nbytes else (
            False, f"{NO_GPU} with {int(2.2 * nbytes)} bytes free ({free} free)")


class _Pocl:
    name = "pocl"

    def __init__(self, queue):
        import pyopencl as cl
        import pyopencl.array as cla
        self.cl, self.cla, self.queue = cl, cla, queue

    def empty(self, shape, dtype):
        return self.cla.empty(self.queue, shape, dtype)

    def put_row(self, a, n, c, row):
        off = (n * a.shape[1] + c) * a.shape[2] * a.dtype.itemsize
        self.cl.enqueue_copy(self.queue, a.base_data, np.ascontiguousarray(row),
                             dst_offset=a.offset + off)

    def channel(self, a, c):
        out = np.empty((a.shape[0], a.shape[2]), a.dtype)
        for n in range(a.shape[0]):
            off = (n * a.shape[1] + c) * a.shape[2] * a.dtype.itemsize
            self.cl.enqueue_copy(self.queue, out[n], a.base_data, src_offset=a.offset + off)
        return out

    def asarray(self, a):
        return self.cla.to_device(self.queue, np.ascontiguousarray(a))

    def get(self, a):
        return a.get()

    def buffer_limit(self) -> int:
        return int(self.queue.device.max_mem_alloc_size)

    def fits(self, nbytes):
        if os.environ.get(OPT_IN) != "1" and os.environ.get("CUPY_ABN_TIER") != "full":
            return False, (f"on PoCL it takes minutes and ~10 GB: the full tier runs it "
                           f"(bash scripts/test.sh --full), or opt in with {OPT_IN}=1")
        limit = self.buffer_limit()
        assert limit >= nbytes, (
            f"{OPT_IN}=1, but PoCL's CL_DEVICE_MAX_MEM_ALLOC_SIZE is {limit} bytes, below one "
            f"{nbytes}-byte tensor (its global memory: "
            f"{int(self.queue.device.global_mem_size)} bytes)")
        return True, ""


def check_threads(channels: int, cores=None, available=None) -> int:
    """Channels checked at once: one per core this process may run on (2 on the CI machine,
    16 on the GPU machine), no more than the channels, and no more than the memory available
    now (``MemAvailable``) holds at ``THREAD_BYTES`` each; at least one."""
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
    if available is None:
        try:
            with open("/proc/meminfo") as f:
                available = next(int(line.split()[1]) * 1024 for line in f
                                 if line.startswith("MemAvailable:"))
        except (OSError, StopIteration, ValueError):
            available = cores * THREAD_BYTES
    return max(1, min(cores, channels, available // THREAD_BYTES))


def _rss_gib() -> float:
    """The resident set of this process now (the peak is ``ru_maxrss``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30


def check_index64(dev, shape, seed=0):
    """Forward + backward on ``dev`` through the 64-bit index variants; every channel of z, dx,
    and dgamma, dbeta, the running statistics against the NumPy backend on that channel."""
    n_, c_, s_ = shape
    rss_start = _rss_gib()
    t0 = time.perf_counter()
    x = dev.empty(shape, np.float16)
    dz = dev.empty(shape, np.float16)
    for n in range(n_):
        for c in range(c_):
            dev.put_row(x, n, c, _row("x", n, c, s_, seed))
            dev.put_row(dz, n, c, _row("dz", n, c, s_, seed))
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.5, 1.5, c_).astype(np.float32)
    beta = rng.normal(0, 0.5, c_).astype(np.float32)
    rm, rv = np.zeros(c_, np.float32), np.ones(c_, np.float32)
    rmd, rvd = dev.asarray(rm), dev.asarray(rv)
    t_upload = time.perf_counter() - t0
    t0 = time.perf_counter()
    z, saved = cupy_abn.abn_forward(x, dev.asarray(gamma), dev.asarray(beta), rmd, rvd, **KW)
    dx, dg, db = cupy_abn.abn_backward(saved, dz, out=dz)
    dg, db, rm_d, rv_d = (dev.get(a) for a in (dg, db, rmd, rvd))   # waits for the device
    t_device = time.perf_counter() - t0
    t0 = time.perf_counter()
    device = dict(z=z, dx=dx, dgamma=dg, dbeta=db, running_mean=rm_d, running_var=rv_d)
    reads = threading.Lock()   # one transfer from the device at a time
    ref = functools.partial(_check_channel, dev, device, reads, shape, gamma, beta, rm, rv,
                            seed)
    threads = check_threads(c_)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:   # NumPy frees the GIL
        per_channel = list(pool.map(ref, range(c_)))   # in channel order
    worst = {k: max(w[k] for w in per_channel) for k in per_channel[0]}
    t_check = time.perf_counter() - t0
    return dict(elements=n_ * c_ * s_, upload_s=t_upload, device_s=t_device, check_s=t_check,
                check_threads=threads, rss_at_start_gib=rss_start,
                peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
                worst=worst)


def _check_channel(dev, device, reads, shape, gamma, beta, rm, rv, seed, c):
    """Channel c of the device's results against the NumPy backend on that channel alone;
    the largest |error| of z and dx."""
    n_, _, s_ = shape
    xc = np.stack([_row("x", n, c, s_, seed) for n in range(n_)])[:, None, :]
    dzc = np.stack([_row("dz", n, c, s_, seed) for n in range(n_)])[:, None, :]
    rmc, rvc = rm[c:c + 1].copy(), rv[c:c + 1].copy()
    zc, sv = cupy_abn.abn_forward(xc, gamma[c:c + 1], beta[c:c + 1], rmc, rvc, **KW)
    zc = zc[:, 0].copy()
    dxc, dgc, dbc = cupy_abn.abn_backward(sv, dzc, out=dzc)
    with reads:
        zk, dxk = dev.channel(device["z"], c), dev.channel(device["dx"], c)
    ftol = TOL[np.dtype(np.float16)]["forward"]
    btol = TOL[np.dtype(np.float16)]["backward"]
    # phi' jumps at y = 0: where the two backends' y lie on either side of 0 (|y| within the
    # statistics' rounding, e.g. 1e-5), dx differs by the slope, legitimately.
    flip = np.signbit(zk) != np.signbit(zc)
    assert (np.abs(zc[flip].astype(np.float32)) <= 4 * ftol[1]).all(), (
        f"channel {c}: z changes sign away from 0")
    worst = {}
    for name, got, want, (rtol, atol) in (("z", zk, zc, ftol),
                                          ("dx", dxk[~flip], dxc[:, 0][~flip], btol)):
        got, want = got.astype(np.float32), want.astype(np.float32)
        err = np.abs(got - want)
        bound = atol * max(1.0, float(np.abs(want).max())) + rtol * np.abs(want)
        worst[name] = float(err.max())
        assert (err <= bound).all(), (f"channel {c} {name}: {int((err > bound).sum())} "
                                      f"values off, worst {err.max():.3g}")
    m = n_ * s_
    for name, want, tol in (("running_mean", rmc[0], 1e-5), ("running_var", rvc[0], 1e-5),
                            ("dgamma", dgc[0], btol[1] * np.sqrt(m)),
                            ("dbeta", dbc[0], btol[1] * np.sqrt(m))):
        got = float(device[name][c])
        assert abs(got - float(want)) <= tol * max(1.0, abs(float(want))), (
            f"channel {c} {name}: {got} vs NumPy {want}")
        if name == "running_var":
            worst["running_var_rel"] = abs(got - float(want)) / abs(float(want))
    return worst


def _backends(big: bool = False):
    out = []
    q = pocl_queue()
    if q is not None:
        # the 2^31-element case on PoCL: the full tier, once (minutes and ~11 GiB)
        marks = [pytest.mark.full, pytest.mark.once] if big else []
        out.append(pytest.param(lambda: _Pocl(q), id="pocl", marks=marks))
    if gpu_count():
        out.append(pytest.param(_Cupy, id="cupy", marks=pytest.mark.gpu))
    return out


@pytest.mark.parametrize("make", _backends())
def test_index64_small_tensor_checker(make, monkeypatch):
    """The checker itself, on a small tensor forced onto the IDX64 variants."""
    from cupy_abn import _kernel_source
    monkeypatch.setattr(_kernel_source, "IDX64_FROM", 0)
    check_index64(make(), SMALL)


def test_check_threads_uses_every_core():
    """The host reference runs a channel per core, as far as memory allows."""
    assert check_threads(64, cores=16, available=128 << 30) == 16
    assert check_threads(64, cores=16, available=6 << 30) == 4
    assert check_threads(3, cores=16, available=128 << 30) == 3
    assert check_threads(64, cores=2, available=1 << 20) == 1
    assert 1 <= check_threads(64) <= (os.cpu_count() or 1)


def _physical_memory() -> int:
    with open("/proc/meminfo") as f:
        return int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024


def _rerun_where_pocl_sees_all_memory(nbytes: int) -> bool:
    """PoCL sizes its device from the memory hwloc finds on the device's NUMA node; where
    that is only part of the machine (a VM whose memory was added after boot: 8.3 of 24 GiB
    here, so a 2 GiB buffer limit), run this test again in a child process whose hwloc
    describes the whole machine (``HWLOC_SYNTHETIC``, same core count).  Returns whether it
    did (the child's outcome is asserted); False where PoCL already sees enough."""
    if _CHILD in os.environ or not os.path.exists("/proc/meminfo"):
        return False
    q = pocl_queue()
    if q is None or int(q.device.max_mem_alloc_size) >= nbytes:
        return False
    cores = int(q.device.max_compute_units)
    env = dict(os.environ, **{_CHILD: "1", "HWLOC_SYNTHETIC":
                              f"numa:1(memory={_physical_memory()}) core:{cores} pu:1"})
    node = "tests/test_index64.py::test_index64_beyond_2_31_elements[pocl]"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                          node], cwd=os.path.dirname(os.path.dirname(__file__)), env=env,
                         capture_output=True, text=True, timeout=1800)
    print(out.stdout[-3000:])
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    assert out.returncode == 0 and summary.startswith("1 passed"), (out.stdout[-6000:]
                                                                    + out.stderr[-3000:])
    return True


_CHILD = "CUPY_ABN_INDEX64_CHILD"


@pytest.mark.parametrize("make", _backends(big=True))
def test_index64_beyond_2_31_elements(make, capsys):
    dev = make()
    nbytes = int(np.prod(BIG)) * 2
    opted_in = os.environ.get(OPT_IN) == "1" or os.environ.get("CUPY_ABN_TIER") == "full"
    if isinstance(dev, _Pocl) and opted_in and _rerun_where_pocl_sees_all_memory(nbytes):
        return
    ok, why = dev.fits(nbytes)
    if not ok:
        pytest.skip(why)
    from cupy_abn import _kernel_source
    assert np.prod(BIG) >= _kernel_source.IDX64_FROM > 2 ** 31 - 1
    info = check_index64(dev, BIG)
    with capsys.disabled():
        print(f"\nindex64 on {dev.name}: {info}")
