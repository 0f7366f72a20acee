"""EPIPruner on a model sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`).

Watching: the model is traced once, at construction, on a plain copy whose parameters are
placeholders (`placeholder`: the full shape, one element expanded, no memory; the trace reads
shapes, never values, so nothing is gathered); the copy then keeps its structure with meta
tensors and the layout, the score plans and the selection rule are built on it. Every epoch
each rank scores its own shards (`epi_fast.criteria.sharded`): one all-reduce of the
O(channels) score buffer, never a weight, then rank 0's structures are broadcast as under DDP,
so that every rank records the same EPI.

Pruning, when EPI fires (or at the deadline), on every rank:

1. a plain copy of placeholders is traced afresh and cut with the single-process surgery, the
   scores being rank 0's (so every rank removes the very same neurons); the surgery traces
   each parameter it cuts as an index tensor of its size, from the first group that cuts it
   to the last, so only the groups in progress hold index tensors;
2. each parameter that the cut replaces is gathered then, one at a time
   (DTensor.full_tensor()), and only its surviving entries kept; its optimizer state sharded
   like it (momentum, Adam's moments) and its gradient are gathered one tensor at a time, cut
   the same way, and this rank's rows of them kept; every full tensor goes at once;
3. the parameters the prune did not cut are gathered, so that the copy is the pruned model,
   whole: the one gathered copy (of the pruned model, not of the dense one);
4. it is sharded again: `reshard_fn(module)` when given, else `fully_shard` per module with the
   mesh and settings the original was sharded with (children before parents);
5. the optimizer, in place: its param groups point to the new sharded parameters, with the
   state carried in step 2 (that of a parameter the prune did not cut is kept as it is);
   scalar state (step) is kept; gradients likewise.

The model that was passed in is not changed: the pruned, sharded model is `pruner.module`
(every check, the trace and the surgery happen on the copy; an error before step 5 leaves the
model and the optimizer as they were). The peak memory per rank is measured by
benchmarks/fsdp.py (docs/EPI_USAGE.md, "FSDP2").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..criteria.sharded import ShardedScorer, check_sharded_criterion
from ..distributed import (Collectives, fsdp_settings, plain_copy, reshard_all, reshard_like, shard_rows,
                           sharded_mesh, to_meta)
from ..layout import group_layout
from ..surgery import count_ops
from ..surgery.optimizer import check_optimizer_holds_model, gather
from ..surgery.removal import prune_to
from .config import PrunerConfig
from .tracker import StructureTracker

__all__ = ["ShardedModel"]


class ShardedModel:
    """The FSDP side of an `EPIPruner`: the sharded model, its mesh's collectives and how to
    shard it again.

    module: the root module `fully_shard` was applied to (and to its blocks); reshard_fn: None,
    or a function that shards the pruned plain module again (it may return the module to
    train, else the one it was given is); process_group: None, or a group of the same ranks as
    the mesh."""

    def __init__(self, module: nn.Module, reshard_fn: Optional[Callable[[nn.Module], Any]] = None,
                 process_group: Any = None) -> None:
        import torch.distributed as dist

        if reshard_fn is not None and not callable(reshard_fn):
            raise TypeError(f"reshard_fn must be callable, got {type(reshard_fn).__name__}")
        reshard_all(module)
        self.mesh = sharded_mesh(module)
        group = self.mesh.get_group()
        if process_group is not None and dist.get_process_group_ranks(process_group) != \
                dist.get_process_group_ranks(group):
            raise ValueError("process_group: a model sharded with fully_shard agrees over its mesh's ranks; "
                             "process_group holds other ranks (leave it None)")
        device = next(module.parameters()).to_local().device
        self.comm = Collectives(group, device)
        self.reshard_fn = reshard_fn
        # Read now, before anything is pruned: a setting FSDP keeps that epi_fast cannot
        # repeat is refused at construction, not at the prune.
        self.settings = None if reshard_fn is not None else fsdp_settings(module)
        self.module = module
        self.gathered_bytes = sum(p.numel() * p.element_size() for p in module.parameters())

    def with_names(self, config: PrunerConfig) -> PrunerConfig:
        """`config` with ignored layers given as modules of the sharded model named instead
        (the trace and the prune run on copies, which have the same names)."""
        names = {id(m): n for n, m in self.module.named_modules()}
        ignored = []
        for item in config.ignored_layers:
            if isinstance(item, nn.Module):
                if id(item) not in names:
                    raise ValueError(f"ignored_layers: a {type(item).__name__} that is not a module of the model")
                ignored.append(names[id(item)])
            else:
                ignored.append(item)
        return dataclasses.replace(config, ignored_layers=tuple(ignored))

    def placeholders(self) -> nn.Module:
        """A plain copy of the model whose parameters are placeholders (`placeholder`): the
        structure to trace and cut, no memory; no collective."""
        reshard_all(self.module)
        return plain_copy(self.module, placeholder)

    def tracker(self, example_inputs: Any, config: PrunerConfig) -> Tuple[StructureTracker, Dict[str, int]]:
        """The structure tracker over shards, and the dense model's sizes (params, FLOPs, MACs)."""
        check_sharded_criterion(config.criterion)
        plain = self.placeholders()

        def scorer(layout, epoch):
            return ShardedScorer(layout, config.criterion, config.reduce, self.module, self.comm, epoch)

        tracker = StructureTracker(plain, example_inputs, config, self.comm, scorer=scorer)
        sizes = count_ops(plain, example_inputs)
        to_meta(plain)  # the layout needs the copy's structure, not its values
        return tracker, sizes

    def prune(self, scores: torch.Tensor, config: PrunerConfig, optimizer, example_inputs: Any,
              tracked) -> Tuple[Dict[str, Any], torch.Tensor]:
        """Trace, cut (gathering each parameter as it is cut), shard again, carry the optimizer
        over (module docstring). Returns the prune's report and keep mask; `self.module` is the
        pruned sharded model afterwards."""
        plain = self.placeholders()
        layout = group_layout(plain, example_inputs, ignored_layers=config.ignored_layers, residual=config.residual)
        if layout.group_sizes != tracked.group_sizes or layout.layers != tracked.layers:
            raise RuntimeError("the gathered model's layout differs from the one traced at construction; not pruned")
        if optimizer is not None:
            check_optimizer_holds_model(optimizer, self.module)
        cutter = _Cutter(self.module, optimizer, self.comm)
        keep: list = []
        report = prune_to(plain, config.ratio, example_inputs, config.criterion, scores, None, config.min_keep,
                          config.ignored_layers, layout, config.reduce, config.target, config.max_layer_ratio,
                          config.round_to, strict=False, ranking=config.ranking, keep_out=keep,
                          residual=config.residual, values=cutter.cut)
        del layout  # spent, and its dependency graph holds the copy's dense structure
        cutter.gather_the_rest(plain)
        new = self._reshard(plain)
        del plain
        if optimizer is not None:
            cutter.swap_into(optimizer, new)
        self.module = new
        report["fsdp"] = {"world_size": self.comm.world_size, "gathered_bytes": int(self.gathered_bytes)}
        self.gathered_bytes = sum(p.numel() * p.element_size() for p in new.parameters())
        return report, keep[0]

    def _reshard(self, plain: nn.Module) -> nn.Module:
        if self.reshard_fn is None:
            root = reshard_like(plain, self.settings)
        else:
            out = self.reshard_fn(plain)
            root = plain if out is None else out
            if not isinstance(root, nn.Module):
                raise TypeError(f"reshard_fn returned a {type(out).__name__}, not the module (or None)")
        try:
            mesh = sharded_mesh(root)
        except ValueError as exc:
            raise ValueError(f"after reshard_fn: {exc}") from None
        if mesh != self.mesh:
            raise ValueError("reshard_fn sharded the pruned model over another mesh than the original's")
        missing = set(dict(self.module.named_parameters())) - set(dict(root.named_parameters()))
        if missing:
            raise ValueError(f"the resharded model has no parameter {sorted(missing)[0]!r}")
        return root


def placeholder(p: torch.Tensor) -> torch.Tensor:
    """A stand-in for parameter `p` of the sharded model: its full shape and dtype on its
    device, one element expanded (no memory). The trace and the surgery read shapes, never
    values; each placeholder has its own element, so that no two parameters look tied."""
    return torch.zeros(1, dtype=p.dtype, device=p.to_local().device).expand(p.shape)


class _Cutter:
    """The values of the pruned model, gathered one parameter at a time.

    `cut(name, idx, shape)` (prune_to's values=): gathers the sharded parameter `name` (one
    full tensor), keeps its entries `idx`, and cuts the optimizer state and the gradient that
    are sharded like it in the same way, keeping this rank's rows of them (sharded, as they
    will be); the full tensors go at once. `gather_the_rest` gives the parameters that the
    prune did not cut their full values; `swap_into` puts the carried state into the
    optimizer once the model is sharded again. Nothing of the optimizer changes before then."""

    def __init__(self, module: nn.Module, optimizer, comm: Collectives) -> None:
        self.params = dict(module.named_parameters())
        self.names = {id(p): n for n, p in self.params.items()}
        self.optimizer = optimizer
        self.held = set() if optimizer is None else {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.comm = comm
        self.carried: Dict[str, Tuple[Dict[str, Any], Optional[torch.Tensor]]] = {}

    def _gather(self, value: torch.Tensor, what: str) -> torch.Tensor:
        return self.comm.run(what, lambda: value.detach().full_tensor())

    def cut(self, name: str, idx: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
        from torch.distributed.tensor import DTensor

        p = self.params[name]
        saved = {} if self.optimizer is None else self.optimizer.state.get(p, {})
        if self.optimizer is not None:
            _check_state(name, p, saved, id(p) in self.held)
        full = self._gather(p, f"gather of {name} for the prune")
        value = gather(full, idx, shape)
        del full
        state = {}
        for key in sorted(saved):
            v = saved[key]
            if isinstance(v, DTensor) and v.shape == p.shape:
                v = shard_rows(gather(self._gather(v, f"gather of the optimizer state {key!r} of {name}"), idx, shape),
                               p.device_mesh)
            state[key] = v
        grad = p.grad if self.optimizer is not None else None  # carried with the optimizer, as its state
        if grad is not None:
            grad = shard_rows(gather(self._gather(grad, f"gather of the gradient of {name}"), idx, shape), p.device_mesh)
        self.carried[name] = (state, grad)
        return value

    def gather_the_rest(self, plain: nn.Module) -> None:
        """Every parameter of `plain` that the prune did not replace still holds its
        placeholder: it gets the sharded parameter's full values (the same order on every
        rank)."""
        for name, q in plain.named_parameters():
            if name not in self.carried:
                q.data = self._gather(self.params[name], f"gather of {name} for the prune")

    def swap_into(self, optimizer, new: nn.Module) -> None:
        """The optimizer, in place: param groups and state to the new sharded parameters; the
        state of a parameter that was not cut is kept as it is (sharded like the new one)."""
        from torch.distributed.tensor import DTensor

        new_params = dict(new.named_parameters())
        groups: List[List[torch.Tensor]] = []
        state: Dict[torch.Tensor, Dict[str, Any]] = {}
        grads: List[Tuple[torch.Tensor, Optional[torch.Tensor]]] = []
        done: set = set()
        for group in optimizer.param_groups:
            params = []
            for p in group["params"]:
                name = self.names.get(id(p))
                if name is None:  # not the model's: left as it is
                    params.append(p)
                    if p in optimizer.state:
                        state[p] = optimizer.state[p]
                    continue
                q = new_params[name]
                params.append(q)
                if name in done:
                    continue
                done.add(name)
                carried, grad = self.carried.get(name, (optimizer.state.get(p), p.grad))
                for what, v in [("gradient", grad), *((f"optimizer state {k!r}", t) for k, t in (carried or {}).items())]:
                    if isinstance(v, DTensor) and v.numel() > 1 and (
                            v.shape != q.shape or v.to_local().shape != q.to_local().shape):
                        raise RuntimeError(f"the carried {what} of {name} has {tuple(v.to_local().shape)} local entries, "
                                           f"the parameter {tuple(q.to_local().shape)}")
                if carried is not None:
                    state[q] = carried
                grads.append((q, grad))
            groups.append(params)
        for group, params in zip(optimizer.param_groups, groups):
            group["params"] = params
        optimizer.state.clear()
        optimizer.state.update(state)
        for q, grad in grads:
            q.grad = grad
        self.carried = {}


def _check_state(name: str, p: torch.Tensor, saved: Dict[str, Any], held: bool) -> None:
    """What `epi_fast.surgery.optimizer.check_optimizer_for` checks, for a sharded parameter
    that the prune cuts: the optimizer holds it (if trainable), and its state tensors are
    sharded like it or are scalars. Every rank checks the same parameter at the same point,
    before its gathers, so that all raise together."""
    from torch.distributed.tensor import DTensor

    if p.requires_grad and not held:
        raise ValueError(f"the optimizer does not hold {name}, which pruning changes")
    for key, value in saved.items():
        if isinstance(value, torch.Tensor) and value.numel() > 1 and not (
                isinstance(value, DTensor) and value.shape == p.shape and value.placements == p.placements):
            raise ValueError(
                f"cannot remap optimizer state {key!r} of {name}: a {type(value).__name__} of shape "
                f"{tuple(value.shape)} is neither sharded like the parameter {tuple(p.shape)} nor a scalar"
            )
