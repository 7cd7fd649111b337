"""Table 1 of the InPlace-ABN supplement in miniature: ReLU vs leaky ReLU, swapped at validation.

    python -m cupy_abn.experiments.activation_swap [--seeds 5] [--epochs 6] [--out DIR]

Trains the same small ResNet (3 stages of one residual block, 9 normalization+activation
layers) on scikit-learn's digits twice per seed: with BatchNorm + ReLU (``ABN``, standard mode)
and with ``InPlaceABN`` + leaky ReLU (0.01).  Each trained network is validated with its own
activation and with the other one (``set_activation`` on every layer), giving the supplement's
four rows: top-1 and top-3 accuracy, mean ± standard deviation over the seeds.  The peak
memory of a training step of both networks is measured too (tracemalloc on the CPU, a CuPy
memory hook on a GPU).  Writes ``activation_swap.json`` and ``activation_swap.png`` into
``--out``.  Runs on the GPU when CuPy sees one.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from .._cli import positive_int

DEFAULT_OUT = Path("benchmarks") / "results"
# The supplement's Table 1 (ResNeXt-101 on ImageNet, 224x224 center crop): training and
# validation activation, top-1, top-5 (%).
PAPER_TABLE1 = [("relu", "relu", 77.74, 93.86), ("relu", "leaky_relu", 76.88, 93.42),
                ("leaky_relu", "leaky_relu", 77.04, 93.50),
                ("leaky_relu", "relu", 76.81, 93.53)]
ROWS = [(a, b) for a, b, _, _ in PAPER_TABLE1]


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cupy_abn.experiments.activation_swap",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=positive_int, default=5,
                   help="training seeds per network (0 .. N-1; default 5)")
    p.add_argument("--epochs", type=positive_int, default=6, help="epochs per run (default 6)")
    p.add_argument("--batch", type=positive_int, default=64, help="batch size (default 64)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"folder for the JSON and the PNG (default {DEFAULT_OUT})")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--blas-threads", type=positive_int, default=1,
                   help="BLAS threads on the CPU (default 1: the convolutions are tiny, and "
                        "more threads only contend)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out: expected a folder, got the file {str(args.out)!r}")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        p.error(f"--out: cannot create {str(args.out)!r} ({err.strerror or err})")
    return args


def _summary(values: List[float]) -> Dict[str, Any]:
    """Mean and sample standard deviation (0 for one value)."""
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "values": [float(a) for a in v]}


def run(seeds: int, epochs: int, batch: int, gpu: bool, progress: bool = True,
        blas_threads: int = 1) -> Dict[str, Any]:
    """Train and validate every (network, seed); return the JSON object (without writing).

    Parameters
    ----------
    seeds, epochs, batch : int
        Seeds ``0 .. seeds-1`` per network, epochs per run, batch size.
    gpu : bool
        Train on CuPy's device 0.
    progress : bool
        Show a tqdm progress bar over all training steps.
    blas_threads : int
        BLAS threads while training on the CPU.
    """
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    from .._environment import describe
    from . import _digits, _swap_model as model

    data = _digits.load()
    if batch > len(data.t_train):
        raise SystemExit(f"--batch: expected at most {len(data.t_train)} (the training set), "
                         f"got {batch}")
    settings = model.Settings(epochs=epochs, batch=batch)
    steps = epochs * (len(data.t_train) // batch)
    acc: Dict[tuple, Dict[str, List[float]]] = {r: {"top1": [], "top3": []} for r in ROWS}
    nets: Dict[str, Dict[str, Any]] = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(total=2 * seeds * steps, disable=not progress, unit="step")
    with threadpool_limits(limits=blas_threads):
        for seed in range(seeds):
            for act in model.ACTIVATIONS:
                bar.set_description(f"seed {seed} {act:>10}")
                net = model.build(act, seed, settings, gpu)
                t0 = time.perf_counter()

                def on_step(loss: float) -> None:
                    bar.update()
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

                # Memory: step 1 of the first seed (after the optimizer made its state).
                mem = model.train(net, data.x_train, data.t_train, seed, settings, on_step,
                                  measure_step=1 if seed == 0 else -1)
                info = nets.setdefault(act, {
                    "label": model.LABELS[act], "short_label": model.SHORT[act],
                    "layer": type(next(model.norm_layers(net))).__name__,
                    "mode": next(model.norm_layers(net)).mode,
                    "norm_layers": sum(1 for _ in model.norm_layers(net)),
                    "train_seconds": []})
                info["train_seconds"].append(time.perf_counter() - t0)
                if mem:
                    info["memory"] = mem
                for val in model.ACTIVATIONS:
                    model.set_activation(net, val)
                    for k, v in model.evaluate(net, data.x_val, data.t_val).items():
                        acc[(act, val)][k].append(v)
    bar.close()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    rows = [{"training": a, "validation": b, "top1": _summary(acc[(a, b)]["top1"]),
             "top3": _summary(acc[(a, b)]["top3"])} for a, b in ROWS]
    return {
        "experiment": "activation_swap",
        "device": describe(gpu),
        "data": data.describe(),
        "network": {"name": "cupy_abn.demo.network.ResNet", "widths": list(settings.widths),
                    "blocks_per_stage": settings.blocks, "in_channels": 1, "classes": 10},
        "training": {**asdict(settings), "seeds": seeds, "steps_per_run": steps,
                     "optimizer": "MomentumSGD (momentum 0.9), weight decay, cosine lr per "
                                  "epoch, shuffled whole batches", "blas_threads": blas_threads},
        "memory_method": ("CuPy memory hook on the pool" if gpu else
                          "tracemalloc (NumPy buffers)") + f", training step 1 of seed 0, "
                                                           f"batch {batch}",
        "networks": nets,
        "rows": rows,
        "std": "sample standard deviation over seeds (ddof=1)",
        "paper_table1": {"network": "ResNeXt-101, ImageNet, 224x224 center crop",
                         "rows": [{"training": a, "validation": b, "top1": t1, "top5": t5}
                                  for a, b, t1, t5 in PAPER_TABLE1]},
        "elapsed_seconds": elapsed,
        "cpu_seconds": cpu,
    }


def table(result: Dict[str, Any]) -> str:
    """The rows as a Markdown table (with the paper's numbers)."""
    paper = {(r["training"], r["validation"]): r for r in result["paper_table1"]["rows"]}
    lines = ["| training | validation | top-1 (%) | top-3 (%) | paper top-1 | paper top-5 |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        p = paper[(row["training"], row["validation"])]
        lines.append(f"| {row['training']} | {row['validation']} | "
                     f"{row['top1']['mean']:.2f} ± {row['top1']['std']:.2f} | "
                     f"{row['top3']['mean']:.2f} ± {row['top3']['std']:.2f} | "
                     f"{p['top1']:.2f} | {p['top5']:.2f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; returns the exit status."""
    args = _parse(argv)
    from .._environment import use_gpu
    gpu = use_gpu(args.device)
    result = run(args.seeds, args.epochs, args.batch, gpu, not args.no_progress,
                 args.blas_threads)
    result["command"] = " ".join(["python -m cupy_abn.experiments.activation_swap",
                                  *(sys.argv[1:] if argv is None else argv)])
    from ._swap_plot import plot
    json_path, png_path = args.out / "activation_swap.json", args.out / "activation_swap.png"
    try:
        json_path.write_text(json.dumps(result, indent=1) + "\n")
        plot(result, png_path)
    except OSError as err:
        raise SystemExit(f"--out: cannot write into {str(args.out)!r} ({err})") from None
    print(table(result))
    mib = 2.0 ** 20
    for net in result["networks"].values():
        mem = net["memory"]
        print(f"{net['label']}: kept for backward {mem['kept_for_backward_bytes'] / mib:.2f} "
              f"MiB, peak of the step {mem['peak_step_bytes'] / mib:.2f} MiB")
    print(f"{result['elapsed_seconds']:.0f} s ({result['cpu_seconds']:.0f} s of CPU time); "
          f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
