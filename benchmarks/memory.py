"""Training-step memory of a small ResNet: BatchNormalization + leaky_relu vs InPlaceABN.

    python benchmarks/memory.py                 # CPU (tracemalloc); GPU when CuPy sees one
    python benchmarks/memory.py --batches 8,16,32,64

The network is the demo's (``cupy_abn.demo.network``: 15 normalization+activation layers in
three stages); both kinds start from the same weights.  For each batch size, after one
warm-up step (the optimizer allocates its state there), one training step is measured:

    kept   bytes allocated by the forward and alive after it: what the graph keeps for
           backward (activations, retained inputs and outputs), the memory InPlace-ABN halves
           in its layers
    peak   highest bytes alive at once over forward + backward + update, transient buffers
           of the backward included (on the CPU: Chainer's im2col convolution buffers)

Writes ``<out>/memory_<cpu|gpu>.json`` and ``.png`` (the figure where matplotlib is
installed).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _progress  # noqa: E402
import cupy_abn.chainer  # noqa: E402,F401  (NumPy 2 step before Chainer is imported)
from cupy_abn._environment import describe, use_gpu  # noqa: E402
from cupy_abn.demo import network  # noqa: E402
from cupy_abn.demo.training import Trainer  # noqa: E402


def measure(run: Trainer, cfg: network.Config, batches, progress) -> List[Dict]:
    data = network.SyntheticData(cfg)
    run.step(*data.batch(0, batches[0], run.xp))          # optimizer state, lazy init
    rows = []
    for batch in batches:
        loss, kept, peak = run.measured_step(*data.batch(1, batch, run.xp))
        rows.append({"batch": batch, "kept_bytes": kept, "peak_bytes": peak})
        progress.update()
    return rows


def plot(result: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"standard": "tab:blue", "inplace": "tab:orange"}
    for kind, rows in result["runs"].items():
        b = [r["batch"] for r in rows]
        for key, style in (("kept_bytes", "--"), ("peak_bytes", "-")):
            ax.plot(b, [r[key] / 2 ** 20 for r in rows], style, marker="o", color=colors[kind],
                    label=f"{network.LABELS[kind]}: {key.split('_')[0]}")
    ax.set_xlabel("batch")
    ax.set_ylabel("MiB")
    last = {k: v[-1] for k, v in result["runs"].items()}
    ax.set_title(f"{result['device']}\n{result['norm_layers']} norm layers; at batch "
                 f"{last['inplace']['batch']}: kept {result['kept_ratio']:.2f}, "
                 f"peak {result['peak_ratio']:.2f} (in place / standard)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--batches", default="8,16,32,64")
    p.add_argument("--size", type=int, default=16, help="image height and width")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    gpu = use_gpu(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    cfg = network.Config(size=args.size)
    bar = _progress.bar(len(batches) * len(network.KINDS), not args.no_progress, "memory")
    trainers = {kind: Trainer(kind, cfg, lr=0.01, gpu=gpu) for kind in network.KINDS}
    runs = {kind: measure(run, cfg, batches, bar) for kind, run in trainers.items()}
    bar.close()
    std, inp = runs["standard"][-1], runs["inplace"][-1]
    env = describe(gpu)
    result = {"device": env["device"], "environment": env, "config": asdict(cfg),
              "norm_layers": network.norm_layers(trainers["inplace"].net), "runs": runs,
              "kept_ratio": inp["kept_bytes"] / std["kept_bytes"],
              "peak_ratio": inp["peak_bytes"] / std["peak_bytes"]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"memory_{'gpu' if gpu else 'cpu'}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    try:
        plot(result, stem.with_suffix(".png"))
    except ImportError as e:   # no matplotlib: the figure can be drawn later from the JSON
        print(f"no figure: {e}", file=sys.stderr)
    print(f"{'batch':>6} {'kind':>10} {'kept MiB':>10} {'peak MiB':>10}")
    for kind, rows in runs.items():
        for r in rows:
            print(f"{r['batch']:6d} {kind:>10} {r['kept_bytes'] / 2 ** 20:10.2f} "
                  f"{r['peak_bytes'] / 2 ** 20:10.2f}")
    print(f"in place / standard at batch {std['batch']}: kept {result['kept_ratio']:.3f}, "
          f"peak {result['peak_ratio']:.3f}")
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
