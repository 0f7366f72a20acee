"""What a group of coupled neurons is, and how the layout learns about kinds of groups.

A *group kind* (conv channels; attention heads and MLP channels, see `transformer.py`) is one
class derived from `LayoutGroup`, plus one *finder* registered with `register_group_kind` for
kinds found on the traced graph. The
group is the only place that knows which tensor slices its neurons own:

- `sources(role)`: the tensors, and which of their dim-0 rows belong to which neuron, that a
  criterion reads for a role ("filters": the neurons' own weight rows; "scales": their
  BatchNorm gamma; "taylor": every parameter whose first-order term removing the neuron
  removes);
- `structure_layers()`: the layers whose kept count this group sets in the EPI structure vector;
- `remove(dg, neurons)`: the physical removal of some of its neurons.

Criteria (`epi_fast.criteria`) and the surgery (`epi_fast.surgery`) only use these three, so a
new kind needs no change anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ["Member", "Source", "LayoutGroup", "ROLES", "register_group_kind", "unregister_group_kind", "group_finders", "claimed_modules"]

# The roles a criterion may ask a group for (see the module docstring).
ROLES = ("filters", "scales", "taylor")


@dataclass
class Member:
    """One module whose channels a group touches.

    kind: ``"out"`` (a conv/linear whose output channels are removed, depthwise convs
    included), ``"in"`` (a conv/linear whose input channels are removed), ``"bn"`` (a
    BatchNorm) or ``"other"`` (LayerNorm, PReLU, a bare Parameter, ...).
    channels[i] is a channel index of the module, neurons[i] the group neuron it belongs to.
    dim: the pruned dimension of the module's weight (or of a bare Parameter) when it is not
    the usual one (dim 0 for "out", dim 1 for "in"): transformers' Conv1D stores its weight
    transposed. Attention groups add a member of kind ``"attn"``: the attention module itself,
    whose attention products scale with its kept heads.
    """

    name: str
    module: nn.Module
    kind: str
    channels: torch.Tensor
    neurons: torch.Tensor
    dim: Optional[int] = None


@dataclass(frozen=True)
class Source:
    """Rows of one module's parameters that score a group's neurons: row ``rows[i]`` (dim 0) of
    every attribute in `attrs` belongs to neuron ``neurons[i]``. Attributes listed together add
    into the same rows (a BatchNorm's weight and bias).

    view: when set, the rows are those of ``view(tensor)`` (a 2-D view or copy of the
    attribute), not of the attribute itself: an attention head's block of a projection (its
    columns of an output projection, its slice of a fused q/k/v weight) becomes one row.
    key: what makes two sources the same tensor rows (default: the module). slot: sources that
    share a slot add into the same rows of a Taylor buffer before the square: a head's Taylor
    term is the square of the sum of w * g over all of its parameters."""

    name: str
    module: nn.Module
    attrs: Tuple[str, ...]
    rows: torch.Tensor
    neurons: torch.Tensor
    view: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    key: Any = None
    slot: Any = None

    def tensor(self, attr: Optional[str] = None) -> torch.Tensor:
        """The (viewed) attribute `attr` (default: the first), detached."""
        t = getattr(self.module, attr or self.attrs[0]).detach()
        return t if self.view is None else self.view(t)


@dataclass
class LayoutGroup:
    """A set of coupled neurons: removing neuron j removes ``channels[neurons == j]`` of every
    member. `root` names the module whose numbering the neurons follow; `size` is the number of
    neurons. Subclasses are the group kinds."""

    root: str
    size: int
    members: List[Member]
    kind: ClassVar[str] = "group"
    # Magnitude criteria score a joint-norm group by the L2 norm of all of a neuron's
    # parameters together (attention heads, MLP channels); other groups combine member channels
    # with the criterion's reduce.
    joint_norm: ClassVar[bool] = False

    def sources(self, role: str) -> List[Source]:
        raise NotImplementedError(f"{type(self).__name__} does not provide sources for role {role!r}")

    def covers(self, role: str) -> bool:
        """Whether the sources of `role` score every neuron of the group."""
        covered = torch.zeros(self.size, dtype=torch.bool)
        for s in self.sources(role):
            covered[s.neurons] = True
        return bool(covered.all())

    def structure_layers(self) -> List[Tuple[nn.Module, int, int]]:
        """(layer module, channels of it in this group, its channels per kept neuron) for every
        layer whose kept count this group decides."""
        raise NotImplementedError

    def width(self, module: nn.Module) -> int:
        """The current width of one of this group's structure layers (what `structure_layers`
        counts): output channels of a conv/linear layer."""
        return module.out_features if isinstance(module, nn.Linear) else module.out_channels

    def remove(self, dg, neurons: Sequence[int]) -> None:
        """Remove `neurons` (and everything coupled to them) from the model, in place."""
        raise NotImplementedError


# A finder builds one kind's groups from the trace: finder(trace, ignored modules, names) ->
# groups. Finders run in registration order; each sees the modules claimed by earlier ones
# among the ignored, so that two kinds never own the same channels.
Finder = Callable[..., List[LayoutGroup]]
_FINDERS: List[Tuple[str, Finder]] = []


def register_group_kind(name: str, finder: Finder, *, first: bool = False) -> None:
    """Teach the layout a kind of group: `finder(trace, ignored, names)` returns its groups.
    `first=True` runs it before the built-in kinds (a kind that claims layers the conv-channel
    kind would otherwise take, such as attention projections)."""
    if any(n == name for n, _ in _FINDERS):
        raise ValueError(f"a group kind named {name!r} is registered already")
    if first:
        _FINDERS.insert(0, (name, finder))
    else:
        _FINDERS.append((name, finder))


def unregister_group_kind(name: str) -> None:
    """Forget the group kind `name` (tests and plugins that are unloaded)."""
    for i, (n, _) in enumerate(_FINDERS):
        if n == name:
            del _FINDERS[i]
            return
    raise KeyError(f"no group kind named {name!r} is registered")


def group_finders() -> List[Tuple[str, Finder]]:
    return list(_FINDERS)


def claimed_modules(groups: Sequence[LayoutGroup]) -> List[nn.Module]:
    """The modules whose output channels `groups` own (the later finders leave them alone)."""
    out = []
    for g in groups:
        out.extend(m.module for m in g.members if m.kind == "out")
    return out

