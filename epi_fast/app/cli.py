"""The `epi-fast` command: `train` (EPI-guided training, this file) and `prune` (prune_cmd).

    epi-fast train --out runs/digits            # digits, resnet_small, ratio 0.5, magnitude
    epi-fast train --data /data/cifar-10-batches-py --criterion gradient --epochs 60 --out runs/c10
    epi-fast train --model vit_tiny --out runs/vit   # a small vision transformer on the digits
    epi-fast train --task lm --out runs/lm      # a byte-level LLaMA decoder on pydoc_data.topics (lm.py)
    epi-fast train --task detection --out runs/det   # SSD on ResNet-18 over digit canvases (detect.py)

The options whose defaults depend on the task (and the optimizer) are None in the parser and
filled in by `training.fill_defaults` before anything else is checked.

Exit status: 0 on success, 2 for a usage error (bad option, missing data, --out exists), 1 for a
failure while running, 130 on Ctrl-C and 143 on SIGTERM. Errors are one line on stderr;
`--debug` adds the traceback.

The run directory (`--out`) is created, with its marker file (`rundir.MARKER`), once the data,
the model and the pruner are ready and before the first epoch; every file in it is written
atomically, metrics.jsonl and summary.json after every epoch, so a run stopped at any point
leaves a consistent directory whose summary.json says "running" (killed), "interrupted",
"failed" or "completed". Nothing is written beside it. `--overwrite` replaces only a run
directory this tool wrote (see rundir.py).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from .._args import DEFAULT_MAX_LAYER_RATIO, TARGETS
from . import argtypes
from .dist_job import DEFAULT_TIMEOUT as DIST_TIMEOUT, KINDS as DIST_KINDS
from .errors import one_line, report_interrupt, run_reporting_errors, sigterm_raises
from .training import (  # noqa: F401 (the protocol imports _lr_lambda from here)
    ADAMW_BETAS,
    ADAMW_LR,
    ADAMW_WEIGHT_DECAY,
    OPTIMIZERS,
    TASK_DEFAULTS,
    TASKS,
    TRAIN_DEFAULTS,
    lr_lambda as _lr_lambda,
    seed_everything as _seed_everything,
    task_defaults,
)

__all__ = ["main", "build_parser", "UsageError", "TRAIN_DEFAULTS", "SUMMARY_FORMAT"]

# The layout of summary.json; the number changes only when a reader of the old one could not
# read the new files (keys are only ever added).
SUMMARY_FORMAT = "epi_fast.summary/1"


class UsageError(Exception):
    """A problem with what the user asked for (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the whole usage block and calls sys.exit(2); the contract is one line on
    # stderr, so errors are raised and reported by main() instead.
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    from .data import FORMATS
    from ..criteria import REDUCTIONS
    from ..policy.pruner import CRITERIA

    d = TASK_DEFAULTS["classify"]
    p = subparsers.add_parser(
        "train",
        help="train with the Early Pruning Indicator and prune when it fires",
        description="Train a network, track the EPI of its pruned sub-network each epoch, prune "
        "structurally when EPI fires (or at --deadline-epoch), and finish training the smaller network.",
    )
    lm = TASK_DEFAULTS["lm"]
    det = TASK_DEFAULTS["detection"]
    g = p.add_argument_group("data and model")
    g.add_argument("--task", choices=TASKS, default="classify",
                   help="classify: image classification (default); lm: a byte-level LLaMA decoder trained as a causal "
                   "language model (docs/TRANSFORMERS_JOBS.md); detection: a torchvision detector with a ResNet backbone "
                   "(docs/DETECTION.md)")
    g.add_argument("--data", default=None,
                   help=f"classify: '{d['data']}' (embedded, default), an ImageFolder directory, or a CIFAR-10 python batches "
                   f"directory; lm: '{lm['data']}' (the text of Python's pydoc_data.topics, default) or a UTF-8 text file; "
                   f"detection: '{det['data']}' (embedded, default) or a COCO-format folder")
    g.add_argument("--data-format", default="auto", choices=FORMATS, help="format of --data (default: detected; classify only)")
    g.add_argument("--input-size", type=argtypes.positive_int, nargs="+", metavar="N",
                   help="ImageFolder image size: H [W] (default 32); detection: the detector's input side S (default: the "
                   "images' own side)")
    g.add_argument("--model", default=None,
                   help=f"architecture name for epi_fast.models.build_model (default {d['model']}; vit_tiny is a small "
                   f"vision transformer; lm: {lm['model']}, or llama_micro; detection: {det['model']}, ssd_resnet34 or "
                   "retinanet_resnet18_fpn)")
    g = p.add_argument_group("pruning policy")
    g.add_argument("--ratio", type=argtypes.train_ratio, default=None,
                   help=f"target prune ratio in (0, 1) (default {d['ratio']}; detection: {det['ratio']})")
    g.add_argument("--criterion", default=d["criterion"], type=argtypes.criterion, metavar="C",
                   help=f"neuron importance: {', '.join(CRITERIA)}, or package.module:Name for a Criterion in your own "
                   "code (default %(default)s)")
    g.add_argument("--window", type=argtypes.positive_int, default=None,
                   help=f"EPI window r (default {d['window']}; detection: the schedule's, round(epochs * 50 / 800), at least 2)")
    g.add_argument("--tau", type=argtypes.tau, default=None, help="EPI threshold (default 0.944 for gradient/taylor, 0.983 otherwise)")
    g.add_argument("--patience", type=argtypes.non_negative_int, default=d["patience"], help="previous EPI values a firing EPI must not be below (default %(default)s)")
    g.add_argument("--track-ratios", type=argtypes.ratio_list, default=[], metavar="R[,R...]", help="more ratios whose EPI curves are recorded, e.g. 0.3,0.7")
    g.add_argument("--deadline-epoch", type=argtypes.positive_int, default=None, help="prune after this epoch if EPI has not fired")
    g.add_argument(
        "--group-reduce", default=None, choices=REDUCTIONS,
        help="how coupled channels (residual adds) combine into one neuron's score (default: sum for "
        "gradient/taylor, mean for magnitude criteria)",
    )
    g.add_argument("--min-keep", type=argtypes.positive_int, default=1, help="channels every group keeps (default %(default)s)")
    g.add_argument("--target", choices=TARGETS, default="channels", help=argtypes.TARGET_HELP)
    g.add_argument("--max-layer-ratio", type=argtypes.max_layer_ratio, default=DEFAULT_MAX_LAYER_RATIO, metavar="R|NAME=R,...",
                   help=argtypes.MAX_LAYER_RATIO_HELP)
    g.add_argument("--round-to", type=argtypes.positive_int, default=None, metavar="N", help=argtypes.ROUND_TO_HELP)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=argtypes.positive_int, default=None, help=f"epochs in total (default {d['epochs']}; lm: {lm['epochs']})")
    g.add_argument("--steps-per-epoch", type=argtypes.positive_int, default=None,
                   help=f"lm: optimizer steps per epoch, each on --batch-size random windows of the training text (default {lm['steps_per_epoch']})")
    g.add_argument("--seq-len", type=argtypes.positive_int, default=None,
                   help=f"lm: tokens per training and validation window (default {lm['seq_len']})")
    g.add_argument("--batch-size", type=argtypes.positive_int, default=None, help=f"(default {d['batch_size']}; lm: {lm['batch_size']} windows)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help=f"sgd (Nesterov momentum) or adamw (betas {ADAMW_BETAS[0]:g}, {ADAMW_BETAS[1]:g}); default {d['optimizer']}, "
                   f"lm: {lm['optimizer']}")
    g.add_argument("--lr", type=argtypes.positive_float, default=None,
                   help=f"peak learning rate, linear warm-up then cosine decay per step (default {d['lr']:g}; adamw {ADAMW_LR:g}; "
                   f"lm: {lm['lr']:g})")
    g.add_argument("--momentum", type=argtypes.non_negative_float, default=None, help=f"SGD's momentum (default {d['momentum']:g})")
    g.add_argument("--weight-decay", type=argtypes.non_negative_float, default=None,
                   help=f"(default {d['weight_decay']:g}; adamw {ADAMW_WEIGHT_DECAY:g}; lm: {lm['weight_decay']:g}); never on biases and norm scales")
    g.add_argument("--warmup-epochs", type=argtypes.non_negative_int, default=None, help=f"linear learning-rate warm-up (default {d['warmup_epochs']})")
    g.add_argument("--amp", action="store_true", help="mixed precision: float16 + GradScaler on CUDA, bfloat16 on CPU")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default %(default)s)")
    g.add_argument("--threads", type=argtypes.positive_int, default=None, help="CPU threads for torch (default: 1 for digits, lm and detection, else the cores this process may use)")
    g.add_argument("--workers", type=argtypes.non_negative_int, default=0, help="DataLoader worker processes (default %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seeds the split, the initialisation and the batch order (default %(default)s)")
    g.add_argument("--distributed", choices=DIST_KINDS, default=None,
                   help="train on the processes torchrun starts (torchrun --nproc-per-node N -m epi_fast train --distributed "
                   "ddp ...): ddp (DistributedDataParallel) or fsdp (fully_shard per block); --batch-size stays the global "
                   "batch, rank 0 writes the run directory (docs/DISTRIBUTED.md)")
    g.add_argument("--dist-timeout", type=argtypes.positive_float, default=DIST_TIMEOUT, metavar="SECONDS",
                   help="with --distributed: how long a collective waits for the other ranks before the run fails "
                   "(default %(default)g)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None,
                   help="run directory to create (summary.json, metrics.jsonl, checkpoint.pt, epi_curve.png, model.pt; lm: also "
                   "perplexity.png; detection: also map.png); required unless --resume")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the stopped run in RUN_DIR from its checkpoint.pt, with the arguments it was started with "
                   "(only --no-progress, --threads and --debug may be given with it)")
    g.add_argument("--overwrite", action="store_true", help="replace --out if it is an earlier run directory of this tool (it carries the .epi-fast-run marker and nothing else but the tool's files); anything else is refused")
    g.add_argument("--no-progress", action="store_true", help="no per-epoch progress bar")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run_train)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="epi-fast", description="Decide when to prune with the Early Pruning Indicator, and prune fast.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    add_train_parser(sub)
    try:
        cli_prune = importlib.import_module("epi_fast.app.prune_cmd")
    except ModuleNotFoundError as e:
        # Only a missing module is tolerated (a checkout without the prune command); an error
        # inside it must surface.
        if e.name != "epi_fast.app.prune_cmd":
            raise
    else:
        cli_prune.add_parser(sub)
    return parser


# -- training -------------------------------------------------------------------------------------

def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_group_reduce(criterion: str) -> str:
    """The train command's group score combination per criterion.

    Taylor scores estimate the loss change of removing a neuron, and removing a coupled neuron
    removes all its member channels, so their scores add up (Molchanov et al. 2019). Magnitudes
    do not add that way: summed, a residual neuron shared by k layers outscores every lone
    channel about k-fold, and on resnet_small ratio 0.5 then cuts every block's inner conv to one
    channel from initialisation on (EPI "fires" at epoch 5 on a structure that never moved).
    The mean keeps the ranking about the magnitudes.
    """
    from ..criteria import get_criterion

    return get_criterion(criterion).reduction(None)


def _default_threads(data: str, task: str = "classify") -> int:
    # The digits network's convolutions are a few microseconds of work each: splitting them
    # across threads costs more in synchronisation than it gains, and when another process
    # holds a core, OpenMP's spinning threads slow a step down 5-40x (measured on 2 cores:
    # 0.5 s per epoch on 1 thread, 5-37 s on 2 under load). Real images get every core.
    # The language-model task's matrix products are larger, but measured there the same way
    # (llama_tiny, 16 windows of 128 tokens): 160 ms per step on one thread, 100 ms on two when
    # both cores are free, 1.4 s on two while another process ran. The detection task (SSD on
    # ResNet-18 over 64-pixel canvases) takes one thread for the same reason, and so that its
    # default run is the one --resume reproduces exactly.
    return 1 if data == "digits" or task in ("lm", "detection") else _available_cores()


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _validate_train(args, check_dir: bool = True) -> None:
    """Every check that can fail before any work starts: these are usage errors (exit 2).
    check_dir: whether to check --out (in a distributed run rank 0 alone does)."""
    from .rundir import RunDirRefused, check_out
    from .training import fill_defaults

    if args.out is None:
        raise UsageError("the following arguments are required: --out (or --resume RUN_DIR)")
    if check_dir:
        try:
            check_out(args.out, args.overwrite)
        except RunDirRefused as e:
            raise UsageError(str(e)) from None
    _check_task_options(args)
    fill_defaults(args)
    validate_filled(args)


def validate_filled(args) -> None:
    """The checks of `_validate_train` on arguments with their defaults filled in (what a
    `--resume` reads back from summary.json is checked with these again: the data may have
    moved, CUDA may be missing)."""
    import torch

    from .data import detect_format
    from ..models import LM_MODEL_NAMES
    from ..policy.pruner import default_tau

    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: CUDA is not available on this machine")
    elif args.device != "cpu":
        raise UsageError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if getattr(args, "distributed", None) is not None:
        _check_distributed(args)
    if args.deadline_epoch is not None and args.deadline_epoch > args.epochs:
        raise UsageError(f"--deadline-epoch {args.deadline_epoch} is after the last epoch ({args.epochs})")
    if args.warmup_epochs > args.epochs:
        raise UsageError(f"--warmup-epochs {args.warmup_epochs} is more than --epochs {args.epochs}")
    if args.tau is None:
        args.tau = default_tau(args.criterion)
    if args.group_reduce is None:
        args.group_reduce = default_group_reduce(args.criterion)
    if args.task == "lm":
        from .lm import validate_lm

        validate_lm(args)
        return
    if args.task == "detection":
        from .detect import validate_detection

        validate_detection(args)
        return
    from ..detection.models import DETECTOR_NAMES

    if args.model in LM_MODEL_NAMES:
        raise UsageError(f"--model {args.model} is a language model: use it with --task lm")
    if args.model in DETECTOR_NAMES:
        raise UsageError(f"--model {args.model} is a detector: use it with --task detection")
    if args.input_size is not None and len(args.input_size) > 2:
        raise UsageError(f"--input-size takes H or H W, got {len(args.input_size)} numbers")
    if args.data_format == "auto":
        try:
            detect_format(args.data)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--data: {e}") from None
    elif args.data_format != "digits" and not os.path.isdir(args.data):
        raise UsageError(f"--data {args.data}: no such directory")
    if os.path.isdir(args.data) and _inside(args.out, args.data):
        raise UsageError(f"--out {args.out} is inside --data {args.data}: the run would become part of the data set")


def _check_distributed(args) -> None:
    """The usage errors of --distributed that need no process group."""
    from .dist_job import launched_world_size, per_rank_batch

    if args.device not in ("cpu", "cuda"):
        raise UsageError(f"--distributed takes --device cpu or cuda (each rank uses the GPU of its LOCAL_RANK), not "
                         f"{args.device!r}")
    world = launched_world_size()
    if world is not None:
        per_rank_batch(args.batch_size, world, UsageError)
    if args.distributed == "fsdp" and args.amp and args.device == "cuda":
        raise UsageError("--amp with --distributed fsdp on CUDA is not supported: float16 loss scaling would have to skip "
                         "the same steps on every rank; train in float32, or with --distributed ddp")


def _check_task_options(args) -> None:
    """Options that the chosen task or optimizer does not use are refused (before the defaults
    are filled in, so that only what the user gave is looked at)."""
    if args.task != "lm":
        for option, value in (("--steps-per-epoch", args.steps_per_epoch), ("--seq-len", args.seq_len)):
            if value is not None:
                raise UsageError(f"{option} is an option of --task lm (an epoch of --task {args.task} is one pass over "
                                 "the data)")
        if args.task == "detection" and args.data_format != "auto":
            raise UsageError("--data-format is an option of --task classify (--task detection reads the embedded digit "
                             "canvases or a COCO-format folder)")
    else:
        for option, given in (("--data-format", args.data_format != "auto"), ("--input-size", args.input_size is not None),
                              ("--workers", args.workers != 0)):
            if given:
                raise UsageError(f"{option} is an option of --task classify (--task lm reads one text file, or the "
                                 "built-in text, and samples its windows itself)")
    optimizer = args.optimizer or task_defaults(args.task)["optimizer"]
    if optimizer != "sgd" and args.momentum is not None:
        raise UsageError(f"--momentum is SGD's; with --optimizer {optimizer} the betas are fixed at "
                         f"{ADAMW_BETAS[0]:g}, {ADAMW_BETAS[1]:g}")


def _evaluate(model, loader, device, amp_dtype) -> float:
    import torch

    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            correct += int((model(x).argmax(1) == y).sum())
            total += y.numel()
    model.train(was_training)
    return correct / max(1, total)


def _evaluate_counts(module, loader, device, amp_dtype, job, stand_in):
    """(correct, total) over the test set, each rank counting its share (`loader`), summed over
    the ranks. Every rank runs as many forwards as the rank with the most batches (FSDP's
    forward is a collective): the missing ones on `stand_in`, uncounted."""
    import torch

    from .dist_job import max_over_ranks

    most = max_over_ranks(job, len(loader))
    was_training = module.training
    module.eval()
    correct = total = done = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            correct += int((module(x).argmax(1) == y).sum())
            total += y.numel()
            done += 1
        for _ in range(most - done):
            module(stand_in)
    module.train(was_training)
    c, t = job.all_sum([correct, total])
    return int(c), int(t)


def _rank_records(ranks: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """summary.json's distributed.ranks: every rank's prune epoch, reason and parameter count,
    and whether its kept counts and EPI values are rank 0's."""
    first = ranks[0]
    return [{"rank": r["rank"], "prune_epoch": r["prune_epoch"], "prune_reason": r["prune_reason"], "params": r["params"],
             "kept_counts_as_rank0": r["kept_counts"] == first["kept_counts"],
             "epi_as_rank0": r["epi_tracked"] == first["epi_tracked"]} for r in ranks]


def _ratio_key(r: float) -> str:
    from .report import summary_ratio_key

    return summary_ratio_key(r)


def _padded(values: Sequence[Optional[float]], length: int) -> List[Optional[float]]:
    return list(values)[:length] + [None] * max(0, length - len(values))


def make_pruner(args, model, optimizer, example, state=None):
    """The run's `EPIPruner` around `model` (the dense one; or on --resume after the prune the
    pruned one, with the saved `state`)."""
    from ..policy.pruner import EPIPruner

    try:
        return EPIPruner(
            model, optimizer, args.ratio, example, criterion=args.criterion, window=args.window, tau=args.tau,
            patience=args.patience, track_ratios=args.track_ratios, deadline_epoch=args.deadline_epoch,
            min_keep=args.min_keep, reduce=args.group_reduce, target=args.target,
            max_layer_ratio=args.max_layer_ratio, round_to=args.round_to, state=state,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


class _Setup:
    """Everything a run needs, built before anything is written: a failure here leaves --out
    (and an earlier run there) as it was.

    job: the `dist_job.DistJob` of a --distributed run (None: one process). narrow: called on
    the dense model before it is wrapped (a resumed FSDP run narrows it to the checkpoint's
    shapes there, since a sharded model cannot be narrowed). pruner_state: a pruner state saved
    after the prune, for a pruner built around the narrowed network."""

    def __init__(self, args, job=None, narrow=None, pruner_state=None) -> None:
        import torch
        from torch.utils.data import DataLoader

        from .data import DataFormatError, load_dataset
        from .training import make_optimizer, make_scheduler
        from ..models import VIT_MODEL_NAMES, build_model

        self.job = job
        torch.set_num_threads(args.threads or _default_threads(args.data, args.task))
        _seed_everything(args.seed)
        self.device = device = job.device if job is not None else torch.device(args.device)
        try:
            self.data = data = load_dataset(args.data, args.data_format, args.input_size, seed=args.seed)
        except DataFormatError:
            raise  # the files are there but broken: a failure, not a usage error
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--data: {e}") from None

        self.model_kwargs = {"num_classes": data.num_classes, "in_channels": data.in_channels}
        if args.model in VIT_MODEL_NAMES:
            h, w = data.input_size
            if h != w:
                raise UsageError(f"--model {args.model} takes square images, got --input-size {h} {w}")
            if h != 8:
                self.model_kwargs["image_size"] = h
        try:
            model = build_model(args.model, **self.model_kwargs)
        except (KeyError, ValueError) as e:
            raise UsageError(f"--model: {e.args[0] if e.args else e}") from None
        if narrow is not None:
            narrow(model)
        model = model.to(device)

        gen = torch.Generator().manual_seed(args.seed)
        pin = device.type == "cuda"
        self.train_sampler = None
        test_set = data.test
        if job is None:
            batch = args.batch_size
            self.train_loader = DataLoader(
                data.train, batch_size=batch, shuffle=True, drop_last=len(data.train) > batch,
                generator=gen, num_workers=args.workers, pin_memory=pin,
            )
        else:
            from torch.utils.data import Subset

            from .dist_job import GlobalBatchShare, per_rank_batch, shard_indices

            # The global batch is --batch-size: each rank takes its share of every step, and the
            # steps' batches are the 1-process run's (same seed, same order).
            batch = per_rank_batch(args.batch_size, job.world_size, UsageError)
            self.train_sampler = GlobalBatchShare(len(data.train), args.batch_size, job.rank, job.world_size, gen)
            self.train_loader = DataLoader(
                data.train, batch_size=self.train_sampler.share, sampler=self.train_sampler, drop_last=False,
                generator=gen, num_workers=args.workers, pin_memory=pin,
            )
            test_set = Subset(data.test, shard_indices(len(data.test), job))
        self.test_loader = DataLoader(test_set, batch_size=max(256, args.batch_size), num_workers=args.workers, pin_memory=pin)
        if len(self.train_loader) == 0:
            raise UsageError(f"--batch-size {args.batch_size}: the training set has only {len(data.train)} samples")

        # DDP, or FSDP's shards, before the optimizer: under FSDP it must hold the sharded
        # parameters. (DDP's wrapper holds the very parameters of the module.)
        self.model = job.wrap(model) if job is not None else model
        # SGD or AdamW without weight decay on norm scales and biases; warm-up then cosine per step.
        self.optimizer = make_optimizer(self.model, args.lr, args.momentum, args.weight_decay, args.optimizer)
        self.steps_per_epoch = len(self.train_loader)
        self.scheduler = make_scheduler(self.optimizer, args.epochs, self.steps_per_epoch, args.warmup_epochs)

        self.amp_dtype = None
        self.scaler = None
        if args.amp:
            self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
            # bfloat16 has float32's range: no loss scaling needed on the CPU.
            self.scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None

        self.example = data.example_input(1).to(device)
        self.data_generator = gen  # fixes the batch order: part of a checkpoint
        self.pruner = make_pruner(args, self.model, self.optimizer, self.example, state=pruner_state)
        # Sizes of the dense network, counted once (the pruner's report recounts them while
        # unpruned; after the prune it holds both).
        self.dense_report = self.pruner.report() if not self.pruner.pruned else None


class _Run:
    """One training run writing into its run directory: metrics.jsonl and summary.json after
    every epoch (atomically, so an interrupted run leaves a consistent folder), model.pt and
    epi_curve.png at the end, then summary.json with "status": "completed"."""

    def __init__(self, args, setup: _Setup) -> None:
        from .rundir import process_entry

        self.args = args
        self.s = setup
        self.job = setup.job
        # In a distributed run rank 0 alone writes the run directory and prints.
        self.writes = self.job is None or self.job.is_main
        self.outdir = ""  # set by run_train once the directory exists
        self.process = process_entry()
        self.metrics: List[Dict[str, Any]] = []
        self.warnings: List[str] = []
        self.train_seconds = 0.0
        self._t_start: Optional[float] = None
        self.working_directory = os.getcwd()
        self.resumed_after_epochs: List[int] = []

    @property
    def epochs_completed(self) -> int:
        return len(self.metrics)

    def _path(self, name: str) -> str:
        return os.path.join(self.outdir, name)

    def _epi_tracked(self) -> Dict[str, List[Optional[float]]]:
        T = self.args.epochs
        return {_ratio_key(r): _padded(h, T + 1) for r, h in self.s.pruner.epi_history.items()}

    def summary(self, status: str, **extra: Any) -> Dict[str, Any]:
        import torch

        from .._version import __version__

        args, pruner = self.args, self.s.pruner
        rep_ = pruner.report() if pruner.pruned else self.s.dense_report
        T = args.epochs
        epi_tracked = self._epi_tracked()
        out: Dict[str, Any] = {
            "format": SUMMARY_FORMAT,
            "epi_fast_version": __version__,
            "status": status,
            "epochs_completed": self.epochs_completed,
            "process": self.process,
        }
        out.update(extra)
        out.update({
            "task": args.task,
            "data": self.s.data.name,
            "model": args.model,
            "ratio": args.ratio,
            "criterion": args.criterion,
            "window": args.window,
            "tau": args.tau,
            "patience": args.patience,
            "track_ratios": sorted(pruner.ratios),
            "deadline_epoch": args.deadline_epoch,
            "epochs": T,
            "prune_epoch": pruner.prune_epoch,
            "prune_reason": pruner.prune_reason,
            "epi": epi_tracked[_ratio_key(args.ratio)],
            "epi_tracked": epi_tracked,
            "target": args.target,
            "requested": args.ratio,
            "achieved": rep_.get("achieved"),
            "max_layer_ratio": args.max_layer_ratio,
            "round_to": args.round_to,
            "params_before": rep_["params_before"],
            "params_after": rep_["params_after"],
            "flops_before": rep_["flops_before"],
            "flops_after": rep_["flops_after"],
            "macs_before": rep_.get("macs_before"),
            "macs_after": rep_.get("macs_after"),
            "kept_counts": pruner.kept_counts,
            "top1_final": self.metrics[-1].get("test_top1") if self.metrics else None,
            "train_seconds": self.train_seconds,
            "skipped_steps": pruner.skipped_steps,
            "warnings": list(self.warnings),
            "seed": args.seed,
            "batch_size": args.batch_size,
            "optimizer": args.optimizer,
            "lr": args.lr,
            "amp": bool(args.amp),
            "device": str(self.s.device),
            "threads": torch.get_num_threads(),
            "group_reduce": args.group_reduce,
            "distributed": None if self.job is None else {
                **self.job.describe(), "per_rank_batch": args.batch_size // self.job.world_size},
            # The command line as parsed (defaults filled in), for a later --resume.
            "arguments": {k: v for k, v in sorted(vars(args).items()) if k not in ("func", "command", "debug", "resume")},
            # Where relative paths among the arguments (--data) were given from.
            "working_directory": self.working_directory,
            # The epochs completed when each --resume of this run started.
            "resumed_after_epochs": list(self.resumed_after_epochs),
        })
        out.update(self.task_summary())
        return out

    def task_summary(self) -> Dict[str, Any]:
        """Keys of summary.json that only this task has."""
        return {}

    def write_progress(self, status: str = "running", **extra: Any) -> None:
        from . import report as rep

        if not self.writes:
            return
        rep.write_jsonl(self._path("metrics.jsonl"), self.metrics)
        rep.write_json(self._path("summary.json"), self.summary(status, **extra))

    # Gradients clipped to this norm before the step (None: not clipped); a task may set it.
    clip_norm: Optional[float] = None

    def _step(self, loss) -> None:
        """One optimizer step: backward (scaled under AMP on CUDA), the pruner's accumulate on
        unscaled gradients, clipping, the step, the schedule."""
        import torch

        s = self.s
        optimizer, scaler = s.optimizer, s.scaler
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        s.pruner.accumulate()
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(s.model.parameters(), self.clip_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        s.scheduler.step()

    def _epoch(self, epoch: int) -> None:
        import torch
        import torch.nn.functional as F
        from tqdm import tqdm

        from ..policy.decision import late_prune_message

        args, s = self.args, self.s
        model, optimizer, pruner, device, amp_dtype = s.model, s.optimizer, s.pruner, s.device, s.amp_dtype
        t_epoch = time.perf_counter()
        model.train()
        if s.train_sampler is not None:
            s.train_sampler.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        bar = tqdm(total=s.steps_per_epoch, desc=f"epoch {epoch}/{args.epochs}", leave=False, file=sys.stderr,
                   disable=args.no_progress or not self.writes, dynamic_ncols=True)
        try:
            for x, y in s.train_loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = model(x)
                    loss = F.cross_entropy(logits, y)
                self._step(loss)
                # Device-side sums: no host sync per step.
                loss_sum += loss.detach().float() * y.numel()
                correct += (logits.detach().argmax(1) == y).sum()
                seen += y.numel()
                bar.update(1)
        finally:
            bar.close()  # also on Ctrl-C: no half-drawn bar before the last line
        loss_total, correct_total, seen = self.summed(float(loss_sum), int(correct), seen)
        lr_now = optimizer.param_groups[0]["lr"]
        pruned_now = pruner.epoch_end()
        if pruned_now:
            model = self.after_prune()
        test_top1 = self.evaluate(model)
        epi_now = {_ratio_key(r): (h[epoch] if len(h) > epoch else None) for r, h in pruner.epi_history.items()}
        params = sum(p.numel() for p in model.parameters())
        record = {
            "epoch": epoch,
            "lr": lr_now,
            "loss": loss_total / max(1, seen),
            "train_top1": int(correct_total) / max(1, seen),
            "test_top1": test_top1,
            "epi": epi_now,
            "pruned": pruner.pruned,
            # In this epoch test_top1 is measured right after the prune, before any training of
            # the smaller network; loss and train_top1 are the dense network's.
            "pruned_now": pruned_now,
            "params": params,
            "seconds": time.perf_counter() - t_epoch,
        }
        self.metrics.append(record)
        self.train_seconds = time.perf_counter() - self._t_start
        target = epi_now[_ratio_key(args.ratio)]
        test_text = f"test {test_top1:.3f}" + (" (right after the prune)" if pruned_now else "")
        line = (
            f"epoch {epoch:3d}/{args.epochs}  loss {record['loss']:.4f}  train {record['train_top1']:.3f}  "
            f"{test_text}  EPI {'-' if target is None else f'{target:.4f}'}  params {params}"
        )
        if pruned_now:
            line += f"  <- pruned ({pruner.prune_reason})"
        self.say(line)
        if pruned_now:
            late = late_prune_message(pruner.prune_epoch, args.epochs)
            if late:
                self.warnings.append(late)
                self.say(f"epi-fast train: warning: {late}", sys.stderr)
        if not math.isfinite(record["loss"]):
            raise RuntimeError(f"training diverged at epoch {epoch} (loss is {record['loss']}); try a smaller --lr")
        self.end_epoch()

    def end_epoch(self) -> None:
        """checkpoint.pt first, then metrics.jsonl and summary.json: a run killed between them
        resumes from the checkpoint, whose metrics replace the files'. In a distributed run every
        rank then learns whether rank 0 wrote them."""
        from .dist_job import together
        from .resume import write_checkpoint

        with together(self.job, f"writing the files of epoch {self.epochs_completed}"):
            write_checkpoint(self)
            self.write_progress()

    # -- what differs with --distributed -----------------------------------------------------
    def say(self, line: str, file=None) -> None:
        """A line on stdout (or `file`) from rank 0 alone."""
        from tqdm import tqdm

        if self.writes:
            tqdm.write(line, file=file or sys.stdout)

    def summed(self, *values):
        """Per-rank sums (loss, correct, seen) summed over the ranks; as they are in one process."""
        if self.job is None:
            return values
        return self.job.all_sum(values)

    def rank_record(self) -> Dict[str, Any]:
        """What this rank decided and holds at the end, for rank 0's summary."""
        p = self.s.pruner
        return {"rank": self.job.rank, "prune_epoch": p.prune_epoch, "prune_reason": p.prune_reason,
                "params": sum(int(t.numel()) for t in self.s.model.parameters()), "kept_counts": p.kept_counts,
                "epi_tracked": {_ratio_key(r): list(h) for r, h in p.epi_history.items()}}

    def after_prune(self):
        """The model to train after the prune: the pruned module (under FSDP sharded again by
        the pruner), in a new DDP wrapper under --distributed ddp (the old one's buckets hold the
        dense parameters)."""
        s = self.s
        if self.job is not None and self.job.kind == "ddp":
            from ..distributed import rewrap_ddp

            s.model = rewrap_ddp(s.model)
        else:
            s.model = s.pruner.module
        return s.model

    def eval_module(self, model):
        """What evaluates: the module itself, outside DDP's wrapper (whose forward would
        broadcast buffers, a collective that every rank would have to run equally often), with
        rank 0's buffers on every rank when distributed."""
        if self.job is None:
            return model
        module = model.module if self.job.kind == "ddp" else model
        self.job.sync_buffers(module)
        return module

    def evaluate(self, model) -> float:
        """Held-out top-1: one process evaluates the whole test set; ranks their shares, summed."""
        s = self.s
        if self.job is None:
            return _evaluate(model, s.test_loader, s.device, s.amp_dtype)
        correct, total = _evaluate_counts(self.eval_module(model), s.test_loader, s.device, s.amp_dtype, self.job, s.example)
        return correct / max(1, total)

    def train(self) -> None:
        # A resumed run goes on from the epoch after its checkpoint, its clock from train_seconds.
        self._t_start = time.perf_counter() - self.train_seconds
        for epoch in range(self.epochs_completed + 1, self.args.epochs + 1):
            self._epoch(epoch)

    def task_checkpoint(self) -> Dict[str, Any]:
        """Entries of checkpoint.pt that only this task has."""
        return {}

    def load_task_checkpoint(self, ckpt: Dict[str, Any]) -> None:
        """Restore `task_checkpoint`'s entries."""

    def finish(self) -> Dict[str, Any]:
        import torch

        from . import report as rep
        from .._io import atomic_write
        from .dist_job import together
        from ..surgery.serialize import model_payload

        args, s = self.args, self.s
        full = None
        if self.job is not None and self.job.kind == "fsdp":
            from .dist_job import full_state_dict

            full = full_state_dict(s.model)  # every rank takes part; rank 0 receives it
        summary = self.summary("completed")
        if self.job is not None:
            ranks = self.job.gather(self.rank_record())
            if ranks is not None:
                summary["distributed"]["ranks"] = _rank_records(ranks)
        with together(self.job, "writing the final files"):
            if self.writes:
                payload = model_payload(s.pruner.module, arch={"name": args.model, "kwargs": dict(s.model_kwargs)},
                                        state_dict=full)
                atomic_write(self._path("model.pt"), lambda f: torch.save(payload, f))
                rep.plot_epi_curve(
                    self._path("epi_curve.png"), self._epi_tracked(), args.tau, s.pruner.prune_epoch,
                    title=f"EPI, {args.model} on {s.data.name}, {args.criterion}",
                )
                self.write_task_plots()
                rep.write_json(self._path("summary.json"), summary)
        return summary

    def write_task_plots(self) -> None:
        """Plots beside epi_curve.png that only this task draws."""

    def final_line(self, summary: Dict[str, Any]) -> str:
        pe = "never" if summary["prune_epoch"] is None else f"after epoch {summary['prune_epoch']} ({summary['prune_reason']})"
        return (f"pruned {pe}; params {summary['params_before']} -> {summary['params_after']}; "
                f"top-1 {summary['top1_final']:.4f}; {summary['train_seconds']:.1f} s")

    def record_stop(self, e: BaseException) -> None:
        """Mark the run directory as interrupted or failed (best effort: the original error is
        what the user must see)."""
        from .errors import interrupt_signal_name, one_line

        done, T = self.epochs_completed, self.args.epochs
        where = f"{done} of {T} epochs done" if done < T else f"all {T} epochs done, the final files not all written"
        if isinstance(e, KeyboardInterrupt):
            status = "interrupted"
            extra = {"interrupted_by": interrupt_signal_name(getattr(e, "signum", signal.SIGINT))}
            detail = f"{where}; the run so far is in {self.args.out} (summary.json says \"interrupted\")"
        else:
            status = "failed"
            extra = {"error": f"{type(e).__name__}: {one_line(e)}"}
            detail = f"{where}; the run so far is in {self.args.out} (summary.json says \"failed\")"
        if not self.writes:
            if isinstance(e, KeyboardInterrupt):
                # torchrun passes Ctrl-C and SIGTERM to every rank: rank 0's line says it.
                e.epi_fast_quiet = True  # type: ignore[attr-defined]
            return  # rank 0 records it
        try:
            self.write_progress(status, **extra)
        except BaseException:  # a second Ctrl-C, a full disk: the last consistent summary stays
            return
        try:
            e.epi_fast_detail = detail  # type: ignore[attr-defined]
        except AttributeError:
            pass


def run_train(args) -> int:
    from .dist_job import check_not_launched, quiet_on_other_ranks

    if args.resume is not None:
        from .resume import resume_train

        return resume_train(args)
    try:
        if args.distributed is None:
            check_not_launched(UsageError)
        # Every rank finds the same problems in the same arguments, before joining the others;
        # rank 0 alone checks --out, after joining (`_train_new`).
        _validate_train(args, check_dir=args.distributed is None)
    except UsageError as e:
        raise quiet_on_other_ranks(e)
    job = start_distributed(args.distributed, args.device, args.dist_timeout)
    try:
        return _train_new(args, job)
    finally:
        if job is not None:
            job.close()


def start_distributed(kind: Optional[str], device: str, timeout: float):
    """The `DistJob` of a --distributed run (the process group joined), None for one process."""
    from .dist_job import quiet_on_other_ranks, start_job

    if kind is None:
        return None
    try:
        return start_job(kind, device, timeout, UsageError)
    except UsageError as e:
        raise quiet_on_other_ranks(e)


def _train_new(args, job) -> int:
    from .dist_job import together
    from .rundir import RunDirRefused, check_out, start

    if job is not None:
        with together(job, "checking --out"):
            if job.is_main:
                try:
                    check_out(args.out, args.overwrite)
                except RunDirRefused as e:
                    raise UsageError(str(e)) from None
    run_class, setup_class = task_classes(args.task)
    try:
        with together(job, "setting up"):
            setup = setup_class(args, job)
    except KeyboardInterrupt as e:
        e.epi_fast_detail = "before training started; nothing was written"  # type: ignore[attr-defined]
        raise
    run = run_class(args, setup)
    try:
        with together(job, "creating the run directory"):
            if run.writes:
                try:
                    run.outdir = start(args.out, args.overwrite, run.summary("running"))
                except RunDirRefused as e:
                    raise UsageError(str(e)) from None
            else:
                run.outdir = os.path.abspath(args.out)
    except KeyboardInterrupt as e:
        e.epi_fast_detail = "before training started"  # type: ignore[attr-defined]
        raise
    return train_to_end(run, args.out)


def task_classes(task: str):
    """(run class, setup class) of a task."""
    if task == "lm":
        from .lm import LMRun, LMSetup

        return LMRun, LMSetup
    if task == "detection":
        from .detect import DetectionRun, DetectionSetup

        return DetectionRun, DetectionSetup
    return _Run, _Setup


def train_to_end(run, where: str) -> int:
    """Train `run` to its last epoch and write its final files (a stop is recorded in the run
    directory and raised on)."""
    try:
        run.train()
        summary = run.finish()
    except BaseException as e:
        err = _explained(run, e)
        run.record_stop(err)
        if err is e:
            raise
        raise err from e
    if run.writes:
        print(run.final_line(summary))
        print(f"results in {where}")
    return 0


def _explained(run, e: BaseException) -> BaseException:
    """`e`, or for torch.distributed's error about a rank that went away, an error that says so."""
    if run.job is None:
        return e
    from .dist_job import lost_peer
    from .errors import one_line

    if not lost_peer(e):
        return e
    return RuntimeError(f"lost contact with the other ranks (one of them failed or was stopped, or did not answer within "
                        f"--dist-timeout {run.job.timeout:g} s): {one_line(e)}")


# -- entry point -----------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    with sigterm_raises():
        try:
            return _main(argv, debug)
        except KeyboardInterrupt as e:  # while the parser imports torch, before a command runs
            return report_interrupt("epi-fast", debug, e)


def _main(argv: List[str], debug: bool) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help, --version
        return int(e.code or 0)
    if args.command is None:
        parser.print_usage(sys.stderr)
        return 2
    prog = f"epi-fast {args.command}"
    if args.command == "train":
        from .resume import check_train_options

        try:
            check_train_options(argv, args)
        except UsageError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            return 2
    args.debug = debug
    func = getattr(args, "func", None)
    if func is None:  # a subcommand registered without set_defaults(func=...)
        from . import prune_cmd as cli_prune

        func = cli_prune.run
    return run_reporting_errors(prog, debug, lambda: func(args), (UsageError,))


if __name__ == "__main__":
    sys.exit(main())
