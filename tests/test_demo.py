"""The demo: both networks compute the same function, train side by side, and the in-place one
keeps less memory for backward (bytes counted by tracemalloc: no timing is asserted)."""
import json
import warnings

import numpy as np
import pytest

pytest.importorskip("cupy_abn.chainer")
from cupy_abn.demo import __main__ as demo  # noqa: E402
from cupy_abn.demo import memory, network  # noqa: E402
from cupy_abn.demo.training import Trainer  # noqa: E402

SMALL = ["--device", "cpu", "--steps", "8", "--batch", "4", "--size", "8", "--widths", "4,8",
         "--blocks", "1", "--budget-mib", "4", "--no-progress"]


def test_networks_of_both_kinds_compute_the_same_function_in_float64():
    cfg = network.Config(widths=(4, 8), blocks=1, size=8, dtype="float64")
    data = network.SyntheticData(cfg)
    losses = {}
    for kind in network.KINDS:
        run = Trainer(kind, cfg, lr=0.05, gpu=False)
        losses[kind] = [run.step(*data.batch(i, 6)) for i in range(5)]
    np.testing.assert_allclose(losses["inplace"], losses["standard"], rtol=1e-10)


def test_network_has_the_norm_layers_its_docstring_counts():
    cfg = network.Config(widths=(4, 8, 16), blocks=2)
    assert network.norm_layers(network.build("inplace", cfg)) == 15
    assert network.norm_layers(network.build("standard", cfg)) == 15


def test_in_place_network_keeps_less_for_backward_and_never_copies():
    cfg = network.Config(widths=(8, 16), blocks=1, size=8)
    data = network.SyntheticData(cfg)
    kept = {}
    for kind in network.KINDS:
        run = Trainer(kind, cfg, lr=0.01, gpu=False)
        run.step(*data.batch(0, 8))
        with warnings.catch_warnings():
            warnings.simplefilter("error")          # no InPlaceFallbackWarning
            _, kept[kind], peak = run.measured_step(*data.batch(1, 8))
        assert peak >= kept[kind] > 0
    # Per block the standard network keeps conv outputs and activation outputs (2 buffers
    # per layer), the in-place one only the outputs.
    assert kept["inplace"] < 0.7 * kept["standard"]


def test_largest_batch_follows_the_line_and_steps_down_until_it_fits():
    calls = []

    def affine(batch):
        calls.append(batch)
        return 1000 + 100 * batch

    got = memory.largest_batch(affine, budget=10_000, probe=4)
    assert got["batch"] == 90 and got["peak_bytes"] == 10_000
    assert calls == [4, 8, 90]

    def convex(batch):   # grows faster than the line through the probes predicts
        return 1000 + 100 * batch + batch ** 2

    got = memory.largest_batch(convex, budget=10_000, probe=4)
    assert convex(got["batch"]) <= 10_000
    assert got["batch"] == 57           # 57**2 + 5700 <= 9000 < 58**2 + 5800


def test_demo_writes_json_and_png_with_tracking_losses(tmp_path):
    result = demo.main(SMALL + ["--out", str(tmp_path)])
    saved = json.loads((tmp_path / "demo_cpu.json").read_text())
    assert (tmp_path / "demo_cpu.png").stat().st_size > 10_000
    assert saved["norm_layers"] == result["norm_layers"] == 6
    runs = saved["runs"]
    for kind in network.KINDS:
        run = runs[kind]
        assert len(run["loss"]) == 8 and all(np.isfinite(run["loss"]))
        assert run["timed_steps"] == 8 - demo.WARMUP
        assert run["in_place_fallback_copies"] == 0
        fit = run["largest_batch"]
        assert 0 < fit["peak_bytes"] <= 4 * 2 ** 20
    # Same weights, same batches: float32 rounding only, over a few steps.
    assert saved["loss_tracking"]["first_10_max_abs_diff"] < 1e-3
    assert saved["kept_ratio"] < 0.75
    assert runs["inplace"]["largest_batch"]["batch"] >= runs["standard"]["largest_batch"]["batch"]


def test_demo_rejects_too_few_steps(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--steps", "1"])
    assert "--steps" in capsys.readouterr().err


def test_device_option_resolution():
    from cupy_abn._environment import gpu_available, use_gpu
    assert use_gpu("cpu") is False
    assert use_gpu("auto") is gpu_available()
    if not gpu_available():
        with pytest.raises(SystemExit, match="--device gpu: CuPy sees no CUDA device"):
            use_gpu("gpu")
    with pytest.raises(ValueError, match="device: expected 'auto', 'cpu' or 'gpu', got 'tpu'"):
        use_gpu("tpu")
