"""The conv/linear output-channel group kind, found through Torch-Pruning's dependency graph.

A group is every channel that a residual add, a depthwise convolution, a concatenation or a
squeeze-excitation scale couples to one output channel of its root conv/linear layer. A
grouped (not depthwise) convolution ties root channels j, j + size, j + 2 * size, ... into one
neuron, so that every convolution group keeps the same width. Channels that a GroupNorm
normalises together (more than one channel per group) are not pruned.

Root channels that reach one channel of some member are *tied* into one neuron: the pieces of a
split that feed one shared module (channel j of each piece), the blocks of k*k outputs of a
Linear that a view turns into channels of k x k, the groups of a channel shuffle and the pieces
of an equal split (`epi_fast.layout.mappings`). A group whose ties give some layer a number of
channels per neuron that is not the same for every neuron cannot be counted per neuron, and is
not pruned. A transposed convolution keeps its output channels in dim 1 of its weight (rows of
the transposed weight to the criteria); one with groups > 1 is a ValueError naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple

import torch
import torch.nn as nn
from torch_pruning import _helpers
import torch_pruning as tp
from torch_pruning import ops as tp_ops
from torch_pruning.dependency.index_mapping import _FlattenIndexMapping
from torch_pruning.pruner import function as tp_function

from .groups import LayoutGroup, Member, Source, register_group_kind
from .mappings import ChannelShuffle, UnsupportedPattern
from .trace import BATCHNORM, PRUNABLE

__all__ = ["ChannelGroup", "find_channel_groups"]


def out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


@dataclass
class ChannelGroup(LayoutGroup):
    """Coupled output channels. `root_module` / `root_fn`: the root layer and Torch-Pruning's
    pruning function that removes its output channels; `channel_groups` > 1 when a grouped
    convolution ties root channels j, j + size, j + 2 * size, ... into one neuron.
    root_neuron: LongTensor [root width], the neuron of each root channel, when root channels
    are tied otherwise (see the module docstring; `channel_groups` is then the root channels
    per neuron); None means ``channel % size``."""

    root_module: nn.Module = None
    root_fn: Any = None
    channel_groups: int = 1
    root_neuron: Any = None
    kind = "channels"

    @property
    def has_bn(self) -> bool:
        return any(m.kind == "bn" for m in self.members)

    def root_channels(self, neurons: Sequence[int]) -> List[int]:
        """Root output-channel indices of the given neurons (every tied copy)."""
        if self.root_neuron is not None:
            chosen = torch.isin(self.root_neuron, torch.as_tensor(list(neurons), dtype=torch.int64))
            return chosen.nonzero().flatten().tolist()
        return [j + k * self.size for k in range(self.channel_groups) for j in neurons]

    def sources(self, role: str) -> List[Source]:
        if role == "filters":
            return [self._source(m, ("weight",)) for m in self.members if m.kind == "out"]
        if role == "scales":
            return [self._source(m, ("weight",)) for m in self.members if m.kind == "bn" and m.module.affine]
        if role == "taylor":
            # Removing a neuron removes its BN weight and bias, or, without a BatchNorm, its
            # filters' weight and bias: all of them enter its first-order Taylor term.
            if self.covers("scales"):
                return [self._source(m, ("weight", "bias")) for m in self.members if m.kind == "bn" and m.module.affine]
            return [self._source(m, ("weight", "bias") if m.module.bias is not None else ("weight",))
                    for m in self.members if m.kind == "out"]
        raise ValueError(f"unknown source role {role!r}")

    @staticmethod
    def _source(m: Member, attrs: Tuple[str, ...]) -> Source:
        # A transposed conv keeps its output channels in dim 1 of its weight (its bias is 1-D).
        view = _out_rows if getattr(m.module, "transposed", False) else None
        return Source(m.name, m.module, attrs, m.channels, m.neurons, view=view)

    def structure_layers(self) -> List[Tuple[nn.Module, int, int]]:
        return [(m.module, m.channels.numel(), self._per_neuron(m)) for m in self.members
                if m.kind == "out" and isinstance(m.module, PRUNABLE)]

    def _per_neuron(self, m: Member) -> int:
        """Output channels of member m per kept neuron."""
        return self.channel_groups if self.root_neuron is None else m.channels.numel() // self.size

    def remove(self, dg, neurons: Sequence[int]) -> None:
        group = dg.get_pruning_group(self.root_module, self.root_fn, self.root_channels(neurons))
        for i, item in enumerate(group):
            # Several root channels tied into one neuron reach a channel once each (a view's
            # blocks of k*k): Torch-Pruning would remove it as many times.
            unique = sorted(set(item.idxs))
            if len(unique) != len(item.idxs):
                group[i] = _helpers.GroupItem(item.dep, unique)
        group.prune()
        for m in self.members:
            # Torch-Pruning keeps a GroupNorm's num_groups; one channel per group stays so.
            if isinstance(m.module, nn.GroupNorm) and m.module.num_groups > m.module.num_channels:
                m.module.num_groups = m.module.num_channels


def _out_rows(w: torch.Tensor) -> torch.Tensor:
    """A transposed conv's weight [in, out, *k] as rows per output channel (bias passes)."""
    return w.transpose(0, 1) if w.dim() > 1 else w


def _check_transposed(dg_group, names) -> None:
    for item in dg_group:
        m = item.dep.target.module
        if isinstance(m, nn.modules.conv._ConvNd) and m.transposed and m.groups > 1:
            raise UnsupportedPattern(
                f"{names.get(m, type(m).__name__)} is a {type(m).__name__} with groups={m.groups}: transposed "
                "convolutions with groups > 1 cannot be pruned; pass it in ignored_layers with the layers that feed it"
            )


def _can_tie(dg) -> bool:
    """Whether the graph holds an op through which two root channels can reach one channel: a
    split, a channel shuffle, a view of a layer's outputs as channels of k x k."""
    for node in dg.module2node.values():
        if node.type in (tp_ops.OPTYPE.SPLIT, tp_ops.OPTYPE.UNBIND) or isinstance(node.module, ChannelShuffle):
            return True
        if node.type == tp_ops.OPTYPE.RESHAPE and any(
                isinstance(m, _FlattenIndexMapping) and m.reverse
                for dep in node.dependencies if dep.target in node.outputs for m in dep.index_mapping):
            return True
    return False


@dataclass
class _Item:
    """One member of a walked group, as Torch-Pruning's merged group items: its dependency, the
    channels reached and, for each, the first root channel that reached it."""

    dep: Any
    idxs: List[int]
    root_idxs: List[int]


def _all_groups(dg, ignored: Sequence[nn.Module]):
    """(items, ties) for every group rooted at a conv/linear layer, in Torch-Pruning's order.
    ties: pairs of root channels that are one neuron (None: Torch-Pruning's own groups, in a
    graph where no ties can arise)."""
    if not _can_tie(dg):
        for g in dg.get_all_groups(ignored_layers=list(ignored), root_module_types=[nn.modules.conv._ConvNd, nn.Linear]):
            yield list(g), None
        return
    skip = {id(m) for m in list(ignored) + list(dg.IGNORED_LAYERS_IN_TRACING)}
    visited: set = set()
    for m, node in list(dg.module2node.items()):
        if id(m) in skip or id(m) in visited or not isinstance(m, PRUNABLE):
            continue
        pruner = dg.get_pruner_of_module(m)
        fn = pruner.prune_out_channels
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels > 1:
            fn = tp_function.prune_depthwise_conv_out_channels
        items, ties = _walk(node, fn, pruner.get_out_channels(m))
        outs = [it.dep.target.module for it in items if dg.is_out_channel_pruning_fn(it.dep.handler)]
        visited.update(id(o) for o in outs)
        if not any(id(o) in skip for o in outs):
            yield items, ties


def _walk(root_node, fn, width: int):
    """The group of the root's `width` output channels: every (channel, root channel) pair the
    dependencies carry, from root channel j = j. Torch-Pruning's get_pruning_group walks the same
    dependencies with the same mappings but keeps the first root channel per channel and carries
    whole index lists (slow where ties make many lists); every mapping maps each pair on its
    own, so only the pairs new at a dependency's target are carried on here. Root channels that
    reach one channel of one member are tied: returned as pairs."""
    root_dep = tp.dependency.Dependency(fn, fn, source=root_node, target=root_node)
    merged: dict = {}  # (target node, handler) -> _Item, in order of first arrival
    reached: dict = {}  # (target node, handler) -> the pairs that reached it
    first: dict = {}  # (target node, handler, channel) -> the first root channel that reached it
    ties = []
    stack = [(root_dep, [_helpers._HybridIndex(idx=i, root_idx=i) for i in range(width)])]
    while stack:
        dep, idxs = stack.pop()
        key = (id(dep.target), dep.handler)
        at = reached.setdefault(key, set())
        idxs = [h for h in dict.fromkeys(idxs) if h not in at]
        if not idxs:
            continue
        at.update(idxs)
        item = merged.setdefault(key, _Item(dep, [], []))
        for h in idxs:
            prev = first.get(key + (h.idx,))
            if prev is None:
                first[key + (h.idx,)] = h.root_idx
                item.idxs.append(h.idx)
                item.root_idxs.append(h.root_idx)
            elif prev != h.root_idx:
                ties.append((prev, h.root_idx))
        for new_dep in dep.target.dependencies:
            if not new_dep.is_triggered_by(dep.handler):
                continue
            new = idxs
            for mapping in new_dep.index_mapping:
                if mapping is not None:
                    new = mapping(new)
            if new:
                stack.append((new_dep, new))
    return list(merged.values()), ties


def _neurons(width: int, grouped: int, ties) -> torch.Tensor:
    """The neuron of each root channel: tied root channels, and the copies j, j + width /
    grouped, ... of a grouped convolution, are one; numbered in order of their lowest channel."""
    parent = list(range(width))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    step = width // grouped
    for a, b in list(ties) + [(j, j + step) for j in range(width - step)]:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = [find(j) for j in range(width)]
    number = {r: n for n, r in enumerate(dict.fromkeys(roots))}
    return torch.tensor([number[r] for r in roots], dtype=torch.int64)


def _uniform(neurons: torch.Tensor, size: int) -> bool:
    """Whether every neuron holds the same number of these channels."""
    counts = torch.bincount(neurons, minlength=size)
    return bool((counts == counts[0]).all()) and int(counts[0]) > 0


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
        return isinstance(m, PRUNABLE)

    raw = [(g, ties) for g, ties in _all_groups(dg, ignored) if is_root_type(g[0].dep.target.module)]
    raw.sort(key=lambda g: order.get(g[0][0].dep.target.module, len(order)))
    groups: List[ChannelGroup] = []
    for dg_group, ties in raw:
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
        _check_transposed(dg_group, names)
        ch = _tied_channels(dg_group)
        if out_channels(root) % ch:
            continue  # a grouped conv whose groups do not divide the root's width: unprunable
        size = out_channels(root) // ch
        root_neuron = None
        if ties:
            tied = _neurons(out_channels(root), ch, ties)
            if int(tied.max()) + 1 != size:
                root_neuron, size = tied, int(tied.max()) + 1
                if not _uniform(tied, size):
                    continue  # root channels per neuron differ: no count per neuron (module docstring)
                ch = out_channels(root) // size
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
            roots = torch.as_tensor(list(item.root_idxs), dtype=torch.int64)
            neurons = roots % size if root_neuron is None else root_neuron[roots]
            members.append(Member(name, module, _member_kind(dg, module, item.dep.handler), channels, neurons))
        if root_neuron is not None and not all(_uniform(m.neurons, size) for m in members
                                               if m.kind == "out" and isinstance(m.module, PRUNABLE)):
            continue  # a layer's channels per neuron differ: no count per neuron (module docstring)
        groups.append(ChannelGroup(names[root], size, members, root_module=root, root_fn=dg_group[0].dep.handler,
                                   channel_groups=ch, root_neuron=root_neuron))
    return groups


register_group_kind("channels", find_channel_groups)
