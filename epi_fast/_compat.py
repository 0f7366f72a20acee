"""Module paths of 0.1 that moved in 0.2.0: each old module is an alias of its new home for one
release, with a DeprecationWarning that names the new path (CHANGELOG.md lists them)."""

from __future__ import annotations

import importlib
import sys
import warnings

MOVED = {
    "epi_fast.graph": "epi_fast.layout",
    "epi_fast.scoring": "epi_fast.criteria",
    "epi_fast.serialize": "epi_fast.surgery.serialize",
    "epi_fast.pruner": "epi_fast.policy.pruner",
    "epi_fast.cli": "epi_fast.app.cli",
    "epi_fast.cli_prune": "epi_fast.app.prune_cmd",
    "epi_fast.data": "epi_fast.app.data",
    "epi_fast.report": "epi_fast.app.report",
    "epi_fast.reference": "epi_fast.ops.reference",
    "epi_fast._ops": "epi_fast.ops",
    "epi_fast._ext": "epi_fast.ops._ext",
}


def alias(old: str):
    """Make module `old` the module it moved to (same object, every attribute)."""
    new = MOVED[old]
    warnings.warn(f"{old} moved to {new} in epi_fast 0.2.0; the old path goes in the next release",
                  DeprecationWarning, stacklevel=3)
    module = importlib.import_module(new)
    sys.modules[old] = module
    return module
