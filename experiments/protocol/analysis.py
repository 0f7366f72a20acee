"""From unit results to the tables' numbers: the policies per ratio, their drops, their costs.

Works on the unit JSON of this protocol and of epi_fast 0.1's (which lacks "t0" and
"t0_scoring_samples": its gradient criterion scored t = 0 with a separate pass over the
training set, and prune-at-init is charged that pass).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .config import T0_DESCRIPTIONS, upgraded
from .stats import paired

POLICIES = ("init", "predef", "epi")
# Post hoc windows (docs/REPRODUCTION.md labels them so): r = 2, 3, 5.
POST_HOC_WINDOWS = (2, 3, 5)


def mean_std(values: Sequence[float], scale: float = 100.0) -> Tuple[float, float]:
    v = np.asarray(values, dtype=np.float64) * scale
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def best_epoch(grid: Dict[int, float]) -> int:
    """The epoch with the highest value; ties go to the earlier (cheaper) epoch."""
    return max(grid, key=lambda e: (grid[e], -e))


def selection_key(u: Dict[str, Any], rk: str) -> str:
    """The branch accuracy the oracle's epoch is chosen on: validation ("val_top1"); units of
    earlier protocols had no validation split and were chosen on test ("top1")."""
    b = u["branches"][rk]
    return "val_top1" if all("val_top1" in br for br in b.values()) else "top1"


def per_seed_row(u: Dict[str, Any], rk: str, cands: Sequence[int], predef: int) -> Dict[str, Any]:
    """One seed's policies at ratio `rk` (test accuracies; the oracle's epoch chosen on validation)."""
    b = u["branches"][rk]
    sel = selection_key(u, rk)
    grid = {int(e): b[str(e)]["top1"] for e in cands}
    best_e = best_epoch({int(e): b[str(e)][sel] for e in cands})
    ee = u["epi_epoch"][rk]
    return {
        "seed": u["config"]["seed"], "oracle": grid[best_e], "oracle_epoch": best_e,
        "oracle_test_max": max(grid.values()), "selected_on": sel,
        "init": b["0"]["top1"], "predef": b[str(predef)]["top1"], "epi": b[str(ee)]["top1"],
        "epi_epoch": ee, "epi_reason": u["epi_reason"][rk], "grid": grid,
        "dense": u["dense"]["top1_final"],
    }


def comparisons(per_seed: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Paired differences in points of test top-1, one pair per seed: EPI - pre-def, EPI - init,
    EPI - oracle, and EPI - pre-def over the seeds where EPI fired by the deadline (a forced run
    prunes at the pre-defined epoch, so its difference is zero by construction)."""
    def diffs(a: str, b: str, rows=per_seed) -> List[float]:
        return [100 * (p[a] - p[b]) for p in rows]

    fired = [p for p in per_seed if p["epi_reason"] != "deadline"]
    return {
        "epi_minus_predef": paired(diffs("epi", "predef")),
        "epi_minus_init": paired(diffs("epi", "init")),
        "epi_minus_oracle": paired(diffs("epi", "oracle")),
        "epi_minus_predef_fired_only": paired(diffs("epi", "predef", fired)),
        "forced": len(per_seed) - len(fired),
    }


def ratio_row(us: List[Dict[str, Any]], rk: str, cands: Sequence[int], predef: int) -> Dict[str, Any]:
    """The table row of one ratio: every policy's mean and std over seeds, the paired drops and
    the paired comparisons."""
    per_seed = [per_seed_row(u, rk, cands, predef) for u in us]
    # The per-seed oracle takes a max over noisy runs (optimistic); also report the epoch that
    # is best on the mean over seeds (chosen on the selection accuracy), evaluated per seed.
    sel_grid = {e: float(np.mean([u["branches"][rk][str(e)][selection_key(u, rk)] for u in us])) for e in cands}
    e_star = best_epoch(sel_grid)
    mean_grid = {e: float(np.mean([p["grid"][e] for p in per_seed])) for e in cands}
    row: Dict[str, Any] = {}
    for pol in ("oracle",) + POLICIES + ("dense", "oracle_test_max"):
        vals = [p[pol] for p in per_seed]
        m, s = mean_std(vals)
        row[pol] = {"mean": m, "std": s, "values": [100 * v for v in vals]}
    m, s = mean_std([p["grid"][e_star] for p in per_seed])
    row["oracle_meanselected"] = {"epoch": e_star, "mean": m, "std": s}
    for pol in POLICIES:
        m, s = mean_std([p["oracle"] - p[pol] for p in per_seed])
        row[f"drop_{pol}"] = {"mean": m, "std": s}
    row["compare"] = comparisons(per_seed)
    row["epi_epochs"] = [p["epi_epoch"] for p in per_seed]
    row["epi_reasons"] = [p["epi_reason"] for p in per_seed]
    row["oracle_epochs"] = [p["oracle_epoch"] for p in per_seed]
    row["selected_on"] = sorted({p["selected_on"] for p in per_seed})
    row["grid_mean"] = {str(e): 100 * mean_grid[e] for e in cands}
    row["grid_std"] = {str(e): mean_std([p["grid"][e] for p in per_seed])[1] for e in cands}
    row["per_seed"] = per_seed
    row["early_bird_fired"] = [u["early_bird_fired"][rk] for u in us]
    return row


def pooled(rows: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The comparisons pooled over ratios: per seed the mean difference over the ratios (the
    ratios of one seed share its dense run, so they are not independent pairs; the seed is)."""
    out = {}
    for key in ("epi_minus_predef", "epi_minus_init", "epi_minus_oracle"):
        per_ratio = np.array([rows[rk]["compare"][key]["values"] for rk in rows])  # [ratios, seeds]
        out[key] = paired(per_ratio.mean(axis=0).tolist())
    return out


def post_hoc_windows(us: List[Dict[str, Any]], rk: str, predef: int, windows=POST_HOC_WINDOWS,
                     patiences: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """Post hoc (not part of the fixed protocol): EPI's prune epoch and EPI - pre-def (paired,
    points) had the window been r, or the patience p, recomputed from the recorded structures
    with the library's indicator and EPIPruner's deadline rule. A prune epoch without a
    computed branch (possible only past the deadline, which the rule never picks) is None."""
    from epi_fast.indicator import EarlyPruningIndicator
    from epi_fast.policy.decision import prune_epoch_for

    cfg = us[0]["config"]
    base_w, base_p = cfg["window"], cfg["patience"]
    variants = [(w, base_p) for w in windows] + [(base_w, p) for p in (patiences if patiences is not None else (0,))]
    out: Dict[str, Any] = {}
    for w, pat in variants:
        epochs, reasons, diffs = [], [], []
        for u in us:
            ind = EarlyPruningIndicator(window=w, tau=u["tau"], patience=pat)
            for counts in u["structures"][rk]:
                ind.update(counts)
            e, why = prune_epoch_for(ind.fired_epoch, u["deadline"])
            br = u["branches"][rk].get(str(e))
            epochs.append(e)
            reasons.append(why)
            diffs.append(None if br is None else 100 * (br["top1"] - u["branches"][rk][str(predef)]["top1"]))
        known = [d for d in diffs if d is not None]
        out[f"window={w},patience={pat}"] = {"window": w, "patience": pat, "epi_epochs": epochs, "reasons": reasons,
                                             "epi_minus_predef": paired(known)}
    return out


def aggregate(units: List[Dict[str, Any]], setting: str, timing: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Numbers of the tables for one setting, from its unit results."""
    out: Dict[str, Any] = {"setting": setting, "criteria": {}}
    for crit in sorted({u["config"]["criterion"] for u in units}):
        us = sorted([u for u in units if u["config"]["criterion"] == crit], key=lambda u: u["config"]["seed"])
        cfg = us[0]["config"]
        cands, predef = cfg["candidates"], cfg["predef"]
        rows = {rk: ratio_row(us, rk, cands, predef) for rk in us[0]["branches"]}
        avg = {pol: float(np.mean([rows[rk][f"drop_{pol}"]["mean"] for rk in rows])) for pol in POLICIES}
        t0 = sorted({T0_DESCRIPTIONS[upgraded(u["config"])["t0"]] for u in us})
        post_hoc = None
        if all("structures" in u for u in us) and "window" in cfg:
            post_hoc = {rk: post_hoc_windows(us, rk, predef) for rk in rows}
        out["criteria"][crit] = {
            "T": cfg["epochs"], "candidates": cands, "predef": predef, "tau": us[0]["tau"],
            "reduce": cfg["reduce"][crit], "deadline": us[0]["deadline"], "seeds": [u["config"]["seed"] for u in us],
            "window": cfg.get("window"), "patience": cfg.get("patience"),
            "max_layer_ratio": cfg.get("max_layer_ratio", 1.0),
            "protocol_sha256": sorted({str(u.get("protocol_sha256")) for u in us}),
            "t0": t0, "epi_fast_versions": sorted({u.get("epi_fast_version", "0.1 (not recorded)") for u in us}),
            "rows": rows, "avg_drop": avg, "pooled": pooled(rows), "post_hoc": post_hoc,
            "costs": costs(us, cands, predef, (timing or {}).get("criteria", {}).get(crit)),
            "wall_clock_source": "timing pass" if timing else "in-run (shared CPU)",
        }
    return out


def t0_scoring_samples(u: Dict[str, Any]) -> int:
    """Samples whose gradients the unit's t = 0 scores cost (charged to prune-at-init): as
    recorded, else epi_fast 0.1's (one pass over the training set for the gradient criterion)."""
    if "t0_scoring_samples" in u:
        return int(u["t0_scoring_samples"])
    return u["samples_per_epoch"] if u["config"]["criterion"] == "gradient" else 0


def unit_costs(u: Dict[str, Any], rk: str, cands: Sequence[int], predef: int,
               timing: Optional[Dict[str, Any]]) -> Dict[str, Tuple[float, float]]:
    """(FLOPs, wall-clock) of every policy of one seed at ratio `rk`, relative to dense training."""
    T, n = u["config"]["epochs"], u["samples_per_epoch"]
    d_f = 3 * u["dense"]["flops"] * n
    d_s = float(np.median(u["dense"]["epoch_seconds"]))
    o_s = float(np.median(u["dense"]["score_seconds"]))
    tp = None
    if timing is not None:
        d_s = timing["dense_epoch_seconds"]
        tp = timing["pruned_epoch_seconds"][str(u["config"]["seed"])][rk]
    b = u["branches"][rk]
    t0_share = t0_scoring_samples(u) / n

    def epoch_s(e: int) -> float:
        return tp[str(e)] if tp is not None else (b[str(e)]["epoch_seconds"] or 0.0)

    def run_cost(e: int, epi_overhead: bool = False) -> Tuple[float, float]:
        br = b[str(e)]
        f = e * d_f + (T - e) * 3 * br["flops_after"] * n
        s = e * d_s + (T - e) * epoch_s(e) + br["prune_seconds"]
        if e == 0:  # the t = 0 scores' gradients (none for weight criteria)
            f += t0_share * d_f
            s += t0_share * d_s
        if epi_overhead:
            s += e * o_s
        return f / (T * d_f), s / (T * d_s)

    vals = {"init": run_cost(0), "predef": run_cost(predef), "epi": run_cost(u["epi_epoch"][rk], True)}
    indep = [run_cost(e) for e in cands]
    vals["oracle_independent"] = (sum(c[0] for c in indep), sum(c[1] for c in indep))
    tails_f = sum((T - e) * 3 * b[str(e)]["flops_after"] * n for e in cands)
    tails_s = sum((T - e) * epoch_s(e) + b[str(e)]["prune_seconds"] for e in cands)
    vals["oracle_branched"] = ((T * d_f + tails_f) / (T * d_f), (T * d_s + tails_s) / (T * d_s))
    vals["pruned_flops_fraction"] = (b[str(u["epi_epoch"][rk])]["flops_after"] / u["dense"]["flops"], 0.0)
    return vals


def costs(us: List[Dict[str, Any]], cands, predef, timing: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Training cost of each policy relative to dense training, per ratio, mean over seeds.

    FLOPs: per epoch 3 x forward FLOPs x samples (forward + backward), dense until the prune
    epoch, the pruned network's after it; prune-at-init also pays the gradients its t = 0
    scores need (gradient criterion: one batch at the initial weights; epi_fast 0.1's units: a
    pass over the training set). Wall-clock: measured seconds per training epoch (dense, and
    each branch's pruned epochs), EPI's per-epoch scoring and bookkeeping added to the EPI
    policy while it tracks. Grid search: one full training per candidate ("independent"), or
    the dense run plus the branch tails ("branched", as here).
    """
    out = {}
    for rk in us[0]["branches"]:
        acc: Dict[str, List[float]] = {}
        for u in us:
            for k2, (f, s) in unit_costs(u, rk, cands, predef, timing).items():
                acc.setdefault(k2 + "_flops", []).append(f)
                acc.setdefault(k2 + "_wall", []).append(s)
        out[rk] = {k2: float(np.mean(v)) for k2, v in acc.items()}
    return out
