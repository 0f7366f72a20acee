"""epi_fast: decide when to prune a network during training (the Early Pruning Indicator), and
prune it fast.

The operators load eagerly (a missing or stale build raises ImportError at once). The
model-side API loads on first use, so that ``import epi_fast`` stays cheap for code that only
needs the operators.
"""

from __future__ import annotations

import importlib

from ._ops import (
    channel_scores,
    global_masks,
    global_masks_counts,
    group_reduce,
    layer_counts,
    mask_overlap,
    taylor_accumulate_,
    taylor_scores,
)
from ._version import __version__
from ._info import info

_LAZY = {
    "group_layout": "graph",
    "GroupLayout": "graph",
    "prune": "surgery",
    "save_pruned": "serialize",
    "load_pruned": "serialize",
    "build_model": "models",
    "EarlyPruningIndicator": "indicator",
    "EarlyBirdIndicator": "indicator",
    "EPIPruner": "pruner",
    "reference": None,
}

__all__ = [
    "__version__",
    "info",
    "channel_scores",
    "taylor_scores",
    "taylor_accumulate_",
    "group_reduce",
    "global_masks",
    "global_masks_counts",
    "layer_counts",
    "mask_overlap",
    *_LAZY,
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'epi_fast' has no attribute {name!r}")
    module = _LAZY[name]
    if module is None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
