"""Compile every variant of the checkout this process imports and read its cubins; record the
benchmark passes' launches and model them.  Produces the report dict of one source tree
(``benchmarks/static/__init__.py`` documents its schema)."""
from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing as mp
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from cupy_abn import _kernel_source as K
from cupy_abn import _nvrtc, _occupancy

from . import launches as L
from . import model
from . import sass as S

SHAPES = ((64, 112, 112), (256, 56, 56), (512, 28, 28), (2048, 7, 7))
# Channels-last (N*H*W, C): NHWC reduced over axis=(0, 1, 2), as the kernels see it.
LAST_SHAPES = ((256, 56, 56), (2048, 7, 7))
BATCH = 32
DTYPES = ("float32", "float16")
MODES = ("inplace", "inplace_v1", "standard")
PRIMARY = (13, 90)          # NVRTC major, sm: what CuPy 14 for CUDA 13 builds on an H100
# Minimal traffic of a pass, in tensors of S = N*C*H*W elements moved through DRAM.
MINIMAL_TENSORS = {"forward_train": 3, "forward_eval": 2, "backward": 5,
                   # z = phi(BN(x) + r): x read twice, r read, z written (unfused: 6, y
                   # written by BN and read back by the add); backward: z, dz and r read
                   # twice, dx and dr written (unfused: 8 as well, but y kept beside z)
                   "forward_train_residual": 4, "backward_residual": 8}
# The fused residual add's rows: the default mode only.
RESIDUAL_MODES = ("inplace",)


# The report and its tests compile each variant once per machine: NVRTC's output is kept on
# disk (cupy_abn/_nvrtc.py: CACHE_ENV), by default under build/ of this checkout.
os.environ.setdefault(_nvrtc.CACHE_ENV,
                      str(Path(__file__).resolve().parents[2] / "build" / "nvrtc-cache"))


def _compile(major: int, family: str, defines, target) -> bytes:
    """The cubin or PTX of one variant, as CuPy builds it at run time."""
    return _nvrtc.compile_variant(_nvrtc.load(major), family, defines, target).data


def _analyse(job) -> dict:
    """Compile one variant for one target; registers, spills and shared memory of its cubin
    (runs in a worker process).  The SASS (slow: ~1 s per cubin) is read by ``_read_sass``,
    only for the variants the passes launch."""
    major, family, defines, target = job
    data = _compile(major, family, defines, target)
    out = {"major": major, "target": target.name, "kind": target.kind, "family": family,
           "defines": list(defines), "size": len(data), "kernels": {}}
    if target.kind != "cubin":
        return out
    for entry, r in S.resources(data).items():
        out["kernels"][entry] = {"registers": r.registers, "stack": r.stack,
                                 "shared": r.shared, "local": r.local}
    return out


def _read_sass(job) -> Dict[str, dict]:
    """Hot loops and instruction counts of every kernel of one variant's cubin."""
    major, family, defines, target = job
    out = {}
    for entry, instrs in S.sass(_compile(major, family, defines, target)).items():
        ld = [i for i in instrs if i.base == "LDG"]
        st = [i for i in instrs if i.base == "STG"]
        out[entry] = {"instructions": len(instrs),
                      "fp64_instructions": S.fp64_instructions(instrs),
                      "load_bytes": sum(S.access_bytes(i.op) for i in ld),
                      "store_bytes": sum(S.access_bytes(i.op) for i in st),
                      "widest_load_bytes": max((S.access_bytes(i.op) for i in ld), default=0),
                      "loops": [lp.as_dict() for lp in S.hot_loops(instrs)]}
    return out


def _pool_map(fn, jobs, progress=None, workers: Optional[int] = None) -> list:
    workers = min(workers or os.cpu_count() or 1, max(1, len(jobs)))
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    out: list = [None] * len(jobs)
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futs = {pool.submit(fn, j): i for i, j in enumerate(jobs)}
        for f in cf.as_completed(futs):
            out[futs[f]] = f.result()
            if progress:
                progress(1)
    return out


def compile_all(progress=None, workers: Optional[int] = None) -> List[dict]:
    """Every (NVRTC major, target, variant) found, compiled and its resources read."""
    found = _nvrtc.available()
    if not found:
        raise OSError("no NVRTC found (pip install .[nvrtc])")
    jobs = [(major, fam, d, t) for major, nv in found.items() for t in nv.targets()
            for fam, d in K.all_variants()]
    return _pool_map(_analyse, jobs, progress, workers)


def add_sass(variants: List[dict], wanted, progress=None) -> None:
    """Read the SASS of the sm_90 cubins of ``wanted`` (major, family, defines) into
    ``variants`` (their kernels gain instructions, fp64_instructions and loops)."""
    index = _index(variants)
    target = _nvrtc.Target(PRIMARY[1], "cubin")
    jobs = sorted({(mj, fam, tuple(d), target) for mj, fam, d in wanted
                   if "loops" not in next(iter(index[(mj, target.name, fam, tuple(d))]
                                                   ["kernels"].values()), {"loops": 0})},
                  key=lambda j: (j[0], j[1], j[2]))
    for job, got in zip(jobs, _pool_map(_read_sass, jobs, progress)):
        kernels = index[(job[0], target.name, job[1], job[2])]["kernels"]
        for entry, info in got.items():
            kernels.setdefault(entry, {}).update(info)


def _index(variants: List[dict]) -> Dict[Tuple, dict]:
    return {(v["major"], v["target"], v["family"], tuple(v["defines"])): v for v in variants}


def _itemsize(defines, fallback: int) -> int:
    for d in defines:
        if d.startswith("-DSTORE_BITS="):
            return int(d.split("=")[1]) // 8
    return fallback


def _main_loop(loops: List[dict], reads: int, itemsize: int,
               writes: int = 1) -> Optional[dict]:
    """The loop that streams the bulk of the tensor, with its per-element figures (``writes``:
    the tensors each element's stores go to)."""
    best = None
    for lp in loops:
        if lp.get("phase", "stream") != "stream":
            continue
        if lp["store_bytes"]:
            e = lp["store_bytes"] / (itemsize * writes)
        elif reads:
            e = lp["load_bytes"] / (reads * itemsize)
        else:
            continue
        cand = dict(lp, elements_per_iteration=e,
                    instructions_per_element=lp["instructions"] / e,
                    load_bytes_per_element=lp["load_bytes"] / e,
                    store_bytes_per_element=lp["store_bytes"] / e,
                    global_bytes_per_element=(lp["load_bytes"] + lp["store_bytes"]) / e)
        if best is None or (e, lp["load_bytes"]) > (best["elements_per_iteration"],
                                                    best["load_bytes"]):
            best = cand
    return best


def launch_record(launch: L.Launch, variant: dict, numel: int, itemsize: int,
                  sms: int) -> dict:
    """One launch as the model's record (field names are the JSON schema's)."""
    fn = launch.fn
    k = variant["kernels"][fn.entry]
    occ = _occupancy.blocks_per_sm(k["registers"], k["shared"], launch.block,
                                   _occupancy.LIMITS[90])
    bps = max(occ.blocks_per_sm, 1)
    reads, big = L.streams(launch, numel)
    outs = L.tensors_written(launch)
    item = _itemsize(fn.defines, itemsize)
    loop = _main_loop(k.get("loops", []), reads, item, outs) if big else None
    if big and loop is None and k.get("store_bytes", 0) + k.get("load_bytes", 0) > 0:
        # no loop over the tensor: a thread holds its elements in registers (a channel that
        # fits one block); the whole kernel is one "iteration" (its per-channel loads too)
        whole = {"start": 0, "end": 0, "instructions": k["instructions"], "loads": {},
                 "stores": {}, "load_bytes": k["load_bytes"], "store_bytes": k["store_bytes"],
                 "divisions": {}, "widest_load_bytes": k["widest_load_bytes"],
                 "phase": "straight", "local_ops": 0}
        loop = _main_loop([dict(whole, phase="stream")], reads, item, outs)
        if loop:
            loop["phase"] = "straight"
    writes = outs if loop and loop["store_bytes"] else 0
    streaming = loop is not None
    elements = numel if streaming else 0
    load_bytes = reads * numel * item if streaming else 0
    small = L.small_bytes(launch, numel)
    if streaming:
        # DRAM bytes a thread has in flight: its loads of the streamed tensors in one
        # iteration (loads of per-channel values re-read in the loop hit L1)
        in_flight = min(loop["load_bytes"], reads * item * loop["elements_per_iteration"])
    else:
        in_flight = 4   # a per-channel kernel: one small load at a time
    rec = {
        "arch": variant["target"], "family": fn.family, "entry": fn.entry,
        "defines": list(fn.defines),
        "grid": launch.grid, "block": launch.block,
        "registers": k["registers"], "shared_bytes": k["shared"], "local_bytes": k["local"],
        "blocks_per_sm": occ.blocks_per_sm, "occupancy_limiter": occ.limiter,
        "occupancy": occ.fraction,
        "resident_threads_per_sm": min(bps, math.ceil(launch.grid / sms)) * launch.block,
        "waves": _occupancy.waves(launch.grid, bps, sms),
        "wave_efficiency": _occupancy.wave_efficiency(launch.grid, bps, sms),
        "sms": sms, "elements": elements, "itemsize": item,
        "tensors_read": reads if streaming else 0, "tensors_written": writes,
        "load_bytes": load_bytes + small,
        "bytes": load_bytes + writes * numel * item + small,
        "minimal_bytes": (reads + writes) * numel * item if streaming else 0,
        "instructions_per_element": loop["instructions_per_element"] if loop else 0.0,
        "bytes_in_flight_per_thread": in_flight,
        "vector_loads": bool(loop and loop["widest_load_bytes"] >= 8),
        "loop": loop, "all_loops": k.get("loops", []),
    }
    rec["predicted_us"] = model.predict_us(rec)
    rec["bound"] = model.bound(rec)
    return rec


def _pass_list(modes):
    shapes = ([(BATCH, c, h, w) for (c, h, w) in SHAPES]
              + [(BATCH * h * w, c) for (c, h, w) in LAST_SHAPES])
    fused = [(shape, d, m, p) for shape in shapes for d in DTYPES for m in modes
             if m in RESIDUAL_MODES for p in L.RESIDUAL_PASSES] if L.has_residual() else []
    return [(shape, d, m, p) for shape in shapes for d in DTYPES for m in modes
            for p in L.PASSES] + fused


def record_launches(variants: List[dict], major: int, sms: int = model.SMS, modes=MODES,
                    compile_missing: bool = True) -> List[Tuple[tuple, List[L.Launch]]]:
    """The launches of every benchmark pass, planned with the occupancy of NVRTC ``major``'s
    sm_90 cubins (a variant missing from ``variants`` is compiled and added, or, with
    ``compile_missing=False``, raises KeyError)."""
    index = _index(variants)
    target = _nvrtc.Target(PRIMARY[1], "cubin")

    def occupancy_of(fn: L.Fn, block: int) -> int:
        key = (major, target.name, fn.family, fn.defines)
        if key not in index:
            if not compile_missing:
                raise KeyError(f"variant not in the report: NVRTC {major} {fn.family} "
                               f"{' '.join(fn.defines)}")
            v = _analyse((major, fn.family, fn.defines, target))
            variants.append(v)
            index[key] = v
        k = index[key]["kernels"][fn.entry]
        return _occupancy.blocks_per_sm(k["registers"], k["shared"], block,
                                        _occupancy.LIMITS[90]).blocks_per_sm

    rt = L.RecordingRuntime(occupancy_of, multiprocessors=sms)
    out = []
    for shape, dt, mode, kind in _pass_list(modes):
        lns = L.record_pass(rt, shape, dt, mode, kind)
        for ln in lns:
            occupancy_of(ln.fn, ln.block)   # make sure its variant is compiled
        out.append(((shape, dt, mode, kind), lns))
    return out


def build_passes(variants: List[dict], major: int, recorded, sms: int = model.SMS
                 ) -> List[dict]:
    """Launch records and predictions of every pass (SASS already read, ``add_sass``)."""
    index = _index(variants)
    target = f"sm_{PRIMARY[1]}"
    out = []
    for (shape, dt, mode, kind), lns in recorded:
        numel = int(np.prod(shape))
        item = np.dtype(dt).itemsize
        recs = [launch_record(ln, index[(major, target, ln.fn.family, ln.fn.defines)], numel,
                              item, sms) for ln in lns]
        minimal = MINIMAL_TENSORS[kind] * numel * item
        t = sum(r["predicted_us"] for r in recs)
        out.append({"major": major, "arch": target, "shape": list(shape), "dtype": dt,
                    "mode": mode,
                    "pass": kind, "launches": recs, "n_launches": len(recs),
                    "minimal_bytes": minimal, "predicted_us": t,
                    "copy_fraction": model.copy_fraction(minimal, t),
                    "global_bytes_per_element": sum(
                        r["loop"]["global_bytes_per_element"] for r in recs if r["loop"]),
                    # what the launches must move: each streamed tensor once per launch
                    "launch_bytes_per_element": sum(
                        (r["tensors_read"] + r["tensors_written"]) * r["itemsize"]
                        for r in recs if r["elements"]),
                    "straight_line_launches": sum(
                        1 for r in recs if r["loop"] and r["loop"]["phase"] == "straight"),
                    "minimal_bytes_per_element": MINIMAL_TENSORS[kind] * item})
    return out


def git_describe(root: str) -> Dict[str, Any]:
    """Commit and dirty state of the tree at ``root``."""
    def git(*a):
        return subprocess.run(["git", "-C", root, *a], capture_output=True,
                              text=True).stdout.strip()
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "subject": git("log", "-1", "--format=%s")[:100],
            "dirty_kernels": bool(git("status", "--porcelain", "--", "kernels",
                                      "cupy_abn"))}


def collect(root: str, progress_factory=None, modes=MODES) -> dict:
    """The report of the tree this process imports ``cupy_abn`` from (``root``)."""
    def bar(desc, total):
        return progress_factory(desc, total) if progress_factory else None

    found = _nvrtc.available()
    n_jobs = sum(len(nv.targets()) for nv in found.values()) * len(list(K.all_variants()))
    jobs_bar = bar("compile + res-usage", n_jobs)
    variants = compile_all(jobs_bar.update if jobs_bar is not None else None)
    if jobs_bar is not None:
        jobs_bar.close()
    recorded = {major: record_launches(variants, major, modes=modes) for major in found}
    wanted = {(major, ln.fn.family, ln.fn.defines) for major, recs in recorded.items()
              for _, lns in recs for ln in lns}
    sass_bar = bar("SASS (cuobjdump)", len(wanted))
    add_sass(variants, wanted, sass_bar.update if sass_bar is not None else None)
    if sass_bar is not None:
        sass_bar.close()
    passes = []
    for major in sorted(found):
        passes += build_passes(variants, major, recorded[major])
    from . import inputs as I
    parts = I.parts(found)
    return {"tree": git_describe(root),
            "nvrtc": {str(m): {"version": ".".join(map(str, nv.version)),
                               "targets": [t.name for t in nv.targets()]}
                      for m, nv in found.items()},
            "inputs": {"hash": I.digest(parts), "parts": parts},
            "variants": variants, "passes": passes}
