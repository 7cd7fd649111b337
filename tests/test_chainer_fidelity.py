"""Chainer fidelity of the links and functions: what L.BatchNormalization,
F.batch_normalization and F.fixed_batch_normalization do is the expectation.

* ``size=None``: parameters and statistics created at the first call from x's channels, on
  the link's device and in its dtype (initial_avg_mean / initial_avg_var honoured);
* ``use_gamma=False`` / ``use_beta=False``: the attribute is None;
* ``forward(x, **kwargs)``: ``finetune`` by keyword only, ``test=`` a ValueError, anything
  else a TypeError;
* an x of the wrong rank or channels fails Chainer's type check (InvalidType);
* one value per channel in training: a UserWarning and Chainer's numbers;
* standard mode: double backward (gradient_check.check_double_backward) and, in evaluation,
  gradients with respect to mean and var as F.fixed_batch_normalization gives them.  The
  in-place modes stay first order.
"""
import warnings

import numpy as np
import pytest

C = pytest.importorskip("cupy_abn.chainer")
import chainer  # noqa: E402  (after cupy_abn.chainer: NumPy 2 compatibility step)
import chainer.functions as F  # noqa: E402
import chainer.links as L  # noqa: E402
from chainer import gradient_check  # noqa: E402
from chainer.utils import type_check  # noqa: E402

from tests._cases import activation_params  # noqa: E402

LINKS = {"ABN": C.ABN, "InPlaceABN": C.InPlaceABN}
ACTS = activation_params({"slope": 0.2, "alpha": 0.7}, invertible_only=False)


def _x(shape=(5, 3, 2, 2), dtype=np.float32, seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, shape).astype(dtype)


def _fresh(x):
    """An intermediate Variable that an in-place layer may overwrite."""
    return chainer.Variable(x.copy()) * 1


# ---- size=None ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LINKS))
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, chainer.mixed16],
                         ids=["f16", "f32", "f64", "mixed16"])
def test_size_none_infers_channels_like_batch_normalization(name, dtype):
    x = _x((4, 5, 3), np.float16 if dtype == chainer.mixed16 else dtype)
    bn = L.BatchNormalization(axis=(0, 2), dtype=dtype)
    layer = LINKS[name](dtype=dtype, activation="identity", axis=(0, 2),
                        initial_gamma=1.0 if name == "ABN" else 1.0 - 2e-5)
    assert layer.avg_mean is None and layer.avg_var is None
    assert layer.gamma.array is None and layer.beta.array is None   # not initialized yet
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.InPlaceFallbackWarning)
        y = layer(_fresh(x))
    want = bn(x)
    for attr in ("avg_mean", "avg_var"):
        got, ref = getattr(layer, attr), getattr(bn, attr)
        assert got.shape == ref.shape == (5,) and got.dtype == ref.dtype
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)
    for attr in ("gamma", "beta"):
        assert getattr(layer, attr).shape == (5,)
        assert getattr(layer, attr).dtype == getattr(bn, attr).dtype
    tol = 2e-2 if np.dtype(x.dtype) == np.float16 else 1e-4
    np.testing.assert_allclose(y.array.astype(np.float64), want.array, rtol=tol, atol=tol)


def test_size_none_with_initial_statistics_and_evaluation():
    mean, var = np.array([0.5, -1.0, 2.0], "f"), np.array([2.0, 0.5, 1.5], "f")
    layer = C.ABN(initial_avg_mean=mean, initial_avg_var=var, activation="identity",
                  axis=(0, 2))
    bn = L.BatchNormalization(axis=(0, 2), initial_avg_mean=mean, initial_avg_var=var)
    x = _x((4, 3, 6))
    with chainer.using_config("train", False):
        np.testing.assert_allclose(layer(x).array, bn(x).array, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layer.avg_mean, mean)
    np.testing.assert_array_equal(layer.avg_var, var)


def test_size_none_serialization_round_trip():
    """A lazily sized link saves and loads like L.BatchNormalization (statistics and
    parameters are created by the deserializer when the link has not run yet)."""
    a = C.ABN(activation="identity", axis=0)
    a(_x((4, 3)))
    a(_x((4, 3), seed=1), finetune=True)
    target = {}
    chainer.serializers.DictionarySerializer(target).save(a)
    b = C.ABN(activation="identity", axis=0)
    chainer.serializers.NpzDeserializer(target).load(b)
    for attr in ("avg_mean", "avg_var"):
        np.testing.assert_array_equal(getattr(b, attr), getattr(a, attr))
    np.testing.assert_array_equal(b.gamma.array, a.gamma.array)
    np.testing.assert_array_equal(b.beta.array, a.beta.array)
    assert b.N == a.N == 1


def test_size_none_on_the_links_device():
    """Parameters created at the first call live where the link was sent (here the CPU
    device object; on a GPU the same path, Chainer's Parameter.initialize, is used)."""
    layer = C.ABN(activation="identity", axis=0)
    layer.to_device("@numpy")
    layer(_x((2, 4)))
    dev = chainer.get_device("@numpy")
    assert layer.gamma.device == dev and layer.beta.device == dev
    assert isinstance(layer.avg_mean, np.ndarray)


def test_size_none_synchronized_link_infers_channels():
    mpi4py = pytest.importorskip("mpi4py.MPI")
    layer = C.InPlaceABNSync(None, mpi4py.COMM_SELF, activation="identity",
                             initial_gamma=1.0 - 2e-5)
    x = _x((4, 6))
    y = layer(_fresh(x))
    assert layer.avg_mean.shape == layer.gamma.shape == (6,)
    np.testing.assert_allclose(y.array, L.BatchNormalization(6)(x).array, rtol=1e-4,
                               atol=1e-4)


# ---- use_gamma / use_beta ---------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LINKS))
@pytest.mark.parametrize("size", [3, None])
def test_unused_parameters_are_none(name, size):
    for use_gamma, use_beta in ((False, True), (True, False), (False, False)):
        layer = LINKS[name](size, use_gamma=use_gamma, use_beta=use_beta,
                            axis=None if size else (0,))
        bn = L.BatchNormalization(size, axis=None if size else (0,), use_gamma=use_gamma,
                                  use_beta=use_beta)
        for attr, used in (("gamma", use_gamma), ("beta", use_beta)):
            assert (getattr(layer, attr) is None) == (getattr(bn, attr) is None) == (not used)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", C.InPlaceFallbackWarning)
            layer(_x((4, 3)))
        assert (layer.gamma is None) == (not use_gamma)
        assert (layer.beta is None) == (not use_beta)
        assert sorted(n for n, _ in layer.namedparams()) == sorted(
            n for n, _ in bn.namedparams())


# ---- forward's keyword arguments --------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LINKS))
def test_forward_arguments_like_batch_normalization(name):
    layer, bn = LINKS[name](3), L.BatchNormalization(3)
    x = _x((4, 3))
    for link in (layer, bn):
        with pytest.raises(ValueError, match="test argument is not supported"):
            link(x, test=True)
        with pytest.raises(TypeError):
            link(x, True)           # finetune is keyword only
        with pytest.raises(TypeError):
            link(x, unknown_argument=1)
    # Nothing ran: the statistics are untouched.
    np.testing.assert_array_equal(layer.avg_mean, 0)
    assert layer.N == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.InPlaceFallbackWarning)
        layer(x, finetune=True)
    assert layer.N == 1


# ---- type check ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [3, None])
@pytest.mark.parametrize("name", sorted(LINKS))
def test_links_reject_one_dimensional_x_with_invalid_type(name, size):
    layer = LINKS[name](size, axis=None if size else (0, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.InPlaceFallbackWarning)
        with pytest.raises(type_check.InvalidType, match="ndim"):
            layer(chainer.Variable(_x((3,))))
    assert layer.avg_mean is None or np.array_equal(layer.avg_mean, np.zeros(3))


@pytest.mark.parametrize("shape", [(2, 4), (2, 5, 3, 4)])
@pytest.mark.parametrize("name", sorted(LINKS))
def test_links_reject_wrong_channels_with_invalid_type(name, shape):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.InPlaceFallbackWarning)
        with pytest.raises(type_check.InvalidType):
            LINKS[name](3)(chainer.Variable(np.zeros(shape, "f")))


@pytest.mark.parametrize("func", [C.abn, C.inplace_abn, C.inplace_abn_v1])
@pytest.mark.parametrize("training", [True, False])
def test_functions_reject_one_dimensional_x_with_invalid_type(func, training):
    g, b = np.ones(3, "f"), np.zeros(3, "f")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.InPlaceFallbackWarning)
        with pytest.raises(type_check.InvalidType, match="ndim"):
            func(_fresh(_x((3,))), g, b, np.zeros(3, "f"), np.ones(3, "f"),
                 training=training)


# ---- one value per channel --------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LINKS))
@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1, 1)])
def test_one_value_per_channel_warns_and_matches_batch_normalization(name, shape):
    x = _x(shape, np.float64)
    bn = L.BatchNormalization(3, dtype=np.float64)
    layer = LINKS[name](3, dtype=np.float64, activation="identity",
                        initial_gamma=1.0 if name == "ABN" else 1.0 - 2e-5)
    with pytest.warns(UserWarning):
        want = bn(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = layer(_fresh(x))
    assert any(issubclass(w.category, UserWarning)
               and "one value per channel" in str(w.message) for w in caught)
    np.testing.assert_allclose(got.array, want.array, atol=1e-12)
    np.testing.assert_allclose(layer.avg_mean, bn.avg_mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(layer.avg_var, bn.avg_var, rtol=1e-12, atol=1e-15)


def test_one_value_per_channel_function_gradients_like_chainer():
    x, g, b = _x((1, 3), np.float64), np.array([0.7, 1.2, 0.9]), np.array([0.1, -0.3, 0.2])
    gy = _x((1, 3), np.float64, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        grads = []
        for f in (lambda *a: F.batch_normalization(*a),
                  lambda *a: C.abn(*a, activation="identity", training=True)):
            vs = [chainer.Variable(a.copy()) for a in (x, g, b)]
            y = f(*vs)
            y.grad = gy
            y.backward()
            grads.append([v.grad for v in vs])
    for got, want in zip(*grads):
        np.testing.assert_allclose(got, want, atol=1e-12)


# ---- standard mode: double backward -----------------------------------------------------------
def _random_inputs(shape, dtype, seed):
    rs = np.random.RandomState(seed)
    c = shape[1]
    x = rs.uniform(-1, 1, shape).astype(dtype)
    gamma = rs.uniform(0.5, 1, c).astype(dtype)
    beta = rs.uniform(-1, 1, c).astype(dtype)
    mean = rs.uniform(-1, 1, c).astype(dtype)
    var = rs.uniform(0.5, 1, c).astype(dtype)
    gy, ggx = (rs.uniform(-1, 1, shape).astype(dtype) for _ in range(2))
    gg = [rs.uniform(-1, 1, c).astype(dtype) for _ in range(4)]
    return x, gamma, beta, mean, var, gy, ggx, gg


DOUBLE_CHECK = dict(dtype=np.float64, atol=1e-3, rtol=1e-2)


@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("shape", [(5, 3), (5, 3, 2, 2)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_standard_training_double_backward(act, shape, dtype):
    x, gamma, beta, _, _, gy, ggx, gg = _random_inputs(shape, dtype, 11)
    if act in ("relu", "leaky_relu"):
        beta = beta + np.sign(beta) * 1.0   # keep y away from the kink (finite differences)

    def f(x, gamma, beta):
        return C.abn(x, gamma, beta, training=True, eps=2e-5, activation=act,
                     activation_param=ACTS[act])

    gradient_check.check_double_backward(f, (x, gamma, beta), gy, (ggx, gg[0], gg[1]),
                                         **DOUBLE_CHECK)


@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_standard_evaluation_double_backward_with_statistics(act, dtype):
    x, gamma, beta, mean, var, gy, ggx, gg = _random_inputs((5, 3, 2), dtype, 12)
    if act in ("relu", "leaky_relu"):
        beta = beta + np.sign(beta) * 2.0

    def f(x, gamma, beta, mean, var):
        return C.abn(x, gamma, beta, mean, var, training=False, eps=5e-1, activation=act,
                     activation_param=ACTS[act])

    gradient_check.check_double_backward(f, (x, gamma, beta, mean, var), gy, [ggx] + gg,
                                         **DOUBLE_CHECK)


@pytest.mark.parametrize("training", [True, False])
def test_double_backward_matches_chainer(training):
    """Second-order gradients equal those of Chainer's own nodes (identity activation)."""
    x, gamma, beta, mean, var, gy, ggx, gg = _random_inputs((6, 4, 3), np.float64, 5)
    results = []
    for ours in (False, True):
        vs = [chainer.Variable(a.copy()) for a in (x, gamma, beta, mean, var)]
        args = vs if not training else vs[:3]
        if ours:
            y = C.abn(*args, training=training, activation="identity")
        elif training:
            y = F.batch_normalization(*args)
        else:
            y = F.fixed_batch_normalization(*args)
        grads = chainer.grad([y], args, [chainer.Variable(gy)], enable_double_backprop=True)
        total = sum(F.sum(gv * w) for gv, w in zip(grads, [ggx] + gg))
        second = chainer.grad([total], args)
        # None (no dependence, e.g. of the gradients on beta) counts as zeros.
        results.append([g.array for g in grads] + [
            np.zeros_like(a.array) if g is None else g.array for g, a in zip(second, args)])
    for got, want in zip(results[1], results[0]):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


def test_double_backward_through_the_link():
    """A gradient penalty through ABN (identity) gives L.BatchNormalization's gradients."""
    x0, w = _x((4, 3, 2), np.float64), _x((4, 3, 2), np.float64, seed=1)
    grads = []
    for layer in (L.BatchNormalization(3, dtype=np.float64),
                  C.ABN(3, dtype=np.float64, activation="identity")):
        layer.cleargrads()   # a link's parameter grads start as NaN arrays
        x = chainer.Variable(x0.copy())
        y = layer(x)
        gx, = chainer.grad([F.sum(w * y * y)], [x], enable_double_backprop=True)
        F.sum(gx * gx).backward()
        grads.append((x.grad, layer.gamma.grad, layer.beta.grad))
    for got, want in zip(*grads):
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def test_first_order_gradients_do_not_change_with_double_backprop():
    """The differentiable backward (double backprop) gives the fast backward's values."""
    x, gamma, beta, mean, var, gy, _, _ = _random_inputs((5, 3, 4), np.float64, 9)
    for training in (True, False):
        grads = []
        for double in (False, True):
            vs = [chainer.Variable(a.copy()) for a in (x, gamma, beta, mean, var)]
            y = C.abn(*vs, training=training, activation="leaky_relu", activation_param=0.3)
            grads.append([g.array for g in chainer.grad(
                [y], vs if not training else vs[:3], [chainer.Variable(gy)],
                enable_double_backprop=double)])
        for got, want in zip(*grads):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("func", [C.inplace_abn, C.inplace_abn_v1])
def test_in_place_modes_stay_first_order(func):
    x, gamma, beta = (chainer.Variable(a) for a in _random_inputs((4, 2, 3), np.float64, 0)[:3])
    y = func(x * 1, gamma, beta)
    with pytest.raises(NotImplementedError, match="first-order gradients only"):
        chainer.grad([F.sum(y * y)], [x], enable_double_backprop=True)


# ---- standard mode, evaluation: gradients with respect to mean and var ------------------------
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 3), (5, 3, 2, 2)], ids=str)
@pytest.mark.parametrize("eps", [2e-5, 5e-1])
def test_evaluation_gradients_like_fixed_batch_normalization(dtype, shape, eps):
    x, gamma, beta, mean, var, gy, _, _ = _random_inputs(shape, dtype, 3)
    results = []
    for f in (lambda *a: F.fixed_batch_normalization(*a, eps=eps),
              lambda *a: C.abn(*a, training=False, eps=eps, activation="identity")):
        vs = [chainer.Variable(a.copy()) for a in (x, gamma, beta, mean, var)]
        y = f(*vs)
        y.grad = gy
        y.backward()
        results.append([y.array] + [v.grad for v in vs])
    tol = 2e-2 if dtype == np.float16 else 1e-5
    for got, want in zip(results[1], results[0]):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("act", sorted(ACTS))
def test_evaluation_check_backward_with_statistics(act):
    x, gamma, beta, mean, var, gy, _, _ = _random_inputs((5, 3, 2), np.float64, 8)
    if act in ("relu", "leaky_relu"):
        beta = beta + np.sign(beta) * 2.0

    def f(*a):
        return C.abn(*a, training=False, eps=2e-5, activation=act, activation_param=ACTS[act])

    gradient_check.check_backward(f, (x, gamma, beta, mean, var), gy, dtype=np.float64,
                                  atol=1e-6, rtol=1e-5)


def test_evaluation_statistics_arrays_get_no_gradient_and_stay_unchanged():
    """Arrays (the link's avg_mean / avg_var) are read, not written, and need no gradient."""
    x, gamma, beta, mean, var, gy, _, _ = _random_inputs((4, 3), np.float32, 2)
    m0, v0 = mean.copy(), var.copy()
    xv = chainer.Variable(x)
    y = C.abn(xv, gamma, beta, mean, var, training=False, activation="identity")
    y.grad = gy
    y.backward()
    np.testing.assert_array_equal(mean, m0)
    np.testing.assert_array_equal(var, v0)
    assert xv.grad is not None


@pytest.mark.parametrize("func", [C.inplace_abn, C.inplace_abn_v1])
def test_in_place_evaluation_reads_variable_statistics_as_constants(func):
    """The in-place modes are first order in x and the parameters only: statistics given as
    Variables are read (same output as arrays) and get no gradient."""
    x, gamma, beta, mean, var, gy, _, _ = _random_inputs((4, 3, 2), np.float64, 6)
    mv, vv = chainer.Variable(mean.copy()), chainer.Variable(var.copy())
    y = func(_fresh(x), gamma, beta, mv, vv, training=False, activation="identity")
    want = func(_fresh(x), gamma, beta, mean, var, training=False, activation="identity")
    np.testing.assert_array_equal(y.array, want.array)
    y.grad = gy
    y.backward()
    assert mv.grad is None and vv.grad is None


def test_from_batch_normalization_needs_an_initialized_layer():
    with pytest.raises(ValueError, match="size=None"):
        C.InPlaceABN.from_batch_normalization(L.BatchNormalization(axis=(0, 2, 3)))
    bn = L.BatchNormalization(axis=(0, 2, 3))
    bn(_x((2, 3, 2, 2)))
    assert C.InPlaceABN.from_batch_normalization(bn).avg_mean.shape == (3,)


# ---- size or axis, memory layouts --------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LINKS))
def test_size_or_axis_is_required_like_batch_normalization(name):
    with pytest.raises(RuntimeError, match="size or axis is required"):
        L.BatchNormalization()
    with pytest.raises(RuntimeError, match="size or axis is required"):
        LINKS[name]()


@pytest.mark.parametrize("name", sorted(LINKS))
def test_channel_last_memory_layout_like_batch_normalization(name):
    """x with Chainer's CUDNN_CHANNEL_LAST_X layout: the array is NHWC, the Variable's shape
    NCHW; the link normalizes per channel as L.BatchNormalization does, the output keeps the
    layout, and dx comes back in it."""
    from chainer import memory_layouts
    rng = np.random.default_rng(3)
    raw = rng.standard_normal((2, 5, 4, 3)).astype("f") * 2 + 1   # (N, H, W, C)
    gy = rng.standard_normal(raw.shape).astype("f")
    layer = LINKS[name](3, activation="identity", initial_gamma=1.0 - 2e-5)
    bn = L.BatchNormalization(3)
    x = chainer.Variable(raw.copy(), layout=memory_layouts.CUDNN_CHANNEL_LAST_X)
    assert x.shape == (2, 3, 5, 4)
    y = layer(x)
    assert y.layout == memory_layouts.CUDNN_CHANNEL_LAST_X and y.shape == (2, 3, 5, 4)
    x_ref = chainer.Variable(raw.transpose(0, 3, 1, 2).copy())
    y_ref = bn(x_ref)
    np.testing.assert_allclose(y.raw_array, y_ref.array.transpose(0, 2, 3, 1), rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(layer.avg_mean, bn.avg_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.avg_var, bn.avg_var, rtol=1e-5, atol=1e-6)
    # Chainer's own check of a grad's shape reads .array: allowed as Chainer's tests do
    with chainer.variable._AllowArrayAccessWithNonstandardLayout():
        y.grad_var = chainer.Variable(gy.copy(), layout=memory_layouts.CUDNN_CHANNEL_LAST_X)
        y.backward()
    y_ref.grad = gy.transpose(0, 3, 1, 2).copy()
    y_ref.backward()
    np.testing.assert_allclose(layer.beta.grad, bn.beta.grad, rtol=1e-4, atol=1e-4)
    if name == "ABN":   # x is overwritten by the in-place layers; dx lands on it as well
        assert x.grad_var.layout == memory_layouts.CUDNN_CHANNEL_LAST_X
        np.testing.assert_allclose(x.grad_var.raw_array, x_ref.grad.transpose(0, 2, 3, 1),
                                   rtol=1e-4, atol=1e-4)
