"""Forward of the NumPy backend against the float64 reference: every shape, dtype,
activation, mode, in training and evaluation; in-place semantics; saved-state size."""
import itertools

import numpy as np
import pytest

import cupy_abn
from tests._cases import ACTIVATIONS, DTYPES, MODES, SHAPES, case_id, make_inputs
from tests._reference import assert_close, ref_forward

CASES = [(s, d, a, m, t) for s, d, a, m, t in itertools.product(
    SHAPES, DTYPES, ACTIVATIONS, MODES, (True, False))]


def _id(c):
    s, d, a, m, t = c
    return case_id(s, d, a, m, "train" if t else "eval")


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_forward_matches_float64(case):
    shape_name, dtype, act, mode, training = case
    shape = SHAPES[shape_name]
    x, gamma, beta, rm, rv, _ = make_inputs(shape, dtype, act, mode)
    param = ACTIVATIONS[act]
    ref = ref_forward(x, gamma, beta, rm, rv, training=training, activation=act,
                      param=param, mode=mode)
    xin, rm_out, rv_out = x.copy(), rm.copy(), rv.copy()
    z, saved = cupy_abn.abn_forward(xin, gamma, beta, rm_out, rv_out, training=training,
                                    activation=act, activation_param=param, mode=mode)
    assert z.dtype == x.dtype and z.shape == x.shape
    assert_close(z, ref["z"], dtype, f"z {_id(case)}")
    assert_close(rm_out, ref["running_mean"], dtype, "running_mean", "stats")
    assert_close(rv_out, ref["running_var"], dtype, "running_var", "stats")
    assert saved.m == x.size // x.shape[1]


@pytest.mark.parametrize("mode", MODES)
def test_inplace_modes_write_into_x(mode):
    x, gamma, beta, rm, rv, _ = make_inputs((4, 3, 5), np.float32, mode)
    xin = x.copy()
    z, saved = cupy_abn.abn_forward(xin, gamma, beta, rm, rv, mode=mode)
    if mode == "standard":
        assert z is not xin and np.array_equal(xin, x), "standard mode must keep x"
        assert saved.x is xin
    else:
        assert z is xin, "the in-place output must be the input buffer"
        assert saved.x is None


@pytest.mark.parametrize("mode", ["inplace", "inplace_v1"])
def test_saved_state_keeps_no_x_sized_array(mode):
    x, gamma, beta, rm, rv, _ = make_inputs((8, 4, 6, 6), np.float32, mode)
    z, saved = cupy_abn.abn_forward(x, gamma, beta, rm, rv, mode=mode)
    big = [k for k, v in vars(saved).items()
           if isinstance(v, np.ndarray) and v.size >= x.size and v is not z]
    assert big == [], f"saved state keeps x-sized arrays besides z: {big}"
    assert saved.stats.size <= 8 * x.shape[1]


def test_running_stats_untouched_in_eval():
    x, gamma, beta, rm, rv, _ = make_inputs((4, 3, 5), np.float64, "eval")
    rm0, rv0 = rm.copy(), rv.copy()
    cupy_abn.abn_forward(x, gamma, beta, rm, rv, training=False)
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)


def test_training_without_running_stats():
    x, gamma, beta, *_ = make_inputs((4, 3, 5), np.float64, "norun")
    ref = ref_forward(x, gamma, beta)
    z, _ = cupy_abn.abn_forward(x.copy(), gamma, beta)
    assert_close(z, ref["z"], np.float64, "z")


def test_relu_in_standard_mode():
    x, gamma, beta, rm, rv, _ = make_inputs((4, 3, 5), np.float64, "relu")
    ref = ref_forward(x, gamma, beta, rm, rv, activation="relu", mode="standard")
    z, _ = cupy_abn.abn_forward(x, gamma, beta, rm, rv, activation="relu", mode="standard")
    assert_close(z, ref["z"], np.float64, "z")


def test_standard_mode_accepts_non_contiguous_x():
    x, gamma, beta, rm, rv, _ = make_inputs((4, 6, 5), np.float64, "strided")
    xs = x[:, ::2]
    ref = ref_forward(xs, gamma[:3], beta[:3], training=True, mode="standard")
    z, _ = cupy_abn.abn_forward(xs, gamma[:3], beta[:3], mode="standard")
    assert_close(z, ref["z"], np.float64, "z")


@pytest.mark.parametrize("pdt", [np.float16, np.float32])
def test_float16_parameters_of_either_precision(pdt):
    x, gamma, beta, rm, rv, _ = make_inputs((6, 4, 9), np.float16, "mixed", param_dtype=pdt)
    ref = ref_forward(x, gamma, beta, rm, rv)
    z, _ = cupy_abn.abn_forward(x.copy(), gamma, beta, rm, rv)
    assert_close(z, ref["z"], np.float16, "z")
    assert rm.dtype == pdt
