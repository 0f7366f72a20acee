"""python -m benchmarks.costs: what pruning costs and saves, measured on this machine's CPU.

A (latency): torchvision ResNet-50, MobileNetV2 and ViT-B/16 pruned to FLOPs targets, timed
against the dense model. B (training): an EPI-guided run against dense training. C (prune):
one epi_fast.prune against Torch-Pruning's MagnitudePruner. Writes
<machine>_cpu_costs.{json,md,png} (<machine>_cpu_costs_quick.* with --quick) under --out,
atomically, and prints PASS/FAIL per target; with --only, the parts not run now are kept from
the file already there. Targets are reported, never asserted: the exit status is 0 unless the
harness itself fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from . import latency, prune_time, training
from .common import load_average, wait_for_quiet
from .report import PARTS, evaluate_targets, write_all


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.costs", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer models, ratios, epochs and repeats (a few minutes)")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny models: the test suite's run
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to run (default: {','.join(PARTS)})")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results folder")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--max-load", type=float, default=None,
                   help="before each part, wait until the 1-minute load average is below this (default: 1.0 in the "
                        "full run, no wait with --quick; 0 = never wait)")
    p.add_argument("--max-wait", type=float, default=1200.0, help="longest wait for --max-load per part, s (default 1200)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (B), instead of the mode's")
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        p.error(f"--only: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    args.parts = parts
    return args


def configs(mode: str):
    if mode == "full":
        return latency.LatencyConfig(), training.TrainingConfig(round_to_runs=[8]), prune_time.PruneConfig()
    if mode == "quick":
        return (
            latency.LatencyConfig(models=["resnet50", "mobilenet_v2"], ratios=[0.5],
                                  rounds={"resnet50": {1: 5, 32: 2}, "mobilenet_v2": {1: 7, 32: 3}}),
            training.TrainingConfig(epochs=8, deadline_epoch=7, round_to_runs=[8]),
            prune_time.PruneConfig(models=["resnet50"], rounds={"resnet50": 3}),
        )
    # smoke: the in-repo tiny models, seconds each
    return (
        latency.LatencyConfig(models=["resnet_small"], ratios=[0.5], round_to=[None, 8], batches=[1, 4],
                              rounds={"resnet_small": {1: 2, 4: 2}}, warmup=0),
        training.TrainingConfig(epochs=3, batch=64, widths=(8, 16, 32), input_size=16, train_samples=256,
                                deadline_epoch=2),
        prune_time.PruneConfig(models=["resnet_small"], rounds={"resnet_small": 2}, warmup=0),
    )


def environment(threads: int) -> dict:
    import epi_fast

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "threads": threads, "cpus": os.cpu_count(), "epi_fast_version": getattr(epi_fast, "__version__", "?"),
           "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}}
    for mod in ("torchvision", "torch_pruning"):
        try:
            env[mod] = getattr(__import__(mod), "__version__", "?")
        except ImportError:
            env[mod] = None
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        env["commit"] = (commit + ("+changes" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    return env


def main(argv=None) -> int:
    args = parse_args(argv)
    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    max_load = args.max_load if args.max_load is not None else (1.0 if mode == "full" else 0)
    threshold = max_load if max_load > 0 else None
    from .. import report as base

    device = torch.device("cpu")
    stem = base.stem(device, "costs" if mode == "full" else f"costs_{mode}")
    lat_cfg, train_cfg, prune_cfg = configs(mode)
    if args.epochs is not None:
        train_cfg.epochs = args.epochs
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results = {"machine": base.machine_name(device), "mode": mode, "environment": environment(args.threads),
                   "parts": {}}
        existing = args.out / f"{stem}.json"
        if existing.exists() and set(args.parts) != set(PARTS):
            try:
                old = json.loads(existing.read_text())
                kept = {k: v for k, v in old.get("parts", {}).items() if k not in args.parts}
                results["parts"].update(kept)
                if kept:
                    results["kept_from_earlier_run"] = sorted(kept)
            except (OSError, ValueError):
                pass
        runners = {"latency": (latency.run, lat_cfg), "training": (training.run, train_cfg),
                   "prune": (prune_time.run, prune_cfg)}
        for name in PARTS:
            if name not in args.parts:
                continue
            print(f"{name}:", flush=True)
            quiet = wait_for_quiet(threshold, args.max_wait)
            fn, cfg = runners[name]
            t0 = time.perf_counter()
            part = {"load": quiet, "commit": results["environment"].get("commit")}
            try:
                part["result"] = fn(cfg, log=lambda msg: print(msg, flush=True))
            except Exception as err:  # noqa: BLE001 - recorded, and the other parts still run
                part["error"] = f"{type(err).__name__}: {err}"
                traceback.print_exc()
            part["wall_s"] = time.perf_counter() - t0
            part["load_at_end"] = load_average()
            part["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
            results["parts"][name] = part
        results["targets"] = evaluate_targets(results)
        results["notes"] = notes(results)
        written = write_all(results, args.out, stem)
    finally:
        torch.set_num_threads(previous_threads)
    print()
    for t in results["targets"]:
        print(f"[{t['status']}] {t['target']}: {t['value']} (goal {t['goal']})")
    for path in written:
        print(f"wrote {path}")
    return 0


def notes(results: dict) -> list:
    out = []
    lat = results["parts"].get("latency", {}).get("result")
    if lat:
        for model, row in lat["models"].items():
            for key, v in row["variants"].items():
                if "error" in v:
                    out.append(f"A: {model} at {key} was not pruned: {v['error'][:300]}")
    tr = results["parts"].get("training", {}).get("result")
    if tr:
        for crit, r in tr["runs"].items():
            if r["prune_reason"] != "epi":
                out.append(f"B: with criterion {crit!r} EPI did not fire by itself (prune_reason "
                           f"{r['prune_reason']!r}, prune epoch {r['prune_epoch']})")
    return out


if __name__ == "__main__":
    sys.exit(main())
