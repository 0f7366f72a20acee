"""Where each group neuron's member channels sit in one flat per-channel buffer.

A criterion scores in two fused steps: one operator call over all member tensors at once gives
per-channel scores in a flat buffer (`channel_scores`, or `taylor_accumulate_` per step), then
one `group_reduce` over a CSR index combines the member channels of each group neuron. The
index is built once per layout and criterion (`ScorePlan`) and cached on the layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn

from .. import ops
from ..layout import BATCHNORM, GroupLayout, Source

__all__ = ["ScorePlan", "plan_for"]


@dataclass
class ScorePlan:
    """sources: (module, attribute names) in buffer order; the attributes of one source add into
    the same rows (BN weight and bias). offsets[i]: the first buffer row of source i.
    group_ptr / member_idx: the CSR index that `group_reduce` takes (neuron n combines
    ``buffer[member_idx[group_ptr[n]:group_ptr[n+1]]]``). num_bn: how many leading sources are
    BatchNorms. copies: [N] float, how many tied copies of each member channel a neuron holds
    (grouped convolutions), or None when every neuron holds one."""

    sources: List[Tuple[nn.Module, Tuple[str, ...]]]
    offsets: List[int]
    num_channels: int
    group_ptr: torch.Tensor
    member_idx: torch.Tensor
    num_bn: int
    copies: torch.Tensor | None = None
    # The index and copies on each device they were used on: a GPU model copies them once.
    _on: Dict[str, Tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = field(default_factory=dict, repr=False)

    def tensors(self) -> List[torch.Tensor]:
        """The first attribute of every source, detached (what magnitude criteria read)."""
        return [getattr(m, attrs[0]).detach() for m, attrs in self.sources]

    def index_on(self, device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        key = str(device)
        if key not in self._on:
            copies = None if self.copies is None else self.copies.to(device)
            self._on[key] = (self.group_ptr.to(device), self.member_idx.to(device), copies)
        return self._on[key]

    def reduce(self, channel_scores: torch.Tensor, reduce: str) -> torch.Tensor:
        """float32 [N]: the member channels' scores combined per group neuron."""
        group_ptr, member_idx, copies = self.index_on(channel_scores.device)
        # The index was validated when it was built: the per-epoch call skips re-validating it
        # (which costs a device synchronisation on CUDA).
        out = ops.group_reduce_trusted(channel_scores, group_ptr, member_idx, reduce)
        if reduce == "sum" and copies is not None:
            # A neuron tied across the groups of a grouped conv holds `copies` copies of each
            # member channel; a sum over them would favour it over untied neurons.
            out = out / copies
        return out


def plan_for(layout: GroupLayout, key, pick: Callable[[object], List[Source]]) -> ScorePlan:
    """The cached plan of `layout` under `key`, built from `pick(group)` for every group."""
    if key not in layout._plans:
        layout._plans[key] = _build(layout, pick)
    return layout._plans[key]


def _build(layout: GroupLayout, pick) -> ScorePlan:
    picked = [(base, pick(g)) for g, base in zip(layout.groups, layout.offsets)]
    unique: Dict[int, Tuple[nn.Module, Tuple[str, ...]]] = {}
    for _, sources in picked:
        for s in sources:
            unique.setdefault(id(s.module), (s.module, s.attrs))
    # BatchNorms first: the magnitude criterion scores a prefix with "abs" and the rest with "l2".
    sources = sorted(unique.values(), key=lambda s: not isinstance(s[0], BATCHNORM))
    offset_of, total = {}, 0
    for module, attrs in sources:
        offset_of[id(module)] = total
        total += getattr(module, attrs[0]).shape[0]
    neuron_parts, row_parts = [], []
    for base, group_sources in picked:
        for s in group_sources:
            neuron_parts.append(s.neurons + base)
            row_parts.append(s.rows + offset_of[id(s.module)])
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
    tied = [getattr(g, "channel_groups", 1) for g in layout.groups]
    copies = None
    if any(t > 1 for t in tied):
        copies = torch.cat([torch.full((g.size,), float(t)) for g, t in zip(layout.groups, tied)])
    plan = ScorePlan(sources, [offset_of[id(m)] for m, _ in sources], total, group_ptr, rows[order], num_bn, copies)
    # Checked once here, so that every later reduction may take the trusted path.
    ops.group_reduce(torch.zeros(total), group_ptr, plan.member_idx, "sum")
    return plan
