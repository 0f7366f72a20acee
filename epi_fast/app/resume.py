"""`epi-fast train --resume RUN_DIR`: the checkpoint a run writes after every epoch, and the
run continued from it.

checkpoint.pt (written atomically at the end of every epoch, before metrics.jsonl and
summary.json) holds everything the next epoch depends on: the model (its architecture as
`save_pruned` records it, and its weights), the optimizer, the learning-rate schedule, the
GradScaler (CUDA AMP), the `EPIPruner`'s state, every random generator (torch's, CUDA's on a
GPU, Python's, numpy's, and the one that fixes the data order: the training DataLoader's for
classify, the window sampler's for lm), the metrics, the warnings and the training seconds so
far. Only plain containers and tensors: it loads with torch.load(weights_only=True).

A resume reads the arguments from RUN_DIR/summary.json ("arguments"), builds the run as the
first start did (same seed), narrows the model to the checkpoint's architecture when the
checkpoint is after the prune (and then builds the optimizer, schedule and pruner again around
the narrowed model), loads every state and goes on with the next epoch. On the CPU with one
thread the result is the uninterrupted run's, timings aside.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from typing import Any, Dict, Optional, Sequence

from .cli import UsageError, train_to_end
from .training import TASK_DEFAULTS

__all__ = ["CHECKPOINT", "CHECKPOINT_FORMAT", "RESUME_OPTIONS", "check_train_options", "write_checkpoint",
           "read_checkpoint", "restore", "resume_train"]

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "epi_fast.checkpoint/1"
# The options `--resume` may be given with (dests); everything else comes from summary.json.
RESUME_OPTIONS = ("resume", "no_progress", "threads", "debug")
# The built-in data sets' names (not paths).
_BUILTIN_DATA = tuple(sorted({d["data"] for d in TASK_DEFAULTS.values()}))


# -- the command line ----------------------------------------------------------------------------

def _given_train_options(argv: Sequence[str]) -> Dict[str, str]:
    """{dest: option string} of the `train` options that `argv` gives (defaults left out)."""
    from .cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train = sub.choices["train"]
    names = {}
    for action in train._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS
            if action.option_strings:
                names[action.dest] = action.option_strings[0]
    given = vars(parser.parse_args(list(argv)))
    return {d: names[d] for d in given if d in names}


def check_train_options(argv: Sequence[str], args) -> None:
    """Usage errors of `train` that argparse cannot see: --out is required unless --resume, and
    --resume takes no option but --no-progress, --threads and --debug."""
    if args.resume is None:
        if args.out is None:
            raise UsageError("epi-fast train: the following arguments are required: --out (or --resume RUN_DIR)")
        return
    given = _given_train_options(argv)
    if "overwrite" in given:
        raise UsageError("epi-fast train: --overwrite cannot be used with --resume (a resumed run goes on in its own "
                         "directory; to start it again, give its arguments with --out RUN_DIR --overwrite)")
    others = [opt for dest, opt in given.items() if dest not in RESUME_OPTIONS]
    if others:
        raise UsageError(f"epi-fast train: --resume takes the run's arguments from RUN_DIR/summary.json; only "
                         f"--no-progress, --threads and --debug may be given with it, not {', '.join(others)}")


# -- the checkpoint ------------------------------------------------------------------------------

def _rng_state(setup) -> Dict[str, Any]:
    import numpy as np
    import torch

    version, keys, gauss = random.getstate()
    name, np_keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if setup.device.type == "cuda" else None,
        "python": [version, list(keys), gauss],
        "numpy": {"name": str(name), "keys": [int(k) for k in np_keys], "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "data": setup.data_generator.get_state(),
    }


def _set_rng_state(setup, state: Dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and setup.device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda"])
    version, keys, gauss = state["python"]
    random.setstate((int(version), tuple(int(k) for k in keys), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    setup.data_generator.set_state(state["data"])


def write_checkpoint(run) -> Optional[str]:
    """checkpoint.pt of `run` (a `cli._Run`) at the end of its last completed epoch, atomically.
    Returns its path (None on the ranks other than 0 of a distributed run, which write nothing
    but their FSDP shards). Every rank of a distributed run must call it."""
    import torch

    from .._io import atomic_write
    from .._version import __version__
    from ..surgery.serialize import model_payload

    args, s, job = run.args, run.s, run.job
    arch = {"name": args.model, "kwargs": dict(s.model_kwargs)}
    ranks = shards = None
    if job is not None:
        # Each rank's own generators and pruner state (an FSDP rank's Taylor sums are its shard's).
        ranks = job.gather({"rng": _rng_state(s), "pruner": s.pruner.state_dict()})
        if job.kind == "fsdp":
            from .shards import save_shards

            shards = save_shards(run)
    if not run.writes:
        return None
    if shards is None:
        model = model_payload(s.model, arch=arch)
    else:
        from .shards import architecture_payload

        model = architecture_payload(s.pruner.module, arch)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "epi_fast_version": __version__,
        "task": args.task,
        "epochs_completed": run.epochs_completed,
        "model": model,
        "optimizer": None if shards is not None else s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict(),
        "scaler": None if s.scaler is None else s.scaler.state_dict(),
        "pruner": s.pruner.state_dict(),
        "rng": _rng_state(s),
        "metrics": [dict(r) for r in run.metrics],
        "warnings": list(run.warnings),
        "train_seconds": float(run.train_seconds),
        "working_directory": run.working_directory,
        "resumed_after_epochs": list(run.resumed_after_epochs),
        "task_state": run.task_checkpoint(),
        "distributed": None if job is None else {"kind": job.kind, "world_size": job.world_size, "ranks": ranks,
                                                 "shards": shards},
    }
    path = run._path(CHECKPOINT)
    atomic_write(path, lambda f: torch.save(payload, f))
    if shards is not None:
        from .shards import remove_other_shards

        remove_other_shards(run.outdir, keep=shards)  # the previous epoch's, now that checkpoint.pt names this one
    return path


def read_checkpoint(path: str) -> Dict[str, Any]:
    """A checkpoint.pt, loaded with weights_only=True on the CPU; ValueError (one line) if it is
    not one of this format."""
    from ..surgery.serialize import TorchFileError, read_torch_file

    try:
        ckpt = read_torch_file(path, map_location="cpu")
    except TorchFileError as err:
        raise ValueError(f"{path} is not a checkpoint of epi-fast train: it {err.reason}") from None
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a checkpoint of epi-fast train in format {CHECKPOINT_FORMAT!r} (format {fmt!r})")
    return ckpt


def restore(run, ckpt: Dict[str, Any]) -> None:
    """Put `run` (just built from the stored arguments, by `setup_for`) in the state of `ckpt`."""
    from .training import make_optimizer, make_scheduler
    from ..surgery.serialize import restore_payload

    args, s, job = run.args, run.s, run.job
    state, rng = ckpt["pruner"], ckpt["rng"]
    if job is not None:
        mine = ckpt["distributed"]["ranks"][job.rank]
        state, rng = mine["pruner"], mine["rng"]
    if job is not None and job.kind == "fsdp":
        from .shards import load_shards

        # The model was narrowed before it was sharded, the pruner built after the prune around
        # it (`setup_for`); the weights and optimizer state are in the sharded checkpoint.
        load_shards(run, ckpt["distributed"]["shards"])
    else:
        restore_payload(ckpt["model"], s.model)  # narrowed in place when the checkpoint is after the prune
        if state["pruned"]:
            if job is not None:
                from ..distributed import rewrap_ddp

                s.model = rewrap_ddp(s.model)  # the wrapper built around the dense network holds its parameters
            # The optimizer and schedule built around the dense network hold its parameters.
            s.optimizer = make_optimizer(s.model, args.lr, args.momentum, args.weight_decay, args.optimizer)
            s.scheduler = make_scheduler(s.optimizer, args.epochs, s.steps_per_epoch, args.warmup_epochs)
            # The pruner built around the dense network holds the same module, now narrowed in
            # place, which is what a post-prune state is loaded into. A new EPIPruner around the
            # narrowed network would check the target against it, and a --target params/flops
            # ratio is not reachable again from the pruned network (a ValueError). After the prune
            # the pruner no longer uses the optimizer; it is given the new one all the same.
            s.pruner.optimizer = s.optimizer
        # The schedule was built first: building one sets the optimizer's learning rates.
        s.optimizer.load_state_dict(ckpt["optimizer"])
    s.scheduler.load_state_dict(ckpt["scheduler"])
    if s.scaler is not None and ckpt.get("scaler") is not None:
        s.scaler.load_state_dict(ckpt["scaler"])
    if not (s.pruner.pruned and state["pruned"]):  # (a pruner built with the state has it already)
        s.pruner.load_state_dict(state)
    run.metrics = [dict(r) for r in ckpt["metrics"]]
    run.warnings = list(ckpt["warnings"])
    run.train_seconds = float(ckpt["train_seconds"])
    run.working_directory = ckpt.get("working_directory") or run.working_directory
    run.resumed_after_epochs = [int(e) for e in ckpt.get("resumed_after_epochs", [])] + [run.epochs_completed]
    run.load_task_checkpoint(ckpt.get("task_state") or {})
    _set_rng_state(s, rng)  # last: nothing above may draw from them


def setup_for(setup_class, rargs, job, ckpt: Dict[str, Any]):
    """The run's setup, built as the first start built it; under FSDP after the prune the dense
    model is narrowed to the checkpoint's shapes before it is sharded, and the pruner is built
    around it with its saved state."""
    if job is None or job.kind != "fsdp":
        return setup_class(rargs, job)
    state = ckpt["distributed"]["ranks"][job.rank]["pruner"]
    if not state["pruned"]:
        return setup_class(rargs, job)
    from ..surgery.serialize import narrow_to_shapes

    model = ckpt["model"]
    return setup_class(rargs, job, narrow=lambda m: narrow_to_shapes(m, model["modules"], model["shapes"]),
                       pruner_state=state)


# -- the command ----------------------------------------------------------------------------------

def _stored_arguments(args, marker: Dict[str, Any]) -> argparse.Namespace:
    from .cli import build_parser

    stored = marker.get("arguments")
    if not isinstance(stored, dict) or not stored.get("task"):
        raise UsageError(f"--resume {args.resume}: its summary.json records no arguments to resume with")
    out = build_parser().parse_args(["train", "--out", args.resume])  # every default, for keys added later
    for key, value in stored.items():
        if hasattr(out, key) and key not in ("func", "command"):
            setattr(out, key, value)
    out.out = args.resume
    out.resume = args.resume
    out.overwrite = False
    out.no_progress = args.no_progress
    out.debug = args.debug
    if args.threads is not None:
        out.threads = args.threads
    wd = marker.get("working_directory")
    data = out.data
    if (isinstance(wd, str) and isinstance(data, str) and data not in _BUILTIN_DATA and not os.path.isabs(data)
            and os.path.exists(os.path.join(wd, data))):
        out.data = os.path.join(wd, data)  # relative to where the run was started
    return out


def _remove_temporaries(path: str, ckpt: Dict[str, Any]) -> None:
    """The temporary files that atomic writes of a killed run left (theirs alone), and the
    sharded checkpoint folders that checkpoint.pt does not name (a killed FSDP run's)."""
    from .._io import is_temporary_of
    from .rundir import RUN_FILES

    for entry in os.listdir(path):
        full = os.path.join(path, entry)
        if any(is_temporary_of(entry, n) for n in RUN_FILES) and os.path.isfile(full) and not os.path.islink(full):
            os.unlink(full)
    dist = ckpt.get("distributed") or {}
    if dist.get("kind") == "fsdp":
        from .shards import remove_other_shards

        remove_other_shards(path, keep=dist["shards"])


def resume_train(args) -> int:
    """`epi-fast train --resume RUN_DIR` (under torchrun for a --distributed run)."""
    from .dist_job import quiet_on_other_ranks
    from .rundir import MARKER, read_marker

    path = args.resume
    if not os.path.isdir(path) or os.path.islink(path):
        raise quiet_on_other_ranks(UsageError(f"--resume {path}: no such run directory"))
    marker = read_marker(path)
    if marker is None:
        raise quiet_on_other_ranks(UsageError(f"--resume {path} is not a run directory of epi-fast train (no {MARKER} of "
                                         "epi-fast inside)"))
    if marker.get("status") == "completed":
        if os.environ.get("RANK", "0") == "0":
            print(f"{path}: the run is completed ({marker.get('epochs_completed')} epochs); nothing to resume")
        return 0
    ckpt_path = os.path.join(path, CHECKPOINT)
    if not os.path.isfile(ckpt_path) or os.path.islink(ckpt_path):
        raise quiet_on_other_ranks(UsageError(
            f"--resume {path} has no {CHECKPOINT} (the run stopped before its first epoch ended, or an epi-fast without "
            "--resume wrote it); it cannot be resumed"))
    rargs = _stored_arguments(args, marker)
    job = _join(rargs, marker, path)
    try:
        return _resume(args, rargs, marker, job, path, ckpt_path)
    finally:
        if job is not None:
            job.close()


def _join(rargs, marker: Dict[str, Any], path: str):
    """The resumed run's `DistJob` (None for one process): a --distributed run resumes under
    torchrun with as many processes as it had."""
    from .cli import start_distributed
    from .dist_job import check_not_launched, launched_world_size, quiet_on_other_ranks

    kind = getattr(rargs, "distributed", None)
    world = (marker.get("distributed") or {}).get("world_size")
    if kind is not None:
        launched = launched_world_size()
        if launched is None:
            raise UsageError(f"--resume {path}: the run was started with --distributed {kind} on {world} processes; resume "
                             f"it the same way: torchrun --nproc-per-node {world} -m epi_fast train --resume {path}")
        if world is not None and launched != world:
            raise quiet_on_other_ranks(UsageError(
                f"--resume {path}: the run was started on {world} processes, torchrun started {launched}; resume it "
                f"on {world} (the per-rank batches, generators and shards are those of {world})"))
    else:
        try:
            check_not_launched(UsageError)
        except UsageError as e:
            raise quiet_on_other_ranks(e)
    return start_distributed(kind, rargs.device, rargs.dist_timeout)


def _resume(args, rargs, marker, job, path: str, ckpt_path: str) -> int:
    from .cli import validate_filled
    from .dist_job import together
    from .rundir import _live_pid

    with together(job, "checking the run directory"):
        if job is None or job.is_main:
            pid = _live_pid(marker)
            if pid is not None:
                raise UsageError(f"--resume {path}: the run is still in progress (pid {pid})")
        validate_filled(rargs)
        ckpt = read_checkpoint(ckpt_path)
        if ckpt.get("task") != rargs.task:
            raise ValueError(f"{ckpt_path} is a checkpoint of --task {ckpt.get('task')}, the run's summary.json says "
                             f"{rargs.task}")
        saved = ckpt.get("distributed") or {}
        if (job is None) != (not saved) or (job is not None and (saved.get("kind"), saved.get("world_size")) !=
                                            (job.kind, job.world_size)):
            raise ValueError(f"{ckpt_path} was written by a run on {saved.get('world_size', 1)} process(es) "
                             f"({saved.get('kind') or 'not distributed'}), not as summary.json describes this one")
    from .cli import task_classes

    run_class, setup_class = task_classes(rargs.task)
    try:
        with together(job, "restoring the run"):
            setup = setup_for(setup_class, rargs, job, ckpt)
            run = run_class(rargs, setup)
            run.outdir = os.path.abspath(path)
            restore(run, ckpt)
    except KeyboardInterrupt as e:
        e.epi_fast_detail = f"before training resumed; {path} is as it was"  # type: ignore[attr-defined]
        raise
    try:
        with together(job, "marking the run directory"):
            if run.writes:
                _remove_temporaries(run.outdir, ckpt)
                print(f"resuming {path} after epoch {run.epochs_completed} of {rargs.epochs}", file=sys.stderr)
                run.write_progress()  # "running", by this process
    except BaseException as e:
        run.record_stop(e)
        raise
    return train_to_end(run, path)
