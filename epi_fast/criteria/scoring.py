"""Group-neuron scores in the layout's order: magnitude criteria and accumulated Taylor.

Every score takes two fused steps: one `channel_scores` (or `taylor_accumulate_`) call over all
member tensors at once gives per-channel scores in a flat buffer, then one `group_reduce` over a
CSR index built once per layout combines the member channels of each group neuron. Neuron j of
group g lands at ``layout.offsets[g] + j``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..layout.graph import BATCHNORM, GroupLayout

from .. import ops

__all__ = ["MAGNITUDE_CRITERIA", "REDUCTIONS", "ScorePlan", "TaylorAccumulator", "magnitude_scores", "score_plan"]

MAGNITUDE_CRITERIA = ("bn", "l1", "l2", "magnitude")
REDUCTIONS = ("sum", "mean", "max")


@dataclass
class ScorePlan:
    """Where each group neuron's member channels sit in one flat per-channel buffer.

    sources: (module, attribute names) in buffer order; the attributes of one source add into
    the same rows (BN weight and bias). offsets[i]: the first buffer row of source i.
    group_ptr / member_idx: the CSR index that `group_reduce` takes (neuron n combines
    ``buffer[member_idx[group_ptr[n]:group_ptr[n+1]]]``). num_bn: how many leading sources are
    BatchNorms (the magnitude plan scores those with "abs" and the rest with "l2").
    """

    sources: list[tuple[nn.Module, tuple[str, ...]]]
    offsets: list[int]
    num_channels: int
    group_ptr: torch.Tensor
    member_idx: torch.Tensor
    num_bn: int
    copies: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        """The first attribute of every source, detached (what magnitude criteria read)."""
        return [getattr(m, attrs[0]).detach() for m, attrs in self.sources]

    def index_on(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        # Cached per device so that a GPU model pays for the copy once, not every epoch.
        key = str(device)
        cache = self.__dict__.setdefault("_on", {})
        if key not in cache:
            cache[key] = (self.group_ptr.to(device), self.member_idx.to(device))
        return cache[key]


def _row_members(g):
    # Transposed convs keep output channels in dim 1: not rows that channel_scores reads.
    return [(m, ("weight",)) for m in g.members if m.kind == "out" and not getattr(m.module, "transposed", False)]


def _bn_members(g):
    return [(m, ("weight",)) for m in g.members if m.kind == "bn" and m.module.affine]


def _has_full_bn(g) -> bool:
    """True when the group's BatchNorms cover every neuron (then "bn"/"magnitude" read them)."""
    covered = torch.zeros(g.size, dtype=torch.bool)
    for m, _ in _bn_members(g):
        covered[m.neurons] = True
    return bool(covered.all())


def _taylor_members(g):
    """BN weight and bias where the group has BatchNorms, else its filters' weight and bias:
    removing a neuron removes all of them, so all enter its first-order Taylor term."""
    if _has_full_bn(g):
        return [(m, ("weight", "bias")) for m, _ in _bn_members(g)]
    return [(m, ("weight", "bias") if m.module.bias is not None else ("weight",)) for m, _ in _row_members(g)]


def _magnitude_members(g):
    return _bn_members(g) if _has_full_bn(g) else _row_members(g)


def _build(layout: GroupLayout, pick) -> ScorePlan:
    picked = [(base, pick(g)) for g, base in zip(layout.groups, layout.offsets)]
    unique: dict[int, tuple[nn.Module, tuple[str, ...]]] = {}
    for _, members in picked:
        for mem, attrs in members:
            unique.setdefault(id(mem.module), (mem.module, attrs))
    # BatchNorms first: the magnitude plan scores a prefix with "abs" and the rest with "l2".
    sources = sorted(unique.values(), key=lambda s: not isinstance(s[0], BATCHNORM))
    offset_of, total = {}, 0
    for module, attrs in sources:
        offset_of[id(module)] = total
        total += getattr(module, attrs[0]).shape[0]
    neuron_parts, row_parts = [], []
    for base, members in picked:
        for mem, _ in members:
            neuron_parts.append(mem.neurons + base)
            row_parts.append(mem.channels + offset_of[id(mem.module)])
    n = layout.num_neurons
    neurons = torch.cat(neuron_parts) if neuron_parts else torch.empty(0, dtype=torch.int64)
    rows = torch.cat(row_parts) if row_parts else torch.empty(0, dtype=torch.int64)
    counts = torch.bincount(neurons, minlength=n)
    if bool((counts == 0).any()):
        raise ValueError(f"{int((counts == 0).sum())} group neurons have no channel to score them by")
    # A stable sort keeps member order within a neuron: the reduction order is deterministic.
    order = torch.sort(neurons, stable=True).indices
    group_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    num_bn = sum(isinstance(m, BATCHNORM) for m, _ in sources)
    copies = None
    if any(g.channel_groups > 1 for g in layout.groups):
        # A neuron tied across the groups of a grouped conv holds channel_groups copies of
        # each member channel; a sum over them would favour it over untied neurons.
        copies = torch.cat([torch.full((g.size,), float(g.channel_groups)) for g in layout.groups])
    return ScorePlan(sources, [offset_of[id(m)] for m, _ in sources], total, group_ptr, rows[order], num_bn, copies)


def _reduce(plan: ScorePlan, scores: torch.Tensor, reduce: str) -> torch.Tensor:
    group_ptr, member_idx = plan.index_on(scores.device)
    out = ops.group_reduce(scores, group_ptr, member_idx, reduce)
    if reduce == "sum" and plan.copies is not None:
        out = out / plan.copies.to(out.device)
    return out


def score_plan(layout: GroupLayout, kind: str) -> ScorePlan:
    """The cached plan of `layout` for kind "rows" (l1/l2), "bn", "magnitude" or "taylor"."""
    cache = layout.__dict__.setdefault("_plans", {})
    if kind not in cache:
        if kind == "bn":
            missing = [g.root for g in layout.groups if not _has_full_bn(g)]
            if missing:
                raise ValueError(
                    f'criterion "bn" needs a BatchNorm in every group, but {len(missing)} groups have '
                    f'none (first: {missing[0]}); use "magnitude" (bn where there is one, l2 elsewhere)'
                )
        picks = {"rows": _row_members, "bn": _bn_members, "magnitude": _magnitude_members, "taylor": _taylor_members}
        if kind not in picks:
            raise ValueError(f"unknown plan kind {kind!r}")
        cache[kind] = _build(layout, picks[kind])
    return cache[kind]


def _check_choice(value, allowed, name):
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, allowed))}")


def magnitude_scores(layout: GroupLayout, criterion: str = "magnitude", reduce: str = "sum") -> torch.Tensor:
    """float32 [N] group-neuron magnitude scores in the layout's order.

    criterion: ``"bn"`` (|gamma| of the group's BatchNorms; every group needs one), ``"l1"`` /
    ``"l2"`` (norms of the output-channel rows, dim 0, of the group's conv/linear layers),
    ``"magnitude"`` (``"bn"`` for groups with a BatchNorm, ``"l2"`` for the others).
    reduce: how a neuron's member channels combine: ``"sum"`` (default), ``"mean"``, ``"max"``.
    A neuron tied across the groups of a grouped convolution sums its copies divided by their
    number, so that it competes with untied neurons on the same scale.
    """
    _check_choice(criterion, MAGNITUDE_CRITERIA, "criterion")
    _check_choice(reduce, REDUCTIONS, "reduce")
    layout.check_current()
    plan = score_plan(layout, "rows" if criterion in ("l1", "l2") else criterion)
    tensors = plan.tensors()
    if criterion in ("l1", "l2"):
        scores = ops.channel_scores(tensors, criterion)
    elif criterion == "bn":
        scores = ops.channel_scores(tensors, "abs")
    else:
        parts = []
        if plan.num_bn:
            parts.append(ops.channel_scores(tensors[: plan.num_bn], "abs"))
        if len(tensors) > plan.num_bn:
            parts.append(ops.channel_scores(tensors[plan.num_bn :], "l2"))
        scores = torch.cat(parts) if len(parts) > 1 else parts[0]
    return _reduce(plan, scores, reduce)


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


class TaylorAccumulator:
    """First-order Taylor scores accumulated over optimizer steps, in the layout's order.

    Per channel, a step adds ``f(sum over the channel's parameters of w * dL/dw)`` with f =
    square (``mode="square"``) or abs: the BatchNorm weight and bias of each BN member (both into
    the same channels), or the conv/linear weight and bias of groups without a BatchNorm. One
    fused `taylor_accumulate_` call per step, no host synchronisation; a step whose gradients
    hold inf/NaN is skipped and counted. `scores()` averages over the steps that were not
    skipped and combines member channels into group neurons.
    """

    def __init__(self, layout: GroupLayout, mode: str = "square"):
        _check_choice(mode, ("square", "abs"), "mode")
        self.layout = layout
        self.mode = mode
        self.plan = score_plan(layout, "taylor")
        first = getattr(*self._first_param())
        self.acc = torch.zeros(self.plan.num_channels, dtype=torch.float32, device=first.device)
        self._skipped = torch.zeros(1, dtype=torch.int64, device=first.device)
        self.steps = 0

    def _first_param(self):
        module, attrs = self.plan.sources[0]
        return module, attrs[0]

    def step(self, scaler=None, optimizer=None) -> None:
        """Add this step's Taylor terms; call once per optimizer step, after backward.

        With a `GradScaler`, pass it (and the optimizer): before `scaler.unscale_(optimizer)`
        the gradients are divided by the scale on the device; after it they are taken as they
        are, and the scaler's own verdict (an inf/NaN in any of the optimizer's gradients,
        scored or not) skips this step too, so the Taylor scores skip exactly the steps that
        the optimizer skips. Parameters without a gradient are left out. No host sync.
        """
        params, grads, offsets = [], [], []
        for (module, attrs), off in zip(self.plan.sources, self.plan.offsets):
            for attr in attrs:
                p = getattr(module, attr)
                if p is not None and p.grad is not None:
                    params.append(p.detach())
                    grads.append(p.grad)
                    offsets.append(off)
        if not params:
            raise RuntimeError("no scored parameter has a gradient: call step() after loss.backward()")
        inv_scale = _scaler_factor(scaler, optimizer, self.acc.device)
        ops.taylor_accumulate_(self.acc, self._skipped, params, grads, offsets, self.mode, inv_scale)
        self.steps += 1

    @property
    def skipped_steps(self) -> int:
        return int(self._skipped.item())

    def scores(self, reduce: str = "sum") -> torch.Tensor:
        """float32 [N]: mean per-step Taylor score of each group neuron (zeros before any step)."""
        _check_choice(reduce, REDUCTIONS, "reduce")
        good = (self.steps - self._skipped).clamp(min=1).to(torch.float32)
        return _reduce(self.plan, self.acc / good, reduce)

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
