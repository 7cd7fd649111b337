"""Wheels for a machine without network, installed where they are missing, and Mapillary's
inplace_abn built from its sdist.

``prepare`` (where there is network) writes into ``build/gpu-proof-wheels/``: Chainer 7.8.1's
wheel (its sdist's ``setup.py`` needs ``setuptools<81``: built with
``.ci/build-constraints.txt``), the pure-Python wheels Chainer, the tests and the progress
bars import, and inplace-abn's sdist.  The proof installs from there offline, into a folder
of its own put first on the steps' ``sys.path``, only what the interpreter lacks.  Chainer's
import on Python 3.12 without ``numpy.distutils`` or ``pkg_resources`` goes through
``cupy_abn.chainer``'s stand-ins, which every step imports first.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from . import ROOT
from .child import child_env, run_logged

CHAINER = "chainer==7.8.1"
# Distribution -> module, for the pure-Python wheels: Chainer's imports, pytest's, the
# property tests' (hypothesis: their GPU cases too), tqdm.
PURE = {"six": "six", "filelock": "filelock", "typing_extensions": "typing_extensions",
        "pytest": "pytest", "pluggy": "pluggy", "iniconfig": "iniconfig",
        "packaging": "packaging", "pygments": "pygments", "hypothesis": "hypothesis",
        "attrs": "attr", "sortedcontainers": "sortedcontainers", "tqdm": "tqdm"}
MODULES = {"chainer": "chainer", **PURE, "inplace_abn": "inplace_abn"}
PYTHONS = ("3.11", "3.12", "3.13")     # the project's: a wheel with compiled parts per version
INPLACE_ABN = ("inplace-abn-1.1.0.tar.gz",
               "7c286ca53d35cb37b0d1f8b9beb5a910c694129d3d4f7b8e53188370bb260c27")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pip(*args: str) -> List[str]:
    return [sys.executable, "-m", "pip", *args]


# ---------------------------------------------------------------- prepare (with network)
def _download_sdist(dest: Path) -> Path:
    """inplace-abn's sdist from PyPI's simple index, checked against its sha256
    (``pip download`` would run its ``setup.py``, which imports PyTorch, for metadata)."""
    name, sha = INPLACE_ABN
    path = dest / name
    if path.exists() and _sha256(path) == sha:
        return path
    req = urllib.request.Request("https://pypi.org/simple/inplace-abn/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        files = json.load(r)["files"]
    url = next(f["url"] for f in files if f["filename"] == name)
    with urllib.request.urlopen(url, timeout=120) as r, open(path, "wb") as f:
        shutil.copyfileobj(r, f)
    if _sha256(path) != sha:
        path.unlink()
        raise RuntimeError(f"{name}: sha256 mismatch")
    return path


def prepare(dest: Path) -> Dict[str, Any]:
    """Fill ``dest`` with what an offline machine needs; return its manifest.

    Returns
    -------
    dict
        ``files`` (name -> bytes and sha256) and ``bytes`` in all; also written to
        ``dest/MANIFEST.json``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    constraint = str(ROOT / ".ci" / "build-constraints.txt")
    env = dict(os.environ, PIP_BUILD_CONSTRAINT=constraint, PIP_CONSTRAINT=constraint)
    if not list(dest.glob("chainer-7.8.1-*.whl")):
        subprocess.run(_pip("wheel", "-q", "--no-deps", "-w", str(dest), CHAINER),
                       check=True, env=env)
    for version in PYTHONS:
        subprocess.run(_pip("download", "-q", "--no-deps", "--only-binary=:all:",
                            "--python-version", version, "-d", str(dest), *PURE), check=True)
    _download_sdist(dest)
    files = sorted(p for p in dest.iterdir() if p.is_file() and p.name != "MANIFEST.json")
    manifest = {"files": {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                          for p in files},
                "bytes": sum(p.stat().st_size for p in files)}
    (dest / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# ---------------------------------------------------------------- offline installs
def _dist(wheel: Path) -> str:
    return wheel.name.split("-")[0].lower().replace(".", "_")


def compatible(wheel: Path) -> bool:
    """Whether this interpreter can install ``wheel``, from its file name's tags (pure
    Python, or CPython of this version and a platform of this machine)."""
    python, abi, plat = wheel.name[:-len(".whl")].split("-")[-3:]
    cp = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    py_ok = bool({"py3", cp} & set(python.split(".")))
    abi_ok = abi in ("none", "abi3", cp)
    plat_ok = plat == "any" or (platform.system() == "Linux" and platform.machine() in plat)
    return py_ok and abi_ok and plat_ok


def importable(modules: Sequence[str], site: Path) -> Dict[str, bool]:
    """Which modules the steps would find (``site`` and the interpreter); located, not
    imported (Chainer's import needs ``cupy_abn.chainer`` first)."""
    probe = ("import importlib.util, json, sys; print(json.dumps({m: "
             "importlib.util.find_spec(m) is not None for m in sys.argv[1:]}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    p = subprocess.run([sys.executable, "-c", probe, *modules], env=env, capture_output=True,
                       text=True, timeout=120)
    return json.loads(p.stdout) if p.returncode == 0 else {m: False for m in modules}


def install_wheels(wheels: Sequence[Path], site: Path) -> None:
    """Install ``wheels`` into ``site`` without network or dependencies: pip where the
    interpreter has it, else the wheel unzipped (enough for these wheels)."""
    site.mkdir(parents=True, exist_ok=True)
    if not wheels:
        return
    has_pip = subprocess.run(_pip("--version"), capture_output=True).returncode == 0
    if has_pip:
        subprocess.run(_pip("install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--no-cache-dir", "--upgrade", "--target", str(site),
                            *map(str, wheels)), check=True, capture_output=True)
        return
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)


def install_missing(folder: Path, site: Path) -> Dict[str, Any]:
    """Install the prepared wheels whose module the steps would not find.

    Returns
    -------
    dict
        ``installed`` (wheel names), ``present`` (modules found already) and ``missing``
        (modules neither found nor prepared: run ``prepare`` where there is network).
    """
    found_wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    wheels = {_dist(w): w for w in found_wheels if compatible(w)}
    wanted = [d for d in MODULES if d != "inplace_abn"]
    found = importable([MODULES[d] for d in wanted], site)
    todo = [wheels[d] for d in wanted if not found[MODULES[d]] and d in wheels]
    install_wheels(todo, site)
    return {"installed": [w.name for w in todo],
            "present": [MODULES[d] for d in wanted if found[MODULES[d]]],
            "missing": [MODULES[d] for d in wanted if not found[MODULES[d]]
                        and d not in wheels]}


# ---------------------------------------------------------------- inplace_abn
def patch_setup(src: Path) -> List[str]:
    """inplace-abn 1.1.0's ``setup.py`` against today's PyTorch, without network: CUDA is
    chosen by ``torch.version.cuda`` and CUDA_HOME (``torch.has_cuda`` is gone), and the
    version is fixed (setuptools_scm, a ``setup_requires``, may be absent)."""
    path = src / "setup.py"
    text = path.read_text()
    subs = [("if torch.has_cuda:", "if torch.version.cuda is not None and CUDA_HOME is not None:"),
            ("from torch.utils.cpp_extension import BuildExtension, CUDAExtension, CppExtension",
             "from torch.utils.cpp_extension import BuildExtension, CUDAExtension, "
             "CppExtension, CUDA_HOME"),
            ('    use_scm_version={"root": ".", "relative_to": __file__, '
             '"write_to": "inplace_abn/_version.py"},', '    version="1.1.0",'),
            ('    setup_requires=["setuptools_scm"],', "")]
    done = []
    for old, new in subs:
        if old not in text:
            raise RuntimeError(f"setup.py: {old!r} not found (another sdist?)")
        text = text.replace(old, new)
        done.append(old.strip()[:60])
    path.write_text(text)
    return done


_TORCH_PROBE = ("import torch; print(torch.__version__); print(','.join('%d.%d' % "
                "torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())))")


def build_inplace_abn(sdist: Path, dest: Path, timeout: float, log: Path) -> Dict[str, Any]:
    """Build inplace_abn's wheel into ``dest`` against this machine's PyTorch (its CUDA
    extension where PyTorch has CUDA and nvcc is found, for this GPU's architecture only),
    killed at ``timeout`` seconds.  A missing sdist or PyTorch is a recorded skip."""
    if not sdist.exists():
        return {"status": "skipped", "reason": f"no sdist {sdist.name} (run prepare)"}
    env = child_env()
    probe = subprocess.run([sys.executable, "-c", _TORCH_PROBE], capture_output=True,
                           text=True, env=env)
    if probe.returncode != 0:
        return {"status": "skipped", "reason": "PyTorch does not import: "
                + (probe.stderr.strip().splitlines() or ["?"])[-1][:200]}
    version, archs = (probe.stdout.split("\n") + ["", ""])[:2]
    build = Path(tempfile.mkdtemp(prefix="inplace_abn_"))
    try:
        with tarfile.open(sdist) as tar:
            tar.extractall(build)
        src = next(build.iterdir())
        patches = patch_setup(src)
        env.update(MAX_JOBS=str(os.cpu_count() or 4), SETUPTOOLS_SCM_PRETEND_VERSION="1.1.0")
        if archs.strip():
            env["TORCH_CUDA_ARCH_LIST"] = ";".join(sorted(set(archs.strip().split(","))))
        dest.mkdir(parents=True, exist_ok=True)
        res = run_logged(_pip("wheel", "--no-build-isolation", "--no-deps", "--no-index", "-v",
                              "-w", str(dest), str(src)), log, timeout, env)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    res.update(patches=patches, torch=version, cuda_arch_list=env.get("TORCH_CUDA_ARCH_LIST"))
    wheels = sorted(dest.glob("inplace_abn-*.whl"))
    if res["status"] == "ok" and wheels:
        res["wheel"] = str(wheels[-1])
    return res


class Build:
    """The inplace_abn build in the background (a child at low priority, in its own
    session): never waited for, polled by the steps that could use its wheel."""

    def __init__(self, sdist: Path, dest: Path, result: Path, timeout: float,
                 extra_env: Optional[Dict[str, str]] = None):
        self.result, self.started = result, time.monotonic()
        self.finished: Optional[float] = None
        argv = [sys.executable, "-m", "benchmarks.gpu_proof", "build-inplace-abn",
                "--sdist", str(sdist), "--dest", str(dest), "--timeout", f"{timeout:.0f}",
                "--result", str(result)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=child_env(None, extra_env),
                                     cwd=ROOT,
                                     start_new_session=True, preexec_fn=lambda: os.nice(10))

    def done(self) -> bool:
        if self.finished is None and self.proc.poll() is not None:
            self.finished = time.monotonic()
        return self.finished is not None

    def outcome(self) -> Dict[str, Any]:
        """The build's result so far (its JSON, once it has ended)."""
        if not self.done():
            return {"status": "running",
                    "seconds": round(time.monotonic() - self.started, 1)}
        try:
            res = json.loads(self.result.read_text())
        except (OSError, ValueError):
            res = {"status": "failed", "reason": f"the build exited {self.proc.returncode} "
                                                 "without a result"}
        res.setdefault("seconds", round(self.finished - self.started, 1))
        return res

    def stop(self) -> None:
        """Kill it (and its compilers) if it still runs."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
