"""The benchmarks run end to end on the CPU at toy sizes, and every implementation they time
computes the same layer (a benchmark that compares different math compares nothing)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cupy_abn.chainer")
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import _baselines  # noqa: E402
import kernels  # noqa: E402

SLOPE = 0.1


def _outputs(impl, x, dz):
    """Each pass once, on a fresh setup (the in-place forward overwrites its buffer)."""
    out = []
    for name in kernels.PASSES:
        got = kernels._prepare(impl, np, x.copy(), dz)[name]()
        out.append(np.array(getattr(got, "array", got)))
    return out


@pytest.mark.parametrize("impl", kernels.IMPLS)
def test_every_implementation_computes_the_same_layer(impl, monkeypatch):
    monkeypatch.setattr(kernels, "SLOPE", SLOPE)
    rs = np.random.RandomState(0)
    x = 1.0 + 2.0 * rs.standard_normal((3, 5, 4, 3))
    dz = rs.standard_normal(x.shape)
    want = [np.asarray(a) for a in _outputs("composition", x, dz)]
    got = _outputs(impl, x, dz)
    # float64 throughout; eval uses the initial running statistics
    for name, w, g in zip(("forward_train", "forward_eval", "backward"), want, got):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-9, err_msg=f"{impl} {name}")


def test_kernel_benchmark_writes_rows_for_every_case(tmp_path):
    result = kernels.main(["--device", "cpu", "--batch", "2", "--shapes", "4:3:3,6:2:2",
                           "--dtypes", "float32,float16", "--repeat", "2", "--warmup", "1",
                           "--out", str(tmp_path), "--no-progress"])
    saved = json.loads((tmp_path / "kernels_cpu.json").read_text())
    assert (tmp_path / "kernels_cpu.png").stat().st_size > 10_000
    assert saved["copy_gbps"] == result["copy_gbps"] > 0
    rows = saved["rows"]
    assert len(rows) == 2 * 2 * len(kernels.IMPLS) * len(kernels.PASSES)
    for r in rows:
        size = int(np.prod(r["shape"])) * np.dtype(r["dtype"]).itemsize
        assert r["ms"] > 0 and r["model_bytes"] == kernels.MODEL_BYTES[r["pass"]] * size
        assert r["fraction_of_copy"] == pytest.approx(r["gbps"] / saved["copy_gbps"])
        if r["impl"] == "chainer":
            assert r["speedup_vs_chainer"] == 1.0


def test_memory_benchmark_reports_kept_and_peak(tmp_path):
    import memory
    result = memory.main(["--device", "cpu", "--batches", "2,4", "--size", "8",
                          "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "memory_cpu.json").read_text())
    assert saved["norm_layers"] == 15
    assert set(saved["blocks"]) == {"add", "post"}
    for block in saved["blocks"].values():
        for kind, rows in block["runs"].items():
            assert [r["batch"] for r in rows] == [2, 4]
            for r in rows:
                assert r["peak_bytes"] >= r["kept_bytes"] > 0
            assert rows[1]["kept_bytes"] > rows[0]["kept_bytes"]
    assert result["kept_ratio"] < 0.75
    # the fused residual add keeps no y beside z: less kept than the baseline's add + act
    assert result["blocks"]["post"]["kept_ratio"] < 0.75


def test_gpu_clock_times_each_call_between_cuda_events():
    """The CUDA-event branch of the clock, on a stand-in for cupy's event API (no GPU here):
    warm-up calls untimed, one event pair per timed call, the median in seconds."""
    import types
    from _timing import Clock
    log = []

    class Event:
        def record(self):
            self.at = len(log)
            log.append("record")

        def synchronize(self):
            log.append("sync")

    cuda = types.SimpleNamespace(
        Event=Event, Device=lambda: types.SimpleNamespace(synchronize=lambda: log.append("dev")),
        get_elapsed_time=lambda s, e: {3: 2.0, 6: 4.0, 9: 30.0}[s.at])  # ms per timed call
    fake = types.SimpleNamespace(__name__="cupy", cuda=cuda)
    clock = Clock(fake, warmup=2, repeat=3)
    assert clock.gpu
    got = clock.seconds(lambda: log.append("call"))
    assert got == pytest.approx(4e-3)
    assert log == ["call", "call", "dev"] + ["record", "call", "record"] * 3 + ["sync"]


def test_memory_resnext_reports_kept_per_layer_and_predictions(tmp_path):
    """The ResNeXt benchmark on a small instance (one bottleneck per stage, 64x64): every
    layer's share of the kept bytes sums to the total, the in-place forms keep less, and the
    fused residual add less again."""
    import memory_resnext
    result = memory_resnext.main(["--batches", "1,2", "--size", "64", "--depths", "1,1,1,1",
                                  "--at", "8", "--no-progress", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "memory_resnext101.json").read_text())
    assert (tmp_path / "memory_resnext101.png").exists()
    assert saved["kept_ratio"] == result["kept_ratio"]
    assert result["kept_ratio_residual"] < result["kept_ratio"] < 0.9
    for form in saved["forms"].values():
        for run in form["runs"]:
            layer_sum = sum(b for _, b in run["layers"])
            # the loss and the classifier's few bytes come after the last layer mark
            assert 0 <= run["kept_bytes"] - layer_sum < 0.01 * run["kept_bytes"]
        assert form["largest_batch"]["80"] > form["largest_batch"]["16"] > 0
    names = [layer["layer"] for layer in saved["forms"]["bn"]["layers"]]
    assert names[0] == "stem" and names[-1] == "head"
    assert "stage4.block1.conv3+norm3+add" in names
