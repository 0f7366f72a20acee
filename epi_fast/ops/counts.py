"""layer_counts and mask_overlap: kept counts per segment of masks, and the intersection and
Hamming counts between two sets of masks, per segment."""

from __future__ import annotations

import torch

from . import _checks as V
from . import _schema as S
from ._ext import _C  # noqa: F401  (loads the extension: torch.ops.epi_fast)

_layer_counts = torch.ops.epi_fast.layer_counts
_mask_overlap = torch.ops.epi_fast.mask_overlap
_Tensor = torch.Tensor


def layer_counts(masks, segment_sizes) -> torch.Tensor:
    """int64 [m, len(segment_sizes)]: the kept (True) entries of each mask row per segment; a 1-D
    mask is one row."""
    if not (isinstance(masks, _Tensor) and S.int_list(segment_sizes, nonempty=True)):
        masks = V.masks_matrix(masks)
        segment_sizes = V.segment_sizes(segment_sizes, masks.shape[1])
    return _layer_counts(masks, segment_sizes)


def mask_overlap(a, b, segment_sizes=None):
    """(intersection int64 [m, S], differing int64 [m, S]) of two masks of one shape; no
    segments = one segment of all N."""
    if not (isinstance(a, _Tensor) and isinstance(b, _Tensor)
            and (segment_sizes is None or S.int_list(segment_sizes, nonempty=True))):
        a, b = V.mask_pair(a, b)
        segment_sizes = None if segment_sizes is None else V.segment_sizes(segment_sizes, a.shape[1])
    return _mask_overlap(a, b, [] if segment_sizes is None else segment_sizes)


# Fake kernels: shapes and dtypes, and every check that needs no values.

def _sizes(segment_sizes, n):
    if not isinstance(n, int):  # a symbolic size under dynamic shapes: checked when it is known
        return list(segment_sizes)
    return V.segment_sizes(list(segment_sizes), n)


@torch.library.register_fake("epi_fast::layer_counts")
def _(masks, segment_sizes):
    masks = V.masks_matrix(masks)
    sizes = _sizes(segment_sizes, masks.shape[1])
    return masks.new_empty((masks.shape[0], len(sizes)), dtype=torch.int64)


@torch.library.register_fake("epi_fast::mask_overlap")
def _(a, b, segment_sizes):
    a, b = V.mask_pair(a, b)
    s = len(_sizes(segment_sizes, a.shape[1])) if len(segment_sizes) else 1
    shape = (a.shape[0], s)
    return a.new_empty(shape, dtype=torch.int64), a.new_empty(shape, dtype=torch.int64)
