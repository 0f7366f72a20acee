"""Which channels of a model can be pruned, and which of them must go together.

`group_layout` traces the model once with Torch-Pruning's dependency graph and flattens its
coupled-channel groups into the one score layout every other part of epi_fast uses: group g
owns the segment ``[offset_g, offset_g + size_g)`` of the N-long score and mask vectors, and
neuron j of group g sits at ``offset_g + j``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from .. import ops

__all__ = ["GroupLayout", "LayoutGroup", "Member", "group_layout", "unwrap_model"]

PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)
BATCHNORM = nn.modules.batchnorm._BatchNorm


@dataclass
class Member:
    """One module whose channels a group touches.

    kind: ``"out"`` (a conv/linear whose output channels are removed, depthwise convs
    included), ``"in"`` (a conv/linear whose input channels are removed), ``"bn"`` (a
    BatchNorm) or ``"other"`` (LayerNorm, PReLU, a bare Parameter, ...).
    channels[i] is a channel index of the module, neurons[i] the group neuron it belongs to.
    """

    name: str
    module: nn.Module
    kind: str
    channels: torch.Tensor
    neurons: torch.Tensor


@dataclass
class LayoutGroup:
    """A set of coupled channels: removing neuron j removes ``channels[neurons == j]`` of every
    member. ``root`` is the conv/linear whose output channels define the group's numbering;
    ``size`` the number of neurons; ``channel_groups`` > 1 when a grouped convolution ties
    root channels j, j + size, j + 2*size, ... into one neuron (they are removed together so
    that every convolution group keeps the same width)."""

    root: str
    root_module: nn.Module
    root_fn: object
    size: int
    channel_groups: int
    members: list[Member]

    @property
    def has_bn(self) -> bool:
        return any(m.kind == "bn" for m in self.members)

    def root_channels(self, neurons: Sequence[int]) -> list[int]:
        """Root output-channel indices of the given neurons (every tied copy)."""
        return [j + k * self.size for k in range(self.channel_groups) for j in neurons]


@dataclass
class GroupLayout:
    """The flat pruning layout of one model (build it once; rebuild after pruning).

    Attributes:
        model: the (unwrapped) model it describes.
        groups: list of `LayoutGroup` (root module name, size C_g, members), in model order
            of their roots.
        group_sizes: list[int], C_g per group: the segment sizes for `global_masks`;
            N = sum(group_sizes) is the length of every score and mask vector.
        offsets: list[int], the start of each group's segment.
        layers: names of the prunable conv/linear layers whose output channels are pruned, in
            model order; the EPI structure vector has one kept count per layer (L = len(layers)).
        layer_group: LongTensor [L], the group of each layer: ``counts_G[:, layer_group]`` gives
            per-layer counts from per-group kept counts (times `layer_scale`).
        layer_scale: LongTensor [L], output channels per kept neuron (1 except for groups tied
            by a grouped convolution).
        ignored: names of the layers whose output channels are never pruned (output layers
            found automatically plus the user's).
        untraced: names of conv/linear layers the trace never reached (e.g. auxiliary heads
            that only run in training mode); pruning does not update them.
        dg: the Torch-Pruning DependencyGraph used to prune.
    """

    model: nn.Module
    groups: list[LayoutGroup]
    group_sizes: list[int]
    offsets: list[int]
    layers: list[str]
    layer_group: torch.Tensor
    layer_scale: torch.Tensor
    ignored: list[str]
    untraced: list[str]
    dg: object = field(repr=False)
    _shapes: dict = field(default_factory=dict, repr=False)

    @property
    def num_neurons(self) -> int:
        return sum(self.group_sizes)

    def structure(self, keep_masks: torch.Tensor) -> torch.Tensor:
        """Per-layer kept output channels, int64 [m, L], from group masks bool [m, N] (or [N])."""
        return self.structure_from_counts(ops.layer_counts(keep_masks, self.group_sizes))

    def structure_from_counts(self, group_counts: torch.Tensor) -> torch.Tensor:
        """Per-layer kept output channels, int64 [m, L], from kept counts per group [m, G] (what
        `layer_counts` or `global_masks_counts` return for `group_sizes`)."""
        idx = self.layer_group.to(group_counts.device)
        return group_counts[:, idx] * self.layer_scale.to(group_counts.device)

    def layer_channels(self) -> dict[str, int]:
        """Current output channels of every layer of the structure vector."""
        modules = dict(self.model.named_modules())
        return {name: _out_channels(modules[name]) for name in self.layers}

    def check_current(self) -> None:
        """Raise if the model's shapes changed since the layout was built (e.g. after a prune)."""
        for name, (module, shape) in self._shapes.items():
            if tuple(module.weight.shape) != shape:
                raise RuntimeError(
                    f"the layout is stale: {name}.weight is {tuple(module.weight.shape)}, was {shape} "
                    "when the layout was built; call group_layout again after pruning"
                )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module that holds the parameters: DDP/DataParallel `.module`, torch.compile's
    `_orig_mod`."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _resolve_ignored(model: nn.Module, ignored_layers: Iterable) -> list[nn.Module]:
    by_name = dict(model.named_modules())
    owned = {id(m) for m in by_name.values()}
    out = []
    for item in ignored_layers or ():
        if isinstance(item, str):
            if item not in by_name:
                raise ValueError(f"ignored_layers names {item!r}, which is not a module of the model")
            out.append(by_name[item])
        elif isinstance(item, nn.Module):
            if id(item) not in owned:
                raise ValueError(f"ignored_layers holds a {type(item).__name__} that is not part of the model")
            out.append(item)
        else:
            raise TypeError(f"ignored_layers entries must be modules or names, got {type(item).__name__}")
    return out


def _trace(model: nn.Module, example_inputs) -> tp.DependencyGraph:
    # A bare tensor is wrapped: tp tries model(*inputs) first, which would unpack the batch.
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    # tp's trace switches the model to eval mode and leaves it there; every flag is restored
    # so that building a layout has no side effect on training.
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=inputs, verbose=False)
    except Exception as err:
        raise ValueError(
            f"cannot trace {type(model).__name__} with Torch-Pruning's dependency graph: "
            f"{type(err).__name__}: {err}"
        ) from err
    finally:
        for m, mode in modes:
            m.training = mode


def _output_layers(dg, prunable_nodes) -> list[nn.Module]:
    """Conv/linear layers whose output channels reach the model output without passing
    through another conv/linear: their channels are class scores (or the like)."""
    found = []
    for module, node in prunable_nodes:
        stack, seen = [node], set()
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if not n.outputs:
                found.append(module)
                break
            stack.extend(o for o in n.outputs if not isinstance(o.module, PRUNABLE))
    return found


def _channel_groups(dg_group, root_size: int) -> int:
    """Grouped (not depthwise) convolutions need every conv group pruned alike; tie the root
    channels into chunks of root_size // lcm(groups). Depthwise convs are handled by tp."""
    ch = 1
    for item in dg_group:
        m = item.dep.target.module
        if isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups != m.out_channels:
            ch = math.lcm(ch, m.groups)
    return ch


def _member_kind(dg, module, handler) -> str | None:
    if isinstance(module, BATCHNORM):
        return "bn"
    if isinstance(module, PRUNABLE):
        if dg.is_out_channel_pruning_fn(handler):
            return "out"
        return "in"
    return "other"


def group_layout(model: nn.Module, example_inputs, ignored_layers=()) -> GroupLayout:
    """Trace `model` once and return its `GroupLayout`.

    example_inputs: what the model is called with (a tensor, a tuple of positional inputs or a
    dict of keyword inputs); its batch size does not matter. The trace runs without changing
    the model (training flags and buffers are kept). ignored_layers: modules or qualified names
    whose output channels must not be pruned; layers whose output channels reach the model
    output (classifier heads) are always ignored. A DDP-wrapped model is accepted.
    """
    model = unwrap_model(model)
    ignored = _resolve_ignored(model, ignored_layers)
    dg = _trace(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    order = {m: i for i, m in enumerate(names)}

    def is_root_type(m):
        return isinstance(m, PRUNABLE) and not getattr(m, "transposed", False)

    prunable_nodes = [(m, n) for m, n in dg.module2node.items() if is_root_type(m)]
    outputs = _output_layers(dg, prunable_nodes)
    ignored_all = list({id(m): m for m in ignored + outputs}.values())

    raw = list(dg.get_all_groups(ignored_layers=list(ignored_all), root_module_types=[nn.modules.conv._ConvNd, nn.Linear]))
    raw = [g for g in raw if is_root_type(g[0].dep.target.module)]
    raw.sort(key=lambda g: order.get(g[0].dep.target.module, len(order)))

    groups: list[LayoutGroup] = []
    for dg_group in raw:
        root = dg_group[0].dep.target.module
        root_size = _out_channels(root)
        ch = _channel_groups(dg_group, root_size)
        if root_size % ch:
            continue  # a grouped conv whose groups do not divide the root's width: unprunable
        size = root_size // ch
        members = []
        for item in dg_group:
            module = item.dep.target.module
            kind = _member_kind(dg, module, item.dep.handler)
            if kind is None or item.root_idxs is None or any(r is None for r in item.root_idxs):
                continue
            channels = torch.as_tensor(list(item.idxs), dtype=torch.int64)
            neurons = torch.as_tensor(list(item.root_idxs), dtype=torch.int64) % size
            name = names.get(module) if isinstance(module, nn.Module) else dg._param_to_name.get(module)
            if name is None:
                continue  # tp's placeholder ops (add, concat, reshape): nothing to score or copy
            members.append(Member(name, module, kind, channels, neurons))
        groups.append(LayoutGroup(names[root], root, dg_group[0].dep.handler, size, ch, members))

    if not groups:
        raise ValueError(
            f"{type(model).__name__} has no prunable channels: no conv/linear output channels "
            "outside the ignored and output layers"
        )

    layer_of: dict[nn.Module, tuple[int, int]] = {}  # layer -> (group, channels it holds)
    for gi, g in enumerate(groups):
        for mem in g.members:
            if mem.kind == "out" and isinstance(mem.module, PRUNABLE):
                # A layer split across groups (concat feeding an add) counts under the group that
                # holds most of its channels; the structure vector is then an approximation.
                prev = layer_of.get(mem.module)
                if prev is None or mem.channels.numel() > prev[1]:
                    layer_of[mem.module] = (gi, mem.channels.numel())
    layer_modules = sorted(layer_of, key=lambda m: order[m])
    layers = [names[m] for m in layer_modules]
    layer_group = torch.tensor([layer_of[m][0] for m in layer_modules], dtype=torch.int64)
    layer_scale = torch.tensor([groups[layer_of[m][0]].channel_groups for m in layer_modules], dtype=torch.int64)

    sizes = [g.size for g in groups]
    offsets = [0]
    for s in sizes[:-1]:
        offsets.append(offsets[-1] + s)
    traced = set(dg.module2node)
    untraced = [n for m, n in names.items() if isinstance(m, PRUNABLE) and m not in traced]
    shapes = {}
    for g in groups:
        for mem in g.members:
            if isinstance(mem.module, nn.Module) and isinstance(getattr(mem.module, "weight", None), torch.Tensor):
                shapes[mem.name] = (mem.module, tuple(mem.module.weight.shape))
    return GroupLayout(
        model=model,
        groups=groups,
        group_sizes=sizes,
        offsets=offsets,
        layers=layers,
        layer_group=layer_group,
        layer_scale=layer_scale,
        ignored=[names[m] for m in ignored_all],
        untraced=untraced,
        dg=dg,
        _shapes=shapes,
    )
