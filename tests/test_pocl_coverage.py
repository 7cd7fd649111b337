"""The default tier's PoCL cases still launch every kernel family per dtype class, per vector
and scalar path, per layout (the ``*_last`` families are channels-last x) and per mode.

The cases of ``tests/_kernel_matrix.py`` (``CASES`` and ``PATH_SHAPES``, on both the resident
and the two-pass path, and ``LAST_CASES``) are replayed through the library's own launch logic on a recording
runtime (``benchmarks/static/launches.py``: the real ``KernelBackend``, nothing computed),
which picks the same variants PoCL builds.  What the whole matrix launches, the default
subset must launch too; and the whole matrix must launch every streaming family on the
vector and the scalar path for every storage dtype the library has a variant for.
"""
from __future__ import annotations

import numpy as np
import pytest

from cupy_abn import _kernel_backend
from cupy_abn import _kernel_source as K
from tests._cases import ACTIVATIONS
from tests._kernel_matrix import CASES, LAST_CASES, PATH_SHAPES, Case

L = pytest.importorskip("benchmarks.static.launches")


def _bits(defines, name):
    for d in defines:
        if d.startswith(f"-D{name}="):
            return d.split("=", 1)[1]
    return None


def _replay(case, monkeypatch, resident: bool):
    """{(family, dtype class, path, mode)} one case launches (training forward + backward,
    or an evaluation forward)."""
    monkeypatch.setattr(_kernel_backend, "RESIDENT", resident)
    rt = L.RecordingRuntime(lambda fn, block: 2, multiprocessors=2)
    be = _kernel_backend.KernelBackend(rt)
    c = case.shape[1]
    pdt = case.param_dtype or (np.float32 if np.dtype(case.dtype) == np.float16 else case.dtype)
    x = L.StubArray(case.shape, case.dtype, "input")
    params = [L.StubArray((c,), pdt, "input") for _ in range(4)]
    with L._api_on(be) as api:
        z, saved = api.abn_forward(x, *params, training=case.training, activation=case.act,
                                   activation_param=ACTIVATIONS.get(case.act, 0.0),
                                   mode=case.mode)
        dz = L.StubArray(case.shape, case.dtype, "input")
        api.abn_backward(saved, dz, out=dz if case.mode != "standard" else None)
    out = set()
    for ln in rt.launches:
        d = ln.fn.defines
        dtype = _bits(d, "STORE_BITS") or _bits(d, "PARAM_BITS")
        vec = _bits(d, "VEC")
        path = "-" if vec is None else ("vector" if int(vec) > 1 else "scalar")
        out.add((ln.fn.family, dtype, path, case.mode))
    return out


@pytest.fixture(scope="module")
def launched():
    """{"default"|"full": set of (family, dtype bits, path, mode)}."""
    mp = pytest.MonkeyPatch()
    out = {"default": set(), "full": set()}
    try:
        for case in CASES:
            for resident in (True, False):
                got = _replay(case, mp, resident)
                out["full"] |= got
                if not case.full:
                    out["default"] |= got
        for shape, dtype, _ in PATH_SHAPES:   # test_launch_logic_picks_the_vector_or_...
            for resident in (True, False):
                got = _replay(Case("path", shape, dtype, "leaky_relu", "inplace", True), mp,
                              resident)
                out["full"] |= got
                out["default"] |= got
        for case in LAST_CASES:
            got = _replay(case, mp, True)
            out["full"] |= got
            out["default"] |= got
    finally:
        mp.undo()
    return out


def test_default_tier_launches_what_the_whole_matrix_launches(launched):
    def axes(s):
        return ({(f, d, p) for f, d, p, _ in s}, {(f, m) for f, _, _, m in s})
    (full_dp, full_m), (def_dp, def_m) = axes(launched["full"]), axes(launched["default"])
    assert full_dp - def_dp == set(), "family x dtype x path the default tier misses"
    assert full_m - def_m == set(), "family x mode the default tier misses"


# Launched by the synchronized layer on merged partials, not by a single-process call: the
# default tier runs them in test_kernels_opencl.py::test_channel_kernels_merge_uneven_partials*
# and test_channels_last.py::test_partials_of_a_synchronized_layer (float32 and float64).
MERGE_FAMILIES = {"channel_train", "channel_backward"}


def test_every_family_and_layout_is_launched(launched):
    assert {f for f, *_ in launched["default"]} == set(K.FILES) - MERGE_FAMILIES


def test_matrix_takes_both_paths_for_every_streaming_dtype(launched):
    """Vector and scalar path of every streaming family, for each storage dtype the variant
    list has both paths for (float16 packs with float64 parameters take the scalar path)."""
    have = {(f, p, dt) for f, dt, p, _ in launched["default"]}
    want = set()
    for fam, defines in K.all_variants():
        if fam in K.STREAMING and _bits(defines, "IDX64") == "0" and \
                _bits(defines, "EXTREMA") in (None, "0") and _bits(defines, "PARAM_BITS") in (
                    None, "32") + (("64",) if _bits(defines, "STORE_BITS") == "64" else ()):
            vec = int(_bits(defines, "VEC"))
            want.add((fam, "vector" if vec > 1 else "scalar", _bits(defines, "STORE_BITS")))
    assert want - have == set(), "variants of the default parameter dtypes never launched"
