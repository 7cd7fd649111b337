"""Backward of the NumPy backend: all three modes against the textbook float64 gradient,
finite differences in float64, evaluation mode, the sign rule of |gamma| + eps."""
import itertools

import numpy as np
import pytest

import cupy_abn
from tests._cases import ACTIVATIONS, DTYPES, MODES, SHAPES, case_id, make_inputs
from tests._reference import assert_close, ref_backward, ref_forward

CASES = list(itertools.product(SHAPES, DTYPES, ACTIVATIONS, MODES, (True, False)))


def _id(c):
    s, d, a, m, t = c
    return case_id(s, d, a, m, "train" if t else "eval")


def _run(x, gamma, beta, rm, rv, dz, **kw):
    z, saved = cupy_abn.abn_forward(x.copy(), gamma, beta, rm.copy(), rv.copy(), **kw)
    return cupy_abn.abn_backward(saved, dz)


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_backward_matches_float64(case):
    shape_name, dtype, act, mode, training = case
    x, gamma, beta, rm, rv, dz = make_inputs(SHAPES[shape_name], dtype, act, mode, "bwd")
    p = ACTIVATIONS[act]
    kw = dict(training=training, activation=act, mode=mode)
    dx_ref, dg_ref, db_ref = ref_backward(x, gamma, beta, dz, param=p, running_mean=rm,
                                          running_var=rv, **kw)
    dx, dg, db = _run(x, gamma, beta, rm, rv, dz, activation_param=p, **kw)
    assert dx.dtype == x.dtype and dg.dtype == gamma.dtype and db.dtype == beta.dtype
    assert_close(dx, dx_ref, dtype, f"dx {_id(case)}", "backward")
    m = x.size // x.shape[1]
    # dgamma and dbeta are sums of m terms: their error scales with sqrt(m) * |dy|.
    assert_close(dg, dg_ref, dtype, "dgamma", "backward", scale=max(1.0, np.sqrt(m)))
    assert_close(db, db_ref, dtype, "dbeta", "backward", scale=max(1.0, np.sqrt(m)))


@pytest.mark.parametrize("mode,act,training", list(itertools.product(
    MODES, list(ACTIVATIONS), [True, False])))
def test_finite_differences(mode, act, training):
    """Central differences of L = sum(z * w) in float64 against abn_backward."""
    shape = (3, 2, 4)
    x, gamma, beta, rm, rv, w = make_inputs(shape, np.float64, "fd", mode, act)
    p = ACTIVATIONS[act]
    kw = dict(training=training, activation=act, activation_param=p, mode=mode)

    def loss(xv, gv, bv):
        z, _ = cupy_abn.abn_forward(xv.copy(), gv, bv, rm.copy(), rv.copy(), **kw)
        return float((z * w).sum())

    dx, dg, db = _run(x, gamma, beta, rm, rv, w, **kw)
    h = 1e-6
    for arr, grad, name in ((x, dx, "x"), (gamma, dg, "gamma"), (beta, db, "beta")):
        num = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            args = [x, gamma, beta]
            k = ["x", "gamma", "beta"].index(name)
            plus, minus = arr.copy(), arr.copy()
            plus[i] += h
            minus[i] -= h
            args[k] = plus
            lp = loss(*args)
            args[k] = minus
            num[i] = (lp - loss(*args)) / (2 * h)
        np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-6, err_msg=name)


def test_modes_agree_with_each_other():
    """I, II and plain ABN give the same gradient for the same effective scale g."""
    x, gamma, beta, rm, rv, dz = make_inputs((5, 4, 6), np.float64, "agree")
    gamma = np.abs(gamma)
    res = {}
    for mode in MODES:
        g = gamma - 2e-5 if mode != "standard" else gamma  # same g = |gamma| + eps
        res[mode] = _run(x, g, beta, rm, rv, dz, mode=mode)
    for mode in ("inplace", "inplace_v1"):
        for a, b in zip(res[mode], res["standard"]):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_zero_gamma_still_learns():
    """d|gamma|/dgamma is +1 at gamma == 0 (as the reference implementation)."""
    x, gamma, beta, rm, rv, dz = make_inputs((5, 3, 6), np.float64, "zero")
    gamma[:] = 0
    _, dg, _ = _run(x, gamma, beta, rm, rv, dz, mode="inplace")
    _, dg_ref, _ = ref_backward(x, gamma, beta, dz, mode="inplace")
    np.testing.assert_allclose(dg, dg_ref, rtol=1e-10)
    assert np.all(dg != 0)


def test_out_may_alias_grad_output():
    x, gamma, beta, rm, rv, dz = make_inputs((4, 3, 10), np.float32, "alias")
    expected = _run(x, gamma, beta, rm, rv, dz)[0]
    z, saved = cupy_abn.abn_forward(x.copy(), gamma, beta, rm, rv)
    buf = dz.copy()
    dx, _, _ = cupy_abn.abn_backward(saved, buf, out=buf)
    assert dx is buf
    np.testing.assert_array_equal(dx, expected)


def test_backward_does_not_modify_saved_output():
    x, gamma, beta, rm, rv, dz = make_inputs((4, 3, 10), np.float32, "keep")
    z, saved = cupy_abn.abn_forward(x.copy(), gamma, beta, rm, rv)
    z0 = z.copy()
    cupy_abn.abn_backward(saved, dz)
    np.testing.assert_array_equal(z, z0)
    ref = ref_forward(x, gamma, beta)
    assert_close(z, ref["z"], np.float32, "z")
