"""Physical channel removal: the model shrinks in place and its optimizer keeps working.

Each group kind removes its own neurons (conv channels through Torch-Pruning's dependency
graph). Which entries of each parameter survive is learned, not assumed: just before pruning,
every affected parameter is made to hold its own flat indices (float32, exact below 2**24,
or float64 for a larger parameter, exact below 2**53);
after the slicing, whatever index mapping was applied (flatten, concat offsets, depthwise and
grouped convs), each new parameter holds the indices of its surviving entries. The original
values, gradients and optimizer state are gathered with those indices.

Everything is validated before the model is touched; if anything fails while mutating, or the
pruned network is not the one the criterion chose (its layer widths differ from the layout's
structure for the kept neurons), the model, its parameters and the optimizer are restored
exactly.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn as nn

from .._args import check_int, check_ratio
from ..criteria import get_criterion
from ..layout import GroupLayout, group_layout, unwrap_model
from ..targets import DEFAULT_MAX_LAYER_RATIO, Selector
from ..targets.costs import measured_flops
from ..targets.flops import FlopProbe
from .counting import count_ops
from .optimizer import check_optimizer_for, gather, remap_optimizer

__all__ = ["prune", "prune_with_masks"]


def _check_layout(layout: GroupLayout, model: nn.Module) -> None:
    if not isinstance(layout, GroupLayout):
        raise TypeError(f"layout must be a GroupLayout from group_layout(), got {type(layout).__name__}")
    if layout.model is not model:
        raise ValueError("layout was built for another model; build it with group_layout(model, ...)")
    if layout._spent:
        raise RuntimeError("layout was used to prune already; call group_layout again on the pruned model")
    layout.check_current()


def prune(
    model: nn.Module,
    ratio: float,
    example_inputs,
    criterion: Any = "l2",
    scores: Optional[torch.Tensor] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    min_keep: int = 1,
    ignored_layers=(),
    layout: Optional[GroupLayout] = None,
    reduce: Optional[str] = None,
    target: str = "channels",
    max_layer_ratio: Any = DEFAULT_MAX_LAYER_RATIO,
    round_to: Optional[int] = None,
    ranking: str = "per_kind",
    residual: bool = False,
) -> dict:
    """Remove the lowest-scoring part of the model's group neurons, in place.

    target: what `ratio` is a fraction of. "channels" (the paper's meaning): k = floor(ratio *
    N + 0.5) of the N prunable group neurons are removed globally, lowest scores first.
    "params" / "flops": the cut in that same order that removes the fraction `ratio` of the
    model's parameters (numel) or FLOPs (FlopCounterMode, on example_inputs), within 0.01, or a
    ValueError naming the nearest reachable fractions. A group neuron is one output channel of
    every layer it couples (residual adds, depthwise convs, concatenations).
    min_keep / max_layer_ratio: every group keeps at least min_keep neurons, and at most
    floor(max_layer_ratio * width) channels of one layer go (a float in (0, 1], or a mapping
    from layer name to one; coupled layers take the smallest). The default, 0.9, keeps at least
    ceil(0.1 * width) channels of every layer; max_layer_ratio=1.0 is the paper's rule.
    round_to: every pruned layer keeps a multiple of it (or its whole width when narrower);
    attention heads are not rounded.
    ranking: "per_kind" (default): each kind of group (conv channels, attention heads, MLP
    channels) is ranked on its own, so that with target="channels" each kind loses the
    fraction `ratio` of its neurons (attention heads count as key/value groups); "global":
    one order over every kind after dividing each kind's scores by their mean.
    residual: also prune the residual width (hidden size) of a LLaMA-style decoder (see
    `group_layout`); off by default, and not the masked network (its norms average over the
    kept channels only).

    criterion: a name or an `epi_fast.criteria.Criterion`; a weight criterion ("l2", "l1",
    "bn", "magnitude", ...) scores the current weights, combining member channels with
    `reduce` (None: the criterion's default, "mean" for magnitudes, "sum" for Taylor).
    scores: float32 [N] in the layout's order (e.g. accumulated Taylor scores), used instead of
    scoring; gradient criteria need them. optimizer: its state and param groups are remapped
    to the pruned parameters. layout: a `group_layout` of this model (built if not given).

    Every output of the model keeps its shape. After the cut, the pruned layers' widths are
    compared with the layout's structure for the kept neurons; a mismatch undoes the prune
    and raises RuntimeError.

    Returns a report: ratio, criterion, target, requested (= ratio) and achieved (the fraction
    of the target quantity removed, measured on the pruned model), params/flops/macs before
    and after, layers and kept (per-layer widths after: output channels, query heads of an
    attention module, hidden channels of an MLP), channels_before, groups_pruned,
    neurons_removed, channels_removed, ranking, and kinds ({kind: {"neurons", "removed"}} per
    kind of group). Raises ValueError/TypeError before touching anything on bad input; on
    any failure the model and optimizer are left unchanged.
    """
    return prune_to(model, ratio, example_inputs, criterion, scores, optimizer, min_keep, ignored_layers, layout, reduce,
                    target, max_layer_ratio, round_to, strict=True, ranking=ranking, residual=residual)


def prune_to(model, ratio, example_inputs, criterion, scores, optimizer, min_keep, ignored_layers, layout, reduce,
             target, max_layer_ratio, round_to, *, strict: bool, ranking: str = "per_kind",
             keep_out: Optional[list] = None, residual: bool = False,
             values: Optional[Callable[[str, torch.Tensor, Tuple[int, ...]], torch.Tensor]] = None) -> dict:
    """`prune`; strict=False cuts at the nearest reachable structure even when it is further
    than 0.01 from the ratio (EPIPruner: the structure EPI tracked, see `Selector.select`).
    keep_out: a list that receives the keep mask (bool [N], layout order) that was cut.
    values: None, or ``values(name, flat_idx, shape)`` returning the values of the new
    parameter that replaces the parameter `name` (qualified), its entries `flat_idx` shaped
    `shape`; called once per parameter the prune replaces, as soon as the last group that cuts
    it is cut (an order that depends on the layout and the mask alone: the same on every
    rank), and the model's own values of those parameters are never read: the sharded
    prune passes a model of placeholders and gathers each parameter only when it is cut (and
    carries its optimizer state there)."""
    compiled = is_compiled(model)
    model = unwrap_model(model)
    ratio = check_ratio(ratio, "ratio")
    # An empty group would disconnect the network: min_keep is at least 1 here.
    min_keep = check_int(min_keep, "min_keep", 1)
    crit = get_criterion(criterion)
    reduce = crit.reduction(reduce)
    if scores is None and crit.needs_gradients:
        crit.group_scores(None, reduce)  # raises: a gradient criterion needs scores=
    probe = None
    if layout is None:
        # The dense model's FLOPs are counted in the trace's own forward pass (eval mode,
        # autograd on: what measure_flops runs), not in a second pass.
        probe = FlopProbe(model)
        layout = group_layout(model, example_inputs, ignored_layers=ignored_layers, observe=probe, residual=residual)
    else:
        _check_layout(layout, model)
    selector = Selector(layout, target, min_keep, max_layer_ratio, round_to, example_inputs, ranking=ranking)
    _warn_untraced(layout)
    keep = _keep_mask(layout, crit, scores, ratio, selector, reduce, strict)
    _check_optimizer(optimizer, layout, keep)

    measured = measured_flops(layout, example_inputs)  # the FLOPs target's count, if it took one
    if measured is None and probe is not None:
        measured = probe.count
    before = count_ops(model, example_inputs, measured)
    channels_before = list(layout.layer_channels().values())
    groups_pruned = sum(1 for g, o in zip(layout.groups, layout.offsets) if not bool(keep[o:o + g.size].all()))
    layers = list(layout.layers)
    expected = layout.structure(keep)[0].tolist()
    fetch = None
    if values is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        fetch = lambda old, idx, shape: values(names[id(old)], idx, shape)  # noqa: E731
    snapshot = _cut(model, layout, keep, optimizer, fetch=fetch)
    try:
        widths = layout.layer_channels()
        kept = [widths[name] for name in layers]
        _check_structure(layers, kept, expected)
        # Counting runs the pruned model: a model that no longer runs is undone, not returned.
        try:
            after = count_ops(model, example_inputs)
        except Exception as err:
            first = " ".join(str(err).split())[:300] or type(err).__name__
            raise RuntimeError(
                f"the pruned {type(model).__name__} does not run on example_inputs ({type(err).__name__}: {first}); "
                "a size in its forward that does not follow the pruned widths (a constant split size or view "
                "shape; take it from the modules, e.g. conv.in_channels) would do this; the prune was undone"
            ) from err
    except BaseException:
        if snapshot is not None:
            snapshot.restore()
        raise
    if keep_out is not None:
        keep_out.append(keep)
    if compiled:
        forget_compiled_graphs()
    neurons_removed = int((~keep).sum())
    achieved = {
        "channels": neurons_removed / layout.num_neurons,
        "params": 1.0 - after["params"] / before["params"],
        "flops": 1.0 - after["flops"] / max(before["flops"], 1),
    }[selector.target]
    return {
        "ratio": ratio,
        "criterion": crit.name,
        "scores": "criterion" if scores is None else "given",
        "target": selector.target,
        "requested": ratio,
        "achieved": achieved,
        "min_keep": min_keep,
        "max_layer_ratio": selector.max_layer_ratio,
        "round_to": selector.round_to,
        "ranking": selector.ranking,
        "kinds": {kind: {"neurons": info["n"], "removed": int((~keep[info["neurons"]]).sum())}
                  for kind, info in selector.kinds.items()},
        **{f"{key}_{when}": sizes[key] for key in ("params", "flops", "macs")
           for when, sizes in (("before", before), ("after", after))},
        "layers": layers,
        "channels_before": channels_before,
        "kept": kept,
        "neurons": layout.num_neurons,
        "neurons_removed": neurons_removed,
        "groups": len(layout.groups),
        "groups_pruned": groups_pruned,
        "channels_removed": int(sum(channels_before) - sum(kept)),
    }


def is_compiled(model) -> bool:
    """Whether `model` (or what a DDP wrapper holds) is a `torch.compile` wrapper."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return isinstance(getattr(model, "_orig_mod", None), nn.Module)


def forget_compiled_graphs() -> None:
    """After a prune of a `torch.compile`d model: every compiled graph is dropped
    (`torch.compiler.reset()`), so that the next call compiles the pruned network afresh
    instead of relying on shape guards to notice that its parameters changed."""
    torch.compiler.reset()


def _warn_untraced(layout: GroupLayout) -> None:
    if layout.untraced:
        shown = ", ".join(layout.untraced[:3]) + (", ..." if len(layout.untraced) > 3 else "")
        warnings.warn(
            f"{len(layout.untraced)} conv/linear layers were not reached by tracing ({shown}), e.g. "
            "auxiliary heads that only run in training mode: they are not pruned, so the pruned "
            "model may only run in eval mode",
            stacklevel=3,
        )


def _keep_mask(layout: GroupLayout, crit, scores, ratio: float, selector: Selector, reduce: str,
               strict: bool) -> torch.Tensor:
    """bool [N] on the host: the neurons the selection rule keeps at `ratio`, from `scores` or
    the criterion's."""
    if scores is None:
        scores = crit.group_scores(layout, reduce)
    return selector.select(scores, [ratio], strict=strict).masks[0].cpu()


def _check_structure(layers, kept, expected) -> None:
    """The pruned widths must be the structure the criterion chose (what EPI tracked)."""
    for name, got, want in zip(layers, kept, expected):
        if got != want:
            raise RuntimeError(
                f"the pruned network is not the one the criterion chose: layer {name} kept {got} output "
                f"channels where the layout's structure says {want} (the layout does not describe how "
                f"this model's channels are coupled, e.g. a module shared by several slices of one "
                f"tensor); the prune was undone"
            )


def _check_mask(layout: GroupLayout, keep) -> torch.Tensor:
    n = layout.num_neurons
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool:
        raise TypeError(f"keep mask must be a bool tensor, got {getattr(keep, 'dtype', type(keep).__name__)}")
    if keep.dim() == 2 and keep.shape[0] == 1:
        keep = keep[0]
    if keep.dim() != 1 or keep.numel() != n:
        raise ValueError(f"keep mask must have the layout's {n} group neurons, got shape {tuple(keep.shape)}")
    keep = keep.cpu()
    for g, o in zip(layout.groups, layout.offsets):
        if not bool(keep[o:o + g.size].any()):
            raise ValueError(f"keep mask removes every neuron of the group rooted at {g.root}")
    return keep


def _affected(layout: GroupLayout, keep: torch.Tensor):
    """(group, pruned neurons) of every group that loses neurons, and the parameters they touch
    as (owner module, attribute, parameter)."""
    work = []
    for g, o in zip(layout.groups, layout.offsets):
        pruned = (~keep[o:o + g.size]).nonzero().flatten().tolist()
        if pruned:
            work.append((g, pruned))
    touched = set().union(*(_touched(g) for g, _ in work))
    return work, _params_touched(layout.model, touched)


def _touched(group) -> set:
    """ids of the modules (and bare Parameters) that cutting `group` changes."""
    touched = set()
    for mem in group.members:
        touched.add(id(mem.module))
        if isinstance(mem.module, nn.Module):
            # A member's own submodules are cut with it (nn.MultiheadAttention's out_proj).
            touched.update(id(sub) for sub in mem.module.modules())
    return touched


def _params_touched(model, touched: set) -> list:
    """(owner module, attribute, parameter) of every parameter that `touched` reaches."""
    params = []
    for module in model.modules():
        for attr, p in module._parameters.items():
            # Members are modules, or bare Parameters (tp's "unwrapped" parameters). A tied
            # parameter appears once per owner: every owner must get the new one.
            if p is not None and (id(module) in touched or id(p) in touched):
                params.append((module, attr, p))
    return params


def _check_optimizer(optimizer, layout: GroupLayout, keep: torch.Tensor) -> None:
    if optimizer is not None:
        check_optimizer_for(optimizer, layout.model, _affected(layout, keep)[1])


class _Snapshot:
    """Enough of the model, parameters, optimizer and dependency graph to undo a prune."""

    def __init__(self, model, params, optimizer, dg, layout):
        self.layout = layout
        self.new_ids: set[int] = set()
        self.dtypes: dict[int, torch.dtype] = {}
        self.modules = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in model.modules()]
        # A cut may change a module's class (nn.MultiheadAttention whose heads go).
        self.classes = [(m, type(m)) for m in model.modules()]
        self.pre_hooks = [(m, dict(m._forward_pre_hooks)) for m in model.modules()]
        self.params = [(p, p.data, p.grad) for _, _, p in params]
        self.optimizer = optimizer
        if optimizer is not None:
            self.groups = [list(g["params"]) for g in optimizer.param_groups]
            self.state = dict(optimizer.state)
        self.dg = dg
        self.dg_state = None if dg is None else (dict(dg.module2node), dict(dg._param_to_name), list(dg._pruning_history))

    def restore(self):
        for m, cls in self.classes:
            if type(m) is not cls:
                m.__class__ = cls
        for m, hooks in self.pre_hooks:
            if len(m._forward_pre_hooks) != len(hooks):
                m._forward_pre_hooks.clear()
                m._forward_pre_hooks.update(hooks)
        for m, attrs, params, buffers, children in self.modules:
            m.__dict__.clear()
            m.__dict__.update(attrs)
            for d, saved in ((m._parameters, params), (m._buffers, buffers), (m._modules, children)):
                d.clear()
                d.update(saved)
        for p, data, grad in self.params:
            p.data = data
            p.grad = grad
        if self.optimizer is not None:
            for g, saved in zip(self.optimizer.param_groups, self.groups):
                g["params"] = saved
            self.optimizer.state.clear()
            self.optimizer.state.update(self.state)
        if self.dg_state is not None:
            module2node, param_to_name, history = self.dg_state
            self.dg.module2node = module2node
            self.dg._param_to_name = param_to_name
            self.dg._pruning_history = history
        self.layout._spent = False


def _prune_group(dg, group, neurons) -> None:
    """Remove `neurons` of `group` (and everything coupled to them): the group kind's own cut."""
    group.remove(dg, neurons)


def prune_with_masks(model: nn.Module, layout: GroupLayout, keep_mask: torch.Tensor, optimizer=None) -> None:
    """Remove the group neurons where keep_mask (bool [N], True = kept) is False, in place.

    The optimizer (if given) is remapped: the new Parameters replace the old ones in its param
    groups (hyper-parameters kept) and every per-parameter state tensor (SGD momentum, Adam's
    exp_avg / exp_avg_sq, ...) is sliced to the surviving entries; scalar state (step) is kept.
    The layout is spent afterwards: build a new one for the pruned model.
    """
    model = unwrap_model(model)
    _check_layout(layout, model)
    _cut(model, layout, _check_mask(layout, keep_mask), optimizer)


def _cut(model, layout, keep, optimizer, fetch=None) -> Optional["_Snapshot"]:
    """The surgery; returns the snapshot that undoes it (None when nothing was removed).
    fetch: None (the new parameters take the old ones' values), or ``fetch(old, flat_idx,
    shape)`` returning the new parameter's values (`prune_to`'s values=)."""
    _check_optimizer(optimizer, layout, keep)
    work, params = _affected(layout, keep)
    if not work:
        return None
    dg = layout.dg
    snapshot = _Snapshot(model, params, optimizer, dg, layout)
    try:
        replaced = _cut_groups(dg, work, params, snapshot, optimizer is not None, fetch)
        if optimizer is not None:
            remap_optimizer(optimizer, replaced)
        _check_no_stray_parameters(model, snapshot)
    except BaseException:
        snapshot.restore()
        raise
    layout._spent = True
    return snapshot


def _cut_groups(dg, work, params, snapshot, keep_indices: bool, fetch) -> dict:
    """Cut the groups one after the other, each parameter traced as a tensor of its flat
    indices (Torch-Pruning slices it as it would the values) from the first group that touches
    it; once the last group that touches it is cut, the parameter is rebuilt from those indices
    (`_rebuild`) and the old one gets its values back. So only the parameters of the groups in
    progress hold index tensors at any time (for a decoder, one layer's attention or MLP), not
    every parameter of the model at once. Returns id(old) -> (old, new, kept flat indices, or
    None unless keep_indices)."""
    originals = {id(p): (data, grad) for p, data, grad in snapshot.params}
    entries: dict = {}  # id(p) -> every (owner, attribute, p) of p
    for entry in params:
        entries.setdefault(id(entry[2]), []).append(entry)

    def reaches(pid, reach) -> bool:
        return pid in reach or any(id(m) in reach for m, _, _ in entries[pid])

    touched = [_touched(g) for g, _ in work]
    left = {pid: sum(reaches(pid, t) for t in touched) for pid in entries}
    indexed: set = set()
    replaced: dict = {}
    for (group, pruned), reach in zip(work, touched):
        mine = [pid for pid in entries if reaches(pid, reach)]
        for pid in mine:
            if pid not in indexed:
                indexed.add(pid)
                p = entries[pid][0][2]
                # Grads are set aside: tp would slice them into the index-valued parameters.
                p.grad = None
                p.data = _flat_indices(p)
        _prune_group(dg, group, pruned)
        for pid, es in entries.items():
            if pid not in indexed and any(m._parameters[a] is not p for m, a, p in es):
                raise RuntimeError(f"Torch-Pruning changed a {type(es[0][0]).__name__}'s {es[0][1]} while cutting a "
                                   "group that does not list it; the prune was undone")
        for pid in mine:
            left[pid] -= 1
            if left[pid] == 0:
                _rebuild(entries[pid], originals[pid], snapshot, replaced, keep_indices, fetch)
    return replaced


# Whole numbers are exact in float32 below 2**24, in float64 below 2**53. Half the bytes of
# float64 for every parameter that fits: the index tensors are written, sliced by Torch-Pruning
# and read back once per prune, for every parameter of every touched layer.
_FLOAT32_EXACT = 1 << 24


def _flat_indices(p: torch.Tensor) -> torch.Tensor:
    """p's flat indices 0 .. numel-1 in p's shape, as floats that hold them exactly."""
    dtype = torch.float32 if p.numel() <= _FLOAT32_EXACT else torch.float64
    return torch.arange(p.numel(), dtype=dtype, device=p.device).view(p.shape)


def _as_index(values: torch.Tensor) -> torch.Tensor:
    """The exact whole numbers of `_flat_indices` (after slicing) as an index tensor: int32
    from float32 (index_select takes either), int64 from float64."""
    return values.to(torch.int32 if values.dtype == torch.float32 else torch.int64)


def _check_no_stray_parameters(model, snapshot) -> None:
    # A parameter that tp replaced although no layout member owns it would escape the
    # optimizer remapping (and keep index values if it had been swapped): refuse the result.
    known = {id(p) for _, _, params, _, _ in snapshot.modules for p in params.values() if p is not None}
    known |= snapshot.new_ids
    for name, p in model.named_parameters():
        if id(p) not in known or p.dtype != snapshot.dtypes.get(id(p), p.dtype):
            raise RuntimeError(f"Torch-Pruning changed {name}, which the layout does not list; the prune was undone")


def _rebuild(entries, original, snapshot, replaced: dict, keep_indices: bool, fetch) -> None:
    """One parameter, all of whose groups are cut: its owners that Torch-Pruning sliced get a
    new parameter with the old one's values at the sliced indices (or `fetch`'s), and the old
    object gets its values back, so that anyone still holding one sees the dense tensor."""
    data, grad = original
    old = entries[0][2]
    for module, attr, _ in entries:
        current = module._parameters[attr]
        if current is old:  # not sliced after all (e.g. a member whose channels were kept)
            continue
        if id(old) not in replaced:
            idx = _as_index(current.detach().reshape(-1))
            shape = tuple(current.shape)
            value = gather(data, idx, shape) if fetch is None else fetch(old, idx, shape)
            new = nn.Parameter(value, requires_grad=old.requires_grad)
            if grad is not None:
                new.grad = gather(grad, idx, shape)
            # The indices are kept only for the optimizer's remapping.
            replaced[id(old)] = (old, new, idx if keep_indices else None)
            snapshot.new_ids.add(id(new))
            snapshot.dtypes[id(new)] = data.dtype
        module._parameters[attr] = replaced[id(old)][1]
    old.data, old.grad = data, grad
