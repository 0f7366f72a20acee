"""What a structure costs: the model's parameters or FLOPs as a function of the kept neurons
of every group.

Every pruned dimension of a parameter is affine in the kept counts n_g of the groups that cut
it (a concatenation's input takes a slice from each of its sources), and a parameter has at
most two pruned dimensions (output and input channels), so the whole cost is one quadratic

    C(n) = c + sum_g a_g n_g + sum_t w_t n_{g_t} n_{h_t}

over the G kept counts. It is built once per layout from the groups' members (which module,
which of its dimensions, how many channels per neuron) and evaluated for many structures at
once on the device. FLOPs follow the same form: a convolution's or a linear layer's FLOPs are
its weight's element count times the output positions it is applied at (fixed by the input),
so each measured per-module count scales with the modelled weight; attention products scale
with the embedding width. FLOPs are measured once, on the dense model, with
`epi_fast.targets.flops.measure_flops` (FlopCounterMode); parameters are counted by `numel`.

A module whose cost the model does not know how to follow (a custom module with parameters in
a pruned group) is refused with a ValueError naming its type; pruning by channels still works
for it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..layout import GroupLayout
from ..layout.trace import BATCHNORM
from .flops import FlopCount, measure_flops

__all__ = ["CostModel", "cost_model", "COST_KINDS"]

COST_KINDS = ("params", "flops")

# Ops whose FLOPs scale with a layer's weight (matrix products, convolutions) and ops of
# attention that scale with the embedding width (scores and weighted sums).
_ATTENTION_OPS = ("bmm", "baddbmm", "scaled_dot_product", "_flash_attention", "_efficient_attention",
                  "_cudnn_attention")


@dataclass
class CostModel:
    """C(n) = const + lin . n + sum_t pair_w[t] * n[pair_g[t]] * n[pair_h[t]] (float64), with
    n the kept neurons per group; `full` is C at the dense widths (what was measured)."""

    kind: str
    const: float
    lin: torch.Tensor
    pair_g: torch.Tensor
    pair_h: torch.Tensor
    pair_w: torch.Tensor
    full: float

    def to(self, device) -> "CostModel":
        return CostModel(self.kind, self.const, self.lin.to(device), self.pair_g.to(device), self.pair_h.to(device),
                         self.pair_w.to(device), self.full)

    def evaluate(self, counts: torch.Tensor) -> torch.Tensor:
        """Cost of each structure: counts [..., G] (kept neurons per group) -> float64 [...]."""
        n = counts.to(torch.float64)
        out = n @ self.lin + self.const
        if self.pair_w.numel():
            out = out + (n[..., self.pair_g] * n[..., self.pair_h]) @ self.pair_w
        return out


class _Affine:
    """size(n) = base + sum_g coef[g] * n_g, built from "full width minus what is removed"."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.base = float(width)
        self.coef: Dict[int, float] = {}

    def cut(self, group: int, per_neuron: float, size: int) -> None:
        # Removing (size - n_g) neurons removes per_neuron channels each.
        prev = self.coef.get(group)
        if prev is not None:  # the same tensor reached twice through one group (tied owners)
            if prev >= per_neuron:
                return
            self.base += prev * size
        self.coef[group] = per_neuron
        self.base -= per_neuron * size


class _Quadratic:
    def __init__(self) -> None:
        self.const = 0.0
        self.lin: Dict[int, float] = defaultdict(float)
        self.pair: Dict[Tuple[int, int], float] = defaultdict(float)

    def add_product(self, forms: List[_Affine], scale: float) -> None:
        """scale * prod(forms), at most two of them varying."""
        fixed = scale
        varying = []
        for f in forms:
            if f.coef:
                varying.append(f)
            else:
                fixed *= f.base
        if len(varying) > 2:
            raise ValueError("a parameter with more than two pruned dimensions")
        if not varying:
            self.const += fixed
        elif len(varying) == 1:
            self.add_affine(varying[0], fixed)
        else:
            a, b = varying
            self.const += fixed * a.base * b.base
            for g, c in a.coef.items():
                self.lin[g] += fixed * c * b.base
            for h, c in b.coef.items():
                self.lin[h] += fixed * c * a.base
            for g, c in a.coef.items():
                for h, d in b.coef.items():
                    key = (min(g, h), max(g, h))
                    self.pair[key] += fixed * c * d

    def add_affine(self, form: _Affine, scale: float) -> None:
        self.const += scale * form.base
        for g, c in form.coef.items():
            self.lin[g] += scale * c

    def model(self, kind: str, groups: int, full: float) -> CostModel:
        lin = torch.zeros(groups, dtype=torch.float64)
        for g, v in self.lin.items():
            lin[g] = v
        pairs = [(g, h, w) for (g, h), w in self.pair.items() if w]
        return CostModel(
            kind, float(self.const), lin,
            torch.tensor([p[0] for p in pairs], dtype=torch.int64),
            torch.tensor([p[1] for p in pairs], dtype=torch.int64),
            torch.tensor([p[2] for p in pairs], dtype=torch.float64),
            float(full),
        )


class _Dims:
    """The affine size of every pruned dimension of every parameter, keyed by the tensor."""

    def __init__(self) -> None:
        self.forms: Dict[int, Dict[int, _Affine]] = {}
        self.tensors: Dict[int, torch.Tensor] = {}

    def cut(self, p: Optional[torch.Tensor], dim: int, group: int, per_neuron: float, size: int) -> None:
        if p is None or not isinstance(p, torch.Tensor):
            return
        dim = dim % p.dim()
        self.tensors[id(p)] = p
        form = self.forms.setdefault(id(p), {}).setdefault(dim, _Affine(p.shape[dim]))
        form.cut(group, per_neuron, size)

    def form(self, p: torch.Tensor, dim: int) -> _Affine:
        f = self.forms.get(id(p), {}).get(dim % p.dim())
        return f if f is not None else _constant(p.shape[dim])

    def numel(self, p: torch.Tensor) -> List[_Affine]:
        return [self.form(p, d) for d in range(p.dim())]


def _constant(width: int) -> _Affine:
    return _Affine(width)


def _unwrapped_dims(layout: GroupLayout) -> Dict[int, int]:
    return {id(u.parameters): int(u.pruning_dim) for u in getattr(layout.dg, "unwrapped_parameters", None) or ()}


def _is_conv1d(m) -> bool:
    """transformers' Conv1D (GPT-2): a linear layer whose weight is stored [in, out]."""
    return type(m).__name__ == "Conv1D" and isinstance(getattr(m, "weight", None), torch.Tensor)


def _record_member(dims: _Dims, mem, gi: int, size: int, bare_dims: Dict[int, int]) -> None:
    m = mem.module
    cpn = mem.channels.numel() / size  # module channels removed per removed neuron
    if mem.kind == "attn":
        return  # the attention module itself: its products are followed by flops_model
    if mem.dim is not None and (isinstance(m, nn.Linear) or _is_conv1d(m)):
        # Attention and MLP slices: the pruned dimension of the weight is given; an output
        # slice ("out") takes the bias along.
        dims.cut(m.weight, mem.dim, gi, cpn, size)
        if mem.kind == "out":
            dims.cut(m.bias, 0, gi, cpn, size)
        return
    if isinstance(m, nn.Parameter) or (isinstance(m, torch.Tensor) and not isinstance(m, nn.Module)):
        dim = mem.dim if mem.dim is not None else bare_dims.get(id(m))
        if dim is None:
            raise ValueError(f"cannot follow the cost of parameter {mem.name}: its pruned dimension is unknown")
        dims.cut(m, dim, gi, cpn, size)
    elif isinstance(m, nn.modules.conv._ConvNd):
        groups = m.groups
        depthwise = groups > 1 and groups == m.in_channels
        if mem.kind == "out":
            if m.transposed:
                dims.cut(m.weight, 1, gi, cpn / groups, size)
            else:
                dims.cut(m.weight, 0, gi, cpn, size)
            dims.cut(m.bias, 0, gi, cpn, size)
        elif not depthwise:  # a depthwise conv's input dimension (one channel per group) stays
            if m.transposed:
                dims.cut(m.weight, 0, gi, cpn, size)
            else:
                dims.cut(m.weight, 1, gi, cpn / groups, size)
    elif isinstance(m, nn.Linear):
        if mem.kind == "out":
            dims.cut(m.weight, 0, gi, cpn, size)
            dims.cut(m.bias, 0, gi, cpn, size)
        else:
            dims.cut(m.weight, 1, gi, cpn, size)
    elif isinstance(m, (BATCHNORM, nn.GroupNorm, nn.PReLU)):
        if isinstance(m, nn.PReLU) and m.weight.numel() == 1:
            return
        dims.cut(getattr(m, "weight", None), 0, gi, cpn, size)
        dims.cut(getattr(m, "bias", None), 0, gi, cpn, size)
    elif isinstance(m, nn.LayerNorm):
        dims.cut(m.weight, -1, gi, cpn, size)
        dims.cut(m.bias, -1, gi, cpn, size)
    elif isinstance(m, nn.Embedding):
        dims.cut(m.weight, 1, gi, cpn, size)
    elif isinstance(m, nn.MultiheadAttention):
        if not m._qkv_same_embed_dim:
            raise ValueError(f"cannot follow the cost of {mem.name}: MultiheadAttention with separate kdim/vdim")
        # The embedding width: q, k and v rows (3 per channel) and the input columns.
        dims.cut(m.in_proj_weight, 0, gi, 3 * cpn, size)
        dims.cut(m.in_proj_weight, 1, gi, cpn, size)
        dims.cut(m.in_proj_bias, 0, gi, 3 * cpn, size)
        dims.cut(m.out_proj.weight, 0, gi, cpn, size)
        dims.cut(m.out_proj.weight, 1, gi, cpn, size)
        dims.cut(m.out_proj.bias, 0, gi, cpn, size)
        dims.cut(m.bias_k, -1, gi, cpn, size)
        dims.cut(m.bias_v, -1, gi, cpn, size)
    elif mem.dim is not None and isinstance(getattr(m, "weight", None), torch.Tensor):
        # A norm over a pruned width (an RMSNorm of the residual stream): its weight and bias.
        dims.cut(m.weight, mem.dim, gi, cpn, size)
        dims.cut(getattr(m, "bias", None), mem.dim, gi, cpn, size)
    elif any(True for _ in m.parameters(recurse=False)):
        raise ValueError(
            f"cannot follow the cost of {mem.name} ({type(m).__name__}): epi_fast does not know how its parameters "
            f"depend on the pruned channels; use target='channels', or ignore that layer (ignored_layers)"
        )


def _dims(layout: GroupLayout) -> Tuple[_Dims, Dict[str, List[Tuple[int, str]]]]:
    dims = _Dims()
    bare = _unwrapped_dims(layout)
    members: Dict[str, List[Tuple[int, str]]] = defaultdict(list)
    for gi, g in enumerate(layout.groups):
        for mem in g.members:
            _record_member(dims, mem, gi, g.size, bare)
            members[mem.name].append((gi, mem.kind))
    for pid, forms in dims.forms.items():
        for d, f in forms.items():
            if f.base < -1e-9:
                p = dims.tensors[pid]
                raise ValueError(f"cost model: dimension {d} of a {tuple(p.shape)} parameter is cut more than its width")
    return dims, members


def params_model(layout: GroupLayout) -> CostModel:
    dims, _ = _dims(layout)
    q = _Quadratic()
    seen = set()
    full = 0
    for p in layout.model.parameters():  # unique tensors, as numel counting sees them
        if id(p) in seen:
            continue
        seen.add(id(p))
        full += p.numel()
        q.add_product(dims.numel(p), 1.0)
    return q.model("params", len(layout.groups), full)


def measured_flops(layout: GroupLayout, example_inputs: Any) -> Optional[FlopCount]:
    """The dense model's FlopCount that the layout's FLOPs model was built from, if it was
    built from these very example_inputs (None otherwise)."""
    cached = layout._plans.get(("flops", "measured"))
    return cached[1] if cached is not None and cached[0] is example_inputs else None


def flops_model(layout: GroupLayout, example_inputs: Any) -> CostModel:
    dims, members = _dims(layout)
    count = measure_flops(layout.model, example_inputs)
    # Kept with the inputs it was measured on (the reference also keeps their id from reuse).
    layout._plans[("flops", "measured")] = (example_inputs, count)
    q = _Quadratic()
    modules = dict(layout.model.named_modules())
    names = {mod: n for n, mod in modules.items()}
    # Submodules of a pruned attention module that are none of its projections (BERT computes
    # its attention products in attention.self): their products follow its kept heads too.
    within_heads: Dict[str, int] = {}
    for gi, g in enumerate(layout.groups):
        if g.kind == "heads" and isinstance(getattr(g, "module", None), nn.Module):
            for sub in g.module.modules():
                n = names.get(sub)
                if sub is not g.module and n is not None and n not in members:
                    within_heads.setdefault(n, gi)
    modelled = 0
    for name, ops_ in count.own.items():
        m = modules.get(name)
        total = sum(ops_.values())
        if name in within_heads and not _cut_anywhere(m, dims):
            attention = sum(v for op, v in ops_.items() if any(a in op for a in _ATTENTION_OPS))
            if attention:
                gi = within_heads[name]
                size = layout.groups[gi].size
                kept = _Affine(size)
                kept.cut(gi, 1.0, size)
                q.add_affine(kept, attention / size)
                modelled += attention
            continue
        if name not in members and not _cut_anywhere(m, dims):
            continue  # nothing of it is pruned: part of the constant
        attention = sum(v for op, v in ops_.items() if any(a in op for a in _ATTENTION_OPS))
        products = total - attention
        heads = [gi for gi, kind in members.get(name, ()) if kind == "attn"]
        if heads:
            # An attention module whose heads are pruned: its score and weighted-sum products
            # scale with its kept key/value groups, its own projections (nn.MultiheadAttention's
            # in_proj and out_proj run functionally) with their weights.
            gi = heads[0]
            size = layout.groups[gi].size
            kept = _Affine(size)
            kept.cut(gi, 1.0, size)
            q.add_affine(kept, attention / size)
            own = [p for p in m.parameters(recurse=isinstance(m, nn.MultiheadAttention)) if p.dim() == 2]
            if not isinstance(m, nn.MultiheadAttention):
                # Linear children that ran no FLOPs of their own are run functionally by the
                # module (torchvision Swin's qkv and proj): its products are theirs.
                prefix = f"{name}." if name else ""
                functional = [sub.weight for sub_name, sub in m.named_children()
                              if isinstance(sub, nn.Linear) and prefix + sub_name not in count.own]
                own = functional or own
            dense = sum(p.numel() for p in own)
            if products and not dense:
                raise ValueError(f"cannot follow the FLOPs of {name} ({type(m).__name__}): {products} FLOPs outside "
                                 "attention products and no weight to relate them to")
            for p in own:
                q.add_product(dims.numel(p), products / dense)
        elif (isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or _is_conv1d(m)) and not attention:
            q.add_product(dims.numel(m.weight), total / m.weight.numel())
        elif isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim:
            weights = [m.in_proj_weight, m.out_proj.weight]
            dense = sum(w.numel() for w in weights)
            for w in weights:
                q.add_product(dims.numel(w), products / dense)
            if attention:
                q.add_affine(dims.form(m.in_proj_weight, 1), attention / m.embed_dim)
        else:
            raise ValueError(
                f"cannot follow the FLOPs of {name} ({type(m).__name__}): it computes {total} FLOPs in ops epi_fast "
                f"cannot relate to its pruned channels; use target='channels' or 'params', or ignore that layer"
            )
        modelled += total
    q.const += count.total - modelled
    return q.model("flops", len(layout.groups), count.total)


def _cut_anywhere(module, dims: _Dims) -> bool:
    if module is None:
        return False
    return any(id(p) in dims.forms for p in module.parameters(recurse=False))


def cost_model(layout: GroupLayout, kind: str, example_inputs: Any = None) -> CostModel:
    """The layout's cost model of `kind` ("params" or "flops"), built once per layout."""
    if kind not in COST_KINDS:
        raise ValueError(f"unknown cost {kind!r}; expected one of {', '.join(COST_KINDS)}")
    key = ("cost", kind)
    if key not in layout._plans:
        if kind == "params":
            layout._plans[key] = params_model(layout)
        else:
            if example_inputs is None:
                raise ValueError("target='flops' needs example_inputs to measure the model's FLOPs")
            layout._plans[key] = flops_model(layout, example_inputs)
    return layout._plans[key]
