"""torch.distributed support of the policy: every rank makes the same decision.

- DDP (`ddp.py`): the structures of each epoch come from rank 0 and are broadcast (one small
  int64 [ratios x layers] collective per epoch), and rank 0's scores are broadcast at the prune,
  so that every rank records the same EPI values and removes the very same channels;
  `rewrap_ddp` wraps the pruned module in a new DistributedDataParallel.
- FSDP2 (`fsdp.py`): what EPIPruner needs to know about a model sharded with
  `torch.distributed.fsdp.fully_shard`: which rows of a parameter this rank holds, the
  settings `fully_shard` was called with (to shard the pruned model the same way), a plain
  copy of the module tree without FSDP (for the trace and the prune), and a tensor sharded
  like a parameter (`shard_rows`, for the optimizer state carried through the prune).
- `collectives.py`: the policy's collectives, each of which names what it was for when it fails
  (a rank that raised makes the others fail with that message, not hang).

This package sits low in the layers (it needs nothing of epi_fast); the sharded scoring is in
`epi_fast.criteria.sharded`, the sharded prune in `epi_fast.policy.fsdp`.
"""

from .collectives import CollectiveError, Collectives, RankZero
from .ddp import is_ddp, rank_zero_for, rewrap_ddp
from .fsdp import (ShardSettings, fsdp_modules, fsdp_settings, is_fsdp, local_rows, plain_copy,
                   reshard_all, reshard_like, shard_rows, sharded_mesh, to_meta)

__all__ = ["RankZero", "Collectives", "CollectiveError", "rank_zero_for", "is_ddp", "rewrap_ddp", "is_fsdp",
           "fsdp_modules", "fsdp_settings", "ShardSettings", "sharded_mesh", "local_rows", "shard_rows", "plain_copy",
           "to_meta", "reshard_all", "reshard_like"]
