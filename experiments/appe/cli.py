"""`python -m experiments.appe`: run the units that are missing, then the table and the plot."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

from .config import DEFAULT_OUT, MODES, unit_config, unit_path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.appe",
                                description="App. E at small scale: EPI on a detector against a grid search.")
    g = p.add_mutually_exclusive_group()
    for m in MODES:
        g.add_argument(f"--{m}", dest="mode", action="store_const", const=m, help=f"the {m} preset")
    p.add_argument("--seeds", help="comma list of seeds (default: the mode's)")
    p.add_argument("--out", default=None, help="output directory (default experiments/results/appe/<mode>)")
    p.add_argument("--aggregate-only", action="store_true", help="rebuild the table from the unit files")
    p.add_argument("--dry-run", action="store_true", help="list the units that would run and exit")
    return p


def pending(jobs):
    from experiments.protocol.files import read_json

    todo = []
    for cfg, path in jobs:
        stored = read_json(path)
        if stored is None or stored.get("config", {}).get("config_sha256") != cfg["config_sha256"]:
            todo.append((cfg, path, "missing" if stored is None else "configuration changed"))
    return todo


def plot(units, out: str) -> Optional[str]:
    """Test mAP@0.5 against the prune epoch per ratio (each seed a line), EPI's epochs starred,
    the dense detector dashed; JSON of the plotted numbers beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.protocol.files import atomic_json

    ratios = list(units[0]["branches"])
    fig, axes = plt.subplots(1, len(ratios), figsize=(5 * len(ratios), 3.6), squeeze=False)
    data = {}
    for ax, rk in zip(axes[0], ratios):
        data[rk] = []
        for u in units:
            b = u["branches"][rk]
            es = sorted(int(e) for e in b)
            ys = [100 * b[str(e)]["test"]["map50"] for e in es]
            line, = ax.plot(es, ys, marker="o", label=f"seed {u['config']['seed']}")
            e_epi = u["epi_epoch"][rk][0]
            ax.plot([e_epi], [100 * b[str(e_epi)]["test"]["map50"]], marker="*", markersize=14, color=line.get_color())
            ax.axhline(100 * u["dense"]["test"]["map50"], color=line.get_color(), linestyle="--", linewidth=0.8)
            data[rk].append({"seed": u["config"]["seed"], "epochs": es, "test_map50": ys, "epi_epoch": e_epi,
                             "dense_test_map50": 100 * u["dense"]["test"]["map50"]})
        ax.set_title(f"ratio {float(rk):.0%}")
        ax.set_xlabel("prune epoch")
        ax.set_ylabel("test mAP@0.5 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out, "map_vs_prune_epoch.png")
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    atomic_json(os.path.join(out, "map_vs_prune_epoch.json"), data)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    from experiments.protocol.files import atomic_json, atomic_text, read_json

    from .analysis import aggregate, table_markdown
    from .unit import run_unit

    args = build_parser().parse_args(argv)
    mode = args.mode or "quick"
    cfg = dict(MODES[mode])
    if args.seeds:
        try:
            cfg["seeds"] = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            print(f"error: --seeds must be a comma list of integers, got {args.seeds!r}", file=sys.stderr)
            return 2
    out = args.out or os.path.join(DEFAULT_OUT, mode)
    jobs = [(unit_config(cfg, seed, mode), None) for seed in cfg["seeds"]]
    jobs = [(u, unit_path(out, u)) for u, _ in jobs]
    t0 = time.perf_counter()
    if not args.aggregate_only:
        todo = pending(jobs)
        for _, path, why in todo:
            print(f"{os.path.relpath(path, out)}: {why}, {'would run' if args.dry_run else 'running'}", flush=True)
        print(f"{len(jobs)} units, {len(todo)} to run", flush=True)
        if args.dry_run:
            return 0
        for u, path, _ in todo:
            atomic_json(path, run_unit(u))
            print(f"  done {os.path.basename(path)} ({time.perf_counter() - t0:.0f} s elapsed)", flush=True)
    units = [x for _, path in jobs for x in [read_json(path)] if x is not None]
    if not units:
        print("no unit files yet", file=sys.stderr)
        return 1
    agg = aggregate(units)
    atomic_json(os.path.join(out, "summary.json"), agg)
    md = f"# App. E at small scale ({mode} mode)\n\n" + table_markdown(agg)
    figure = plot(units, out)
    md += f"\nFigure: [{os.path.basename(figure)}]({os.path.basename(figure)})\n"
    atomic_text(os.path.join(out, "tables.md"), md)
    print(md)
    print(f"results in {out} ({time.perf_counter() - t0:.0f} s)")
    return 0
