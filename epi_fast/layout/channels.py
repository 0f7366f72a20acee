"""The conv/linear output-channel group kind, found through Torch-Pruning's dependency graph.

A group is every channel that a residual add, a depthwise convolution, a concatenation or a
squeeze-excitation scale couples to one output channel of its root conv/linear layer. A
grouped (not depthwise) convolution ties root channels j, j + size, j + 2 * size, ... into one
neuron, so that every convolution group keeps the same width. Channels that a GroupNorm
normalises together (more than one channel per group) are not pruned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple

import torch
import torch.nn as nn

from .groups import LayoutGroup, Member, Source, register_group_kind
from .trace import BATCHNORM, PRUNABLE

__all__ = ["ChannelGroup", "find_channel_groups"]


def out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


@dataclass
class ChannelGroup(LayoutGroup):
    """Coupled output channels. `root_module` / `root_fn`: the root layer and Torch-Pruning's
    pruning function that removes its output channels; `channel_groups` > 1 when a grouped
    convolution ties root channels j, j + size, j + 2 * size, ... into one neuron."""

    root_module: nn.Module = None
    root_fn: Any = None
    channel_groups: int = 1
    kind = "channels"

    @property
    def has_bn(self) -> bool:
        return any(m.kind == "bn" for m in self.members)

    def root_channels(self, neurons: Sequence[int]) -> List[int]:
        """Root output-channel indices of the given neurons (every tied copy)."""
        return [j + k * self.size for k in range(self.channel_groups) for j in neurons]

    def sources(self, role: str) -> List[Source]:
        if role == "filters":
            # Transposed convs keep output channels in dim 1: not rows that channel_scores reads.
            return [self._source(m, ("weight",)) for m in self.members
                    if m.kind == "out" and not getattr(m.module, "transposed", False)]
        if role == "scales":
            return [self._source(m, ("weight",)) for m in self.members if m.kind == "bn" and m.module.affine]
        if role == "taylor":
            # Removing a neuron removes its BN weight and bias, or, without a BatchNorm, its
            # filters' weight and bias: all of them enter its first-order Taylor term.
            if self.covers("scales"):
                return [self._source(m, ("weight", "bias")) for m in self.members if m.kind == "bn" and m.module.affine]
            return [self._source(m, ("weight", "bias") if m.module.bias is not None else ("weight",))
                    for m in self.members if m.kind == "out" and not getattr(m.module, "transposed", False)]
        raise ValueError(f"unknown source role {role!r}")

    @staticmethod
    def _source(m: Member, attrs: Tuple[str, ...]) -> Source:
        return Source(m.name, m.module, attrs, m.channels, m.neurons)

    def structure_layers(self) -> List[Tuple[nn.Module, int, int]]:
        return [(m.module, m.channels.numel(), self.channel_groups) for m in self.members
                if m.kind == "out" and isinstance(m.module, PRUNABLE)]

    def remove(self, dg, neurons: Sequence[int]) -> None:
        dg.get_pruning_group(self.root_module, self.root_fn, self.root_channels(neurons)).prune()
        for m in self.members:
            # Torch-Pruning keeps a GroupNorm's num_groups; one channel per group stays so.
            if isinstance(m.module, nn.GroupNorm) and m.module.num_groups > m.module.num_channels:
                m.module.num_groups = m.module.num_channels


def _tied_channels(dg_group) -> int:
    """Grouped (not depthwise) convolutions need every conv group pruned alike: the lcm of their
    group counts. Depthwise convs are handled by Torch-Pruning itself."""
    ch = 1
    for item in dg_group:
        m = item.dep.target.module
        if isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups != m.out_channels:
            ch = math.lcm(ch, m.groups)
    return ch


def _mixes_channels(module) -> bool:
    """A GroupNorm whose groups hold more than one channel."""
    return isinstance(module, nn.GroupNorm) and module.num_groups != module.num_channels


def _member_kind(dg, module, handler) -> str:
    if isinstance(module, BATCHNORM):
        return "bn"
    if isinstance(module, PRUNABLE):
        return "out" if dg.is_out_channel_pruning_fn(handler) else "in"
    return "other"


def find_channel_groups(trace, ignored: Sequence[nn.Module], names: dict) -> List[ChannelGroup]:
    """The channel groups of a traced model, in model order of their roots."""
    dg = trace.dg
    order = {m: i for i, m in enumerate(names)}

    def is_root_type(m):
        return isinstance(m, PRUNABLE) and not getattr(m, "transposed", False)

    raw = list(dg.get_all_groups(ignored_layers=list(ignored), root_module_types=[nn.modules.conv._ConvNd, nn.Linear]))
    raw = [g for g in raw if is_root_type(g[0].dep.target.module)]
    raw.sort(key=lambda g: order.get(g[0].dep.target.module, len(order)))
    groups: List[ChannelGroup] = []
    for dg_group in raw:
        root = dg_group[0].dep.target.module
        if any(isinstance(item.dep.target.module, nn.MultiheadAttention) for item in dg_group):
            # nn.MultiheadAttention ties its inner width to its input width: cutting the
            # residual stream would regroup the remaining q/k/v rows into different heads, which
            # computes something else than the masked network. Its width is left alone.
            continue
        if any(_mixes_channels(item.dep.target.module) for item in dg_group):
            # A GroupNorm normalises each of its groups of channels by their joint statistics:
            # removing one channel changes what the others in its group are divided by (and
            # Torch-Pruning keeps num_groups, which soon stops dividing the width), so the
            # pruned network would not be the masked one. Such channels are not pruned
            # (FCOS's and RetinaNet v2's head towers); GroupNorm with one channel per group is.
            continue
        ch = _tied_channels(dg_group)
        if out_channels(root) % ch:
            continue  # a grouped conv whose groups do not divide the root's width: unprunable
        size = out_channels(root) // ch
        members = []
        for item in dg_group:
            module = item.dep.target.module
            # `None in` compares in C: a Python generator over every index cost tens of ms on ViT-B.
            if item.root_idxs is None or None in item.root_idxs:
                continue
            name = names.get(module) if isinstance(module, nn.Module) else dg._param_to_name.get(module)
            if name is None:
                continue  # tp's placeholder ops (add, concat, reshape): nothing to score or copy
            channels = torch.as_tensor(list(item.idxs), dtype=torch.int64)
            neurons = torch.as_tensor(list(item.root_idxs), dtype=torch.int64) % size
            members.append(Member(name, module, _member_kind(dg, module, item.dep.handler), channels, neurons))
        groups.append(ChannelGroup(names[root], size, members, root_module=root, root_fn=dg_group[0].dep.handler,
                                   channel_groups=ch))
    return groups


register_group_kind("channels", find_channel_groups)
