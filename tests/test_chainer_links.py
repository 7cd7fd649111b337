"""Links ABN / InPlaceABN next to L.BatchNormalization + activation: training trajectories,
running statistics, evaluation, finetuning, serialization, conversion from a trained BN."""
import warnings

import numpy as np
import pytest

from tests._backends import NO_GPU, gpu_count

C = pytest.importorskip("cupy_abn.chainer")
import chainer  # noqa: E402  (after cupy_abn.chainer: NumPy 2 compatibility step)
import chainer.functions as F  # noqa: E402
import chainer.links as L  # noqa: E402
from chainer import serializers  # noqa: E402

from tests._chainer_nets import Net, abn_norm  # noqa: E402

SLOPE = 0.1


def _bn_act(dtype):
    class BNAct(chainer.Chain):
        def __init__(self, size):
            super().__init__()
            with self.init_scope():
                self.bn = L.BatchNormalization(size, dtype=dtype)

        def forward(self, x, finetune=False):
            return F.leaky_relu(self.bn(x, finetune=finetune), SLOPE)
    return BNAct


def _pair(kind, dtype=np.float64, seed=0):
    """The reference network and one with cupy-abn layers, with identical parameters."""
    np.random.seed(seed)
    ref = Net(_bn_act(dtype), dtype=dtype)
    net = Net(abn_norm(kind, dtype, SLOPE), dtype=dtype)
    for name in ("c1", "c2", "fc"):
        for p, q in zip(getattr(ref, name).params(), getattr(net, name).params()):
            q.array[...] = p.array
    for name in ("n1", "n2"):
        bn, layer = getattr(ref, name).bn, getattr(net, name)
        eps = 0 if kind == "abn" else bn.eps     # in place, the scale is |gamma| + eps
        layer.gamma.array[...] = bn.gamma.array - eps
    return ref, net


def _data(dtype, seed=1, n=6):
    rs = np.random.RandomState(seed)
    return rs.randn(n, 3, 5, 5).astype(dtype), rs.randint(0, 5, n).astype(np.int32)


def _train(net, steps, dtype):
    opt = chainer.optimizers.MomentumSGD(lr=0.05)
    opt.setup(net)
    losses = []
    for i in range(steps):
        x, t = _data(dtype, seed=i)
        loss = F.softmax_cross_entropy(net(x), t)
        net.cleargrads()
        loss.backward()
        opt.update()
        losses.append(float(loss.array))
    return np.array(losses)


@pytest.mark.parametrize("kind", ["abn", "inplace", "inplace_v1"])
def test_training_matches_batch_normalization(kind):
    ref, net = _pair(kind)
    with warnings.catch_warnings():
        # The first layer's input is the network input (a leaf): it is copied, with a warning.
        warnings.simplefilter("ignore", C.InPlaceFallbackWarning)
        got = _train(net, 6, np.float64)
    want = _train(ref, 6, np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    for name in ("n1", "n2"):
        bn, layer = getattr(ref, name).bn, getattr(net, name)
        np.testing.assert_allclose(layer.avg_mean, bn.avg_mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(layer.avg_var, bn.avg_var, rtol=1e-9, atol=1e-12)
        eps = 0 if kind == "abn" else bn.eps
        np.testing.assert_allclose(layer.gamma.array + eps, bn.gamma.array, rtol=1e-9)
        np.testing.assert_allclose(layer.beta.array, bn.beta.array, rtol=1e-9, atol=1e-12)
    for p, q in zip(ref.c2.params(), net.c2.params()):
        np.testing.assert_allclose(q.array, p.array, rtol=1e-8, atol=1e-12)


def test_training_float32_tracks_batch_normalization():
    ref, net = _pair("inplace", np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.InPlaceFallbackWarning)
        got = _train(net, 6, np.float32)
    want = _train(ref, 6, np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize("kind", ["abn", "inplace"])
def test_evaluation_uses_running_statistics(kind):
    ref, net = _pair(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.InPlaceFallbackWarning)
        _train(net, 3, np.float64)
    _train(ref, 3, np.float64)
    x, _ = _data(np.float64, seed=99)
    mean_before = net.n1.avg_mean.copy()
    with chainer.using_config("train", False), chainer.using_config("enable_backprop", False):
        np.testing.assert_allclose(net(x).array, ref(x).array, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(net.n1.avg_mean, mean_before)


def test_finetune_accumulates_like_batch_normalization():
    rs = np.random.RandomState(0)
    bn = L.BatchNormalization(3, dtype=np.float64)
    layer = C.InPlaceABN(3, dtype=np.float64, activation="identity")
    for _ in range(3):
        x = rs.randn(4, 3, 2)
        bn(x, finetune=True)
        layer(chainer.Variable(x) * 1, finetune=True)
    assert layer.N == bn.N == 3
    np.testing.assert_allclose(layer.avg_mean, bn.avg_mean, rtol=1e-12)
    np.testing.assert_allclose(layer.avg_var, bn.avg_var, rtol=1e-12)
    layer.start_finetuning()
    assert layer.N == 0


@pytest.mark.parametrize("use_gamma, use_beta", [(False, True), (True, False), (False, False)])
def test_use_gamma_use_beta(use_gamma, use_beta):
    rs = np.random.RandomState(1)
    x = rs.randn(5, 3, 4)
    bn = L.BatchNormalization(3, dtype=np.float64, use_gamma=use_gamma, use_beta=use_beta)
    for cls in (C.ABN, C.InPlaceABN):
        # In place the scale is |gamma| + eps: gamma 1 - eps applies BN's initial scale 1.
        init = 1.0 if cls is C.ABN else 1.0 - 2e-5
        layer = cls(3, dtype=np.float64, use_gamma=use_gamma, use_beta=use_beta,
                    activation="identity", initial_gamma=init)
        # As L.BatchNormalization: an unused parameter is a None attribute.
        assert (layer.gamma is not None) == use_gamma == (bn.gamma is not None)
        assert (layer.beta is not None) == use_beta == (bn.beta is not None)
        y = layer(chainer.Variable(x.copy()) * 1)
        np.testing.assert_allclose(y.array, bn(x).array, rtol=1e-9, atol=1e-12)


def test_parameters_and_persistents_like_batch_normalization():
    bn = L.BatchNormalization(7)
    for cls in (C.ABN, C.InPlaceABN):
        layer = cls(7)
        assert sorted(n for n, _ in layer.namedparams()) == sorted(
            n for n, _ in bn.namedparams())
        assert layer._persistent == bn._persistent
        assert layer.gamma.dtype == np.float32 and layer.avg_var.dtype == np.float32
        np.testing.assert_array_equal(layer.gamma.array, 1)
    assert C.InPlaceABN(3, dtype=np.float16).gamma.dtype == np.float16
    assert C.InPlaceABN(3, initial_gamma=2.0, initial_beta=0.5).beta.array[0] == 0.5
    with pytest.raises(ValueError, match="use ABN for the standard mode"):
        C.InPlaceABN(3, mode="standard")
    # L.BatchNormalization's positional order, then activation, slope and mode
    positional = C.InPlaceABN(3, 0.8, 1e-4, None, True, True, None, None, "elu", 0.5,
                              "inplace_v1")
    assert (positional.decay, positional.eps, positional.mode) == (0.8, 1e-4, "inplace_v1")
    assert (positional.activation, positional.activation_param) == ("elu", 0.5)
    assert C.ABN(3, mode="inplace").mode == "inplace"


def test_float16_input_with_float32_parameters():
    with chainer.using_config("dtype", chainer.mixed16):
        layer = C.InPlaceABN(3)
    assert layer.gamma.dtype == np.float32
    rs = np.random.RandomState(2)
    x = chainer.Variable(rs.randn(4, 3, 5).astype(np.float16)) * 1
    y = layer(x)
    assert y.dtype == np.float16
    layer.cleargrads()
    F.sum(y).backward()
    assert layer.gamma.grad.dtype == np.float32 and np.isfinite(layer.gamma.grad).all()


def test_save_load_npz_round_trip(tmp_path):
    rs = np.random.RandomState(3)
    layer = C.InPlaceABN(4, activation="elu", activation_param=0.5)
    for _ in range(2):
        layer(chainer.Variable(rs.randn(3, 4, 2).astype(np.float32)) * 1, finetune=True)
    layer.gamma.array[...] = rs.randn(4)
    path = tmp_path / "abn.npz"
    serializers.save_npz(str(path), layer)
    other = C.InPlaceABN(4, activation="elu", activation_param=0.5)
    serializers.load_npz(str(path), other)
    for name in ("avg_mean", "avg_var"):
        np.testing.assert_array_equal(getattr(other, name), getattr(layer, name))
    np.testing.assert_array_equal(other.gamma.array, layer.gamma.array)
    np.testing.assert_array_equal(other.beta.array, layer.beta.array)
    assert other.N == layer.N == 2
    # An ABN checkpoint loads into L.BatchNormalization too: same names.
    bn = L.BatchNormalization(4)
    serializers.load_npz(str(path), bn)
    np.testing.assert_array_equal(bn.avg_var, layer.avg_var)


def test_from_batch_normalization_maps_gamma_and_counts_unrepresentable():
    rs = np.random.RandomState(4)
    bn = L.BatchNormalization(5, dtype=np.float64)
    bn.gamma.array[...] = [1.5, -0.5, 0.0, 2.0, 1e-6]
    bn.beta.array[...] = rs.randn(5)
    bn(rs.randn(8, 5, 3))
    with pytest.warns(UserWarning, match="3 of 5 entries of gamma"):
        layer = C.InPlaceABN.from_batch_normalization(bn, activation="leaky_relu",
                                                      activation_param=SLOPE)
    assert layer.N == bn.N and layer.eps == bn.eps and layer.decay == bn.decay
    np.testing.assert_array_equal(layer.avg_mean, bn.avg_mean)
    x = rs.randn(6, 5, 4)
    with chainer.using_config("train", False):
        got = layer(chainer.Variable(x.copy()) * 1).array
        want = F.leaky_relu(bn(x), SLOPE).array
    ok = np.array([0, 3])                 # representable channels: identical outputs
    np.testing.assert_allclose(got[:, ok], want[:, ok], rtol=1e-9, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bn.gamma.array[...] = 1.0
        C.InPlaceABN.from_batch_normalization(bn)


def test_chain_of_conv_layers_runs_in_place_without_warnings():
    """conv -> InPlaceABN: the conv output is overwritten (after the contiguous copy that
    Chainer's CPU convolution needs) and no warning fires."""
    net = Net(lambda s: C.InPlaceABN(s, activation_param=SLOPE), dtype=np.float32)
    x, t = _data(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", C.InPlaceFallbackWarning)
        loss = F.softmax_cross_entropy(net(x * np.float32(1)), t)  # not the leaf itself
    net.cleargrads()
    loss.backward()
    assert all(np.isfinite(p.grad).all() for p in net.params())


def test_sync_link_is_exported():
    assert C.InPlaceABNSync.__module__ == "cupy_abn.chainer.sync"


@pytest.mark.gpu
@pytest.mark.skipif(gpu_count() < 1, reason=NO_GPU)
@pytest.mark.parametrize("kind", ["abn", "inplace", "inplace_v1"])
def test_training_on_gpu_matches_cpu(kind):
    import cupy
    _, cpu = _pair(kind, np.float32)
    _, gpu = _pair(kind, np.float32)
    gpu.to_device("@cupy:0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.InPlaceFallbackWarning)
        want = _train(cpu, 4, np.float32)
        opt = chainer.optimizers.MomentumSGD(lr=0.05)
        opt.setup(gpu)
        got = []
        for i in range(4):
            x, t = _data(np.float32, seed=i)
            loss = F.softmax_cross_entropy(gpu(cupy.asarray(x)), cupy.asarray(t))
            gpu.cleargrads()
            loss.backward()
            opt.update()
            got.append(float(loss.array))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    np.testing.assert_allclose(cupy.asnumpy(gpu.n2.avg_var), cpu.n2.avg_var, rtol=1e-4)


@pytest.mark.parametrize("cls, kwargs, match", [
    ("InPlaceABN", dict(activation="relu"), "invertible activation"),
    ("InPlaceABN", dict(activation="leaky_relu", activation_param=0.0), "slope > 0"),
    ("InPlaceABN", dict(activation="softplus"), "one of"),
    ("ABN", dict(mode="inplace_v2"), "mode"),
    ("ABN", dict(activation="elu", activation_param=float("nan")), "finite"),
])
def test_bad_activation_or_mode_fails_at_construction(cls, kwargs, match):
    """Not at the first call, when a network is already built and maybe half trained."""
    with pytest.raises((ValueError, TypeError), match=match):
        getattr(C, cls)(3, **kwargs)
