"""Fit the static performance model's two free parameters to kernel times measured on a GPU.

    python benchmarks/fit_model.py --measured benchmarks/results/kernels_gpu.json
    python benchmarks/fit_model.py --measured kernels_gpu.json \\
        --report benchmarks/results/static_report.json --out fit.json

The static model (``benchmarks/static/model.py``) predicts the time of one kernel launch
from what a static reading of the compiled kernel found, given two numbers it cannot read:
the memory latency (ns) and the peak bandwidth (GB/s) of the device:

    predict_us(record: dict, latency_ns: float, bandwidth_GBps: float) -> float

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
measured device's architecture, for passes or records that carry ``arch``).  A flat list of
launch records that each carry those fields (under "launches" or "records", or at the top
level) is read as well; there a record without ``mode`` matches the "inplace" rows.

Writes a JSON with the fitted parameters, their standard errors (log space, from the
Jacobian at the optimum), and measured against predicted time for every matched pass.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections import defaultdict
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
    pred = _model(groups, predict, theta)
    if not np.all(np.isfinite(pred)) or np.any(pred <= 0):
        return np.full(len(groups), np.inf)
    return np.log(pred) - logy


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
        Levenberg-Marquardt steps at most.

    Returns
    -------
    dict
        ``latency_ns``, ``bandwidth_GBps``, ``rms_log_error`` (at the optimum),
        ``log_std_error`` (per parameter; ``inf`` when the data cannot tell it, e.g. every
        case bandwidth-bound), ``cases`` and ``iterations``.
    """
    if len(groups) < 2:
        raise ValueError(f"need at least 2 matched passes to fit 2 parameters, "
                         f"got {len(groups)}")
    logy = np.log([t for _, _, t in groups])
    cost = lambda th: float(np.sum(_residuals(groups, predict, th, logy) ** 2))  # noqa: E731
    # Grid first: the model is a sum of a latency and a bandwidth term per launch, so the
    # cost is far from quadratic over decades; a local method alone can stall on a plateau.
    lat = np.linspace(*np.log(LATENCY_NS), grid)
    bw = np.linspace(*np.log(BANDWIDTH_GBPS), grid)
    theta = min((np.array([a, b]) for a in lat for b in bw), key=cost)
    lam, best, steps = 1e-3, cost(theta), 0
    for steps in range(1, iterations + 1):
        r = _residuals(groups, predict, theta, logy)
        jac = np.empty((len(groups), 2))
        for j in range(2):
            h = np.zeros(2)
            h[j] = 1e-5
            jac[:, j] = (_residuals(groups, predict, theta + h, logy)
                         - _residuals(groups, predict, theta - h, logy)) / 2e-5
        jtj, g = jac.T @ jac, jac.T @ r
        while lam < 1e12:
            step = np.linalg.solve(jtj + lam * np.diag(np.diag(jtj) + 1e-12), -g)
            new = cost(theta + step)
            if new < best:
                theta, best, lam = theta + step, new, max(lam / 10, 1e-9)
                break
            lam *= 10
        else:
            break          # no step lowers the cost: a minimum
        if np.max(np.abs(step)) < 1e-10:
            break
    r = _residuals(groups, predict, theta, logy)
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


def run_fit(measured: Dict[str, Any], report: Any, predict: Predict,
            where: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The whole fit on a kernels benchmark result and a static report (both parsed)."""
    records = launch_records(report)
    where = _default_where(measured, records) if where is None else where
    groups = match(records, measured["rows"], where)
    params = fit(groups, predict)
    return {"device": measured.get("device"),
            "gpu_proof_device": measured.get("gpu_proof_device"),
            "copy_gbps": measured.get("copy_gbps"), "record_filter": where,
            "objective": "least squares on log(time), every matched pass weighs the same",
            **params,
            "passes": report_rows(groups, predict, params, measured["rows"],
                                  measured.get("copy_gbps"))}


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measured", required=True, help="kernels_gpu.json of benchmarks/kernels.py")
    p.add_argument("--report", default=str(REPORT), help="static_report.json")
    p.add_argument("--model", default="benchmarks.static.model:predict_us",
                   help="module:function of the prediction")
    p.add_argument("--where", action="append", default=None, metavar="FIELD=VALUE",
                   help="keep only records with this field value (default: the measured "
                        "device's arch and CUDA major, where records carry them)")
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


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = _parse(argv)
    measured = json.loads(Path(args.measured).read_text())
    report = load_report(Path(args.report))
    where = None
    if args.where is not None:
        where = {}
        for item in args.where:
            field, _, value = item.partition("=")
            where[field] = int(value) if value.isdigit() else value
    result = run_fit(measured, report, load_predict(args.model), where)
    print(f"{result['cases']} passes: latency {result['latency_ns']:.0f} ns, "
          f"bandwidth {result['bandwidth_GBps']:.0f} GB/s, "
          f"rms log error {result['rms_log_error']:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
