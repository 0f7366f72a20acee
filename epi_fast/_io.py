"""Files written so that a reader never sees half of one.

Every writer goes through `atomic_write`: the bytes land in a temporary file in the *same*
directory (so the final rename stays on one file system), are flushed to disk, and replace the
target with `os.replace`, which is atomic on POSIX and Windows. A crash leaves either the old
file or the new one, plus at worst a stray `.tmp` file, never a truncated JSON or PNG.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from typing import Any, Callable, Iterable, Mapping

__all__ = ["atomic_write", "write_bytes", "write_json", "write_jsonl", "jsonable"]


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call `write(f)` on a temporary binary file beside `path`, then move it over `path`."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
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
