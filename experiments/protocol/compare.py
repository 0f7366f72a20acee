"""Compare the unit files of two protocol runs (e.g. epi_fast 0.1's protocol against this one).

    python -m experiments.protocol.compare OLD_DIR NEW_DIR [--json FILE]

For every unit present in both: whether the EPI curves, structures, prune epochs, Early-Bird
and rank-correlation curves, dense accuracies and branch results are identical (bit for bit,
as stored in JSON); where they differ, at which epochs and by how much. Timings are not compared.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import Any, Dict, List, Optional

from .files import atomic_json, read_json

CURVES = ("epi", "early_bird", "structures")
PER_RATIO = ("epi_fired", "epi_epoch", "epi_reason", "early_bird_fired")


def _epochs_differing(a: List[Any], b: List[Any]) -> List[int]:
    n = max(len(a), len(b))
    return [t for t in range(n) if t >= len(a) or t >= len(b) or a[t] != b[t]]


def _max_abs(a: List[Optional[float]], b: List[Optional[float]], ts: List[int]) -> Optional[float]:
    d = [abs(a[t] - b[t]) for t in ts if t < len(a) and t < len(b) and a[t] is not None and b[t] is not None]
    return max(d) if d else None


def compare_units(old: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    """The differences between two results of the same unit."""
    out: Dict[str, Any] = {"identical": True, "ratios": {}}
    for rk in old["epi"]:
        r: Dict[str, Any] = {}
        for key in CURVES:
            ts = _epochs_differing(old[key][rk], new[key][rk])
            r[f"{key}_epochs_differing"] = ts
            if key != "structures":
                r[f"{key}_max_abs_diff"] = _max_abs(old[key][rk], new[key][rk], ts)
        for key in PER_RATIO:
            r[key] = [old[key][rk], new[key][rk]]
        bo, bn = old["branches"][rk], new["branches"][rk]
        r["branches_differing"] = {e: [bo.get(e, {}).get("top1"), bn.get(e, {}).get("top1")]
                                   for e in sorted(set(bo) | set(bn), key=int)
                                   if {k: v for k, v in bo.get(e, {}).items() if "seconds" not in k}
                                   != {k: v for k, v in bn.get(e, {}).items() if "seconds" not in k}}
        same = (not any(r[f"{k}_epochs_differing"] for k in CURVES) and not r["branches_differing"]
                and all(a == b for a, b in (r[k] for k in PER_RATIO)))
        r["identical"] = same
        out["identical"] &= same
        out["ratios"][rk] = r
    for key in ("spearman", "kendall"):
        out[f"{key}_epochs_differing"] = _epochs_differing(old[key], new[key])
    out["dense_top1_identical"] = old["dense"]["top1"] == new["dense"]["top1"]
    out["layers_identical"] = old["layers"] == new["layers"]
    out["identical"] &= (out["dense_top1_identical"] and out["layers_identical"]
                         and not out["spearman_epochs_differing"] and not out["kendall_epochs_differing"])
    return out


def compare_dirs(old_dir: str, new_dir: str) -> Dict[str, Dict[str, Any]]:
    res = {}
    for path in sorted(glob.glob(os.path.join(old_dir, "units", "*.json"))):
        name = os.path.basename(path)
        old, new = read_json(path), read_json(os.path.join(new_dir, "units", name))
        if old is not None and new is not None:
            res[name] = compare_units(old, new)
    return res


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.4f}"


def markdown(res: Dict[str, Dict[str, Any]]) -> str:
    lines = ["| unit | ratio | identical | EPI epochs differing (max abs diff) | fired old → new | "
             "prune epoch old → new | structure epochs differing | branches differing (top1 old → new) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, u in res.items():
        for rk, r in u["ratios"].items():
            br = ", ".join(f"e={e}: {a} → {b}" for e, (a, b) in r["branches_differing"].items()) or "none"
            lines.append(
                f"| {name[:-5]} | {rk} | {'yes' if r['identical'] else 'no'} | "
                f"{r['epi_epochs_differing'] or 'none'} ({_fmt(r['epi_max_abs_diff'])}) | "
                f"{r['epi_fired'][0]} → {r['epi_fired'][1]} | "
                f"{r['epi_epoch'][0]}{'†' if r['epi_reason'][0] == 'deadline' else ''} → "
                f"{r['epi_epoch'][1]}{'†' if r['epi_reason'][1] == 'deadline' else ''} | "
                f"{r['structures_epochs_differing'] or 'none'} | {br} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.protocol.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("old_dir")
    p.add_argument("new_dir")
    p.add_argument("--json", help="also write the comparison as JSON here")
    args = p.parse_args(argv)
    res = compare_dirs(args.old_dir, args.new_dir)
    if not res:
        print("no unit is in both directories", file=sys.stderr)
        return 1
    print(markdown(res))
    for name, u in res.items():
        print(f"{name}: {'identical' if u['identical'] else 'differs'}")
    if args.json:
        atomic_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
