"""Every kernel variant compiles with NVRTC for sm_70, sm_80 and sm_90, without a GPU.

Variants: x dtype (float16/32/64, with float16 or float32 parameters for float16 x) x
activation x backward t kind x 32/64-bit indexing, each kernel family with the defines it
reads (cupy_abn._kernel_source.all_variants).  Needs cupy (its NVRTC binding) and NVRTC
(pip: nvidia-cuda-nvrtc-cu12); skipped cleanly otherwise."""
import re

import pytest

from cupy_abn import _kernel_source as K
from cupy_abn import _nvrtc

WHY = ""
try:
    NVRTC = _nvrtc.load()
except Exception as err:   # ImportError, OSError, or a cupy error without libnvrtc
    NVRTC, WHY = None, f"NVRTC not available: {err}"

pytestmark = pytest.mark.skipif(NVRTC is None, reason=WHY)

VARIANTS = list(K.all_variants())
CASES = [(arch, fam) for arch in _nvrtc.ARCHS for fam in K.FILES]


def test_variant_count_covers_the_product():
    by_family = {f: sum(1 for g, _ in VARIANTS if g == f) for f in K.FILES}
    # 3 storage dtypes x 4 activations x 3 t kinds x 2 index widths for the elementwise ones.
    assert by_family["grad_input"] == by_family["grad_sums"] == 3 * 4 * 3 * 2
    assert by_family["normalize_activate"] == 3 * 4 * 2
    assert by_family["channel_moments"] == 3 * 2
    assert by_family["channel_train"] == 3            # float16, float32, float64 parameters
    assert by_family["channel_backward"] == 3 * 3     # parameters x t kinds


@pytest.mark.parametrize("arch,family", CASES, ids=[f"{a}-{f}" for a, f in CASES])
def test_every_variant_compiles(arch, family):
    for fam, defines in VARIANTS:
        if fam != family:
            continue
        ptx = _nvrtc.compile_variant(NVRTC, fam, defines, arch)
        for entry in K.FILES[fam].entries:
            assert re.search(rf"\.entry\s+{entry}\b", ptx), f"{entry} missing: {defines}"
        if "-DACC_BITS=32" in defines:
            assert ".f64" not in ptx, f"float32 variant computes in double: {defines}"
        if "-DSTORE_BITS=16" in defines or "-DPARAM_BITS=16" in defines:
            assert "cvt.f32.f16" in ptx, f"float16 loads without cvt: {defines}"
        if "-DIDX64=1" in defines:
            assert ".u64" in ptx
