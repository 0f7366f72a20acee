"""epi_fast: decide when to prune a network during training (the Early Pruning Indicator), and
prune it fast.

The operators load eagerly (a missing or stale build raises ImportError at once). The
model-side API loads on first use, so that ``import epi_fast`` stays cheap for code that only
needs the operators.
"""

from __future__ import annotations

import importlib

from ._version import __version__
from . import ops as _ops_package
from .ops import *  # noqa: F401,F403  (the operators and info(), as listed in epi_fast.ops.__all__)

# name -> (module, attribute); attribute None means the module itself.
_LAZY = {
    "group_layout": ("epi_fast.layout", "group_layout"),
    "GroupLayout": ("epi_fast.layout", "GroupLayout"),
    "prune": ("epi_fast.surgery", "prune"),
    "save_pruned": ("epi_fast.surgery", "save_pruned"),
    "load_pruned": ("epi_fast.surgery", "load_pruned"),
    "build_model": ("epi_fast.models", "build_model"),
    "EarlyPruningIndicator": ("epi_fast.indicator", "EarlyPruningIndicator"),
    "EarlyBirdIndicator": ("epi_fast.indicator", "EarlyBirdIndicator"),
    "EPIPruner": ("epi_fast.policy", "EPIPruner"),
    "reference": ("epi_fast.ops.reference", None),
}

__all__ = ["__version__", *_ops_package.__all__, *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'epi_fast' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
