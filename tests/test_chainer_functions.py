"""Chainer FunctionNodes: gradients (check_backward), first-order only, graph safety.

The forward of the in-place nodes destroys its input, so every function under test receives a
fresh intermediate (``x * 1``) and check_backward never sees its inputs overwritten.
Finite differences run in float64; float32 and float16 gradients are compared with the float64
node's, with the backward tolerances of tests/_reference.py (float16: 2e-2).
"""
import warnings

import numpy as np
import pytest

C = pytest.importorskip("cupy_abn.chainer")
import chainer  # noqa: E402  (after cupy_abn.chainer: NumPy 2 compatibility step)
import chainer.functions as F  # noqa: E402
from chainer import gradient_check  # noqa: E402

from tests._cases import activation_params  # noqa: E402
from tests._reference import assert_close, ref_forward  # noqa: E402

ACTS = activation_params({"alpha": 0.8})
MODES = ("standard", "inplace", "inplace_v1")
FUNCS = {"standard": C.abn, "inplace": C.inplace_abn, "inplace_v1": C.inplace_abn_v1}
CHECK = dict(eps=1e-6, atol=1e-7, rtol=1e-6)   # check_backward in float64


def _inputs(rs, shape, dtype, pdtype=None):
    pdtype = pdtype or dtype
    x = rs.randn(*shape).astype(dtype) * 2 + 0.5
    c = shape[1]
    gamma = (rs.uniform(0.5, 1.5, c) * rs.choice([-1, 1], c)).astype(pdtype)
    beta = rs.randn(c).astype(pdtype)
    return x, gamma, beta


def _running(rs, c, dtype):
    return rs.randn(c).astype(dtype), rs.uniform(0.5, 2.0, c).astype(dtype)


def _fn(mode, act, training, rm=None, rv=None):
    def f(x, gamma, beta):
        return FUNCS[mode](x * 1, gamma, beta, rm, rv, training=training, activation=act,
                           activation_param=ACTS[act])
    return f


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("mode", MODES)
def test_check_backward(mode, act, training):
    rs = np.random.RandomState(7)
    x, gamma, beta = _inputs(rs, (5, 3, 4, 3), np.float64)
    rm, rv = _running(rs, 3, np.float64) if not training else (None, None)
    gy = rs.randn(*x.shape)
    gradient_check.check_backward(_fn(mode, act, training, rm, rv), (x, gamma, beta), gy,
                                  **CHECK)


def test_check_backward_relu_standard():
    rs = np.random.RandomState(3)
    x, gamma, beta = _inputs(rs, (6, 2, 5), np.float64)
    gy = rs.randn(*x.shape)
    f = lambda x, g, b: C.abn(x * 1, g, b, activation="relu")  # noqa: E731
    gradient_check.check_backward(f, (x, gamma, beta), gy, **CHECK)


@pytest.mark.parametrize("dtypes", [(np.float32, np.float32), (np.float16, np.float16),
                                    (np.float16, np.float32)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("mode", MODES)
def test_low_precision_gradients_match_float64(mode, act, training, dtypes):
    """float32 and float16 (float32 accumulation) nodes against the float64 node."""
    xdt, pdt = dtypes
    rs = np.random.RandomState(11)
    x, gamma, beta = _inputs(rs, (4, 3, 6, 5), xdt, pdt)
    rm, rv = _running(rs, 3, pdt) if not training else (None, None)
    gy = rs.randn(*x.shape).astype(xdt)
    got = {}
    for wide in (False, True):
        cast = (lambda a: a.astype(np.float64)) if wide else (lambda a: a.copy())
        vs = [chainer.Variable(cast(a)) for a in (x, gamma, beta)]
        stats = (None, None) if training else (cast(rm), cast(rv))
        y = FUNCS[mode](vs[0] * 1, vs[1], vs[2], *stats, activation=act,
                        activation_param=ACTS[act], training=training)
        y.grad = cast(gy)
        y.backward()
        got[wide] = [y.array] + [v.grad for v in vs]
    assert got[False][2].dtype == pdt and got[False][1].dtype == xdt
    for name, lo, hi in zip(("z", "dx", "dgamma", "dbeta"), got[False], got[True]):
        assert_close(lo, hi, xdt, f"{name} ({mode}, {act})",
                     "forward" if name == "z" else "backward")


@pytest.mark.parametrize("mode", MODES)
def test_forward_matches_reference(mode):
    rs = np.random.RandomState(5)
    x, gamma, beta = _inputs(rs, (3, 4, 7), np.float64)
    rm, rv = np.zeros(4), np.ones(4)
    y = FUNCS[mode](chainer.Variable(x) * 1, gamma, beta, rm, rv, training=True,
                    activation="elu", activation_param=0.5)
    ref = ref_forward(x, gamma, beta, np.zeros(4), np.ones(4), training=True, decay=0.9,
                      eps=2e-5, activation="elu", param=0.5, mode=mode)
    np.testing.assert_allclose(y.array, ref["z"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(rm, ref["running_mean"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rv, ref["running_var"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", ("inplace", "inplace_v1"))
def test_double_backward_raises(mode):
    """The in-place modes are first-order only (standard mode: tests/test_chainer_fidelity.py)."""
    rs = np.random.RandomState(0)
    x, gamma, beta = (chainer.Variable(a) for a in _inputs(rs, (4, 2, 3), np.float64))
    y = FUNCS[mode](x * 1, gamma, beta)
    with pytest.raises(NotImplementedError, match="first-order gradients only"):
        chainer.grad([F.sum(y * y)], [x], enable_double_backprop=True)


def test_in_place_node_writes_into_x_and_keeps_no_copy():
    rs = np.random.RandomState(0)
    x, gamma, beta = _inputs(rs, (4, 3, 5, 5), np.float32)
    h = chainer.Variable(x) * 1
    buf_id = id(h.array)    # no reference kept: one would make the layer copy
    with warnings.catch_warnings():
        warnings.simplefilter("error", C.InPlaceFallbackWarning)
        y = C.inplace_abn(h, gamma, beta)
    assert id(y.array) == buf_id
    saved = y.creator.saved
    assert saved.x is None and saved.z is y.array
    sizes = [getattr(v, "size", 0) for v in vars(saved).values()]
    assert sum(s for s in sizes if s >= x.size) == x.size   # z only
    assert y.creator.copy_input is False


# --- graph safety -----------------------------------------------------------------------------

def _params(c, dtype=np.float64):
    return np.ones(c, dtype), np.zeros(c, dtype)


def test_plain_chain_runs_in_place_without_warning():
    rs = np.random.RandomState(1)
    x = chainer.Variable(rs.randn(4, 3, 6))
    g, b = _params(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = x * 2
        h = C.inplace_abn(h, g, b)
        h = h * 3
        h = C.inplace_abn(h, g, b)   # the output of MulConstant, retained by nobody
        loss = F.sum(h * h)
    loss.backward()
    xr = chainer.Variable(x.array.copy())
    hr = C.abn(C.abn(xr * 2, np.ones(3) + 2e-5, b) * 3, np.ones(3) + 2e-5, b)
    F.sum(hr * hr).backward()
    np.testing.assert_allclose(h.array, hr.array, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(x.grad, xr.grad, rtol=1e-8, atol=1e-10)


def test_residual_block_reusing_overwritten_input_raises():
    """The skip connection must not silently read the layer's output as x."""
    rs = np.random.RandomState(2)
    x = chainer.Variable(rs.randn(2, 3, 4))
    g, b = _params(3)
    h = x * 1                       # the block input, an intermediate
    y = C.inplace_abn(h, g, b)
    y = y * 2
    # the library's error, not Chainer's "incompatible array types are mixed"
    for reuse in (lambda: y + h,            # skip connection to the overwritten input
                  lambda: h + y, lambda: F.relu(h), lambda: h * 2, lambda: F.sum(h),
                  lambda: h[0], lambda: h.shape, lambda: h.array.sum()):
        with pytest.raises(RuntimeError, match="overwritten in place by an InPlaceABN layer"
                                               ".*F.copy"):
            reuse()


def test_overwritten_input_error_names_the_layer():
    class Net(chainer.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.bn1 = C.InPlaceABN(3)

    net = Net()
    h = chainer.Variable(np.random.RandomState(4).randn(2, 3, 4).astype(np.float32)) + 1
    net.bn1(h)
    with pytest.raises(RuntimeError, match="overwritten in place by InPlaceABN 'bn1'"):
        F.relu(h)
    h2 = chainer.Variable(np.random.RandomState(5).randn(2, 3, 4)) + 1
    C.inplace_abn(h2, *_params(3), name="stem")
    with pytest.raises(RuntimeError, match="InPlaceABN 'stem'"):
        h2 + 1


def test_residual_block_with_skip_consumer_first_falls_back_to_copy():
    """A consumer that retained x before the layer runs (here F.matmul, a projection) keeps
    its data: the layer copies and warns, and the block computes what standard ABN computes."""
    rs = np.random.RandomState(3)
    x0 = rs.randn(5, 3)
    w = rs.randn(3, 3)
    g, b = _params(3)

    def block(abn_fn):
        x = chainer.Variable(x0.copy())
        h = x * 1
        skip = F.matmul(h, w)          # retains h for its backward
        y = abn_fn(h, g, b)
        out = F.sum((y + skip) ** 2)
        out.backward()
        return out.array, x.grad

    with pytest.warns(C.InPlaceFallbackWarning, match="retained for backward"):
        got = block(lambda h, g, b: C.inplace_abn(h, g, b))
    ref = block(lambda h, g, b: C.abn(h, g + 2e-5, b))
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-10)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-8, atol=1e-10)


_KEPT = []


def _view_of_a_kept_variable(a):
    """A reshape (a view) of an array that another variable still holds."""
    h = chainer.Variable(a) * 1
    _KEPT.append(h)
    return F.reshape(h, (4, 3, 2, 3))


@pytest.mark.parametrize("make, reason", [
    (lambda a: chainer.Variable(a), "leaf variable"),
    (lambda a: a, "is an array"),
    (lambda a: F.relu(chainer.Variable(a) * 1), "retained for backward"),
    (lambda a: F.identity(chainer.Variable(a)), "referenced outside the graph"),
    (_view_of_a_kept_variable, "view|referenced"),
])
def test_protected_inputs_are_copied_with_a_warning(make, reason):
    rs = np.random.RandomState(4)
    a = rs.randn(4, 3, 6)
    if "view" in reason:  # reshape of a view
        a = a.reshape(4, 3, 2, 3).reshape(4, 3, 6)
    x = make(a)
    arr = x.array if isinstance(x, chainer.Variable) else x
    before = arr.copy()
    g, b = _params(3)
    with pytest.warns(C.InPlaceFallbackWarning, match=reason):
        y = C.inplace_abn(x, g, b)
    np.testing.assert_array_equal(arr, before)
    assert not np.shares_memory(y.array, arr)
    if isinstance(x, chainer.Variable):
        np.testing.assert_array_equal(x.array, before)   # still usable


def test_a_view_that_alone_reaches_its_memory_is_written_in_place():
    """A reshape of an intermediate nothing else holds (as a strided convolution's output on
    the CPU): only the view reaches the memory, so the layer writes in place, silently."""
    rs = np.random.RandomState(6)
    x = F.reshape(chainer.Variable(rs.randn(4, 3, 6)) * 1, (4, 3, 2, 3))
    assert x.array.base is not None
    ptr = x.array.__array_interface__["data"][0]   # no reference to the array kept
    g, b = _params(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = C.inplace_abn(x, g, b)
    assert y.array.__array_interface__["data"][0] == ptr


def test_standard_abn_input_is_protected_from_a_later_in_place_layer():
    rs = np.random.RandomState(5)
    h = chainer.Variable(rs.randn(3, 2, 5)) * 1
    g, b = _params(2)
    y1 = C.abn(h, g, b)                # keeps h for its backward
    with pytest.warns(C.InPlaceFallbackWarning):
        y2 = C.inplace_abn(h, g, b)
    F.sum(y1 * y2).backward()          # y1's backward still sees the original h
    np.testing.assert_allclose(y1.array, y2.array, rtol=1e-4, atol=1e-4)  # scales differ by eps


def test_caller_holding_the_array_is_protected():
    rs = np.random.RandomState(8)
    h = chainer.Variable(rs.randn(3, 2, 5)) * 1
    kept = h.array
    before = kept.copy()
    with pytest.warns(C.InPlaceFallbackWarning, match="referenced outside the graph"):
        C.inplace_abn(h, *_params(2))
    np.testing.assert_array_equal(kept, before)


def test_non_contiguous_input_copied_silently():
    rs = np.random.RandomState(6)
    h = F.transpose(chainer.Variable(rs.randn(3, 5, 2)), (0, 2, 1)) * 1
    assert not h.array.flags.c_contiguous
    g, b = _params(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = C.inplace_abn(h, g, b)
    assert y.array.flags.c_contiguous and y.creator.copy_input


def test_bad_input_raises_before_writing():
    rs = np.random.RandomState(7)
    h = chainer.Variable(rs.randn(3, 2, 5)) * 1
    before = h.array.copy()
    rm, rv = np.zeros(2), np.ones(2)
    with pytest.raises(ValueError, match="activation"):
        C.inplace_abn(h, np.ones(2), np.zeros(2), rm, rv, activation="relu")
    np.testing.assert_array_equal(h.array, before)
    np.testing.assert_array_equal(rm, 0)
    with pytest.raises(ValueError, match="mode"):
        C.inplace_abn(h, np.ones(2), np.zeros(2), mode="standard")
    np.testing.assert_array_equal(h.array, before)
