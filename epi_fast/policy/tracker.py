"""Epoch after epoch: scores -> masks -> structures -> EPI, for several ratios, without pruning.

`StructureTracker` is the part of `EPIPruner` that watches; the pruner adds the decision and
the prune. The reproduction protocol (experiments/) drives the same tracker, so that its
results are results of the shipped code.

The structure at initialisation (t = 0): weight criteria record it at construction, from the
weights as they are. A gradient criterion has no gradients yet, so its t = 0 structure comes
from the scores of the first optimizer step whose gradients are finite: gradients at the
initial weights on one real batch, i.e. the importance at initialisation, without an extra
forward/backward and without mixing criteria. That step also counts towards epoch 1's scores.
Until it is captured `accumulate()` syncs with the host once per step (usually once in total;
a few times while AMP's scaler skips its first overflowing steps). Either way the first EPI
exists at t = window, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

from ..indicator import IndicatorBank
from ..layout import group_layout
from ..targets import Selector
from .config import PrunerConfig

__all__ = ["EpochRecord", "StructureTracker"]


@dataclass
class EpochRecord:
    """What the tracker saw at epoch t (0 = initialisation): the group scores it ranked (float32
    [N], on the model's device), the keep-masks of every tracked ratio (bool [ratios, N]), the
    structures (int64 [ratios, L] on the host; rank 0's when distributed) and the EPI values
    (one per ratio, None while undefined)."""

    epoch: int
    scores: torch.Tensor
    masks: torch.Tensor
    counts: torch.Tensor
    epi: List[Optional[float]]


class StructureTracker:
    """Tracks the structures that `config.criterion` selects at `config.ratios` on `module`.

    sync: an `epi_fast.distributed.Collectives` when distributed (structures and the t = 0
    capture come from rank 0), else None.
    scorer: None, or ``scorer(layout, epoch)`` returning what scores the layout instead of the
    criterion on `module` (an `epi_fast.criteria.sharded.ShardedScorer`, when `module` is the
    plain copy of a model sharded with FSDP): an object with `weight_scores()` and
    `accumulator()`. epoch() is the epoch being scored (0: initialisation), for its messages.
    """

    def __init__(self, module: nn.Module, example_inputs: Any, config: PrunerConfig, sync=None,
                 scorer: Optional[Callable[[Any], Any]] = None) -> None:
        self.config = config
        self.criterion = config.criterion
        self.sync = sync
        self.layout = group_layout(module, example_inputs, ignored_layers=config.ignored_layers,
                                   residual=config.residual)
        self._t0_recorded = False
        self.scorer = scorer(self.layout, self._epoch_in_progress) if scorer is not None else None
        # The prune's own selection rule (target, limits, rounding): EPI watches the very
        # structures that the prune would cut.
        self.selector = Selector(self.layout, config.target, config.min_keep, config.max_layer_ratio,
                                 config.round_to, example_inputs, ranking=config.ranking)
        self.bank = IndicatorBank(config.ratios, window=config.window, tau=config.tau, patience=config.patience)
        self.accumulator = None
        if self.criterion.needs_gradients:
            self.accumulator = self.scorer.accumulator() if self.scorer is not None else \
                self.criterion.accumulator(self.layout)
        self.epoch = 0
        self.initial: Optional[EpochRecord] = None
        self._skipped_total = 0
        if self.accumulator is None:
            self.initial = self._observe(self._weight_scores())
            self._t0_recorded = True

    def _epoch_in_progress(self) -> int:
        return self.epoch + 1 if self._t0_recorded else 0

    @property
    def layers(self) -> List[str]:
        return self.layout.layers

    @property
    def t0_recorded(self) -> bool:
        return self._t0_recorded

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps whose non-finite gradients were left out of the scores so far."""
        if self.accumulator is None:
            return self._skipped_total
        return self._skipped_total + self.accumulator.skipped_steps

    # -- the training-loop hooks ------------------------------------------------------------------
    def accumulate(self, scaler: Any = None, optimizer: Any = None) -> None:
        """Once per optimizer step after backward (gradient criteria; a no-op otherwise)."""
        if self.accumulator is None:
            return
        self.accumulator.step(scaler, optimizer)
        if not self._t0_recorded:
            self._capture_t0()

    def epoch_end(self) -> EpochRecord:
        """Close an epoch: score it, record every ratio's structure, update EPI."""
        scores = self._epoch_scores()
        self.epoch += 1
        return self._observe(scores)

    # -- internals --------------------------------------------------------------------------------
    def _weight_scores(self) -> torch.Tensor:
        if self.scorer is not None:
            return self.scorer.weight_scores()
        return self.criterion.group_scores(self.layout, self.config.reduce)

    def _epoch_scores(self) -> torch.Tensor:
        acc = self.accumulator
        if acc is None:
            return self._weight_scores()
        steps, skipped = acc.steps, acc.skipped_steps  # one small sync per epoch
        if steps == 0:
            raise RuntimeError(
                f'criterion "{self.config.criterion_name}" needs gradients: call pruner.accumulate() after every '
                f"backward of epoch {self.epoch + 1} (it was never called)"
            )
        if skipped >= steps:
            raise RuntimeError(
                f"all {steps} optimizer steps of epoch {self.epoch + 1} had non-finite gradients; "
                "no Taylor scores to rank channels by (has training diverged?)"
            )
        scores = acc.scores(self.config.reduce)
        self._skipped_total += skipped
        acc.reset()
        return scores

    def _masks_counts(self, scores: torch.Tensor):
        # The structure at initialisation must meet every ratio (or the pruner is refused at
        # once); later epochs take the nearest cut, so that a run is never stopped mid-way.
        strict = not self._t0_recorded
        chosen = self.selector.select(scores, list(self.config.ratios), strict=strict)
        return chosen.masks, self.layout.structure_from_counts(chosen.counts)

    def _observe(self, scores: torch.Tensor) -> EpochRecord:
        masks, counts = self._masks_counts(scores)
        if self.sync is not None:
            when = f"at the end of epoch {self.epoch}" if self.epoch else "at initialisation (t = 0)"
            counts = self.sync.broadcast(counts, f"broadcast of the structures {when}")
        counts = counts.cpu()
        epi = self.bank.update(counts)
        return EpochRecord(self.epoch, scores, masks, counts, epi)

    def _capture_t0(self) -> None:
        # Host sync, only until the first finite step is seen (see the module docstring).
        acc = self.accumulator
        local_ok = acc.skipped_steps < acc.steps
        m, n_layers = len(self.config.ratios), len(self.layers)
        scores = masks = None
        if local_ok:
            scores = acc.scores(self.config.reduce)
            masks, counts = self._masks_counts(scores)
            counts = counts.cpu()
        else:
            counts = torch.zeros(m, n_layers, dtype=torch.int64)
        # Rank 0 decides whether this step is the t = 0 capture, and what it captured.
        packed = torch.cat([torch.tensor([int(local_ok)], dtype=torch.int64), counts.reshape(-1)])
        if self.sync is not None:
            packed = self.sync.broadcast(packed, "broadcast of the structure at initialisation (t = 0)")
        if int(packed[0]):
            counts = packed[1:].reshape(m, n_layers)
            epi = self.bank.update(counts)
            self.initial = EpochRecord(0, scores, masks, counts, epi)
            self._t0_recorded = True

    # -- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {
            "epoch": self.epoch,
            "t0_recorded": self._t0_recorded,
            "skipped_total": self._skipped_total,
            "bank": self.bank.state_dict(),
            "accumulator": None if self.accumulator is None else self.accumulator.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.bank.load_state_dict(state["bank"])
        self.epoch = int(state["epoch"])
        self._t0_recorded = bool(state["t0_recorded"])
        self._skipped_total = int(state["skipped_total"])
        if self.accumulator is not None and state.get("accumulator") is not None:
            self.accumulator.load_state_dict(state["accumulator"])
