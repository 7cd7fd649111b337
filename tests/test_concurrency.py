"""Concurrency, compile caches and leaks (issue 13, part 3).

* Several threads call forward and backward at once, each on its own arrays, on NumPy and on
  the kernels (PoCL): every result equals the one computed alone.
* Each kernel variant is built once per process, even when threads ask for it at the same
  time (``_runtime_opencl.COMPILES``); the NVRTC cache's temporary files are per thread.
* A failed build raises ``KernelCompileError`` naming the family, entry and defines, caches
  nothing (the next call builds again), and leaves x and the running statistics untouched.
* 1,000 forward/backward calls leave tracemalloc flat (NumPy and PoCL).
"""
from __future__ import annotations

import gc
import sys
import threading
import tracemalloc

import numpy as np
import pytest

import cupy_abn
from tests._backends import pocl_queue_or_skip
from tests._cases import make_inputs

THREADS = 6
ROUNDS = 4
# Each thread gets its own shape, dtype and mode: several variants are asked for at once.
JOBS = [((4, 3, 5, 7), np.float32, "inplace", "leaky_relu", 0.1),
        ((2, 5, 64), np.float32, "inplace_v1", "elu", 1.0),
        ((3, 2, 9), np.float64, "standard", "relu", 0.0),
        ((4, 3, 16), np.float16, "inplace", "identity", 0.0),
        ((6, 4), np.float32, "standard", "leaky_relu", 0.2),
        ((2, 3, 5, 7), np.float32, "inplace", "leaky_relu", 0.1)]


@pytest.fixture(scope="module")
def queue():
    return pocl_queue_or_skip()


def _call(job, seed, to_device, to_host):
    shape, dtype, mode, act, p = job
    x, g, b, rm, rv, dz = make_inputs(shape, dtype, "threads", seed)
    xd, rmd, rvd = to_device(x), to_device(rm), to_device(rv)
    z, saved = cupy_abn.abn_forward(xd, to_device(g), to_device(b), rmd, rvd, mode=mode,
                                    activation=act, activation_param=p)
    z = to_host(z).copy()
    dx, dg, db = cupy_abn.abn_backward(saved, to_device(dz))
    return [z, to_host(dx), to_host(dg), to_host(db), to_host(rmd), to_host(rvd)]


def _hammer(to_device, to_host):
    """Every job alone (the expectation), then all jobs in threads, ROUNDS times each."""
    want = {(i, r): _call(job, r, to_device, to_host)
            for i, job in enumerate(JOBS) for r in range(ROUNDS)}
    got, errors = {}, []
    start = threading.Barrier(THREADS)

    def worker(i):
        try:
            start.wait()
            for r in range(ROUNDS):
                got[(i, r)] = _call(JOBS[i], r, to_device, to_host)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)   # switch threads often: interleave the calls' steps
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        sys.setswitchinterval(interval)
    assert not any(t.is_alive() for t in threads), "a thread did not finish (deadlock?)"
    assert not errors, errors
    for key, results in want.items():
        for name, a, e in zip(("z", "dx", "dgamma", "dbeta", "running_mean", "running_var"),
                              got[key], results):
            # The same computation alone and among threads: bit-identical.
            np.testing.assert_array_equal(a, e, err_msg=f"job {key} {name}")


def test_threads_numpy():
    _hammer(np.array, np.asarray)


def _fresh_kernel_caches(monkeypatch):
    from cupy_abn import _runtime_opencl as R
    monkeypatch.setattr(R, "_KERNELS", {})
    monkeypatch.setattr(R, "COMPILES", type(R.COMPILES)())
    return R


def test_threads_kernels_each_variant_built_once(queue, monkeypatch):
    """All threads start at once on empty caches: each variant is built exactly once, and
    every result equals the one computed alone (the launch lock keeps one thread's kernel
    arguments from being replaced by another's between set-argument and enqueue)."""
    import pyopencl.array as cla
    R = _fresh_kernel_caches(monkeypatch)
    built = []
    real = R.build_program

    def counting(context, source, options):
        built.append(tuple(options))
        return real(context, source, options)

    monkeypatch.setattr(R, "build_program", counting)
    to_device = lambda a: cla.to_device(queue, np.ascontiguousarray(a))  # noqa: E731
    _hammer(to_device, lambda a: a.get())
    assert R.COMPILES and max(R.COMPILES.values()) == 1, R.COMPILES
    assert len(built) == len(set(built)) == sum(R.COMPILES.values())


def test_failed_compile_names_the_variant_and_writes_nothing(queue, monkeypatch):
    """A build that fails (here: every build) raises KernelCompileError with the family, entry
    and defines; x and the running statistics are untouched; nothing is cached."""
    import pyopencl.array as cla
    from cupy_abn._errors import KernelCompileError
    R = _fresh_kernel_caches(monkeypatch)
    real = R.build_program

    def broken(context, source, options):
        raise RuntimeError("injected: clBuildProgram failed")

    monkeypatch.setattr(R, "build_program", broken)
    x, g, b, rm, rv, _ = make_inputs((2, 3, 5), np.float32, "compile-fail")
    xd, rmd, rvd = (cla.to_device(queue, a) for a in (x, rm, rv))
    with pytest.raises(KernelCompileError) as info:
        cupy_abn.abn_forward(xd, cla.to_device(queue, g), cla.to_device(queue, b), rmd, rvd)
    msg = str(info.value)
    assert "OpenCL" in msg and "injected" in msg and "-DSTORE_BITS=32" in msg, msg
    assert info.value.family in msg and info.value.entry in msg
    np.testing.assert_array_equal(xd.get(), x)
    np.testing.assert_array_equal(rmd.get(), rm)
    np.testing.assert_array_equal(rvd.get(), rv)
    assert not R._KERNELS and not R.COMPILES
    # The failure is not cached: a working build afterwards succeeds.
    monkeypatch.setattr(R, "build_program", real)
    z, _ = cupy_abn.abn_forward(xd, cla.to_device(queue, g), cla.to_device(queue, b), rmd, rvd)
    assert R.COMPILES


def test_failed_second_compile_writes_nothing(queue, monkeypatch):
    """Only the elementwise kernel fails to build, on the two-pass path: nothing may be
    written before the error either."""
    import pyopencl.array as cla
    from cupy_abn import _kernel_backend
    from cupy_abn._errors import KernelCompileError
    R = _fresh_kernel_caches(monkeypatch)
    monkeypatch.setattr(_kernel_backend, "RESIDENT", False)   # channel_moments + normalize
    real = R.build_program

    def broken_normalize(context, source, options):
        if "normalize_activate" in source and "channel_moments" not in source:
            raise RuntimeError("injected: normalize_activate does not build")
        return real(context, source, options)

    monkeypatch.setattr(R, "build_program", broken_normalize)
    x, g, b, rm, rv, _ = make_inputs((2, 3, 5), np.float32, "compile-fail-2")
    xd, rmd, rvd = (cla.to_device(queue, a) for a in (x, rm, rv))
    with pytest.raises(KernelCompileError, match="normalize_activate"):
        cupy_abn.abn_forward(xd, cla.to_device(queue, g), cla.to_device(queue, b), rmd, rvd)
    np.testing.assert_array_equal(xd.get(), x)
    np.testing.assert_array_equal(rmd.get(), rm)   # every kernel is built before a launch
    np.testing.assert_array_equal(rvd.get(), rv)


def test_nvrtc_cache_temporary_files_are_per_thread(tmp_path, monkeypatch):
    """Two threads storing the same compiled variant never write the same temporary file."""
    from cupy_abn import _nvrtc
    seen, lock = [], threading.Lock()
    real_write = type(tmp_path).write_bytes

    def spy(self, data):
        with lock:
            seen.append(self.name)
        return real_write(self, data)

    monkeypatch.setattr(type(tmp_path), "write_bytes", spy)
    target = tmp_path / "ab" / "key.cubin"
    barrier = threading.Barrier(4)

    def store():
        barrier.wait()
        _nvrtc._store(target, b"x" * 100000)

    threads = [threading.Thread(target=store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 4, seen
    assert target.read_bytes() == b"x" * 100000
    assert not list(target.parent.glob("*.tmp"))


def _leak_check(to_device, to_host, calls, limit):
    x, g, b, rm, rv, dz = make_inputs((4, 3, 8), np.float32, "leak")
    gd, bd, rmd, rvd = (to_device(a) for a in (g, b, rm, rv))

    def step():
        xd = to_device(x)
        z, saved = cupy_abn.abn_forward(xd, gd, bd, rmd, rvd)
        dx, dg, db = cupy_abn.abn_backward(saved, to_device(dz))
        to_host(dg)

    for _ in range(50):   # warm up: compiled kernels, plans, lru caches
        step()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(calls):
            step()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    stats = after.compare_to(before, "filename")
    grown = sum(s.size_diff for s in stats if s.size_diff > 0)
    assert grown < limit, (f"{calls} calls grew traced memory by {grown} bytes; top: "
                           + "; ".join(str(s) for s in stats[:5]))
    return grown


def test_no_leak_numpy():
    # 1,000 calls; a leak of one small object per call would be >= 50 kB
    _leak_check(np.array, np.asarray, 1000, 32 * 1024)


def test_no_leak_kernels(queue):
    import pyopencl.array as cla
    _leak_check(lambda a: cla.to_device(queue, np.ascontiguousarray(a)), lambda a: a.get(),
                1000, 64 * 1024)
