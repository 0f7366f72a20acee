"""`python -m experiments.protocol`: the command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional

from .config import CRITERIA, DEFAULT_OUT, MODES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.protocol",
                                description='The "when to prune" protocol at small scale: oracle / init / pre-def / EPI.')
    g = p.add_mutually_exclusive_group()
    for m in MODES:
        g.add_argument(f"--{m}", dest="mode", action="store_const", const=m, help=f"the {m} preset")
    p.add_argument("--data", default=None, help="mnist1d, digits, digits-hard, or a CIFAR-10 batches / ImageFolder "
                   "directory (runs that setting only; default: the mode's settings)")
    p.add_argument("--settings", default=None, help="comma list of settings (default: the mode's)")
    p.add_argument("--model", default=None,
                   help="the network (default: resnet1d_small on mnist1d, resnet_small on the image settings)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seeds", help="comma list, e.g. 0,1,2")
    p.add_argument("--ratios", help="comma list, e.g. 0.3,0.5,0.7,0.9")
    p.add_argument("--criteria", help=f"comma list of {','.join(CRITERIA)}")
    p.add_argument("--candidates", help="comma list of grid-search prune epochs (0 = initialisation)")
    p.add_argument("--predef", type=int, help="the pre-defined prune epoch (default: the mode's, T // 3 in full)")
    p.add_argument("--deadline", type=int, help="EPI's deadline epoch (default: the mode's, equal to the pre-defined epoch)")
    p.add_argument("--train-subset", type=int, help="use only this many training images")
    p.add_argument("--magnitude-reduce", default="mean", choices=("sum", "mean", "max"),
                   help="how coupled channels' magnitudes combine into a group score (default mean, the library's "
                   "default for magnitude criteria)")
    p.add_argument("--gradient-reduce", default="sum", choices=("sum", "mean", "max"),
                   help="how coupled channels' Taylor scores combine (default sum, the library's)")
    p.add_argument("--workers", type=int, default=2, help="processes (at most 2 on this machine; default 2)")
    p.add_argument("--out", default=None, help="output directory (default experiments/results/<mode>)")
    p.add_argument("--no-yield", dest="yield_to_benchmarks", action="store_false",
                   help="do not pause while `pgrep -f benchmarks` finds a benchmark running")
    p.add_argument("--timing", action="store_true",
                   help="after the runs, time an epoch of the dense and of every pruned network in one quiet process "
                   "(timing_<setting>.json); the cost table then takes its wall-clock from there")
    p.add_argument("--aggregate-only", action="store_true", help="rebuild tables and figures from the unit files")
    p.add_argument("--dry-run", action="store_true",
                   help="list the units that would run (missing, or stored with another configuration) and exit")
    return p


def _csv(text: str, cast) -> List[Any]:
    return [cast(t) for t in text.replace(" ", "").split(",") if t]


def run_config(args: argparse.Namespace) -> Dict[str, Any]:
    """The mode's preset with the command line's overrides."""
    cfg = dict(MODES[args.mode or "quick"])
    for key, cast in (("seeds", int), ("ratios", float), ("criteria", str), ("candidates", int), ("settings", str)):
        text = getattr(args, key)
        if text:
            cfg[key] = _csv(text, cast)
    if args.epochs:
        cfg["epochs"] = args.epochs
    if args.predef is not None:
        cfg["predef"] = args.predef
    if args.deadline is not None:
        cfg["deadline"] = args.deadline
    if args.train_subset:
        cfg["train_subset"] = args.train_subset
    if args.data:
        cfg["settings"] = [args.data]
    return cfg


def check_config(cfg: Dict[str, Any]) -> Optional[str]:
    """A usage error's message, or None."""
    T = cfg["epochs"]
    bad = [e for e in cfg["candidates"] + [cfg["predef"]] + [cfg["deadline"]] if e is not None and not 0 <= e < T]
    if bad:
        return f"prune epochs {bad} are outside [0, {T})"
    unknown = [c for c in cfg["criteria"] if c not in CRITERIA]
    if unknown:
        return f"unknown criteria {unknown}; expected some of {', '.join(CRITERIA)}"
    if not cfg["ratios"] or any(not 0 < r < 1 for r in cfg["ratios"]):
        return f"ratios {cfg['ratios']} must be in (0, 1)"
    return None


def main(argv: Optional[List[str]] = None) -> int:
    from .runner import pending, plan_jobs, run_jobs, write_results

    args = build_parser().parse_args(argv)
    mode = args.mode or "quick"
    cfg = run_config(args)
    problem = check_config(cfg)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(DEFAULT_OUT, mode)
    reduce = {"magnitude": args.magnitude_reduce, "gradient": args.gradient_reduce}
    jobs = plan_jobs(cfg, mode, args.model, reduce, out, explicit_seeds=bool(args.seeds))
    t0 = time.perf_counter()
    if args.dry_run or not args.aggregate_only:
        todo = pending(jobs)
        for (unit, path), why in todo:
            print(f"{os.path.basename(path)}: {why}, {'would run' if args.dry_run else 'running'}")
        print(f"{len(jobs)} units, {len(todo)} to run, {max(1, min(args.workers, 2))} process(es)", flush=True)
        if args.dry_run:
            return 0
        os.makedirs(os.path.join(out, "units"), exist_ok=True)
        run_jobs([job for job, _ in todo], args.workers, args.yield_to_benchmarks, t0)
    command = " ".join(argv if argv is not None else sys.argv[1:])
    print(write_results(cfg, mode, jobs, out, args.timing, command))
    print(f"results in {out} ({time.perf_counter() - t0:.0f} s)")
    return 0
