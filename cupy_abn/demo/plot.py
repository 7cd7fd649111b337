"""The demo's picture: loss curves, training-step memory, step time and the largest batch."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

COLORS = {"standard": "#1f77b4", "inplace": "#ff7f0e"}          # thick lines and bars
LIGHT = {"standard": "#9ecae1", "inplace": "#fdd0a2"}           # the per-step curves
STYLES = {"standard": "-", "inplace": "--"}


def moving_average(values, width: int = 10) -> np.ndarray:
    """Means of ``width`` consecutive values (of all of them when there are fewer)."""
    v = np.asarray(values, float)
    w = max(1, min(width, len(v)))
    return np.convolve(v, np.ones(w) / w, mode="valid")


def _ratio(value: Optional[float], unit: str = "x") -> str:
    return "n/a" if value is None else f"{value:.2f}{unit}"


def _headroom(ax, values) -> None:
    """Room above the tallest bar for its value label (inside the frame)."""
    top = max([v for v in values if v is not None] or [1.0])
    ax.set_ylim(0, top * 1.18)


def plot(result: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    runs = result["runs"]
    kinds = list(runs)
    colors = [COLORS[k] for k in kinds]
    fig, (ax_loss, ax_mem, ax_time, ax_batch) = plt.subplots(
        1, 4, figsize=(17, 4.6), gridspec_kw={"width_ratios": [2.2, 1.15, 0.8, 0.8]})

    # Loss: the per-step curves in light tints (opaque: no blended colour where they
    # overlap), the means of 10 steps thick on top, the in-place one dashed so that both stay
    # visible where they coincide.
    handles = []
    for kind in kinds:
        loss = runs[kind]["loss"]
        ax_loss.plot(loss, color=LIGHT[kind], lw=0.8, zorder=1)
    for kind in kinds:
        loss = runs[kind]["loss"]
        sm = moving_average(loss)
        ax_loss.plot(np.arange(len(sm)) + (len(loss) - len(sm)), sm, color=COLORS[kind],
                     ls=STYLES[kind], lw=2, zorder=2)
        handles.append(Line2D([], [], color=COLORS[kind], ls=STYLES[kind], lw=2,
                              label=f"{runs[kind]['label']} (mean of 10)"))
        handles.append(Line2D([], [], color=LIGHT[kind], lw=1.5,
                              label=f"{runs[kind]['label']} (per step)"))
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (log scale)")
    track = result.get("loss_tracking", {})
    title = "training loss"
    if "first_10_max_abs_diff" in track:
        title += (f"\nfirst 10 steps differ by at most {track['first_10_max_abs_diff']:.1e}, "
                  f"means of 10 by {track['mean_of_10_max_abs_diff']:.2g}")
    ax_loss.set_title(title, fontsize=10)
    ax_loss.legend(handles=handles, fontsize=8, ncol=2, loc="upper right")

    labels = [runs[k]["label"].replace(" + ", "\n+ ") for k in kinds]
    pos = np.arange(len(kinds))
    mem_values = []
    for off, key, hatch in ((-0.2, "kept_for_backward_bytes", "//"),
                            (0.2, "peak_step_bytes", "")):
        mib = [runs[k][key] / 2 ** 20 for k in kinds]
        mem_values += mib
        bars = ax_mem.bar(pos + off, mib, 0.4, color=colors, hatch=hatch, edgecolor="black")
        ax_mem.bar_label(bars, fmt="%.1f", fontsize=9)
    _headroom(ax_mem, mem_values)
    ax_mem.set_xticks(pos, labels)
    ax_mem.set_ylabel("MiB")
    # Swatches for what the hatching means, in no network's colour.
    ax_mem.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch="//",
                                 label="kept for backward"),
                           Patch(facecolor="white", edgecolor="black",
                                 label="peak of the step")], fontsize=8, loc="upper right")
    ax_mem.set_title(f"training-step memory (batch {result['config']['batch']})\n"
                     f"in place / standard: kept {result['kept_ratio']:.2f}x, "
                     f"peak {result['peak_ratio']:.2f}x", fontsize=10)

    # Bars: each network's median step time, whiskers its quartiles; the title: the median of
    # the per-pair ratios of the interleaved steps, with their quartiles and range.
    times = [runs[k].get("step_ms_median") for k in kinds]
    quart = [np.percentile(runs[k]["step_ms"], [25, 75]) if runs[k].get("step_ms") else None
             for k in kinds]
    err = None
    if all(q is not None for q in quart) and None not in times:
        err = np.array([[t - q[0] for t, q in zip(times, quart)],
                        [q[1] - t for t, q in zip(times, quart)]])
    bars = ax_time.bar(pos, [t if t is not None else 0 for t in times], 0.6, color=colors,
                       edgecolor="black", yerr=err, capsize=4 if err is not None else 0)
    if err is None:
        ax_time.bar_label(bars, labels=["n/a" if t is None else f"{t:.0f}" for t in times],
                          fontsize=9)
        _headroom(ax_time, times)
    else:   # the value above the upper whisker
        tops = [t + e for t, e in zip(times, err[1])]
        for x, t, top in zip(pos, times, tops):
            ax_time.annotate(f"{t:.0f}", (x, top), xytext=(0, 2), textcoords="offset points",
                             ha="center", va="bottom", fontsize=9)
        _headroom(ax_time, tops)
    ax_time.set_xticks(pos, labels)
    ax_time.set_ylabel("ms per training step (median, quartiles)")
    title = f"step time\nin place / standard: {_ratio(result.get('step_time_ratio'))}"
    spread = result.get("step_time_ratio_spread")
    if spread:
        title += (f"\nmedian of {spread['pairs']} interleaved pairs\n"
                  f"quartiles {spread['q1']:.2f}-{spread['q3']:.2f}, "
                  f"range {spread['min']:.2f}-{spread['max']:.2f}")
    ax_time.set_title(title, fontsize=10 if not spread else 9)

    batches = [runs[k]["largest_batch"]["batch"] for k in kinds]
    bars = ax_batch.bar(pos, batches, 0.6, color=colors, edgecolor="black")
    ax_batch.bar_label(bars, fontsize=9)
    _headroom(ax_batch, batches)
    ax_batch.set_xticks(pos, labels)
    ax_batch.set_ylabel("batch size (samples)")
    ax_batch.set_title(f"largest batch within {result['config']['budget_mib']} MiB\n"
                       f"in place / standard: {_ratio(result.get('largest_batch_ratio'))}",
                       fontsize=10)
    for ax in (ax_mem, ax_time, ax_batch):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"cupy-abn demo on {result['device']}: {result['norm_layers']} normalization "
                 f"layers, {len(runs[kinds[0]]['loss'])} steps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
