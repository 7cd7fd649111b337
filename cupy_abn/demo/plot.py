"""The demo's picture: loss curves, peak step memory and the largest batch within the budget."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np


def moving_average(values, width: int = 10) -> np.ndarray:
    """Means of ``width`` consecutive values (of all of them when there are fewer)."""
    v = np.asarray(values, float)
    w = max(1, min(width, len(v)))
    return np.convolve(v, np.ones(w) / w, mode="valid")


def plot(result: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    kinds = list(runs)
    colors = {"standard": "tab:blue", "inplace": "tab:orange"}
    fig, (ax_loss, ax_mem, ax_batch) = plt.subplots(
        1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    for kind in kinds:
        loss = runs[kind]["loss"]
        ax_loss.plot(loss, color=colors[kind], alpha=0.25, lw=0.8)
        sm = moving_average(loss)
        ax_loss.plot(np.arange(len(sm)) + (len(loss) - len(sm)), sm, color=colors[kind],
                     label=runs[kind]["label"])
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("loss (thin: per step, thick: mean of 10)")
    ax_loss.legend()

    labels = [runs[k]["label"].replace(" + ", "\n+ ") for k in kinds]
    pos = np.arange(len(kinds))
    for off, key, name, hatch in ((-0.2, "kept_for_backward_bytes", "kept for backward", "//"),
                                  (0.2, "peak_step_bytes", "peak of the step", "")):
        mib = [runs[k][key] / 2 ** 20 for k in kinds]
        bars = ax_mem.bar(pos + off, mib, 0.4, color=[colors[k] for k in kinds], hatch=hatch,
                          edgecolor="black", label=name)
        ax_mem.bar_label(bars, fmt="%.1f")
    ax_mem.set_xticks(pos, labels)
    ax_mem.set_ylabel("MiB")
    ax_mem.legend(fontsize=8)
    ax_mem.set_title(f"training-step memory (batch {result['config']['batch']})\n"
                     f"in place / standard: kept {result['kept_ratio']:.2f}, "
                     f"peak {result['peak_ratio']:.2f}", fontsize=10)

    batches = [runs[k]["largest_batch"]["batch"] for k in kinds]
    bars = ax_batch.bar(pos, batches, color=[colors[k] for k in kinds])
    ax_batch.bar_label(bars)
    ax_batch.set_xticks(pos, labels)
    ax_batch.set_title(f"largest batch whose step peaks\nwithin {result['config']['budget_mib']} MiB",
                       fontsize=10)
    fig.suptitle(f"cupy-abn demo on {result['device']}: "
                 f"{result['norm_layers']} normalization layers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
