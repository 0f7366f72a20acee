"""Per-layer limits and hardware-friendly widths, resolved per group of a layout.

- `max_layer_ratio`: at most floor(r * width) channels of one layer are removed; a float in
  (0, 1] or a mapping from layer name to float (layers it does not name get the default);
  coupled layers take the smallest limit among their members. It becomes a per-group minimum
  of kept neurons, max(min_keep, C_g - floor(r_g * C_g)), which is what `global_masks`
  protects per segment.
- `round_to=N`: every group keeps a multiple of N neurons, or its whole width when it is
  narrower than N; never zero. Attention-head groups are not rounded (their widths are
  multiples of head_dim already). Where the limit asks for more neurons than the largest
  multiple of N that fits, the largest multiple wins (a width of 100 with N = 8 keeps at most
  96 whatever the limit).
"""

from __future__ import annotations

import math
from typing import Mapping, Tuple

import torch

from .._args import DEFAULT_MAX_LAYER_RATIO, TARGETS, check_max_layer_ratio, check_round_to, check_target
from ..layout import GroupLayout

__all__ = ["DEFAULT_MAX_LAYER_RATIO", "TARGETS", "check_target", "check_max_layer_ratio", "check_round_to",
           "group_minimums", "rounding_bounds"]


def _removable(ratio: float, width: int) -> int:
    """floor(ratio * width) in float64; 1.0 allows every channel."""
    return width if ratio >= 1.0 else int(math.floor(ratio * width))


def group_minimums(layout: GroupLayout, min_keep: int, max_layer_ratio) -> torch.Tensor:
    """int64 [G]: the fewest neurons each group may keep under `min_keep` and the limits."""
    default = DEFAULT_MAX_LAYER_RATIO
    by_name: Mapping[str, float] = {}
    if isinstance(max_layer_ratio, Mapping):
        by_name = max_layer_ratio
        known = dict(layout.model.named_modules())
        layers = {mem.name for g in layout.groups for mem in g.members if mem.kind == "out"} | set(layout.layers)
        for name in by_name:
            if name not in known:
                raise ValueError(f"max_layer_ratio names {name!r}, which is not a module of the model")
            if name not in layers:
                raise ValueError(f"max_layer_ratio names {name!r}, which is not a prunable layer (its output "
                                 f"channels are not pruned)")
    else:
        default = max_layer_ratio
    names = {m: n for n, m in layout.model.named_modules()} if by_name else {}
    out = []
    for g in layout.groups:
        # Coupled layers: the smallest limit among the group's layers that the mapping names.
        named = [by_name[m.name] for m in g.members if m.kind == "out" and m.name in by_name]
        # An attention or MLP module named by its structure-vector entry.
        named += [by_name[n] for n in (names.get(mod) for mod, _, _ in g.structure_layers()) if n in by_name]
        ratio = min(named) if named else default
        out.append(min(g.size, max(min_keep, g.size - _removable(ratio, g.size))))
    return torch.tensor(out, dtype=torch.int64)


def rounding_bounds(sizes: torch.Tensor, minimums: torch.Tensor, round_to) -> Tuple[torch.Tensor, torch.Tensor]:
    """(lowest, highest) kept count per group that `round_to` (an int, or one per group)
    allows: multiples of round_to between the limit and the width (the width itself for a
    group narrower than round_to)."""
    top = (sizes // round_to) * round_to
    low = torch.minimum(((minimums + round_to - 1) // round_to) * round_to, top)
    narrow = sizes < round_to
    return torch.where(narrow, sizes, low), torch.where(narrow, sizes, top)
