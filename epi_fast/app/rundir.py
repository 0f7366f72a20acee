"""The run directory of `epi-fast train`: what marks it as the tool's, and what `--overwrite`
may replace.

The marker is `summary.json` itself: the tool writes it first, right after creating the
directory and before the first epoch, and rewrites it (atomically) after every epoch, always
with `"format": "epi_fast.summary/1"` and the process that writes it:

    {"format": "epi_fast.summary/1", "epi_fast_version": "0.2.0", "status": "running",
     "process": {"started": "2026-05-09T07:35:25Z", "pid": 4242, "host": "name"}, ...}

`--overwrite` replaces a directory only if its summary.json is such a file (or the directory
is empty), it holds nothing but the files the tool writes (`RUN_FILES`, and the temporary files
an atomic write leaves when the process is killed in the middle of one), it is not the current
directory, the home directory, the root or a parent of the current directory, and no run is
still writing into it. Replacing removes exactly those files. Anything else is refused with
one line (a usage error) and left as it was.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import re
import shutil
import socket
from typing import List, Optional

from .._io import is_temporary_of, write_json

__all__ = ["MARKER", "MARKER_FORMAT_PREFIX", "RUN_FILES", "RunDirRefused", "read_marker", "check_out", "start", "process_entry",
           "shard_dir_name", "is_shard_dir"]

MARKER = "summary.json"
MARKER_FORMAT_PREFIX = "epi_fast.summary/"
# Every file `epi-fast train` writes into a run directory. A file added to the run directory
# must be added here, or --overwrite will refuse the runs that hold it.
RUN_FILES = ("summary.json", "metrics.jsonl", "checkpoint.pt", "epi_curve.png", "model.pt", "perplexity.png", "map.png")
_MAX_MARKER_BYTES = 64 << 20
# A `--distributed fsdp` run also writes one folder per epoch checkpoint, sharded by
# torch.distributed.checkpoint (resume.py): checkpoint-EPOCH.dcp, first as a temporary
# .checkpoint-EPOCH.dcp.XXXXXXXX.tmp, holding only what torch.distributed.checkpoint writes.
_SHARD_DIR = re.compile(r"checkpoint-[0-9]+\.dcp")
_SHARD_TMP = re.compile(r"\.checkpoint-[0-9]+\.dcp\.[A-Za-z0-9_]+\.tmp")
_SHARD_FILE = re.compile(r"\.metadata(\.tmp)?|__[0-9]+\.metadata(\.tmp)?|__[0-9]+_[0-9]+\.distcp")


def shard_dir_name(epoch: int) -> str:
    """The folder of the sharded checkpoint written after `epoch`."""
    return f"checkpoint-{int(epoch)}.dcp"


def is_shard_dir(path: str, entry: str) -> bool:
    """Whether `entry` of run directory `path` is a sharded checkpoint folder (or the temporary
    one of an unfinished write) holding nothing but torch.distributed.checkpoint's files."""
    if not (_SHARD_DIR.fullmatch(entry) or _SHARD_TMP.fullmatch(entry)):
        return False
    full = os.path.join(path, entry)
    if os.path.islink(full) or not os.path.isdir(full):
        return False
    try:
        inside = os.listdir(full)
    except OSError:
        return False
    return all(_SHARD_FILE.fullmatch(f) and os.path.isfile(os.path.join(full, f)) and
               not os.path.islink(os.path.join(full, f)) for f in inside)


class RunDirRefused(Exception):
    """`--out` cannot be used as asked; nothing was changed (a usage error)."""


def process_entry() -> dict:
    """The "process" entry of summary.json: who writes the run, since when."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return {"started": now.isoformat().replace("+00:00", "Z"), "pid": os.getpid(), "host": socket.gethostname()}


def read_marker(path: str) -> Optional[dict]:
    """The summary.json of run directory `path` when it is the tool's, else None."""
    marker = os.path.join(path, MARKER)
    try:
        st = os.lstat(marker)
        if not os.path.isfile(marker) or os.path.islink(marker) or st.st_size > _MAX_MARKER_BYTES:
            return None
        with open(marker, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and isinstance(data.get("format"), str) and data["format"].startswith(MARKER_FORMAT_PREFIX):
        return data
    return None


def _known(entry: str) -> bool:
    return entry in RUN_FILES or any(is_temporary_of(entry, n) for n in RUN_FILES)


def _foreign_entries(path: str) -> List[str]:
    """Entries of `path` that the tool did not write (sorted): unknown names, and known names
    that are not plain files."""
    out = []
    for entry in sorted(os.listdir(path)):
        full = os.path.join(path, entry)
        if is_shard_dir(path, entry):
            continue
        if not _known(entry) or os.path.islink(full) or not os.path.isfile(full):
            out.append(entry)
    return out


def _special(path: str) -> Optional[str]:
    real = os.path.realpath(path)
    cwd = os.path.realpath(os.getcwd())
    home = os.path.realpath(os.path.expanduser("~"))
    if real == os.path.dirname(real):
        return "the root directory"
    if real == cwd:
        return "the current directory"
    if real == home:
        return "your home directory"
    if cwd.startswith(real.rstrip(os.sep) + os.sep):
        return "a parent of the current directory"
    return None


def _looks_like_an_old_run(path: str) -> bool:
    entries = set(os.listdir(path))
    return bool(entries) and entries <= set(RUN_FILES) and "summary.json" in entries


def _live_pid(summary: dict) -> Optional[int]:
    """The pid of a run still writing this summary on this machine, else None."""
    proc = summary.get("process")
    if summary.get("status") != "running" or not isinstance(proc, dict):
        return None
    pid = proc.get("pid")
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid() or proc.get("host") != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return None
    try:  # a reused pid is another program
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"epi" not in f.read():
                return None
    except OSError:
        pass
    return pid


def _check_creatable(out: str, path: str) -> None:
    ancestor = os.path.dirname(path)
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise RunDirRefused(f"--out {out}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunDirRefused(f"--out {out}: cannot create it, the folder {ancestor} is not writable")


def check_out(out: str, overwrite: bool) -> None:
    """Raise RunDirRefused unless `epi-fast train --out OUT [--overwrite]` may go ahead. Changes
    nothing."""
    path = os.path.abspath(out)
    if not os.path.lexists(path):
        _check_creatable(out, path)
        return
    is_dir = os.path.isdir(path) and not os.path.islink(path)
    marker = read_marker(path) if is_dir else None
    if not overwrite:
        if marker is not None:
            raise RunDirRefused(f"--out {out} already exists (pass --overwrite to replace that earlier run)")
        raise RunDirRefused(
            f"--out {out} already exists and is not a run directory of epi-fast train (no {MARKER} of "
            "epi-fast inside), so --overwrite would not replace it either; choose another --out"
        )
    untouched = "--overwrite replaces only a run directory that epi-fast train wrote, so it is left untouched"
    if os.path.islink(path):
        raise RunDirRefused(f"--out {out} is a symbolic link; give the run directory itself ({untouched})")
    if not os.path.isdir(path):
        raise RunDirRefused(f"--out {out} is a file, not a run directory; {untouched}")
    special = _special(path)
    if special:
        raise RunDirRefused(f"--out {out} is {special}, not a run directory; {untouched}")
    if marker is None:
        if not os.listdir(path):
            return  # an empty directory: nothing to lose
        hint = (" (it looks like a run of epi_fast 0.1, whose summary.json has no \"format\": remove it yourself "
                "if it can go)" if _looks_like_an_old_run(path) else "")
        raise RunDirRefused(
            f"--out {out} is not a run directory of epi-fast train (no {MARKER} of epi-fast inside){hint}; {untouched}"
        )
    foreign = _foreign_entries(path)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise RunDirRefused(
            f"--out {out} holds {foreign[0]!r}{more}, which epi-fast train did not write; move it out or "
            "choose another --out (nothing was changed)"
        )
    pid = _live_pid(marker)
    if pid is not None:
        raise RunDirRefused(f"--out {out} belongs to a run still in progress (pid {pid}); stop it first or choose another --out")


def start(out: str, overwrite: bool, summary: dict) -> str:
    """Create the run directory `out` (its parents too) and write its first `summary` (the
    marker), or, with `overwrite`, empty the earlier run there of the tool's files and write the
    new summary over the old. Checks again first (`check_out`). Returns the absolute path."""
    if not str(summary.get("format", "")).startswith(MARKER_FORMAT_PREFIX):
        raise ValueError(f"a run's summary must carry format {MARKER_FORMAT_PREFIX}N")
    check_out(out, overwrite)
    path = os.path.abspath(out)
    try:
        if os.path.lexists(path):
            # The new summary first: a clean-up cut short leaves a directory that is marked (and
            # says "running" for a process that is gone), never one without its marker.
            write_json(os.path.join(path, MARKER), summary)
            for entry in sorted(os.listdir(path)):
                if entry == MARKER:
                    continue
                if is_shard_dir(path, entry):
                    shutil.rmtree(os.path.join(path, entry))
                else:
                    os.unlink(os.path.join(path, entry))
            return path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path)
    except FileExistsError:
        raise RunDirRefused(f"--out {out} appeared while this run started; choose another --out") from None
    except (PermissionError, NotADirectoryError) as err:
        raise RunDirRefused(f"--out {out}: cannot create it: {err.strerror}") from None
    except OSError as err:
        if err.errno == errno.EROFS:
            raise RunDirRefused(f"--out {out}: cannot create it: {err.strerror}") from None
        raise
    write_json(os.path.join(path, MARKER), summary)
    return path
