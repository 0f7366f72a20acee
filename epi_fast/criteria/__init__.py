"""Importance criteria as objects.

    from epi_fast.criteria import Magnitude, Taylor, Criterion, get_criterion

`Magnitude(kind="auto"|"bn"|"l1"|"l2")` and `Taylor(mode="square"|"abs")` are the built-ins;
the names "magnitude", "bn", "l1", "l2" (weight criteria) and "taylor", "gradient" (Taylor,
square) resolve to them through one registry (`get_criterion`, `register_criterion`). A subclass
of `Criterion` in a user's own code plugs into `epi_fast.prune` and `EPIPruner` unchanged.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Optional

import torch

from ._plan import ScorePlan
from .base import REDUCTIONS, Accumulator, Criterion, check_reduce
from .magnitude import MAGNITUDE_KINDS, Magnitude
from .registry import criterion_names, get_criterion, gradient_criterion_names, register_criterion
from .taylor import TAYLOR_MODES, Taylor, TaylorAccumulator

__all__ = [
    "Criterion", "Accumulator", "Magnitude", "Taylor", "TaylorAccumulator",
    "get_criterion", "register_criterion", "criterion_names", "gradient_criterion_names",
    "check_reduce", "REDUCTIONS", "MAGNITUDE_KINDS", "TAYLOR_MODES", "MAGNITUDE_CRITERIA",
    "magnitude_scores", "score_plan", "ScorePlan",
]

# Every module of this package is imported, so that a criterion added as one new file registers
# its names without an edit anywhere else (its class is then epi_fast.criteria.<file>.<Class>).
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

# The weight criteria's names (0.1 exported this tuple).
MAGNITUDE_CRITERIA = tuple(n for n in criterion_names() if n not in gradient_criterion_names())


def magnitude_scores(layout, criterion: str = "magnitude", reduce: Optional[str] = None) -> torch.Tensor:
    """float32 [N] scores of the weight criterion `criterion` (a name or a `Criterion`), its
    member channels combined by `reduce` (None: the criterion's default, "mean")."""
    crit = get_criterion(criterion)
    if crit.needs_gradients:
        raise ValueError(f"unknown criterion {criterion!r}; expected one of {', '.join(map(repr, MAGNITUDE_CRITERIA))}")
    return crit.group_scores(layout, reduce)


def score_plan(layout, kind: str) -> ScorePlan:
    """The cached plan of `layout` for kind "rows" (l1/l2), "bn", "magnitude" or "taylor"."""
    if kind == "taylor":
        return Taylor().plan(layout)
    kinds = {"rows": "l2", "bn": "bn", "magnitude": "auto"}
    if kind not in kinds:
        raise ValueError(f"unknown plan kind {kind!r}")
    return Magnitude(kinds[kind]).plan(layout)
