"""Train the same ResNet with BatchNormalization + leaky_relu and with InPlaceABN.

    python -m cupy_abn.demo [--steps 300] [--device auto|cpu|gpu] [--out demo_out]

Runs on the GPU when CuPy sees one, on the CPU otherwise.  For each network it reports the
loss curve, the peak memory of a training step (CuPy memory hook on a GPU, tracemalloc on the
CPU; measured on step 1, which is then left out of the timing), the median step time, and the
largest batch whose training step fits in ``--budget-mib``.  Writes ``demo_<cpu|gpu>.json``
and ``demo_<cpu|gpu>.png`` into ``--out``.

The two networks train interleaved: step i of one, then step i of the other, the first of
each pair alternating (standard first on even steps, in place first on odd ones), so that
both see the same load on the machine.  The step-time ratio (in place / standard) is the
median of the per-pair ratios, reported with its quartiles and range.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .._cli import positive_int
from .._environment import describe, use_gpu
from . import memory, network
from .training import Trainer
from .plot import moving_average, plot

# Per device: (batch, image size, widths, memory budget in MiB).  On two CPU cores the
# defaults take about two minutes (300 steps per network).
DEFAULTS = {"cpu": (16, 16, (16, 32, 64), 256), "gpu": (64, 32, (64, 128, 256), 2048)}
MEASURED_STEP = 1     # the step whose memory is measured (after the optimizer's first update)
WARMUP = 5            # steps left out of the step time
MIN_STEPS = WARMUP + 1   # at least one timed step: the summary reports the median step time
_STEP_ROLES = (f"steps 0-{WARMUP - 1} warm up, step {MEASURED_STEP} also measures memory, "
               f"steps {WARMUP} and later are timed")


def _widths(text: str) -> tuple:
    parts = text.split(",")
    try:
        widths = tuple(int(w) for w in parts)
    except ValueError:
        widths = ()
    if not widths or any(w <= 0 for w in widths):
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas (e.g. 16,32,64), got {text!r}")
    return widths


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cupy_abn.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--steps", type=int, default=300,
                   help=f"training steps per network, at least {MIN_STEPS}: {_STEP_ROLES}")
    p.add_argument("--batch", type=positive_int, help="batch size (cpu 16, gpu 64)")
    p.add_argument("--size", type=positive_int, help="image height and width (cpu 16, gpu 32)")
    p.add_argument("--widths", type=_widths, help="channels per stage, comma separated "
                                                  "(cpu 16,32,64; gpu 64,128,256)")
    p.add_argument("--blocks", type=positive_int, default=2, help="residual blocks per stage")
    p.add_argument("--block", choices=network.BLOCKS, default="add",
                   help="the residual add after the block's last activation (add), or before "
                        "it, fused into InPlaceABN with residual= (post)")
    p.add_argument("--lr", type=float, default=0.02, help="MomentumSGD learning rate")
    p.add_argument("--budget-mib", type=positive_int,
                   help="memory budget for the largest-batch search (cpu 256, gpu 2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="demo_out", help="folder for the JSON and the PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.steps < MIN_STEPS:
        p.error(f"--steps: need at least {MIN_STEPS} ({_STEP_ROLES}), got {args.steps}")
    return args


def _train(runs: Dict[str, Trainer], data: network.SyntheticData, steps: int, batch: int,
           progress: bool) -> Tuple[Dict[str, Dict[str, Any]], List[float]]:
    """Train the networks of ``runs`` step by step, interleaved: step i of each, the first of
    the pair alternating with i.  Returns each network's results and the per-pair step-time
    ratios in place / standard of the timed steps."""
    from tqdm.auto import tqdm
    from ..chainer import InPlaceFallbackWarning

    kinds = list(runs)
    rec = {k: {"loss": [], "times": [], "kept": 0, "peak": 0, "fallbacks": 0} for k in kinds}
    ratios: List[float] = []
    bar = tqdm(range(steps), desc=" / ".join(kinds), disable=not progress, leave=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InPlaceFallbackWarning)
        for i in bar:
            pair = {}
            for kind in (kinds if i % 2 == 0 else kinds[::-1]):   # who goes first alternates
                run, r = runs[kind], rec[kind]
                x, t = data.batch(i, batch, run.xp)
                seen = len(caught)
                if i == MEASURED_STEP:
                    loss, r["kept"], r["peak"] = run.measured_step(x, t)
                else:
                    run.sync()
                    start = time.perf_counter()
                    loss = run.step(x, t)   # float(): waits for the GPU
                    if i >= WARMUP:
                        pair[kind] = time.perf_counter() - start
                r["loss"].append(loss)
                r["fallbacks"] += sum(issubclass(w.category, InPlaceFallbackWarning)
                                      for w in caught[seen:])
            for kind, seconds in pair.items():
                rec[kind]["times"].append(seconds)
            if len(pair) == 2:
                ratios.append(pair["inplace"] / pair["standard"])
            if i % 10 == 0:
                bar.set_postfix({k: f"{rec[k]['loss'][-1]:.3f}" for k in kinds})
    out = {}
    for kind, r in rec.items():
        times = r["times"]
        out[kind] = {"loss": r["loss"], "kept_for_backward_bytes": r["kept"],
                     "peak_step_bytes": r["peak"],
                     "step_ms_median": 1e3 * float(np.median(times)) if times else None,
                     "step_ms_mean": 1e3 * float(np.mean(times)) if times else None,
                     "timed_steps": len(times), "step_ms": [1e3 * t for t in times],
                     "in_place_fallback_copies": r["fallbacks"]}
    return out, ratios


def _spread(ratios: List[float]) -> Optional[Dict[str, Any]]:
    """Median, quartiles and range of the per-pair step-time ratios (None without any)."""
    if not ratios:
        return None
    r = np.asarray(ratios, float)
    q1, median, q3 = (float(v) for v in np.percentile(r, [25, 50, 75]))
    return {"median": median, "q1": q1, "q3": q3, "min": float(r.min()),
            "max": float(r.max()), "pairs": int(r.size),
            "order": "interleaved, the first of each pair alternating"}


def _largest_batch(run: Trainer, data: network.SyntheticData, budget: int,
                   probe: int) -> Dict[str, Any]:
    def measure(batch: int) -> int:
        return run.measured_step(*data.batch(0, batch, run.xp))[2]
    return memory.largest_batch(measure, budget, probe)


def _tracking(a: List[float], b: List[float]) -> Dict[str, float]:
    """How closely two loss curves follow each other."""
    a, b = np.asarray(a), np.asarray(b)
    diff = np.abs(a - b)
    smooth = np.abs(moving_average(a - b))
    tail = slice(len(a) - max(1, len(a) // 5), None)
    return {"max_abs_diff": float(diff.max()), "first_10_max_abs_diff": float(diff[:10].max()),
            "mean_of_10_max_abs_diff": float(smooth.max()),
            "last_fifth_mean_standard": float(a[tail].mean()),
            "last_fifth_mean_inplace": float(b[tail].mean()),
            "initial_loss": float(a[0])}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = _parse(argv)
    gpu = use_gpu(args.device)
    where = "gpu" if gpu else "cpu"
    batch, size, widths, budget_mib = DEFAULTS[where]
    batch = args.batch if args.batch is not None else batch
    budget_mib = args.budget_mib if args.budget_mib is not None else budget_mib
    widths = args.widths if args.widths is not None else widths
    size = args.size if args.size is not None else size
    cfg = network.Config(widths=widths, blocks=args.blocks, size=size,
                         seed=args.seed, block=args.block)
    data = network.SyntheticData(cfg)
    env = describe(gpu)
    print(f"cupy-abn demo on {env['device']}: batch {batch}, {cfg.size}x{cfg.size} images, "
          f"widths {widths}, {args.steps} steps per network")

    trainers = {kind: Trainer(kind, cfg, args.lr, gpu) for kind in network.KINDS}
    runs, ratios = _train(trainers, data, args.steps, batch, not args.no_progress)
    n_norm = network.norm_layers(trainers["inplace"].net)
    for kind in network.KINDS:   # memory only: one network at a time
        run = trainers.pop(kind)
        runs[kind]["label"] = network.LABELS[kind]
        runs[kind]["largest_batch"] = _largest_batch(run, data, budget_mib * 2 ** 20, batch)
        del run

    std, inp = runs["standard"], runs["inplace"]
    spread = _spread(ratios)
    result = {
        "device": env["device"], "environment": env,
        "config": dict(asdict(cfg), batch=batch, steps=args.steps, lr=args.lr,
                       budget_mib=budget_mib, optimizer="MomentumSGD"),
        "norm_layers": n_norm, "runs": runs,
        "peak_ratio": inp["peak_step_bytes"] / std["peak_step_bytes"],
        "kept_ratio": inp["kept_for_backward_bytes"] / std["kept_for_backward_bytes"],
        # the median of the per-pair ratios (interleaved steps), and its spread
        "step_time_ratio": spread["median"] if spread else None,
        "step_time_ratio_spread": spread,
        "largest_batch_ratio": (inp["largest_batch"]["batch"]
                                / max(1, std["largest_batch"]["batch"])),
        "loss_tracking": _tracking(std["loss"], inp["loss"]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"demo_{where}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / f"demo_{where}.png")
    _print(result, out / f"demo_{where}.json")
    return result


def _fmt(value: Optional[float], spec: str) -> str:
    """``value`` formatted, or "n/a" (right-aligned to the same width) when it is None."""
    if value is not None:
        return format(value, spec)
    width = spec.split(".")[0]
    return format("n/a", f">{width}" if width else "")


def _print(result: Dict[str, Any], path: Path) -> None:
    print(f"\n{'':34}{'kept MiB':>10}{'peak MiB':>10}{'step ms':>10}{'largest batch':>15}"
          f"{'final loss':>12}")
    track = result["loss_tracking"]
    for kind, run in result["runs"].items():
        final = track[f"last_fifth_mean_{kind}"]
        print(f"{run['label']:34}{run['kept_for_backward_bytes'] / 2 ** 20:10.2f}"
              f"{run['peak_step_bytes'] / 2 ** 20:10.2f}"
              f"{_fmt(run['step_ms_median'], '10.2f')}{run['largest_batch']['batch']:15d}"
              f"{final:12.4f}")
    print(f"in place / standard: kept for backward {result['kept_ratio']:.3f}, "
          f"peak {result['peak_ratio']:.3f}, step time "
          f"{_fmt(result['step_time_ratio'], '.3f')}, "
          f"largest batch {result['largest_batch_ratio']:.2f}x")
    spread = result.get("step_time_ratio_spread")
    if spread:
        print(f"step time ratio: median of {spread['pairs']} interleaved pairs "
              f"{spread['median']:.3f}, quartiles {spread['q1']:.3f}-{spread['q3']:.3f}, "
              f"range {spread['min']:.3f}-{spread['max']:.3f}")
    print(f"losses (initial {track['initial_loss']:.3f}) differ by at most "
          f"{track['first_10_max_abs_diff']:.1e} over the first 10 steps, "
          f"{track['mean_of_10_max_abs_diff']:.1e} as means of 10 steps, "
          f"{track['max_abs_diff']:.1e} on one step")
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
