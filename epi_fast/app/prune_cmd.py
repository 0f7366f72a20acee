"""`epi-fast prune`: prune a model once at a ratio and write the pruned model.

    epi-fast prune --model NAME --ratio R [--criterion C] [--input-size H W]
                   [--checkpoint PATH] --out FILE [--num-classes K] [--in-channels C] [--debug]

Prints a JSON summary (model, ratio, criterion, params/flops/macs before and after) on stdout.
Errors: one line on stderr, exit status 2 for usage errors, 1 for failures; a traceback only
with --debug. Also runs on its own: ``python -m epi_fast.cli_prune ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from .errors import one_line, positive_int, run_reporting_errors

PROG = "epi-fast prune"
CRITERIA = ("l2", "l1", "bn", "magnitude")
REDUCTIONS = ("sum", "mean", "max")


class PruneUsageError(Exception):
    """A problem with the command line itself (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    # One line on stderr, not argparse's usage block followed by sys.exit(2).
    def error(self, message: str) -> None:  # type: ignore[override]
        raise PruneUsageError(message)


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a ratio must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"a ratio must be in [0, 1), got {text}")
    return value


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model", required=True, help="in-repo model (resnet_small, mobilenet_small, densenet_small) or a torchvision classification model")
    p.add_argument("--ratio", required=True, type=_ratio, help="fraction of prunable group neurons to remove, in [0, 1)")
    p.add_argument("--criterion", default="l2", choices=CRITERIA, help="channel score (default %(default)s); magnitude = bn where a BatchNorm exists, l2 elsewhere")
    p.add_argument("--reduce", default="sum", choices=REDUCTIONS, help="how coupled channels combine into one group score (default %(default)s)")
    p.add_argument("--min-keep", type=positive_int, default=1, help="neurons kept in every group at least (default %(default)s)")
    p.add_argument("--input-size", nargs=2, type=positive_int, metavar=("H", "W"), default=None, help="example input size for tracing and FLOPs (default 8 8 for in-repo models, 224 224 otherwise)")
    p.add_argument("--num-classes", type=positive_int, default=10, help="(default %(default)s)")
    p.add_argument("--in-channels", type=positive_int, default=3, help="(default %(default)s)")
    p.add_argument("--checkpoint", default=None, help="weights to prune: a state_dict file, or a model.pt written by epi-fast")
    p.add_argument("--out", required=True, help="file to write the pruned model to (model.pt format)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `prune` on the `epi-fast` command's subparsers."""
    p = subparsers.add_parser(
        "prune",
        help="prune a model once at a ratio and save it",
        description="Prune a model's channels physically at a global ratio and save the pruned model.",
    )
    return _configure(p)


def build_parser() -> argparse.ArgumentParser:
    return _configure(_Parser(prog=PROG, description="Prune a model's channels physically at a global ratio and save the pruned model."))


def _load_checkpoint(path: str, model, arch):
    """Weights from a plain state_dict file (or one under "state_dict"/"model"), or a pruned
    model.pt (then the model is rebuilt to its saved shapes)."""
    import torch

    from ..surgery.serialize import FORMAT, load_pruned

    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from None
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return load_pruned(path, model=model)
    if isinstance(payload, dict):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(f"checkpoint {path} holds no state_dict")
    try:
        model.load_state_dict(payload, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()
        raise ValueError(f"checkpoint {path} does not fit {arch['name']}: {' '.join(s.strip() for s in first[:3])}") from None
    return model


def _prune(args) -> dict:
    import torch

    from ..models import MODEL_NAMES, build_model
    from ..surgery.serialize import save_pruned
    from ..surgery import prune

    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise PruneUsageError(f"--out: folder {out_dir} does not exist")
    if os.path.isdir(args.out):
        raise PruneUsageError(f"--out {args.out} is a folder; give a file name such as {os.path.join(args.out, 'model.pt')}")
    arch = {"name": args.model, "kwargs": {"num_classes": args.num_classes, "in_channels": args.in_channels}}
    try:
        model = build_model(args.model, **arch["kwargs"])
    except ValueError as err:
        if str(err).startswith("unknown model"):
            raise PruneUsageError(f"--model: {err}") from None
        raise
    if args.checkpoint:
        model = _load_checkpoint(args.checkpoint, model, arch)
    model.eval()
    h, w = args.input_size or ((8, 8) if args.model in MODEL_NAMES else (224, 224))
    x = torch.randn(1, args.in_channels, h, w)
    report = prune(model, args.ratio, x, criterion=args.criterion, min_keep=args.min_keep, reduce=args.reduce)
    path = save_pruned(model, args.out, arch=arch)
    summary = {"model": args.model, "ratio": args.ratio, "criterion": args.criterion, "input_size": [h, w]}
    for key in ("params", "flops", "macs"):
        summary[f"{key}_before"] = report[f"{key}_before"]
        summary[f"{key}_after"] = report[f"{key}_after"]
    summary.update(
        groups=report["groups"],
        groups_pruned=report["groups_pruned"],
        neurons_removed=report["neurons_removed"],
        channels_removed=report["channels_removed"],
        out=path,
    )
    return summary



def run(args) -> int:
    """Run `epi-fast prune` with parsed arguments; returns the exit status."""
    debug = bool(getattr(args, "debug", False))

    def prune_and_print() -> int:
        print(json.dumps(_prune(args), indent=2))
        return 0

    return run_reporting_errors(PROG, debug, prune_and_print, (PruneUsageError,))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except PruneUsageError as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except SystemExit as err:  # --help
        return int(err.code or 0)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
