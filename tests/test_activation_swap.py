"""``set_activation`` on the Chainer links in every mode, and a tiny run of
``python -m cupy_abn.experiments.activation_swap``."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

abn = pytest.importorskip("cupy_abn.chainer")
chainer = pytest.importorskip("chainer")
import chainer.links as L  # noqa: E402

from cupy_abn.chainer.links import NonInvertibleActivationError  # noqa: E402

C, EPS, SLOPE = 4, 2e-5, 0.01
# (link, mode, activation it is built and trained with, the other one)
CASES = [("ABN", "standard", "relu", "leaky_relu"),
         ("ABN", "standard", "leaky_relu", "relu"),
         ("InPlaceABN", "inplace", "leaky_relu", "relu"),
         ("InPlaceABN", "inplace_v1", "leaky_relu", "relu"),
         ("InPlaceABNSync", "inplace", "leaky_relu", "relu")]
IDS = [f"{c[0]}-{c[1]}-{c[2]}" for c in CASES]


class _EvalOnlyComm:
    """Evaluation exchanges nothing: a communicator that is never called suffices."""
    size, rank = 1, 0


def _layer(kind: str, mode: str, activation: str, seed: int = 0):
    if kind == "ABN":
        layer = abn.ABN(C, eps=EPS, activation=activation, activation_param=SLOPE)
    elif kind == "InPlaceABN":
        layer = abn.InPlaceABN(C, eps=EPS, activation=activation, activation_param=SLOPE,
                               mode=mode)
    else:
        layer = abn.InPlaceABNSync(C, _EvalOnlyComm(), eps=EPS, activation=activation,
                                   activation_param=SLOPE, mode=mode)
    rs = np.random.RandomState(seed)
    layer.gamma.array[...] = rs.uniform(0.5, 2.0, C)
    layer.beta.array[...] = rs.uniform(-0.5, 0.5, C)
    layer.avg_mean[...] = rs.uniform(-0.3, 0.3, C)
    layer.avg_var[...] = rs.uniform(0.5, 2.0, C)
    return layer


def _x(seed: int = 1) -> np.ndarray:
    return np.random.RandomState(seed).standard_normal((3, C, 5, 5)).astype(np.float32)


def _intermediate(x: np.ndarray) -> chainer.Variable:
    """x as the output of a node, so that an in-place layer may overwrite it."""
    return chainer.Variable(x.copy()) * 1.0


def _reference(layer, x: np.ndarray, activation: str) -> np.ndarray:
    """Evaluation in float64: running statistics, the mode's scale, then ``activation``."""
    g = layer.gamma.array.astype(np.float64)
    scale = g if layer.mode == "standard" else np.abs(g) + EPS
    shape = (1, C, 1, 1)
    y = ((x - layer.avg_mean.reshape(shape)) / np.sqrt(layer.avg_var.reshape(shape) + EPS)
         * scale.reshape(shape) + layer.beta.array.reshape(shape))
    return np.maximum(y, 0) if activation == "relu" else np.where(y >= 0, y, SLOPE * y)


@pytest.mark.parametrize("kind,mode,trained,other", CASES, ids=IDS)
def test_evaluation_with_the_swapped_activation(kind, mode, trained, other):
    layer = _layer(kind, mode, trained)
    x = _x()
    assert layer.set_activation(other, SLOPE) == (trained, SLOPE)
    assert (layer.activation, layer.activation_param) == (other, SLOPE)
    with chainer.using_config("train", False), warnings.catch_warnings():
        warnings.simplefilter("error", abn.InPlaceFallbackWarning)   # still in place
        z = layer(_intermediate(x)).array
    np.testing.assert_allclose(z, _reference(layer, x, other), rtol=1e-5, atol=1e-5)
    layer.set_activation(trained, SLOPE)   # and back
    with chainer.using_config("train", False):
        z = layer(_intermediate(x)).array
    np.testing.assert_allclose(z, _reference(layer, x, trained), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["inplace", "inplace_v1"])
def test_backward_through_in_place_relu_raises_before_writing(mode):
    conv = L.Convolution2D(C, C, 1, nobias=True)
    layer = _layer("InPlaceABN", mode, "leaky_relu")
    head = L.Linear(C * 25, 2)
    for link in (conv, layer, head):
        link.cleargrads()   # None, not Chainer's initial NaN arrays
    layer.set_activation("relu")
    stats = (layer.avg_mean.copy(), layer.avg_var.copy())
    z = layer(conv(_x()))   # training forward: allowed, batch statistics, running ones updated
    assert not np.array_equal(layer.avg_mean, stats[0])
    assert float(z.array.min()) == 0.0
    loss = chainer.functions.sum(head(z))
    z_before = z.array.copy()
    with pytest.raises(NonInvertibleActivationError, match="non-invertible activation 'relu'"):
        loss.backward()
    assert isinstance(NonInvertibleActivationError("x"), RuntimeError)
    # Nothing written: no parameter gradient anywhere (before or after the layer), z intact.
    for link in (conv, layer, head):
        assert all(p.grad is None for p in link.params())
    np.testing.assert_array_equal(z.array, z_before)


@pytest.mark.parametrize("kind,mode", [("ABN", "standard"), ("InPlaceABN", "inplace"),
                                       ("InPlaceABN", "inplace_v1")])
def test_swapping_back_restores_training(kind, mode):
    def grads(swap: bool):
        layer = _layer(kind, mode, "leaky_relu")
        if swap:
            previous = layer.set_activation("relu")
            with chainer.using_config("train", False):
                layer(_intermediate(_x(2)))
            layer.set_activation(*previous)
        z = layer(_intermediate(_x()))
        chainer.functions.sum(z * z).backward()
        return z.array, layer.gamma.grad, layer.beta.grad, layer.avg_mean

    ref, got = grads(False), grads(True)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def test_standard_mode_trains_with_any_swapped_activation():
    layer = _layer("ABN", "standard", "relu")
    layer.set_activation("leaky_relu", 0.2)
    x = chainer.Variable(_x())
    chainer.functions.sum(layer(x) ** 2).backward()
    assert x.grad is not None and layer.gamma.grad is not None


def test_set_activation_rejects_bad_values_and_keeps_the_layer():
    layer = _layer("InPlaceABN", "inplace", "leaky_relu")
    with pytest.raises(ValueError, match="activation"):
        layer.set_activation("tanh")
    with pytest.raises(TypeError, match="activation_param"):
        layer.set_activation("leaky_relu", float("nan"))
    assert (layer.activation, layer.activation_param) == ("leaky_relu", SLOPE)
    with pytest.raises(ValueError, match="invertible"):   # construction still checks
        abn.InPlaceABN(C, activation="relu")


# --- the experiment ------------------------------------------------------------------------

def test_experiment_tiny_run(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from cupy_abn.experiments import activation_swap as exp

    out = tmp_path / "results"
    assert exp.main(["--seeds", "2", "--epochs", "1", "--batch", "256", "--out", str(out),
                     "--device", "cpu", "--no-progress"]) == 0
    result = json.loads((out / "activation_swap.json").read_text())
    assert (out / "activation_swap.png").stat().st_size > 10_000
    assert [(r["training"], r["validation"]) for r in result["rows"]] == [
        ("relu", "relu"), ("relu", "leaky_relu"), ("leaky_relu", "leaky_relu"),
        ("leaky_relu", "relu")]
    for row in result["rows"]:
        for metric in ("top1", "top3"):
            stats = row[metric]
            assert len(stats["values"]) == 2
            assert 0 <= stats["mean"] <= 100 and stats["std"] >= 0
        assert row["top3"]["mean"] >= row["top1"]["mean"]
    nets = result["networks"]
    assert {n: (v["layer"], v["mode"]) for n, v in nets.items()} == {
        "relu": ("ABN", "standard"), "leaky_relu": ("InPlaceABN", "inplace")}
    kept = {n: v["memory"]["kept_for_backward_bytes"] for n, v in nets.items()}
    assert kept["leaky_relu"] < kept["relu"]   # one buffer per layer instead of two
    assert all(v["memory"]["peak_step_bytes"] >= v["memory"]["kept_for_backward_bytes"]
               for v in nets.values())
    assert result["training"]["seeds"] == 2 and result["data"]["validation"] == 450
    assert "| relu | leaky_relu |" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--seeds", "0"], "--seeds: expected a positive integer, got 0"),
    (["--epochs", "two"], "--epochs: expected a positive integer, got 'two'"),
    (["--device", "tpu"], "--device: invalid choice"),
    (["--out", "FILE"], "--out: expected a folder"),
])
def test_experiment_rejects_bad_arguments(tmp_path, capsys, args, message):
    from cupy_abn.experiments import activation_swap as exp

    (tmp_path / "FILE").write_text("")
    args = [str(tmp_path / a) if a == "FILE" else a for a in args]
    with pytest.raises(SystemExit) as err:
        exp.main(args)
    assert err.value.code == 2
    captured = capsys.readouterr().err
    assert message in captured and "Traceback" not in captured
