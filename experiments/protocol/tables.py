"""The markdown tables of tables.md (and docs/REPRODUCTION.md) from `analysis.aggregate`."""

from __future__ import annotations

from typing import Any, Dict, List


def fmt(m: float, s: float) -> str:
    return f"{m:.2f} ± {s:.2f}"


def _selected_on(c: Dict[str, Any]) -> str:
    keys = {k for row in c["rows"].values() for k in row.get("selected_on", ["top1"])}
    return "validation" if keys == {"val_top1"} else "test (no validation split)"


def _criterion_header(crit: str, c: Dict[str, Any]) -> str:
    return (f"**{crit}** criterion (tau = {c['tau']}), T = {c['T']} epochs, {len(c['seeds'])} seeds; "
            f"oracle over epochs {c['candidates']} (chosen on {_selected_on(c)}, reported on test); "
            f"pre-def = epoch {c['predef']}; per-layer limit max_layer_ratio = {c.get('max_layer_ratio', 1.0)}; "
            f"EPI deadline = epoch {c['deadline']}; coupled channels combined by {c['reduce']}; "
            f"t = 0 scores: {'; '.join(c.get('t0', []))}. Final top-1 %, mean ± std over seeds.\n")


def _policy_rows(c: Dict[str, Any]) -> List[str]:
    lines = ["| ratio | dense (no prune) | oracle estimate | init | pre-def | EPI (prune epochs) | oracle epochs |",
             "|---|---|---|---|---|---|---|"]
    for rk, row in c["rows"].items():
        eps = ",".join(f"{e}{'†' if why == 'deadline' else ''}" for e, why in zip(row["epi_epochs"], row["epi_reasons"]))
        cells = [fmt(row[pol]["mean"], row[pol]["std"]) for pol in ("oracle", "init", "predef", "epi")]
        lines.append(f"| {float(rk):.0%} | {fmt(row['dense']['mean'], row['dense']['std'])} | {cells[0]} | {cells[1]} | "
                     f"{cells[2]} | {cells[3]} ({eps}) | {','.join(map(str, row['oracle_epochs']))} |")
    drops = c["avg_drop"]
    lines.append(f"| avg drop vs oracle | | – | {drops['init']:.2f} | {drops['predef']:.2f} | {drops['epi']:.2f} | |")
    lines.append("| automatic | | ✗ | ✓ | ✗ | ✓ | |")
    return lines


def _drop_rows(c: Dict[str, Any]) -> List[str]:
    lines = ["Per-ratio drop against the oracle, paired per seed (mean ± std, points of top-1):\n",
             "| ratio | init | pre-def | EPI | oracle epoch chosen on the seed mean (its top-1) |",
             "|---|---|---|---|---|"]
    for rk, row in c["rows"].items():
        om = row["oracle_meanselected"]
        drops = " | ".join(fmt(row[f"drop_{p}"]["mean"], row[f"drop_{p}"]["std"]) for p in ("init", "predef", "epi"))
        lines.append(f"| {float(rk):.0%} | {drops} | {om['epoch']} ({fmt(om['mean'], om['std'])}) |")
    return lines


def ci_cell(cmp: Dict[str, Any]) -> str:
    """'+0.12 [-0.40, +0.64] p=0.81 (inconclusive)': mean, 95% t interval, sign-flip p, verdict."""
    if cmp.get("ci") is None:
        return "–" if cmp.get("mean") is None else f"{cmp['mean']:+.2f} (n = {cmp['n']})"
    lo, hi = cmp["ci"]
    return f"{cmp['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}] p={cmp['p_sign_flip']:.2f} ({cmp['verdict']})"


def _comparison_rows(c: Dict[str, Any]) -> List[str]:
    lines = ["Paired differences in points of test top-1, one pair per seed: mean [95% t interval], exact "
             "sign-flip p, verdict; `detectable` = the smallest true EPI - pre-def this design detects with 80% "
             "power (the observed sd taken as the truth).\n",
             "| ratio | EPI - pre-def | EPI - init | EPI - oracle | forced at the deadline | EPI - pre-def, fired runs only "
             "| detectable |", "|---|---|---|---|---|---|---|"]
    for rk, row in c["rows"].items():
        k = row["compare"]
        det = k["epi_minus_predef"].get("detectable")
        lines.append(f"| {float(rk):.0%} | {ci_cell(k['epi_minus_predef'])} | {ci_cell(k['epi_minus_init'])} | "
                     f"{ci_cell(k['epi_minus_oracle'])} | {k['forced']} of {k['epi_minus_predef']['n']} | "
                     f"{ci_cell(k['epi_minus_predef_fired_only'])} | {'–' if det is None else f'{det:.2f}'} |")
    pool = c["pooled"]
    det = pool["epi_minus_predef"].get("detectable")
    lines.append(f"| pooled (per-seed mean over ratios) | {ci_cell(pool['epi_minus_predef'])} | "
                 f"{ci_cell(pool['epi_minus_init'])} | {ci_cell(pool['epi_minus_oracle'])} | | | "
                 f"{'–' if det is None else f'{det:.2f}'} |")
    return lines


def _post_hoc_rows(c: Dict[str, Any]) -> List[str]:
    if not c.get("post_hoc"):
        return []
    lines = ["Post hoc (not part of the fixed protocol): EPI's window r and patience changed, prune epochs "
             "recomputed from the recorded structures, EPI - pre-def paired as above.\n",
             "| ratio | variant | prune epochs (†: deadline) | EPI - pre-def |", "|---|---|---|---|"]
    for rk, variants in c["post_hoc"].items():
        for name, v in variants.items():
            eps = ",".join(f"{e}{'†' if why == 'deadline' else ''}" for e, why in zip(v["epi_epochs"], v["reasons"]))
            lines.append(f"| {float(rk):.0%} | {name.replace(',', ', ')} | {eps} | {ci_cell(v['epi_minus_predef'])} |")
    return lines


def table_markdown(agg: Dict[str, Any]) -> str:
    lines: List[str] = []
    for crit, c in agg["criteria"].items():
        lines.append(_criterion_header(crit, c))
        lines += _policy_rows(c)
        lines.append("")
        lines += _drop_rows(c)
        lines.append("")
        if "pooled" in c:
            lines += _comparison_rows(c)
            lines.append("")
            lines += _post_hoc_rows(c)
            lines.append("")
    lines.append("† EPI had not fired by the deadline epoch; pruned there (EPIPruner's `deadline_epoch`).\n")
    return "\n".join(lines)


def cost_markdown(agg: Dict[str, Any]) -> str:
    src = next(iter(agg["criteria"].values())).get("wall_clock_source", "in-run")
    lines = [f"Training cost relative to dense training (FLOPs / wall-clock; wall-clock from the {src}), mean over seeds. "
             "Grid search: `indep.` = one full training per candidate epoch; `branched` = the dense run plus "
             "every branch's pruned tail (how this protocol ran it).\n",
             "| criterion | ratio | EPI's pruned net, FLOPs | init | pre-def | EPI | oracle, indep. | oracle, branched |",
             "|---|---|---|---|---|---|---|---|"]
    for crit, c in agg["criteria"].items():
        for rk, k in c["costs"].items():
            def cell(p: str) -> str:
                return f"{k[p + '_flops']:.2f} / {k[p + '_wall']:.2f}"

            lines.append(f"| {crit} | {float(rk):.0%} | {k['pruned_flops_fraction_flops']:.2f} | {cell('init')} | "
                         f"{cell('predef')} | {cell('epi')} | {cell('oracle_independent')} | {cell('oracle_branched')} |")
    lines.append("")
    return "\n".join(lines)
