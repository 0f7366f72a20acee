"""DDP: rank 0 decides, every rank follows; the pruned module is wrapped in DDP again.

EPIPruner computes each epoch's structures from rank 0's scores and broadcasts them (one small
int64 [ratios x layers] collective per epoch), and broadcasts rank 0's scores at the prune, so
that every rank records the same EPI values and removes the very same channels.
"""

from __future__ import annotations

from typing import Any, Optional

import torch.nn as nn

from .collectives import Collectives

__all__ = ["rank_zero_for", "is_ddp", "rewrap_ddp"]


def is_ddp(model: nn.Module) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


def rank_zero_for(model: nn.Module, module: nn.Module, process_group: Any = None) -> Optional[Collectives]:
    """A `Collectives` when the job is distributed over more than one process (`model` is a DDP
    wrapper, or `process_group` is given), else None. `module` holds the parameters."""
    if not is_ddp(model) and process_group is None:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = process_group if process_group is not None else getattr(model, "process_group", None)
    if dist.get_world_size(group) <= 1:
        return None
    return Collectives(group, next(module.parameters()).device)


# DistributedDataParallel's settings that a wrapper keeps as attributes, by constructor name.
_DDP_SETTINGS = ("device_ids", "output_device", "broadcast_buffers", "find_unused_parameters",
                 "gradient_as_bucket_view", "static_graph", "process_group")


def rewrap_ddp(module: nn.Module, like: Optional[nn.Module] = None, **ddp_kwargs: Any) -> nn.Module:
    """A new DistributedDataParallel around `module` after a prune (the old wrapper's buckets
    and hooks refer to the dense parameters).

    module: the pruned module, or the old DDP wrapper itself (its `.module` is wrapped).
    like: an old DDP wrapper whose settings (device_ids, output_device, broadcast_buffers,
    find_unused_parameters, gradient_as_bucket_view, static_graph, process_group, bucket
    size) are reused; ddp_kwargs override them. Every rank must call it (DDP's constructor
    checks that all ranks hold the same parameter shapes, which epi_fast's identical prune
    ensures)."""
    if is_ddp(module):
        like = module if like is None else like
        module = module.module
    kwargs: dict = {}
    if like is not None:
        if not is_ddp(like):
            raise TypeError(f"like must be a DistributedDataParallel, got {type(like).__name__}")
        for name in _DDP_SETTINGS:
            if hasattr(like, name):
                kwargs[name] = getattr(like, name)
        if kwargs.get("broadcast_buffers") is True:
            # The default; torch 2.14 warns that the argument is deprecated whenever it is given.
            kwargs.pop("broadcast_buffers")
        if kwargs.get("device_ids") is None:
            kwargs.pop("device_ids", None)
            kwargs.pop("output_device", None)
        cap = getattr(like, "bucket_bytes_cap", None)
        if cap:
            kwargs["bucket_cap_mb"] = cap / (1024 * 1024)
    kwargs.update(ddp_kwargs)
    return nn.parallel.DistributedDataParallel(module, **kwargs)
