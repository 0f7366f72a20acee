"""python -m benchmarks: time the fused kernels against plain PyTorch and Torch-Pruning.

Writes <machine>_<device>_<mode>.json / .md / .png under --out (atomically) and prints the
targets with PASS/FAIL. Targets are reported, never asserted: the exit status is 0 unless
the harness itself fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the short run (under 3 minutes on 2 CPU cores)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda if available, else cpu")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results folder")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--no-compile", action="store_true", help="GPU: leave out the torch.compile'd reference")
    p.add_argument("--models", default=None,
                   help="comma-separated subset of resnet18,resnet50,mobilenet_v2 (default: all)")
    p.add_argument("--mlp-params", default=None,
                   help="comma-separated sizes of the MLP workloads in parameters, e.g. 1e7,1e8, or 'none' "
                        "(default: the mode's sizes)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new workload, case or GPU measurement after this many seconds, and write "
                        "what was measured (the report lists what was left out)")
    return p.parse_args(argv)


def _sizes(text: str) -> list:
    if text.strip().lower() == "none":
        return []
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    from . import report, run

    mode = "quick" if args.quick else "full"
    cfg = run.config_for(mode, device, threads=args.threads, compile_ref=False if args.no_compile else None)
    if args.models:
        cfg.torchvision = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.mlp_params is not None:
        cfg.mlp_params = _sizes(args.mlp_params)
    if args.budget_s is not None:
        cfg.deadline = time.monotonic() + args.budget_s
    results = run.run(cfg)
    results["machine"] = report.machine_name(device)
    results["targets"] = report.evaluate_targets(results)
    stem = report.stem(device, mode)
    written = report.write_all(results, args.out, stem)
    print()
    for t in results["targets"]:
        print(f"[{t['status']}] {t['target']}: {t['value']} (goal {t['goal']})")
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
