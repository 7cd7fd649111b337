"""The report's rows (one per pass, before and after), its markdown table and its figure."""
from __future__ import annotations

import time
from typing import Dict, List, Optional

from . import model
from .collect import PRIMARY

GOAL = 0.85
GOAL_SMALL = 0.60          # 32x2048x7x7: launch cost dominates
SMALL_SHAPE = [32, 2048, 7, 7]
SMALL_LAST_SHAPE = [32 * 7 * 7, 2048]   # the same, channels-last


def _key(p: dict):
    return (p["major"], p["pass"], tuple(p["shape"]), p["dtype"], p["mode"])


def pass_summary(p: dict) -> dict:
    """What a table row keeps of one pass (the launch records are rebuilt on load)."""
    return {"copy_fraction": p["copy_fraction"], "predicted_us": p["predicted_us"],
            "n_launches": p["n_launches"],
            "global_bytes_per_element": p["global_bytes_per_element"],
            "launches": [{"entry": r["entry"], "grid": r["grid"], "block": r["block"],
                          "registers": r["registers"], "waves": r["waves"],
                          "blocks_per_sm": r["blocks_per_sm"],
                          "instructions_per_element": r["instructions_per_element"],
                          "vector_loads": r["vector_loads"], "bound": r["bound"],
                          "predicted_us": r["predicted_us"]} for r in p["launches"]]}


def before_of(tree: Optional[dict]) -> Dict[tuple, dict]:
    """An older tree's passes as the ``before`` of table rows (no launch detail)."""
    if not tree:
        return {}
    return {_key(p): {k: v for k, v in pass_summary(p).items() if k != "launches"}
            for p in tree["passes"]}


def table(passes: List[dict], before: Dict[tuple, dict]) -> List[dict]:
    """One row per (NVRTC major, pass, shape, dtype, mode): the prediction after (with its
    launches) and before."""
    rows = []
    for p in passes:
        last = len(p["shape"]) == 2   # channels-last (N*H*W, C)
        row = {"major": p["major"], "pass": p["pass"], "shape": p["shape"], "dtype": p["dtype"],
               "mode": p["mode"],
               "goal": GOAL_SMALL if p["shape"] in (SMALL_SHAPE, SMALL_LAST_SHAPE) else GOAL,
               "after": pass_summary(p)}
        # No before for channels-last x: the earlier kernels read it C-strided (a 32-byte
        # sector per element), which the model, built on the loop's bytes, does not see.
        prev = None if last else before.get(_key(p))
        if prev is not None:
            row["before"] = prev
        rows.append(row)
    return rows


def header(elapsed_s: float, tree: dict, nvrtc: dict, inputs: dict,
           before: Optional[dict], modes) -> dict:
    """The report's fields besides its rows (schema in ``benchmarks/static/compact.py``)."""
    return {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": round(elapsed_s, 1),
        "model": {"sms": model.SMS, "clock_GHz": model.CLOCK_GHZ,
                  "schedulers": model.SCHEDULERS,
                  "copy_bandwidth_GBps": model.COPY_BANDWIDTH_GBPS,
                  "latency_ns": model.LATENCY_NS, "launch_us": model.LAUNCH_US,
                  "primary": {"nvrtc_major": PRIMARY[0], "arch": f"sm_{PRIMARY[1]}"}},
        "goal": {"copy_fraction": GOAL, "copy_fraction_7x7": GOAL_SMALL},
        "modes": list(modes), "tree": tree, "nvrtc": nvrtc, "inputs": inputs,
        "before": before,
    }


def _fmt_launches(q: dict) -> str:
    return " + ".join(f"{r['entry']}({r['registers']}r,{r['waves']:.2f}w,"
                      f"{r['instructions_per_element']:.1f}i/e)" for r in q["launches"])


def markdown(rep: dict, mode: str = "inplace") -> str:
    """The before/after table of the primary compiler, for one mode."""
    major = rep["model"]["primary"]["nvrtc_major"]
    rows = [r for r in rep["passes"] if r["major"] == major and r["mode"] == mode]
    have_before = any("before" in r for r in rows)
    head = ("| pass | shape | dtype | " + ("before | " if have_before else "") +
            "after | goal | launches after (registers, waves, instructions/element) |")
    lines = [f"Predicted fraction of copy bandwidth on an H100 (CUDA {major}, sm_90, "
             f"mode {mode}; latency {rep['model']['latency_ns']:.0f} ns, "
             f"copy {rep['model']['copy_bandwidth_GBps']:.0f} GB/s)", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        b = f"{r['before']['copy_fraction']:.0%} | " if have_before and "before" in r else (
            "— | " if have_before else "")
        lines.append(f"| {r['pass']} | {shape} | {r['dtype']} | {b}"
                     f"{r['after']['copy_fraction']:.0%} | {r['goal']:.0%} | "
                     f"{_fmt_launches(r['after'])} |")
    return "\n".join(lines)


def plot(rep: dict, path, mode: str = "inplace") -> None:
    """Bars of the predicted fraction per pass x shape x dtype, before and after, goal lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    major = rep["model"]["primary"]["nvrtc_major"]
    rows = [r for r in rep["passes"] if r["major"] == major and r["mode"] == mode]
    passes = ["forward_train", "forward_eval", "backward"]
    dtypes = ["float32", "float16"]
    fig, axes = plt.subplots(len(dtypes), len(passes), figsize=(13, 6.5), sharey=True)
    ymax = max([1.05] + [1.12 * r["after"]["copy_fraction"] for r in rows])
    for i, dt in enumerate(dtypes):
        for j, ps in enumerate(passes):
            ax = axes[i][j]
            sel = [r for r in rows if r["dtype"] == dt and r["pass"] == ps]
            labels = [f"C={r['shape'][1]}\n{r['shape'][2]}x{r['shape'][3]}"
                      if len(r["shape"]) == 4 else f"NHWC\nC={r['shape'][1]}" for r in sel]
            xs = range(len(sel))
            if any("before" in r for r in sel):
                ax.bar([x - 0.2 for x in xs], [r.get("before", {}).get("copy_fraction", 0)
                                               for r in sel], 0.4, color="0.7",
                       label="before")
            after = [r["after"]["copy_fraction"] for r in sel]
            bars = ax.bar([x + 0.2 for x in xs], after, 0.4, color="tab:blue", label="after")
            # above 100%: a channel held in registers moves less than the two-pass minimal
            ax.bar_label(bars, labels=[f"{v:.0%}" for v in after], fontsize=7, padding=1)
            ax.axhline(GOAL, color="tab:red", ls="--", lw=1, label="goal 85%")
            for k, x in enumerate(x for x, r in enumerate(sel) if r["goal"] == GOAL_SMALL):
                ax.hlines(GOAL_SMALL, x - 0.45, x + 0.45, color="tab:orange", ls=":", lw=1.5,
                          label="goal 7x7: 60%" if k == 0 else None)
            ax.set_xticks(list(xs))
            ax.set_xticklabels(labels, fontsize=8)
            ax.set_ylim(0, ymax)
            ax.set_title(f"{ps} {dt}", fontsize=10)
            if j == 0:
                ax.set_ylabel("predicted fraction of copy BW\n(two-pass minimal bytes)")
    axes[0][0].legend(fontsize=7, loc="upper left", ncol=2)
    tree = rep["tree"]
    before = rep.get("before")
    fig.suptitle(f"Static model, H100 SXM (132 SMs, {rep['model']['copy_bandwidth_GBps']:.0f}"
                 f" GB/s copy, {rep['model']['latency_ns']:.0f} ns), N=32, mode {mode}, "
                 f"CUDA {major} sm_90; after {tree['commit']}"
                 + (f"{'+' if tree.get('dirty_kernels') else ''}" if tree else "")
                 + (f", before {before.get('revision', before['commit'])}" if before else ""),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
