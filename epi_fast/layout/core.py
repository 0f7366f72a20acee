"""The flat pruning layout of one model: its groups, the score order, the structure vector.

`group_layout` traces the model once and flattens its groups (of every registered kind) into
the one score layout every other part of epi_fast uses: group g owns the segment
``[offset_g, offset_g + size_g)`` of the N-long score and mask vectors, and neuron j of group g
sits at ``offset_g + j``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch
import torch.nn as nn

from .. import ops
from . import channels as _channels  # noqa: F401  (registers the built-in conv-channel kind)
from .detection import detector_trace
from .groups import LayoutGroup, claimed_modules, group_finders
from .trace import PRUNABLE, check_token_inputs, resolve_ignored, run_once, trace_model, unwrap_model
from .transformer import find_transformer_groups

__all__ = ["GroupLayout", "group_layout"]


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


@dataclass
class GroupLayout:
    """The flat pruning layout of one model (build it once; rebuild after pruning).

    Attributes:
        model: the (unwrapped) model it describes.
        groups: the `LayoutGroup`s (of every kind), in model order of their roots.
        group_sizes: list[int], C_g per group: the segment sizes for `global_masks`;
            N = sum(group_sizes) is the length of every score and mask vector.
        offsets: list[int], the start of each group's segment.
        layers: names of the prunable conv/linear layers whose output channels are pruned, in
            model order; the EPI structure vector has one kept count per layer (L = len(layers)).
        layer_group: LongTensor [L], the group of each layer: ``counts_G[:, layer_group]`` gives
            per-layer counts from per-group kept counts (times `layer_scale`).
        layer_scale: LongTensor [L], output channels per kept neuron (1 except for groups tied
            by a grouped convolution).
        ignored: names of the layers whose output channels are never pruned (the layers that
            feed a model output, found automatically, plus the user's).
        untraced: names of conv/linear layers the trace never reached (e.g. auxiliary heads
            that only run in training mode); pruning does not update them.
        dg: the Torch-Pruning DependencyGraph used to prune.
    """

    model: nn.Module
    groups: List[LayoutGroup]
    group_sizes: List[int]
    offsets: List[int]
    layers: List[str]
    layer_group: torch.Tensor
    layer_scale: torch.Tensor
    ignored: List[str]
    untraced: List[str]
    dg: Any = field(repr=False)
    # Weight shapes when the layout was built, to refuse a stale layout after a prune.
    _shapes: Dict[str, Tuple[nn.Module, Tuple[int, ...]]] = field(default_factory=dict, repr=False)
    # Per-criterion score plans (criteria build them once per layout; see epi_fast.criteria).
    _plans: Dict[Any, Any] = field(default_factory=dict, repr=False)
    # True once a prune has used this layout (its dependency graph describes the old model).
    _spent: bool = field(default=False, repr=False)
    # layer_group and layer_scale on each device they were used on: copied there once, not at
    # every epoch end (a copy from pageable host memory synchronises with the device).
    _index_on: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    # The group that measures each structure layer's current width.
    _width_of: Dict[str, LayoutGroup] = field(default_factory=dict, repr=False)

    @property
    def kinds(self) -> List[str]:
        """The group kinds present, in order of first appearance ("channels", "heads", "mlp")."""
        return list(dict.fromkeys(g.kind for g in self.groups))

    @property
    def num_neurons(self) -> int:
        return sum(self.group_sizes)

    def structure(self, keep_masks: torch.Tensor) -> torch.Tensor:
        """Per-layer kept output channels, int64 [m, L], from group masks bool [m, N] (or [N])."""
        return self.structure_from_counts(ops.layer_counts(keep_masks, self.group_sizes))

    def structure_from_counts(self, group_counts: torch.Tensor) -> torch.Tensor:
        """Per-layer kept output channels, int64 [m, L], from kept counts per group [m, G] (what
        `layer_counts` or `global_masks_counts` return for `group_sizes`)."""
        key = str(group_counts.device)
        if key not in self._index_on:
            self._index_on[key] = (self.layer_group.to(group_counts.device), self.layer_scale.to(group_counts.device))
        idx, scale = self._index_on[key]
        return group_counts[:, idx] * scale

    def layer_channels(self) -> Dict[str, int]:
        """Current width of every entry of the structure vector: output channels of a layer,
        query heads of an attention module, hidden channels of an MLP."""
        modules = dict(self.model.named_modules())
        return {name: self._width_of[name].width(modules[name]) for name in self.layers}

    def check_current(self) -> None:
        """Raise if the model's shapes changed since the layout was built (e.g. after a prune)."""
        for name, (module, shape) in self._shapes.items():
            if tuple(module.weight.shape) != shape:
                raise RuntimeError(
                    f"the layout is stale: {name}.weight is {tuple(module.weight.shape)}, was {shape} "
                    "when the layout was built; call group_layout again after pruning"
                )


def group_layout(model: nn.Module, example_inputs, ignored_layers=(), *, observe=None, residual: bool = False) -> GroupLayout:
    """Trace `model` once and return its `GroupLayout`.

    example_inputs: what the model is called with (a tensor, a tuple of positional inputs or a
    dict of keyword inputs); its batch size does not matter. The trace runs without changing
    the model (training flags and buffers are kept). ignored_layers: modules or qualified names
    whose output channels must not be pruned. Layers whose output channels reach any tensor
    the model returns (classifier heads, features returned beside the logits, every output of
    a multi-output model) are always ignored, so every output keeps its shape. A DDP-wrapped
    model is accepted. observe: a context manager entered around the trace's one forward call
    (eval mode, autograd on), e.g. `epi_fast.targets.flops.FlopProbe(model)` to count the
    FLOPs of that pass instead of running the model again.

    A torchvision RetinaNet, FCOS or SSD (`epi_fast.layout.detection`) takes a batch tensor
    [B, 3, H, W] (or a one-element tuple holding a list of images) and is traced from its
    batched images to its head outputs; the head's class and box output layers are never
    pruned. A two-stage torchvision detector (Faster/Mask/Keypoint R-CNN) is a ValueError.

    A model with a known attention module (`epi_fast.layout.transformer`) is laid out module by
    module instead of traced: its groups are attention heads and MLP channels, its residual
    width and the layers outside its transformer blocks are not pruned, and it runs once on
    example_inputs (token ids for a language model) so that bad inputs fail here.
    residual=True also prunes the residual width (hidden size) of a LLaMA-style decoder: one
    more group, of kind "residual", whose neurons are the hidden channels (embeddings, norms,
    every projection that reads or writes the residual stream, the output head). Removing a
    hidden channel changes what every RMS norm averages over, so that network is not the dense
    one with the channel masked; it is off by default.
    """
    model = unwrap_model(model)
    ignored = resolve_ignored(model, ignored_layers)
    blocks = find_transformer_groups(model, ignored, residual=residual)
    if blocks:
        return _transformer_layout(model, example_inputs, blocks, ignored, observe)
    # torchvision's one-stage detectors are traced from their batched images to their head
    # outputs (epi_fast.layout.detection); their class and box output layers are never pruned.
    call, outputs = detector_trace(model, example_inputs)
    trace = trace_model(model, example_inputs, observe=observe, call=call)
    names = {m: n for n, m in model.named_modules()}
    order = {m: i for i, m in enumerate(names)}
    ignored_all = list({id(m): m for m in ignored + outputs + trace.outputs}.values())

    groups: List[LayoutGroup] = []
    for _, finder in group_finders():
        groups += finder(trace, ignored_all + claimed_modules(groups), names)
    if not groups:
        raise ValueError(
            f"{type(model).__name__} has no prunable channels: no conv/linear output channels "
            "outside the ignored and output layers"
        )

    # A layer split across groups (a concat feeding an add) counts under the group that holds
    # most of its channels; the structure vector is then an approximation.
    layer_of: Dict[nn.Module, Tuple[int, int, int]] = {}  # layer -> (group, its channels there, scale)
    for gi, g in enumerate(groups):
        for module, count, scale in g.structure_layers():
            prev = layer_of.get(module)
            if prev is None or count > prev[1]:
                layer_of[module] = (gi, count, scale)
    traced = set(trace.dg.module2node)
    # nn.MultiheadAttention calls its out_proj's weights functionally: that is not untraced.
    traced |= {sub for m in names if isinstance(m, nn.MultiheadAttention) for sub in m.modules()}
    return _assemble(model, groups, layer_of, order, names, ignored_all, trace.dg, traced)


def _assemble(model, groups, layer_of, order, names, ignored_all, dg, traced) -> GroupLayout:
    layer_modules = sorted(layer_of, key=lambda m: order[m])
    sizes = [g.size for g in groups]
    offsets = [0]
    for s in sizes[:-1]:
        offsets.append(offsets[-1] + s)
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
        layers=[names[m] for m in layer_modules],
        layer_group=torch.tensor([layer_of[m][0] for m in layer_modules], dtype=torch.int64),
        layer_scale=torch.tensor([layer_of[m][2] for m in layer_modules], dtype=torch.int64),
        ignored=[names[m] for m in ignored_all],
        untraced=[n for m, n in names.items() if isinstance(m, PRUNABLE) and m not in traced],
        dg=dg,
        _shapes=shapes,
        _width_of={names[m]: groups[layer_of[m][0]] for m in layer_modules},
    )


def _transformer_layout(model, example_inputs, groups, ignored, observe) -> GroupLayout:
    """A model with attention: its head and MLP groups (`epi_fast.layout.transformer`), found
    module by module. The model runs once on example_inputs (as the trace would), so that bad
    inputs fail here; the residual width and the layers outside the transformer blocks are
    not pruned."""
    check_token_inputs(model, example_inputs)
    run_once(model, example_inputs, observe)
    names = {m: n for n, m in model.named_modules()}
    order = {m: i for i, m in enumerate(names)}
    layer_of = {}
    for gi, g in enumerate(groups):
        for module, count, scale in g.structure_layers():
            layer_of[module] = (gi, count, scale)
    return _assemble(model, groups, layer_of, order, names, list(ignored), None, set(names))
