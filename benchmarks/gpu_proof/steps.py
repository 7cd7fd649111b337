"""What each step runs, and what the summary reads back from its results.

Every step but the environment is a child process (``child.run_logged``) writing into the
run's results folder; the dry run gives the same commands toy sizes and the CPU.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import ROOT
from .child import child_env
from .testrecord import ENV_DEADLINE, ENV_RECORD, ENV_TIMEOUT, counts

# The toy sizes of the dry run (the CPU path of every step in seconds).
TOY = {"kernels": ["--batch", "2", "--shapes", "8:6:6,16:3:3", "--repeat", "2",
                   "--warmup", "1"],
       "memory": ["--batches", "2,4", "--size", "8"]}
GPU = {"kernels": [], "memory": ["--batches", "16,32,64,128", "--size", "32"]}
TEST_TIMEOUT_S = 90.0


def slug(name: str) -> str:
    """A file-name form of a device name (``NVIDIA H200`` -> ``nvidia-h200``)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


# ---------------------------------------------------------------- environment
_PROBE = r"""
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
    out = {"version": cupy.__version__, "runtime": rt.runtimeGetVersion(),
           "driver": rt.driverGetVersion(), "devices": n}
    if n:
        p = rt.getDeviceProperties(0)
        name = p["name"]
        out.update(name=name.decode() if isinstance(name, bytes) else str(name),
                   sms=p.get("multiProcessorCount"), clock_khz=p.get("clockRate"),
                   compute_cap=f"{p.get('major')}.{p.get('minor')}",
                   memory_bytes=p.get("totalGlobalMem"))
    return out
def chainer_():
    import cupy_abn.chainer, chainer, chainer.backends.cuda as c
    err = getattr(c, "_resolution_error", None)
    return {"version": chainer.__version__, "cuda_available": bool(c.available),
            "cudnn_enabled": bool(c.cudnn_enabled), "cuda_error": err and str(err)[:300]}
def torch_():
    import torch
    return {"version": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available()}
def inplace_abn_():
    import torch, inplace_abn; return getattr(inplace_abn, "__version__", "unknown")
def pytest_():
    import pytest; return pytest.__version__
for name, fn in [("numpy", numpy_), ("cupy", cupy_), ("chainer", chainer_),
                 ("torch", torch_), ("inplace_abn", inplace_abn_), ("pytest", pytest_)]:
    probe(name, fn)
print(json.dumps(info))
"""


def nvidia_smi() -> Dict[str, Any]:
    """Name, driver, the driver's CUDA version, memory and maximum SM clock of GPU 0."""
    fields = "name,driver_version,memory.total,clocks.max.sm"
    try:
        q = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=60)
        head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"nvidia-smi: {e}"}
    if q.returncode != 0:
        return {"error": (q.stderr or q.stdout).strip()[:300]}
    name, driver, memory, clock = ([s.strip() for s in q.stdout.splitlines()[0].split(",")]
                                   + ["", "", "", ""])[:4]
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", head.stdout)
    mhz = re.match(r"\d+", clock)
    return {"name": name, "driver": driver, "memory": memory,
            "clock_max_mhz": int(mhz.group()) if mhz else None,
            "cuda": cuda.group(1) if cuda else None}


def probe_versions(site: Path, timeout: float = 300.0,
                   extra: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Versions and the CUDA device as the steps see them (in a child: an import that
    crashes is reported, not fatal)."""
    try:
        p = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                           env=child_env(site, extra), timeout=max(timeout, 5.0), cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"the version probe took over {timeout:.0f} s"}
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": (p.stderr or p.stdout)[-1000:]}


def describe_device(smi: Dict[str, Any], versions: Dict[str, Any], dry_run: bool = False
                    ) -> Dict[str, Any]:
    """The device of the run: named by CuPy (else nvidia-smi), with what the model needs
    (SMs, maximum clock) and the versions the numbers depend on.  A dry run hides the GPU
    from its steps: it is the CPU's run, and its slug says so."""
    cupy = versions.get("cupy") or {}
    gpu = bool(cupy.get("devices"))
    name = "CPU" if dry_run else (cupy.get("name") or smi.get("name")
                                  or ("CPU" if not gpu else "unknown GPU"))
    clock = (smi.get("clock_max_mhz") or 0) / 1e3 or (cupy.get("clock_khz") or 0) / 1e6
    return {"name": name, "slug": slug(name) + ("-dry-run" if dry_run else ""),
            "gpu": gpu and not dry_run,
            "compute_cap": cupy.get("compute_cap"), "sms": cupy.get("sms"),
            "clock_ghz": clock or None, "memory": smi.get("memory"),
            "driver": smi.get("driver"), "cuda": smi.get("cuda"),
            "cupy": cupy.get("version"), "cuda_runtime": cupy.get("runtime"),
            "nvidia_smi_error": smi.get("error")}


def device_spec(device: Dict[str, Any], given: Optional[str], dry_run: bool
                ) -> Optional[Dict[str, Any]]:
    """The model's device (``fit_model.DeviceSpec`` fields): ``--device-spec`` when given,
    else the table entry of the device's name (its SM count taken from CuPy where that
    differs, e.g. a partitioned GPU), else what CuPy and nvidia-smi report; in the dry run,
    the static model's reference device; None without a GPU (nothing to fit)."""
    from dataclasses import asdict, replace

    from benchmarks import fit_model
    if not (given or dry_run or device.get("gpu")):
        return None
    if given or dry_run:
        spec = fit_model.resolve_device(given or "reference", {})
    elif device["name"] in fit_model.KNOWN_DEVICES:
        spec = fit_model.KNOWN_DEVICES[device["name"]]
        if device.get("sms") and device["sms"] != spec.sms:
            spec = replace(spec, sms=int(device["sms"]),
                           source=spec.source + f"; {device['sms']} SMs as CuPy reports")
    else:
        spec = fit_model.resolve_device(None, {"gpu_proof_device": device})
    return asdict(spec)


# ---------------------------------------------------------------- the steps' commands
def tests_argv(results: Path) -> List[str]:
    """``pytest -m gpu`` with the proof's plugin (its own per-test timeout: pytest-timeout's
    is off), skip reasons and the slowest tests in the log, and a junit XML."""
    return [sys.executable, "-m", "pytest", "-m", "gpu",
            "-p", "benchmarks.gpu_proof.pytest_plugin", "-p", "no:cacheprovider",
            "-p", "no:timeout", "-q", "-rfEs", "--durations=20",
            "--continue-on-collection-errors", f"--junitxml={results / 'tests_gpu.xml'}",
            "tests"]


def tests_vars(results: Path, deadline_epoch: float) -> Dict[str, str]:
    """The test step's variables: the plugin's deadline, per-test timeout and record."""
    return {ENV_DEADLINE: f"{deadline_epoch:.3f}", ENV_TIMEOUT: str(TEST_TIMEOUT_S),
            ENV_RECORD: str(results / "tests_gpu.jsonl")}


def kernels_argv(results: Path, gpu: bool, budget_s: float, impls: Optional[str] = None,
                 stem: Optional[str] = None) -> List[str]:
    argv = [sys.executable, "benchmarks/kernels.py", "--device", "gpu" if gpu else "cpu",
            "--baselines", "all", "--no-progress", "--out", str(results),
            "--budget-s", f"{budget_s:.0f}", *(GPU if gpu else TOY)["kernels"]]
    if impls:
        argv += ["--impls", impls]
    if stem:
        argv += ["--stem", stem]
    return argv


def memory_argv(results: Path, gpu: bool) -> List[str]:
    return [sys.executable, "benchmarks/memory.py", "--device", "gpu" if gpu else "cpu",
            "--no-progress", "--out", str(results), *(GPU if gpu else TOY)["memory"]]


def fit_argv(results: Path, gpu: bool) -> List[str]:
    """On a GPU the measured times; in the dry run the model's own (a self-check)."""
    spec = ["--device-spec", str(results / "device_spec.json")]
    if gpu:
        return [sys.executable, "benchmarks/fit_model.py", "--measured",
                str(results / "kernels_gpu.json"), *spec,
                "--out", str(results / "static_fit_gpu.json")]
    return [sys.executable, "benchmarks/fit_model.py", "--synthetic", *spec,
            "--out", str(results / "static_fit_synthetic.json")]


# ---------------------------------------------------------------- reading results back
def _load(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _record_lines(results: Path) -> List[Dict[str, Any]]:
    path = results / "tests_gpu.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] \
        if path.exists() else []


def tests_counts(results: Path) -> Dict[str, int]:
    """Counts of the test step (``testrecord.counts``) from its record."""
    return counts(_record_lines(results))


def skipped_modules(results: Path) -> Dict[str, str]:
    """Test files skipped whole, with their reasons (e.g. a missing optional package)."""
    return {ln["collect_skip"]: ln["reason"] for ln in _record_lines(results)
            if "collect_skip" in ln}


def tests_done(results: Path) -> str:
    """Progress note of the running test step: tests reported so far."""
    got = tests_counts(results)
    done = got["collected"] - got["not_run"]
    return f"{done}/{got['collected']} tests, {got['failed'] + got['errors']} failed"


def kernels_summary(path: Path) -> Dict[str, Any]:
    """Rows, implementations timed, baselines skipped (with one reason each), cases left
    for lack of budget, and the copy bandwidth."""
    got = _load(path)
    if got is None:
        return {"result": f"no {path.name}"}
    skipped: Dict[str, str] = {}
    for s in got.get("skipped", []):
        if s["reason"] != "budget":
            skipped.setdefault(s["impl"], s["reason"])
    return {"rows": len(got["rows"]), "timed": sorted({r["impl"] for r in got["rows"]}),
            "skipped": skipped, "cases_not_run": got.get("cases_not_run", 0),
            "copy_gbps": round(got["copy_gbps"], 1)}


def memory_summary(path: Path) -> Dict[str, Any]:
    got = _load(path)
    if got is None:
        return {"result": f"no {path.name}"}
    return {"batches": [r["batch"] for r in got["runs"]["inplace"]],
            "kept_ratio": round(got["kept_ratio"], 3), "peak_ratio": round(got["peak_ratio"], 3)}


def fit_summary(path: Path) -> Dict[str, Any]:
    got = _load(path)
    if got is None:
        return {"result": f"no {path.name}"}
    return {"predicted_for": got.get("predicted_for"), "cases": got["cases"],
            "latency_ns": round(got["latency_ns"], 1),
            "bandwidth_GBps": round(got["bandwidth_GBps"], 1),
            "rms_log_error": round(got["rms_log_error"], 4),
            "prior_rms_log_error": (got.get("prior") or {}).get("rms_log_error")}
