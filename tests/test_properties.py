"""Property-based tests (hypothesis): forward and backward of every backend against the
independent float64 reference (tests/_reference.py), at the tolerances of its table ``TOL``.

What is drawn: shapes of 1-4 axes with sizes 1 (one channel, size-1 axes, one value per
channel) and primes; ``axis`` (default channels on axis 1, or any non-empty set of axes to
normalize over, Chainer's rule); x dtype and, on NumPy, the parameters' dtype; ``eps``,
``decay``, the slope/alpha; mode, activation (``relu`` only in ``standard``); training or
evaluation; data of scale 1e-3..1e4 with a per-channel offset of up to 100 standard
deviations (float16: within its range); gamma of both signs.

Budgets and profiles: tests/_hypothesis_profile.py (derandomized under tox/CI; the counts of
examples run are printed at the end of the session).  The kernels on PoCL compile one program
per variant: their property draws from a smaller variant space (x float32 or float16 with the
default parameter dtypes, two slopes/alphas per activation do not matter: they are arguments).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import cupy_abn  # noqa: E402
from tests import _hypothesis_profile as HP  # noqa: E402
from tests._backends import pocl_queue  # noqa: E402
from tests._reference import TOL, assert_close, ref_backward, ref_forward  # noqa: E402

SIZES = (1, 2, 3, 5, 7, 13)
MAX_ELEMENTS = 3000
F16, F32, F64 = (np.dtype(t) for t in (np.float16, np.float32, np.float64))
DEFAULT_PARAM = {F16: F32, F32: F32, F64: F64}
INVERTIBLE = ("identity", "leaky_relu", "elu")


@st.composite
def cases(draw, kernels: bool = False):
    """One call: arrays (NumPy, float64 reference inputs cast to the dtypes) and keywords."""
    dtype = draw(st.sampled_from([F32, F16] if kernels else [F64, F32, F16]))
    pdtype = DEFAULT_PARAM[dtype] if kernels else draw(
        st.sampled_from([DEFAULT_PARAM[dtype], F32, F64]))
    ndim = draw(st.integers(1 if not kernels else 2, 4))
    shape = tuple(draw(st.lists(st.sampled_from(SIZES), min_size=ndim, max_size=ndim)))
    if kernels and draw(st.booleans()):          # a longer row: the vector path (packs)
        shape = shape[:-1] + (draw(st.sampled_from([8, 16, 24])),)
    if math.prod(shape) > MAX_ELEMENTS:
        shape = tuple(min(s, 5) for s in shape)
    if ndim >= 2 and draw(st.booleans()):
        axis = None                              # channels on axis 1
    else:
        axis = tuple(sorted(draw(st.sets(st.integers(0, ndim - 1), min_size=1,
                                         max_size=ndim))))
    reduced = (0,) + tuple(range(2, ndim)) if axis is None else axis
    kept = tuple(i for i in range(ndim) if i not in reduced)
    mode = draw(st.sampled_from(["inplace", "inplace_v1", "standard"]))
    acts = INVERTIBLE + (("relu",) if mode == "standard" else ())
    activation = draw(st.sampled_from(acts))
    if activation == "leaky_relu":
        param = draw(st.sampled_from([0.01, 0.2, 1.0, 3.0]))
    elif activation == "elu":
        param = draw(st.sampled_from([0.1, 1.0, 2.5]))
    else:
        param = 0.0
    training = draw(st.booleans())
    eps = 10 ** draw(st.floats(-5, -1))
    decay = draw(st.sampled_from([0.0, 0.1, 0.9, 0.999, 1.0]))
    log_scale = draw(st.floats(-3, 3 if dtype == F16 else 4))
    scale = 10.0 ** log_scale
    max_offset = 100.0 if dtype != F16 else min(100.0, 2e4 / scale)
    offset_ratio = draw(st.floats(-max_offset, max_offset))
    seed = draw(st.integers(0, 2 ** 32 - 1))

    rng = np.random.default_rng(seed)
    pshape = tuple(shape[i] for i in kept)
    k = math.prod(pshape)
    col_shape = tuple(shape[i] if i in kept else 1 for i in range(ndim))
    offs = (offset_ratio * (1 + 0.1 * rng.standard_normal(k))).reshape(col_shape)
    x = (scale * (rng.standard_normal(shape) + offs)).astype(dtype)
    gamma = (rng.uniform(0.2, 2.0, k) * rng.choice([-1.0, 1.0], k)).astype(pdtype)
    beta = rng.normal(0, 1, k).astype(pdtype)
    rmean = (scale * (offs.reshape(k) + 0.3 * rng.standard_normal(k))).astype(pdtype)
    rvar = (scale ** 2 * rng.uniform(0.5, 2.0, k)).astype(pdtype)
    dz = rng.standard_normal(shape).astype(dtype)
    arrays = dict(x=x, gamma=gamma.reshape(pshape), beta=beta.reshape(pshape),
                  rm=rmean.reshape(pshape), rv=rvar.reshape(pshape), dz=dz)
    kw = dict(training=training, decay=decay, eps=eps, activation=activation,
              activation_param=param, mode=mode, axis=axis)
    return arrays, kw, (reduced, kept)


def _to_nc(a, reduced, kept):
    """``a`` with the reduced axes first, as (M, K): the reference's (N, C) layout."""
    m = math.prod(a.shape[i] for i in reduced)
    return np.transpose(a, reduced + kept).reshape(m, -1)


def _from_nc(a2, shape, reduced, kept):
    moved = a2.reshape(tuple(shape[i] for i in reduced + kept))
    return np.transpose(moved, np.argsort(reduced + kept))


def expected(arrays, kw, axes):
    """float64 reference: z, dx, dgamma, dbeta and the running statistics, shaped as the API's."""
    reduced, kept = axes
    x = arrays["x"]
    f64 = lambda a: np.asarray(a, np.float64).reshape(-1)  # noqa: E731
    x2 = _to_nc(x.astype(np.float64), reduced, kept)
    dz2 = _to_nc(arrays["dz"].astype(np.float64), reduced, kept)
    g, b, rm, rv = (f64(arrays[n]) for n in ("gamma", "beta", "rm", "rv"))
    common = dict(training=kw["training"], eps=kw["eps"], activation=kw["activation"],
                  param=kw["activation_param"], mode=kw["mode"])
    with np.errstate(divide="ignore", invalid="ignore"):   # its m / (m - 1) at m == 1
        f = ref_forward(x2, g, b, rm, rv, **common)
        dx, dg, db = ref_backward(x2, g, b, dz2, running_mean=rm, running_var=rv, **common)
    # dx is of order g * invstd * |dz| (it may cancel to ~0, e.g. two values per channel)
    g_eff = np.abs(g) + kw["eps"] if kw["mode"] != "standard" else np.abs(g)
    slope = max(1.0, kw["activation_param"])
    dx_scale = float((g_eff / np.sqrt(f["var"] + kw["eps"])).max() * np.abs(dz2).max() * slope)
    m = x2.shape[0]
    if kw["training"]:   # Chainer's unbiased factor m / max(m - 1, 1) (m == 1: variance 0)
        d = kw["decay"]
        rm = d * rm + (1 - d) * f["mean"]
        rv = d * rv + (1 - d) * f["var"] * m / max(m - 1, 1)
    # Conditioning: x - mean with the mean rounded to the accumulation dtype is off by up to
    # u * |mean| / std in xhat, whatever the algorithm (statistics of data far from 0 with a
    # small spread: two values per channel may have a spread much below the data's scale).
    if kw["training"]:
        mean, var = f["mean"], f["var"]
    else:
        mean, var = rm, rv
    cond = float((np.abs(mean) / np.sqrt(np.asarray(var) + kw["eps"])).max())
    pshape = arrays["gamma"].shape
    return dict(cond=cond, z=_from_nc(f["z"], x.shape, reduced, kept),
                dx=_from_nc(dx, x.shape, reduced, kept), dg=dg.reshape(pshape),
                db=db.reshape(pshape), rm=rm.reshape(pshape), rv=rv.reshape(pshape), m=m,
                dx_scale=dx_scale or 1.0)


def run(arrays, kw, to_device, to_host):
    """Forward then backward through the public API on one backend; host copies out."""
    x = to_device(arrays["x"])
    rm, rv = to_device(arrays["rm"]), to_device(arrays["rv"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # one value per channel: Chainer's
        z, saved = cupy_abn.abn_forward(x, to_device(arrays["gamma"]),
                                        to_device(arrays["beta"]), rm, rv, **kw)
    if kw["mode"] != "standard":
        assert z is x, "in-place mode: the output is not x"
    z_host = to_host(z).copy()
    dx, dg, db = cupy_abn.abn_backward(saved, to_device(arrays["dz"]))
    return dict(z=z_host, dx=to_host(dx), dg=to_host(dg), db=to_host(db), rm=to_host(rm),
                rv=to_host(rv))


def _narrowest(*dtypes):
    return min((np.dtype(d) for d in dtypes), key=lambda d: d.itemsize)


def _widen(want, dtype, pdtype, kind):
    """Factor on atol for the conditioning of x - mean (see ``expected``): 1 for data whose
    offset is a few standard deviations, more when the mean is far outside the spread."""
    u = 2.0 ** -53 if F64 in (np.dtype(dtype), np.dtype(pdtype)) else 2.0 ** -24
    _, atol = TOL[np.dtype(dtype)][kind]
    return 1.0 + 8 * u * want["cond"] / atol


def check(got, want, arrays, kw, label):
    dtype = arrays["x"].dtype
    pdtype = arrays["gamma"].dtype
    wf, wb = _widen(want, dtype, pdtype, "forward"), _widen(want, dtype, pdtype, "backward")
    assert got["z"].dtype == dtype and got["dx"].dtype == dtype, label
    assert got["dg"].dtype == pdtype and got["db"].dtype == pdtype, label
    z_scale = max(1.0, float(np.abs(want["z"]).max())) * wf
    assert_close(got["z"], want["z"], dtype, f"{label}: z", scale=z_scale)
    # dx is of order g * invstd * dz (1/scale): its atol is relative to that magnitude.
    assert_close(got["dx"], want["dx"], dtype, f"{label}: dx", "backward",
                 scale=want["dx_scale"] * wb)
    # Sums of m terms, rounded to the parameters' dtype.
    sdt = _narrowest(dtype, pdtype)
    sums = max(1.0, math.sqrt(want["m"])) * wb
    assert_close(got["dg"], want["dg"], sdt, f"{label}: dgamma", "backward", scale=sums)
    assert_close(got["db"], want["db"], sdt, f"{label}: dbeta", "backward", scale=sums)
    # Running statistics: relative to their magnitude, in the parameters' dtype (float16:
    # rounded to 11 bits) accumulated in float32 or float64.
    if pdtype == F16:
        stat_dt, kind = F16, "forward"
    else:
        stat_dt, kind = (F64 if F64 == dtype == pdtype else F32), "stats"
    for name in ("rm", "rv"):
        mag = float(np.abs(want[name]).max()) or 1.0
        assert_close(got[name], want[name], stat_dt, f"{label}: running {name}", kind,
                     scale=mag)


def _describe(arrays, kw):
    x = arrays["x"]
    return (f"x {x.shape} {x.dtype}, params {arrays['gamma'].shape} {arrays['gamma'].dtype}, "
            f"{kw}")


@settings(max_examples=HP.budget("numpy"))
@given(case=cases())
def test_numpy_backend_matches_float64(case):
    arrays, kw, axes = case
    HP.EXAMPLES["numpy backend vs float64"] += 1
    want = expected(arrays, kw, axes)
    got = run(arrays, kw, np.array, np.asarray)
    check(got, want, arrays, kw, "numpy " + _describe(arrays, kw))


_QUEUE = pocl_queue()


@pytest.mark.skipif(_QUEUE is None, reason="no PoCL OpenCL device "
                    "(pip install pocl-binary-distribution)")
@settings(max_examples=HP.budget("kernels"))
@given(case=cases(kernels=True))
def test_kernels_on_pocl_match_float64_and_numpy(case):
    import pyopencl.array as cla
    arrays, kw, axes = case
    HP.EXAMPLES["kernels (PoCL) vs float64 and NumPy"] += 1
    want = expected(arrays, kw, axes)
    # np.require, not np.ascontiguousarray (which makes a 0-d parameter 1-d)
    got = run(arrays, kw, lambda a: cla.to_device(_QUEUE, np.require(a, requirements="C")),
              lambda a: a.get())
    label = "kernels " + _describe(arrays, kw)
    check(got, want, arrays, kw, label)
    # and the NumPy backend at the same tolerances
    ref = run(arrays, kw, np.array, np.asarray)
    ref.update(m=want["m"], dx_scale=want["dx_scale"], cond=want["cond"])
    check(got, ref, arrays, kw, label + " (vs NumPy)")
