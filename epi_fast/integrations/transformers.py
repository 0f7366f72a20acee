"""EPI inside Hugging Face's `Trainer`: `EPIPruningCallback`.

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[EPIPruningCallback(0.5, example_inputs=token_ids, criterion="gradient")])
    trainer.train()          # EPI runs at each epoch's end; the model is pruned when it fires

The callback builds an `EPIPruner` when training begins, around the Trainer's model and the
torch optimizer inside the Trainer's (accelerate-wrapped) optimizer. Gradient criteria
accumulate once per optimizer step, in `on_pre_optimizer_step`: after gradient accumulation
and after the Trainer clipped (and, with fp16, unscaled) the gradients, before the step. At
each epoch's end it runs `epoch_end()`; when EPI fires the model shrinks in place and the
optimizer keeps its state for the surviving entries, and the Trainer's learning-rate scheduler
keeps working (its param groups are the same objects). Each epoch's EPI values are appended
to `trainer.state.log_history` as ``{"epoch", "epi/<ratio>", ...}``; the prune as
``{"epoch", "epi_pruned": true, "prune_reason", "params_after", ...}``.

A pruned model saved by the Trainer (`save_pretrained` in its checkpoints) loads back with
`epi_fast.surgery.load_pretrained(cls, path)`; resuming a Trainer run from a checkpoint
written after the prune is not supported (the Trainer rebuilds the dense model first).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ..policy import EPIPruner

try:
    from transformers import TrainerCallback
except ImportError as err:  # pragma: no cover - the extra is missing
    raise ImportError(
        "epi_fast.integrations.transformers needs Hugging Face transformers: pip install 'epi_fast[hf]'"
    ) from err

__all__ = ["EPIPruningCallback"]


def _torch_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's AcceleratedOptimizer (or the optimizer itself)."""
    inner = optimizer
    while not isinstance(inner, torch.optim.Optimizer) and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    if not isinstance(inner, torch.optim.Optimizer):
        raise TypeError(f"the Trainer's optimizer is a {type(optimizer).__name__}, not a torch optimizer")
    return inner


class EPIPruningCallback(TrainerCallback):
    """EPI-guided structural pruning for `transformers.Trainer`.

    ratio, example_inputs and every other keyword are `EPIPruner`'s (criterion, window, tau,
    patience, track_ratios, deadline_epoch, target, max_layer_ratio, round_to, ranking, ...);
    `total_epochs` defaults to the Trainer's `num_train_epochs`. `pruner` is the EPIPruner
    once training has begun.
    """

    def __init__(self, ratio: float, example_inputs: Any, **pruner_options: Any) -> None:
        self.ratio = ratio
        self.example_inputs = example_inputs
        self.options = dict(pruner_options)
        self.pruner: Optional[EPIPruner] = None
        self._optimizer: Optional[torch.optim.Optimizer] = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None or optimizer is None:
            raise RuntimeError("EPIPruningCallback needs the Trainer's model and optimizer at on_train_begin")
        if self.pruner is None:
            self._optimizer = _torch_optimizer(optimizer)
            options = dict(self.options)
            if "total_epochs" not in options and args.num_train_epochs and float(args.num_train_epochs).is_integer():
                options["total_epochs"] = int(args.num_train_epochs)
            example = self.example_inputs
            device = next(model.parameters()).device
            if isinstance(example, torch.Tensor):
                example = example.to(device)
            self.pruner = EPIPruner(model, self._optimizer, self.ratio, example, **options)
        return control

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.pruner is not None and self.pruner.is_gradient and not self.pruner.pruned:
            self.pruner.accumulate()
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.pruner is None or self.pruner.pruned:
            return control
        pruned = self.pruner.epoch_end()
        entry: Dict[str, Any] = {"epoch": state.epoch, "step": state.global_step}
        for ratio, values in self.pruner.epi_history.items():
            if values and values[-1] is not None:
                entry[f"epi/{ratio:g}"] = float(values[-1])
        if pruned:
            report = self.pruner.report()
            entry.update({"epi_pruned": True, "prune_reason": self.pruner.prune_reason,
                          "prune_epoch": self.pruner.prune_epoch})
            for key in ("params_before", "params_after", "flops_before", "flops_after"):
                if key in report:
                    entry[key] = report[key]
        state.log_history.append(entry)
        return control
