"""Magnitude criteria: |gamma| of a neuron's BatchNorm, or the L1 / L2 norm of its filters."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from .. import ops
from ._plan import plan_for
from .base import Criterion
from .registry import register_criterion

__all__ = ["Magnitude", "MAGNITUDE_KINDS"]

MAGNITUDE_KINDS = ("auto", "bn", "l1", "l2")
_NAMES = {"auto": "magnitude", "bn": "bn", "l1": "l1", "l2": "l2"}


class Magnitude(Criterion):
    """kind="auto" (the "magnitude" criterion): |gamma| of the group's BatchNorms where they
    cover every neuron of the group, the L2 norm of its filters elsewhere; "bn": |gamma| (every
    group needs a BatchNorm); "l1" / "l2": norms of the output-channel rows (dim 0) of the
    group's conv/linear layers. Coupled channels combine by the mean by default: summed, a
    residual neuron shared by k layers would outscore every lone channel about k-fold. A neuron
    tied across the groups of a grouped convolution sums its copies divided by their number."""

    needs_gradients = False
    default_tau = 0.983
    default_reduce = "mean"

    def __init__(self, kind: str = "auto") -> None:
        if kind not in MAGNITUDE_KINDS:
            raise ValueError(f"unknown magnitude kind {kind!r}; expected one of {', '.join(map(repr, MAGNITUDE_KINDS))}")
        self.kind = kind

    @property
    def name(self) -> str:  # type: ignore[override]
        return _NAMES[self.kind]

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "kind": self.kind}

    def _pick(self, group):
        if self.kind in ("l1", "l2"):
            return group.sources("filters")
        if self.kind == "bn":
            return group.sources("scales")
        return group.sources("scales") if group.covers("scales") else group.sources("filters")

    def plan(self, layout, groups=None):
        if self.kind == "bn":
            missing = [g.root for g in layout.groups if not g.covers("scales")]
            if missing:
                raise ValueError(
                    f'criterion "bn" needs a BatchNorm in every group, but {len(missing)} groups have '
                    f'none (first: {missing[0]}); use "magnitude" (bn where there is one, l2 elsewhere)'
                )
        key = ("magnitude", "rows" if self.kind in ("l1", "l2") else self.kind)
        if groups is not None:
            key += ("channel-groups",)
        return plan_for(layout, key, self._pick, groups)

    def joint_plan(self, layout):
        """The plan of the joint-norm groups (attention heads, MLP channels): every source row
        is one neuron's block of one parameter."""
        joint = [i for i, g in enumerate(layout.groups) if g.joint_norm]
        return plan_for(layout, ("magnitude", "joint"), lambda g: g.sources("filters"), joint)

    def group_scores(self, layout, reduce: Optional[str] = None) -> torch.Tensor:
        reduce = self.reduction(reduce)
        layout.check_current()
        if not any(g.joint_norm for g in layout.groups):
            return self._channel_scores(self.plan(layout), reduce)
        # Attention heads and MLP channels: the norm of all of a neuron's parameters at once
        # (q, k, v and o blocks; fc1 rows and fc2 columns), whatever `reduce` says.
        plain = [i for i, g in enumerate(layout.groups) if not g.joint_norm]
        joint = self.joint_plan(layout)
        norm = "l1" if self.kind == "l1" else "l2"
        if self.kind == "bn":
            missing = next(g.root for g in layout.groups if g.joint_norm)
            raise ValueError(f'criterion "bn" needs a BatchNorm in every group, but {missing} has none; use "magnitude"')
        parts = ops.channel_scores(joint.tensors(), norm)
        if norm == "l2":
            joint_scores = joint.reduce(parts * parts, "sum").sqrt()
        else:
            joint_scores = joint.reduce(parts, "sum")
        if not plain:
            return joint_scores
        out = torch.empty(layout.num_neurons, dtype=torch.float32, device=joint_scores.device)
        out[joint.neuron_index.to(out.device)] = joint_scores
        rest = self.plan(layout, plain)
        out[rest.neuron_index.to(out.device)] = self._channel_scores(rest, reduce)
        return out

    def _channel_scores(self, plan, reduce: str) -> torch.Tensor:
        tensors = plan.tensors()
        if self.kind in ("l1", "l2"):
            scores = ops.channel_scores(tensors, self.kind)
        elif self.kind == "bn":
            scores = ops.channel_scores(tensors, "abs")
        else:
            parts = []
            if plan.num_bn:
                parts.append(ops.channel_scores(tensors[: plan.num_bn], "abs"))
            if len(tensors) > plan.num_bn:
                parts.append(ops.channel_scores(tensors[plan.num_bn:], "l2"))
            scores = torch.cat(parts) if len(parts) > 1 else parts[0]
        return plan.reduce(scores, reduce)


for _kind, _name in _NAMES.items():
    register_criterion(_name, lambda k=_kind: Magnitude(k))
