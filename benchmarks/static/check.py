"""``python -m benchmarks.static --check``: is the committed report still what this tree
compiles to, and do its facts hold?  (Seconds to a minute; no GPU.)

1. **Inputs.** The hash of the kernel sources, the variant list, the compile options and the
   NVRTC / cuobjdump / nvdisasm builds (``inputs.py``) equals the report's; else it fails,
   naming each input that differs and the command that regenerates the report.
2. **Passes.** The library's launch logic, replayed on the report's variants, gives every
   pass row of the report (grids, blocks, registers, waves, predictions): a change of the
   launch logic or of the model that moves a number fails the same way.
3. **Facts.** No spills in any variant; no division sequence in a hot loop; 128-bit loads on
   the vector path; bytes per element equal to the minimal traffic; reduction grids at least
   90% wave-efficient (``facts.py``).
4. **Sample.** A recompile of one variant per kernel family and target, plus a few whole
   variants, all chosen from the inputs' hash, and a SASS read of one launched variant per
   family and NVRTC: sizes, registers, stack, shared and local memory, and the hot-loop
   figures must equal the report's, so the report can be neither stale nor edited by hand.
"""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from cupy_abn import _nvrtc

from . import compact
from . import facts as F
from . import inputs as I

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "benchmarks" / "results" / "static_report.json"
EXTRA_VARIANTS = 4     # whole variants (every target) beyond one per family and target


class Stale(Exception):
    """The report does not describe this tree: the message says what differs."""


def _pick(seed: str, what: str, n: int) -> int:
    return int(hashlib.sha256(f"{seed}:{what}".encode()).hexdigest(), 16) % n


def _target(name: str) -> "_nvrtc.Target":
    kind = "cubin" if name.startswith("sm_") else "ptx"
    return _nvrtc.Target(int(name.split("_")[1]), kind)


def sample(doc: dict, extra: int = EXTRA_VARIANTS) -> Tuple[List[tuple], List[tuple]]:
    """(compile jobs, SASS jobs) chosen from the report's inputs hash.

    Compile jobs: for each target and family one variant, plus ``extra`` variants on every
    target.  SASS jobs: for each NVRTC and family, one variant whose SASS the report holds.
    A job is ``(major, family, defines, Target)``.
    """
    seed = doc["inputs"]["hash"]
    names = doc["families"]
    rows = doc["variants"]
    targets = doc["targets"]

    def defines(fam: str, vals: str) -> Tuple[str, ...]:
        return tuple(f"-D{n}={x}" for n, x in zip(names[fam]["defines"], vals.split(",")))

    jobs = set()
    for col, tk in enumerate(targets):
        major, tname = tk.split(":")
        for fam in names:
            cands = [r for r in rows if r[0] == fam and r[2 + col] is not None]
            if cands:
                r = cands[_pick(seed, f"{tk}:{fam}", len(cands))]
                jobs.add((int(major), fam, defines(fam, r[1]), _target(tname)))
    for k in range(extra):
        r = rows[_pick(seed, f"extra{k}", len(rows))]
        for col, tk in enumerate(targets):
            if r[2 + col] is not None:
                major, tname = tk.split(":")
                jobs.add((int(major), r[0], defines(r[0], r[1]), _target(tname)))
    sass_jobs = []
    for major in sorted({s[0] for s in doc["sass"]}):
        for fam in names:
            cands = [s for s in doc["sass"] if s[0] == major and s[1] == fam]
            if cands:
                s = cands[_pick(seed, f"sass:{major}:{fam}", len(cands))]
                sass_jobs.append((major, fam, defines(fam, s[2]), _nvrtc.Target(90, "cubin")))
    key = lambda j: (j[0], j[3].name, j[1], j[2])  # noqa: E731
    return sorted(jobs, key=key), sorted(sass_jobs, key=key)


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return (isinstance(a, (int, float)) and isinstance(b, (int, float))
                and math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def check_inputs(doc: dict) -> Dict[str, object]:
    found = _nvrtc.available()
    want = {int(t.split(":")[0]) for t in doc["targets"]}
    missing = sorted(want - set(found))
    from .sass import tools_missing
    tools = tools_missing()
    if missing or tools:
        raise FileNotFoundError(f"CUDA tools missing: NVRTC {missing or ''} {tools or ''} "
                                f"(pip install .[nvrtc])")
    here = I.parts(found)
    if I.digest(here) != doc["inputs"]["hash"]:
        lines = I.differences(doc["inputs"]["parts"], here)
        raise Stale("the static report was made from other inputs than this tree's:\n  "
                    + "\n  ".join(lines or ["(the hash differs)"]))
    return here


def check_passes(doc: dict, variants: List[dict]) -> List[dict]:
    """Replay the launch logic on the report's variants; the rows must come out unchanged."""
    from . import summary
    majors = sorted({int(t.split(":")[0]) for t in doc["targets"]})
    try:
        passes = compact.expand_passes(variants, majors, doc.get("modes"))
    except KeyError as err:
        raise Stale(f"the launch logic asks for a variant the report lacks: {err}") from None
    rows = summary.table(passes, {})
    stored = {summary._key(r): r for r in doc["passes"]}
    got = {summary._key(r): r for r in rows}
    bad = [f"{k}: in the report only" for k in stored.keys() - got.keys()]
    bad += [f"{k}: replayed only" for k in got.keys() - stored.keys()]
    for k in sorted(stored.keys() & got.keys()):
        if not _close(stored[k]["after"], got[k]["after"]) or stored[k]["goal"] != got[k]["goal"]:
            bad.append(f"{k}: report {stored[k]['after']['launches']} "
                       f"-> replayed {got[k]['after']['launches']}")
    if bad:
        raise Stale(f"the launch logic or the model no longer gives the report's passes "
                    f"({len(bad)} of {len(stored)} differ):\n  " + "\n  ".join(bad[:8]))
    return passes


def check_sample(doc: dict, variants: List[dict], progress=None) -> Dict[str, int]:
    from . import collect as C
    jobs, sass_jobs = sample(doc)
    index = {(v["major"], v["target"], v["family"], tuple(v["defines"])): v for v in variants}
    bad = []
    for job, got in zip(jobs, C._pool_map(C._analyse, jobs, progress)):
        want = index[(job[0], job[3].name, job[1], job[2])]
        keep = ("registers", "stack", "shared", "local")
        w = {e: {k: x for k, x in kern.items() if k in keep} for e, kern in want["kernels"].items()}
        if got["size"] != want["size"] or got["kernels"] != w:
            bad.append(f"NVRTC {job[0]} {job[3].name} {job[1]} {' '.join(job[2])}: compiled "
                       f"{got['size']} B {got['kernels']}, report {want['size']} B {w}")
    if bad:   # before the slower SASS reads
        raise Stale("recompiled variants differ from the report (edited by hand, or built "
                    "with other tools):\n  " + "\n  ".join(bad[:8]))
    for job, got in zip(sass_jobs, C._pool_map(C._read_sass, sass_jobs, progress)):
        want = index[(job[0], job[3].name, job[1], job[2])]["kernels"]
        for entry, info in got.items():
            stored = {k: x for k, x in want[entry].items()
                      if k not in ("registers", "stack", "shared", "local")}
            if stored and not _close(stored, info):
                bad.append(f"SASS NVRTC {job[0]} {job[1]} {entry} {' '.join(job[2])}: "
                           f"read {info['instructions']} instructions, "
                           f"report {stored.get('instructions')}")
    if bad:
        raise Stale("recompiled variants differ from the report (edited by hand, or built "
                    "with other tools):\n  " + "\n  ".join(bad[:8]))
    return {"compiles": len(jobs), "sass": len(sass_jobs)}


def run(report: Path = REPORT, bar_factory: Optional[Callable] = None,
        out: Callable[[str], None] = print) -> int:
    """The whole check; prints what it did; 0 when the report holds, 1 when not."""
    t0 = time.perf_counter()
    try:
        doc = compact.load(report)
        check_inputs(doc)
        out(f"inputs: hash {doc['inputs']['hash'][:12]} matches this tree "
            f"({len(doc['inputs']['parts'])} inputs)")
        variants = compact.decode_variants(doc)
        passes = check_passes(doc, variants)
        out(f"passes: {len(passes)} replayed from the launch logic, all equal to the report")
        violations = {k: v for k, v in F.all_violations(variants, passes).items() if v}
        if violations:
            for fact, lines in violations.items():
                out(f"FAILED {fact}:\n  " + "\n  ".join(lines[:12]))
            return 1
        out(f"facts: {len(F.PASS_FACTS) + 1} hold on {len(variants)} compiled variants")
        jobs, sass_jobs = sample(doc)
        bar = bar_factory("check: recompile a sample", len(jobs) + len(sass_jobs)) \
            if bar_factory else None
        counts = check_sample(doc, variants, bar.update if bar is not None else None)
        if bar is not None:
            bar.close()
        out(f"sample: {counts['compiles']} recompiles and {counts['sass']} SASS reads equal "
            f"the report")
    except (Stale, ValueError) as err:
        out(f"FAILED: {err}\nregenerate the report with: {compact.REGENERATE}")
        return 1
    except FileNotFoundError as err:
        out(f"FAILED: {err}")
        return 1
    out(f"OK: {report.name} holds for this tree ({time.perf_counter() - t0:.0f} s)")
    return 0
