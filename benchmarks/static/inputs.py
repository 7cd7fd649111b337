"""What determines the static report's facts, as a content hash.

The report's registers, spills, SASS loops and sizes follow from four things, and nothing
else: the kernel sources (every file under ``kernels/``), the variant list with its defines
(``cupy_abn._kernel_source.all_variants``), the options CuPy hands NVRTC per target
(``cupy_abn._nvrtc``) and the exact builds of NVRTC, ``cuobjdump`` and ``nvdisasm``.  The
report records ``parts`` (one digest or version per input) and ``hash`` (their digest);
``python -m benchmarks.static --check`` recomputes both and names what differs.

The launch logic and the model are not hashed: the check replays them on the report's
variants and compares the passes, so a refactor that changes no launch needs no new report.
"""
from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from typing import Dict, Mapping, Optional

from cupy_abn import _kernel_source as K
from cupy_abn import _nvrtc

from . import sass as S

# The wheel each NVRTC comes from when it is not a system library (its full version: two
# patch releases of one minor may generate different code).
NVRTC_WHEELS = _nvrtc.NVRTC_WHEELS


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def kernel_files() -> Dict[str, str]:
    """``{"kernels/<name>": sha256}`` of every file under ``kernels/`` (the sources the kernels
    are built from, and the package's ``__init__.py``: any edit there asks for a new report)."""
    root = K._kernel_dir()
    return {f"kernels/{p.name}": _sha(p.read_bytes()) for p in sorted(root.iterdir(),
                                                                     key=lambda p: p.name)
            if p.is_file() and not p.name.endswith((".pyc", ".pyo"))}


def _wheel_version(dist: str) -> Optional[str]:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:  # noqa: BLE001 - not installed as a wheel
        return None


def nvrtc_build(major: int, nv: "_nvrtc.Nvrtc") -> str:
    """``"13.5 (nvidia-cuda-nvrtc 13.5.37)"``, or ``"13.5 (/path/libnvrtc.so.13)"``."""
    wheel = NVRTC_WHEELS.get(major)
    where = None
    if wheel and "site-packages" in nv.path and "nvidia" in nv.path:
        v = _wheel_version(wheel)
        where = f"{wheel} {v}" if v else None
    return f"{nv.version[0]}.{nv.version[1]} ({where or nv.path})"


@functools.lru_cache(maxsize=None)
def tool_build(name: str) -> str:
    """The ``release ..., V...`` line of ``name --version`` (cuobjdump, nvdisasm)."""
    exe = S.find_tool(name)
    if exe is None:
        return "missing"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    lines = [ln.strip() for ln in out.splitlines() if "release" in ln]
    return lines[-1] if lines else out.strip().splitlines()[-1]


def parts(found: Optional[Mapping[int, "_nvrtc.Nvrtc"]] = None) -> Dict[str, object]:
    """Each input of the report, by name: digests of sources and lists, versions of tools."""
    found = _nvrtc.available() if found is None else found
    variants = [[fam, list(d)] for fam, d in K.all_variants()]
    options = {f"{major}:{t.name}": list(_nvrtc.cupy_options(_nvrtc.runtime_options(()),
                                                              t.option))
               for major, nv in sorted(found.items()) for t in nv.targets()}
    out: Dict[str, object] = dict(kernel_files())
    out["variants"] = _sha(json.dumps(variants).encode())
    out["variant_count"] = len(variants)
    out["options"] = _sha(json.dumps(options, sort_keys=True).encode())
    for major, nv in sorted(found.items()):
        out[f"nvrtc{major}"] = nvrtc_build(major, nv)
    out["cuobjdump"] = tool_build("cuobjdump")
    out["nvdisasm"] = tool_build("nvdisasm")
    return out


def digest(p: Mapping[str, object]) -> str:
    """The hash of ``parts``: what the report stores and the check compares."""
    return _sha(json.dumps(dict(p), sort_keys=True).encode())


def differences(recorded: Mapping[str, object], here: Mapping[str, object]) -> list:
    """Human-readable lines naming each input that differs between a report and this tree."""
    out = []
    for name in sorted(set(recorded) | set(here)):
        a, b = recorded.get(name), here.get(name)
        if a == b:
            continue
        if a is None:
            out.append(f"{name}: new here (not in the report)")
        elif b is None:
            out.append(f"{name}: in the report, gone here")
        elif name.startswith("kernels/") or name in ("variants", "options"):
            out.append(f"{name}: changed")
        else:
            out.append(f"{name}: {b} here, {a} in the report")
    return out
