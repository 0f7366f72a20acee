"""Reading and writing the protocol's files; every write is atomic (epi_fast._io)."""

from __future__ import annotations

import json
import os
from typing import Any, Optional


def atomic_json(path: str, obj: Any) -> None:
    from epi_fast._io import write_json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(path, obj)


def atomic_text(path: str, text: str) -> None:
    from epi_fast._io import write_bytes

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes(path, text.encode("utf-8"))


def read_json(path: str) -> Optional[Any]:
    """The file's JSON, or None when it is missing or unreadable (a unit to run again)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
