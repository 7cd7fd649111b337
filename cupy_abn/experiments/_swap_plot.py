"""The activation-swap figure: top-1 and top-3 accuracy per table row (mean and standard
deviation over seeds, each seed a dot), and the peak training memory of both networks."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np

_COLORS = {"relu": "tab:blue", "leaky_relu": "tab:orange"}
_SHORT = {"relu": "ReLU", "leaky_relu": "leaky ReLU"}


def row_label(row: Dict[str, Any]) -> str:
    """``train ReLU -> val leaky ReLU``."""
    return f"train {_SHORT[row['training']]}\nval {_SHORT[row['validation']]}"


def plot(result: Dict[str, Any], path: Path) -> None:
    """Write the figure of ``result`` (the experiment's JSON object) to ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6),
                             gridspec_kw={"width_ratios": [1.4, 1.4, 1]})
    y = np.arange(len(rows))[::-1]
    for ax, metric in zip(axes[:2], ("top1", "top3")):
        lo = max(0.0, min(min(r[metric]["values"]) for r in rows) - 3.0)
        for yi, row in zip(y, rows):
            stats = row[metric]
            color = _COLORS[row["training"]]
            hatch = None if row["training"] == row["validation"] else "//"
            ax.barh(yi, stats["mean"], xerr=stats["std"], color=color, alpha=0.55,
                    hatch=hatch, edgecolor=color, capsize=5, height=0.6)
            ax.plot(stats["values"], [yi] * len(stats["values"]), "k.", ms=5)
            ax.text(lo + 0.1, yi, f" {stats['mean']:.2f} ± {stats['std']:.2f}", ha="left",
                    va="center", fontsize=10)
        ax.set_xlim(lo, 100.0)
        ax.set_yticks(y)
        ax.set_yticklabels([row_label(r) for r in rows] if metric == "top1" else [])
        ax.set_xlabel(f"{'top-1' if metric == 'top1' else 'top-3'} validation accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
    seeds = result["training"]["seeds"]
    axes[0].set_title(f"mean ± std over {seeds} seed{'s' if seeds > 1 else ''} (dots)",
                      fontsize=10)
    axes[1].set_title("hatched: activation swapped for validation", fontsize=10)

    nets = result["networks"]
    mib = 2.0 ** 20
    for i, (act, net) in enumerate(nets.items()):
        mem = net["memory"]
        axes[2].bar(i - 0.2, mem["kept_for_backward_bytes"] / mib, 0.4, color=_COLORS[act],
                    alpha=0.4, label="kept for backward" if i == 0 else None)
        axes[2].bar(i + 0.2, mem["peak_step_bytes"] / mib, 0.4, color=_COLORS[act],
                    label="peak of the step" if i == 0 else None)
        axes[2].text(i + 0.2, mem["peak_step_bytes"] / mib, f"{mem['peak_step_bytes'] / mib:.2f}",
                     ha="center", va="bottom", fontsize=9)
        axes[2].text(i - 0.2, mem["kept_for_backward_bytes"] / mib,
                     f"{mem['kept_for_backward_bytes'] / mib:.2f}", ha="center", va="bottom",
                     fontsize=9)
    axes[2].set_xticks(range(len(nets)))
    axes[2].set_xticklabels([n["short_label"] for n in nets.values()], fontsize=9)
    top = max(n["memory"]["peak_step_bytes"] for n in nets.values()) / mib
    axes[2].set_ylim(0, 1.3 * top)
    axes[2].set_ylabel("MiB")
    how = "tracemalloc" if "tracemalloc" in result["memory_method"] else "CuPy pool hook"
    axes[2].set_title(f"training step memory ({how})", fontsize=10)
    axes[2].legend(fontsize=8, loc="upper right")
    fig.suptitle("Activation swap (supplement Table 1, in miniature): "
                 + result["device"]["device"], fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
