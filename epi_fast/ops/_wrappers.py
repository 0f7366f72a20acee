"""The compiled operators' Python face: argument checks, then torch.ops.epi_fast.

Each function calls the operator registered by the extension for the tensors' device, with
clear errors before any kernel runs: most validate in Python first; the calls made every
training step or every epoch (channel_scores, taylor_accumulate_ with offsets, global_masks,
global_masks_counts) call the operator first, whose C++ checks refuse the same inputs, and
run the Python checks only to name a refusal in the reference's words. Fake (meta) kernels let
the operators trace under torch.compile; those of the operator-first calls check too.
"""

from __future__ import annotations

import torch

from . import _checks as V
from ._ext import _C  # noqa: F401  (registers torch.ops.epi_fast)

_ops = torch.ops.epi_fast


def channel_scores(tensors, criterion: str = "l2") -> torch.Tensor:
    # The operator checks every tensor itself before any kernel runs (csrc/checks.h). The Python
    # checks, about 1 us per tensor (a third of the whole call on a 1M-parameter model), run
    # only when it refuses, to name the problem in the reference's words; where they find
    # nothing, the second call below raises the operator's own error.
    if isinstance(tensors, (list, tuple)) and criterion in V.SCORE_CRITERIA:
        try:
            return _ops.channel_scores(tensors, criterion)
        except (RuntimeError, TypeError, ValueError, IndexError, NotImplementedError):
            pass
    tensors = V.tensor_list(tensors, "tensors")
    V.criterion(criterion, V.SCORE_CRITERIA)
    if criterion == "abs":
        V.abs_rows(tensors, "tensors")
    return _ops.channel_scores(tensors, criterion)


def taylor_scores(params, grads, offsets=None, num_channels=None, mode: str = "square") -> torch.Tensor:
    V.criterion(mode, V.TAYLOR_MODES, "mode")
    params, grads = V.pairs(params, grads)
    offs, num_channels = V.offsets(params, offsets, num_channels)
    return _ops.taylor_scores(params, grads, offs, num_channels, mode)


def taylor_accumulate_(acc, skipped, params, grads, offsets=None, mode: str = "square", inv_scale=None) -> None:
    """Adds one step's Taylor scores into ``acc``; a step with a non-finite channel sum (an
    AMP overflow step) only increments ``skipped``. No host synchronisation on CUDA."""
    # Called every training step: with the offsets given (TaylorAccumulator passes them), the
    # operator's own checks, which all come before its first write, stand in for the Python ones
    # (~2 us per tensor pair); those run only to explain a refusal, as in channel_scores.
    if (offsets is not None and mode in V.TAYLOR_MODES and isinstance(params, (list, tuple))
            and isinstance(grads, (list, tuple))):
        try:
            _ops.taylor_accumulate_(acc, skipped, params, grads, offsets, inv_scale, mode)
            return
        except (RuntimeError, TypeError, ValueError, IndexError, NotImplementedError):
            pass
    V.criterion(mode, V.TAYLOR_MODES, "mode")
    params, grads = V.pairs(params, grads)
    V.accumulators(acc, skipped, params, inv_scale)
    offs, _ = V.offsets(params, offsets, acc.numel())
    _ops.taylor_accumulate_(acc, skipped, params, grads, offs, inv_scale, mode)


def group_reduce(scores, group_ptr, member_idx, reduce: str = "sum") -> torch.Tensor:
    V.scores_vector(scores)
    V.criterion(reduce, V.REDUCTIONS, "reduce")
    V.group_index(scores, group_ptr, member_idx)
    return _ops.group_reduce(scores, group_ptr, member_idx, reduce)


def group_reduce_trusted(scores, group_ptr, member_idx, reduce: str = "sum") -> torch.Tensor:
    """group_reduce without re-validating an index built and checked once (the per-epoch path:
    validating the index costs a device synchronisation on CUDA)."""
    return _ops.group_reduce(scores, group_ptr, member_idx, reduce)


def _schema_args(ratios, segment_sizes, min_keep) -> bool:
    """Whether the arguments are already what the schema takes (float[], int[], int) with the
    meaning the Python checks give them. Anything else (a single float, tensors, numpy scalars,
    bools, and an empty segment_sizes, which the schema reads as "no segments" and the API
    refuses) goes through the Python checks, which convert or refuse it."""
    return (
        type(ratios) in (list, tuple)
        and all(type(p) is float for p in ratios)
        and (segment_sizes is None or (type(segment_sizes) in (list, tuple) and len(segment_sizes) > 0
                                       and all(type(s) is int for s in segment_sizes)))
        and type(min_keep) is int
    )


def _mask_args(scores, ratios, segment_sizes, min_keep):
    """The Python checks of global_masks' arguments, as the schema takes them: (ratios as
    floats, segment sizes as ints ([] for None), min_keep)."""
    V.scores_vector(scores)
    ratios_ = V.ratios(ratios)
    keep = V.min_keep(min_keep)
    sizes = [] if segment_sizes is None else V.segment_sizes(segment_sizes, scores.numel())
    return ratios_, sizes, keep


def global_masks(scores, ratios, segment_sizes=None, min_keep: int = 1):
    # Operator first, as in channel_scores: the kernels check scores, ratios, segment sizes,
    # min_keep and NaN before writing anything (csrc/checks.h); the Python checks run only to
    # explain a refusal in the reference's words.
    if _schema_args(ratios, segment_sizes, min_keep):
        try:
            return _ops.global_masks(scores, ratios, [] if segment_sizes is None else segment_sizes, min_keep)
        except (RuntimeError, TypeError, ValueError, IndexError, NotImplementedError):
            pass
    return _ops.global_masks(scores, *_mask_args(scores, ratios, segment_sizes, min_keep))


def layer_counts(masks, segment_sizes) -> torch.Tensor:
    masks = V.masks_matrix(masks)
    sizes = V.segment_sizes(segment_sizes, masks.shape[1])
    return _ops.layer_counts(masks, sizes)


def global_masks_counts(scores, ratios, segment_sizes, min_keep: int = 1):
    """``global_masks`` and ``layer_counts`` of its masks in one operator call: (masks bool
    [m, N], thresholds float32 [m], counts int64 [m, len(segment_sizes)]), the same values as
    the two calls. The epoch-end path: the counts are taken while the masks are in cache, and
    the dispatcher and these checks are crossed once."""
    if segment_sizes is not None and _schema_args(ratios, segment_sizes, min_keep):
        try:
            return _ops.global_masks_counts(scores, ratios, segment_sizes, min_keep)
        except (RuntimeError, TypeError, ValueError, IndexError, NotImplementedError):
            pass
    ratios_, sizes, keep = _mask_args(scores, ratios, segment_sizes, min_keep)
    if segment_sizes is None:
        raise ValueError("segment_sizes is None: counts are taken per segment, pass the layer sizes")
    return _ops.global_masks_counts(scores, ratios_, sizes, keep)


def mask_overlap(a, b, segment_sizes=None):
    a, b = V.mask_pair(a, b)
    sizes = [] if segment_sizes is None else V.segment_sizes(segment_sizes, a.shape[1])
    return _ops.mask_overlap(a, b, sizes)


# Fake kernels: shapes and dtypes only, so the operators trace under torch.compile.

@torch.library.register_fake("epi_fast::channel_scores")
def _(tensors, criterion):
    # The dispatcher sends a list that holds any meta tensor here, whatever the others' devices:
    # check the list as the CPU and CUDA kernels do.
    V.tensor_list(tensors, "tensors")
    return tensors[0].new_empty((sum(t.shape[0] for t in tensors),), dtype=torch.float32)


@torch.library.register_fake("epi_fast::taylor_scores")
def _(params, grads, offsets, num_channels, taylor_mode):
    return params[0].new_empty((num_channels,), dtype=torch.float32)


@torch.library.register_fake("epi_fast::taylor_accumulate_")
def _(acc, skipped, params, grads, offsets, inv_scale, taylor_mode):
    # Any meta tensor among the arguments routes the call here: check as the kernels do, so
    # that the wrapper's operator-first call cannot pass over a mixed-device argument.
    V.criterion(taylor_mode, V.TAYLOR_MODES, "mode")
    params, grads = V.pairs(params, grads)
    V.accumulators(acc, skipped, params, inv_scale)
    V.offsets(params, offsets, acc.numel())
    return None


@torch.library.register_fake("epi_fast::group_reduce")
def _(scores, group_ptr, member_idx, reduce):
    return scores.new_empty((group_ptr.shape[0] - 1,))


def _check_mask_args(scores, ratios, segment_sizes, min_keep) -> None:
    # A meta scores tensor routes the wrapper's operator-first call here: refuse what the
    # kernels refuse (all but NaN, which needs the values).
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


@torch.library.register_fake("epi_fast::layer_counts")
def _(masks, segment_sizes):
    return masks.new_empty((masks.shape[0], len(segment_sizes)), dtype=torch.int64)


@torch.library.register_fake("epi_fast::mask_overlap")
def _(a, b, segment_sizes):
    s = len(segment_sizes) if segment_sizes else 1
    shape = (a.shape[0], s)
    return a.new_empty(shape, dtype=torch.int64), a.new_empty(shape, dtype=torch.int64)
