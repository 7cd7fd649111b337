"""Training-step memory of a small ResNet: BatchNormalization + leaky_relu vs InPlaceABN.

    python benchmarks/memory.py                 # CPU (tracemalloc); GPU when CuPy sees one
    python benchmarks/memory.py --batches 8,16,32,64

The network is the demo's (``cupy_abn.demo.network``: 15 normalization+activation layers in
three stages), in both residual blocks: "add" (the input added after the block's last
activation) and "post" (added before it: ``leaky_relu(BN(conv(h)) + x)``, which InPlaceABN
fuses with ``residual=``; the baseline is BatchNormalization, add, leaky_relu).  Both kinds
start from the same weights.  For each batch size, after one warm-up step (the optimizer
allocates its state there), one training step is measured:

    kept   bytes allocated by the forward and alive after it: what the graph keeps for
           backward (activations, retained inputs and outputs), the memory InPlace-ABN halves
           in its layers
    peak   highest bytes alive at once over forward + backward + update, transient buffers
           of the backward included (on the CPU: Chainer's im2col convolution buffers)

Writes ``<out>/memory_<cpu|gpu>.json`` (the "add" block's runs and ratios at the top level,
both blocks under ``blocks``) and ``.png`` (the figure where matplotlib is installed).
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


TITLES = {"add": "block: norm + act, then + x",
          "post": "block: act(norm + x), fused by InPlaceABN"}


def plot(result: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = result["blocks"]
    fig, axes = plt.subplots(1, len(blocks), figsize=(6 * len(blocks), 4.5), sharey=True,
                             squeeze=False)
    colors = {"standard": "tab:blue", "inplace": "tab:orange"}
    for ax, (block, res) in zip(axes[0], blocks.items()):
        for kind, rows in res["runs"].items():
            b = [r["batch"] for r in rows]
            for key, style in (("kept_bytes", "--"), ("peak_bytes", "-")):
                ax.plot(b, [r[key] / 2 ** 20 for r in rows], style, marker="o",
                        color=colors[kind],
                        label=f"{network.LABELS[kind]}: {key.split('_')[0]}")
        ax.set_xlabel("batch")
        last = res["runs"]["inplace"][-1]
        ax.set_title(f"{TITLES[block]}\nat batch {last['batch']}: kept "
                     f"{res['kept_ratio']:.2f}, peak {res['peak_ratio']:.2f} "
                     f"(in place / standard)", fontsize=9)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("MiB")
    fig.suptitle(f"{result['device']}; {result['norm_layers']} norm layers", fontsize=9)
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
    bar = _progress.bar(len(batches) * len(network.KINDS) * len(network.BLOCKS),
                        not args.no_progress, "memory")
    blocks: Dict[str, Dict[str, Any]] = {}
    for block in network.BLOCKS:
        cfg = network.Config(size=args.size, block=block)
        trainers = {kind: Trainer(kind, cfg, lr=0.01, gpu=gpu) for kind in network.KINDS}
        runs = {kind: measure(run, cfg, batches, bar) for kind, run in trainers.items()}
        std, inp = runs["standard"][-1], runs["inplace"][-1]
        blocks[block] = {"runs": runs, "kept_ratio": inp["kept_bytes"] / std["kept_bytes"],
                         "peak_ratio": inp["peak_bytes"] / std["peak_bytes"],
                         "norm_layers": network.norm_layers(trainers["inplace"].net)}
        del trainers
    bar.close()
    env = describe(gpu)
    add = blocks["add"]
    result = {"device": env["device"], "environment": env,
              "config": asdict(network.Config(size=args.size)),
              "norm_layers": add["norm_layers"], "runs": add["runs"],
              "kept_ratio": add["kept_ratio"], "peak_ratio": add["peak_ratio"],
              "blocks": blocks}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"memory_{'gpu' if gpu else 'cpu'}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    try:
        plot(result, stem.with_suffix(".png"))
    except ImportError as e:   # no matplotlib: the figure can be drawn later from the JSON
        print(f"no figure: {e}", file=sys.stderr)
    print(f"{'block':>6} {'batch':>6} {'kind':>10} {'kept MiB':>10} {'peak MiB':>10}")
    for block, res in blocks.items():
        for kind, rows in res["runs"].items():
            for r in rows:
                print(f"{block:>6} {r['batch']:6d} {kind:>10} "
                      f"{r['kept_bytes'] / 2 ** 20:10.2f} {r['peak_bytes'] / 2 ** 20:10.2f}")
        print(f"{block}: in place / standard at batch {batches[-1]}: kept "
              f"{res['kept_ratio']:.3f}, peak {res['peak_ratio']:.3f}")
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
