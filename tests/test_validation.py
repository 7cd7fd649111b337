"""Every guarded bad input raises before anything is written.

Each case checks the exception type, that the message names the argument and what is
expected, and that x and the running statistics are bit-for-bit unchanged.
"""
import warnings

import numpy as np
import pytest

import cupy_abn
from tests._cases import make_inputs


def _inputs(shape=(4, 3, 5), dtype=np.float32):
    x, gamma, beta, rm, rv, _ = make_inputs(shape, dtype, "validation")
    return dict(x=x, gamma=gamma, beta=beta, running_mean=rm, running_var=rv)


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _case(name, exc, words, change=None, **kw):
    return pytest.param(change or (lambda a: a), kw, exc, words, id=name)


CASES = [
    _case("ndim1", ValueError, ["x", "ndim >= 2", "ndim=1"],
          lambda a: {**a, "x": a["x"][:, 0, 0].copy()}),
    _case("gamma-length", ValueError, ["gamma", "shape (3,)", "shape (4,)"],
          lambda a: {**a, "gamma": np.ones(4, np.float32)}),
    _case("beta-dtype", TypeError, ["beta", "float32", "float64"],
          lambda a: {**a, "beta": a["beta"].astype(np.float64)}),
    _case("running-var-length", ValueError, ["running_var", "shape (3,)"],
          lambda a: {**a, "running_var": np.ones(2, np.float32)}),
    _case("gamma-2d", ValueError, ["gamma", "shape (3,)", "(3, 1)"],
          lambda a: {**a, "gamma": a["gamma"][:, None].copy()}),
    _case("x-int", TypeError, ["x", "float16, float32 or float64", "int32"],
          lambda a: {**a, "x": a["x"].astype(np.int32)}),
    _case("x-bool", TypeError, ["x", "float16, float32 or float64", "bool"],
          lambda a: {**a, "x": a["x"] > 0}),
    _case("x-list", TypeError, ["x", "numpy.ndarray"], lambda a: {**a, "x": [[1.0, 2.0]]}),
    _case("x-readonly", ValueError, ["x", "writeable", "mode 'inplace'"],
          lambda a: {**a, "x": _readonly(a["x"])}),
    _case("x-noncontiguous", ValueError, ["x", "C-contiguous", "strides"],
          lambda a: {**a, "x": np.asfortranarray(a["x"])}),
    _case("relu-inplace", ValueError, ["activation", "leaky_relu", "'relu'"],
          activation="relu"),
    _case("relu-inplace_v1", ValueError, ["activation", "leaky_relu"],
          activation="relu", mode="inplace_v1"),
    _case("slope-zero", ValueError, ["activation_param", "slope > 0", "0.0"],
          activation="leaky_relu", activation_param=0.0),
    _case("slope-negative", ValueError, ["activation_param", "slope > 0", "-0.1"],
          activation="leaky_relu", activation_param=-0.1),
    _case("alpha-zero", ValueError, ["activation_param", "alpha > 0"],
          activation="elu", activation_param=0.0),
    _case("param-nan", TypeError, ["activation_param", "finite"],
          activation="elu", activation_param=float("nan")),
    _case("unknown-activation", ValueError, ["activation", "'tanh'", "leaky_relu"],
          activation="tanh"),
    _case("unknown-mode", ValueError, ["mode", "'inplace_v3'", "'inplace'"],
          mode="inplace_v3"),
    _case("eps-zero", ValueError, ["eps", "> 0", "0.0"], eps=0.0),
    _case("eps-negative", ValueError, ["eps", "> 0", "-1e-05"], eps=-1e-5),
    _case("decay-out-of-range", ValueError, ["decay", "[0, 1]", "1.5"], decay=1.5),
    _case("m0-training", ValueError, ["x", "at least one element per channel", "0 elements"],
          lambda a: {**a, "x": a["x"][:0].copy()}),
    _case("eval-missing-stats", TypeError, ["running_mean", "evaluation mode", "None"],
          lambda a: {**a, "running_mean": None, "running_var": None}, training=False),
    _case("only-running-mean", TypeError, ["running_mean/running_var", "both"],
          lambda a: {**a, "running_var": None}),
    _case("running-mean-readonly", ValueError, ["running_mean", "writeable"],
          lambda a: {**a, "running_mean": _readonly(a["running_mean"])}),
    _case("gamma-int", TypeError, ["gamma", "float16, float32 or float64", "int64"],
          lambda a: {**a, "gamma": a["gamma"].astype(np.int64)}),
    _case("running-var-other-dtype", TypeError, ["running_var", "dtype of gamma", "float16"],
          lambda a: {**a, "running_var": a["running_var"].astype(np.float16)}),
]


@pytest.mark.parametrize("change,kw,exc,words", CASES)
def test_bad_forward_input_raises_before_writing(change, kw, exc, words):
    args = change(_inputs())
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items()}
    with pytest.raises(exc) as info:
        cupy_abn.abn_forward(args["x"], args["gamma"], args["beta"], args["running_mean"],
                             args["running_var"], **kw)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"message {msg!r} lacks {w!r}"
    for k, v in args.items():
        if isinstance(v, np.ndarray):
            assert np.array_equal(v, before[k], equal_nan=v.dtype.kind == "f"), f"{k} changed"
            assert v.tobytes() == before[k].tobytes(), f"{k} changed"


def test_numpy_and_other_library_mixed():
    """A NumPy x with parameters of another array library (pyopencl here; cupy on GPU)."""
    cl = pytest.importorskip("pyopencl")
    cla = pytest.importorskip("pyopencl.array")
    try:
        ctx = cl.Context(devices=[cl.get_platforms()[0].get_devices()[0]])
    except Exception as e:  # pragma: no cover - no OpenCL platform
        pytest.skip(f"no OpenCL device: {e}")
    q = cl.CommandQueue(ctx)
    a = _inputs()
    before = a["x"].copy()
    gamma = cla.to_device(q, a["gamma"])
    with pytest.raises(TypeError, match="gamma: expected a numpy array like x"):
        cupy_abn.abn_forward(a["x"], gamma, a["beta"], a["running_mean"], a["running_var"])
    assert np.array_equal(a["x"], before)


def test_bad_grad_output():
    a = _inputs()
    z, saved = cupy_abn.abn_forward(a["x"], a["gamma"], a["beta"])
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(4, 3, 5\)"):
        cupy_abn.abn_backward(saved, np.ones((4, 3, 6), np.float32))
    with pytest.raises(TypeError, match="grad_output: expected dtype float32"):
        cupy_abn.abn_backward(saved, np.ones((4, 3, 5), np.float64))
    with pytest.raises(ValueError, match="out: expected shape"):
        cupy_abn.abn_backward(saved, np.ones((4, 3, 5), np.float32), out=np.ones(3))


# ---- the happy path builds no message ---------------------------------------------------------
class _CountingFloat(float):
    """A float that counts how often it is formatted (repr, str or an f-string)."""
    formatted = 0

    def __repr__(self):
        type(self).formatted += 1
        return float.__repr__(self)

    __str__ = __repr__

    def __format__(self, spec):
        type(self).formatted += 1
        return float.__format__(self, spec)


_GOOD_CALLS = [
    dict(),
    dict(training=False),
    dict(mode="standard", activation="relu"),
    dict(mode="inplace_v1", activation="elu", activation_param=1.0),
    dict(no_running=True),
    dict(dtype=np.float16),
    dict(dtype=np.float16, param_dtype=np.float16),
    dict(dtype=np.float64, count=10),
]


@pytest.mark.parametrize("call", _GOOD_CALLS, ids=lambda c: ",".join(f"{k}={v}" for k, v in
                                                                     c.items()) or "default")
def test_checks_that_pass_format_no_message(call, monkeypatch):
    """Neither ``fail`` nor ``expect`` (which took pre-formatted text) runs on valid input, and
    no scalar argument is formatted: messages are built only when a check fails."""
    from cupy_abn import _validation as V

    def must_not_run(*args, **kw):
        raise AssertionError(f"message built on the happy path: {args}")

    monkeypatch.setattr(V, "fail", must_not_run)
    monkeypatch.setattr(V, "expect", must_not_run)
    call = dict(call)
    dtype = call.pop("dtype", np.float32)
    param_dtype = call.pop("param_dtype", None)
    no_running = call.pop("no_running", False)
    x, gamma, beta, rm, rv, dz = make_inputs((4, 3, 5), dtype, "happy",
                                             param_dtype=param_dtype)
    if no_running:
        rm = rv = None
    _CountingFloat.formatted = 0
    kw = dict(training=True, decay=_CountingFloat(0.9), eps=_CountingFloat(1e-5),
              activation="leaky_relu", activation_param=_CountingFloat(0.01), mode="inplace")
    kw.update({k: (_CountingFloat(v) if isinstance(v, float) else v) for k, v in call.items()})
    assert V.check_forward(x, gamma, beta, rm, rv, **kw).family == "numpy"
    z, saved = cupy_abn.abn_forward(x, gamma, beta, rm, rv,
                                    **{k: v for k, v in kw.items() if k != "count"})
    V.check_backward(saved, dz.astype(z.dtype), out=np.empty_like(z))
    cupy_abn.abn_backward(saved, dz.astype(z.dtype))
    assert _CountingFloat.formatted == 0


def test_expect_formats_lazily():
    from cupy_abn import _validation as V
    V.expect(True, "x", lambda: 1 / 0, lambda: 1 / 0)    # never called when the check passes
    with pytest.raises(TypeError, match=r"^x: expected a thing, got 3$"):
        V.expect(False, "x", lambda: "a thing", lambda: 3, TypeError)
    with pytest.raises(ValueError, match=r"^y: expected ndim 2, got ndim 1$"):
        V.expect(False, "y", "ndim 2", "ndim 1")


# ---- one value per channel in training: Chainer's warning, issued before anything is written --
def test_one_value_per_channel_warns_before_writing():
    """m == 1 is not an error (Chainer warns and computes); made an error by the warnings
    filter, it leaves every input untouched: the warning comes before any write."""
    args = _inputs()
    args["x"] = args["x"][:1, :, :1].copy()
    before = {k: v.copy() for k, v in args.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(UserWarning, match="one value per channel"):
            cupy_abn.abn_forward(args["x"], args["gamma"], args["beta"],
                                 args["running_mean"], args["running_var"])
    for k, v in args.items():
        assert v.tobytes() == before[k].tobytes(), f"{k} changed"


def test_one_value_per_channel_no_warning_in_evaluation_or_m2():
    a = _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cupy_abn.abn_forward(a["x"][:1, :, :1].copy(), a["gamma"], a["beta"],
                             a["running_mean"], a["running_var"], training=False)
        cupy_abn.abn_forward(a["x"][:1, :, :2].copy(), a["gamma"], a["beta"],
                             a["running_mean"], a["running_var"])
