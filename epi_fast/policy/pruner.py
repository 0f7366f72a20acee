"""EPI in the training loop: track the sub-network structure, prune structurally when it settles.

    pruner = EPIPruner(model, optimizer, ratio=0.5, example_inputs=x0, criterion="gradient")
    for epoch in range(epochs):
        for x, y in loader:
            loss_fn(model(x), y).backward()
            pruner.accumulate()          # Taylor criteria: one fused launch, no host sync
            optimizer.step(); optimizer.zero_grad()
        if pruner.epoch_end():           # scores -> masks -> counts -> EPI; prunes on firing
            model = pruner.module        # (re-wrap in DDP here when distributed)

Per epoch the pruner costs one scoring pass, one `global_masks_counts` call (masks and kept
counts per group for all tracked ratios), and one device-to-host copy of the [ratios x layers]
counts; the EPI
bookkeeping itself is host arithmetic on those integers (`epi_fast.indicator`).
"""

from __future__ import annotations

import numbers
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ..indicator.epi import EarlyPruningIndicator, _ops, update_indicators

__all__ = ["EPIPruner", "CRITERIA", "GRADIENT_CRITERIA", "default_tau"]

GRADIENT_CRITERIA = ("gradient", "taylor")
MAGNITUDE_CRITERIA = ("magnitude", "bn", "l1", "l2")
CRITERIA = MAGNITUDE_CRITERIA + GRADIENT_CRITERIA
_REASONS = {0: None, 1: "epi", 2: "deadline"}
_STATE_VERSION = 1


def default_tau(criterion: str) -> float:
    """The paper's universal thresholds: 0.944 for the gradient (Taylor) criterion, else 0.983."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; expected one of {', '.join(CRITERIA)}")
    return 0.944 if criterion in GRADIENT_CRITERIA else 0.983


def _check_ratio(r: Any, name: str) -> float:
    if isinstance(r, bool) or not isinstance(r, numbers.Real) or not (0.0 < float(r) < 1.0):
        raise ValueError(f"{name} must be a number in (0, 1), got {r!r}")
    return float(r)


def _is_ddp(model: nn.Module) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


class EPIPruner:
    """Decide when to prune with EPI during training, then prune structurally, in place.

    Args:
        model: the network, or a `DistributedDataParallel` wrapper of it (the pruner works on
            `.module`; see "Distributed" below).
        optimizer: its optimizer; at the prune its state (momentum, Adam moments) is cut down to
            the surviving channels. May be None.
        ratio: the target prune ratio in (0, 1): the fraction of prunable group neurons removed.
        example_inputs: what the model is called with (shape matters, values do not); used to
            trace the channel dependencies and to count FLOPs.
        criterion: "magnitude" (BN |gamma| where a BatchNorm follows, filter L2 elsewhere),
            "bn", "l1", "l2", or "gradient" / "taylor" (first-order Taylor accumulated over the
            optimizer steps of each epoch).
        window, patience: the EPI window r and the firing rule's patience (EPI.md).
        tau: the EPI threshold; None takes the paper's value for the criterion (0.944 for the
            gradient criterion, 0.983 otherwise).
        track_ratios: more ratios whose EPI curves are recorded from the same scores (the
            target is always tracked). Only the target ratio's indicator decides.
        deadline_epoch: prune after this many epochs if EPI has not fired by then
            (`prune_reason` = "deadline"); None = never force it.
        min_keep: channels every group keeps at any ratio (never empty a layer).
        ignored_layers: modules or names whose output channels are never pruned.
        taylor_mode: "square" (default) or "abs" for the Taylor criterion.
        reduce: how the channels coupled into one group neuron (a residual add) combine into
            its score: "sum" (default, EPI.md), "mean" or "max". With "sum" a neuron shared by
            k layers scores about k times a lone one, so residual widths are pruned last.
        process_group: the group to agree in when the model is not DDP-wrapped but the job is
            distributed; a DDP wrapper's own group is used otherwise.

    The structure at initialisation (t = 0): for magnitude criteria it is recorded here, from
    the weights as they are now. The gradient criterion has no gradients yet, so its t = 0
    structure is taken from the Taylor scores of the first optimizer step whose gradients are
    finite: gradients at the initial weights on one real batch, i.e. the importance at
    initialisation, without an extra forward/backward and without mixing criteria. That step
    also counts towards epoch 1's accumulated scores. Until it is captured `accumulate()` syncs
    with the host once per step (usually once in total; a few times while AMP's scaler skips
    its first overflowing steps). Either way the first EPI exists at t = window, as in the paper.

    Distributed: the structure each epoch is computed from rank 0's scores and broadcast (one
    small collective per epoch, int64 [ratios x layers]); every rank then runs the same
    deterministic rule on the same numbers, so all ranks decide alike and hold identical
    indicator state. At the prune, rank 0's scores are broadcast as well so every rank removes
    the very same channels. The DDP wrapper does not survive a change of parameter shapes:
    after `epoch_end()` returns True, wrap `pruner.module` in a new DDP (see docs/EPI_USAGE.md).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optional[torch.optim.Optimizer],
        ratio: float,
        example_inputs: Any,
        criterion: str = "magnitude",
        window: int = 5,
        tau: Optional[float] = None,
        patience: int = 5,
        track_ratios: Sequence[float] = (),
        deadline_epoch: Optional[int] = None,
        min_keep: int = 1,
        ignored_layers: Sequence[Any] = (),
        *,
        taylor_mode: str = "square",
        reduce: str = "sum",
        process_group: Any = None,
    ) -> None:
        from ..layout.graph import group_layout, unwrap_model
        from ..criteria.scoring import TaylorAccumulator

        if criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; expected one of {', '.join(CRITERIA)}")
        self.ratio = _check_ratio(ratio, "ratio")
        if isinstance(track_ratios, numbers.Real):
            track_ratios = (track_ratios,)
        ratios = [self.ratio]
        for i, r in enumerate(track_ratios):
            r = _check_ratio(r, f"track_ratios[{i}]")
            if r not in ratios:
                ratios.append(r)
        self.ratios: List[float] = ratios
        if deadline_epoch is not None and (
            isinstance(deadline_epoch, bool) or not isinstance(deadline_epoch, numbers.Integral) or deadline_epoch < 1
        ):
            raise ValueError(f"deadline_epoch must be an integer >= 1 or None, got {deadline_epoch!r}")
        if isinstance(min_keep, bool) or not isinstance(min_keep, numbers.Integral) or min_keep < 1:
            raise ValueError(f"min_keep must be an integer >= 1, got {min_keep!r}")
        self.criterion = criterion
        self.tau = default_tau(criterion) if tau is None else tau
        self.window = window
        self.patience = patience
        self.deadline_epoch = None if deadline_epoch is None else int(deadline_epoch)
        self.min_keep = int(min_keep)
        self.taylor_mode = taylor_mode
        from ..criteria.scoring import REDUCTIONS

        if reduce not in REDUCTIONS:
            raise ValueError(f"unknown reduce {reduce!r}; expected one of {', '.join(REDUCTIONS)}")
        self.reduce = reduce
        # Validates window/tau/patience with the indicator's own messages.
        self.indicators: Dict[float, EarlyPruningIndicator] = {
            r: EarlyPruningIndicator(window=window, tau=self.tau, patience=patience) for r in self.ratios
        }

        self._wrapper = model if _is_ddp(model) else None
        self.module: nn.Module = unwrap_model(model)
        self.optimizer = optimizer
        self.example_inputs = example_inputs
        self.ignored_layers = tuple(ignored_layers)
        self._group = process_group if process_group is not None else (
            getattr(model, "process_group", None) if self._wrapper is not None else None
        )
        self._distributed = self._resolve_distributed(process_group)

        self._layout = group_layout(self.module, example_inputs, ignored_layers=self.ignored_layers)
        self.layers: List[str] = list(self._layout.layers)
        self._taylor = TaylorAccumulator(self._layout, mode=taylor_mode) if self.is_gradient else None

        self._epoch = 0
        self._t0_recorded = False
        self._skipped_total = 0
        self._pruned = False
        self._prune_epoch: Optional[int] = None
        self._prune_reason: Optional[str] = None
        self._kept_counts: Optional[List[int]] = None
        self._prune_report: Dict[str, Any] = {}

        if not self.is_gradient:
            self._record(self._structures(self._scores()))
            self._t0_recorded = True

    # -- public properties -------------------------------------------------------------------------
    @property
    def is_gradient(self) -> bool:
        return self.criterion in GRADIENT_CRITERIA

    @property
    def pruned(self) -> bool:
        return self._pruned

    @property
    def prune_epoch(self) -> Optional[int]:
        """Completed epochs when the network was pruned; None if it has not been."""
        return self._prune_epoch

    @property
    def prune_reason(self) -> Optional[str]:
        """"epi" (the indicator fired), "deadline" (`deadline_epoch` reached) or None."""
        return self._prune_reason

    @property
    def epoch(self) -> int:
        """Completed epochs seen by `epoch_end()`."""
        return self._epoch

    @property
    def epi_history(self) -> Dict[float, List[Optional[float]]]:
        """{ratio: [EPI_0, EPI_1, ...]} for every tracked ratio; None where undefined."""
        return {r: ind.history for r, ind in self.indicators.items()}

    @property
    def epi(self) -> List[Optional[float]]:
        """The target ratio's EPI history."""
        return self.indicators[self.ratio].history

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps whose non-finite gradients were left out of the Taylor scores."""
        if self._taylor is None or self._pruned:
            return self._skipped_total
        return self._skipped_total + self._taylor.skipped_steps

    @property
    def kept_counts(self) -> Optional[Dict[str, int]]:
        """Per-layer output channels kept by the prune (None before it)."""
        return None if self._kept_counts is None else dict(zip(self.layers, self._kept_counts))

    # -- the training-loop hooks ------------------------------------------------------------------
    def accumulate(self, scaler: Any = None) -> None:
        """Call once per optimizer step, after backward (with AMP: after `scaler.unscale_`).

        Taylor criteria add this step's scores in one fused call with no host synchronisation
        (after the t = 0 capture). With AMP pass the `GradScaler`: the step is then skipped
        exactly when the scaler skips the optimizer step (an inf/NaN in any gradient of the
        optimizer, scored or not); before `unscale_` the scale is divided out on the device.
        Magnitude criteria, and any call after the prune: nothing to do.
        """
        if self._taylor is None or self._pruned:
            return
        self._taylor.step(scaler, self.optimizer)
        if not self._t0_recorded:
            self._capture_t0()

    def epoch_end(self) -> bool:
        """Close an epoch: record the structures, update EPI, prune if due. True if it pruned now."""
        if self._pruned:
            self._epoch += 1
            return False
        scores = self._epoch_scores()
        self._epoch += 1
        self._record(self._structures(scores))
        target = self.indicators[self.ratio]
        if target.fired:
            reason = "epi"
        elif self.deadline_epoch is not None and self._epoch >= self.deadline_epoch:
            reason = "deadline"
        else:
            return False
        self._prune(scores, reason)
        return True

    # -- reporting ----------------------------------------------------------------------------------
    def report(self) -> Dict[str, Any]:
        """What happened so far: decision, EPI curves, sizes before and after (when pruned)."""
        out: Dict[str, Any] = {
            "ratio": self.ratio,
            "criterion": self.criterion,
            "window": self.window,
            "tau": self.tau,
            "patience": self.patience,
            "deadline_epoch": self.deadline_epoch,
            "min_keep": self.min_keep,
            "reduce": self.reduce,
            "track_ratios": list(self.ratios),
            "epochs": self._epoch,
            "pruned": self._pruned,
            "prune_epoch": self._prune_epoch,
            "prune_reason": self._prune_reason,
            "epi": self.epi,
            "epi_tracked": self.epi_history,
            "skipped_steps": self.skipped_steps,
            "kept_counts": self.kept_counts,
        }
        if self._pruned:
            out.update(self._prune_report)
        else:
            # Not pruned (yet): before and after are the network as it is.
            sizes = self._sizes()
            out.update(
                params_before=sizes["params"], params_after=sizes["params"],
                flops_before=sizes["flops"], flops_after=sizes["flops"],
                macs_before=sizes["macs"], macs_after=sizes["macs"],
            )
        return out

    # -- checkpointing -----------------------------------------------------------------------------
    def _config(self) -> Dict[str, Any]:
        return {
            "ratios": list(self.ratios),
            "criterion": self.criterion,
            "window": self.window,
            "tau": self.tau,
            "patience": self.patience,
            "deadline_epoch": self.deadline_epoch,
            "min_keep": self.min_keep,
            "taylor_mode": self.taylor_mode,
            "reduce": self.reduce,
            "layers": list(self.layers),
        }

    def state_dict(self) -> Dict[str, Any]:
        """Everything a resumed run needs to make the decision an uninterrupted run would."""
        return {
            "version": _STATE_VERSION,
            "config": self._config(),
            "epoch": self._epoch,
            "t0_recorded": self._t0_recorded,
            "skipped_total": self._skipped_total,
            "indicators": [self.indicators[r].state_dict() for r in self.ratios],
            "taylor": None if (self._taylor is None or self._pruned) else self._taylor.state_dict(),
            "pruned": self._pruned,
            "prune_epoch": self._prune_epoch,
            "prune_reason": self._prune_reason,
            "kept_counts": self._kept_counts,
            "prune_report": dict(self._prune_report),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a `state_dict()`. Build this pruner exactly as the saved one was built (same
        ratios, criterion, rule), around the model restored from the same checkpoint: the
        original network before the prune, the pruned one after it (`load_pruned`)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"pruner state version {state.get('version')!r} is not supported (expected {_STATE_VERSION})")
        saved, mine = state["config"], self._config()
        for key in mine:
            if key == "layers" and state["pruned"]:
                continue  # a pruned model is traced afresh; its layer names are checked below
            if saved.get(key) != mine[key]:
                raise ValueError(f"pruner state was saved with {key}={saved.get(key)!r}, this pruner has {mine[key]!r}")
        if state["pruned"]:
            kept = dict(zip(saved["layers"], state["kept_counts"]))
            widths = self._layer_widths(kept)
            if widths != kept:
                wrong = next(n for n in kept if widths.get(n) != kept[n])
                raise ValueError(
                    f"pruner state was saved after the prune but the model is not the pruned one: "
                    f"layer {wrong} has {widths.get(wrong)} output channels, the prune kept {kept[wrong]} "
                    "(restore the pruned model, e.g. with epi_fast.serialize.load_pruned)"
                )
        for r, ind_state in zip(self.ratios, state["indicators"]):
            self.indicators[r].load_state_dict(ind_state)
        self._epoch = int(state["epoch"])
        self._t0_recorded = bool(state["t0_recorded"])
        self._skipped_total = int(state["skipped_total"])
        self._pruned = bool(state["pruned"])
        self._prune_epoch = state["prune_epoch"]
        self._prune_reason = state["prune_reason"]
        self._kept_counts = None if state["kept_counts"] is None else [int(c) for c in state["kept_counts"]]
        self._prune_report = dict(state["prune_report"])
        if self._pruned:
            self.layers = list(saved["layers"])
            self._drop_tracking()
        elif self._taylor is not None and state["taylor"] is not None:
            self._taylor.load_state_dict(state["taylor"])

    # -- internals ----------------------------------------------------------------------------------
    def _resolve_distributed(self, process_group: Any) -> bool:
        if self._wrapper is None and process_group is None:
            return False
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return False
        return dist.get_world_size(self._group) > 1

    def _broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's copy of `t` on every rank (a no-op when not distributed)."""
        if not self._distributed:
            return t
        import torch.distributed as dist

        src = 0 if self._group is None else dist.get_global_rank(self._group, 0)
        # NCCL only moves CUDA tensors; gloo takes either. Keep the collective on the
        # model's device so that NCCL works and gloo on CPU stays on CPU.
        device = next(self.module.parameters()).device
        buf = t.to(device).contiguous()
        dist.broadcast(buf, src=src, group=self._group)
        return buf.to(t.device)

    def _scores(self) -> torch.Tensor:
        from ..criteria.scoring import magnitude_scores

        if self._taylor is not None:
            return self._taylor.scores(self.reduce)
        return magnitude_scores(self._layout, self.criterion, self.reduce)

    def _epoch_scores(self) -> torch.Tensor:
        if self._taylor is None:
            return self._scores()
        steps = self._taylor.steps
        skipped = self._taylor.skipped_steps  # one small sync per epoch
        if steps == 0:
            raise RuntimeError(
                f'criterion "{self.criterion}" needs gradients: call pruner.accumulate() after every '
                f"backward of epoch {self._epoch + 1} (it was never called)"
            )
        if skipped >= steps:
            raise RuntimeError(
                f"all {steps} optimizer steps of epoch {self._epoch + 1} had non-finite gradients; "
                "no Taylor scores to rank channels by (has training diverged?)"
            )
        scores = self._taylor.scores(self.reduce)
        self._skipped_total += skipped
        self._taylor.reset()
        return scores

    def _structures(self, scores: torch.Tensor) -> torch.Tensor:
        """int64 [ratios, L] kept counts per layer for every tracked ratio, on the host."""
        return self._broadcast(self._structures_on_device(scores)).cpu()

    def _structures_on_device(self, scores: torch.Tensor) -> torch.Tensor:
        _, _, groups = _ops().global_masks_counts(scores, self.ratios, self._layout.group_sizes, self.min_keep)
        return self._layout.structure_from_counts(groups)

    def _record(self, counts: torch.Tensor) -> None:
        update_indicators([self.indicators[r] for r in self.ratios], counts)

    def _capture_t0(self) -> None:
        # Host sync, only until the first finite step is seen (see the class docstring).
        local_ok = self._taylor.skipped_steps < self._taylor.steps
        if local_ok:
            counts = self._structures_local(self._taylor.scores(self.reduce))
        else:
            counts = torch.zeros(len(self.ratios), len(self.layers), dtype=torch.int64)
        # Rank 0 decides whether this step is the t = 0 capture, and what it captured.
        packed = torch.cat([torch.tensor([int(local_ok)], dtype=torch.int64), counts.reshape(-1)])
        packed = self._broadcast(packed)
        if int(packed[0]):
            self._record(packed[1:].reshape(len(self.ratios), len(self.layers)))
            self._t0_recorded = True

    def _structures_local(self, scores: torch.Tensor) -> torch.Tensor:
        return self._structures_on_device(scores).cpu()

    def _sizes(self) -> Dict[str, int]:
        from ..surgery import count_ops

        return count_ops(self.module, self.example_inputs)

    def _layer_widths(self, names) -> Dict[str, int]:
        modules = dict(self.module.named_modules())
        out = {}
        for n in names:
            m = modules.get(n)
            if isinstance(m, nn.Linear):
                out[n] = m.out_features
            elif isinstance(m, nn.modules.conv._ConvNd):
                out[n] = m.out_channels
        return out

    def _prune(self, scores: torch.Tensor, reason: str) -> None:
        from ..surgery import prune

        # Identical channels on every rank even if float scores differed in the last bit.
        scores = self._broadcast(scores)
        target_counts = self.indicators[self.ratio].last_structure
        criterion = "taylor" if self.is_gradient else self.criterion
        report = prune(
            self.module,
            self.ratio,
            self.example_inputs,
            criterion=criterion,
            scores=scores,
            optimizer=self.optimizer,
            min_keep=self.min_keep,
            ignored_layers=self.ignored_layers,
            layout=self._layout,
            reduce=self.reduce,
        )
        self._pruned = True
        self._prune_epoch = self._epoch
        self._prune_reason = reason
        # The prune ranks the same scores with the same masks as the indicator did, so the
        # network now has exactly the structure EPI tracked; keep the surgery's own numbers.
        self._kept_counts = [int(c) for c in report.get("kept", target_counts)]
        self._prune_report = {k: v for k, v in report.items() if k not in ("ratio", "criterion")}
        self._drop_tracking()

    def _drop_tracking(self) -> None:
        # The layout (and its dependency graph) and the Taylor buffers describe the network
        # before the prune; holding them would only keep stale tensors alive.
        self._layout = None
        self._taylor = None

    def __repr__(self) -> str:
        return (
            f"EPIPruner(ratio={self.ratio}, criterion={self.criterion!r}, tau={self.tau}, window={self.window}, "
            f"epoch={self._epoch}, pruned={self._pruned}, prune_epoch={self._prune_epoch})"
        )
