"""The InPlace-ABN paper's memory claim at its scale: ResNeXt-101 (32x4d) at 224x224.

    python -m benchmarks.memory_resnext                  # batches 1 and 2 on the CPU
    python -m benchmarks.memory_resnext --batches 1,2,4 --budgets-gib 16,40,80

The paper (Rota Bulò, Porzi, Kontschieder, CVPR 2018) claims "up to 50%" less training memory
with InPlace-ABN at ImageNet scale.  This builds its network in Chainer in three forms
(``benchmarks/_resnext.py``: BN + leaky_relu; InPlaceABN; InPlaceABN with the residual add
fused) and, per batch size, runs one real forward and backward on the CPU (float32), measured
as the demo measures (tracemalloc: NumPy reports every array buffer):

    kept      bytes the forward allocates and leaves alive: what the graph keeps for backward,
              in total and per layer (the bytes alive after each layer minus before it: the
              layer's share of the kept set, since Python frees what nothing keeps at once)
    peak      the highest bytes alive over the forward and backward (parameter gradients
              included: the first backward allocates them)

Both grow linearly with the batch: two batch sizes give ``fixed + per_sample * batch``, which
predicts batch 256 and, with the parameters and a momentum buffer (2 x 4 bytes per
parameter) added, the largest batch whose step fits 16, 40 and 80 GiB.  Those are
predictions from CPU measurements: a GPU adds its framework's workspaces (cuDNN) and pool
rounding, the same for every form.

Writes ``<out>/memory_resnext101.json`` (top-level ``kept_ratio``: InPlaceABN's kept bytes
over BN + leaky_relu's, whole network, at batch 256; ``kept_ratio_residual`` for the fused
form) and ``memory_resnext101.png``.
"""
from __future__ import annotations

import argparse
import gc
from dataclasses import asdict
import json
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _progress  # noqa: E402
import _resnext as R  # noqa: E402  (imports cupy_abn.chainer first: NumPy 2 step)
import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402
from cupy_abn._environment import describe  # noqa: E402
from cupy_abn.demo.memory import fit  # noqa: E402  (the demo's line through the batches)

GIB = 2 ** 30
ANCHOR = ("Rota Bulò et al., CVPR 2018: InPlace-ABN saves 'up to 50%' of the training "
          "memory (ResNeXt-101 at ImageNet scale)")


def measure(net, batch: int, size: int, seed: int = 0) -> Dict[str, Any]:
    """One training step of ``net`` (forward, softmax cross-entropy, backward): kept bytes,
    in total and per layer, and the peak."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    t = rng.integers(0, 1000, batch).astype(np.int32)
    net.cleargrads()
    gc.collect()
    layers: List[List[Any]] = []
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        last = [start]

        def on_layer(name: str) -> None:
            now = tracemalloc.get_traced_memory()[0]
            layers.append([name, now - last[0]])
            last[0] = now

        t0 = time.perf_counter()
        loss = F.softmax_cross_entropy(net(x, on_layer), t)
        kept = tracemalloc.get_traced_memory()[0] - start
        t1 = time.perf_counter()
        loss.backward()
        peak = tracemalloc.get_traced_memory()[1] - start
        t2 = time.perf_counter()
    finally:
        tracemalloc.stop()
    del loss
    net.cleargrads()
    gc.collect()
    return {"batch": batch, "kept_bytes": int(kept), "peak_bytes": int(peak),
            "layers": layers, "forward_s": t1 - t0, "backward_s": t2 - t1}


def summarize(form: str, runs: List[Dict[str, Any]], params: int,
              budgets_gib: Sequence[float], at: int) -> Dict[str, Any]:
    kept_line = fit({r["batch"]: r["kept_bytes"] for r in runs})
    peak_line = fit({r["batch"]: r["peak_bytes"] for r in runs})
    kept, peak = asdict(kept_line), asdict(peak_line)
    state = 8 * params          # float32 parameters and a momentum buffer
    largest = {f"{g:g}": peak_line.largest_batch(int(g * GIB) - state) for g in budgets_gib}
    names = [n for n, _ in runs[0]["layers"]]
    per_layer = []
    for i, name in enumerate(names):
        pts = {r["batch"]: r["layers"][i][1] for r in runs}
        per_layer.append({"layer": name, "kept_per_sample": fit(pts).per_sample})
    return {"form": form, "label": R.LABELS[form], "runs": runs, "kept_fit": kept,
            "peak_fit": peak, "kept_bytes_at": int(kept["fixed"] + kept["per_sample"] * at),
            "peak_bytes_at": int(peak["fixed"] + peak["per_sample"] * at),
            "training_bytes_at": int(state + peak["fixed"] + peak["per_sample"] * at),
            "largest_batch": largest, "layers": per_layer}


def plot(result: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    forms = result["forms"]
    colors = {"bn": "tab:blue", "inplace": "tab:orange", "inplace_residual": "tab:green"}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.8))
    at = result["at_batch"]
    for form, res in forms.items():
        cum = np.cumsum([l["kept_per_sample"] * at for l in res["layers"]]) / GIB
        a1.plot(np.arange(len(cum)), cum, color=colors[form],
                label=f"{res['label']}: {res['kept_bytes_at'] / GIB:.1f} GiB")
        b = np.arange(1, 1 + 2 * max(res["largest_batch"].values()))
        mem = (8 * result["params"] + res["peak_fit"]["fixed"]
               + res["peak_fit"]["per_sample"] * b) / GIB
        a2.plot(b, mem, color=colors[form], label=res["label"])
    names = [l["layer"] for l in next(iter(forms.values()))["layers"]]
    ticks = [i for i, n in enumerate(names) if n.endswith("block1.conv1+norm1")]
    a1.set_xticks(ticks, [names[i].split(".")[0] for i in ticks], fontsize=8)
    a1.set_xlabel("layer (stem, then each stage's bottlenecks)")
    a1.set_ylabel(f"kept for backward at batch {at} (GiB, cumulative)")
    a1.set_title(f"kept: InPlaceABN {result['kept_ratio']:.2f}, fused residual "
                 f"{result['kept_ratio_residual']:.2f} of BN + leaky_relu\n"
                 f"anchor: the paper's 'up to 50%' less", fontsize=9)
    a1.legend(fontsize=8)
    for g in result["budgets_gib"]:
        a2.axhline(g, color="grey", lw=0.8, ls=":")
        a2.text(1, g, f"{g:g} GiB", fontsize=7, va="bottom")
    a2.set_xlabel("batch")
    a2.set_ylabel("predicted training step (GiB)")
    largest = {f: r["largest_batch"] for f, r in forms.items()}
    a2.set_title("largest batch in " + ", ".join(
        f"{g} GiB: " + "/".join(str(largest[f][g]) for f in forms)
        for g in largest["bn"]) + "\n(BN / InPlaceABN / fused; predicted from CPU runs)",
        fontsize=9)
    a2.legend(fontsize=8)
    fig.suptitle(f"ResNeXt-101 32x4d, {result['size']}x{result['size']}, float32; measured on "
                 f"{result['device']} at batches {result['batches']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="1,2")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--at", type=int, default=256, help="the batch the ratios are taken at")
    p.add_argument("--budgets-gib", default="16,40,80")
    p.add_argument("--depths", default="3,4,23,3", help="bottlenecks per stage (tests: less)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if len(set(batches)) < 2:
        p.error("--batches: at least two batch sizes (the line through them predicts the rest)")
    budgets = [float(g) for g in args.budgets_gib.split(",")]
    depths = tuple(int(d) for d in args.depths.split(","))
    bar = _progress.bar(len(R.FORMS) * len(batches), not args.no_progress, "resnext101")
    forms, params = {}, 0
    for form in R.FORMS:
        net = R.build(form, depths=depths)
        params = sum(int(q.size) for q in net.params())
        runs = []
        for b in batches:
            runs.append(measure(net, b, args.size))
            bar.update()
        forms[form] = summarize(form, runs, params, budgets, args.at)
        del net
    bar.close()
    env = describe(False)
    bn, inp, fused = (forms[f]["kept_bytes_at"] for f in R.FORMS)
    result = {"network": "ResNeXt-101 32x4d" if depths == R.DEPTHS else
              f"ResNeXt 32x4d, depths {depths}", "depths": list(depths), "size": args.size,
              "dtype": "float32", "device": env["device"], "environment": env,
              "batches": batches, "at_batch": args.at, "params": params,
              "budgets_gib": budgets, "anchor": ANCHOR,
              "kept_ratio": inp / bn, "kept_ratio_residual": fused / bn, "forms": forms}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "memory_resnext101.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    try:
        plot(result, path.with_suffix(".png"))
    except ImportError as e:
        print(f"no figure: {e}", file=sys.stderr)
    print(f"{result['network']} at {args.size}x{args.size}, float32, kept for backward at "
          f"batch {args.at} (predicted from batches {batches}):")
    for form, res in forms.items():
        print(f"  {res['label']:32} {res['kept_bytes_at'] / GIB:8.2f} GiB   largest batch "
              + ", ".join(f"{g} GiB: {n}" for g, n in res["largest_batch"].items()))
    print(f"kept ratio: InPlaceABN {result['kept_ratio']:.3f}, fused residual "
          f"{result['kept_ratio_residual']:.3f} (anchor: {ANCHOR})")
    print(f"wrote {path} and {path.with_suffix('.png')}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
