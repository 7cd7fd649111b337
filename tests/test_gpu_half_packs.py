"""float16 8-element packs (VEC = 8) in the NCS kernels, on a GPU (issue 20, part 2).

x (N, C, H, W) whose rows (H*W) are whole 16-byte packs of float16 streams 8 values per
access in every kernel: the two-pass path (``channel_moments`` -> ``normalize_activate``,
``grad_sums`` -> ``grad_input``, with parts > 1) and the channel-resident one
(``normalize_train_resident``, ``grad_resident``), shapes ``tests/_gpu_cases.HALF_NCS``.

* ``test_h200_plan_*`` (CPU, default tier): on an H200 (recorded without a GPU), every
  launch of those shapes has VEC = 8 and each two-pass reduction parts > 1, at the reported
  occupancy and at any from 1 to 32 blocks per SM.
* ``test_half_packs_on_gpu`` (``gpu``): through the API on CuPy arrays, every mode, training
  and evaluation, against the float64 reference and the NumPy backend; the launches it made
  have VEC = 8 (and parts > 1 on the two-pass path).
* ``test_half_packs_on_pocl`` (CPU, default tier): the same body on PoCL.

Tolerances (float16): 4e-3 forward and 2e-2 backward against float64, 2e-3 against NumPy
(dgamma and dbeta scaled by sqrt(m)).  GPU time: 8 cases of at most 262 K elements; about
14 variants to compile.
"""
import numpy as np
import pytest

from cupy_abn import _kernel_source as K
from tests import _gpu_cases as G
from tests._backends import NO_GPU, gpu_count, pocl_queue_or_skip

GPU = [pytest.mark.gpu, pytest.mark.skipif(gpu_count() < 1, reason=NO_GPU)]
F16 = np.float16
ENTRIES = {
    "two-pass": {"forward_train": ["channel_moments", "normalize_activate"],
                 "forward_eval": ["normalize_activate"],
                 "backward": ["grad_sums", "grad_input"]},
    "resident": {"forward_train": ["normalize_train_resident"],
                 "forward_eval": ["normalize_activate"],
                 "backward": ["grad_resident"]},
}


def _assert_plan(plan, name, kind, where):
    text = f"{name} {kind} {where}: {[str(p) for p in plan]}"
    assert [p.entry for p in plan] == ENTRIES[name][kind], text
    assert all(p.vec == 8 for p in plan), text
    assert all(p.parts > 1 for p in plan if p.parts is not None), text


@pytest.mark.parametrize("name", list(G.HALF_NCS))
def test_h200_plan_at_the_reported_occupancy(name):
    shape = G.HALF_NCS[name]
    n, c, s = G.ncs_of(shape, False)
    assert (s * 2) % K.PACK_BYTES == 0 and K.vec_width(F16, True) == 8   # whole packs
    assert n * c * s < K.IDX64_FROM and K.resident_fits(F16, np.float32, True)
    for mode in G.MODES:
        for kind in ENTRIES[name]:
            _assert_plan(G.h200_plan(shape, F16, mode, kind), name, kind,
                         f"{mode}, reported occupancy")


@pytest.mark.parametrize("name", list(G.HALF_NCS))
def test_h200_plan_at_every_occupancy(name):
    for k in range(1, G.MAX_BLOCKS_PER_SM + 1):
        for mode in G.MODES:
            for kind in ("forward_train", "backward"):
                _assert_plan(G.h200_plan(G.HALF_NCS[name], F16, mode, kind,
                                         G.fixed_occupancy(k)), name, kind,
                             f"{mode}, {k} blocks per SM")


def _expected(name, training):
    kinds = ("forward_train" if training else "forward_eval", "backward")
    return [e for k in kinds for e in ENTRIES[name][k]]


GPU_CASES = [(name, mode, True) for name in G.HALF_NCS for mode in G.MODES] + [
    (name, "inplace", False) for name in G.HALF_NCS]
IDS = [f"{n}-{m}-{'train' if t else 'eval'}" for n, m, t in GPU_CASES]


@pytest.mark.parametrize("name,mode,training", [pytest.param(*c, marks=GPU) for c in GPU_CASES],
                         ids=IDS)
def test_half_packs_on_gpu(name, mode, training, monkeypatch):
    import cupy
    from cupy_abn._runtime_cupy import CupyRuntime
    shape = G.HALF_NCS[name]
    seen = G.spy_launches(monkeypatch, CupyRuntime, shape)
    G.check_ncs(shape, F16, mode, training, cupy.asarray, cupy.asnumpy)
    print(f"{name} {mode} {'train' if training else 'eval'}: launched "
          f"{[str(p) for p in seen]}")
    assert [p.entry for p in seen] == _expected(name, training), [str(p) for p in seen]
    assert all(p.vec == 8 for p in seen), [str(p) for p in seen]
    assert all(p.parts > 1 for p in seen if p.parts is not None), [str(p) for p in seen]


# The default tier on PoCL: both paths, every mode, evaluation (about 6 s); the full tier
# all of the GPU test's cases.
POCL_DEFAULT = {("two-pass", "standard", True), ("two-pass", "inplace", False),
                ("resident", "inplace", True), ("resident", "inplace_v1", True)}


@pytest.mark.parametrize("name,mode,training", [
    pytest.param(*c, marks=[] if c in POCL_DEFAULT else [pytest.mark.full]) for c in GPU_CASES],
    ids=IDS)
def test_half_packs_on_pocl(name, mode, training, monkeypatch):
    """The GPU test's body on PoCL: the same kernels and packs (its own grid)."""
    import pyopencl.array as cla
    from cupy_abn._runtime_opencl import OpenCLRuntime
    q = pocl_queue_or_skip()
    shape = G.HALF_NCS[name]
    seen = G.spy_launches(monkeypatch, OpenCLRuntime, shape)
    G.check_ncs(shape, F16, mode, training, lambda a: cla.to_device(q, a), lambda a: a.get())
    assert [p.entry for p in seen] == _expected(name, training), [str(p) for p in seen]
    assert all(p.vec == 8 for p in seen), [str(p) for p in seen]
