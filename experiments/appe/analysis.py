"""From the App. E units to the table: EPI's prune epoch and mAP against the grid's best."""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from experiments.protocol.stats import paired


def best_epoch(branches: Dict[str, Any], candidates) -> int:
    """The candidate with the best validation mAP@0.5 (ties: the earlier epoch)."""
    return max(candidates, key=lambda e: (branches[str(e)]["val"]["map50"], -e))


def aggregate(units: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per ratio: EPI's prune epochs, test mAP@0.5 of EPI, of the grid's validation-chosen epoch
    and of the dense detector (the upper bound), and the paired drop EPI - grid (points)."""
    units = sorted(units, key=lambda u: u["config"]["seed"])
    cfg = units[0]["config"]
    rows = {}
    for rk in units[0]["branches"]:
        per_seed = []
        for u in units:
            b = u["branches"][rk]
            e_epi, why = u["epi_epoch"][rk]
            e_grid = best_epoch(b, u["config"]["candidates"])
            per_seed.append({
                "seed": u["config"]["seed"], "epi_epoch": e_epi, "epi_reason": why, "grid_epoch": e_grid,
                "epi_map50": b[str(e_epi)]["test"]["map50"], "grid_map50": b[str(e_grid)]["test"]["map50"],
                "epi_map": b[str(e_epi)]["test"]["map"], "grid_map": b[str(e_grid)]["test"]["map"],
                "dense_map50": u["dense"]["test"]["map50"], "dense_map": u["dense"]["test"]["map"],
                "params_after": b[str(e_epi)]["params_after"], "params": u["dense"]["params"],
                "grid_test_map50": {e: b[str(e)]["test"]["map50"] for e in u["config"]["candidates"]},
            })

        def col(key):
            v = np.array([p[key] for p in per_seed], dtype=float) * 100
            return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                    "values": v.tolist()}

        rows[rk] = {
            "per_seed": per_seed, "epi_epochs": [p["epi_epoch"] for p in per_seed],
            "epi_reasons": [p["epi_reason"] for p in per_seed], "grid_epochs": [p["grid_epoch"] for p in per_seed],
            **{k: col(k) for k in ("epi_map50", "grid_map50", "dense_map50", "epi_map", "grid_map", "dense_map")},
            "epi_minus_grid_map50": paired([100 * (p["epi_map50"] - p["grid_map50"]) for p in per_seed]),
            "epi_minus_grid_map": paired([100 * (p["epi_map"] - p["grid_map"]) for p in per_seed]),
            "kept_params": float(np.mean([p["params_after"] / p["params"] for p in per_seed])),
        }
    return {"config": {k: v for k, v in cfg.items() if k != "seed"}, "seeds": [u["config"]["seed"] for u in units],
            "rows": rows, "unit_seconds": float(sum(u["unit_seconds"] for u in units))}


def _ci(cmp: Dict[str, Any]) -> str:
    if cmp.get("ci") is None:
        return "–" if cmp.get("mean") is None else f"{cmp['mean']:+.2f} (n = {cmp['n']})"
    return f"{cmp['mean']:+.2f} [{cmp['ci'][0]:+.2f}, {cmp['ci'][1]:+.2f}] ({cmp['verdict']})"


def table_markdown(agg: Dict[str, Any]) -> str:
    c = agg["config"]
    lines = [f"{c['model']} on {c['n_train']} / {c['n_val']} / {c['n_test']} digit canvases "
             f"({c['image_size']} px), T = {c['epochs']}, magnitude, tau = {c['tau']}, window = patience = "
             f"{c['window']}, deadline = epoch {c['deadline']}, grid over epochs {c['candidates']} (best on "
             f"validation mAP@0.5, reported on test), seeds {agg['seeds']}; {agg['unit_seconds'] / 60:.1f} CPU-minutes.\n",
             "| ratio | EPI prune epochs (†: deadline) | grid's epochs | dense mAP@0.5 | grid mAP@0.5 | EPI mAP@0.5 | "
             "EPI - grid, mAP@0.5 points [95% t] | EPI - grid, mAP points | params kept |",
             "|---|---|---|---|---|---|---|---|---|"]
    for rk, r in agg["rows"].items():
        eps = ",".join(f"{e}{'†' if why == 'deadline' else ''}" for e, why in zip(r["epi_epochs"], r["epi_reasons"]))

        def f(k):
            return f"{r[k]['mean']:.1f} ± {r[k]['std']:.1f}"

        lines.append(f"| {float(rk):.0%} | {eps} | {','.join(map(str, r['grid_epochs']))} | {f('dense_map50')} | "
                     f"{f('grid_map50')} | {f('epi_map50')} | {_ci(r['epi_minus_grid_map50'])} | "
                     f"{_ci(r['epi_minus_grid_map'])} | {r['kept_params']:.0%} |")
    return "\n".join(lines) + "\n"
