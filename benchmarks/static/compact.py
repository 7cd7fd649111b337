"""The committed form of the static report (``schema: 2``): one line per variant, per SASS
read and per pass, well under 1 MB, and its expansion back into what ``collect`` produced.

On disk (``benchmarks/results/static_report.json``)::

    schema, regenerate, generated, elapsed_s, model, goal, tree, nvrtc
    inputs     {hash, parts}            what determines the facts (``inputs.py``)
    before     {revision, commit, subject} of the older tree in the passes' "before", or null
    targets    ["12:sm_80", ..., "13:compute_121"]   the columns of a variant row
    families   {family: {defines: [names], entries: [kernel names]}}
    variants   [[family, "v1,v2,..." (define values, in the family's order),
                 one cell per target: [size, then registers, stack, shared, local of each
                 entry] for a cubin, size for PTX]]
    sass       [[major, family, "v1,v2,...", {entry: {instructions, fp64_instructions,
                 load_bytes, store_bytes, widest_load_bytes, loops: [...]}}]]  (sm_90)
    passes     [{major, pass, shape, dtype, mode, goal, after: {...}, before: {...}}]

A pass row is a row of ``summary.table``.  The launch records behind it are not stored: they
are rebuilt from the variants by the library's launch logic (``expand_passes``), which is
also how ``--check`` proves the rows are still what the code computes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

SCHEMA = 2
REGENERATE = "python -m benchmarks.static"
ROW_KEYS = ("variants", "sass", "passes")


def _target_key(major: int, target: str) -> str:
    return f"{major}:{target}"


def _values(defines) -> str:
    return ",".join(d.split("=", 1)[1] for d in defines)


def _names(defines) -> List[str]:
    return [d[2:].split("=", 1)[0] for d in defines]


def encode(variants: List[dict], rows: List[dict], header: Dict[str, Any]) -> dict:
    """The compact document of a collected tree's ``variants`` and its table ``rows``."""
    targets: List[str] = []
    families: Dict[str, dict] = {}
    by_variant: Dict[tuple, dict] = {}
    sass = []
    for v in variants:
        tk = _target_key(v["major"], v["target"])
        if tk not in targets:
            targets.append(tk)
        fam = families.setdefault(v["family"], {"defines": _names(v["defines"]),
                                                "entries": None})
        if _names(v["defines"]) != fam["defines"]:
            raise ValueError(f"{v['family']}: variants set different defines")
        if v["kind"] == "cubin":
            entries = sorted(v["kernels"])
            if fam["entries"] is None:
                fam["entries"] = entries
            elif entries != fam["entries"]:
                raise ValueError(f"{v['family']}: kernels {entries} != {fam['entries']}")
            cell: Any = [v["size"]] + [v["kernels"][e][k] for e in entries
                                       for k in ("registers", "stack", "shared", "local")]
            if any("loops" in k for k in v["kernels"].values()):
                sass.append([v["major"], v["family"], _values(v["defines"]),
                             {e: {k: x for k, x in v["kernels"][e].items()
                                  if k not in ("registers", "stack", "shared", "local")}
                              for e in entries if "loops" in v["kernels"][e]}])
        else:
            cell = v["size"]
        by_variant.setdefault((v["family"], tuple(v["defines"])), {})[tk] = cell
    rows_out = [[fam, _values(d)] + [cells.get(t) for t in targets]
                for (fam, d), cells in by_variant.items()]
    doc = {"schema": SCHEMA, "regenerate": REGENERATE}
    doc.update(header)
    doc.update({"targets": targets, "families": families, "variants": rows_out,
                "sass": sorted(sass, key=lambda r: (r[0], r[1], r[2])), "passes": rows})
    return doc


def decode_variants(doc: dict) -> List[dict]:
    """The variant dicts ``collect`` made (``benchmarks/static/__init__.py``), SASS merged."""
    fams = doc["families"]
    out = []
    sass = {(m, f, vals): k for m, f, vals, k in doc["sass"]}
    for row in doc["variants"]:
        fam, vals, cells = row[0], row[1], row[2:]
        names = fams[fam]["defines"]
        defines = [f"-D{n}={x}" for n, x in zip(names, vals.split(","))]
        for tk, cell in zip(doc["targets"], cells):
            if cell is None:
                continue
            major, target = tk.split(":")
            v = {"major": int(major), "target": target,
                 "kind": "cubin" if target.startswith("sm_") else "ptx", "family": fam,
                 "defines": defines, "kernels": {}}
            if v["kind"] == "cubin":
                v["size"] = cell[0]
                for i, e in enumerate(fams[fam]["entries"]):
                    r, s, sh, lo = cell[1 + 4 * i:5 + 4 * i]
                    v["kernels"][e] = {"registers": r, "stack": s, "shared": sh, "local": lo}
                for e, extra in sass.get((int(major), fam, vals), {}).items():
                    if target == "sm_90":
                        v["kernels"][e].update(extra)
            else:
                v["size"] = cell
            out.append(v)
    return out


def expand_passes(variants: List[dict], majors, modes=None) -> List[dict]:
    """The launch records of every benchmark pass, rebuilt by the library's launch logic on
    the report's variants (``collect.record_launches`` + ``build_passes``, nothing compiled:
    a launch whose variant is not in the report raises KeyError)."""
    from . import collect as C
    out = []
    for major in sorted(majors):
        kw = {} if modes is None else {"modes": modes}
        rec = C.record_launches(variants, major, compile_missing=False, **kw)
        out += C.build_passes(variants, major, rec)
    return out


def write(doc: dict, path) -> None:
    """One key per line; the row lists one row per line (a regenerated report diffs by row)."""
    def dump(x):
        return json.dumps(x, separators=(",", ":"))
    parts = []
    for key, value in doc.items():
        if key in ROW_KEYS:
            body = ",\n".join(dump(r) for r in value)
            parts.append(f"{dump(key)}: [\n{body}\n]")
        else:
            parts.append(f"{dump(key)}: {dump(value)}")
    Path(path).write_text("{\n" + ",\n".join(parts) + "\n}\n")


def load(path) -> dict:
    """A schema-2 report as written; raises ValueError for another schema."""
    doc = json.loads(Path(path).read_text())
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {doc.get('schema')}, expected {SCHEMA} "
                         f"(regenerate: {REGENERATE})")
    return doc


def expand(doc: dict) -> dict:
    """The document with ``variants`` decoded and ``passes`` as full launch records (what
    ``benchmarks/fit_model.py`` reads); ``table`` keeps the stored rows."""
    variants = decode_variants(doc)
    majors = sorted({int(t.split(":")[0]) for t in doc["targets"]})
    out = {k: v for k, v in doc.items() if k not in ROW_KEYS}
    out.update(variants=variants, table=doc["passes"],
               passes=expand_passes(variants, majors, doc.get("modes")))
    return out


def before_rows(doc: dict) -> Dict[tuple, dict]:
    """``{(major, pass, shape, dtype, mode): before summary}`` of a report of schema 1 or 2,
    and its ``before`` header, to carry an older tree's numbers into a new report."""
    rows = doc["passes"] if doc.get("schema") == SCHEMA else doc["table"]
    out = {}
    for r in rows:
        b = r.get("before")
        if b:
            out[(r["major"], r["pass"], tuple(r["shape"]), r["dtype"], r["mode"])] = {
                k: b[k] for k in ("copy_fraction", "predicted_us", "n_launches",
                                  "global_bytes_per_element")}
    return out


def before_header(doc: dict) -> Optional[dict]:
    if doc.get("schema") == SCHEMA:
        return doc.get("before")
    tree = (doc.get("before") or {}).get("tree")
    if not tree:
        return None
    return {"revision": tree.get("revision", tree["commit"]), "commit": tree["commit"],
            "subject": tree.get("subject", "")}
