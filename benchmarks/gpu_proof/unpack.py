"""A returned output folder -> ``benchmarks/results/gpu_proof_<device>/``, compact.

Every file of the archive (and the summary, log and figures beside it) lands flat in one
folder named by the device; no file there exceeds ``LIMIT`` (a long log keeps its head and
tail).  Figures a machine without matplotlib could not draw are drawn here from their JSON,
and the model is refitted here where the run had no time for it.
"""
from __future__ import annotations

import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import List, Optional

from . import RESULTS, ROOT
from .proof import ARCHIVE, SUMMARY

LIMIT = 1 << 20
TEXT = (".log", ".txt", ".xml", ".jsonl")


def compact_copy(src: Path, dest: Path, limit: int = LIMIT) -> Optional[Path]:
    """Copy ``src`` to ``dest`` within ``limit`` bytes: text cut in the middle, JSON
    re-written without indentation; None (not copied) where that is not enough."""
    size = src.stat().st_size
    if size <= limit:
        shutil.copy2(src, dest)
        return dest
    if src.suffix in TEXT:
        data = src.read_bytes()
        mark = f"\n[... {size - limit + 4096} bytes cut by unpack ...]\n".encode()
        head = limit // 4
        dest.write_bytes(data[:head] + mark + data[-(limit - head - len(mark) - 1024):])
        return dest
    if src.suffix == ".json":
        text = json.dumps(json.loads(src.read_text()), separators=(",", ":"))
        if len(text) <= limit:
            dest.write_text(text + "\n")
            return dest
    return None


def _benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (its ``plot``)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def draw_missing(folder: Path) -> List[Path]:
    """The figures of kernels_*.json and memory_*.json that are not there."""
    drawn = []
    for path in sorted(folder.glob("*.json")):
        kind = path.name.split("_", 1)[0]
        png = path.with_suffix(".png")
        if kind not in ("kernels", "memory") or png.exists():
            continue
        try:
            _benchmark(kind).plot(json.loads(path.read_text()), png)
            drawn.append(png)
        except Exception as e:        # a figure is a convenience: the JSON is the result
            print(f"{png.name}: not drawn ({type(e).__name__}: {e})")
    return drawn


def refit(folder: Path) -> Optional[Path]:
    """The model fitted here to the measured times, where the run did not fit it."""
    measured, fitted = folder / "kernels_gpu.json", folder / "static_fit_gpu.json"
    if not measured.exists() or fitted.exists():
        return None
    from benchmarks import fit_model
    args = ["--measured", str(measured), "--out", str(fitted)]
    if (folder / "device_spec.json").exists():
        args += ["--device-spec", str(folder / "device_spec.json")]
    try:
        fit_model.main(args)
    except Exception as e:            # the model may not match these times: say so
        print(f"refit here failed: {type(e).__name__}: {e}")
        return None
    return fitted


def unpack(src: Path, results: Path = RESULTS) -> List[Path]:
    """Turn the output folder ``src`` of a run into ``results/gpu_proof_<device>/``
    (replaced if there); returns the files written."""
    summary = json.loads((src / SUMMARY).read_text())
    dest = results / f"gpu_proof_{summary['device']['slug']}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    written: List[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        for p in src.iterdir():
            if p.is_file() and p.name != ARCHIVE:
                shutil.copy2(p, staged / p.name)
        if (src / ARCHIVE).exists():
            with tarfile.open(src / ARCHIVE) as tar:
                for m in tar.getmembers():
                    if m.isfile():               # flat names only, nothing outside
                        with tar.extractfile(m) as f, open(staged / Path(m.name).name,
                                                           "wb") as g:
                            shutil.copyfileobj(f, g)
        for p in sorted(staged.iterdir()):
            got = compact_copy(p, dest / p.name)
            if got is None:
                print(f"{p.name}: over {LIMIT >> 20} MiB, left out")
            else:
                written.append(got)
    written += draw_missing(dest)
    fitted = refit(dest)
    if fitted:
        written.append(fitted)
    for p in written:
        print(f"wrote {p.relative_to(results.parent) if p.is_relative_to(results.parent) else p}")
    return written
