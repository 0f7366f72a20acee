"""Where each group neuron's member channels sit in one flat per-channel buffer.

A criterion scores in two fused steps: one operator call over all member tensors at once gives
per-channel scores in a flat buffer (`channel_scores`, or `taylor_accumulate_` per step), then
one `group_reduce` over a CSR index combines the member channels of each group neuron. The
index is built once per layout and criterion (`ScorePlan`) and cached on the layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .. import ops
from ..layout import BATCHNORM, GroupLayout, Source

__all__ = ["ScorePlan", "plan_for"]


@dataclass
class ScorePlan:
    """sources: (module, attribute names, view) in buffer order; the attributes of one source
    add into the same rows (BN weight and bias); view (or None) turns an attribute into the
    2-D rows that are scored (a head's block of a projection as one row). offsets[i]: the
    first buffer row of source i (sources that share a slot share rows). group_ptr /
    member_idx: the CSR index that `group_reduce` takes (neuron n combines
    ``buffer[member_idx[group_ptr[n]:group_ptr[n+1]]]``). num_bn: how many leading sources are
    BatchNorms. copies: [n] float, how many tied copies of each member channel a neuron holds
    (grouped convolutions), or None when every neuron holds one. neuron_index: the layout
    positions of the plan's neurons when it covers only some groups (None: all, in order)."""

    sources: List[Tuple[nn.Module, Tuple[str, ...], Optional[Callable]]]
    offsets: List[int]
    num_channels: int
    group_ptr: torch.Tensor
    member_idx: torch.Tensor
    num_bn: int
    copies: torch.Tensor | None = None
    neuron_index: torch.Tensor | None = None
    # The index and copies on each device they were used on: a GPU model copies them once.
    _on: Dict[str, Tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = field(default_factory=dict, repr=False)

    def tensors(self) -> List[torch.Tensor]:
        """The first attribute of every source, detached and viewed (what magnitude criteria read)."""
        return [_viewed(getattr(m, attrs[0]).detach(), view) for m, attrs, view in self.sources]

    def index_on(self, device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        key = str(device)
        if key not in self._on:
            copies = None if self.copies is None else self.copies.to(device)
            self._on[key] = (self.group_ptr.to(device), self.member_idx.to(device), copies)
        return self._on[key]

    def reduce(self, channel_scores: torch.Tensor, reduce: str) -> torch.Tensor:
        """float32 [n]: the member channels' scores combined per group neuron."""
        group_ptr, member_idx, copies = self.index_on(channel_scores.device)
        # The index was validated when it was built: the per-epoch call skips re-validating it
        # (which costs a device synchronisation on CUDA).
        out = ops.group_reduce_trusted(channel_scores, group_ptr, member_idx, reduce)
        if reduce == "sum" and copies is not None:
            # A neuron tied across the groups of a grouped conv holds `copies` copies of each
            # member channel; a sum over them would favour it over untied neurons.
            out = out / copies
        return out


def _viewed(t: torch.Tensor, view) -> torch.Tensor:
    return t if view is None else view(t)


def plan_for(layout: GroupLayout, key, pick: Callable[[object], List[Source]],
             groups: Optional[Sequence[int]] = None) -> ScorePlan:
    """The cached plan of `layout` under `key`, built from `pick(group)` for every group (or
    for the groups at the indices `groups` only)."""
    if key not in layout._plans:
        layout._plans[key] = _build(layout, pick, groups)
    return layout._plans[key]


def _build(layout: GroupLayout, pick, subset) -> ScorePlan:
    chosen = range(len(layout.groups)) if subset is None else list(subset)
    picked, local_base, n = [], [], 0
    for gi in chosen:
        g = layout.groups[gi]
        picked.append((n, pick(g)))
        local_base.append(layout.offsets[gi])
        n += g.size
    unique: Dict[Any, Tuple[nn.Module, Tuple[str, ...], Optional[Callable], Any]] = {}
    for _, sources in picked:
        for s in sources:
            unique.setdefault(_key(s), (s.module, s.attrs, s.view, s.slot))
    # BatchNorms first: the magnitude criterion scores a prefix with "abs" and the rest with "l2".
    keys = sorted(unique, key=lambda k: not isinstance(unique[k][0], BATCHNORM))
    offset_of, slot_rows, total = {}, {}, 0
    for k in keys:
        module, attrs, view, slot = unique[k]
        rows = _viewed(getattr(module, attrs[0]).detach(), view).shape[0]
        if slot is not None and slot in slot_rows:
            offset_of[k] = slot_rows[slot]  # sources of one slot add into the same rows
            continue
        offset_of[k] = total
        if slot is not None:
            slot_rows[slot] = total
        total += rows
    neuron_parts, row_parts, seen_slots = [], [], set()
    for base, group_sources in picked:
        for s in group_sources:
            if s.slot is not None:
                if s.slot in seen_slots:
                    continue  # the slot's rows are listed once per neuron
                seen_slots.add(s.slot)
            neuron_parts.append(s.neurons + base)
            row_parts.append(s.rows + offset_of[_key(s)])
    neurons = torch.cat(neuron_parts) if neuron_parts else torch.empty(0, dtype=torch.int64)
    rows = torch.cat(row_parts) if row_parts else torch.empty(0, dtype=torch.int64)
    counts = torch.bincount(neurons, minlength=n)
    if bool((counts == 0).any()):
        raise ValueError(f"{int((counts == 0).sum())} group neurons have no channel to score them by")
    # A stable sort keeps member order within a neuron: the reduction order is deterministic.
    order = torch.sort(neurons, stable=True).indices
    group_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    sources = [unique[k][:3] for k in keys]
    num_bn = sum(isinstance(m, BATCHNORM) for m, _, _ in sources)
    groups = [layout.groups[gi] for gi in chosen]
    tied = [getattr(g, "channel_groups", 1) for g in groups]
    copies = None
    if any(t > 1 for t in tied):
        copies = torch.cat([torch.full((g.size,), float(t)) for g, t in zip(groups, tied)])
    neuron_index = None
    if subset is not None:
        neuron_index = torch.cat([torch.arange(o, o + g.size) for o, g in zip(local_base, groups)]) if groups \
            else torch.empty(0, dtype=torch.int64)
    plan = ScorePlan(sources, [offset_of[k] for k in keys], total, group_ptr, rows[order], num_bn, copies, neuron_index)
    # Checked once here, so that every later reduction may take the trusted path.
    ops.group_reduce(torch.zeros(total), group_ptr, plan.member_idx, "sum")
    return plan


def _key(s: Source):
    return s.key if s.key is not None else id(s.module)
