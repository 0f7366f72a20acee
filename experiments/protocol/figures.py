"""The figures of one setting, each PNG with a JSON of its plotted numbers beside it."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np

from .files import atomic_json

Units = List[Dict[str, Any]]


def curve_stats(curves: List[List[Optional[float]]]):
    """(epochs, mean, min, max) over the curves, at every epoch where any value is defined."""
    L = max(len(c) for c in curves)
    xs, mean, lo, hi = [], [], [], []
    for t in range(L):
        v = [c[t] for c in curves if t < len(c) and c[t] is not None]
        if v:
            xs.append(t)
            mean.append(float(np.mean(v)))
            lo.append(float(np.min(v)))
            hi.append(float(np.max(v)))
    return xs, mean, lo, hi


def _of(units: Units, crit: str) -> Units:
    return [u for u in units if u["config"]["criterion"] == crit]


def _save(fig, data: Dict[str, Any], outdir: str, name: str) -> str:
    from epi_fast.app.report import write_png

    p = os.path.join(outdir, name + ".png")
    write_png(p, fig)
    atomic_json(p[:-4] + ".json", data)
    return p


def epi_curves(units: Units, setting: str, outdir: str, crits: List[str], colors: Dict[str, str]) -> str:
    """EPI curves (supplementary Fig. 7): mean over seeds, min-max band, tau dashed, dotted
    lines at each seed's firing epoch."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(crits), 3.8))
    data: Dict[str, Any] = {}
    for j, crit in enumerate(crits):
        us = _of(units, crit)
        ax = fig.add_subplot(1, len(crits), j + 1)
        data[crit] = {}
        for rk, color in colors.items():
            xs, m, lo, hi = curve_stats([u["epi"][rk] for u in us])
            ax.plot(xs, m, color=color, marker="o", ms=2.5, lw=1.4, label=f"ratio {float(rk):g}")
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15)
            for u in us:
                if u["epi_fired"][rk] is not None:
                    ax.axvline(u["epi_fired"][rk], color=color, lw=0.6, ls=":")
            data[crit][rk] = {"epoch": xs, "mean": m, "min": lo, "max": hi, "fired": [u["epi_fired"][rk] for u in us]}
        ax.axhline(us[0]["tau"], color="k", ls="--", lw=1, label=f"tau = {us[0]['tau']}")
        ax.set_title(f"EPI, {crit} ({setting})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("EPI")
        ax.set_ylim(max(0.5, ax.get_ylim()[0]), 1.005)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    return _save(fig, data, outdir, f"epi_curves_{setting}")


def appd_similarity(units: Units, setting: str, outdir: str, crits: List[str], colors: Dict[str, str]) -> str:
    """App. D: EPI (one curve per ratio) vs rank correlation (one curve for all ratios) vs the
    Early-Bird mask distance (per ratio)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 3.6 * len(crits)))
    data: Dict[str, Any] = {}
    for j, crit in enumerate(crits):
        us = _of(units, crit)
        ax1, ax2, ax3 = (fig.add_subplot(len(crits), 3, 3 * j + i) for i in (1, 2, 3))
        data[crit] = {"epi": {}, "early_bird": {}}
        for rk, color in colors.items():
            xs, m, _, _ = curve_stats([u["epi"][rk] for u in us])
            ax1.plot(xs, m, color=color, lw=1.4, label=f"ratio {float(rk):g}")
            data[crit]["epi"][rk] = {"epoch": xs, "mean": m}
            xs, m, lo, hi = curve_stats([u["early_bird"][rk] for u in us])
            ax3.plot(xs, m, color=color, lw=1.4, label=f"ratio {float(rk):g}")
            ax3.fill_between(xs, lo, hi, color=color, alpha=0.15)
            data[crit]["early_bird"][rk] = {"epoch": xs, "mean": m, "fired": [u["early_bird_fired"][rk] for u in us]}
        ax1.axhline(us[0]["tau"], color="k", ls="--", lw=1)
        for name, ls in (("spearman", "-"), ("kendall", "--")):
            xs, m, lo, hi = curve_stats([u[name] for u in us])
            ax2.plot(xs, m, color="k", ls=ls, lw=1.4, label=f"{name} (all ratios)")
            ax2.fill_between(xs, lo, hi, color="gray", alpha=0.15)
            data[crit][name] = {"epoch": xs, "mean": m, "min": lo, "max": hi}
        ax3.axhline(0.1, color="k", ls="--", lw=1, label="EB eps = 0.1")
        ax1.set_title(f"EPI ({crit}) - one curve per ratio")
        ax2.set_title(f"rank correlation, epoch t vs t-1 ({crit})")
        ax3.set_title(f"Early-Bird mask distance ({crit} masks)")
        for ax in (ax1, ax2, ax3):
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="x-small")
    return _save(fig, data, outdir, f"appD_similarity_{setting}")


def top1_vs_prune_epoch(units: Units, setting: str, outdir: str, crits: List[str], colors: Dict[str, str]) -> str:
    """Final top-1 against the prune epoch (the grid), EPI's runs starred."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(crits), 3.8))
    data: Dict[str, Any] = {}
    for j, crit in enumerate(crits):
        us = _of(units, crit)
        ax = fig.add_subplot(1, len(crits), j + 1)
        data[crit] = {}
        cands = us[0]["config"]["candidates"]
        for rk, color in colors.items():
            top1 = [[u["branches"][rk][str(e)]["top1"] for u in us] for e in cands]
            m = [100 * np.mean(v) for v in top1]
            s = [100 * np.std(v) for v in top1]
            ax.errorbar(cands, m, yerr=s, color=color, marker="o", ms=3, capsize=2, lw=1.2, label=f"ratio {float(rk):g}")
            epi = [(u["epi_epoch"][rk], 100 * u["branches"][rk][str(u["epi_epoch"][rk])]["top1"]) for u in us]
            for ee, acc in epi:
                ax.plot([ee], [acc], marker="*", ms=9, color=color, mec="k", mew=0.5)
            data[crit][rk] = {"epochs": cands, "mean": m, "std": s, "epi": epi}
        dense = 100 * np.mean([u["dense"]["top1_final"] for u in us])
        ax.axhline(dense, color="gray", ls="--", lw=1, label="dense")
        ax.set_title(f"final top-1 vs prune epoch, {crit} ({setting}); * = EPI")
        ax.set_xlabel("prune epoch")
        ax.set_ylabel("final test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    return _save(fig, data, outdir, f"top1_vs_prune_epoch_{setting}")


def figures(units: Units, setting: str, outdir: str) -> List[str]:
    """All three figures of a setting; returns their paths."""
    crits = sorted({u["config"]["criterion"] for u in units})
    colors = {rk: f"C{i}" for i, rk in enumerate(units[0]["epi"].keys())}
    return [f(units, setting, outdir, crits, colors) for f in (epi_curves, appd_similarity, top1_vs_prune_epoch)]
