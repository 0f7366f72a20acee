"""Files written so that a reader never sees half of one.

Every writer goes through `atomic_write`: the bytes land in a temporary file in the *same*
directory (so the final rename stays on one file system), are flushed to disk, and replace the
target with `os.replace`, which is atomic on POSIX and Windows. A crash leaves either the old
file or the new one, plus at worst a stray `.NAME.XXXXXXXX.tmp` file beside it (only a hard
kill leaves one: any Python exception, Ctrl-C included, removes it), never a truncated JSON or
PNG.

The file gets the permissions an ordinary `open(path, "w")` would give it: 0o666 minus the
process umask. (`tempfile.mkstemp` creates its file 0o600, whatever the umask; that mode would
otherwise survive the rename.)
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
import threading
from typing import Any, Callable, Iterable, Mapping, Optional

__all__ = [
    "atomic_write", "write_bytes", "write_json", "write_jsonl", "jsonable",
    "process_umask", "file_mode", "is_temporary_of",
]

_UMASK: Optional[int] = None
_UMASK_LOCK = threading.Lock()


def _read_umask() -> int:
    # Linux >= 4.7 reports it without changing anything.
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way to read it is to set it. 0o077 is set for that instant, so a file
    # another thread creates meanwhile is at worst more private than asked, never less.
    old = os.umask(0o077)
    os.umask(old)
    return old


def process_umask() -> int:
    """The process umask, read once (the first call) and remembered."""
    global _UMASK
    if _UMASK is None:
        with _UMASK_LOCK:
            if _UMASK is None:
                _UMASK = _read_umask()
    return _UMASK


def file_mode() -> int:
    """The mode a new regular file gets: 0o666 & ~umask."""
    return 0o666 & ~process_umask()


def _temp_prefix(path: str) -> str:
    return "." + os.path.basename(path) + "."


def is_temporary_of(entry: str, name: str) -> bool:
    """Whether directory entry `entry` is a temporary file `atomic_write` makes for `name`
    (left behind only if the process was killed mid-write)."""
    prefix = "." + name + "."
    return entry.startswith(prefix) and entry.endswith(".tmp") and bool(
        re.fullmatch(r"[A-Za-z0-9_]+", entry[len(prefix):-len(".tmp")])
    )


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call `write(f)` on a temporary binary file beside `path`, then move it over `path`.

    The result has mode 0o666 & ~umask (see `file_mode`)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), file_mode())
            else:  # Windows
                os.chmod(tmp, file_mode())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def jsonable(obj: Any) -> Any:
    """Plain JSON types for tensors, numpy scalars and non-finite floats.

    JSON has no NaN/Infinity; writing them (Python's default) produces files that strict
    parsers reject, so they become null.
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return jsonable(obj.tolist())
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    text = json.dumps(jsonable(obj), indent=indent, sort_keys=False, allow_nan=False) + "\n"
    write_bytes(path, text.encode("utf-8"))


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> None:
    """The whole file at once: one compact JSON object per line."""
    lines = [json.dumps(jsonable(r), allow_nan=False, separators=(",", ":")) for r in records]
    write_bytes(path, ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
