"""EPIPruner's configuration: every argument checked once, defaults resolved once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from .._args import check_int, check_optional_int, check_ratio, check_ratios, check_unit
from ..criteria import Criterion, Taylor, get_criterion
from ..targets import DEFAULT_MAX_LAYER_RATIO, check_max_layer_ratio, check_ranking, check_round_to, check_target

__all__ = ["PrunerConfig"]


@dataclass(frozen=True)
class PrunerConfig:
    """What an `EPIPruner` was asked to do, validated (see `EPIPruner` for each field).

    `criterion` is the resolved `Criterion`; `criterion_name` what reports call it (the name
    the user gave, or the criterion's own); `tau` and `reduce` are resolved from the
    criterion's defaults when not given; `ratios` is the target ratio followed by the other
    tracked ratios, without repeats.
    """

    ratio: float
    criterion: Criterion
    criterion_name: str
    ratios: Tuple[float, ...]
    window: int = 5
    tau: float = 0.983
    patience: int = 5
    deadline_epoch: Optional[int] = None
    min_keep: int = 1
    ignored_layers: Tuple[Any, ...] = field(default=())
    reduce: str = "mean"
    total_epochs: Optional[int] = None
    target: str = "channels"
    max_layer_ratio: Any = DEFAULT_MAX_LAYER_RATIO
    round_to: Optional[int] = None
    ranking: str = "per_kind"
    residual: bool = False

    @classmethod
    def build(cls, ratio, criterion="magnitude", window=5, tau=None, patience=5, track_ratios=(),
              deadline_epoch=None, min_keep=1, ignored_layers=(), reduce=None, total_epochs=None,
              taylor_mode=None, target="channels", max_layer_ratio=DEFAULT_MAX_LAYER_RATIO,
              round_to=None, ranking="per_kind", residual=False) -> "PrunerConfig":
        ratio = check_ratio(ratio, "ratio", allow_zero=False)
        ratios = [ratio]
        for r in check_ratios(track_ratios, "track_ratios"):
            if r not in ratios:
                ratios.append(r)
        crit = get_criterion(criterion)
        if taylor_mode is not None:
            # 0.1's spelling of Taylor(mode): kept for string criteria that name Taylor.
            if not isinstance(criterion, str) or not isinstance(crit, Taylor):
                raise ValueError("taylor_mode applies to a Taylor criterion given by name; pass criterion=Taylor(mode) instead")
            crit = Taylor(taylor_mode)
        name = criterion if isinstance(criterion, str) else crit.name
        window = check_int(window, "window", 1)
        patience = check_int(patience, "patience", 0)
        tau = crit.default_tau if tau is None else check_unit(tau, "tau", low_open=True, high_open=False)
        deadline_epoch = check_optional_int(deadline_epoch, "deadline_epoch", 1)
        total_epochs = check_optional_int(total_epochs, "total_epochs", 1)
        if deadline_epoch is not None and total_epochs is not None and deadline_epoch > total_epochs:
            raise ValueError(f"deadline_epoch {deadline_epoch} is after the last epoch (total_epochs={total_epochs})")
        min_keep = check_int(min_keep, "min_keep", 1)
        target = check_target(target)
        max_layer_ratio = check_max_layer_ratio(max_layer_ratio)
        round_to = check_round_to(round_to)
        ranking = check_ranking(ranking)
        if not isinstance(residual, bool):
            raise TypeError(f"residual must be a bool, got {type(residual).__name__}")
        if isinstance(ignored_layers, (str, bytes)) or not hasattr(ignored_layers, "__iter__"):
            ignored_layers = (ignored_layers,)
        return cls(ratio=ratio, criterion=crit, criterion_name=name, ratios=tuple(ratios), window=window,
                   tau=float(tau), patience=patience, deadline_epoch=deadline_epoch, min_keep=min_keep,
                   ignored_layers=tuple(ignored_layers), reduce=crit.reduction(reduce), total_epochs=total_epochs,
                   target=target, max_layer_ratio=max_layer_ratio, round_to=round_to, ranking=ranking,
                   residual=residual)

    def to_dict(self) -> Dict[str, Any]:
        """The settings a resumed run must share with the saved one (checked on load)."""
        return {
            "ratios": list(self.ratios),
            "criterion": self.criterion_name,
            "criterion_config": self.criterion.config(),
            "window": self.window,
            "tau": self.tau,
            "patience": self.patience,
            "deadline_epoch": self.deadline_epoch,
            "min_keep": self.min_keep,
            "reduce": self.reduce,
            "target": self.target,
            "max_layer_ratio": self.max_layer_ratio,
            "round_to": self.round_to,
            "ranking": self.ranking,
            "residual": self.residual,
        }
