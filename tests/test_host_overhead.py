"""Host-side work per call, checked by counting (never by the clock).

The CUDA runtime runs on the stub CuPy of ``benchmarks/host_overhead.py`` (no GPU needed): a
kernel object is made once per variant, the device is entered once per API call, and
``abn_backward`` does not copy gradients that already have gamma's dtype.  The benchmark itself
runs end to end at a tiny repeat count.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cupy_abn
from cupy_abn import _dispatch, api
from tests._cases import make_inputs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import host_overhead as H  # noqa: E402

SHAPE = (4, 3, 5, 7)


@pytest.fixture
def stub(monkeypatch):
    """``_runtime_cupy`` on the stub CuPy, with empty caches; restored afterwards."""
    pytest.importorskip("cupy", reason="CuPy (no GPU needed) for cupy_abn._runtime_cupy")
    from cupy_abn import _runtime_cupy as R
    cp, counters = H.make_stub_cupy()
    monkeypatch.setattr(R, "cupy", cp)
    monkeypatch.setattr(R, "_RUNTIMES", {})
    monkeypatch.setattr(R, "_MODULES", {})
    monkeypatch.setattr(_dispatch, "_CUPY", {})
    return R, cp, counters


def _stub_inputs(cp, shape=SHAPE, dtype=np.float32):
    c = shape[1]
    return (cp.empty(shape, dtype),) + tuple(cp.empty((c,), dtype) for _ in range(4))


def test_stub_arrays_are_cupy_arrays(stub):
    from cupy_abn._validation import array_family
    _, cp, _ = stub
    assert array_family(cp.empty((2, 3), np.float32)) == "cupy"


def test_function_is_built_once_and_before_any_launch(stub):
    R, cp, counters = stub
    rt = R.runtime_for(cp.empty((1,), np.float32))
    assert rt.multiprocessors == 132 and rt.max_block == 1024
    d = ("-DSTORE_BITS=32", "-DACC_BITS=32", "-DIDX64=0")
    fn = rt.function("channel_moments", "channel_moments", d)
    assert counters.counts["modules"] == 1 and counters.counts["kernel_objects"] == 1
    assert counters.counts["launches"] == 0      # compiled by function(), not by a launch
    assert fn.options == R.compile_options() + d
    assert rt.function("channel_moments", "channel_moments", d) is fn
    # a second entry of the same family and defines reuses the module
    rt.function("channel_train", "channel_train", ("-DPARAM_BITS=32", "-DACC_BITS=32"))
    rt.function("channel_train", "channel_eval", ("-DPARAM_BITS=32", "-DACC_BITS=32"))
    assert counters.counts["modules"] == 2 and counters.counts["kernel_objects"] == 3
    assert len(R._MODULES) == 2


def test_compile_options_follow_nvrtc_module(monkeypatch, stub):
    R = stub[0]
    from cupy_abn import _nvrtc
    monkeypatch.setattr(_nvrtc, "RUNTIME_OPTIONS", ("--std=c++17",), raising=False)
    assert R.compile_options() == ("--std=c++17",)
    monkeypatch.delattr(_nvrtc, "RUNTIME_OPTIONS", raising=False)
    assert R.compile_options() == ("--std=c++11",)


def test_occupancy_is_asked_once_per_kernel_and_block(stub, monkeypatch):
    R, cp, _ = stub
    asked = []

    def occupancy(ptr, block, smem):
        asked.append((ptr, block, smem))
        return 2048 // block

    monkeypatch.setattr(cp.cuda.driver, "occupancyMaxActiveBlocksPerMultiprocessor", occupancy)
    rt = R.runtime_for(cp.empty((1,), np.float32))
    fn = rt.function("grad_sums", "grad_sums", ("-DSTORE_BITS=32",))
    assert rt.occupancy(fn, 256) == 8 and rt.occupancy(fn, 256) == 8
    assert rt.occupancy(fn, 128) == 16
    assert asked == [(fn.kernel.ptr, 256, 0), (fn.kernel.ptr, 128, 0)]


def test_aligned(stub):
    R, cp, _ = stub
    rt = R.runtime_for(cp.empty((1,), np.float32))
    a = cp.empty((64,), np.float32)            # the stub pool hands out 256-byte blocks
    assert rt.aligned(a, 16) and rt.aligned(a, 256)
    view = cp.ndarray((63,), np.float32, ptr=a.data.ptr + 4)
    assert not rt.aligned(view, 16) and rt.aligned(view, 4)


@pytest.mark.parametrize("mode", ["inplace", "standard"])
def test_api_enters_the_device_once_and_reuses_kernels(stub, mode):
    """A training forward, an evaluation forward and a backward each enter the device once
    and, once warm, make no kernel object and compile nothing."""
    _, cp, counters = stub
    x, gamma, beta, rm, rv = _stub_inputs(cp)
    calls = {
        "forward_train": lambda: cupy_abn.abn_forward(x, gamma, beta, rm, rv, mode=mode),
        "forward_eval": lambda: cupy_abn.abn_forward(x, gamma, beta, rm, rv, mode=mode,
                                                     training=False),
    }
    _, saved = calls["forward_train"]()
    calls["backward"] = lambda: cupy_abn.abn_backward(saved, cp.empty(SHAPE, np.float32))
    for kind, fn in calls.items():
        fn()
        counters.reset()
        fn()
        c = counters.counts
        assert c["device_enters"] == 1, kind
        assert c["kernel_objects"] == 0 and c["modules"] == 0, kind
        assert c["launches"] >= 1, kind


def test_backward_returns_parameter_gradients_without_copying(monkeypatch):
    """dgamma/dbeta already in gamma's dtype come back as they are; others are cast."""
    returned = []
    orig = _dispatch._NUMPY.channel_backward

    def spy(*args, **kw):
        out = orig(*args, **kw)
        returned.append(out)
        return out

    monkeypatch.setattr(_dispatch._NUMPY, "channel_backward", spy)
    x, gamma, beta, rm, rv, dz = make_inputs(SHAPE, np.float32, "nocopy")
    _, saved = api.abn_forward(x, gamma, beta, rm, rv)
    _, dgamma, dbeta = api.abn_backward(saved, dz)
    assert dgamma is returned[-1][0] and dbeta is returned[-1][1]

    x, gamma, beta, rm, rv, dz = make_inputs(SHAPE, np.float16, "cast",
                                             param_dtype=np.float16)
    _, saved = api.abn_forward(x, gamma, beta, rm, rv)
    _, dgamma, dbeta = api.abn_backward(saved, dz)
    assert dgamma.dtype == dbeta.dtype == np.float16        # accumulated in float32, cast


def test_as_dtype_works_for_pyopencl_arrays():
    cl = pytest.importorskip("pyopencl")
    cla = pytest.importorskip("pyopencl.array")
    try:
        ctx = cl.Context(devices=[cl.get_platforms()[0].get_devices()[0]])
    except Exception as e:  # pragma: no cover - no OpenCL platform
        pytest.skip(f"no OpenCL device: {e}")
    a = cla.to_device(cl.CommandQueue(ctx), np.arange(3, dtype=np.float32))
    assert api._as_dtype(a, np.dtype(np.float32)) is a
    b = api._as_dtype(a, np.dtype(np.float64))
    assert b.dtype == np.float64 and np.array_equal(b.get(), [0, 1, 2])


def test_benchmark_runs_this_tree(tmp_path):
    result = H.main(["--no-before", "--shape", "4x3x5x7", "--rounds", "1", "--repeat", "2", "--inner", "1",
                     "--warmup", "1", "--out", str(tmp_path), "--no-progress"])
    saved = json.loads((tmp_path / "host_overhead.json").read_text())
    assert (tmp_path / "host_overhead.png").stat().st_size > 10_000
    assert saved["after"]["module"].startswith(str(ROOT))
    for kind in H.KINDS:
        row = saved["after"]["kinds"][kind]
        assert row == result["after"]["kinds"][kind]
        assert row["us_median"] > 0 and len(row["samples"]) == 2
        assert row["device_enters"] == 1 and row["kernel_objects"] == 0
        assert row["launches"] == len(row["launch_list"]) >= 1
        assert sum(row["breakdown"].values()) == pytest.approx(1, abs=1e-3)
    assert "speed-up" not in H.table(result)


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs git and a git checkout")
def test_benchmark_measures_a_revision_in_a_worktree(tmp_path):
    before = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True,
                            text=True).stdout
    result = H.main(["--before", "HEAD", "--shape", "4x3x5x7", "--rounds", "2", "--repeat",
                     "1", "--inner", "1", "--warmup", "1", "--out", str(tmp_path),
                     "--no-progress"])
    assert result["before"]["commit"] == H._git("rev-parse", "HEAD")
    assert "/before/" in result["before"]["module"]
    assert set(result["speedup"]) == set(H.KINDS)
    for name in ("before", "after"):       # two rounds of one sample each, pooled
        assert all(len(result[name]["kinds"][k]["samples"]) == 2 for k in H.KINDS)
    assert "speed-up" in H.table(result)
    after = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True,
                           text=True).stdout
    assert after == before          # the temporary worktree is gone
