"""``to_batch_normalization``: a trained layer as a plain ``L.BatchNormalization`` and the
activation (deployment), and the round trips with ``from_batch_normalization``."""
import numpy as np
import pytest

import cupy_abn.chainer as C   # first: it makes Chainer importable under NumPy 2
import chainer  # noqa: E402
import chainer.links as L  # noqa: E402

from tests._cases import rng_for  # noqa: E402

ACTS = [("leaky_relu", 0.1), ("elu", 1.3), ("identity", 0.0)]


def _trained(cls, act, p, dtype=np.float64, **kw):
    """A layer after a few training steps: gamma of both signs, moved statistics, N > 0."""
    rng = rng_for("export", cls.__name__, act, np.dtype(dtype).name)
    layer = cls(4, activation=act, activation_param=p, dtype=dtype, **kw)
    layer.gamma.array[...] = rng.uniform(0.3, 2, 4) * np.array([1, -1, 1, -1])
    layer.beta.array[...] = rng.normal(0, 1, 4)
    for _ in range(3):
        x = chainer.Variable(rng.normal(2, 3, (8, 4, 3, 3)).astype(dtype)) * 1.0
        layer(x, finetune=True)
    return layer, rng.normal(1, 2, (5, 4, 3, 3)).astype(dtype)


def _eval(f, x):
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        return f(chainer.Variable(x.copy())).array


@pytest.mark.parametrize("cls,act,p", [(cls, a, p) for cls in (C.ABN, C.InPlaceABN)
                                        for a, p in ACTS] + [(C.ABN, "relu", 0.0)],
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_export_computes_the_same_evaluation_output(cls, act, p):
    """relu: ABN only (not invertible)."""
    layer, x = _trained(cls, act, p)
    seq = layer.to_batch_normalization()
    bn = seq[0]
    assert type(bn) is L.BatchNormalization and len(seq) == (1 if act == "identity" else 2)
    np.testing.assert_allclose(_eval(seq, x), _eval(layer, x), rtol=1e-13, atol=1e-13)
    assert bn.N == layer.N == 3 and bn.eps == layer.eps and bn.decay == layer.decay
    np.testing.assert_array_equal(bn.avg_mean, layer.avg_mean)
    np.testing.assert_array_equal(bn.avg_var, layer.avg_var)
    want = np.abs(layer.gamma.array) + layer.eps if cls is C.InPlaceABN else layer.gamma.array
    np.testing.assert_array_equal(bn.gamma.array, want)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-6), (np.float16, 2e-3)],
                         ids=["float32", "float16"])
def test_export_of_lower_precision(dtype, tol):
    """float16 layers keep float32 parameters (as L.BatchNormalization)."""
    layer, x = _trained(C.InPlaceABN, "leaky_relu", 0.1, dtype=dtype)
    seq = layer.to_batch_normalization()
    assert seq[0].gamma.dtype == layer.gamma.dtype
    np.testing.assert_allclose(_eval(seq, x.astype(dtype)), _eval(layer, x.astype(dtype)),
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("act,p", ACTS, ids=lambda v: str(v))
def test_round_trip_in_place_to_bn_and_back(act, p):
    """InPlaceABN -> BatchNormalization -> InPlaceABN: the same function; gamma comes back as
    |gamma| (the sign the in-place scale never used), to rounding of (|g| + eps) - eps."""
    layer, x = _trained(C.InPlaceABN, act, p)
    back = C.InPlaceABN.from_batch_normalization(layer.to_batch_normalization()[0], act, p)
    np.testing.assert_allclose(_eval(back, x), _eval(layer, x), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(back.gamma.array, np.abs(layer.gamma.array), rtol=0,
                               atol=4 * np.finfo(np.float64).eps)
    for name in ("avg_mean", "avg_var"):
        np.testing.assert_array_equal(getattr(back, name), getattr(layer, name))
    np.testing.assert_array_equal(back.beta.array, layer.beta.array)
    assert back.N == layer.N


def test_round_trip_bn_to_in_place_and_back():
    """BatchNormalization (gamma >= eps) -> InPlaceABN -> BatchNormalization: gamma within one
    rounding, everything else exact."""
    rng = rng_for("bn-round-trip")
    bn = L.BatchNormalization(4, dtype=np.float64)
    bn.gamma.array[...] = rng.uniform(0.1, 2, 4)
    bn.beta.array[...] = rng.normal(0, 1, 4)
    bn.avg_mean[...] = rng.normal(0, 1, 4)
    bn.avg_var[...] = rng.uniform(0.5, 2, 4)
    bn.N = 7
    again = C.InPlaceABN.from_batch_normalization(bn, "elu", 1.0).to_batch_normalization()[0]
    np.testing.assert_allclose(again.gamma.array, bn.gamma.array, rtol=0,
                               atol=4 * np.finfo(np.float64).eps)
    for name in ("avg_mean", "avg_var"):
        np.testing.assert_array_equal(getattr(again, name), getattr(bn, name))
    np.testing.assert_array_equal(again.beta.array, bn.beta.array)
    assert again.N == 7


def test_export_without_gamma_beta_and_over_an_axis():
    layer = C.InPlaceABN(None, axis=(0, 1, 2), use_gamma=False, use_beta=False,
                         dtype=np.float64)
    x = rng_for("nhwc").normal(0, 1, (3, 4, 5, 6))
    layer(chainer.Variable(x.copy()) * 1.0)
    seq = layer.to_batch_normalization()
    np.testing.assert_array_equal(seq[0].gamma.array, np.ones(6))
    np.testing.assert_allclose(_eval(seq, x), _eval(layer, x), rtol=1e-13, atol=1e-13)


def test_export_of_an_uninitialized_layer_raises():
    with pytest.raises(ValueError, match="no parameters yet"):
        C.InPlaceABN(None, axis=0).to_batch_normalization()
