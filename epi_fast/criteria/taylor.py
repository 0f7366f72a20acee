"""First-order Taylor importance (Molchanov et al. 2019), accumulated over optimizer steps."""

from __future__ import annotations

from typing import Any, Dict

import torch

from .. import ops
from ..ops._checks import TAYLOR_MODES
from ._plan import plan_for
from .base import Accumulator, Criterion, check_reduce
from .registry import register_criterion

__all__ = ["Taylor", "TaylorAccumulator", "TAYLOR_MODES"]


class Taylor(Criterion):
    """Per neuron, f(sum over its parameters of w * dL/dw) per optimizer step, averaged over the
    steps of an epoch; f = square (`mode="square"`, the default) or abs. The parameters are the
    BatchNorm weight and bias where the group has BatchNorms, else its filters' weight and bias.
    Coupled channels add up (default reduce "sum"): removing a coupled neuron removes all of
    them. EPI threshold 0.944 (the paper's gradient threshold)."""

    needs_gradients = True
    default_tau = 0.944
    default_reduce = "sum"
    name = "taylor"

    def __init__(self, mode: str = "square") -> None:
        if mode not in TAYLOR_MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(map(repr, TAYLOR_MODES))}")
        self.mode = mode

    def config(self) -> Dict[str, Any]:
        return {**super().config(), "mode": self.mode}

    def plan(self, layout):
        return plan_for(layout, ("taylor",), lambda g: g.sources("taylor"))

    def accumulator(self, layout) -> "TaylorAccumulator":
        return TaylorAccumulator(layout, mode=self.mode)


def _scaler_factor(scaler, optimizer, device):
    """The factor that turns this step's gradients into unscaled ones, as a one-element device
    tensor, or None: 1/scale before unscale_; after it, 1 or +inf when the scaler found an
    inf/NaN anywhere in the optimizer's gradients (+inf makes the step non-finite, hence
    skipped). Reads GradScaler's per-optimizer state, stable since torch 1.6."""
    if scaler is None or not scaler.is_enabled():
        return None
    state = getattr(scaler, "_per_optimizer_states", {}).get(id(optimizer)) if optimizer is not None else None
    stage = getattr(state.get("stage"), "name", None) if state else None
    if stage == "UNSCALED":
        found = [f.to(device=device, dtype=torch.float32) for f in state["found_inf_per_device"].values()]
        if not found:
            return None
        flag = torch.stack(found).sum().clamp(max=1.0)
        return (1.0 / (1.0 - flag)).reshape(1)
    scale = scaler._get_scale_async() if hasattr(scaler, "_get_scale_async") else scaler._scale
    if scale is None:
        return None
    # Reciprocal on device: reading the scale on the host would synchronise.
    return scale.double().reciprocal().float().reshape(1).to(device)


class TaylorSums(Accumulator):
    """The state both Taylor accumulators keep (this one and the sharded one of
    `epi_fast.criteria.sharded`): `acc` float32 [channels] of per-step terms, `_skipped` the
    steps dropped for inf/NaN (on the device: no sync per step), `steps`, `mode`, `plan`;
    subclasses set them and add `step()` and `scores()`."""

    acc: torch.Tensor
    _skipped: torch.Tensor
    steps: int
    mode: str

    @property
    def skipped_steps(self) -> int:
        return int(self._skipped.item())

    def mean(self, acc: torch.Tensor) -> torch.Tensor:
        """`acc` divided by the steps that were not skipped (at least one)."""
        good = (self.steps - self._skipped).clamp(min=1).to(torch.float32)
        return acc / good

    def reset(self) -> None:
        self.acc.zero_()
        self._skipped.zero_()
        self.steps = 0

    def state_dict(self) -> dict:
        return {"acc": self.acc.clone(), "skipped": self._skipped.clone(), "steps": self.steps, "mode": self.mode}

    def load_state_dict(self, state: dict) -> None:
        acc = state["acc"]
        if tuple(acc.shape) != tuple(self.acc.shape):
            raise ValueError(
                f"state holds {acc.numel()} Taylor channels, this layout has {self.acc.numel()}: "
                "it comes from another model or from before a prune"
            )
        if state.get("mode", self.mode) != self.mode:
            raise ValueError(f"state was accumulated with mode {state['mode']!r}, this accumulator uses {self.mode!r}")
        self.acc.copy_(acc)
        self._skipped.copy_(state["skipped"].reshape(1))
        self.steps = int(state["steps"])


class TaylorAccumulator(TaylorSums):
    """First-order Taylor scores accumulated over optimizer steps, in the layout's order.

    Per channel, a step adds ``f(sum over the channel's parameters of w * dL/dw)`` with f =
    square (``mode="square"``) or abs: the BatchNorm weight and bias of each BN member (both into
    the same channels), or the conv/linear weight and bias of groups without a BatchNorm; for an
    attention head or an MLP channel, every one of its parameters into one row, so that f
    applies to the sum over the whole head. One
    fused `taylor_accumulate_` call per step, no host synchronisation; a step whose gradients
    hold inf/NaN is skipped and counted. `scores()` averages over the steps that were not
    skipped and combines member channels into group neurons.
    """

    def __init__(self, layout, mode: str = "square"):
        self.criterion = Taylor(mode)
        self.layout = layout
        self.mode = mode
        self.plan = self.criterion.plan(layout)
        module, attrs, _ = self.plan.sources[0]
        first = getattr(module, attrs[0])
        self.acc = torch.zeros(self.plan.num_channels, dtype=torch.float32, device=first.device)
        self._skipped = torch.zeros(1, dtype=torch.int64, device=first.device)
        self.steps = 0

    def step(self, scaler=None, optimizer=None) -> None:
        """Add this step's Taylor terms; call once per optimizer step, after backward.

        With a `GradScaler`, pass it (and the optimizer): before `scaler.unscale_(optimizer)`
        the gradients are divided by the scale on the device; after it they are taken as they
        are, and the scaler's own verdict (an inf/NaN in any of the optimizer's gradients,
        scored or not) skips this step too, so the Taylor scores skip exactly the steps that
        the optimizer skips. Parameters without a gradient are left out. No host sync.
        """
        params, grads, offsets = [], [], []
        for (module, attrs, view), off in zip(self.plan.sources, self.plan.offsets):
            for attr in attrs:
                p = getattr(module, attr)
                if p is not None and p.grad is not None:
                    if view is None:
                        params.append(p.detach())
                        grads.append(p.grad)
                    else:  # a head's block of a projection as one row (see Source.view)
                        params.append(view(p.detach()))
                        grads.append(view(p.grad))
                    offsets.append(off)
        if not params:
            raise RuntimeError("no scored parameter has a gradient: call step() after loss.backward()")
        inv_scale = _scaler_factor(scaler, optimizer, self.acc.device)
        ops.taylor_accumulate_(self.acc, self._skipped, params, grads, offsets, self.mode, inv_scale)
        self.steps += 1

    def scores(self, reduce: str = "sum") -> torch.Tensor:
        """float32 [N]: mean per-step Taylor score of each group neuron (zeros before any step)."""
        check_reduce(reduce)
        return self.plan.reduce(self.mean(self.acc), reduce)


register_criterion("taylor", Taylor)
register_criterion("gradient", Taylor)
