"""The compiled operators: their Python face, the fake kernels that let them trace under
``torch.compile``, the plain-PyTorch oracle (``epi_fast.ops.reference``) and the loader of the
extension.

One module per operator family (``scores``, ``taylor``, ``groups``, ``masks``, ``counts``), each
with its wrappers and their fake kernels: an operator is one call into ``torch.ops.epi_fast``,
whose C++ checks hold the rules; a wrapper checks in Python only an argument that the schema
cannot carry as it is (``_schema``), with the checks that the reference runs (``_checks``).

Importing this package loads the extension (a missing or stale build raises ImportError with
the command that rebuilds it) and registers ``torch.ops.epi_fast``.
"""

from __future__ import annotations

from ._info import OPS, info
from .counts import layer_counts, mask_overlap
from .groups import group_reduce, group_reduce_trusted  # noqa: F401  (trusted: internal, an index checked once)
from .masks import global_masks, global_masks_counts
from .scores import channel_scores
from .taylor import taylor_accumulate_, taylor_scores

__all__ = [
    "OPS",
    "info",
    "channel_scores",
    "taylor_scores",
    "taylor_accumulate_",
    "group_reduce",
    "global_masks",
    "global_masks_counts",
    "layer_counts",
    "mask_overlap",
]
