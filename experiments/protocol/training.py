"""One training epoch and one evaluation, on the main job's recipe (epi_fast.app.training)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from epi_fast.app import training as recipe

from .config import TRAIN
from .data import Tensors


def make_optimizer(model):
    """The main job's SGD (Nesterov, no weight decay on BatchNorm parameters and biases)."""
    return recipe.make_optimizer(model, TRAIN["lr"], TRAIN["momentum"], TRAIN["weight_decay"])


def make_scheduler(optimizer, epochs: int, steps: int):
    """The main job's per-step schedule: linear warm-up, then cosine to zero."""
    return recipe.make_scheduler(optimizer, epochs, steps, TRAIN["warmup_epochs"])


def steps_per_epoch(n: int) -> int:
    return recipe.steps_per_epoch(n, TRAIN["batch_size"])


def samples_per_epoch(n: int) -> int:
    """Training samples seen per epoch (full batches only, or the whole set when smaller)."""
    bs = TRAIN["batch_size"]
    return steps_per_epoch(n) * bs if n > bs else n


def train_epoch(model, optimizer, scheduler, data: Tensors, gen: torch.Generator,
                accumulate: Optional[Callable[[], None]] = None) -> float:
    """One epoch in the order `gen` draws; `accumulate` runs after each backward (the tracker's
    hook), before the optimizer step. Returns the mean training loss."""
    model.train()
    bs = TRAIN["batch_size"]
    perm = torch.randperm(len(data), generator=gen)
    loss_sum = 0.0
    steps = steps_per_epoch(len(data))
    for i in range(steps):
        loss_sum += float(train_step(model, optimizer, scheduler, data, perm[i * bs:(i + 1) * bs], accumulate))
    return loss_sum / steps


def train_step(model, optimizer, scheduler, data: Tensors, idx: torch.Tensor,
               accumulate: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """One optimizer step on the samples `idx`; `accumulate` runs between backward and step.
    Returns the (detached) loss."""
    loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if accumulate is not None:
        accumulate()
    optimizer.step()
    scheduler.step()
    return loss.detach()


def evaluate(model, data: Tensors) -> float:
    """Top-1 accuracy (a fraction); the model is left in training mode."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(data), 512):
            correct += int((model(data.x[i:i + 512]).argmax(1) == data.y[i:i + 512]).sum())
    model.train()
    return correct / max(1, len(data))
