"""The compiled operators: their Python face, the fake kernels that let them trace under
``torch.compile``, the plain-PyTorch oracle (``epi_fast.ops.reference``) and the loader of the
extension.

Importing this package loads the extension (a missing or stale build raises ImportError with
the command that rebuilds it) and registers ``torch.ops.epi_fast``.
"""

from __future__ import annotations

from ._info import OPS, info
from ._wrappers import group_reduce_trusted  # noqa: F401  (internal: an index checked once)
from ._wrappers import (
    channel_scores,
    global_masks,
    global_masks_counts,
    group_reduce,
    layer_counts,
    mask_overlap,
    taylor_accumulate_,
    taylor_scores,
)

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
