"""Loads the compiled operators, loudly.

There is no silent fallback to the reference: a missing or stale build raises ImportError
with the command that fixes it.
"""

from __future__ import annotations

import json
import os

import torch

REBUILD = "rebuild it with: CUDA_HOME=/usr/local/cuda pip install --no-build-isolation -e ."


def _build_info() -> dict:
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "_build_info.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ImportError(f"epi_fast's compiled extension has not been built ({path} is missing); {REBUILD}") from None


def _torch_release(version: str) -> str:
    return version.split("+")[0]


def load():
    info = _build_info()
    built, running = _torch_release(info["torch"]), _torch_release(torch.__version__)
    if built != running:
        raise ImportError(
            f"epi_fast was built against torch {info['torch']} but torch {torch.__version__} is "
            f"running; the binary is not compatible: {REBUILD}"
        )
    try:
        from .. import _C
    except (ImportError, OSError) as exc:
        raise ImportError(f"epi_fast's compiled extension failed to load ({exc}); {REBUILD}") from exc
    if _torch_release(_C.torch_version) != running:
        raise ImportError(f"epi_fast._C was compiled against torch {_C.torch_version}, running {torch.__version__}; {REBUILD}")
    return _C, info


_C, BUILD_INFO = load()
