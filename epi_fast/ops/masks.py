"""global_masks and global_masks_counts: global lowest-k masks and thresholds at several ratios
at once (and the per-segment kept counts of those masks), with min_keep protected per segment.

``min_keep`` is an int (the same minimum in every segment: the operators' default overload, the
per-epoch path) or one minimum per segment (a 1-D int64 tensor on any device, or a list or tuple
of ints: the ``.per_segment`` overload). A segment of size s protects min(s, its minimum).
"""

from __future__ import annotations

import torch

from . import _checks as V
from . import _schema as S
from ._ext import _C  # noqa: F401  (loads the extension: torch.ops.epi_fast)

_global_masks = torch.ops.epi_fast.global_masks.default
_global_masks_per_segment = torch.ops.epi_fast.global_masks.per_segment
_global_masks_counts = torch.ops.epi_fast.global_masks_counts.default
_global_masks_counts_per_segment = torch.ops.epi_fast.global_masks_counts.per_segment
_Tensor = torch.Tensor


def _in_schema_form(scores, ratios, segment_sizes) -> bool:
    return (isinstance(scores, _Tensor) and S.float_list(ratios)
            and (segment_sizes is None or S.int_list(segment_sizes, nonempty=True)))


def _mask_args(scores, ratios, segment_sizes, min_keep):
    """The reference's checks of global_masks' arguments, in its order, but those that read
    values the operator reads anyway (a min_keep tensor's entries, the NaN count): (ratios as
    floats, segment sizes as ints ([] for None), min_keep as an int or a tensor)."""
    V.scores_vector(scores)
    ratios_ = V.ratios(ratios)
    keep = V.min_keep(min_keep)
    sizes = None if segment_sizes is None else V.segment_sizes(segment_sizes, scores.numel())
    V.segment_keeps_form(keep, sizes)
    return ratios_, [] if sizes is None else sizes, keep


def global_masks(scores, ratios, segment_sizes=None, min_keep=1):
    """(masks bool [m, N], True = kept; thresholds float32 [m], the highest removed score per
    ratio, -inf where nothing is removed): k = floor(p * N + 0.5) lowest scores removed per ratio
    (ties: lower index first; -0.0 equals +0.0), the min_keep highest of each segment protected
    (an int for every segment, or a 1-D int64 tensor / list of ints with one per segment)."""
    if _in_schema_form(scores, ratios, segment_sizes):
        if type(min_keep) is int:
            return _global_masks(scores, ratios, [] if segment_sizes is None else segment_sizes, min_keep)
        if isinstance(min_keep, _Tensor) and segment_sizes is not None:
            return _global_masks_per_segment(scores, ratios, segment_sizes, min_keep)
    ratios_, sizes, keep = _mask_args(scores, ratios, segment_sizes, min_keep)
    if isinstance(keep, _Tensor):
        return _global_masks_per_segment(scores, ratios_, sizes, keep)
    return _global_masks(scores, ratios_, sizes, keep)


def global_masks_counts(scores, ratios, segment_sizes, min_keep=1):
    """``global_masks`` and ``layer_counts`` of its masks in one operator call: (masks bool
    [m, N], thresholds float32 [m], counts int64 [m, len(segment_sizes)]), the same values as
    the two calls. The epoch-end path: the counts are taken while the masks are in cache, and
    the dispatcher and the wrapper are crossed once."""
    if segment_sizes is None:
        raise ValueError("segment_sizes is None: counts are taken per segment, pass the layer sizes")
    if _in_schema_form(scores, ratios, segment_sizes):
        if type(min_keep) is int:
            return _global_masks_counts(scores, ratios, segment_sizes, min_keep)
        if isinstance(min_keep, _Tensor):
            return _global_masks_counts_per_segment(scores, ratios, segment_sizes, min_keep)
    ratios_, sizes, keep = _mask_args(scores, ratios, segment_sizes, min_keep)
    if isinstance(keep, _Tensor):
        return _global_masks_counts_per_segment(scores, ratios_, sizes, keep)
    return _global_masks_counts(scores, ratios_, sizes, keep)


# Fake kernels: shapes and dtypes, and every check that needs no values (a meta scores tensor
# dispatches here); the NaN count needs the scores' values, and a per-segment min_keep's entries
# (negative ones, and k against what they leave removable) need its values.

def _check_mask_args(scores, ratios, segment_sizes, min_keep) -> None:
    V.scores_vector(scores)
    ratios_ = V.ratios(list(ratios))
    keep = V.min_keep(min_keep)
    n = scores.shape[0]
    if not isinstance(n, int):  # a symbolic size under dynamic shapes: checked when it is known
        return
    sizes = V.segment_sizes(list(segment_sizes), n) if len(segment_sizes) else None
    V.segment_keeps_form(keep, sizes)
    if isinstance(keep, _Tensor):
        return
    ks = [V.removal_count(p, n) for p in ratios_]
    V.check_removable(ks, ratios_, n, V.unprotected_count(sizes, n, keep), keep)


def _fake_masks(scores, ratios, segment_sizes, min_keep):
    _check_mask_args(scores, ratios, segment_sizes, min_keep)
    m, n = len(ratios), scores.shape[0]
    return scores.new_empty((m, n), dtype=torch.bool), scores.new_empty((m,))


def _fake_masks_counts(scores, ratios, segment_sizes, min_keep):
    if not len(segment_sizes):
        raise ValueError("segment_sizes is empty: counts are taken per segment")
    _check_mask_args(scores, ratios, segment_sizes, min_keep)
    m, n = len(ratios), scores.shape[0]
    return (scores.new_empty((m, n), dtype=torch.bool), scores.new_empty((m,)),
            scores.new_empty((m, len(segment_sizes)), dtype=torch.int64))


for _name, _fake in (("global_masks", _fake_masks), ("global_masks.per_segment", _fake_masks),
                     ("global_masks_counts", _fake_masks_counts),
                     ("global_masks_counts.per_segment", _fake_masks_counts)):
    torch.library.register_fake(f"epi_fast::{_name}")(_fake)
