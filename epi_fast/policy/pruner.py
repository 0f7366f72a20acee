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
counts; the EPI bookkeeping itself is host arithmetic on those integers (`epi_fast.indicator`).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ..criteria import criterion_names, get_criterion, gradient_criterion_names
from ..distributed import is_ddp, is_fsdp, rank_zero_for
from ..indicator import IndicatorBank
from ..layout.transformer import layer_width
from ..surgery.removal import forget_compiled_graphs, is_compiled
from ..layout import unwrap_model
from ..surgery import count_ops
from ..surgery.removal import prune_to
from ..targets import DEFAULT_MAX_LAYER_RATIO, TOLERANCE
from ..surgery.optimizer import check_optimizer_holds_model
from .config import PrunerConfig
from .decision import LatePruneWarning, late_prune_message, prune_decision
from .fsdp import ShardedModel
from .tracker import StructureTracker

__all__ = ["EPIPruner", "CRITERIA", "GRADIENT_CRITERIA", "default_tau"]

# The built-in criterion names (0.1 exported these tuples; the registry is the source).
CRITERIA = criterion_names()
GRADIENT_CRITERIA = gradient_criterion_names()
_STATE_VERSION = 3
# What the selection rule was before version 3 (0.1 and 0.2): channels, no per-layer limit, no
# rounding. A state from then is read with these, so a pruner built with other settings is told.
_RULE_BEFORE_V3 = {"target": "channels", "max_layer_ratio": 1.0, "round_to": None, "ranking": "per_kind",
                   "residual": False}


def default_tau(criterion) -> float:
    """The criterion's EPI threshold: the paper's 0.944 for the gradient (Taylor) criterion,
    0.983 for magnitude criteria (`Criterion.default_tau`)."""
    return get_criterion(criterion).default_tau


class EPIPruner:
    """Decide when to prune with EPI during training, then prune structurally, in place.

    Args:
        model: the network, or a `DistributedDataParallel` wrapper of it (the pruner works on
            `.module`; see "Distributed" below).
        optimizer: its optimizer; at the prune its state (momentum, Adam moments) is cut down to
            the surviving channels. May be None; when given it must hold the model's parameters.
        ratio: the target prune ratio in (0, 1): the fraction of `target` removed.
        example_inputs: what the model is called with (shape matters, values do not); used to
            trace the channel dependencies and to count FLOPs.
        criterion: a name ("magnitude": BN |gamma| where a BatchNorm follows, filter L2
            elsewhere; "bn", "l1", "l2"; "gradient" / "taylor": first-order Taylor accumulated
            over the optimizer steps of each epoch) or an `epi_fast.criteria.Criterion`.
        window, patience: the EPI window r and the firing rule's patience (docs/METHOD.md).
        tau: the EPI threshold; None takes the criterion's (0.944 for the gradient criterion,
            0.983 for magnitude criteria).
        track_ratios: more ratios whose EPI curves are recorded from the same scores (the
            target is always tracked). Only the target ratio's indicator decides.
        deadline_epoch: prune after this many epochs if EPI has not fired by then
            (`prune_reason` = "deadline"); None = never force it.
        min_keep: neurons every group keeps at any ratio (never empty a layer).
        target: what `ratio` is a fraction of: "channels" (group neurons, the paper's meaning),
            "params" or "flops" (of the model's parameters or FLOPs, met within 0.01).
        max_layer_ratio: at most floor(max_layer_ratio * width) channels of one layer go (a
            float in (0, 1] or a mapping from layer name to one); the default 0.9 keeps at
            least ceil(0.1 * width) of every layer; 1.0 is the paper's setting.
        round_to: every pruned layer keeps a multiple of it (or its whole width if narrower).
            EPI tracks the structures of this same target, limits and rounding.
        ignored_layers: modules or names whose output channels are never pruned.
        reduce: how the channels coupled into one group neuron (a residual add) combine into
            its score: None takes the criterion's default ("mean" for magnitude criteria,
            "sum" for Taylor), or "sum", "mean", "max".
        total_epochs: the length of the schedule, if known: a prune with less than 10% of it
            left warns (`LatePruneWarning`) that the network has little time to recover.
        taylor_mode: 0.1's way to ask for Taylor(mode="abs") with a name; prefer
            criterion=Taylor(mode).
        process_group: the group to agree in when the model is not DDP-wrapped but the job is
            distributed; a DDP wrapper's own group is used otherwise (a model sharded with
            fully_shard agrees over its mesh: a group given must hold the same ranks).
        reshard_fn: for a model sharded with `fully_shard`: the function that shards the pruned
            model again, ``reshard_fn(module)``, called on every rank with the pruned plain
            (unsharded) module; it shards it in place and returns None, or returns the module to
            train. None: `fully_shard` is applied again to the modules it was applied to, with
            the settings they had (mesh, reshard_after_forward, mixed precision, offloading).
        state: a `state_dict()` to resume from, loaded here. After the prune, pass it here
            (around the pruned model) rather than to `load_state_dict`: nothing is traced
            then, so a pruned network that cannot meet a params or FLOPs ratio again is fine.

    Distributed: the structure each epoch is computed from rank 0's scores and broadcast (one
    small collective per epoch, int64 [ratios x layers]); every rank then runs the same
    deterministic rule on the same numbers, so all ranks decide alike and hold identical
    indicator state. At the prune, rank 0's scores are broadcast as well so every rank removes
    the very same channels. The DDP wrapper does not survive a change of parameter shapes:
    after `epoch_end()` returns True, wrap `pruner.module` in a new DDP (docs/EPI_USAGE.md).

    FSDP2: a model sharded with `fully_shard` (every parameter a DTensor on `Shard(0)` of one
    1-D mesh) is traced once on a gathered copy at construction; each epoch every rank scores
    its own shards and the ranks add their O(channels) score buffers (one all-reduce, never a
    weight; Taylor adds one small all-reduce per step). At the prune the model is gathered (one
    full copy), pruned, sharded again (`reshard_fn`) and the optimizer carried over in place.
    The model passed in is left as it was: train `pruner.module` after `epoch_end()` returns
    True (`epi_fast.policy.fsdp`, docs/EPI_USAGE.md).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optional[torch.optim.Optimizer],
        ratio: float,
        example_inputs: Any,
        criterion: Any = "magnitude",
        window: int = 5,
        tau: Optional[float] = None,
        patience: int = 5,
        track_ratios: Sequence[float] = (),
        deadline_epoch: Optional[int] = None,
        min_keep: int = 1,
        ignored_layers: Sequence[Any] = (),
        reduce: Optional[str] = None,
        target: str = "channels",
        max_layer_ratio: Any = DEFAULT_MAX_LAYER_RATIO,
        round_to: Optional[int] = None,
        *,
        ranking: str = "per_kind",
        residual: bool = False,
        total_epochs: Optional[int] = None,
        taylor_mode: Optional[str] = None,
        process_group: Any = None,
        state: Optional[Dict[str, Any]] = None,
        reshard_fn: Optional[Callable[[nn.Module], Any]] = None,
    ) -> None:
        self.config = PrunerConfig.build(
            ratio, criterion=criterion, window=window, tau=tau, patience=patience, track_ratios=track_ratios,
            deadline_epoch=deadline_epoch, min_keep=min_keep, ignored_layers=ignored_layers, reduce=reduce,
            total_epochs=total_epochs, taylor_mode=taylor_mode, target=target, max_layer_ratio=max_layer_ratio,
            round_to=round_to, ranking=ranking, residual=residual,
        )
        self._wrapper = model if is_ddp(model) else None
        self._compiled = is_compiled(model)
        self.module: nn.Module = unwrap_model(model)
        if optimizer is not None:
            check_optimizer_holds_model(optimizer, self.module)
        self.optimizer = optimizer
        self.example_inputs = example_inputs
        self._fsdp: Optional[ShardedModel] = None
        if is_fsdp(self.module):
            if self._wrapper is not None:
                raise ValueError("the model is both wrapped in DDP and sharded with fully_shard: pass one of them")
            self._fsdp = ShardedModel(self.module, reshard_fn, process_group)
            self.config = self._fsdp.with_names(self.config)
            self._sync = self._fsdp.comm
        elif reshard_fn is not None:
            raise ValueError("reshard_fn applies to a model sharded with torch.distributed.fsdp.fully_shard; "
                             "this one is not")
        else:
            self._sync = rank_zero_for(model, self.module, process_group)
        self._dense_sizes: Optional[Dict[str, int]] = None
        saved = _upgrade_state(state) if state is not None else None
        if saved is not None and saved["pruned"]:
            # Resuming after the prune: nothing is tracked any more, and the pruned network need
            # not meet the ratio again (a params or FLOPs target usually cannot).
            self.tracker: Optional[StructureTracker] = None
            self._bank: IndicatorBank = IndicatorBank(self.config.ratios, window=self.config.window,
                                                      tau=self.config.tau, patience=self.config.patience)
            self.layers: List[str] = list(saved["config"].get("layers", []))
        else:
            if self._fsdp is not None:
                self.tracker, self._dense_sizes = self._fsdp.tracker(example_inputs, self.config)
            else:
                self.tracker = StructureTracker(self.module, example_inputs, self.config, self._sync)
            self._bank = self.tracker.bank
            self.layers = list(self.tracker.layers)

        self._epoch = 0
        self._skipped_after_tracking = 0
        self._pruned = False
        self._keep_mask: Optional[torch.Tensor] = None
        self._prune_epoch: Optional[int] = None
        self._prune_reason: Optional[str] = None
        self._kept_counts: Optional[List[int]] = None
        self._prune_report: Dict[str, Any] = {}
        if saved is not None:
            self.load_state_dict(saved)

    # -- configuration, read-only ---------------------------------------------------------------
    @property
    def ratio(self) -> float:
        return self.config.ratio

    @property
    def ratios(self) -> List[float]:
        return list(self.config.ratios)

    @property
    def criterion(self) -> str:
        """The criterion's name as given (or the `Criterion`'s own name)."""
        return self.config.criterion_name

    @property
    def tau(self) -> float:
        return self.config.tau

    @property
    def window(self) -> int:
        return self.config.window

    @property
    def patience(self) -> int:
        return self.config.patience

    @property
    def deadline_epoch(self) -> Optional[int]:
        return self.config.deadline_epoch

    @property
    def min_keep(self) -> int:
        return self.config.min_keep

    @property
    def reduce(self) -> str:
        return self.config.reduce

    @property
    def is_gradient(self) -> bool:
        return self.config.criterion.needs_gradients

    # -- state -------------------------------------------------------------------------------------
    @property
    def indicators(self) -> IndicatorBank:
        """The EPI indicators, by ratio: ``pruner.indicators[0.5]``."""
        return self._bank

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
        return self._bank.history()

    @property
    def epi(self) -> List[Optional[float]]:
        """The target ratio's EPI history."""
        return self._bank[self.ratio].history

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps whose non-finite gradients were left out of the Taylor scores."""
        if self.tracker is None:
            return self._skipped_after_tracking
        return self.tracker.skipped_steps

    @property
    def keep_mask(self) -> Optional[torch.Tensor]:
        """bool [N]: the group neurons the prune kept, in the dense model's layout order (what
        `prune_with_masks` takes to prune a copy of the dense model alike, e.g. an EMA); None
        before the prune, and after a resume from a state saved after it."""
        return self._keep_mask

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
        if self.tracker is not None:
            self.tracker.accumulate(scaler, self.optimizer)

    def epoch_end(self) -> bool:
        """Close an epoch: record the structures, update EPI, prune if due. True if it pruned now."""
        if self._pruned:
            self._epoch += 1
            return False
        record = self.tracker.epoch_end()
        self._epoch += 1
        reason = prune_decision(self._bank.fired_epoch, self._epoch, self.deadline_epoch)
        if reason is None:
            return False
        self._prune(record.scores, reason)
        return True

    # -- reporting ----------------------------------------------------------------------------------
    def report(self) -> Dict[str, Any]:
        """What happened so far: decision, EPI curves, sizes before and after (when pruned)."""
        settings = self.config.to_dict()
        out: Dict[str, Any] = {
            "ratio": self.ratio,
            "track_ratios": settings.pop("ratios"),
            **settings,
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
            # Not pruned (yet): before and after are the network as it is (a sharded model's
            # sizes were counted on its gathered copy at construction: no collective here, so
            # that rank 0 alone may report).
            sizes = self._dense_sizes if self._dense_sizes is not None else count_ops(self.module, self.example_inputs)
            out.update(
                params_before=sizes["params"], params_after=sizes["params"],
                flops_before=sizes["flops"], flops_after=sizes["flops"],
                macs_before=sizes["macs"], macs_after=sizes["macs"],
            )
        return out

    # -- checkpointing -----------------------------------------------------------------------------
    def _config(self) -> Dict[str, Any]:
        return {**self.config.to_dict(), "layers": list(self.layers)}

    def state_dict(self) -> Dict[str, Any]:
        """Everything a resumed run needs to make the decision an uninterrupted run would."""
        return {
            "version": _STATE_VERSION,
            "config": self._config(),
            "epoch": self._epoch,
            "tracker": None if self.tracker is None else self.tracker.state_dict(),
            "bank": self._bank.state_dict(),
            "skipped_after_tracking": self._skipped_after_tracking,
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
        state = _upgrade_state(state)
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
                    "(restore the pruned model, e.g. with epi_fast.load_pruned)"
                )
        self._bank.load_state_dict(state["bank"])
        self._epoch = int(state["epoch"])
        self._skipped_after_tracking = int(state["skipped_after_tracking"])
        self._pruned = bool(state["pruned"])
        self._prune_epoch = state["prune_epoch"]
        self._prune_reason = state["prune_reason"]
        self._kept_counts = None if state["kept_counts"] is None else [int(c) for c in state["kept_counts"]]
        self._prune_report = dict(state["prune_report"])
        if self._pruned:
            self.layers = list(saved["layers"])
            self.tracker = None
        elif state["tracker"] is not None:
            self.tracker.load_state_dict({**state["tracker"], "bank": state["bank"]})

    # -- internals ----------------------------------------------------------------------------------
    def _layer_widths(self, names) -> Dict[str, int]:
        modules = dict(self.module.named_modules())
        out = {}
        for n in names:
            width = layer_width(modules.get(n))
            if width is not None:
                out[n] = width
        return out

    def _prune(self, scores: torch.Tensor, reason: str) -> None:
        tracker = self.tracker
        # Identical channels on every rank even if float scores differed in the last bit.
        if self._sync is not None:
            scores = self._sync.broadcast(scores, f"broadcast of the prune's scores at the end of epoch {self._epoch}")
        cfg = self.config
        if self._fsdp is not None:
            report, self._keep_mask = self._fsdp.prune(scores, cfg, self.optimizer, self.example_inputs, tracker.layout)
            self.module = self._fsdp.module
        else:
            keep: list = []
            report = prune_to(self.module, self.ratio, self.example_inputs, cfg.criterion, scores, self.optimizer,
                              self.min_keep, cfg.ignored_layers, tracker.layout, self.reduce, cfg.target,
                              cfg.max_layer_ratio, cfg.round_to, strict=False, ranking=cfg.ranking, keep_out=keep)
            self._keep_mask = keep[0]
        if self._compiled:
            forget_compiled_graphs()
        if abs(report["achieved"] - self.ratio) > TOLERANCE:
            warnings.warn(
                f"pruned {report['achieved']:.4f} of the {cfg.target} for a requested {self.ratio}: the structure EPI "
                f"tracked could not come nearer under these limits and rounding", stacklevel=3,
            )
        self._pruned = True
        self._prune_epoch = self._epoch
        self._prune_reason = reason
        # The prune ranks the same scores with the same masks as the indicator did, so the
        # network now has exactly the structure EPI tracked (prune itself checks the widths).
        self._kept_counts = [int(c) for c in report["kept"]]
        self._prune_report = {k: v for k, v in report.items() if k not in ("ratio", "criterion")}
        # The layout (and its dependency graph) and the Taylor buffers describe the network
        # before the prune; holding them would only keep stale tensors alive.
        self._skipped_after_tracking = tracker.skipped_steps
        self.tracker = None
        message = late_prune_message(self._epoch, self.config.total_epochs)
        if message is not None:
            warnings.warn(message, LatePruneWarning, stacklevel=3)

    def __repr__(self) -> str:
        return (
            f"EPIPruner(ratio={self.ratio}, criterion={self.criterion!r}, tau={self.tau}, window={self.window}, "
            f"epoch={self._epoch}, pruned={self._pruned}, prune_epoch={self._prune_epoch})"
        )


def _upgrade_state(state: Dict[str, Any]) -> Dict[str, Any]:
    """A state_dict of this version, from this version, 0.2's (version 2) or 0.1's (version 1)."""
    version = state.get("version")
    if version == _STATE_VERSION:
        # "ranking" came within version 3: before it, kinds were ranked in one order, which for
        # the one kind of a CNN is the per-kind rule.
        return {**state, "config": {"ranking": "per_kind", "residual": False, **state["config"]}}
    if version == 2:
        return {**state, "version": _STATE_VERSION, "config": {**_RULE_BEFORE_V3, **state["config"]}}
    if version != 1:
        raise ValueError(f"pruner state version {version!r} is not supported (expected 1 to {_STATE_VERSION})")
    cfg = dict(state["config"])
    mode = cfg.pop("taylor_mode", "square")
    crit = get_criterion(cfg["criterion"])
    if crit.needs_gradients:
        crit = type(crit)(mode)
    cfg["criterion_config"] = crit.config()
    cfg = {**_RULE_BEFORE_V3, **cfg}
    ratios = cfg["ratios"]
    bank = {"ratios": list(ratios), "indicators": list(state["indicators"])}
    tracker = None
    if not state["pruned"]:
        tracker = {"epoch": state["epoch"], "t0_recorded": state["t0_recorded"],
                   "skipped_total": state["skipped_total"], "accumulator": state["taylor"]}
    return {
        "version": _STATE_VERSION, "config": cfg, "epoch": state["epoch"], "tracker": tracker, "bank": bank,
        "skipped_after_tracking": state["skipped_total"], "pruned": state["pruned"],
        "prune_epoch": state["prune_epoch"], "prune_reason": state["prune_reason"],
        "kept_counts": state["kept_counts"], "prune_report": state["prune_report"],
    }
