"""The operators in plain PyTorch: the test oracle and the baseline the benchmarks beat.

Same names, signatures, validation and results as the compiled operators in ``epi_fast.ops``
(masks, thresholds and counts identical; scores within float tolerance). Written the way a
careful user would write them: vectorised where PyTorch makes that natural, one small loop
over layers where it does not.
"""

from __future__ import annotations

import math

import torch

from . import _checks as V


def _rows(t: torch.Tensor) -> torch.Tensor:
    # Explicit width: reshape(0, -1) is ambiguous and raises for a tensor with no rows.
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def channel_scores(tensors, criterion: str = "l2") -> torch.Tensor:
    tensors = V.tensor_list(tensors, "tensors")
    V.criterion(criterion, V.SCORE_CRITERIA)
    if criterion == "abs":
        V.abs_rows(tensors, "tensors")
    parts = []
    for t in tensors:
        rows = _rows(t).float()
        if criterion == "l1":
            parts.append(rows.abs().sum(dim=1))
        elif criterion == "l2":
            # Squares are summed in float32 as torch.linalg.vector_norm does on float32.
            parts.append(rows.square().sum(dim=1).sqrt())
        else:
            parts.append(rows.reshape(-1).abs())
    return torch.cat(parts)


def _taylor_raw(params, grads, offsets, num_channels):
    params, grads = V.pairs(params, grads)
    offs, num_channels = V.offsets(params, offsets, num_channels)
    raw = torch.zeros(num_channels, dtype=torch.float32, device=params[0].device)
    for p, g, o in zip(params, grads, offs):
        rows = p.shape[0]
        contrib = _rows(p.detach().float() * g.float()).sum(dim=1)
        raw[o:o + rows] += contrib
    return raw


def _taylor_finish(raw: torch.Tensor, mode: str) -> torch.Tensor:
    return raw.square() if mode == "square" else raw.abs()


def taylor_scores(params, grads, offsets=None, num_channels=None, mode: str = "square") -> torch.Tensor:
    V.criterion(mode, V.TAYLOR_MODES, "mode")
    return _taylor_finish(_taylor_raw(params, grads, offsets, num_channels), mode)


def taylor_accumulate_(acc, skipped, params, grads, offsets=None, mode: str = "square", inv_scale=None) -> None:
    V.criterion(mode, V.TAYLOR_MODES, "mode")
    V.accumulators(acc, skipped, V.pairs(params, grads)[0], inv_scale)
    raw = _taylor_raw(params, grads, offsets, acc.numel())
    if inv_scale is not None:
        raw = raw * inv_scale.float().reshape(())
    # A step is skipped when any channel's sum is non-finite: every inf/NaN gradient (an AMP
    # overflow step) produces one, and so does an overflowing product.
    if bool(torch.isfinite(raw).all()):
        acc += _taylor_finish(raw, mode)
    else:
        skipped += 1


def group_reduce(scores, group_ptr, member_idx, reduce: str = "sum") -> torch.Tensor:
    V.scores_vector(scores)
    V.criterion(reduce, V.REDUCTIONS, "reduce")
    V.group_index(scores, group_ptr, member_idx)
    lengths = group_ptr[1:] - group_ptr[:-1]
    gathered = scores[member_idx]
    group_of = torch.repeat_interleave(torch.arange(lengths.numel(), device=scores.device), lengths)
    out = torch.zeros(lengths.numel(), dtype=torch.float32, device=scores.device)
    if reduce == "max":
        out.fill_(float("-inf"))
        out.scatter_reduce_(0, group_of, gathered, reduce="amax", include_self=True)
        # scatter_reduce's amax does not promise NaN propagation; max over a NaN is NaN here.
        nan_groups = torch.zeros_like(out, dtype=torch.bool).index_put_(
            (group_of,), torch.isnan(gathered), accumulate=True
        )
        out[nan_groups] = float("nan")
        return out
    out.index_add_(0, group_of, gathered)
    if reduce == "mean":
        out /= lengths.float()
    return out


def _order(scores: torch.Tensor) -> torch.Tensor:
    # +0.0 turns -0.0 into +0.0 so the two compare equal and fall back to index order.
    return torch.sort(scores + 0.0, stable=True).indices


def global_masks(scores, ratios, segment_sizes=None, min_keep=1):
    V.scores_vector(scores)
    ratios_ = V.ratios(ratios)
    keep = V.min_keep(min_keep)  # an int, or a tensor of one minimum per segment
    n = scores.numel()
    sizes = None if segment_sizes is None else V.segment_sizes(segment_sizes, n)
    per_segment = V.segment_keeps(keep, sizes)  # its values as ints (None for an int)
    if per_segment is not None:
        keep = per_segment
    V.nan_count(scores)
    ks = [V.removal_count(p, n) for p in ratios_]
    V.check_removable(ks, ratios_, n, V.unprotected_count(sizes, n, keep), keep)

    device = scores.device
    order = _order(scores)
    protected = torch.zeros(n, dtype=torch.bool, device=device)
    if sizes is not None and (per_segment is not None or keep > 0):
        rank = torch.empty(n, dtype=torch.int64, device=device)
        rank[order] = torch.arange(n, device=device)
        seg = torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))
        # Within each segment, descending removal rank: the first min_keep of that segment are
        # the protected (all of it when its min_keep is past its size).
        by_seg = torch.argsort(seg * n + (n - 1 - rank))
        starts = torch.tensor([0] + sizes[:-1], device=device).cumsum(0)
        pos = torch.arange(n, device=device) - starts[seg[by_seg]]
        limit = keep if per_segment is None else torch.tensor(per_segment, device=device)[seg[by_seg]]
        protected[by_seg[pos < limit]] = True
    removable = order[~protected[order]]

    masks = torch.ones(len(ks), n, dtype=torch.bool, device=device)
    thresholds = torch.full((len(ks),), float("-inf"), dtype=torch.float32, device=device)
    for j, k in enumerate(ks):
        if k:
            masks[j, removable[:k]] = False
            thresholds[j] = scores[removable[k - 1]] + 0.0
    return masks, thresholds


def _segment_sums(values: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    csum = torch.nn.functional.pad(values.long().cumsum(dim=1), (1, 0))
    bounds = torch.tensor([0] + sizes, device=values.device).cumsum(0)
    return csum[:, bounds[1:]] - csum[:, bounds[:-1]]


def layer_counts(masks, segment_sizes) -> torch.Tensor:
    masks = V.masks_matrix(masks)
    sizes = V.segment_sizes(segment_sizes, masks.shape[1])
    return _segment_sums(masks, sizes)


def global_masks_counts(scores, ratios, segment_sizes, min_keep=1):
    if segment_sizes is None:
        raise ValueError("segment_sizes is None: counts are taken per segment, pass the layer sizes")
    masks, thresholds = global_masks(scores, ratios, segment_sizes, min_keep)
    return masks, thresholds, layer_counts(masks, segment_sizes)


def mask_overlap(a, b, segment_sizes=None):
    a, b = V.mask_pair(a, b)
    sizes = [a.shape[1]] if segment_sizes is None else V.segment_sizes(segment_sizes, a.shape[1])
    return _segment_sums(a & b, sizes), _segment_sums(a ^ b, sizes)
