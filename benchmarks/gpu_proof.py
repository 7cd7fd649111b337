"""The GPU proof: every GPU test, the kernel benchmark against every baseline, the demo's GPU
memory, and the static model's fit, on a GPU machine in two calls (scripts/gpu_proof.sh).

Here (no GPU):
    python benchmarks/gpu_proof.py prepare            # wheels + sdist into .gpu_carry/
    python benchmarks/gpu_proof.py part1 --device cpu --out /tmp/p1   # every step's CPU path
    python benchmarks/gpu_proof.py part2 --dry-run    # print the plan only
    python benchmarks/gpu_proof.py unpack DIR         # returned files -> benchmarks/results/
On the GPU machine (CuPy, NumPy 2, PyTorch, nvcc; no Chainer, no network):
    python3 benchmarks/gpu_proof.py part1 --out DIR   # install, GPU tests, build inplace_abn
    python3 benchmarks/gpu_proof.py part2 --out DIR   # kernels, demo, memory, fit

Every step runs as a child process with a time limit and its own log; a step that fails is
recorded and the next one runs.  Each part writes into ``--out`` a few files, so that
they are easy to copy back: ``gpu_proof_<part>_<device>.json`` (the summary: device, steps, statuses),
``gpu_proof_<part>_<device>.tar.gz`` (every result JSON/PNG and log), and after part 1 the
inplace_abn wheel it built (so that a cold machine need not build it again in part 2).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".gpu_carry"
RESULTS = ROOT / "benchmarks" / "results"
WORK = Path(tempfile.gettempdir()) / "gpu_proof"
SITE = WORK / "site"          # carried wheels are installed here (PYTHONPATH)
BUILT = WORK / "built"        # the inplace_abn wheel built on the machine

# Chainer 7.8.1 is an sdist whose setup.py needs setuptools<81 (pkg_resources): its wheel is
# built here.  At start-up Chainer imports numpy.distutils and pkg_resources, which the machine
# (Python 3.12, NumPy 2) may lack: every step imports cupy_abn.chainer first, whose stand-ins
# (cupy_abn/chainer/_standins.py) serve them there.
CHAINER = "chainer==7.8.1"
INPLACE_ABN = ("inplace-abn-1.1.0.tar.gz",
               "7c286ca53d35cb37b0d1f8b9beb5a910c694129d3d4f7b8e53188370bb260c27")
CARRY_LIMIT = 30 << 20
PART_BUDGET_S = 540           # each part fits a 10-minute command, with a margin

PLAN = {"part1": ("install", "environment", "build_inplace_abn", "tests"),
        "part2": ("install", "environment", "inplace_abn", "kernels", "demo", "memory",
                  "fit")}
PLAN["all"] = PLAN["part1"] + PLAN["part2"][2:]


# ---------------------------------------------------------------- helpers
def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def child_env() -> Dict[str, str]:
    """Environment of every step: carried wheels and the checkout first on ``sys.path``; the
    tox-only skip rule off (only GPU tests are selected here)."""
    env = dict(os.environ)
    env.pop("CUPY_ABN_ONLY_GPU_SKIPS", None)
    paths = [str(SITE), str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p]
    env.update(PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)), PYTHONUNBUFFERED="1",
               MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    return env


def run_logged(argv: Sequence[str], log: Path, timeout: float,
               env: Optional[Dict[str, str]] = None, cwd: Path = ROOT) -> Dict[str, Any]:
    """Run ``argv`` with stdout+stderr into ``log``; kill its process group at ``timeout``.

    Returns
    -------
    dict
        ``status`` ("ok", "failed" or "timeout"), ``rc``, ``seconds``, ``log`` (its name)
        and ``tail`` (the log's last lines).
    """
    start = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        out.write("$ " + " ".join(map(str, argv)) + "\n")
        out.flush()
        proc = subprocess.Popen(list(map(str, argv)), stdout=out, stderr=subprocess.STDOUT,
                                env=env or child_env(), cwd=cwd, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout, 1))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)   # its own session: the step's children too
            rc, status = proc.wait(), "timeout"
    text = log.read_text(errors="replace")
    return {"status": status, "rc": rc, "seconds": round(time.monotonic() - start, 1),
            "log": log.name, "tail": "\n".join(text.splitlines()[-15:])}


# ---------------------------------------------------------------- prepare (here)
def _pip(*args: str) -> List[str]:
    return [sys.executable, "-m", "pip", *args]


def _download_sdist(dest: Path) -> Path:
    """Mapillary's inplace-abn sdist from PyPI's simple index, checked against its sha256.
    (``pip download`` would run its setup.py, which imports torch, to read its metadata.)"""
    name, sha = INPLACE_ABN
    path = dest / name
    if path.exists() and _sha256(path) == sha:
        return path
    req = urllib.request.Request("https://pypi.org/simple/inplace-abn/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        files = json.load(r)["files"]
    url = next(f["url"] for f in files if f["filename"] == name)
    dest.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=120) as r, open(path, "wb") as f:
        shutil.copyfileobj(r, f)
    if _sha256(path) != sha:
        path.unlink()
        raise RuntimeError(f"{name}: sha256 mismatch")
    return path


def prepare(carry: Path = CARRY) -> Dict[str, Any]:
    """Fill the carried folder: Chainer's wheel built here (its sdist needs setuptools<81 to
    build) and inplace_abn's sdist."""
    wheels = carry / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    constraint = str(ROOT / ".ci" / "build-constraints.txt")
    env = dict(os.environ, PIP_BUILD_CONSTRAINT=constraint, PIP_CONSTRAINT=constraint)
    if not list(wheels.glob("chainer-7.8.1-*.whl")):
        subprocess.run(_pip("wheel", "-q", "--no-deps", "-w", str(wheels), CHAINER),
                       check=True, env=env)
    sdist = _download_sdist(carry / "sdist")
    files = sorted(p for p in carry.rglob("*") if p.is_file() and p.name != "MANIFEST.json")
    total = sum(p.stat().st_size for p in files)
    if total > CARRY_LIMIT:
        raise RuntimeError(f"{carry}: {total >> 20} MiB, over {CARRY_LIMIT >> 20} MiB")
    manifest = {"files": {str(p.relative_to(carry)): {"bytes": p.stat().st_size,
                                                      "sha256": _sha256(p)} for p in files},
                "bytes": total, "sdist": sdist.name}
    (carry / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def run_calls(carry: Path = CARRY) -> List[Dict[str, Any]]:
    """The commands to run on the GPU machine, in order (each: the command, the prepared
    folder it needs there, and its time limit in seconds)."""
    rel = os.path.relpath(carry, ROOT)
    return [{"command": f"bash scripts/gpu_proof.sh {part}", "carry": [rel], "timeout_s": 600}
            for part in ("part1", "part2")]


# ---------------------------------------------------------------- steps (GPU machine)
def install(carry: Path = CARRY) -> Dict[str, Any]:
    """Install the carried Chainer wheel into ``SITE`` where this interpreter has no Chainer
    (once: a warm machine keeps it)."""
    marker = SITE / ".installed.json"
    if marker.exists():
        return {"status": "ok", "note": "already installed", **json.loads(marker.read_text())}
    base = {k: v for k, v in child_env().items() if k != "PYTHONPATH"}

    # located, not imported: importing Chainer needs cupy_abn.chainer first
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('chainer') is None)"
    has_chainer = subprocess.run([sys.executable, "-c", probe], env=base,
                                 capture_output=True).returncode == 0
    wanted = [] if has_chainer else sorted((carry / "wheels").glob("chainer-*.whl"))
    missing = [] if (carry / "wheels").is_dir() else [f"{carry}/wheels"]
    if wanted:
        subprocess.run(_pip("install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--no-cache-dir", "--upgrade", "--target", str(SITE),
                            *map(str, wanted)), check=True)
    SITE.mkdir(parents=True, exist_ok=True)
    info = {"installed": [p.name for p in wanted], "missing": missing}
    marker.write_text(json.dumps(info))
    return {"status": "failed" if missing else "ok", **info}


_ENV_PROBE = r"""
import json, sys
info = {"python": sys.version.split()[0]}
def probe(name, fn):
    try:
        info[name] = fn()
    except Exception as e:
        info[name] = None
        info[name + "_error"] = f"{type(e).__name__}: {e}"[:300]
def numpy_():
    import numpy; return numpy.__version__
def cupy_():
    import cupy
    rt = cupy.cuda.runtime
    n = rt.getDeviceCount()
    return {"version": cupy.__version__, "runtime": rt.runtimeGetVersion(),
            "driver": rt.driverGetVersion(), "devices": n}
def chainer_():
    import cupy_abn.chainer, chainer, chainer.backends.cuda as c
    err = getattr(c, "_resolution_error", None)
    return {"version": chainer.__version__, "cuda_available": bool(c.available),
            "cudnn_enabled": bool(c.cudnn_enabled), "cuda_error": err and str(err)[:300]}
def torch_():
    import torch
    return {"version": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
            "capability": ".".join(map(str, torch.cuda.get_device_capability()))
            if torch.cuda.is_available() else None}
def inplace_abn_():
    import torch, inplace_abn; return getattr(inplace_abn, "__version__", "unknown")
for name, fn in [("numpy", numpy_), ("cupy", cupy_), ("chainer", chainer_),
                 ("torch", torch_), ("inplace_abn", inplace_abn_)]:
    probe(name, fn)
print(json.dumps(info))
"""


def _nvidia_smi() -> Dict[str, Any]:
    """Name, driver, CUDA version (driver's), memory and compute capability of GPU 0."""
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                            "compute_cap", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=60)
        head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"nvidia-smi: {e}"}
    if q.returncode != 0:
        return {"error": (q.stderr or q.stdout).strip()[:300]}
    name, driver, memory, cap = [s.strip() for s in q.stdout.splitlines()[0].split(",")][:4]
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", head.stdout)
    return {"name": name, "driver": driver, "memory": memory, "compute_cap": cap,
            "cuda": cuda.group(1) if cuda else None}


def environment(work: Path) -> Dict[str, Any]:
    """The device and the versions the numbers depend on (probed in a child process: an
    import that crashes is reported, not fatal)."""
    smi = _nvidia_smi()
    p = subprocess.run([sys.executable, "-c", _ENV_PROBE], capture_output=True, text=True,
                       env=child_env(), timeout=300, cwd=ROOT)
    try:
        probe = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        probe = {"error": (p.stderr or p.stdout)[-1000:]}
    cupy = probe.get("cupy") or {}
    device = {"name": smi.get("name") or ("CPU" if not cupy.get("devices") else "unknown GPU"),
              "driver": smi.get("driver"), "cuda": smi.get("cuda"),
              "compute_cap": smi.get("compute_cap"), "memory": smi.get("memory"),
              "cupy": cupy.get("version"), "cuda_runtime": cupy.get("runtime"),
              "nvidia_smi_error": smi.get("error")}
    info = {"device": device, "versions": probe}
    (work / "environment.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def _patch_setup(src: Path) -> List[str]:
    """inplace-abn 1.1.0's setup.py against today's PyTorch, without network: CUDA is chosen
    with ``torch.version.cuda`` and CUDA_HOME (``torch.has_cuda`` is gone), and the version is
    fixed (setuptools_scm, a setup_requires, is not on the machine)."""
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


def build_inplace_abn(sdist: Path, dest: Path, timeout: float, log: Path) -> Dict[str, Any]:
    """Build Mapillary's inplace_abn wheel against this machine's PyTorch (CUDA extension
    where PyTorch has CUDA and nvcc is found, else its C++ one), time-boxed."""
    if not sdist.exists():
        return {"status": "skipped", "reason": f"no sdist {sdist} (run prepare here)"}
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__);"
                            "print(','.join('%d.%d' % torch.cuda.get_device_capability(i) "
                            "for i in range(torch.cuda.device_count())))"],
                           capture_output=True, text=True, env=child_env())
    if probe.returncode != 0:
        return {"status": "skipped", "reason": "PyTorch does not import: "
                + probe.stderr.strip().splitlines()[-1][:200]}
    archs = probe.stdout.split("\n")[1].strip()
    build = Path(tempfile.mkdtemp(prefix="inplace_abn_"))
    with tarfile.open(sdist) as tar:
        tar.extractall(build)
    src = next(build.iterdir())
    patches = _patch_setup(src)
    env = child_env()
    env.update(MAX_JOBS=str(os.cpu_count() or 4), SETUPTOOLS_SCM_PRETEND_VERSION="1.1.0")
    if archs:
        env["TORCH_CUDA_ARCH_LIST"] = ";".join(sorted(set(archs.split(","))))   # this GPU only
    dest.mkdir(parents=True, exist_ok=True)
    res = run_logged(_pip("wheel", "--no-build-isolation", "--no-deps", "--no-index", "-v",
                          "-w", str(dest), str(src)), log, timeout, env)
    res.update(patches=patches, torch=probe.stdout.split("\n")[0],
               cuda_arch_list=env.get("TORCH_CUDA_ARCH_LIST"))
    wheels = sorted(dest.glob("inplace_abn-*.whl"))
    if res["status"] == "ok" and wheels:
        res["wheel"] = wheels[-1].name
    shutil.rmtree(build, ignore_errors=True)
    return res


def ensure_inplace_abn(out: Path, timeout: float, log: Path, allow_build: bool
                       ) -> Dict[str, Any]:
    """inplace_abn importable in the steps: installed already, or from a wheel built by part
    1 (on this warm machine, or carried back), or built now when the budget allows."""
    check = [sys.executable, "-c", "import torch, inplace_abn; print(inplace_abn.__file__)"]
    if subprocess.run(check, env=child_env(), capture_output=True).returncode == 0:
        return {"status": "ok", "note": "already importable"}
    wheels = sorted(BUILT.glob("inplace_abn-*.whl")) + sorted(
        (CARRY / "built").glob("inplace_abn-*.whl"))
    res: Dict[str, Any] = {}
    if not wheels and allow_build:
        res = build_inplace_abn(CARRY / "sdist" / INPLACE_ABN[0], BUILT, timeout, log)
        wheels = sorted(BUILT.glob("inplace_abn-*.whl"))
    if not wheels:
        res.setdefault("status", "skipped")
        res.setdefault("reason", "no inplace_abn wheel and no time left to build one")
        return res
    subprocess.run(_pip("install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", str(SITE), "--upgrade", str(wheels[0])), check=True)
    p = subprocess.run(check, env=child_env(), capture_output=True, text=True)
    res.update(wheel=wheels[0].name, status="ok" if p.returncode == 0 else "failed",
               import_error=None if p.returncode == 0 else p.stderr.strip()[-500:])
    if p.returncode == 0 and out is not None and not (out / wheels[0].name).exists():
        shutil.copy2(wheels[0], out / wheels[0].name)
    return res


def _step_argv(name: str, gpu: bool, work: Path) -> List[str]:
    """The child command of a benchmark step; small sizes on the CPU (the dry run)."""
    py = sys.executable
    if name == "tests":
        return [py, "-m", "pytest", "-m", "gpu", "-rA", "-q", "-p", "no:cacheprovider",
                f"--junitxml={work / 'tests_gpu.xml'}", "tests"]
    if name == "kernels":
        size = [] if gpu else ["--batch", "2", "--shapes", "8:6:6,16:3:3", "--repeat", "2",
                               "--warmup", "1"]
        return [py, "benchmarks/kernels.py", "--device", "gpu" if gpu else "cpu",
                "--baselines", "all", "--no-progress", "--out", str(work), *size]
    if name == "demo":
        size = ["--steps", "200"] if gpu else ["--steps", "8", "--batch", "4", "--size", "8",
                                               "--widths", "4,8,8", "--budget-mib", "16"]
        return [py, "-m", "cupy_abn.demo", "--device", "gpu" if gpu else "cpu",
                "--no-progress", "--out", str(work), *size]
    if name == "memory":
        size = ["--batches", "16,32,64,128", "--size", "32"] if gpu else ["--batches", "2,4",
                                                                           "--size", "8"]
        return [py, "benchmarks/memory.py", "--device", "gpu" if gpu else "cpu",
                "--out", str(work), *size]
    if name == "fit":
        where = "gpu" if gpu else "cpu"
        return [py, "benchmarks/fit_model.py", "--measured", str(work / f"kernels_{where}.json"),
                "--out", str(work / f"static_fit_{where}.json")]
    raise ValueError(name)


RESULT_STEMS = ("kernels_", "demo_", "memory_", "static_fit_", "environment")
STEP_TIMEOUT = {"tests": 420, "build_inplace_abn": 420, "inplace_abn": 240, "kernels": 240,
                "demo": 180, "memory": 120, "fit": 60}


def _fit_ready(work: Path, gpu: bool) -> Optional[str]:
    """Why the fit cannot run yet, or None."""
    if not gpu:
        return "CPU timings: the static model predicts the GPU kernels, there is nothing to fit"
    if not (ROOT / "benchmarks" / "static" / "model.py").exists():
        return "benchmarks/static/model.py is not there yet"
    if not (RESULTS / "static_report.json").exists():
        return "benchmarks/results/static_report.json is not there yet"
    if not (work / f"kernels_{'gpu' if gpu else 'cpu'}.json").exists():
        return "no kernel benchmark result"
    return None


def run_part(part: str, out: Path, gpu: bool, dry_run: bool = False,
             budget_s: float = PART_BUDGET_S) -> Dict[str, Any]:
    """Run one part's steps in order, each recorded; bundle everything into ``out``."""
    steps = PLAN[part]
    if dry_run:
        for name in steps:
            argv = _step_argv(name, gpu, WORK / part) if name in (
                "tests", "kernels", "demo", "memory", "fit") else [name]
            print(f"{name:>18}: {' '.join(map(str, argv))}")
        return {"part": part, "dry_run": True, "steps": list(steps)}
    deadline = time.monotonic() + budget_s
    work = WORK / part
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    summary: Dict[str, Any] = {"part": part, "mode": "gpu" if gpu else "cpu (dry run)",
                               "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "steps": {}}
    build = None
    for name in steps:
        left = deadline - time.monotonic()
        t0 = time.monotonic()
        print(f"[gpu_proof {part}] {name} ({left:.0f} s left)", flush=True)
        if name == "install":
            res = install()
        elif name == "environment":
            res = environment(work)
            summary["device"] = res["device"]
            res = {"status": "ok", **res}
            if gpu and not (res["versions"].get("cupy") or {}).get("devices"):
                summary["steps"][name] = dict(res, status="needs_gpu")
                print("needs a GPU: CuPy sees no CUDA device; stopping", flush=True)
                break
        elif name == "build_inplace_abn":
            # in the background: the build uses the CPU cores while the tests use the GPU
            build = subprocess.Popen([sys.executable, __file__, "build-inplace-abn",
                                      "--dest", str(BUILT), "--timeout",
                                      str(min(STEP_TIMEOUT[name], left - 30)),
                                      "--result", str(work / "build_inplace_abn.json")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=child_env(), cwd=ROOT, start_new_session=True)
            res = {"status": "started"}
        elif name == "inplace_abn":
            if build is not None:               # "all": the build of part 1 first
                _finish_build(build, summary, work, out, deadline - 300)
                build = None
            res = ensure_inplace_abn(out, min(STEP_TIMEOUT[name], left - 330),
                                     work / "build_inplace_abn.log", allow_build=left > 500)
        elif name == "fit" and _fit_ready(work, gpu):
            res = {"status": "skipped", "reason": _fit_ready(work, gpu)}
        else:
            res = run_logged(_step_argv(name, gpu, work), work / f"{name}.log",
                             min(STEP_TIMEOUT[name], max(left - 20, 1)))
        res.setdefault("seconds", round(time.monotonic() - t0, 1))
        summary["steps"][name] = res
        print(f"[gpu_proof {part}] {name}: {res['status']}", flush=True)
    if build is not None:
        _finish_build(build, summary, work, out, deadline - 15)
    return bundle(summary, work, out)


def _finish_build(build: subprocess.Popen, summary: Dict[str, Any], work: Path, out: Path,
                  until: float) -> None:
    """Wait for the background build (killed at ``until``), record it, install its wheel
    and return it in ``out`` (for a part 2 on a machine that has gone cold)."""
    try:
        build.wait(timeout=max(until - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        os.killpg(build.pid, signal.SIGKILL)
        build.wait()
    path = work / "build_inplace_abn.json"
    res = json.loads(path.read_text()) if path.exists() else {
        "status": "timeout", "reason": "build still running at the part's deadline"}
    if res.get("wheel"):
        shutil.copy2(BUILT / res["wheel"], out / res["wheel"])
        inst = ensure_inplace_abn(None, 0, work / "unused.log", allow_build=False)
        res["import"] = inst.get("status")
        res["import_error"] = inst.get("import_error")
    summary["steps"]["build_inplace_abn"] = res


def bundle(summary: Dict[str, Any], work: Path, out: Path) -> Dict[str, Any]:
    """Name the device in every result JSON, then write the summary and one tar.gz."""
    device = summary.get("device") or {"name": "unknown"}
    for path in work.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(data, dict):
            data["gpu_proof_device"] = device
            path.write_text(json.dumps(data, indent=1) + "\n")
    slug = _slug(device["name"])
    summary["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    summary["ok"] = all(s.get("status") in ("ok", "skipped") for s in summary["steps"].values())
    stem = f"gpu_proof_{summary['part']}_{slug}"
    (work / f"{stem}.json").write_text(json.dumps(summary, indent=1) + "\n")
    with tarfile.open(out / f"{stem}.tar.gz", "w:gz") as tar:
        for path in sorted(work.iterdir()):
            tar.add(path, arcname=path.name)
    shutil.copy2(work / f"{stem}.json", out / f"{stem}.json")
    for name, step in summary["steps"].items():
        print(f"{name:>18}: {step.get('status'):>9} {step.get('seconds', '')!s:>7} s  "
              f"{step.get('reason') or step.get('note') or ''}")
    print(f"wrote {out / stem}.json and .tar.gz ({'all ok' if summary['ok'] else 'NOT all ok'})")
    return summary


# ---------------------------------------------------------------- unpack (here)
def unpack(src: Path, results: Path = RESULTS, carry: Path = CARRY) -> List[Path]:
    """Copy what a part returned into ``results`` with the device in each file name
    (``kernels_gpu.json`` -> ``kernels_gpu_<device>.json``), stage a built inplace_abn
    wheel for part 2, and refit the static model here when it is there."""
    written: List[Path] = []
    results.mkdir(parents=True, exist_ok=True)
    for tgz in sorted(src.glob("gpu_proof_*.tar.gz")):
        slug = tgz.name[:-len(".tar.gz")].split("_", 3)[3]
        with tempfile.TemporaryDirectory() as tmp, tarfile.open(tgz) as tar:
            tar.extractall(tmp)
            logs = results / f"gpu_proof_{slug}"
            for path in sorted(Path(tmp).iterdir()):
                if path.suffix in (".json", ".png") and path.name.startswith(RESULT_STEMS):
                    dest = results / f"{path.stem}_{slug}{path.suffix}"
                else:                      # logs, test report, summaries
                    logs.mkdir(parents=True, exist_ok=True)
                    dest = logs / path.name
                shutil.copy2(path, dest)
                written.append(dest)
    for whl in src.glob("inplace_abn-*.whl"):
        (carry / "built").mkdir(parents=True, exist_ok=True)
        shutil.copy2(whl, carry / "built" / whl.name)
        written.append(carry / "built" / whl.name)
    model_there = (ROOT / "benchmarks" / "static" / "model.py").exists()
    for kern in results.glob("kernels_gpu_*.json"):
        if not model_there or not (RESULTS / "static_report.json").exists():
            continue
        slug = kern.stem[len("kernels_gpu_"):]
        try:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            import fit_model
            fit_model.main(["--measured", str(kern),
                            "--out", str(results / f"static_fit_gpu_{slug}.json")])
            written.append(results / f"static_fit_gpu_{slug}.json")
        except Exception as e:     # the model may not match yet: the copy is what matters
            print(f"refit here failed: {type(e).__name__}: {e}")
    for p in written:
        print(f"wrote {p}")
    return written


# ---------------------------------------------------------------- command line
def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare", help="here: fill .gpu_carry/ and print the commands for the GPU machine")
    for part in PLAN:
        s = sub.add_parser(part, help=f"the steps {', '.join(PLAN[part])}")
        s.add_argument("--out", default=str(WORK / "out"))
        s.add_argument("--device", choices=("gpu", "cpu"), default="gpu",
                       help="cpu: every step's CPU path at toy sizes (a check without a GPU)")
        s.add_argument("--dry-run", action="store_true", help="print the steps only")
        s.add_argument("--budget-s", type=float, default=PART_BUDGET_S)
    b = sub.add_parser("build-inplace-abn", help="build the inplace_abn wheel (time-boxed)")
    b.add_argument("--sdist", default=str(CARRY / "sdist" / INPLACE_ABN[0]))
    b.add_argument("--dest", default=str(BUILT))
    b.add_argument("--timeout", type=float, default=STEP_TIMEOUT["build_inplace_abn"])
    b.add_argument("--result", help="JSON to write the outcome to")
    u = sub.add_parser("unpack", help="here: returned files -> benchmarks/results/")
    u.add_argument("src", help="the folder the GPU machine's output files were copied into")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv)
    if args.cmd == "prepare":
        manifest = prepare()
        print(f"{CARRY}: {manifest['bytes'] / 2 ** 20:.1f} MiB")
        for f in manifest["files"]:
            print(f"  {f}")
        print("On the GPU machine (then `bash scripts/gpu_proof.sh unpack DIR` here after each):")
        for call in run_calls():
            print("  run " + json.dumps(call))
        return 0
    if args.cmd == "build-inplace-abn":
        dest = Path(args.dest)
        res = build_inplace_abn(Path(args.sdist), dest, args.timeout,
                                dest / "build_inplace_abn.log")
        if args.result:
            shutil.copy2(dest / "build_inplace_abn.log", Path(args.result).with_suffix(".log")) \
                if (dest / "build_inplace_abn.log").exists() else None
            Path(args.result).write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps({k: v for k, v in res.items() if k != "tail"}, indent=1))
        return 0 if res["status"] in ("ok", "skipped") else 1
    if args.cmd == "unpack":
        unpack(Path(args.src))
        return 0
    summary = run_part(args.cmd, Path(args.out), args.device == "gpu", args.dry_run,
                       args.budget_s)
    return 0 if summary.get("dry_run") or summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
