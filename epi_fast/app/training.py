"""The training recipe that the main job and the reproduction protocol share: one definition of
the defaults, the seeding, the optimizer and the learning-rate schedule."""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Dict, Optional

__all__ = ["TRAIN_DEFAULTS", "TASKS", "TASK_DEFAULTS", "OPTIMIZERS", "ADAMW_BETAS", "ADAMW_LR",
           "ADAMW_WEIGHT_DECAY", "RESOLVED", "task_defaults", "fill_defaults",
           "seed_everything", "make_optimizer", "lr_lambda", "make_scheduler", "steps_per_epoch"]

# Tuned so that the default run (digits, resnet_small, magnitude, ratio 0.5) finishes well
# inside 5 minutes on 2 CPU cores, prunes because EPI fired, and ends above 0.9 top-1;
# see docs/EPI_USAGE.md for the measurements.
TRAIN_DEFAULTS: Dict[str, Any] = {
    "data": "digits",
    "model": "resnet_small",
    "ratio": 0.5,
    "criterion": "magnitude",
    "epochs": 30,
    "batch_size": 64,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "warmup_epochs": 1,
    "window": 5,
    "patience": 5,
}

TASKS = ("classify", "lm", "detection")
OPTIMIZERS = ("sgd", "adamw")
ADAMW_BETAS = (0.9, 0.95)
# AdamW's learning rate and weight decay in classification when --optimizer adamw is chosen
# without --lr / --weight-decay.
ADAMW_LR = 1e-3
ADAMW_WEIGHT_DECAY = 0.05

# What `epi-fast train` fills in for the options left out, per task (`--task`) and optimizer
# (vit_tiny trains with the CNNs' SGD recipe). The language-model task: a byte-level LLaMA
# decoder on the text of pydoc_data.topics, AdamW, epochs of a fixed number of steps; tuned so
# that the default run ends within 10 minutes on 2 CPU cores and prunes because EPI fired
# (docs/TRANSFORMERS_JOBS.md has the measurements).
TASK_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "classify": {**TRAIN_DEFAULTS, "optimizer": "sgd", "steps_per_epoch": None, "seq_len": None},
    "lm": {
        "data": "pydoc-topics",
        "model": "llama_tiny",
        "ratio": 0.5,
        "criterion": "magnitude",
        "epochs": 30,
        "steps_per_epoch": 50,
        "seq_len": 128,
        "batch_size": 16,
        "optimizer": "adamw",
        "lr": 3e-3,
        "momentum": None,
        "weight_decay": 0.1,
        "warmup_epochs": 1,
        "window": 5,
        "patience": 5,
    },
    # SSD on ResNet-18 over the embedded digit canvases (epi_fast.app.detect), SGD, App. E's
    # larger ratio (0.4) and its window rule (None: `scaled_window(epochs)`, 50 of 800 epochs,
    # at least 2); tuned so that the default run ends within 10 minutes on 2 CPU cores with the
    # dense detector above mAP@0.5 0.5 on the test canvases (docs/DETECTION.md has the measurements).
    "detection": {
        "data": "digit-canvases",
        "model": "ssd_resnet18",
        "ratio": 0.4,
        "criterion": "magnitude",
        "epochs": 5,
        "steps_per_epoch": None,
        "seq_len": None,
        "batch_size": 32,
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "warmup_epochs": 1,
        "window": None,
        "patience": 5,
    },
}
# The options whose defaults depend on the task or the optimizer.
RESOLVED = ("data", "model", "ratio", "optimizer", "epochs", "steps_per_epoch", "seq_len", "batch_size", "lr",
            "momentum", "weight_decay", "warmup_epochs", "window")


def task_defaults(task: str, optimizer: Optional[str] = None) -> Dict[str, Any]:
    """The defaults of `epi-fast train --task TASK [--optimizer OPT]`: the task's, and where the
    optimizer is not the task's own, that optimizer's learning rate, momentum and weight decay
    (AdamW: `ADAMW_LR`, `ADAMW_WEIGHT_DECAY`; SGD: the classification recipe's)."""
    out = dict(TASK_DEFAULTS[task])
    chosen = optimizer or out["optimizer"]
    if chosen != out["optimizer"]:
        if chosen == "adamw":
            out.update(lr=ADAMW_LR, weight_decay=ADAMW_WEIGHT_DECAY, momentum=None)
        else:
            out.update({k: TRAIN_DEFAULTS[k] for k in ("lr", "momentum", "weight_decay")})
        out["optimizer"] = chosen
    return out


def fill_defaults(args) -> None:
    """Set every option of `RESOLVED` left at None on the argparse namespace to its default for
    the task and optimizer asked for; a window the task leaves at None is
    `epi_fast.detection.schedule.scaled_window(epochs)`, and detection's deadline left at None
    is `epi_fast.detection.schedule.default_deadline(epochs)`."""
    d = task_defaults(args.task, args.optimizer)
    for key in RESOLVED:
        if getattr(args, key, None) is None:
            setattr(args, key, d[key])
    if args.window is None:  # a task whose window follows its schedule (detection)
        from ..detection.schedule import scaled_window

        args.window = scaled_window(args.epochs)
    if args.task == "detection" and getattr(args, "deadline_epoch", None) is None:
        # Detection prunes by 60% of the schedule at the latest (epi_fast.detection.schedule).
        from ..detection.schedule import default_deadline

        args.deadline_epoch = default_deadline(args.epochs)


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's generators from one seed."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model, lr: float, momentum: float, weight_decay: float, kind: str = "sgd"):
    """SGD (Nesterov when momentum > 0), or AdamW (betas `ADAMW_BETAS`, decoupled weight decay;
    `momentum` unused), without weight decay on BatchNorm / LayerNorm / RMSNorm parameters and
    biases (every parameter of one dimension): decaying gamma would pull the BN magnitudes that
    the criterion ranks towards zero for reasons unrelated to importance."""
    import torch

    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=ADAMW_BETAS)
    if kind != "sgd":
        raise ValueError(f"unknown optimizer {kind!r}: expected one of {', '.join(OPTIMIZERS)}")
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)


def lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine to zero, per optimizer step: the schedule does not depend on
    the network, so it continues unchanged across the prune."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def make_scheduler(optimizer, epochs: int, steps: int, warmup_epochs: int):
    """LambdaLR over `epochs` epochs of `steps` optimizer steps with `lr_lambda`."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(epochs * steps, warmup_epochs * steps))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps of one epoch over n samples: full batches only (drop_last), or one step
    when the set is smaller than a batch."""
    return n // batch_size if n > batch_size else 1
