"""Run reports: the EPI curve plot and the string keys of ratios in summary.json.

The files themselves are written by `epi_fast._io` (atomically).
"""

from __future__ import annotations

import io
import os
from typing import Any, Dict, Mapping, Optional, Sequence

from .._io import atomic_write, jsonable, write_bytes, write_json, write_jsonl

__all__ = [
    "atomic_write",
    "write_bytes",
    "write_json",
    "write_jsonl",
    "write_png",
    "plot_epi_curve",
    "plot_lm_curves",
    "plot_map_curves",
    "jsonable",
]


def write_png(path: str | os.PathLike, figure: Any, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG atomically (rendered to memory first)."""
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    write_bytes(path, buf.getvalue())


def plot_epi_curve(
    path: str | os.PathLike,
    epi_tracked: Mapping[Any, Sequence[Optional[float]]],
    tau: float,
    prune_epoch: Optional[int],
    title: Optional[str] = None,
) -> None:
    """EPI against epoch, one line per tracked ratio; tau dashed; the prune epoch marked.

    `epi_tracked` maps a ratio (float or string) to its EPI values for epochs 0, 1, ...,
    None where undefined. Uses the Agg backend through an explicit Figure, so it works
    headless and never touches pyplot's global state.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    longest = 0
    for ratio, values in sorted(epi_tracked.items(), key=lambda kv: float(kv[0])):
        pts = [(t, v) for t, v in enumerate(values) if v is not None]
        longest = max(longest, len(values))
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=f"ratio {float(ratio):g}")
    ax.axhline(tau, color="black", linestyle="--", linewidth=1, label=f"tau = {tau:g}")
    if prune_epoch is not None:
        ax.axvline(prune_epoch, color="tab:red", linestyle=":", linewidth=1.5, label=f"pruned after epoch {prune_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("EPI")
    ax.set_xlim(0, max(longest - 1, 1))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title or "Early Pruning Indicator")
    write_png(path, fig)


def plot_lm_curves(
    path: str | os.PathLike,
    metrics: Sequence[Mapping[str, Any]],
    initial: Optional[Mapping[str, float]],
    prune_epoch: Optional[int],
    title: Optional[str] = None,
) -> None:
    """The language-model run: validation perplexity per byte token against epoch (log scale;
    epoch 0 is the untrained network; in the epoch that prunes, the dense network's value at the
    end of the epoch and the pruned network's right after the prune), and training tokens per
    second per epoch; the prune epoch marked in both."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 6.0))
    ax, ax2 = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    xs, ys = [], []
    if initial is not None:
        xs.append(0)
        ys.append(initial["perplexity"])
    for r in metrics:
        xs.append(r["epoch"])
        ys.append(r.get("val_perplexity_before_prune", r["val_perplexity"]))
    ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label="validation perplexity")
    after = [(r["epoch"], r["val_perplexity"]) for r in metrics if r.get("pruned_now")]
    if after:
        e, v = after[0]
        later = [(r["epoch"], r["val_perplexity"]) for r in metrics if r["epoch"] > e]
        px, py = zip(*([(e, v)] + later))
        ax.plot(px, py, marker="o", markersize=3, linewidth=1.5, color="tab:orange", label="pruned network")
    ax.set_yscale("log")
    ax.set_ylabel("perplexity per byte token")
    tx = [r["epoch"] for r in metrics if r.get("tokens_per_second")]
    ty = [r["tokens_per_second"] for r in metrics if r.get("tokens_per_second")]
    ax2.plot(tx, ty, marker="o", markersize=3, linewidth=1.5, color="tab:green")
    ax2.set_ylabel("training tokens / s")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("epoch")
    for a in (ax, ax2):
        if prune_epoch is not None:
            a.axvline(prune_epoch, color="tab:red", linestyle=":", linewidth=1.5, label=f"pruned after epoch {prune_epoch}")
        a.set_xlim(0, max(xs[-1] if xs else 1, 1))
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title(title or "Language model")
    write_png(path, fig)


def plot_map_curves(
    path: str | os.PathLike,
    metrics: Sequence[Mapping[str, Any]],
    prune_epoch: Optional[int],
    test: Optional[Mapping[str, float]] = None,
    test_split: str = "test",
    title: Optional[str] = None,
) -> None:
    """The detection run: validation mAP@0.5 and mAP@[.5:.95] against epoch, the dense detector's
    line up to the epoch that prunes (its value at the end of that epoch), a dashed line on from
    the pruned detector's value right after the prune; the final mAPs on `test_split` as
    stars just after the last epoch, the prune epoch marked."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    last = metrics[-1]["epoch"] if metrics else 1
    for key, label, color in (("val_map50", "val mAP@0.5", "tab:blue"), ("val_map", "val mAP@[.5:.95]", "tab:green")):
        after = [(r["epoch"], r[key]) for r in metrics if r.get("pruned_now")]
        dense = [r for r in metrics if not after or r["epoch"] <= after[0][0]]
        ax.plot([r["epoch"] for r in dense], [r.get(f"{key}_before_prune", r[key]) for r in dense], marker="o",
                markersize=3, linewidth=1.5, color=color, label=label)
        if after:
            e, v = after[0]
            px, py = zip(*([(e, v)] + [(r["epoch"], r[key]) for r in metrics if r["epoch"] > e]))
            ax.plot(px, py, marker="o", markersize=3, linewidth=1.5, linestyle="--", color=color,
                    label=f"{label}, pruned")
        if test is not None:
            ax.plot([last + 0.3], [test["map50" if key == "val_map50" else "map"]], marker="*", markersize=10, color=color,
                    linestyle="none", label=f"{test_split} {label.split(' ', 1)[1]}")
    if prune_epoch is not None:
        ax.axvline(prune_epoch, color="tab:red", linestyle=":", linewidth=1.5, label=f"pruned after epoch {prune_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mAP")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, max(last, 1) + 0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")  # the curves rise from the lower left
    ax.set_title(title or "Detection")
    write_png(path, fig)


def summary_ratio_key(ratio: float) -> str:
    """The string key of a ratio in summary.json (`"0.5"`, `"0.25"`): shortest round-trip form."""
    return repr(float(ratio))


def mapping_with_string_ratios(values: Dict[float, Any]) -> Dict[str, Any]:
    return {summary_ratio_key(r): v for r, v in values.items()}
