"""The demo: both networks compute the same function, train side by side (their steps
interleaved, the step-time ratio the median of the per-pair ratios with its spread), and the
in-place one keeps less memory for backward (bytes counted by tracemalloc: no timing is
asserted)."""
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
        assert run["timed_steps"] == len(run["step_ms"]) == 8 - demo.WARMUP
        assert run["step_ms_median"] == pytest.approx(np.median(run["step_ms"]))
        assert run["in_place_fallback_copies"] == 0
        fit = run["largest_batch"]
        assert 0 < fit["peak_bytes"] <= 4 * 2 ** 20
    # Same weights, same batches: float32 rounding only, over a few steps.
    assert saved["loss_tracking"]["first_10_max_abs_diff"] < 1e-3
    assert saved["kept_ratio"] < 0.75
    assert runs["inplace"]["largest_batch"]["batch"] >= runs["standard"]["largest_batch"]["batch"]
    # The step-time ratio: the median of the per-pair ratios (pair i: step i of each), inside
    # its quartiles and range.
    spread = saved["step_time_ratio_spread"]
    pairs = np.array(runs["inplace"]["step_ms"]) / np.array(runs["standard"]["step_ms"])
    assert spread["pairs"] == len(pairs) == 8 - demo.WARMUP
    assert saved["step_time_ratio"] == spread["median"]
    assert spread["median"] == pytest.approx(np.median(pairs))
    assert spread["min"] == pytest.approx(pairs.min()) and spread["max"] == pytest.approx(
        pairs.max())
    assert spread["min"] <= spread["q1"] <= spread["median"] <= spread["q3"] <= spread["max"]
    assert spread["q1"] == pytest.approx(np.percentile(pairs, 25))


def test_demo_interleaves_the_networks_steps_alternating_which_goes_first(monkeypatch,
                                                                          tmp_path):
    calls = []
    real_step, real_measured = Trainer.step, Trainer.measured_step

    def step(self, x, t):
        calls.append(("step", self.kind))
        return real_step(self, x, t)

    def measured(self, x, t):
        calls.append(("measured", self.kind))
        return real_measured(self, x, t)

    monkeypatch.setattr(Trainer, "step", step)
    monkeypatch.setattr(Trainer, "measured_step", measured)
    demo.main(SMALL + ["--out", str(tmp_path)])
    std, inp = network.KINDS
    want = []
    for i in range(8):
        what = "measured" if i == demo.MEASURED_STEP else "step"
        want += [(what, k) for k in ((std, inp) if i % 2 == 0 else (inp, std))]
    assert calls[:16] == want      # then the largest-batch search, one network at a time
    assert all(what == "measured" for what, _ in calls[16:])


@pytest.mark.parametrize("steps", ["1", "2", "5"])
def test_demo_rejects_fewer_steps_than_its_warm_up_needs(steps, capsys):
    # Steps 0 to WARMUP - 1 are not timed: fewer steps would leave no step time to report.
    with pytest.raises(SystemExit) as exc:
        demo.main(["--device", "cpu", "--steps", steps])
    assert exc.value.code == 2          # argparse's usage error, not a traceback
    err = capsys.readouterr().err
    assert f"--steps: need at least {demo.MIN_STEPS}" in err and f"got {steps}" in err
    assert demo.MIN_STEPS == demo.WARMUP + 1


def test_demo_at_its_minimum_steps_reports_a_step_time(tmp_path, capsys):
    args = list(SMALL)
    args[args.index("--steps") + 1] = str(demo.MIN_STEPS)
    result = demo.main(args + ["--out", str(tmp_path)])
    for run in result["runs"].values():
        assert run["timed_steps"] == 1 and run["step_ms_median"] > 0
    assert result["step_time_ratio"] > 0
    spread = result["step_time_ratio_spread"]
    assert spread["pairs"] == 1
    assert spread["min"] == spread["q1"] == spread["median"] == spread["q3"] == spread["max"]
    out = capsys.readouterr().out
    assert "step time" in out and "median of 1 interleaved pairs" in out


def test_summary_prints_n_a_for_a_missing_step_time(capsys):
    runs = {kind: {"label": network.LABELS[kind], "kept_for_backward_bytes": 2 ** 20,
                   "peak_step_bytes": 2 ** 21, "step_ms_median": None,
                   "largest_batch": {"batch": 3}} for kind in network.KINDS}
    track = {"last_fifth_mean_standard": 1.0, "last_fifth_mean_inplace": 1.0,
             "initial_loss": 2.0, "first_10_max_abs_diff": 0.0,
             "mean_of_10_max_abs_diff": 0.0, "max_abs_diff": 0.0}
    demo._print({"runs": runs, "loss_tracking": track, "kept_ratio": 1.0, "peak_ratio": 1.0,
                 "step_time_ratio": None, "largest_batch_ratio": 1.0}, demo.Path("x.json"))
    out = capsys.readouterr().out
    assert "n/a" in out and "step time n/a" in out


@pytest.mark.parametrize("option, value, message", [
    ("--widths", "8,x", "argument --widths: expected positive integers separated by commas"),
    ("--widths", "8,,16", "argument --widths: expected positive integers"),
    ("--widths", "0,8", "argument --widths: expected positive integers"),
    ("--batch", "0", "argument --batch: expected a positive integer, got 0"),
    ("--batch", "-2", "argument --batch: expected a positive integer, got -2"),
    ("--batch", "two", "argument --batch: expected a positive integer, got 'two'"),
    ("--size", "0", "argument --size: expected a positive integer, got 0"),
    ("--blocks", "0", "argument --blocks: expected a positive integer, got 0"),
    ("--budget-mib", "0", "argument --budget-mib: expected a positive integer, got 0"),
])
def test_demo_rejects_bad_values_with_a_usage_error(option, value, message, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(["--device", "cpu", option, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_widths_option_parses_to_a_tuple():
    assert demo._parse(["--widths", "4, 8,16"]).widths == (4, 8, 16)


def test_device_option_resolution():
    from cupy_abn._environment import gpu_available, use_gpu
    assert use_gpu("cpu") is False
    assert use_gpu("auto") is gpu_available()
    if not gpu_available():
        with pytest.raises(SystemExit, match="--device gpu: CuPy (sees no CUDA device|is not "
                                             "installed)"):
            use_gpu("gpu")
    with pytest.raises(ValueError, match="device: expected 'auto', 'cpu' or 'gpu', got 'tpu'"):
        use_gpu("tpu")


def test_device_gpu_without_cupy_says_how_to_install_it(monkeypatch):
    import sys
    from cupy_abn._environment import use_gpu
    monkeypatch.setitem(sys.modules, "cupy", None)      # import cupy -> ImportError
    with pytest.raises(SystemExit) as exc:
        use_gpu("gpu")
    msg = str(exc.value)
    assert "CuPy is not installed" in msg and 'pip install ".[cuda12]"' in msg
    assert "sees no CUDA device" not in msg
    assert use_gpu("auto") is False


def _toy_result(step_ms=(12.0, 10.0)):
    runs = {}
    for kind, ms, kept, batch in zip(network.KINDS, step_ms, (5, 3), (375, 470)):
        runs[kind] = {"label": network.LABELS[kind], "loss": list(np.linspace(3, 0.1, 40)),
                      "kept_for_backward_bytes": kept * 2 ** 20,
                      "peak_step_bytes": (kept + 6) * 2 ** 20, "step_ms_median": ms,
                      "step_ms": [] if ms is None else [ms - 1, ms, ms + 2],
                      "largest_batch": {"batch": batch}}
    std, inp = (runs[k] for k in ("standard", "inplace"))
    spread = None if None in step_ms else {"median": 0.83, "q1": 0.78, "q3": 0.9, "min": 0.6,
                                           "max": 1.3, "pairs": 3}
    return {"device": "CPU: test", "norm_layers": 6, "runs": runs,
            "config": {"batch": 16, "budget_mib": 256},
            "kept_ratio": 0.6, "peak_ratio": 0.8,
            "step_time_ratio": None if spread is None else spread["median"],
            "step_time_ratio_spread": spread,
            "largest_batch_ratio": 470 / 375,
            "loss_tracking": {"first_10_max_abs_diff": 1e-5, "mean_of_10_max_abs_diff": 0.1}}


def _figure(result, tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cupy_abn.demo import plot as plot_mod
    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    plot_mod.plot(result, tmp_path / "demo.png")
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    return figs[0]


def test_figure_shows_step_time_ratios_labels_and_readable_legends(tmp_path, monkeypatch):
    fig = _figure(_toy_result(), tmp_path, monkeypatch)
    ax_loss, ax_mem, ax_time, ax_batch = fig.axes
    for ax in fig.axes:
        assert ax.get_ylabel()                      # every panel says what its axis is
    assert "step time" in ax_time.get_title() and "0.83x" in ax_time.get_title()
    assert "median of 3 interleaved pairs" in ax_time.get_title()
    assert "quartiles 0.78-0.90" in ax_time.get_title() and "range 0.60-1.30" in \
        ax_time.get_title()
    # whiskers: each network's quartiles of its step times
    assert any(getattr(c, "errorbar", None) is not None for c in ax_time.containers)
    assert "1.25x" in ax_batch.get_title()          # the largest-batch panel has its ratio
    assert ax_batch.get_ylabel() == "batch size (samples)"
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in (ax_mem, ax_time, ax_batch):
        # Value labels stay inside the frame: the axes leave room above the tallest bar.
        frame = ax.get_window_extent(renderer)
        for text in ax.texts:
            assert text.get_window_extent(renderer).y1 <= frame.y1
    # The hatch legend's swatches are neutral, not one network's colour.
    from matplotlib.colors import to_rgba
    for patch in ax_mem.get_legend().get_patches():
        assert patch.get_facecolor() == to_rgba("white")
    # The per-step curves are opaque tints, distinct per network (no blend into one colour).
    thin = [line for line in ax_loss.get_lines() if line.get_linewidth() < 1]
    assert len(thin) == 2 and thin[0].get_color() != thin[1].get_color()
    assert all(line.get_alpha() in (None, 1) for line in thin)


def test_figure_without_a_step_time_says_n_a(tmp_path, monkeypatch):
    fig = _figure(_toy_result(step_ms=(None, None)), tmp_path, monkeypatch)
    ax_time = fig.axes[2]
    assert "n/a" in ax_time.get_title()
    assert [t.get_text() for t in ax_time.texts] == ["n/a", "n/a"]
