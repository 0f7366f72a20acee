"""The policy's collectives over one process group, each named for what it is for.

A collective that another rank never joins (it raised, or stopped calling the pruner) waits
until the process group's timeout (`torch.distributed.init_process_group(timeout=...)`, the
user's; gloo and NCCL default to minutes) or until the backend notices that the peer's process
is gone, then the backend raises. That error is re-raised as a `CollectiveError` (a
RuntimeError) whose one-line message names the collective, the epoch and this rank, and says
that another rank probably failed: the error a user sees on the surviving ranks says where to
look instead of a backend message about sockets.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["Collectives", "CollectiveError", "RankZero"]


class CollectiveError(RuntimeError):
    """A collective of EPIPruner failed, most likely because another rank did."""


class Collectives:
    """Broadcasts from rank 0 and sum all-reduces over `group` (None: the default group), with
    the tensors on `device` (NCCL moves only CUDA tensors; gloo on the CPU stays there)."""

    def __init__(self, group: Any, device: torch.device) -> None:
        self.group = group
        self.device = torch.device(device)

    @property
    def rank(self) -> int:
        import torch.distributed as dist

        return dist.get_rank(self.group)

    @property
    def world_size(self) -> int:
        import torch.distributed as dist

        return dist.get_world_size(self.group)

    def broadcast(self, t: torch.Tensor, what: str = "broadcast") -> torch.Tensor:
        """Rank 0's copy of `t` on every rank, returned on `t`'s device."""
        import torch.distributed as dist

        src = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        buf = t.to(self.device).contiguous()
        self.run(what, lambda: dist.broadcast(buf, src=src, group=self.group))
        return buf.to(t.device)

    def all_reduce(self, t: torch.Tensor, what: str = "all-reduce") -> torch.Tensor:
        """The sum of `t` over the ranks (a new tensor on `t`'s device; `t` is not changed)."""
        import torch.distributed as dist

        buf = t.to(self.device, copy=True).contiguous()
        self.run(what, lambda: dist.all_reduce(buf, group=self.group))
        return buf.to(t.device)

    def run(self, what: str, fn: Callable[[], Any]) -> Any:
        """fn() (a collective, or something that runs collectives, e.g. gathering a DTensor);
        its failure becomes a CollectiveError that names `what`."""
        try:
            return fn()
        except (KeyboardInterrupt, CollectiveError):
            raise
        except Exception as exc:  # the backends raise RuntimeError, DistBackendError, DistNetworkError, ...
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CollectiveError(
                f"EPIPruner: the {what} failed on rank {self._rank_or_unknown()} of {self._size_or_unknown()}: another "
                "rank probably failed or stopped calling the pruner (a collective waits at most the process group's "
                f"timeout, init_process_group(timeout=...)); the backend said: {cause}"
            ) from exc

    def _rank_or_unknown(self) -> str:
        try:
            return str(self.rank)
        except Exception:
            return "?"

    def _size_or_unknown(self) -> str:
        try:
            return str(self.world_size)
        except Exception:
            return "?"


# The name of 0.2, when the policy only broadcast from rank 0.
RankZero = Collectives
