"""The sharded checkpoint of a `--distributed fsdp` run (torch.distributed.checkpoint).

After every epoch each rank writes its shards of the model and of the optimizer state into
`RUN_DIR/checkpoint-EPOCH.dcp/` (one `__RANK_0.distcp` file per rank and a `.metadata`), and
rank 0 writes `checkpoint.pt` beside it as in one process, without weights or optimizer
state: the architecture (the module attributes and every tensor's shape, so that a resume
narrows the dense model to the pruned shapes before sharding it), the schedule, every rank's
pruner state and generators, the metrics, and the folder's name. The order makes each epoch's
checkpoint appear at once:

1. every rank writes into a temporary folder `.checkpoint-EPOCH.dcp.XXXXXXXX.tmp` (rank 0 creates
   it and tells the others its name); `torch.distributed.checkpoint.save` returns on rank 0 only
   after every rank's files are written;
2. rank 0 renames it `checkpoint-EPOCH.dcp` (one atomic rename of a folder);
3. rank 0 replaces `checkpoint.pt` (atomically), which now names the new folder;
4. rank 0 removes the previous epoch's folder.

A run killed at any step leaves a `checkpoint.pt` that names a complete folder; `--resume`
removes the folders that it does not name. The folders need a file system that every rank
sees (as torch.distributed.checkpoint does).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Dict

__all__ = ["save_shards", "load_shards", "architecture_payload", "remove_other_shards"]


def _state(model, optimizer) -> Dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optim_state}


def save_shards(run) -> str:
    """Write this rank's shards of `run`'s model and optimizer for its last completed epoch;
    returns the folder's name (inside the run directory). Every rank must call it."""
    import torch.distributed.checkpoint as dcp

    from .rundir import shard_dir_name

    job, s = run.job, run.s
    name = shard_dir_name(run.epochs_completed)
    final = os.path.join(run.outdir, name)
    made: Any = None
    if job.is_main:
        try:
            if os.path.isdir(final) and not os.path.islink(final):
                shutil.rmtree(final)  # left by a run killed after step 2 of this very epoch
            made = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=run.outdir)
            os.chmod(made, _dir_mode())
        except OSError as e:
            made = OSError(f"cannot create the checkpoint folder in {run.outdir}: {e.strerror or e}")
    made = job.broadcast(made)
    if isinstance(made, BaseException):
        raise made
    # Buffers are not sharded and each rank's BatchNorm tracks its own batches, while the
    # checkpoint keeps one copy of each: rank 0's, as in checkpoint.pt of a DDP run.
    job.sync_buffers(s.model)
    dcp.save(_state(s.model, s.optimizer), checkpoint_id=made)
    if job.is_main:
        os.replace(made, final)
    return name


def _dir_mode() -> int:
    """What `mkdir` would give a folder: 0o777 minus the umask (mkdtemp makes it 0o700)."""
    from .._io import process_umask

    return 0o777 & ~process_umask()


def load_shards(run, name: str) -> None:
    """Load the model and optimizer state of `run` from its run directory's folder `name`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    s = run.s
    path = os.path.join(run.outdir, name)
    if not os.path.isfile(os.path.join(path, ".metadata")):
        raise ValueError(f"{path}: the sharded checkpoint that checkpoint.pt names is missing or incomplete")
    state = _state(s.model, s.optimizer)
    dcp.load(state, checkpoint_id=path)
    set_state_dict(s.model, s.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def architecture_payload(module, arch) -> Dict[str, Any]:
    """checkpoint.pt's "model" entry under FSDP: `model_payload`'s header, architecture and
    module attributes, the full shape of every tensor instead of the tensors."""
    from ..surgery.serialize import model_payload

    payload = model_payload(module, arch=arch, state_dict={})
    payload["shapes"] = {k: [int(d) for d in v.shape] for k, v in module.state_dict().items()}
    return payload


def remove_other_shards(path: str, keep: str) -> None:
    """Every sharded checkpoint folder of run directory `path` but `keep`, temporary ones too."""
    from .rundir import is_shard_dir

    for entry in os.listdir(path):
        if entry != keep and is_shard_dir(path, entry):
            shutil.rmtree(os.path.join(path, entry), ignore_errors=True)
