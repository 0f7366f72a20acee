"""The built-in criteria on a model sharded with FSDP2: each rank scores its own rows.

Under `fully_shard` every parameter is a DTensor split on dim 0: each rank holds whole output
channels (rows) of every weight, but a neuron's entries can still lie on several ranks: an
attention head's columns of the output projection, an MLP channel's column of the down
projection, a head's block of q/k/v rows cut by a shard boundary. So each rank computes, with
the fused operators on its local shards, the additive part of every score (squared L2 norms,
L1 norms, |gamma|, sums of w * g) into the flat per-channel buffer of the criterion's
`ScorePlan`, the ranks add their buffers (one all-reduce of O(channels) float32 values, never
a weight), and only then are the square roots taken and the channels combined into group
neurons, exactly as `Magnitude` and `Taylor` do on one process. The result equals the
single-process score of the gathered weights within float rounding, on every rank alike.

Taylor squares the sum over a neuron's parameters per optimizer step, so the neurons whose
parameters are split across ranks (attention heads and MLP channels) need their per-step sums
added before the square: one all-reduce per step of (joint neurons + 1) float32 values (the
extra one says whether any rank saw a non-finite gradient, so that every rank skips the same
steps). Conv and linear channel groups (rows, whole on one rank) are squared locally and added
up once per epoch.

`ShardedScorer(layout, criterion, reduce, module, comm)`: `layout` is the layout of a plain
(unsharded) copy of the model, `module` the sharded model itself (the same qualified names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from .. import ops
from ..distributed import local_rows
from ..layout.transformer import SliceView
from .base import check_reduce
from .magnitude import Magnitude
from .taylor import Taylor, TaylorSums, _scaler_factor

__all__ = ["ShardedScorer", "ShardedTaylorAccumulator", "check_sharded_criterion"]


def check_sharded_criterion(criterion) -> None:
    """ValueError unless `criterion` is one of the built-ins that know how to score shards."""
    if type(criterion) not in (Magnitude, Taylor):
        raise ValueError(
            f"criterion {criterion.name!r} ({type(criterion).__name__}) cannot score a model sharded with fully_shard: "
            "under FSDP, EPIPruner scores with the built-in Magnitude and Taylor criteria only"
        )


@dataclass
class _Part:
    """One parameter of one plan source, as this rank holds it. kind "rows": the rank's rows are
    buffer rows dest[0], dest[0] + 1, ... (a plain source); "view0": a SliceView on dim 0, the
    rank's rows lo..hi-1 fall into buffer rows dest; "view": a SliceView on another dim, applied
    to the local shard, whose n rows (partial sums) go to dest."""

    module: nn.Module
    attr: str
    kind: str
    view: Optional[SliceView]
    lo: int
    hi: int
    dest: torch.Tensor
    first: int

    def local(self, t) -> Optional[torch.Tensor]:
        """The rows of this rank's shard of `t` (the parameter or its gradient) that are scored, as
        2-D rows (1-D for a vector), or None when this rank holds none of them."""
        shard, _ = local_rows(t)
        if self.kind == "rows":
            return shard if shard.shape[0] else None
        if self.kind == "view0":
            if self.hi <= self.lo:
                return None
            rows = shard[self.lo:self.hi]
            return rows.reshape(rows.shape[0], -1)
        if shard.shape[0] == 0:
            return None
        return self.view(shard)

    def products(self, p, g) -> Optional[torch.Tensor]:
        """float32 [len(dest)]: the sum of w * g over each scored row this rank holds (part of it
        for a split neuron), or None when it holds none. The product is summed in place, without
        the copy that viewing a slice of columns as rows would make."""
        w, _ = local_rows(p)
        d, _ = local_rows(g)
        if w.shape[0] == 0 or (self.kind == "view0" and self.hi <= self.lo):
            return None
        if self.kind == "view0":
            rows = w[self.lo:self.hi].float() * d[self.lo:self.hi].float()
            return rows.reshape(rows.shape[0], -1).sum(1)
        v = self.view
        part = (w.float() * d.float()).narrow(v.dim, v.offset, v.n * v.width).unflatten(v.dim, (v.n, v.width))
        return part.sum([i for i in range(part.dim()) if i != v.dim])


def _parts(plan, names: Dict[int, str], modules: Dict[str, nn.Module], device) -> List[List[_Part]]:
    """Per plan source, its parameters as this rank holds them (see `_Part`)."""
    out = []
    for (plain_module, attrs, view), offset in zip(plan.sources, plan.offsets):
        real = modules[names[id(plain_module)]]
        parts = []
        for attr in attrs:
            p = getattr(real, attr)
            shard, start = local_rows(p)
            n_local = shard.shape[0]
            if view is None:
                dest = offset + start + torch.arange(n_local)
                parts.append(_Part(real, attr, "rows", None, 0, n_local, dest.to(device), offset + start))
            elif not isinstance(view, SliceView):
                raise ValueError(f"{names[id(plain_module)]}.{attr} is scored through a view epi_fast cannot map onto "
                                 "shards (not a SliceView): it cannot be scored under FSDP")
            elif view.dim == 0:
                first, last = view.offset, view.offset + view.n * view.width
                lo, hi = max(first, start) - start, min(last, start + n_local) - start
                rows = torch.arange(max(lo, 0), max(hi, lo)) + start
                dest = offset + (rows - view.offset) // view.width
                parts.append(_Part(real, attr, "view0", view, lo, hi, dest.to(device), offset))
            else:
                dest = offset + torch.arange(view.n)
                parts.append(_Part(real, attr, "view", view, 0, 0, dest.to(device), offset))
        out.append(parts)
    return out


class ShardedScorer:
    """Scores of a built-in criterion computed from this rank's shards (module docstring).

    layout: `group_layout` of a plain copy of the model (its modules are only looked up by
    name); module: the sharded model; comm: an `epi_fast.distributed.Collectives` over the
    mesh's process group; epoch: a callable giving the epoch being scored (0: initialisation),
    for the messages of a failed collective."""

    def __init__(self, layout, criterion, reduce: str, module: nn.Module, comm, epoch=lambda: None) -> None:
        check_sharded_criterion(criterion)
        self.layout = layout
        self.criterion = criterion
        self.reduce = reduce
        self.comm = comm
        self._epoch = epoch
        names = {id(m): n for n, m in layout.model.named_modules()}
        modules = dict(module.named_modules())
        self.device = comm.device
        if isinstance(criterion, Magnitude):
            self._init_magnitude(names, modules)
        else:
            self.plan = criterion.plan(layout)
            self.parts = _parts(self.plan, names, modules, self.device)

    # -- magnitude -----------------------------------------------------------------------------
    def _init_magnitude(self, names, modules) -> None:
        crit, layout = self.criterion, self.layout
        joint_groups = [i for i, g in enumerate(layout.groups) if g.joint_norm]
        if joint_groups and crit.kind == "bn":
            first = layout.groups[joint_groups[0]].root
            raise ValueError(f'criterion "bn" needs a BatchNorm in every group, but {first} has none; use "magnitude"')
        plain = [i for i, g in enumerate(layout.groups) if not g.joint_norm]
        # The plans Magnitude.group_scores uses (and caches on the layout), in the same roles.
        self.rest = (crit.plan(layout) if not joint_groups else crit.plan(layout, plain) if plain else None)
        self.joint = crit.joint_plan(layout) if joint_groups else None
        self.norm = "l1" if crit.kind == "l1" else "l2"
        self.rest_parts = _parts(self.rest, names, modules, self.device) if self.rest is not None else []
        self.joint_parts = _parts(self.joint, names, modules, self.device) if self.joint is not None else []
        # What each source of the plain plan is scored by (Magnitude._channel_scores).
        kinds = []
        if self.rest is not None:
            for i in range(len(self.rest.sources)):
                if crit.kind in ("l1", "l2"):
                    kinds.append(crit.kind)
                elif crit.kind == "bn":
                    kinds.append("abs")
                else:
                    kinds.append("abs" if i < self.rest.num_bn else "l2")
        self.rest_kinds = kinds
        # Buffer rows whose additive part is a squared L2 norm: their square root is taken
        # after the all-reduce.
        if self.rest is not None:
            sqrt = torch.zeros(self.rest.num_channels, dtype=torch.bool)
            for (plain_module, attrs, view), offset, kind in zip(self.rest.sources, self.rest.offsets, kinds):
                if kind == "l2":  # every row of the source, wherever it is held (not only this rank's)
                    rows = getattr(plain_module, attrs[0]).shape[0] if view is None else view.n
                    sqrt[offset:offset + rows] = True
            self.rest_sqrt = sqrt.to(self.device)

    def weight_scores(self) -> torch.Tensor:
        """float32 [N], layout order: the criterion's scores of the weights as they are now, equal
        on every rank. One all-reduce of the plans' channel buffers."""
        if not isinstance(self.criterion, Magnitude):
            raise ValueError(f"criterion {self.criterion.name!r} needs gradients: it has no weight scores")
        rest_n = self.rest.num_channels if self.rest is not None else 0
        joint_n = self.joint.num_channels if self.joint is not None else 0
        buf = torch.zeros(rest_n + joint_n, dtype=torch.float32, device=self.device)
        if self.rest is not None:
            by_kind: Dict[str, List[_Part]] = {}
            for parts, kind in zip(self.rest_parts, self.rest_kinds):
                by_kind.setdefault(kind, []).extend(parts)
            for kind, parts in by_kind.items():
                self._add_partials(buf, parts, kind, 0)
        if self.joint is not None:
            self._add_partials(buf, [p for parts in self.joint_parts for p in parts], self.norm, rest_n)
        total = self.comm.all_reduce(buf, self._what("epoch-end all-reduce of the channel scores"))
        layout = self.layout
        if self.rest is not None:
            rest = total[:rest_n]
            rest = torch.where(self.rest_sqrt, rest.sqrt(), rest)
            rest_scores = self.rest.reduce(rest, self.reduce)
            if self.joint is None:
                return rest_scores
        joint = total[rest_n:]
        joint_scores = self.joint.reduce(joint, "sum")
        if self.norm == "l2":
            joint_scores = joint_scores.sqrt()
        if self.rest is None:
            return joint_scores
        out = torch.empty(layout.num_neurons, dtype=torch.float32, device=joint_scores.device)
        out[self.joint.neuron_index.to(out.device)] = joint_scores
        out[self.rest.neuron_index.to(out.device)] = rest_scores
        return out

    def _add_partials(self, buf: torch.Tensor, parts: List[_Part], kind: str, base: int) -> None:
        """Adds every part's additive score per buffer row: squared L2, L1 or |x|."""
        tensors, dests = [], []
        for part in parts:
            t = part.local(getattr(part.module, part.attr).detach())
            if t is not None:
                tensors.append(t)
                dests.append(part.dest)
        if not tensors:
            return
        values = ops.channel_scores(tensors, kind)
        if kind == "l2":
            values = values * values
        buf.index_add_(0, torch.cat(dests) + base, values.to(buf.device))

    # -- taylor --------------------------------------------------------------------------------
    def accumulator(self) -> "ShardedTaylorAccumulator":
        if not isinstance(self.criterion, Taylor):
            raise ValueError(f"criterion {self.criterion.name!r} reads weights only; it has no accumulator")
        return ShardedTaylorAccumulator(self)

    def _what(self, what: str) -> str:
        epoch = self._epoch()
        if epoch is None:
            return what
        return f"{what} of epoch {epoch}" if epoch else f"{what} at initialisation (t = 0)"


class ShardedTaylorAccumulator(TaylorSums):
    """`TaylorAccumulator` on shards (module docstring): the same scores, steps and skipped
    steps on every rank. `acc` holds, for conv/linear channel rows, this rank's own rows only
    (added over the ranks by `scores()`), for the rows of split neurons the global values; so
    `state_dict()` holds this rank's sums (the same on every rank at an epoch's end, after
    `reset`)."""

    def __init__(self, scorer: ShardedScorer) -> None:
        self.scorer = scorer
        self.plan = scorer.plan
        self.mode = scorer.criterion.mode
        device = scorer.device
        self.rows: List[_Part] = []
        self.split: List[_Part] = []
        for parts in scorer.parts:
            for part in parts:
                (self.rows if part.kind == "rows" else self.split).append(part)
        split_rows = torch.unique(torch.cat([p.dest.cpu() for p in self.split])) if self.split else \
            torch.empty(0, dtype=torch.int64)
        self.split_rows = split_rows.to(device)
        self.acc = torch.zeros(self.plan.num_channels, dtype=torch.float32, device=device)
        self._skipped = torch.zeros(1, dtype=torch.int64, device=device)
        self.steps = 0

    def step(self, scaler=None, optimizer=None) -> None:
        """This step's Taylor terms, as `TaylorAccumulator.step` (once per optimizer step, after
        backward, on every rank): one fused `taylor_scores` over the local conv/linear rows, the
        split neurons' partial sums added over the ranks before their square."""
        n = self.plan.num_channels
        device = self.acc.device
        params, grads, offsets = [], [], []
        seen = 0
        for part in self.rows:
            p = getattr(part.module, part.attr)
            if p is None or p.grad is None:
                continue
            seen += 1
            w, g = part.local(p.detach()), part.local(p.grad)
            if w is not None:
                params.append(w)
                grads.append(g)
                offsets.append(part.first)
        partial = torch.zeros(n, dtype=torch.float32, device=device)
        for part in self.split:
            p = getattr(part.module, part.attr)
            if p is None or p.grad is None:
                continue
            seen += 1
            sums = part.products(p.detach(), p.grad)
            if sums is not None:
                partial.index_add_(0, part.dest, sums)
        if not seen:
            raise RuntimeError("no scored parameter has a gradient: call step() after loss.backward()")
        local = ops.taylor_scores(params, grads, offsets, n, self.mode) if params else \
            torch.zeros(n, dtype=torch.float32, device=device)
        inv_scale = _scaler_factor(scaler, optimizer, device)
        if inv_scale is not None:
            partial = partial * inv_scale
            local = local * (inv_scale * inv_scale if self.mode == "square" else inv_scale.abs())
        flag = (~torch.isfinite(local)).any().to(torch.float32).reshape(1)
        packed = torch.cat([partial[self.split_rows], flag])
        what = self.scorer._what(f"all-reduce of the Taylor terms of step {self.steps + 1}")
        packed = self.scorer.comm.all_reduce(packed, what)
        sums = packed[:-1]
        bad = (packed[-1] > 0) | (~torch.isfinite(sums)).any()
        terms = sums * sums if self.mode == "square" else sums.abs()
        step = local.index_copy(0, self.split_rows, terms) if self.split_rows.numel() else local
        self.acc.add_(torch.where(bad, torch.zeros_like(step), step))
        self._skipped.add_(bad.to(torch.int64).reshape(1))
        self.steps += 1

    def scores(self, reduce: str = "sum") -> torch.Tensor:
        """float32 [N]: mean per-step Taylor score of each group neuron, equal on every rank (one
        all-reduce of the channel buffer)."""
        check_reduce(reduce)
        own = self.acc.clone()
        if self.split_rows.numel():
            own[self.split_rows] = 0  # already global: counted once, below
        total = self.scorer.comm.all_reduce(own, self.scorer._what("epoch-end all-reduce of the Taylor scores"))
        if self.split_rows.numel():
            total[self.split_rows] = self.acc[self.split_rows]
        return self.plan.reduce(self.mean(total), reduce)
