"""Speed of cupy-abn's layer next to Chainer's BatchNormalization + leaky_relu, a plain
array composition, PyTorch's batch_norm + leaky_relu and Mapillary's inplace_abn, on ResNet
shapes.

    python benchmarks/kernels.py                  # GPU when CuPy sees one, else CPU
    python benchmarks/kernels.py --device cpu --batch 2
    python benchmarks/kernels.py --baselines all  # PyTorch and inplace_abn on the CPU too

The PyTorch-based baselines (``OPTIONAL``) run by default on a GPU only; one that cannot run
(not installed, no CUDA device, a dtype it refuses) is listed under "skipped" in the JSON
with its reason, and the run goes on.

On a GPU cupy-abn runs its CUDA kernels and each call is timed with CUDA events; on the CPU
it runs the NumPy backend and is timed with perf_counter (the same suite, Chainer's CPU path
as the baseline).  Every number is the median of ``--repeat`` calls after ``--warmup`` calls.

Traffic model: the fewest bytes any implementation of the layer must move, for an input of
S bytes (per-channel vectors ignored):

    forward_train   3 S   read x for the statistics, read x again and write z
    forward_eval    2 S   read x, write z
    backward        5 S   read (z or x) and dz for the per-channel sums, read them again
                          and write dx

Bandwidth = model bytes / time, reported next to the copy bandwidth measured in the same run
(``xp.copyto`` of a large buffer, read + write).  The standard mode (x kept) reads x and z in
backward, so it moves 7 S against the same 5 S model.

``--budget-s`` bounds the run: a case that would start after it is not run (counted in
``cases_not_run``), and what was timed is written.

Writes ``<out>/kernels_<cpu|gpu>.json`` and ``.png`` (``--stem`` renames them; the figure
only where matplotlib is installed).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cupy_abn.chainer  # noqa: E402,F401  (NumPy 2 step before Chainer is imported)
from cupy_abn._environment import describe, use_gpu  # noqa: E402

import _baselines  # noqa: E402
import _progress  # noqa: E402
from _timing import Clock, copy_bandwidth  # noqa: E402

SHAPES = ((64, 112, 112), (256, 56, 56), (512, 28, 28), (2048, 7, 7))   # (C, H, W)
PASSES = ("forward_train", "forward_eval", "backward")
MODEL_BYTES = {"forward_train": 3, "forward_eval": 2, "backward": 5}    # times S
IMPLS = ("cupy-abn inplace", "cupy-abn inplace_v1", "cupy-abn standard", "chainer",
         "composition")
OPTIONAL = ("pytorch", "inplace_abn")     # PyTorch-based: timed where they are installed
BASELINES = ("chainer", "composition") + OPTIONAL
SLOPE = 0.01


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--batch", type=int, help="N of every shape (gpu 32, cpu 2)")
    p.add_argument("--dtypes", default="float32,float16")
    p.add_argument("--shapes", help="C:H:W,... (default: the four ResNet shapes)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, help="timed calls per case (gpu 50, cpu 5)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--baselines", choices=("auto", "all", "none"), default="auto",
                   help="PyTorch-based baselines: auto = on a GPU only")
    p.add_argument("--impls", help="comma-separated implementations to time (instead of "
                                   "--baselines' choice), e.g. inplace_abn")
    p.add_argument("--budget-s", type=float, help="start no case after this many seconds")
    p.add_argument("--stem", help="output file name without suffix (default kernels_<device>)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _prepare(impl: str, xp, x, dz):
    if impl == "chainer":
        return _baselines.prepare_chainer(xp, x, dz, SLOPE)
    if impl == "composition":
        return _baselines.prepare_composition(xp, x, dz, SLOPE)
    if impl == "pytorch":
        return _baselines.prepare_pytorch(xp, x, dz, SLOPE)
    if impl == "inplace_abn":
        return _baselines.prepare_inplace_abn(xp, x, dz, SLOPE)
    return _baselines.prepare_cupy_abn(xp, x, dz, SLOPE, impl.split()[1])


def impls_for(choice: str, gpu: bool) -> Tuple[str, ...]:
    """The implementations timed for a ``--baselines`` choice."""
    with_optional = choice == "all" or (choice == "auto" and gpu)
    return IMPLS + (OPTIONAL if with_optional else ())


def _time_case(impl, xp, x, dz, clock, skipped, case) -> List[Tuple[str, float]]:
    """``[(pass, seconds)]`` of one implementation on one input.  An optional baseline that
    cannot run is recorded in ``skipped`` (the run goes on); the others must run."""
    try:
        fns = _prepare(impl, xp, x, dz)
        return [(name, clock.seconds(fns[name])) for name in PASSES]
    except Exception as e:
        if impl not in OPTIONAL:
            raise
        reason = str(e) if isinstance(e, _baselines.Unavailable) else f"{type(e).__name__}: {e}"
        skipped.append(dict(case, impl=impl, reason=reason.strip().splitlines()[0][:300]))
        return []


def run(xp, shapes, dtypes, clock: Clock, progress: bool,
        impls: Sequence[str] = IMPLS,
        skipped: Optional[List[Dict[str, Any]]] = None,
        deadline: float = float("inf")) -> List[Dict[str, Any]]:
    """Time every implementation in ``impls`` on every (shape, dtype); rows of results.
    Optional baselines that could not run are appended to ``skipped``; a case that would
    start after ``deadline`` (``time.monotonic()``) is appended with the reason "budget"."""
    skipped = [] if skipped is None else skipped
    rows = []
    cases = [(s, d) for s in shapes for d in dtypes]
    bar = _progress.bar(len(cases) * len(impls), progress, "kernels")
    for shape, dtype in cases:
        if time.monotonic() >= deadline:
            skipped.append({"shape": list(shape), "dtype": dtype, "impl": "all",
                            "reason": "budget"})
            continue
        rs = np.random.RandomState(0)
        x = xp.asarray((1.0 + 2.0 * rs.standard_normal(shape)).astype(dtype))
        dz = xp.asarray(rs.standard_normal(shape).astype(dtype))
        size = int(x.nbytes)
        for impl in impls:
            bar.set_postfix_str(f"{'x'.join(map(str, shape))} {dtype} {impl}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # Chainer's float16 / cuDNN notices
                timed = _time_case(impl, xp, x, dz, clock, skipped,
                                   {"shape": list(shape), "dtype": dtype})
            for name, sec in timed:
                rows.append({"shape": list(shape), "dtype": dtype, "impl": impl,
                             "pass": name, "ms": 1e3 * sec,
                             "model_bytes": MODEL_BYTES[name] * size,
                             "gbps": MODEL_BYTES[name] * size / sec / 1e9})
            bar.update()
        del x, dz
    bar.close()
    return rows


def _annotate(rows, copy_gbps):
    """Fraction of the copy bandwidth, and speed-up over each baseline timed for the same
    case (``speedup_vs_<baseline>``: the baseline's time over this row's)."""
    base_ms = {(r["impl"], tuple(r["shape"]), r["dtype"], r["pass"]): r["ms"]
               for r in rows if r["impl"] in BASELINES}
    for r in rows:
        r["fraction_of_copy"] = r["gbps"] / copy_gbps
        for base in BASELINES:
            ms = base_ms.get((base, tuple(r["shape"]), r["dtype"], r["pass"]))
            if ms is not None:
                r[f"speedup_vs_{base}"] = ms / r["ms"]


def _table(rows, copy_gbps) -> str:
    lines = [f"copy bandwidth {copy_gbps:.1f} GB/s",
             f"{'shape':>18} {'dtype':>8} {'pass':>14} {'impl':>20} {'ms':>9} {'GB/s':>8} "
             f"{'of copy':>8} {'vs chainer':>10}"]
    for r in rows:
        lines.append(f"{'x'.join(map(str, r['shape'])):>18} {r['dtype']:>8} {r['pass']:>14} "
                     f"{r['impl']:>20} {r['ms']:9.3f} {r['gbps']:8.1f} "
                     f"{r['fraction_of_copy']:8.1%} {r.get('speedup_vs_chainer', np.nan):9.2f}x")
    return "\n".join(lines)


def plot(result: Dict[str, Any], path: Path) -> None:
    """Bars of the fraction of copy bandwidth per pass, case and implementation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    cases = list(dict.fromkeys(("x".join(map(str, r["shape"])), r["dtype"]) for r in rows))
    fig, axes = plt.subplots(len(PASSES), 1, figsize=(max(8, 1.6 * len(cases)), 9),
                             sharex=True)
    width = 0.8 / len(impls)
    for ax, name in zip(axes, PASSES):
        for k, impl in enumerate(impls):
            got = {("x".join(map(str, r["shape"])), r["dtype"]): r["fraction_of_copy"]
                   for r in rows if r["impl"] == impl and r["pass"] == name}
            ax.bar(np.arange(len(cases)) + (k - len(impls) / 2 + 0.5) * width,
                   [100 * got.get(c, np.nan) for c in cases], width, label=impl)
        if max(100 * r["fraction_of_copy"] for r in rows) > 40:   # the GPU target, in reach
            ax.axhline(80, color="gray", ls="--", lw=0.8)
        ax.set_ylabel("% of copy bandwidth")
        ax.set_title(name, fontsize=10)
    axes[-1].set_xticks(np.arange(len(cases)), [f"{s}\n{d}" for s, d in cases], fontsize=8)
    axes[0].legend(ncol=min(len(impls), 4), fontsize=8, loc="upper left")
    fig.suptitle(f"{result['device']}: bandwidth by the minimal traffic model "
                 f"(copy = {result['copy_gbps']:.1f} GB/s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_if_possible(result: Dict[str, Any], path: Path) -> None:
    """The figure, where matplotlib is installed (it can be drawn later from the JSON)."""
    try:
        plot(result, path)
    except ImportError as e:
        print(f"no figure: {e}", file=sys.stderr)


def _optional_versions(impls: Sequence[str]) -> Dict[str, Any]:
    """Versions of the PyTorch-based baselines asked for (absent ones are left out)."""
    info: Dict[str, Any] = {}
    if not set(impls) & set(OPTIONAL):
        return info
    try:
        import torch
        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                    torch_cudnn=(torch.backends.cudnn.version()
                                 if torch.backends.cudnn.is_available() else None))
        import inplace_abn
        info["inplace_abn"] = getattr(inplace_abn, "__version__", "unknown")
    except ImportError:
        pass
    return info


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = _parse(argv)
    gpu = use_gpu(args.device)
    if gpu:
        import cupy as xp
    else:
        xp = np
    batch = args.batch or (32 if gpu else 2)
    chw = ([tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")]
           if args.shapes else SHAPES)
    shapes = [(batch,) + s for s in chw]
    deadline = time.monotonic() + (float("inf") if args.budget_s is None else args.budget_s)
    clock = Clock(xp, args.warmup, args.repeat or (50 if gpu else 5))
    copy_gbps = copy_bandwidth(clock, (1 << 30) if gpu else (256 << 20)) / 1e9
    impls = tuple(args.impls.split(",")) if args.impls else impls_for(args.baselines, gpu)
    skipped: List[Dict[str, Any]] = []
    rows = run(xp, shapes, args.dtypes.split(","), clock, not args.no_progress, impls, skipped,
               deadline)
    _annotate(rows, copy_gbps)
    env = describe(gpu)
    if gpu:
        import chainer
        env["chainer_cudnn"] = bool(chainer.backends.cuda.cudnn_enabled)
    env.update(_optional_versions(impls))
    result = {"device": env["device"], "environment": env, "copy_gbps": copy_gbps,
              "traffic_model": {k: f"{v} S" for k, v in MODEL_BYTES.items()},
              "warmup": args.warmup, "repeat": clock.repeat, "impls": list(impls),
              "cases_not_run": sum(s["reason"] == "budget" for s in skipped),
              "skipped": skipped, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (args.stem or f"kernels_{'gpu' if gpu else 'cpu'}")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    if rows:
        _plot_if_possible(result, stem.with_suffix(".png"))
    print(_table(rows, copy_gbps))
    for s in skipped:
        print(f"skipped {s['impl']} {'x'.join(map(str, s['shape']))} {s['dtype']}: "
              f"{s['reason']}")
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
