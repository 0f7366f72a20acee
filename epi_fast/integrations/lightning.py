"""EPI inside Lightning: the `EPIPruning` callback.

    trainer = lightning.Trainer(max_epochs=30, callbacks=[EPIPruning(0.5, example_inputs=x0, criterion="gradient")])
    trainer.fit(module, loader)      # EPI at each training epoch's end; pruned when it fires

- The `EPIPruner` is built when fitting starts, around the LightningModule and the trainer's
  (first) optimizer; its options are `EPIPruner`'s (criterion, window, tau, patience,
  track_ratios, deadline_epoch, target, max_layer_ratio, round_to, ranking, ...);
  `total_epochs` defaults to the trainer's `max_epochs`.
- Gradient criteria accumulate in `on_before_optimizer_step`: once per optimizer step, after
  gradient accumulation (`accumulate_grad_batches`), after AMP unscaled the gradients (with
  "16-mixed" the step the scaler skips is skipped by the scores too) and before gradient
  clipping changes them.
- At each training epoch's end EPI runs; when it fires the module shrinks in place, the
  optimizer keeps its state for the surviving entries and the learning-rate schedulers keep
  their schedule (same param groups). `ema=`: a `torch.optim.swa_utils.AveragedModel` of the
  module, pruned alike (the same neurons). EPI per tracked ratio is logged as "epi/<ratio>"
  through the module's `log` (the trainer's logger); the prune epoch as "epi/prune_epoch".
- Checkpoints hold the pruner's state and the pruned architecture (the layers' widths, under
  the key "epi_fast"); `Trainer.fit(module, ckpt_path=...)` with a dense module of the same
  class narrows it to that architecture just before Lightning loads the weights (the callback
  wraps the module's `on_load_checkpoint` in `setup`), and the pruner resumes where it stopped.
- Under `strategy="ddp"` every rank takes rank 0's structures and decision (the pruner is
  given the world's process group), prunes the very same neurons, and the strategy's DDP
  wrapper is built anew around the pruned module (the old one's buckets refer to the dense
  parameters), with the strategy's own DDP settings. Other multi-process strategies (FSDP,
  DeepSpeed) are refused when fitting starts.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ..layout import group_layout
from ..policy import EPIPruner
from ..surgery import prune_with_masks
from ..surgery.serialize import _module_attrs, _shrink

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the extra is missing
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as err:
        raise ImportError("epi_fast.integrations.lightning needs Lightning: pip install 'epi_fast[lightning]'") from err

__all__ = ["EPIPruning"]


def _is_ddp_strategy(strategy) -> bool:
    return type(strategy).__name__ in ("DDPStrategy",) and hasattr(strategy, "_setup_model")

_KEY = "epi_fast"


class EPIPruning(pl.Callback):
    """EPI-guided structural pruning for a Lightning `Trainer` (see the module docstring)."""

    def __init__(self, ratio: float, example_inputs: Any, ema: Optional[torch.nn.Module] = None,
                 **pruner_options: Any) -> None:
        self.ratio = ratio
        self.example_inputs = example_inputs
        self.ema = ema
        self.options = dict(pruner_options)
        self.pruner: Optional[EPIPruner] = None
        self._resume_state: Optional[Dict[str, Any]] = None

    # -- resume: narrow the dense module before Lightning loads the pruned weights ------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        # Lightning calls the module's on_load_checkpoint just before it loads the weights (and
        # the callbacks' only after): the module's hook is wrapped, on this instance, so that a
        # checkpoint of a pruned run narrows the dense module first.
        if stage != "fit" or getattr(pl_module, "_epi_fast_hooked", False):
            return
        original = pl_module.on_load_checkpoint

        def on_load_checkpoint(checkpoint: Dict[str, Any]) -> None:
            self._restore(pl_module, checkpoint)
            original(checkpoint)

        pl_module.on_load_checkpoint = on_load_checkpoint
        pl_module._epi_fast_hooked = True

    def _restore(self, pl_module, checkpoint: Dict[str, Any]) -> None:
        saved = checkpoint.get(_KEY) if isinstance(checkpoint, dict) else None
        if not saved:
            return
        if saved.get("pruned"):
            _shrink(pl_module, saved["modules"], checkpoint["state_dict"])
        if self.ema is not None and saved.get("ema_state") is not None:
            _shrink(self.ema, saved["ema_modules"], saved["ema_state"])
            self.ema.load_state_dict(saved["ema_state"])
        self._resume_state = saved["pruner"]

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.pruner is not None:
            return
        if not trainer.optimizers:
            raise RuntimeError("EPIPruning needs an optimizer: configure_optimizers returned none")
        options = dict(self.options)
        if "total_epochs" not in options and trainer.max_epochs and trainer.max_epochs > 0:
            options["total_epochs"] = int(trainer.max_epochs)
        example = self.example_inputs
        if isinstance(example, torch.Tensor):
            example = example.to(pl_module.device)
        if trainer.world_size > 1:
            if not _is_ddp_strategy(trainer.strategy):
                raise RuntimeError(
                    f"EPIPruning supports one process or strategy='ddp', not {type(trainer.strategy).__name__}"
                )
            import torch.distributed as dist

            options.setdefault("process_group", dist.group.WORLD)
        self.pruner = EPIPruner(pl_module, trainer.optimizers[0], self.ratio, example, **options)
        if self._resume_state is not None:
            self.pruner.load_state_dict(self._resume_state)
            self._resume_state = None

    # -- training -----------------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        pruner = self.pruner
        if pruner is None or pruner.pruned or not pruner.is_gradient:
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        pruner.accumulate(scaler)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pruner = self.pruner
        if pruner is None or pruner.pruned:
            return
        pruned = pruner.epoch_end()
        for ratio, values in pruner.epi_history.items():
            if values and values[-1] is not None:
                pl_module.log(f"epi/{ratio:g}", float(values[-1]), on_epoch=True, on_step=False)
        if pruned:
            pl_module.log("epi/prune_epoch", float(pruner.prune_epoch), on_epoch=True, on_step=False)
            if self.ema is not None:
                self._prune_ema(pruner)
            if trainer.world_size > 1:
                self._rewrap_ddp(trainer)

    @staticmethod
    def _rewrap_ddp(trainer) -> None:
        """A new DDP wrapper around the pruned module, with the strategy's own settings (what
        DDPStrategy.configure_ddp builds when fitting starts)."""
        strategy = trainer.strategy
        strategy.model = strategy._setup_model(strategy.lightning_module)
        register = getattr(strategy, "_register_ddp_hooks", None)
        if register is not None:
            register()

    def _prune_ema(self, pruner: EPIPruner) -> None:
        ema = self.ema.module
        example = self.example_inputs
        if isinstance(example, torch.Tensor):
            example = example.to(next(ema.parameters()).device)
        layout = group_layout(ema, example, ignored_layers=pruner.config.ignored_layers)
        keep = pruner.keep_mask
        if keep is None or keep.numel() != layout.num_neurons:
            raise RuntimeError("the EMA model does not have the pruned module's layout: build it from the same module")
        prune_with_masks(ema, layout, keep)

    # -- checkpoints --------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        if self.pruner is None:
            return
        entry: Dict[str, Any] = {
            "pruner": self.pruner.state_dict(),
            "pruned": self.pruner.pruned,
            "modules": {n: a for n, m in pl_module.named_modules() if n for a in [_module_attrs(m)] if a},
        }
        if self.ema is not None:
            # An EMA kept outside the module is not in Lightning's state_dict: it travels here.
            entry["ema_modules"] = {n: a for n, m in self.ema.named_modules() if n for a in [_module_attrs(m)] if a}
            entry["ema_state"] = {k: v.detach().cpu().clone() for k, v in self.ema.state_dict().items()}
        checkpoint[_KEY] = entry
