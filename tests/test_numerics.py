"""Numerically hard data and precision: large means, tiny spreads, float16 accumulation."""
import numpy as np
import pytest

import cupy_abn
from tests._cases import make_inputs, rng_for
from tests._reference import ref_backward, ref_forward


@pytest.mark.parametrize("mode", ["standard", "inplace", "inplace_v1"])
def test_large_mean_small_std_float32(mode):
    """mean 1e4, std 1e-2 in float32: E[x^2] - E[x]^2 would lose every digit of the variance."""
    rng = rng_for("hard", mode)
    c = 3
    x = (1e4 + 1e-2 * rng.standard_normal((16, c, 32, 32))).astype(np.float32)
    gamma = np.ones(c, np.float32)
    beta = np.zeros(c, np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    ref = ref_forward(x, gamma, beta, rm, rv, mode=mode, activation="identity")
    z, saved = cupy_abn.abn_forward(x.copy(), gamma, beta, rm, rv, mode=mode,
                                    activation="identity")
    # The variance of the float32 data themselves, to 1e-3 relative.
    np.testing.assert_allclose(saved.stats[1], ref["var"], rtol=1e-3)
    np.testing.assert_allclose(rv, ref["running_var"], rtol=1e-3)
    # A float32 mean near 1e4 is off by up to half an ulp (4.9e-4), which is 0.05 std;
    # the normalized output may be off by that much, but not more.
    np.testing.assert_allclose(saved.stats[0], ref["mean"], rtol=1e-7)
    assert np.abs(z.astype(np.float64) - ref["z"]).max() < 0.1
    # The spread of each channel's output is right to 1e-3 (eps makes it sqrt(var/(var+eps))).
    np.testing.assert_allclose(z.astype(np.float64).std(axis=(0, 2, 3)),
                               ref["z"].std(axis=(0, 2, 3)), rtol=1e-3)


def test_float16_accumulates_in_float32():
    """Many float16 values: a float16 accumulator would saturate/round badly (m = 65536)."""
    x, gamma, beta, rm, rv, dz = make_inputs((64, 2, 32, 32), np.float16, "acc16")
    ref = ref_forward(x, gamma, beta, rm, rv)
    z, saved = cupy_abn.abn_forward(x.copy(), gamma, beta, rm, rv)
    assert saved.stats.dtype == np.float32
    np.testing.assert_allclose(saved.stats[0], ref["mean"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(saved.stats[1], ref["var"], rtol=1e-5)
    dx, dg, db = cupy_abn.abn_backward(saved, dz)
    dx_ref, dg_ref, db_ref = ref_backward(x, gamma, beta, dz)
    assert np.all(np.isfinite(dx))
    np.testing.assert_allclose(db, db_ref, rtol=1e-3, atol=0.5)   # sum of 65536 terms
    np.testing.assert_allclose(dg, dg_ref, rtol=1e-3, atol=0.5)


def test_elu_inverse_at_saturation():
    """Very negative pre-activations saturate ELU at -alpha; the inverse stays finite."""
    x = np.array([[-1e3], [0.0], [1.0], [2.0]], np.float32).reshape(4, 1)
    z, saved = cupy_abn.abn_forward(x, np.ones(1, np.float32), np.zeros(1, np.float32),
                                    activation="elu", activation_param=1.0)
    dx, dg, db = cupy_abn.abn_backward(saved, np.ones_like(z))
    assert np.all(np.isfinite(dx)) and np.isfinite(dg).all()
