"""`epi-fast train --distributed ddp|fsdp`: the main job on several processes under torchrun.

    torchrun --nproc-per-node 2 -m epi_fast train --distributed ddp --out runs/ddp
    torchrun --nproc-per-node 8 -m epi_fast train --distributed fsdp --device cuda --out runs/fsdp

Every process (rank) runs the same command. The process group comes from torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): gloo on the CPU, NCCL
with `--device cuda` (each rank on the GPU of its LOCAL_RANK). Its timeout
(`--dist-timeout`, seconds) bounds every collective, so a rank that stops answering makes the
others fail instead of waiting for ever; a rank that exits closes its connections and the others
fail at their next collective at once.

The global batch is `--batch-size`, as in the one-process run: each rank trains on
batch / WORLD_SIZE samples per step (a usage error if it does not divide): its slice of the
one-process run's batch (`GlobalBatchShare`, the same seeded order); DDP averages the gradients,
FSDP reduce-scatters them. Training loss and accuracy are summed over the ranks; the test set
(classify) or the validation windows (lm) are split among the ranks and their counts summed,
after every rank has taken rank 0's buffers (BatchNorm statistics), so the figures are those of
rank 0's model on the whole set. `EPIPruner` makes every rank take the same decision and prune
the same channels; the DDP wrapper is rebuilt around the pruned module
(`epi_fast.distributed.rewrap_ddp`); under FSDP the pruner shards the pruned module again and
updates the optimizer in place.

Rank 0 alone writes the run directory (summary, metrics, plots, model.pt, checkpoint.pt) and
prints; the other ranks write nothing but, under FSDP, their shard of each epoch's checkpoint
(`torch.distributed.checkpoint`, see resume.py). Setup and every epoch end are checked
together: a failure on any rank (a usage error, a full disk on rank 0) stops every rank with
that rank's one-line message, printed once.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence

__all__ = ["KINDS", "DEFAULT_TIMEOUT", "ENVIRONMENT", "PeerFailed", "DistJob", "start_job", "check_not_launched",
           "launched_world_size", "quiet_on_other_ranks", "together", "lost_peer", "block_modules", "shard_blocks", "max_over_ranks",
           "full_state_dict", "shard_indices", "per_rank_batch"]

KINDS = ("ddp", "fsdp")
# Seconds a collective may wait for the other ranks. It must cover the longest stretch one rank
# works alone between two collectives: rank 0 writing an epoch's files (well under a second for
# the built-in models) and a rank's share of an evaluation.
DEFAULT_TIMEOUT = 300.0
ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Texts of the errors torch.distributed raises when another rank has gone (gloo: its socket
# closed; gloo and NCCL: a collective timed out).
_LOST_PEER = ("connection closed by peer", "connection reset by peer", "timed out", "timeout", "broken pipe")


class PeerFailed(RuntimeError):
    """Another rank failed; this one stops too. `usage` tells whether that rank's error was a
    usage error (exit 2) or a failure (exit 1). `epi_fast_quiet`: the failing rank prints the
    message, this one prints nothing."""

    def __init__(self, rank: int, message: str, usage: bool) -> None:
        super().__init__(f"rank {rank} failed: {message}")
        self.rank = rank
        self.usage = usage
        self.epi_fast_quiet = True
        self.epi_fast_exit_status = 2 if usage else 1


def launched_world_size() -> Optional[int]:
    """WORLD_SIZE of torchrun's environment, None when not started by torchrun (or unreadable)."""
    try:
        return int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None


def check_not_launched(usage_error) -> None:
    """A run without --distributed must not be started on several processes: each would write
    the same run directory."""
    n = launched_world_size()
    if n is not None and n > 1:
        raise usage_error(f"this process is one of {n} that torchrun started (WORLD_SIZE={n}), but --distributed is not "
                          "given: pass --distributed ddp or fsdp, or run epi-fast train without torchrun")


def quiet_on_other_ranks(e: BaseException) -> BaseException:
    """`e`, marked not to be printed on a rank other than 0: before the process group exists,
    every rank finds the same problem in the same arguments, and rank 0 prints it."""
    if os.environ.get("RANK", "0") != "0":
        e.epi_fast_quiet = True  # type: ignore[attr-defined]
    return e


@dataclass
class DistJob:
    """This process's place in the distributed run."""

    kind: str
    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: Any
    timeout: float

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict:
        """The "distributed" entry of summary.json."""
        return {"kind": self.kind, "world_size": self.world_size, "backend": self.backend, "timeout_seconds": self.timeout}

    # -- collectives -------------------------------------------------------------------------
    def all_sum(self, values: Sequence[float]) -> List[float]:
        """`values` summed over the ranks (float64, one collective)."""
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def gather(self, obj: Any) -> Optional[List[Any]]:
        """Every rank's `obj` on rank 0 (a list by rank); None on the other ranks."""
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def sync_buffers(self, module) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank. Parameters are equal on every
        rank already; buffers are not: each rank's BatchNorm tracks its own batches (DDP copies
        rank 0's in at the next forward, FSDP never does)."""
        import torch.distributed as dist

        for b in module.buffers():
            dist.broadcast(b.data, src=0)

    def _comm_device(self):
        import torch

        return self.device if self.backend == "nccl" else torch.device("cpu")

    # -- the model ---------------------------------------------------------------------------
    def wrap(self, model):
        """The training wrapper of `model`: DDP, or `fully_shard` on every block and the root."""
        if self.kind == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DDP(model, device_ids=ids)
        shard_blocks(model)
        return model

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def start_job(kind: str, device: str, timeout: float, usage_error) -> DistJob:
    """Join the process group that torchrun's environment describes. UsageError (one line)
    when that environment is missing or the device cannot be used."""
    import torch
    import torch.distributed as dist

    missing = [v for v in ENVIRONMENT if not os.environ.get(v)]
    if missing:
        raise usage_error(
            f"--distributed {kind} runs under torchrun, which sets {', '.join(ENVIRONMENT)} ({', '.join(missing)} "
            f"not set): torchrun --nproc-per-node N -m epi_fast train --distributed {kind} ..."
        )
    try:
        rank, world, local = (int(os.environ[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise usage_error("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None
    if not dist.is_available():
        raise usage_error(f"--distributed {kind}: this torch is built without torch.distributed")
    if device == "cpu":
        backend, dev = "gloo", torch.device("cpu")
    elif device == "cuda":
        if not torch.cuda.is_available():
            raise usage_error("--device cuda: CUDA is not available on this machine")
        if local >= torch.cuda.device_count():
            raise usage_error(f"--device cuda: LOCAL_RANK {local} has no GPU of its own ({torch.cuda.device_count()} "
                              "visible); start at most that many processes per machine")
        backend, dev = "nccl", torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        raise usage_error(f"--distributed takes --device cpu or cuda (each rank uses the GPU of its LOCAL_RANK), "
                          f"not {device!r}")
    if backend == "gloo" and not dist.is_gloo_available():
        raise usage_error(f"--distributed {kind} on the CPU needs the gloo backend, which this torch lacks")
    kwargs = {"device_id": dev} if backend == "nccl" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout), **kwargs)
    if rank != 0:
        # Rank 0 shows the warnings; the others would print the same ones again.
        warnings.simplefilter("ignore")
    return DistJob(kind, rank, world, local, backend, dev, float(timeout))


@contextlib.contextmanager
def together(job: Optional[DistJob], what: str) -> Iterator[None]:
    """Run the body on every rank, then check that it succeeded on all of them (one small
    collective). A rank whose body raised re-raises its own error; the others raise
    `PeerFailed`. When every rank failed with the same message, only rank 0 prints it.
    Interrupts (KeyboardInterrupt, SIGTERM) pass through unchecked: torchrun signals every rank."""
    if job is None:
        yield
        return
    import torch.distributed as dist

    error: Optional[Exception] = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 (re-raised below, after the others are told)
        error = e
    mine = None
    if error is not None:
        from .cli import UsageError
        from .errors import one_line

        mine = (type(error).__name__, one_line(error), isinstance(error, UsageError))
    outcomes: List[Any] = [None] * job.world_size
    dist.all_gather_object(outcomes, mine)
    failed = [(r, o) for r, o in enumerate(outcomes) if o is not None]
    if not failed:
        return
    if error is not None:
        first_rank, first = failed[0]
        if job.rank != first_rank and first[1] == mine[1]:
            error.epi_fast_quiet = True  # type: ignore[attr-defined]  # the same words, printed by rank first_rank
        elif job.rank != 0:
            error.epi_fast_rank = job.rank  # type: ignore[attr-defined]
        raise error
    r, (_, message, usage) = failed[0]
    raise PeerFailed(r, message, usage)


def lost_peer(e: BaseException) -> bool:
    """Whether `e` is torch.distributed's error for a rank that went away (or stopped answering)."""
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(t in text for t in _LOST_PEER)


# -- FSDP's units ------------------------------------------------------------------------------

def block_modules(model) -> list:
    """The blocks of `model` that `fully_shard` wraps one by one: each module held in an
    `nn.Sequential` or `nn.ModuleList` that is neither a container nor one of torch.nn's own
    layers (resnet_small's BasicBlocks, the ViT's encoder blocks, a LLaMA's decoder layers),
    outermost first, never a block inside a block."""
    import torch.nn as nn

    def is_block(m) -> bool:
        return not isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and \
            not type(m).__module__.startswith("torch.nn") and any(True for _ in m.parameters())

    out: list = []

    def visit(m) -> None:
        for child in m.children():
            if isinstance(m, (nn.Sequential, nn.ModuleList)) and is_block(child):
                out.append(child)
            else:
                visit(child)

    visit(model)
    return out


def shard_blocks(model) -> None:
    """`fully_shard` each block (`block_modules`), then the root: each block's parameters are
    gathered for its own forward and backward only."""
    from torch.distributed.fsdp import fully_shard

    for block in block_modules(model):
        fully_shard(block)
    fully_shard(model)


# -- evaluation --------------------------------------------------------------------------------

def max_over_ranks(job: DistJob, n: int) -> int:
    """The largest `n` of all ranks. Evaluation runs as many forwards on every rank as the rank
    with the most batches: under FSDP every forward is a collective."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(n)], dtype=torch.int64, device=job._comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def full_state_dict(model) -> dict:
    """The full (unsharded) state dict of an FSDP model on rank 0, on the CPU; {} on the other
    ranks. Every rank must call it (the parameters are gathered)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def shard_indices(n: int, job: DistJob) -> range:
    """This rank's share of n evaluation items: every WORLD_SIZE-th from its rank on."""
    return range(job.rank, n, job.world_size)


def per_rank_batch(batch_size: int, world_size: int, usage_error) -> int:
    if batch_size % world_size:
        raise usage_error(f"--batch-size {batch_size} is the global batch and must divide among the {world_size} "
                          f"processes (each takes batch / {world_size}); choose a multiple of {world_size}")
    return batch_size // world_size



class GlobalBatchShare:
    """Sampler of one rank's share of the 1-process batches. It draws the epoch's order as a
    1-process `DataLoader(shuffle=True, generator=gen)` does (a `RandomSampler` on the loader's
    own generator, after the loader's worker-seed draw), cuts it into global batches of
    `global_batch` (the last, partial one dropped as that loader drops it), and yields this
    rank's contiguous slice of each. The ranks' batches put together are then the 1-process
    batches, in order, so a run on N processes sees the data a 1-process run sees (a
    `DistributedSampler` would draw another permutation). `set_epoch` does nothing: the order
    comes from the generator, whose state the checkpoints keep."""

    def __init__(self, n: int, global_batch: int, rank: int, world_size: int, generator) -> None:
        from torch.utils.data import RandomSampler

        self.order = RandomSampler(range(n), generator=generator)
        self.share = global_batch // world_size
        self.global_batch, self.rank = global_batch, rank
        # The 1-process loader drops a partial last batch unless it is the only one; then each
        # rank takes an equal share of it.
        self.batches = n // global_batch if n > global_batch else 1
        if n <= global_batch:
            self.share = n // world_size

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.batches * self.share

    def __iter__(self) -> Iterator[int]:
        order = list(self.order)  # lazily, at the first batch: after the loader's seed draw
        width = self.global_batch if len(order) > self.global_batch else self.share * (len(order) // self.share)
        for k in range(self.batches):
            start = k * width + self.rank * self.share
            yield from order[start:start + self.share]
