"""global_masks and global_masks_counts: global lowest-k masks and thresholds at several ratios
at once (and the per-segment kept counts of those masks), with min_keep protected per segment."""

from __future__ import annotations

import torch

from . import _checks as V
from . import _schema as S
from ._ext import _C  # noqa: F401  (loads the extension: torch.ops.epi_fast)

_global_masks = torch.ops.epi_fast.global_masks
_global_masks_counts = torch.ops.epi_fast.global_masks_counts
_Tensor = torch.Tensor


def _in_schema_form(scores, ratios, segment_sizes, min_keep) -> bool:
    return (isinstance(scores, _Tensor) and S.float_list(ratios) and type(min_keep) is int
            and (segment_sizes is None or S.int_list(segment_sizes, nonempty=True)))


def _mask_args(scores, ratios, segment_sizes, min_keep):
    """The reference's checks of global_masks' arguments, in its order, but the NaN count (the
    operator counts them): (ratios as floats, segment sizes as ints ([] for None), min_keep)."""
    V.scores_vector(scores)
    ratios_ = V.ratios(ratios)
    keep = V.min_keep(min_keep)
    sizes = [] if segment_sizes is None else V.segment_sizes(segment_sizes, scores.numel())
    return ratios_, sizes, keep


def global_masks(scores, ratios, segment_sizes=None, min_keep: int = 1):
    """(masks bool [m, N], True = kept; thresholds float32 [m], the highest removed score per
    ratio, -inf where nothing is removed): k = floor(p * N + 0.5) lowest scores removed per ratio
    (ties: lower index first; -0.0 equals +0.0), the min_keep highest of each segment protected."""
    if _in_schema_form(scores, ratios, segment_sizes, min_keep):
        return _global_masks(scores, ratios, [] if segment_sizes is None else segment_sizes, min_keep)
    return _global_masks(scores, *_mask_args(scores, ratios, segment_sizes, min_keep))


def global_masks_counts(scores, ratios, segment_sizes, min_keep: int = 1):
    """``global_masks`` and ``layer_counts`` of its masks in one operator call: (masks bool
    [m, N], thresholds float32 [m], counts int64 [m, len(segment_sizes)]), the same values as
    the two calls. The epoch-end path: the counts are taken while the masks are in cache, and
    the dispatcher and the wrapper are crossed once."""
    if segment_sizes is None:
        raise ValueError("segment_sizes is None: counts are taken per segment, pass the layer sizes")
    if _in_schema_form(scores, ratios, segment_sizes, min_keep):
        return _global_masks_counts(scores, ratios, segment_sizes, min_keep)
    return _global_masks_counts(scores, *_mask_args(scores, ratios, segment_sizes, min_keep))


# Fake kernels: shapes and dtypes, and every check that needs no values (a meta scores tensor
# dispatches here); the NaN count needs the values.

def _check_mask_args(scores, ratios, segment_sizes, min_keep) -> None:
    V.scores_vector(scores)
    ratios_ = V.ratios(list(ratios))
    keep = V.min_keep(min_keep)
    n = scores.shape[0]
    if not isinstance(n, int):  # a symbolic size under dynamic shapes: checked when it is known
        return
    sizes = V.segment_sizes(list(segment_sizes), n) if len(segment_sizes) else None
    ks = [V.removal_count(p, n) for p in ratios_]
    V.check_removable(ks, ratios_, n, V.unprotected_count(sizes, n, keep), keep)


@torch.library.register_fake("epi_fast::global_masks")
def _(scores, ratios, segment_sizes, min_keep):
    _check_mask_args(scores, ratios, segment_sizes, min_keep)
    m, n = len(ratios), scores.shape[0]
    return scores.new_empty((m, n), dtype=torch.bool), scores.new_empty((m,))


@torch.library.register_fake("epi_fast::global_masks_counts")
def _(scores, ratios, segment_sizes, min_keep):
    if not len(segment_sizes):
        raise ValueError("segment_sizes is empty: counts are taken per segment")
    _check_mask_args(scores, ratios, segment_sizes, min_keep)
    m, n = len(ratios), scores.shape[0]
    return (scores.new_empty((m, n), dtype=torch.bool), scores.new_empty((m,)),
            scores.new_empty((m, len(segment_sizes)), dtype=torch.int64))
