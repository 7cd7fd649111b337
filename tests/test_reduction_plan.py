"""The reduction grids' blocks per channel (``_kernel_backend.reduction_parts``): whole waves
where the channel allows, and never more than ``MAX_THREAD_PACKS`` packs summed per thread
before the block's merge, which bounds the float32 accumulators' rounding on huge channels."""
import itertools

import pytest

from cupy_abn import _kernel_backend as KB


def _packs_per_thread(m_packs, parts, block):
    return -(-m_packs // (parts * block))


@pytest.mark.parametrize("m_packs,channels,block,unroll,slots", [
    (2 ** 22 + 2, 64, 256, 4, 8),        # tests/test_index64.py's BIG on a 2-core PoCL
    (2 ** 25 + 8, 8, 256, 4, 16),        # the earlier BIG: 2^16 packs per thread uncapped
    (32 * 112 * 112 // 4, 64, 256, 4, 8),   # 32x64x112x112 float32 on PoCL
    (2 ** 28, 1, 256, 8, 528),           # one channel of 2^31 float16 elements on an H100
    (2 ** 28, 1, 256, 8, 8),             # so large that MAX_PARTS binds first
])
def test_threads_sum_at_most_max_thread_packs(m_packs, channels, block, unroll, slots):
    parts = KB.reduction_parts(m_packs, channels, block, unroll, slots)
    limit = min(KB.MAX_PARTS, m_packs // (block * unroll))
    assert 1 <= parts <= limit
    if parts < KB.MAX_PARTS:
        assert _packs_per_thread(m_packs, parts, block) <= KB.MAX_THREAD_PACKS
    else:
        assert -(-m_packs // (block * KB.MAX_THREAD_PACKS)) >= KB.MAX_PARTS


def test_cap_leaves_ordinary_channels_to_the_wave_rule():
    # the docstring's H100 cases (528 slots): 32x64x112x112 float32 and 32x2048x7x7
    assert KB.reduction_parts(32 * 112 * 112 // 4, 64, 256, 4, 528) == 8
    assert KB.reduction_parts(32 * 49, 2048, 32, 8, 528) == 1
    # every channel of at most block * MAX_THREAD_PACKS packs plans as without the cap
    sizes = (64, 5000, 2 ** 15, 256 * KB.MAX_THREAD_PACKS)
    for m_packs, channels, slots in itertools.product(sizes, (1, 3, 64, 2048), (8, 528)):
        parts = KB.reduction_parts(m_packs, channels, 256, 4, slots)
        assert _packs_per_thread(m_packs, parts, 256) <= KB.MAX_THREAD_PACKS
        limit = max(1, min(KB.MAX_PARTS, m_packs // (256 * 4)))
        waves = [p for p in range(1, limit + 1)
                 if channels * p >= KB.MIN_WAVE_EFFICIENCY * slots
                 and KB.wave_efficiency(channels * p, slots) >= KB.MIN_WAVE_EFFICIENCY]
        if waves:
            assert parts == waves[0]


def test_long_channels_batch_variance_on_pocl():
    """The cap's effect on PoCL, where few resident blocks leave long per-thread sums: 64
    float16 channels of 2^21 elements, whose shifts (first elements) lie up to 3 std from
    the mean.  The batch variance is within 2.5e-6 of float64 (1.4e-6 measured; 4.8e-6
    with 1,024 packs per thread, the old plan)."""
    import numpy as np
    import pyopencl.array as cla

    import cupy_abn
    from tests._backends import pocl_queue_or_skip
    from tests.test_index64 import _row

    q = pocl_queue_or_skip()
    n_, c_, s_ = 2, 64, 2 ** 20
    x = np.empty((n_, c_, s_), np.float16)
    for n, c in itertools.product(range(n_), range(c_)):
        x[n, c] = _row("x", n, c, s_)
    want = np.array([x[:, c].astype(np.float64).var(ddof=1) for c in range(c_)])
    rv = cla.to_device(q, np.zeros(c_, np.float32))
    cupy_abn.abn_forward(cla.to_device(q, x), cla.to_device(q, np.ones(c_, np.float32)),
                         cla.to_device(q, np.zeros(c_, np.float32)),
                         cla.to_device(q, np.zeros(c_, np.float32)), rv, mode="standard",
                         activation="identity", decay=0.0)
    err = np.abs(rv.get() - want) / want   # decay 0: the running variance is the batch's
    assert err.max() <= 2.5e-6, f"channel {err.argmax()}: {err.max():.2g} relative"
