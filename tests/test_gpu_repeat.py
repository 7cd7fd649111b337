"""Forward and backward repeated: bit-identical results, and no growth of CuPy's memory pool
(issue 20, part 5).

The reductions hand their partials to the last block to arrive, which merges them in a
fixed order; the only atomic is the arrival counter, so the same inputs must give the same
bits every time, whichever block comes last.  Every call allocates its outputs and
temporaries from CuPy's pool and drops them: after the first iteration (which compiles),
``used_bytes()`` and ``total_bytes()`` at the end of an iteration must not change.

Cases: the launch-property shapes of ``tests/_gpu_cases`` (channels-last float16 and float32
with several blocks per tile; float16 NCS on 8-element packs, two-pass), 100 iterations each
on a GPU (about 1 ms an iteration, no new variants: the other GPU tests compile them); the
same body runs here on PoCL with 3 iterations (determinism only: no pool).
"""
import numpy as np
import pytest

import cupy_abn
from tests import _gpu_cases as G
from tests._backends import NO_GPU, gpu_count, pocl_queue_or_skip

GPU = [pytest.mark.gpu, pytest.mark.skipif(gpu_count() < 1, reason=NO_GPU)]
ITERATIONS = 100
NAMES = ("z", "dx", "dgamma", "dbeta", "running_mean", "running_var")
# (id, shape, dtype, mode, axis)
CASES = [
    ("last-f16-C264-inplace", G.LAST["f16-C264"][0], np.float16, "inplace", (0, 1, 2)),
    ("last-f32-C160-inplace_v1", G.LAST["f32-C160"][0], np.float32, "inplace_v1", (0, 1, 2)),
    ("ncs-f16-two-pass-standard", G.HALF_NCS["two-pass"], np.float16, "standard", None),
]


def _inputs(shape, dtype, mode, axis):
    if axis is not None:
        return G.last_inputs(shape, dtype, mode, True, key=("gpu-repeat",))
    return G.ncs_inputs(shape, dtype, mode, True, key=("gpu-repeat",))


def repeat(inputs, mode, axis, to_device, to_host, iterations, pool=None):
    """Forward + backward ``iterations`` times on fresh device copies of ``inputs``; asserts
    every iteration's results equal the first's bit for bit, and (``pool``: CuPy's memory
    pool) the pool's used and total bytes at the end of each iteration equal the first's.
    Returns the pool's (used, total) per iteration."""
    first, memory = None, []
    for i in range(iterations):
        x, gamma, beta, rm, rv, dz = (to_device(np.ascontiguousarray(a)) for a in inputs)
        z, saved = cupy_abn.abn_forward(x, gamma, beta, rm, rv, training=True, mode=mode,
                                        activation=G.ACT, activation_param=G.PARAM,
                                        axis=axis)
        dx, dg, db = cupy_abn.abn_backward(saved, dz, out=dz if mode != "standard" else None)
        host = [np.array(to_host(a)) for a in (z, dx, dg, db, rm, rv)]
        del x, gamma, beta, rm, rv, dz, z, saved, dx, dg, db
        if pool is not None:
            memory.append((pool.used_bytes(), pool.total_bytes()))
        if first is None:
            first = host
            continue
        for name, a, b in zip(NAMES, first, host):
            assert a.tobytes() == b.tobytes(), (
                f"iteration {i}: {name} differs from iteration 0 in "
                f"{int((a.view(np.uint8) != b.view(np.uint8)).sum())} bytes")
    if pool is not None:
        grown = [(i, m) for i, m in enumerate(memory) if m != memory[0]]
        if grown:
            import gc
            gc.collect()
            raise AssertionError(
                f"the memory pool (used, total bytes) after iteration 0 was {memory[0]}, then "
                f"{grown[:5]}{' ...' if len(grown) > 5 else ''} (after gc.collect(): "
                f"{(pool.used_bytes(), pool.total_bytes())})")
    return memory


@pytest.mark.parametrize("case", [pytest.param(c, marks=GPU) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_repeated_on_gpu(case):
    import cupy
    _, shape, dtype, mode, axis = case
    pool = cupy.get_default_memory_pool()
    memory = repeat(_inputs(shape, dtype, mode, axis), mode, axis, cupy.asarray, cupy.asnumpy,
                    ITERATIONS, pool)
    print(f"{case[0]}: {ITERATIONS} iterations bit-identical; pool (used, total) bytes "
          f"{memory[0]} after every one")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_repeated_on_pocl(case):
    import pyopencl.array as cla
    q = pocl_queue_or_skip()
    _, shape, dtype, mode, axis = case
    repeat(_inputs(shape, dtype, mode, axis), mode, axis, lambda a: cla.to_device(q, a),
           lambda a: a.get(), 3)
