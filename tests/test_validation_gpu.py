"""Validation cases that need CuPy arrays: skipped cleanly without a GPU."""
import numpy as np
import pytest

import cupy_abn
from tests._backends import NO_GPU, NO_TWO_GPUS, gpu_count
from tests._cases import make_inputs

cupy = pytest.importorskip("cupy")


pytestmark = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(gpu_count() < 1, reason=NO_GPU)


@needs_gpu
def test_numpy_x_with_cupy_gamma():
    x, gamma, beta, rm, rv, _ = make_inputs((4, 3, 5), np.float32, "mix")
    before = x.copy()
    with pytest.raises(TypeError, match="gamma: expected a numpy array like x"):
        cupy_abn.abn_forward(x, cupy.asarray(gamma), beta, rm, rv)
    assert np.array_equal(x, before)


@needs_gpu
def test_cupy_x_with_numpy_running_stats():
    x, gamma, beta, rm, rv, _ = make_inputs((4, 3, 5), np.float32, "mix2")
    xd = cupy.asarray(x)
    with pytest.raises(TypeError, match="running_mean: expected a cupy array like x"):
        cupy_abn.abn_forward(xd, cupy.asarray(gamma), cupy.asarray(beta), rm, rv)
    assert np.array_equal(cupy.asnumpy(xd), x)


@pytest.mark.skipif(gpu_count() < 2, reason=NO_TWO_GPUS)
def test_arrays_on_different_gpus():
    x, gamma, beta, rm, rv, _ = make_inputs((4, 3, 5), np.float32, "devices")
    with cupy.cuda.Device(0):
        xd = cupy.asarray(x)
        bd = cupy.asarray(beta)
    with cupy.cuda.Device(1):
        gd = cupy.asarray(gamma)
    with pytest.raises(ValueError, match="gamma: expected an array on GPU 0"):
        cupy_abn.abn_forward(xd, gd, bd)
    assert np.array_equal(cupy.asnumpy(xd), x)
