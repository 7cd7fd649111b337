"""The structural facts the static report stands for, as checks that list what breaks them.

Each function takes variants or passes (as ``collect`` makes them, or as
``compact.expand`` rebuilds them from the committed report) and returns human-readable
violations; an empty list means the fact holds.  ``tests/test_static_report.py`` asserts them
on a fresh compile (full tier) and ``python -m benchmarks.static --check`` on the committed
report (default tier).
"""
from __future__ import annotations

from typing import Callable, Dict, List

# In-place modes: the passes whose minimal traffic is the model's (standard keeps and reads x).
INPLACE = ("inplace", "inplace_v1")
# Shapes whose rows are whole 16-byte packs (the vector path); 7x7 rows (196 or 98 bytes) are
# not, and take the scalar path.
VECTOR_SHAPES = [list(s) for s in ((32, 64, 112, 112), (32, 256, 56, 56), (32, 512, 28, 28),
                                   (32 * 56 * 56, 256), (32 * 7 * 7, 2048))]
WAVE_EFFICIENCY = 0.9


def pass_name(p: dict) -> str:
    return (f"CUDA {p['major']} {p['pass']} {'x'.join(map(str, p['shape']))} {p['dtype']} "
            f"{p['mode']}")


def no_spills(variants: List[dict]) -> List[str]:
    """No local memory: neither spills nor arrays left in a stack frame (ptxas's STACK and
    LOCAL; either means LDL/STL in the kernel)."""
    return sorted(f"{v['major']} {v['target']} {v['family']} {' '.join(v['defines'])}: {e} "
                  f"REG {k['registers']} STACK {k['stack']} LOCAL {k['local']}"
                  for v in variants for e, k in v["kernels"].items()
                  if k["local"] or k["stack"])


def launches_have_variants(passes: List[dict]) -> List[str]:
    return [pass_name(p) for p in passes if not p["launches"]] if passes else ["no passes"]


def no_division_in_hot_loops(passes: List[dict]) -> List[str]:
    bad = set()
    for p in passes:
        for r in p["launches"]:
            for lp in r["all_loops"]:
                if lp["phase"] == "stream" and lp["divisions"]:
                    bad.add(f"{p['major']} {r['entry']} {' '.join(r['defines'])}: "
                            f"{lp['divisions']}")
    return sorted(bad)


def streaming_launches_loop(passes: List[dict]) -> List[str]:
    """Every launch that streams a tensor, except a channel held in registers (``*_resident``),
    has a hot loop the SASS reader finds: a barrier before the walk must not turn the kernel
    into "straight-line" code, whose figures would mix in the block merge."""
    bad = set()
    for p in passes:
        for r in p["launches"]:
            if r["elements"] and "resident" not in r["entry"] and r["loop"]["phase"] != "stream":
                bad.add(f"{p['major']} {r['entry']} {' '.join(r['defines'])}: "
                        f"{r['loop']['phase']}")
    return sorted(bad)


def vector_loads_on_the_vector_path(passes: List[dict]) -> List[str]:
    bad = set()
    for p in passes:
        if p["shape"] not in VECTOR_SHAPES:
            continue
        for r in p["launches"]:
            if r["elements"] and r["loop"]["widest_load_bytes"] < 16:
                bad.add(f"{p['major']} {r['entry']} {' '.join(r['defines'])} {p['dtype']}: "
                        f"LDG widths per iteration {r['loop']['loads']}")
    return sorted(bad)


def minimal_traffic(passes: List[dict]) -> List[str]:
    """Per in-place pass, the hot loops' LDG/STG bytes per element are what the launches must
    move (each streamed tensor once per launch), and that is the two-pass minimal traffic or
    less (a channel held in registers reads x, or z and dz, once).  Passes with straight-line
    launches (no loop over the tensor) mix per-channel loads into their counts: Oclgrind's
    count covers them (tests/test_static_report.py)."""
    bad = []
    for p in passes:
        if p["mode"] not in INPLACE or p.get("straight_line_launches"):
            continue
        got, want = p["global_bytes_per_element"], p["launch_bytes_per_element"]
        if abs(got - want) > 1e-9 or want > p["minimal_bytes_per_element"]:
            bad.append(f"{pass_name(p)}: {got:g} B/element, launches must move {want:g}, "
                       f"two-pass minimal {p['minimal_bytes_per_element']:g}")
    return bad


def reduction_waves(passes: List[dict]) -> List[str]:
    """Reduction grids at least 90% wave-efficient, unless the grid is as large as the tensor
    allows (each thread one unrolled iteration, e.g. channels-last 32x7x7x2048 float16)."""
    bad = set()
    for p in passes:
        for r in p["launches"]:
            reduction = r["elements"] and not r["tensors_written"]
            per_thread = r["elements"] * r["itemsize"] / (r["grid"] * r["block"])
            work_limited = per_thread <= r["bytes_in_flight_per_thread"]
            if reduction and r["wave_efficiency"] < WAVE_EFFICIENCY and not work_limited:
                bad.add(f"{pass_name(p)} {r['entry']}: grid {r['grid']} x {r['block']}, "
                        f"{r['registers']} registers, {r['blocks_per_sm']} blocks/SM, "
                        f"{r['waves']:.3f} waves")
    return sorted(bad)


PASS_FACTS: Dict[str, Callable[[List[dict]], List[str]]] = {
    "every launch has its variant": launches_have_variants,
    "no division sequence in a hot loop": no_division_in_hot_loops,
    "streaming launches walk the tensor in a loop": streaming_launches_loop,
    "128-bit loads on the vector path": vector_loads_on_the_vector_path,
    "bytes per element are the minimal traffic": minimal_traffic,
    "reduction grids fill whole waves": reduction_waves,
}


def all_violations(variants: List[dict], passes: List[dict]) -> Dict[str, List[str]]:
    """``{fact: violations}`` for every fact, spills included."""
    out = {"no spills (every variant, sm_80 and sm_90)": no_spills(variants)}
    out.update({name: fn(passes) for name, fn in PASS_FACTS.items()})
    return out
