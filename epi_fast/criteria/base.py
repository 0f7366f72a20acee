"""The criterion interface: how a layout's neurons get one flat vector of importance scores.

A criterion is an object (`Criterion`); it is the only place that knows how it scores. Two
shapes exist:

- weight criteria (`needs_gradients = False`) read the parameters as they are now:
  `group_scores(layout, reduce)` returns float32 [N] in the layout's order;
- gradient criteria (`needs_gradients = True`) accumulate over optimizer steps:
  `accumulator(layout)` returns an `Accumulator` that `EPIPruner` steps once per optimizer
  step and reads once per epoch.

Each criterion also states its EPI threshold (`default_tau`) and how coupled channels combine
into one neuron's score (`default_reduce`). A criterion defined in a user's own code, a
subclass of `Criterion`, works wherever a criterion name does (`prune`, `EPIPruner`); names
resolve through `epi_fast.criteria.get_criterion`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional

import torch

from ..ops._checks import REDUCTIONS

__all__ = ["Criterion", "Accumulator", "check_reduce", "REDUCTIONS"]


def check_reduce(reduce: Any) -> str:
    """A group reduction name: "sum", "mean" or "max" (ValueError otherwise)."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; expected one of {', '.join(map(repr, REDUCTIONS))}")
    return reduce


class Accumulator:
    """Per-step state of a gradient criterion over one layout.

    `step(scaler=None, optimizer=None)` once per optimizer step after backward; `scores(reduce)`
    float32 [N] from the steps so far; `steps` and `skipped_steps` (steps left out because their
    gradients were not finite); `reset()` between epochs; `state_dict()` / `load_state_dict()`
    so that a resumed run continues the same sums.
    """

    steps: int = 0

    def step(self, scaler=None, optimizer=None) -> None:
        raise NotImplementedError

    def scores(self, reduce: str) -> torch.Tensor:
        raise NotImplementedError

    @property
    def skipped_steps(self) -> int:
        return 0

    def reset(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


class Criterion:
    """Base class of importance criteria (see the module docstring).

    Class attributes a subclass may set: `name` (what reports call it), `needs_gradients`,
    `default_tau` (0.983, the paper's magnitude threshold, unless the criterion is a gradient
    one: 0.944), `default_reduce` ("mean" for magnitudes, "sum" for first-order Taylor terms,
    which add up over the coupled channels that one neuron removes).
    """

    name: ClassVar[str] = "custom"
    needs_gradients: ClassVar[bool] = False
    default_tau: ClassVar[float] = 0.983
    default_reduce: ClassVar[str] = "mean"

    @property
    def family(self) -> str:
        """"gradient" for criteria that accumulate gradients, else "magnitude"."""
        return "gradient" if self.needs_gradients else "magnitude"

    def reduction(self, reduce: Optional[str] = None) -> str:
        """`reduce`, or this criterion's default when it is None."""
        return check_reduce(self.default_reduce if reduce is None else reduce)

    def group_scores(self, layout, reduce: Optional[str] = None) -> torch.Tensor:
        """float32 [N] group-neuron scores of the weights as they are now, in layout order."""
        if self.needs_gradients:
            raise ValueError(
                f"criterion {self.name!r} needs gradients: pass scores= accumulated over training "
                "(its accumulator(layout).scores(), or use EPIPruner)"
            )
        raise NotImplementedError(f"{type(self).__name__} must implement group_scores(layout, reduce)")

    def accumulator(self, layout) -> Accumulator:
        """A fresh `Accumulator` over `layout` (gradient criteria only)."""
        raise NotImplementedError(f"{type(self).__name__} reads weights only; it has no accumulator")

    def config(self) -> Dict[str, Any]:
        """What identifies this criterion in a checkpoint: a resumed run must score alike."""
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}", "name": self.name}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.config() == self.config()

    def __hash__(self) -> int:
        return hash(repr(sorted(self.config().items())))

    def __repr__(self) -> str:
        params = {k: v for k, v in self.config().items() if k not in ("class", "name")}
        inner = ", ".join(f"{k}={v!r}" for k, v in params.items())
        return f"{type(self).__name__}({inner})"
