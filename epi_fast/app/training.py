"""The training recipe that the main job and the reproduction protocol share: one definition of
the defaults, the seeding, the optimizer and the learning-rate schedule."""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Dict

__all__ = ["TRAIN_DEFAULTS", "seed_everything", "make_optimizer", "lr_lambda", "make_scheduler", "steps_per_epoch"]

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


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's generators from one seed."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model, lr: float, momentum: float, weight_decay: float):
    """SGD (Nesterov when momentum > 0) without weight decay on BatchNorm parameters and
    biases: decaying gamma would pull the BN magnitudes that the criterion ranks towards zero
    for reasons unrelated to importance."""
    import torch

    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, momentum=momentum, nesterov=momentum > 0,
    )


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
