"""Fit the static performance model's two free parameters to kernel times measured on a GPU.

    python benchmarks/fit_model.py --measured kernels_gpu.json --out fit.json
    python benchmarks/fit_model.py --measured kernels_gpu.json --device-spec "NVIDIA H200"
    python benchmarks/fit_model.py --synthetic --device-spec reference   # no GPU: a self-check

The static model (``benchmarks/static/model.py``) predicts the time of one kernel launch
from what a static reading of the compiled kernel found, given two numbers it cannot read:
the memory latency (ns) and the peak bandwidth (GB/s) of the device:

    predict_us(record: dict, latency_ns: float, bandwidth_GBps: float,
               clock_GHz: float = ...) -> float      (clock_GHz: where a model takes it)

``record`` is one per-launch record of ``static_report.json``.  A timed pass of the
benchmark (one API call: e.g. a training forward = a statistics launch and an apply launch)
is predicted as the sum over its launch records.  The two parameters are fitted by least
squares on log time (every case weighs the same whatever its size), over every pass, shape,
dtype and mode that both the report and the measurement have: a grid search over a wide
range, then Levenberg-Marquardt in log-parameter space.

The report lists passes (``report["passes"]``), each with the fields ``pass``
("forward_train", "forward_eval", "backward"), ``shape`` (the full NCHW shape), ``dtype``,
``mode`` ("inplace", "inplace_v1", "standard"; measured as "cupy-abn <mode>"), ``major``
(the NVRTC / CUDA major version it was compiled with) and ``launches`` (its per-launch
records).  Only the passes of the CUDA major version CuPy ran with are used (and of the
measured device's architecture, for passes or records that name ``arch``).  A flat list of
launch records that each have those fields (under "launches" or "records", or at the top
level) is read as well; there a record without ``mode`` matches the "inplace" rows.

**The device is a parameter.**  The model's SM count and clock are those of the device the
times were measured on (:class:`DeviceSpec`): ``--device-spec`` names a device of
``KNOWN_DEVICES`` (keyed by the name CuPy reports), ``reference`` (the static model's own
defaults), a JSON file, or ``name=...,sms=...,clock_ghz=...[,copy_gbps=...]``; without it,
the measured device is looked up in the table, else described by what the measurement
recorded (``gpu_proof_device``: SMs and clock as CuPy and nvidia-smi report them).  Launch
records collected for another SM count are rescaled to the device's (waves in proportion;
exact in whole waves).  Every prediction written names its device (``predicted_for``).

Writes a JSON with the fitted parameters, their standard errors (log space, from the
Jacobian at the optimum), the prediction before the fit (the model's default latency and the
device's copy bandwidth: ``prior``), and measured against predicted time for every matched
pass.  ``--synthetic`` fits times the model itself predicts on the device at known
parameters: the whole path without a GPU, which must find those parameters again.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "benchmarks" / "results" / "static_report.json"
PASSES = ("forward_train", "forward_eval", "backward")
Predict = Callable[[Dict[str, Any], float, float], float]
Key = Tuple[str, Tuple[int, ...], str, str]          # (pass, shape, dtype, mode)

# Search box of the grid stage: latency 10 ns - 100 us, bandwidth 100 GB/s - 30 TB/s.
LATENCY_NS = (1e1, 1e5)
BANDWIDTH_GBPS = (1e2, 3e4)
# Known parameters of the --synthetic self-check: latency, and bandwidth as a fraction of
# the device's copy bandwidth.
SYNTHETIC = (650.0, 0.95)


@dataclass(frozen=True)
class DeviceSpec:
    """What the model needs to know of a device.

    Attributes
    ----------
    name : str
        As CuPy reports it (``getDeviceProperties()["name"]``).
    sms : int
        Streaming multiprocessors.
    clock_ghz : float
        The SM clock the model's instruction-issue limit uses (the maximum boost clock).
    copy_gbps : float, optional
        Device-to-device copy bandwidth, reads and writes counted: the bandwidth of the
        prediction before the fit.  None: the one the kernel benchmark measured.
    source : str
        Where the numbers come from.
    """

    name: str
    sms: int
    clock_ghz: float
    copy_gbps: Optional[float] = None
    source: str = ""


KNOWN_DEVICES: Dict[str, DeviceSpec] = {
    "NVIDIA H200": DeviceSpec("NVIDIA H200", 132, 1.98, 4300.0,
                              "132 SMs at up to 1.98 GHz; a device-to-device copy measured "
                              "about 4.3 TB/s, reads and writes counted"),
}


def reference_device(predict: Optional[Predict] = None) -> DeviceSpec:
    """The device the static model's defaults describe (its module constants)."""
    g = getattr(predict or load_predict(), "__globals__", {})
    return DeviceSpec("H100 SXM (the static model's reference device)", int(g.get("SMS", 132)),
                      float(g.get("CLOCK_GHZ", 1.755)), g.get("COPY_BANDWIDTH_GBPS"),
                      "the constants of benchmarks/static/model.py")


def _spec_from_text(text: str) -> DeviceSpec:
    """``name=...,sms=...,clock_ghz=...[,copy_gbps=...]`` or a JSON file of those fields."""
    if text.endswith(".json"):
        fields = json.loads(Path(text).read_text())
    else:
        fields = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
    try:
        return DeviceSpec(name=str(fields["name"]), sms=int(fields["sms"]),
                          clock_ghz=float(fields["clock_ghz"]),
                          copy_gbps=(float(fields["copy_gbps"])
                                     if fields.get("copy_gbps") not in (None, "") else None),
                          source=str(fields.get("source") or "given"))
    except (KeyError, ValueError) as e:
        raise ValueError(f"device spec {text!r}: needs name, sms and clock_ghz ({e})") from None


def resolve_device(text: Optional[str], measured: Dict[str, Any],
                   predict: Optional[Predict] = None) -> DeviceSpec:
    """The device of a fit (see the module docstring); a missing copy bandwidth is the one
    measured.

    Raises
    ------
    ValueError
        An unknown device that the measurement does not describe either.
    """
    dev = measured.get("gpu_proof_device") or {}
    name = str(dev.get("name") or measured.get("device") or "")
    if text == "reference":
        spec = reference_device(predict)
    elif text in KNOWN_DEVICES:
        spec = KNOWN_DEVICES[text]
    elif text:
        spec = _spec_from_text(text)
    elif name in KNOWN_DEVICES:
        spec = KNOWN_DEVICES[name]
    elif dev.get("sms") and dev.get("clock_ghz"):
        spec = DeviceSpec(name, int(dev["sms"]), float(dev["clock_ghz"]), None,
                          "SMs and clock as CuPy and nvidia-smi report them")
    else:
        raise ValueError(f"unknown device {name!r}: give --device-spec (known: "
                         f"{', '.join(KNOWN_DEVICES)}, reference)")
    if spec.copy_gbps is None and measured.get("copy_gbps"):
        spec = replace(spec, copy_gbps=float(measured["copy_gbps"]),
                       source=spec.source + "; copy bandwidth as measured")
    return spec


def for_sms(record: Dict[str, Any], sms: int) -> Dict[str, Any]:
    """A launch record collected for ``record["sms"]`` SMs, seen on ``sms``: the same grid
    makes waves in proportion, and below one wave fewer threads per SM."""
    old = record.get("sms")
    if not old or old == sms or "waves" not in record:
        return record
    ratio = old / sms
    out = dict(record, sms=sms, waves=record["waves"] * ratio)
    if record["waves"] < 1 and "resident_threads_per_sm" in record:
        full = record["resident_threads_per_sm"] / record["waves"]   # at full occupancy
        out["resident_threads_per_sm"] = min(record["resident_threads_per_sm"] * ratio, full)
    return out


def on_device(predict: Predict, spec: DeviceSpec) -> Predict:
    """``predict`` for ``spec``: its records rescaled to the device's SMs, and the device's
    clock passed as ``clock_GHz`` where the model takes one (a stand-in model may not)."""
    clock = ({"clock_GHz": spec.clock_ghz}
             if "clock_GHz" in inspect.signature(predict).parameters else {})

    def on(record: Dict[str, Any], latency_ns: float, bandwidth_GBps: float) -> float:
        return predict(for_sms(record, spec.sms), latency_ns, bandwidth_GBps, **clock)

    return on


def load_predict(spec: str = "benchmarks.static.model:predict_us") -> Predict:
    """Import ``module:function`` with the repository root on ``sys.path``.

    Raises
    ------
    ImportError
        The module or the function is not there (the static model not written yet).
    """
    module, _, name = spec.partition(":")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    fn = getattr(importlib.import_module(module), name or "predict_us", None)
    if fn is None:
        raise ImportError(f"{module} has no {name or 'predict_us'}")
    return fn


def launch_records(report: Any) -> List[Dict[str, Any]]:
    """The items of a static report: passes (each with its ``launches``), or flat
    per-launch records (see the module docstring)."""
    if isinstance(report, list):
        return report
    for key in ("passes", "launches", "records"):
        if isinstance(report.get(key), list):
            return report[key]
    raise ValueError("static report: expected a list under 'passes' (each with its "
                     "'launches'), 'launches' or 'records'")


def _key(rec: Dict[str, Any]) -> Optional[Key]:
    try:
        return (str(rec["pass"]), tuple(int(v) for v in rec["shape"]), str(rec["dtype"]),
                str(rec.get("mode", "inplace")))
    except (KeyError, TypeError, ValueError):
        return None       # a record of something the benchmark does not time


def _measured_key(row: Dict[str, Any]) -> Optional[Key]:
    impl = str(row.get("impl", ""))
    if not impl.startswith("cupy-abn "):
        return None       # a baseline: not what the static model describes
    return (row["pass"], tuple(int(v) for v in row["shape"]), row["dtype"], impl.split()[1])


def match(records: Sequence[Dict[str, Any]], rows: Sequence[Dict[str, Any]],
          where: Optional[Dict[str, Any]] = None
          ) -> List[Tuple[Key, List[Dict[str, Any]], float]]:
    """``[(key, launch records, measured µs)]`` for every timed pass the report covers.

    ``where``: field values a record must have when it has the field (e.g. ``arch``).
    """
    def kept(item: Dict[str, Any]) -> bool:
        return not any(f in item and item[f] != v for f, v in (where or {}).items())

    by_key: Dict[Key, List[Dict[str, Any]]] = defaultdict(list)
    for item in records:
        key = _key(item)
        if key is None or not kept(item):
            continue
        if isinstance(item.get("launches"), list):          # a pass and its launches
            by_key[key].extend(r for r in item["launches"] if kept(r))
        else:                                               # one flat launch record
            by_key[key].append(item)
    out = []
    for row in rows:
        key = _measured_key(row)
        if key is not None and key in by_key:
            out.append((key, by_key[key], 1e3 * float(row["ms"])))
    return out


def _model(groups, predict: Predict, theta: np.ndarray) -> np.ndarray:
    latency, bandwidth = np.exp(theta)
    return np.array([sum(predict(r, float(latency), float(bandwidth)) for r in recs)
                     for _, recs, _ in groups])


def _residuals(groups, predict: Predict, theta: np.ndarray, logy: np.ndarray) -> np.ndarray:
    try:
        pred = _model(groups, predict, theta)
    except (ZeroDivisionError, OverflowError):
        return np.full(len(groups), np.inf)
    if not np.all(np.isfinite(pred)) or np.any(pred <= 0):
        return np.full(len(groups), np.inf)
    return np.log(pred) - logy


def _jacobian(groups, predict: Predict, theta: np.ndarray, logy: np.ndarray) -> np.ndarray:
    """Central differences of the residuals in log-parameter space."""
    jac = np.empty((len(groups), 2))
    for j in range(2):
        h = np.zeros(2)
        h[j] = 1e-5
        jac[:, j] = (_residuals(groups, predict, theta + h, logy)
                     - _residuals(groups, predict, theta - h, logy)) / 2e-5
    return jac


def _refine(groups, predict: Predict, theta: np.ndarray, logy: np.ndarray,
            iterations: int) -> Tuple[np.ndarray, float, int]:
    """Levenberg-Marquardt from ``theta``: the optimum, its cost and the steps taken."""
    cost = lambda th: float(np.sum(_residuals(groups, predict, th, logy) ** 2))  # noqa: E731
    # kept within a decade of the search box: a start far off may step to absurd values
    lo = np.log([LATENCY_NS[0], BANDWIDTH_GBPS[0]]) - np.log(10)
    hi = np.log([LATENCY_NS[1], BANDWIDTH_GBPS[1]]) + np.log(10)
    lam, best, steps = 1e-3, cost(theta), 0
    for steps in range(1, iterations + 1):
        r = _residuals(groups, predict, theta, logy)
        jac = _jacobian(groups, predict, theta, logy)
        jtj, g = jac.T @ jac, jac.T @ r
        while lam < 1e12:
            step = np.clip(theta + np.linalg.solve(jtj + lam * np.diag(np.diag(jtj) + 1e-12),
                                                   -g), lo, hi) - theta
            new = cost(theta + step)
            if new < best:
                theta, best, lam = theta + step, new, max(lam / 10, 1e-9)
                break
            lam *= 10
        else:
            break          # no step lowers the cost: a minimum
        if np.max(np.abs(step)) < 1e-10:
            break
    return theta, best, steps


def fit(groups: Sequence[Tuple[Key, List[Dict[str, Any]], float]], predict: Predict,
        grid: int = 17, iterations: int = 60) -> Dict[str, Any]:
    """Least squares on log time for (latency ns, bandwidth GB/s).

    Parameters
    ----------
    groups
        From :func:`match`: the launch records of each timed pass and its measured µs.
    predict
        ``predict_us(record, latency_ns, bandwidth_GBps)``.
    grid
        Points per parameter of the starting grid (log spaced over the search box).
    iterations
        Levenberg-Marquardt steps at most, from each start (the best bandwidth of every
        latency of the grid); the best end wins.

    Returns
    -------
    dict
        ``latency_ns``, ``bandwidth_GBps``, ``rms_log_error`` (at the optimum),
        ``log_std_error`` (per parameter; ``inf`` when the data cannot tell it, e.g. every
        case bandwidth-bound), ``cases`` and ``iterations`` (of the winning start).
    """
    if len(groups) < 2:
        raise ValueError(f"need at least 2 matched passes to fit 2 parameters, "
                         f"got {len(groups)}")
    logy = np.log([t for _, _, t in groups])
    cost = lambda th: float(np.sum(_residuals(groups, predict, th, logy) ** 2))  # noqa: E731
    # Grid first: the model is a max of a latency and a bandwidth term per launch, so the
    # cost is far from quadratic over decades, and flat in latency wherever no launch is
    # latency-bound: a local fit from the single best grid point can stall on that plateau,
    # so one starts from every latency of the grid.
    lat = np.linspace(*np.log(LATENCY_NS), grid)
    bw = np.linspace(*np.log(BANDWIDTH_GBPS), grid)
    points = [min((np.array([a, b]) for b in bw), key=cost) for a in lat]
    theta, _, steps = min((_refine(groups, predict, p, logy, iterations) for p in points),
                          key=lambda t: t[1])
    r = _residuals(groups, predict, theta, logy)
    jac = _jacobian(groups, predict, theta, logy)
    dof = max(len(groups) - 2, 1)
    try:
        cov = np.linalg.inv(jac.T @ jac) * float(r @ r) / dof
        err = [float(math.sqrt(max(c, 0.0))) for c in np.diag(cov)]
    except np.linalg.LinAlgError:
        err = [math.inf, math.inf]
    latency, bandwidth = np.exp(theta)
    return {"latency_ns": float(latency), "bandwidth_GBps": float(bandwidth),
            "rms_log_error": float(np.sqrt(np.mean(r ** 2))),
            "log_std_error": {"latency": err[0], "bandwidth": err[1]},
            "cases": len(groups), "iterations": steps}


def report_rows(groups, predict: Predict, params: Dict[str, Any],
                rows: Sequence[Dict[str, Any]], copy_gbps: Optional[float]) -> List[Dict]:
    """Measured against predicted µs per matched pass (and predicted fraction of copy)."""
    bytes_of = {_measured_key(r): r.get("model_bytes") for r in rows}
    theta = np.log([params["latency_ns"], params["bandwidth_GBps"]])
    pred = _model(groups, predict, theta)
    out = []
    for (key, recs, us), p in zip(groups, pred):
        item = {"pass": key[0], "shape": list(key[1]), "dtype": key[2], "mode": key[3],
                "launches": len(recs), "measured_us": us, "predicted_us": float(p),
                "ratio": float(p / us)}
        nbytes = bytes_of.get(key)
        if copy_gbps and nbytes:
            item["measured_fraction_of_copy"] = nbytes / (us * 1e3) / copy_gbps
            item["predicted_fraction_of_copy"] = nbytes / (float(p) * 1e3) / copy_gbps
        out.append(item)
    return out


def _default_where(measured: Dict[str, Any], records: Sequence[Dict[str, Any]]
                   ) -> Dict[str, Any]:
    """Architecture and CUDA major version of the measurement, for records that name them."""
    where: Dict[str, Any] = {}
    dev = measured.get("gpu_proof_device") or {}
    cap = str(dev.get("compute_cap") or "")
    if cap and any("arch" in r for r in records):
        where["arch"] = "sm_" + cap.replace(".", "")
    runtime = (measured.get("environment") or {}).get("cuda_runtime") or dev.get(
        "cuda_runtime")
    for field in ("major", "nvrtc_major"):
        if runtime and any(field in r for r in records):
            where[field] = int(runtime) // 1000
    return where


def _default_latency(predict: Predict) -> Optional[float]:
    """The model's own latency (its ``latency_ns`` default), or None."""
    param = inspect.signature(predict).parameters.get("latency_ns")
    default = None if param is None else param.default
    return float(default) if isinstance(default, (int, float)) else None


def _prior(groups, predict: Predict, latency: Optional[float], spec: Optional[DeviceSpec]
           ) -> Optional[Dict[str, Any]]:
    """The prediction before the fit: the model's default latency and the device's copy
    bandwidth (None where either is unknown)."""
    if spec is None or not spec.copy_gbps or latency is None:
        return None
    theta = np.log([latency, spec.copy_gbps])
    r = _residuals(groups, predict, theta, np.log([t for _, _, t in groups]))
    return {"latency_ns": float(latency), "bandwidth_GBps": spec.copy_gbps,
            "rms_log_error": float(np.sqrt(np.mean(r ** 2))),
            "predicted_us": [float(p) for p in _model(groups, predict, theta)]}


def run_fit(measured: Dict[str, Any], report: Any, predict: Predict,
            where: Optional[Dict[str, Any]] = None,
            spec: Optional[DeviceSpec] = None) -> Dict[str, Any]:
    """The whole fit on a kernels benchmark result and a static report (both parsed), on
    the device ``spec`` (None: the records as they are, the model's own clock)."""
    records = launch_records(report)
    where = _default_where(measured, records) if where is None else where
    groups = match(records, measured["rows"], where)
    model = on_device(predict, spec) if spec else predict
    params = fit(groups, model)
    prior = _prior(groups, model, _default_latency(predict), spec)
    rows = report_rows(groups, model, params, measured["rows"], measured.get("copy_gbps"))
    if prior:
        for row, p in zip(rows, prior.pop("predicted_us")):
            row["prior_us"] = p
    label = spec.name if spec else "the static model's reference device"
    return {"device": measured.get("device"),
            "gpu_proof_device": measured.get("gpu_proof_device"),
            "predicted_for": label, "device_spec": asdict(spec) if spec else None,
            "copy_gbps": measured.get("copy_gbps"), "record_filter": where,
            "objective": "least squares on log(time), every matched pass weighs the same",
            **params, "prior": prior, "passes": rows}


def synthetic_measurement(report: Any, predict: Predict, spec: DeviceSpec,
                          latency_ns: float, bandwidth_GBps: float) -> Dict[str, Any]:
    """A stand-in for a kernel benchmark result: every pass of the report's newest CUDA
    major, timed as the model predicts it on ``spec`` at the given parameters."""
    items = [p for p in launch_records(report) if isinstance(p.get("launches"), list)
             and p["launches"] and "mode" in p]
    major = max((p.get("major", 0) for p in items), default=0)
    arch = next((p["arch"] for p in items if "arch" in p), None)
    rows = []
    model = on_device(predict, spec)
    for p in items:
        if p.get("major", major) != major or p.get("arch", arch) != arch:
            continue
        us = sum(model(r, latency_ns, bandwidth_GBps) for r in p["launches"])
        rows.append({"impl": f"cupy-abn {p['mode']}", "pass": p["pass"],
                     "shape": list(p["shape"]), "dtype": p["dtype"], "ms": us / 1e3,
                     "model_bytes": p.get("minimal_bytes")})
    cap = f"{arch[3:-1]}.{arch[-1]}" if arch and arch.startswith("sm_") else None
    return {"device": f"{spec.name} (synthetic: the model's own times)", "rows": rows,
            "copy_gbps": spec.copy_gbps, "environment": {"cuda_runtime": major * 1000},
            "gpu_proof_device": {"name": spec.name, "compute_cap": cap},
            "synthetic_truth": {"latency_ns": latency_ns, "bandwidth_GBps": bandwidth_GBps}}


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measured", help="kernels_gpu.json of benchmarks/kernels.py")
    p.add_argument("--synthetic", action="store_true",
                   help="fit the model's own times at known parameters (no GPU needed)")
    p.add_argument("--device-spec", help="a known device name, 'reference', a JSON file, or "
                                         "name=...,sms=...,clock_ghz=...[,copy_gbps=...]")
    p.add_argument("--report", default=str(REPORT), help="static_report.json")
    p.add_argument("--model", default="benchmarks.static.model:predict_us",
                   help="module:function of the prediction")
    p.add_argument("--where", action="append", default=None, metavar="FIELD=VALUE",
                   help="keep only records with this field value (default: the measured "
                        "device's arch and CUDA major, where records name them)")
    p.add_argument("--out", help="JSON to write (default: print only)")
    return p.parse_args(argv)


def load_report(path: Path) -> Any:
    """A static report with its passes' launch records: the committed compact form
    (``schema: 2``) is expanded by the library's launch logic (``benchmarks/static/compact.py``);
    other JSON is returned as it is."""
    report = json.loads(path.read_text())
    if isinstance(report, dict) and report.get("schema") == 2:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from benchmarks.static import compact
        report = compact.expand(report)
    return report


def _where(items: Optional[List[str]]) -> Optional[Dict[str, Any]]:
    if items is None:
        return None
    where: Dict[str, Any] = {}
    for item in items:
        field, _, value = item.partition("=")
        where[field] = int(value) if value.isdigit() else value
    return where


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = _parse(argv)
    if not args.measured and not args.synthetic:
        raise SystemExit("fit_model: give --measured FILE or --synthetic")
    report = load_report(Path(args.report))
    predict = load_predict(args.model)
    if args.synthetic:
        spec = resolve_device(args.device_spec or "reference", {}, predict)
        latency, fraction = SYNTHETIC
        measured = synthetic_measurement(report, predict, spec, latency,
                                         fraction * (spec.copy_gbps or 3000.0))
    else:
        measured = json.loads(Path(args.measured).read_text())
        spec = resolve_device(args.device_spec, measured, predict)
    result = run_fit(measured, report, predict, _where(args.where), spec)
    if args.synthetic:
        result["synthetic_truth"] = measured["synthetic_truth"]
    print(f"{result['predicted_for']}: {result['cases']} passes, latency "
          f"{result['latency_ns']:.0f} ns, bandwidth {result['bandwidth_GBps']:.0f} GB/s, "
          f"rms log error {result['rms_log_error']:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
