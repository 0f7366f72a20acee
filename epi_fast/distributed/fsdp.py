"""What EPIPruner needs to know about a model sharded with FSDP2 (`fully_shard`).

- `local_rows(p)`: this rank's rows of a parameter sharded on dim 0 (a DTensor with
  `Shard(0)`), and the global index of the first one. FSDP2 splits dim 0 as `torch.chunk`
  does: ceil(rows / world) rows per rank, the last ranks holding fewer or none (its padding
  is not part of the DTensor's local tensor).
- `fsdp_settings(root)`: the settings each `fully_shard` call was made with (mesh,
  reshard_after_forward, mixed precision, offloading), so that the pruned model can be
  sharded again in the same way (`reshard_like`). FSDP2 has no public getter for them: the one
  function that reads its private state is `_read_state`, and a test checks it against
  settings given on purpose, so that a change in torch fails loudly there.
- `plain_copy(root, param_fn)`: the module tree without FSDP: every module of its own class,
  sharing its attributes, with its own hooks but none of FSDP's, its parameters replaced by
  `param_fn(param)` (e.g. the gathered full tensor). The original model is not changed.
  `to_meta` turns the parameters and buffers of such a copy into meta tensors (no memory, the
  shapes kept).

Only 1-D meshes with every parameter on `Shard(0)` are supported (`sharded_mesh` refuses the
rest by name); HSDP meshes, other shard dims, `fully_shard` over a list of modules and
parameters left out of FSDP are refused before anything changes.
"""

from __future__ import annotations

import math
import os
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.nn as nn

__all__ = ["is_fsdp", "fsdp_modules", "ShardSettings", "fsdp_settings", "sharded_mesh", "local_rows", "shard_rows",
           "reshard_all", "plain_copy", "to_meta", "reshard_like"]


def _fsdp_api():
    """(fully_shard, FSDPModule), or None where this torch has no FSDP2 (before 2.6)."""
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard
    except ImportError:
        return None
    return fully_shard, FSDPModule


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return None
    return DTensor


def is_fsdp(model: nn.Module) -> bool:
    """Whether `fully_shard` was applied to `model` or to any of its submodules."""
    # A model can only be sharded once torch.distributed.fsdp was imported: a single-process
    # run does not pay for importing it.
    if "torch.distributed.fsdp" not in sys.modules:
        return False
    api = _fsdp_api()
    return api is not None and any(isinstance(m, api[1]) for m in model.modules())


def fsdp_modules(root: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, module) of every module of `root` that `fully_shard` was applied to, in
    `named_modules` order (parents before children)."""
    api = _fsdp_api()
    if api is None:
        return []
    return [(name, m) for name, m in root.named_modules() if isinstance(m, api[1])]


def reshard_all(root: nn.Module) -> None:
    """Every FSDP module's parameters back to their shards (a root sharded with
    reshard_after_forward=False keeps its unsharded parameters after a forward)."""
    for _, m in fsdp_modules(root):
        m.reshard()


def sharded_mesh(root: nn.Module):
    """The one 1-D device mesh that every parameter of `root` is sharded over on dim 0.

    ValueError (naming the parameter) for a parameter that is not a DTensor (left out of
    FSDP, or not resharded), one with another placement than Shard(0), an HSDP or other 2-D
    mesh, or parameters on different meshes."""
    DTensor = _dtensor_type()
    from torch.distributed.tensor import Shard

    mesh = None
    for name, p in root.named_parameters():
        if DTensor is None or not isinstance(p, DTensor):
            raise ValueError(
                f"{name} is not sharded (a {type(p).__name__}, not a DTensor): under FSDP, EPIPruner needs every "
                "parameter sharded by fully_shard (apply it to the root module too, and leave no ignored_params)"
            )
        if p.device_mesh.ndim != 1:
            raise ValueError(f"{name} is sharded over a {p.device_mesh.ndim}-D mesh: EPIPruner supports 1-D meshes "
                             "(FSDP), not HSDP")
        if tuple(p.placements) != (Shard(0),):
            raise ValueError(f"{name} has placements {tuple(p.placements)}: EPIPruner needs Shard(0) (fully_shard's "
                             "default; no shard_placement_fn)")
        if mesh is None:
            mesh = p.device_mesh
        elif p.device_mesh != mesh:
            raise ValueError(f"{name} is sharded over another mesh than the model's first parameter")
    if mesh is None:
        raise ValueError("the model has no parameters")
    return mesh


def local_rows(p) -> Tuple[torch.Tensor, int]:
    """(this rank's rows of `p`, the global index of the first of them) for a DTensor sharded
    on dim 0 of a 1-D mesh: rank r holds rows [r * c, min(n, (r + 1) * c)) with c = ceil(n /
    world), as torch.chunk splits them (empty past the end). RuntimeError if the local tensor
    does not have that many rows (a torch whose split differs: nothing would be right then)."""
    mesh = p.device_mesh
    n = p.shape[0]
    start, length = _row_range(n, mesh)
    local = p.to_local()
    if local.shape[0] != length:
        raise RuntimeError(
            f"a parameter of {n} rows sharded over {mesh.size()} ranks holds {local.shape[0]} rows on rank "
            f"{mesh.get_local_rank()}, expected {length} (torch.chunk's split); this torch shards dim 0 differently "
            "than epi_fast assumes"
        )
    return local, start


def _row_range(n: int, mesh) -> Tuple[int, int]:
    """(first row, number of rows) of this rank's shard of n rows: torch.chunk's split."""
    world, rank = mesh.size(), mesh.get_local_rank()
    chunk = math.ceil(n / world) if n else 0
    start = min(rank * chunk, n)
    return start, max(0, min(n, start + chunk) - start)


def shard_rows(full: torch.Tensor, mesh):
    """`full` sharded on dim 0 over the 1-D `mesh` as `fully_shard` shards a parameter (see
    `local_rows`): a DTensor whose local tensor is a copy of this rank's rows alone, so that
    `full` can be freed. No collective."""
    from torch.distributed.tensor import DTensor, Shard

    full = full.contiguous()
    start, length = _row_range(full.shape[0], mesh)
    local = full.narrow(0, start, length).clone()
    return DTensor.from_local(local, mesh, (Shard(0),), run_check=False, shape=full.shape, stride=full.stride())


@dataclass(frozen=True)
class ShardSettings:
    """The arguments one `fully_shard(module, ...)` call was made with. `name`: the module's
    qualified name in the root ("" for the root). `reshard_after_forward`: None where it was
    left to FSDP (True except for the root), else the bool or int given."""

    name: str
    mesh: Any
    reshard_after_forward: Any
    mp_policy: Any
    offload_policy: Any
    forward_methods: Tuple[str, ...] = ()

    def kwargs(self) -> Dict[str, Any]:
        return {"mesh": self.mesh, "reshard_after_forward": self.reshard_after_forward, "mp_policy": self.mp_policy,
                "offload_policy": self.offload_policy}


def _read_state(module: nn.Module, mesh) -> Tuple[Any, Any, Any]:
    """(reshard_after_forward, mp_policy, offload_policy) of an FSDP module, read from FSDP2's
    private state (`fully_shard.state(module)`: `_modules`, `_fsdp_param_groups`,
    `_auto_reshard_after_forward`, `_mp_policy`; a group's `post_forward_mesh_info`,
    `offload_policy`). torch has no public getter; tests/policy/test_fsdp.py checks this
    function against fully_shard calls with non-default settings, so that a torch that renames
    any of these fails there, loudly."""
    from torch.distributed.fsdp import OffloadPolicy

    fully_shard = _fsdp_api()[0]
    state = fully_shard.state(module)
    modules = getattr(state, "_modules", None)
    groups = getattr(state, "_fsdp_param_groups", None)
    if modules is None or groups is None or not hasattr(state, "_mp_policy"):
        raise RuntimeError("this torch's FSDP2 keeps its state differently than epi_fast reads it (fully_shard.state: "
                           "_modules, _fsdp_param_groups, _mp_policy); pass reshard_fn= to shard the pruned model")
    if len(modules) != 1:
        raise ValueError("fully_shard was applied to a list of modules together: pass reshard_fn= to shard the pruned "
                         "model again")
    if len(groups) > 1:
        raise ValueError("fully_shard put the module's parameters into several groups (shard_placement_fn with "
                         "per-parameter meshes): pass reshard_fn= to shard the pruned model again")
    mp_policy = state._mp_policy
    if not groups:
        # A module whose parameters all belong to FSDP modules below it.
        return (None if state._auto_reshard_after_forward else True), mp_policy, OffloadPolicy()
    group = groups[0]
    if getattr(group.mesh_info, "mesh", mesh) != mesh:
        raise ValueError("a module is sharded over another mesh than the model's parameters")
    if state._auto_reshard_after_forward:
        reshard = None  # FSDP's default: True, except for the root (set at its first forward)
    elif group.post_forward_mesh_info is None:
        reshard = False
    elif group.post_forward_mesh_info is group.mesh_info:
        reshard = True
    else:
        reshard = int(group.post_forward_mesh_info.shard_mesh_size)
    return reshard, mp_policy, group.offload_policy


def fsdp_settings(root: nn.Module) -> List[ShardSettings]:
    """The settings of every `fully_shard` call on `root` and its submodules (parents first).
    ValueError for what `reshard_like` cannot repeat (see `_read_state`)."""
    mesh = sharded_mesh(root)
    out = []
    for name, m in fsdp_modules(root):
        reshard, mp, offload = _read_state(m, mesh)
        out.append(ShardSettings(name, mesh, reshard, mp, offload, tuple(_forward_methods(m))))
    return out


def reshard_like(root: nn.Module, settings: List[ShardSettings]) -> nn.Module:
    """Apply `fully_shard` to the modules of `root` (a plain module tree, e.g. a pruned
    `plain_copy`) named in `settings`, with their settings, children before parents as FSDP
    needs; methods registered with `register_fsdp_forward_method` are registered again."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    fully_shard = _fsdp_api()[0]
    modules = dict(root.named_modules())
    missing = [s.name for s in settings if s.name not in modules]
    if missing:
        raise ValueError(f"the pruned model has no module {missing[0]!r} to shard")
    for s in reversed(settings):
        fully_shard(modules[s.name], **s.kwargs())
    for s in settings:
        for method in s.forward_methods:
            register_fsdp_forward_method(modules[s.name], method)
    return root


# -- a plain copy of the module tree --------------------------------------------------------------

# The containers every nn.Module keeps in its __dict__ (hooks, parameters, buffers, children):
# a copy gets its own, so that changing one module never changes the other.
_MODULE_CONTAINERS = tuple(k for k, v in nn.Module().__dict__.items() if isinstance(v, (dict, set)))


_FSDP_DIR = os.path.join("torch", "distributed", "fsdp") + os.sep


def _is_fsdp_object(fn: Any) -> bool:
    """Whether a hook or method (or what it wraps) was defined by FSDP: FSDP's own hooks are not
    copied. Judged by the defining module and, since FSDP's wrappers copy the wrapped
    function's __module__ (functools.wraps), by the file of the function's code."""
    seen = [fn]
    for _ in range(4):
        owner = getattr(fn, "__self__", None)
        if owner is not None and type(owner).__module__.startswith("torch.distributed.fsdp"):
            return True
        inner = getattr(fn, "hook", None) or getattr(fn, "func", None) or getattr(fn, "__func__", None)
        if inner is None or inner is fn:
            break
        fn = inner
        seen.append(fn)
    for f in seen:
        module = getattr(f, "__module__", None)
        code = getattr(f, "__code__", None)
        if (isinstance(module, str) and module.startswith("torch.distributed.fsdp")) or \
                (code is not None and _FSDP_DIR in code.co_filename):
            return True
    return False


def _is_fsdp_key(key: str) -> bool:
    # fully_shard's composable-API registry and state (keys named by torch's contract()), and
    # the flags it sets for Dynamo.
    return key.startswith("__composable_api_state_key") or key in ("_is_fsdp_managed_module", "_fsdp_use_orig_params")


def _forward_methods(m: nn.Module) -> List[str]:
    """Methods that `register_fsdp_forward_method` wrapped on this instance (bound methods of
    the module itself, stored in its __dict__, that FSDP defined)."""
    return [k for k, v in m.__dict__.items()
            if callable(v) and getattr(v, "__self__", None) is m and _is_fsdp_object(v)]


def _original_class(m: nn.Module) -> type:
    api = _fsdp_api()
    cls = type(m)
    if api is None or not isinstance(m, api[1]):
        return cls
    # fully_shard swaps in a class FSDP<Class>(FSDPModule, Class): the first class of the MRO
    # that is not an FSDPModule is the module's own.
    return next(c for c in cls.__mro__ if not issubclass(c, api[1]))


def plain_copy(root: nn.Module, param_fn: Callable[[nn.Parameter], torch.Tensor]) -> nn.Module:
    """A copy of `root`'s module tree without FSDP (see the module docstring): parameter p
    becomes ``nn.Parameter(param_fn(p), requires_grad=p.requires_grad)`` (a tied parameter
    once, shared by its owners); buffers and every other attribute are shared with the
    original (FSDP does not shard buffers). param_fn is called in named_parameters order, so
    that collectives inside it (gathering a DTensor) match on every rank."""
    params: Dict[int, nn.Parameter] = {}
    for _, p in root.named_parameters():
        params[id(p)] = nn.Parameter(param_fn(p), requires_grad=p.requires_grad)
    copies: Dict[int, nn.Module] = {}

    def copy(m: nn.Module) -> nn.Module:
        if id(m) in copies:
            return copies[id(m)]
        cls = _original_class(m)
        new = cls.__new__(cls)
        copies[id(m)] = new
        methods = set(_forward_methods(m))
        # Hook handles have process-wide unique ids: FSDP's are dropped from every hook dict
        # (a hook's flags, e.g. _forward_pre_hooks_with_kwargs, are keyed by the same id).
        dropped = {k for key in _MODULE_CONTAINERS if isinstance(m.__dict__.get(key), dict)
                   for k, v in m.__dict__[key].items() if _is_fsdp_object(v)}
        state = {}
        for key, value in m.__dict__.items():
            if _is_fsdp_key(key) or key in methods:
                continue
            if key == "_parameters":
                value = type(value)((k, None if p is None else params[id(p)]) for k, p in value.items())
            elif key == "_modules":
                value = type(value)((k, None if c is None else copy(c)) for k, c in value.items())
            elif key in _MODULE_CONTAINERS and isinstance(value, dict):
                value = type(value)((k, v) for k, v in value.items() if k not in dropped)
            elif key in _MODULE_CONTAINERS and isinstance(value, set):
                value = set(value)
            elif isinstance(value, types.MethodType) and value.__self__ is m:
                value = types.MethodType(value.__func__, new)  # a method bound to this instance: to the copy
            state[key] = value
        new.__dict__.update(state)
        return new

    return copy(root)


def to_meta(module: nn.Module) -> None:
    """Every parameter and buffer of `module` (a `plain_copy`) becomes a meta tensor of the
    same shape and dtype: the copy keeps its structure (shapes, what a layout reads) and holds
    no memory. Tied parameters stay tied."""
    done: Dict[int, torch.Tensor] = {}
    for m in module.modules():
        for key, p in m._parameters.items():
            if p is not None:
                if id(p) not in done:
                    done[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
                m._parameters[key] = done[id(p)]
        for key, b in m._buffers.items():
            if b is not None:
                if id(b) not in done:
                    done[id(b)] = torch.empty_like(b, device="meta")
                m._buffers[key] = done[id(b)]
