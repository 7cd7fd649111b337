"""Every kernel variant compiles with NVRTC 12 and NVRTC 13 as CuPy compiles it at run time,
without a GPU: a cubin for sm_80 and sm_90 and PTX for the newest architecture each NVRTC
knows (``cupy_abn._nvrtc``: CuPy's ``-ftz=true``, ``-arch`` and
``--device-as-default-execution-space`` after the runtime's options).

The variants come from ``cupy_abn._kernel_source.all_variants()``; what they must cover is
derived from ``FILES`` (the defines each family reads), never from a fixed count.  The full
tier (``CUPY_ABN_TIER=full``) compiles every variant for every target; the default tier one
variant per family and target, the one that exercises the most assertions below (float16
data and 64-bit indices where the family has them).  Needs the NVRTC wheels
(``pip install .[nvrtc]``): a missing NVRTC skips, which tox's skip guard reports as a
failure.  NVRTC's output is kept in ``build/nvrtc-cache`` (``CUPY_ABN_NVRTC_CACHE``, keyed by
the NVRTC version, the translation unit and the options).  Environment-independent: tox runs
it once.
"""
import os
import re
from collections import defaultdict

import numpy as np
import pytest

from cupy_abn import _kernel_source as K
from cupy_abn import _nvrtc

FOUND = _nvrtc.available()
VARIANTS = list(K.all_variants())
FULL = os.environ.get("CUPY_ABN_TIER") == "full"
# The full tier compiles every variant for every target (thousands of compiles: minutes on
# 2 cores); later runs read build/nvrtc-cache.
pytestmark = [pytest.mark.once, pytest.mark.timeout(2400)]


def _richness(defines):
    """How many of the PTX assertions below a variant exercises (float16 loads, 64-bit
    indices, a float32 accumulator that must not compute in double, packs)."""
    d = _parse(defines)
    return (("16" in (d.get("STORE_BITS"), d.get("PARAM_BITS"))) + (d.get("IDX64") == "1")
            + (d.get("ACC_BITS") == "32") + (int(d.get("VEC", "1")) > 1))


def sampled_variants():
    """One variant per family: the richest (first on ties), what the default tier compiles."""
    best = {}
    for fam, defines in VARIANTS:
        if fam not in best or _richness(defines) > _richness(best[fam]):
            best[fam] = defines
    return [(fam, best[fam]) for fam in K.FILES]

# The define each aspect of KernelFile.uses sets, and the values the library must cover.
ASPECT_DEFINE = {"store": "STORE_BITS", "param": "PARAM_BITS", "act": "ACT", "t": "T_KIND",
                 "idx": "IDX64", "vec": "VEC"}


def _covered_values():
    from cupy_abn import _state
    from cupy_abn._activations import ACTIVATIONS
    if hasattr(_state, "t_kind"):     # the t kinds the modes ask for
        kinds = {_state.t_kind(m, tr) for m in _state.MODES for tr in (True, False)}
    else:
        kinds = {getattr(_state, n) for n in dir(_state) if n.startswith("T_")}
    store = {str(K.BITS[np.dtype(x)]) for x, _ in K.DTYPE_PAIRS}
    param = {str(K.BITS[np.dtype(p)]) for _, p in K.DTYPE_PAIRS}
    return {"STORE_BITS": store, "PARAM_BITS": param,
            "ACT": {str(a.code) for a in ACTIVATIONS.values()},
            "T_KIND": {str(t) for t in kinds},
            "IDX64": {"0", "1"}}


def _parse(defines):
    out = {}
    for d in defines:
        name, _, value = d[2:].partition("=")
        out[name] = value
    return out


def test_variants_cover_what_each_family_reads():
    assert len(set(VARIANTS)) == len(VARIANTS), "a variant is listed twice"
    want = _covered_values()
    by_family = defaultdict(list)
    for fam, defines in VARIANTS:
        by_family[fam].append(_parse(defines))
    assert set(by_family) == set(K.FILES)
    for fam, kf in K.FILES.items():
        names = {frozenset(d) for d in by_family[fam]}
        assert len(names) == 1, f"{fam}: variants set different defines {names}"
        for aspect in kf.uses:
            define = ASPECT_DEFINE.get(aspect)
            if define is None:
                continue   # a new aspect: covered by the compile tests below
            seen = {d[define] for d in by_family[fam]}
            if define == "VEC":   # the scalar path and a vector path
                assert "1" in seen and any(int(v) > 1 for v in seen), f"{fam}: VEC {seen}"
                continue
            if define == "IDX64" and fam in getattr(K, "INDEX32_ONLY", ()):
                assert seen == {"0"}, f"{fam}: 32-bit indices only, got IDX64 {seen}"
                continue
            assert want[define] <= seen, f"{fam}: {define} misses {want[define] - seen}"


def _cases():
    out = []
    for major in _nvrtc.MAJORS:
        nv = FOUND.get(major)
        targets = nv.targets() if nv else [_nvrtc.Target(a, "cubin") for a in
                                            _nvrtc.CUBIN_ARCHS] + [_nvrtc.Target(0, "ptx")]
        for target in targets:
            tname = target.name if target.kind == "cubin" else "newest-ptx"
            for fam in K.FILES:
                out.append(pytest.param(major, target, fam, id=f"nvrtc{major}-{tname}-{fam}"))
    return out


@pytest.fixture(scope="module")
def compiled():
    """The compiles of every found NVRTC (every variant in the full tier, else one per
    family), once, in a process pool: {(major, target): {...}}."""
    jobs = [(major, fam, d, t) for major, nv in FOUND.items() for t in nv.targets()
            for fam, d in (VARIANTS if FULL else sampled_variants())]
    out = defaultdict(dict)
    for job, res in zip(jobs, _nvrtc.compile_many(jobs)):
        out[(job[0], job[3])][(job[1], job[2])] = res
    return out


def test_cupy_options_order():
    """The option list is CuPy 14's: user options, -ftz=true, -arch, default device space."""
    assert _nvrtc.cupy_options(_nvrtc.runtime_options(("-DX=1",)), "-arch=sm_90") == (
        "--std=c++11", "-DX=1", "-ftz=true", "-arch=sm_90",
        "--device-as-default-execution-space")
    assert _nvrtc.cupy_arch_option(90, (12, 4)) == ("-arch=sm_90", "cubin")
    assert _nvrtc.cupy_arch_option(100, (12, 4)) == ("-arch=compute_100", "ptx")
    assert _nvrtc.cupy_arch_option(120, (12, 8)) == ("-arch=sm_120", "cubin")
    assert _nvrtc.cupy_arch_option(121, (13, 0)) == ("-arch=sm_121", "cubin")


@pytest.mark.parametrize("major,target,family", _cases())
def test_variants_compile(compiled, major, target, family):
    nv = FOUND.get(major)
    if nv is None:
        pytest.skip(f"NVRTC {major} not found (pip install .[nvrtc])")
    if target.kind == "ptx":
        target = nv.targets()[-1]
    results = compiled[(major, target)]
    checked = 0
    for (fam, defines), res in results.items():
        if fam != family:
            continue
        checked += 1
        assert "-ftz=true" in res.options and target.option in res.options
        if target.kind == "cubin":
            assert res.data[:4] == b"\x7fELF", "a cubin is an ELF file"
            for entry in K.FILES[fam].entries:
                assert b".text." + entry.encode() + b"\0" in res.data, \
                    f"{entry} missing: {defines}"
            continue
        ptx = res.ptx
        assert f".target sm_{target.arch}" in ptx
        for entry in K.FILES[fam].entries:
            assert re.search(rf"\.entry\s+{entry}\b", ptx), f"{entry} missing: {defines}"
        d = _parse(defines)
        if d.get("ACC_BITS") == "32":
            assert ".f64" not in ptx, f"float32 variant computes in double: {defines}"
        if d.get("STORE_BITS") == "16" or d.get("PARAM_BITS") == "16":
            assert "cvt.f32.f16" in ptx, f"float16 loads without cvt: {defines}"
        if d.get("IDX64") == "1":
            assert ".u64" in ptx
    assert checked, f"no variant of {family}"
