"""`epi-fast prune`: prune a model once at a ratio and write the pruned model.

    epi-fast prune --model NAME --ratio R [--criterion C] [--reduce R] [--input-size H W]
                   [--checkpoint PATH] [--seed N] --out FILE [--overwrite]
                   [--num-classes K] [--in-channels C] [--debug]

Prints a JSON summary (model, weights, ratio, criterion, reduce, params/flops/macs before and
after) on stdout. Without --checkpoint the weights are random (seeded by --seed), and a line on
stderr says so. A checkpoint written by epi_fast records its architecture: then --model (and
--num-classes, --in-channels) may be left out, and must agree with it when given.

`--out` is never replaced unless --overwrite is given, and --overwrite replaces only a model
saved by epi_fast (`"format": "epi_fast.pruned/..."`); the file is written atomically, with
the permissions the umask gives.

Errors: one line on stderr, exit status 2 for usage errors, 1 for failures (a checkpoint that
is missing, unreadable or of another model), 130 / 143 when interrupted (SIGINT / SIGTERM); a
traceback only with --debug. Also runs on its own: ``python -m epi_fast.app.prune_cmd ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional, Sequence

from ..criteria import REDUCTIONS
from .._args import DEFAULT_MAX_LAYER_RATIO, TARGETS
from . import argtypes
from .errors import one_line, run_reporting_errors

PROG = "epi-fast prune"


class PruneUsageError(Exception):
    """A problem with the command line itself (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    # One line on stderr, not argparse's usage block followed by sys.exit(2).
    def error(self, message: str) -> None:  # type: ignore[override]
        raise PruneUsageError(message)


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model", default=None, help="in-repo model (resnet_small, mobilenet_small, densenet_small) or a torchvision classification model; optional with a --checkpoint that records its architecture (a model.pt written by epi-fast)")
    p.add_argument("--ratio", required=True, type=argtypes.prune_ratio, help="fraction of prunable group neurons to remove, in [0, 1)")
    p.add_argument("--criterion", default="l2", type=argtypes.weight_criterion, metavar="C",
                   help="channel score: l2 (default), l1, bn, magnitude (bn where a BatchNorm exists, l2 elsewhere), or "
                   "package.module:Name for a weight Criterion in your own code")
    p.add_argument("--reduce", default=None, choices=REDUCTIONS, help="how coupled channels combine into one group score (default: the criterion's, mean for these magnitude criteria)")
    p.add_argument("--min-keep", type=argtypes.positive_int, default=1, help="neurons kept in every group at least (default %(default)s)")
    p.add_argument("--target", choices=TARGETS, default="channels", help=argtypes.TARGET_HELP)
    p.add_argument("--max-layer-ratio", type=argtypes.max_layer_ratio, default=DEFAULT_MAX_LAYER_RATIO, metavar="R|NAME=R,...",
                   help=argtypes.MAX_LAYER_RATIO_HELP)
    p.add_argument("--round-to", type=argtypes.positive_int, default=None, metavar="N", help=argtypes.ROUND_TO_HELP)
    p.add_argument("--input-size", nargs=2, type=argtypes.positive_int, metavar=("H", "W"), default=None, help="example input size for tracing and FLOPs (default 8 8 for in-repo models, 224 224 otherwise)")
    p.add_argument("--num-classes", type=argtypes.positive_int, default=None, help="(default: the checkpoint's, else 10)")
    p.add_argument("--in-channels", type=argtypes.positive_int, default=None, help="(default: the checkpoint's, else 3)")
    p.add_argument("--checkpoint", default=None, help="weights to prune: a state_dict file (or one under 'state_dict'/'model'), or a model.pt written by epi-fast (or the run directory holding it); without it the weights are random")
    p.add_argument("--seed", type=int, default=0, help="seeds the random weights (without --checkpoint) and the example input (default %(default)s)")
    p.add_argument("--out", required=True, help="file to write the pruned model to (model.pt format)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is a model saved by epi_fast (any other file is refused)")
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


def _check_out(args) -> None:
    """--out must be a file name in an existing, writable folder; an existing file only with
    --overwrite, and only a model saved by epi_fast. Changes nothing."""
    from ..surgery.serialize import is_saved_model

    out = args.out
    out_dir = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out) and not os.path.islink(out):
        raise PruneUsageError(f"--out {out} is a folder; give a file name such as {os.path.join(out, 'model.pt')}")
    if not os.path.isdir(out_dir):
        raise PruneUsageError(f"--out: folder {out_dir} does not exist")
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise PruneUsageError(f"--out: folder {out_dir} is not writable")
    if not os.path.lexists(out):
        return
    if not args.overwrite:
        raise PruneUsageError(f"--out {out} already exists (pass --overwrite to replace it, if it is a model saved by epi_fast)")
    if os.path.islink(out):
        raise PruneUsageError(f"--out {out} is a symbolic link; --overwrite replaces only a model file saved by epi_fast, so it is left untouched")
    if not is_saved_model(out):
        raise PruneUsageError(
            f"--out {out} is not a model saved by epi_fast (no \"format\": \"epi_fast.pruned/...\" inside); "
            "--overwrite replaces only such a file, so it is left untouched"
        )


def _resolve_checkpoint(path: str) -> str:
    if os.path.isdir(path):
        inside = os.path.join(path, "model.pt")
        if os.path.isfile(inside):
            return inside  # a run directory of epi-fast train
        raise FileNotFoundError(f"checkpoint {path} is a directory (and holds no model.pt)")
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def _read_checkpoint(path: str) -> Any:
    from ..surgery.serialize import TorchFileError, read_torch_file

    try:
        return read_torch_file(path)
    except TorchFileError as err:
        raise ValueError(f"checkpoint {err}") from None


def _saved_arch(payload: Any) -> Optional[dict]:
    """The architecture a model.pt of epi_fast records, else None."""
    from ..surgery.serialize import FORMAT_PREFIX

    if isinstance(payload, dict) and str(payload.get("format", "")).startswith(FORMAT_PREFIX):
        arch = payload.get("arch")
        if isinstance(arch, dict) and isinstance(arch.get("name"), str):
            return {"name": arch["name"], "kwargs": dict(arch.get("kwargs") or {})}
    return None


def _architecture(args, payload: Any) -> dict:
    """{"name", "kwargs"} from the command line and the checkpoint; a disagreement is a usage
    error naming both."""
    saved = _saved_arch(payload)
    if saved is None:
        if args.model is None:
            where = "the checkpoint records no architecture" if args.checkpoint else "or a --checkpoint that records its architecture"
            raise PruneUsageError(f"--model is required ({where})")
        kwargs = {"num_classes": args.num_classes or 10, "in_channels": args.in_channels or 3}
        return {"name": args.model, "kwargs": kwargs}
    if args.model is not None and args.model != saved["name"]:
        raise PruneUsageError(f"--model {args.model} conflicts with the checkpoint, which holds a {saved['name']} (leave --model out)")
    kwargs = saved["kwargs"]
    for option, key, given in (("--num-classes", "num_classes", args.num_classes), ("--in-channels", "in_channels", args.in_channels)):
        if given is not None and key in kwargs and kwargs[key] != given:
            raise PruneUsageError(f"{option} {given} conflicts with the checkpoint's {key} = {kwargs[key]} (leave {option} out)")
        if given is not None:
            kwargs[key] = given
    return saved


def _load_weights(path: str, payload: Any, model, name: str):
    """The checkpoint's weights in `model`: a model.pt of epi_fast (rebuilt to its saved shapes)
    or a plain state_dict (or one under "state_dict"/"model")."""
    import torch

    from ..surgery.serialize import FORMAT_PREFIX, describe_mismatch, load_pruned

    if isinstance(payload, dict) and str(payload.get("format", "")).startswith(FORMAT_PREFIX):
        return load_pruned(path, model=model)
    if isinstance(payload, dict):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        kind = type(payload).__name__ if not isinstance(payload, dict) else "a dict that is not a state_dict"
        raise ValueError(f"checkpoint {path} holds no state_dict ({kind})")
    try:
        model.load_state_dict(payload, strict=True)
    except RuntimeError:
        raise ValueError(f"checkpoint {path} does not fit {name}: {describe_mismatch(model, payload)}") from None
    return model


def _prune(args) -> dict:
    import torch

    from ..criteria import get_criterion
    from ..models import MODEL_NAMES, VIT_MODEL_NAMES, build_model
    from ..surgery.serialize import save_pruned
    from ..surgery import prune

    if args.model is None and not args.checkpoint:
        raise PruneUsageError("--model is required (or a --checkpoint that records its architecture)")
    _check_out(args)
    payload = None
    checkpoint = None
    if args.checkpoint:
        checkpoint = _resolve_checkpoint(args.checkpoint)
        payload = _read_checkpoint(checkpoint)
    arch = _architecture(args, payload)
    torch.manual_seed(args.seed)
    try:
        model = build_model(arch["name"], **arch["kwargs"])
    except ValueError as err:
        if str(err).startswith(("unknown model", "unknown timm model", "model 'timm/")):
            raise PruneUsageError(f"--model: {err}") from None
        raise
    if checkpoint is None:
        weights = f"random (seed {args.seed})"
        print(f"{PROG}: no --checkpoint: pruning randomly initialised weights (seed {args.seed}); "
              "pass --checkpoint FILE to prune trained ones", file=sys.stderr)
    else:
        weights = f"checkpoint {args.checkpoint}"
        model = _load_weights(checkpoint, payload, model, arch["name"])
    model.eval()
    in_channels = int(arch["kwargs"].get("in_channels", 3))
    h, w = args.input_size or ((8, 8) if arch["name"] in MODEL_NAMES + VIT_MODEL_NAMES else (224, 224))
    x = torch.randn(1, in_channels, h, w, generator=torch.Generator().manual_seed(args.seed))
    # reduce None: the criterion's default ("mean" for the magnitude criteria accepted here).
    # A ratio these limits cannot reach on this model is a failure (exit 1), as before.
    report = prune(model, args.ratio, x, criterion=args.criterion, min_keep=args.min_keep, reduce=args.reduce,
                   target=args.target, max_layer_ratio=args.max_layer_ratio, round_to=args.round_to)
    _check_out(args)  # again: the file may have appeared meanwhile
    path = save_pruned(model, args.out, arch=arch)
    args.written = path
    summary = {
        "model": arch["name"], "weights": weights, "ratio": args.ratio, "criterion": args.criterion,
        "reduce": get_criterion(args.criterion).reduction(args.reduce), "input_size": [h, w],
        "target": report["target"], "requested": report["requested"], "achieved": report["achieved"],
        "max_layer_ratio": report["max_layer_ratio"], "round_to": report["round_to"],
    }
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
        try:
            summary = _prune(args)
        except KeyboardInterrupt as e:
            if not getattr(args, "written", None):  # an atomic write: the old file, or none, is there
                e.epi_fast_detail = f"{args.out} was not written"  # type: ignore[attr-defined]
            raise
        print(json.dumps(summary, indent=2))
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
