"""The Python side of the operators' argument checks: the reference's checks, and the ones the
compiled operators' wrappers and fake kernels use.

The compiled operators check their arguments in C++ (csrc/ops/checks.h and the family headers)
with these same messages, word for word and in the same order, so the reference, the CPU and
the CUDA operators refuse the same inputs alike (the error tables of tests/ops/test_<family>.py).
The wrappers run only the parts that turn an argument into what the schema takes (``*_list``, ``integer``, the
type checks), and only when it is not already in that form; the fake kernels run the rest, for
meta tensors and tracing. Every check names the offending argument.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Sequence

import torch

SCORE_CRITERIA = ("l1", "l2", "abs")
TAYLOR_MODES = ("square", "abs")
REDUCTIONS = ("sum", "mean", "max")
FLOATING = (torch.float32, torch.float16, torch.bfloat16)


def tensor_list(tensors, name: str) -> list[torch.Tensor]:
    """A non-empty list of floating tensors with a dim 0, sharing one device and one dtype."""
    if isinstance(tensors, torch.Tensor):
        raise TypeError(f"{name} must be a list or tuple of tensors, not a single tensor")
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(tensors).__name__}")
    tensors = list(tensors)
    if not tensors:
        raise ValueError(f"{name} is empty: pass at least one tensor")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{i}] is a {type(t).__name__}, not a tensor")
        if t.dim() == 0:
            raise ValueError(f"{name}[{i}] is 0-dimensional: channels are read along dim 0")
        if t.dtype not in FLOATING:
            raise TypeError(f"{name}[{i}] has dtype {t.dtype}; supported: float32, float16, bfloat16")
        if t.is_sparse:
            raise TypeError(f"{name}[{i}] is sparse; pass dense tensors")
    device, dtype = tensors[0].device, tensors[0].dtype
    for i, t in enumerate(tensors):
        if t.device != device:
            raise ValueError(f"{name} mixes devices: {name}[0] is on {device}, {name}[{i}] on {t.device}")
        if t.dtype != dtype:
            raise TypeError(f"{name} mixes dtypes: {name}[0] is {dtype}, {name}[{i}] is {t.dtype}")
    return tensors


def criterion(value: str, allowed: Sequence[str], name: str = "criterion") -> str:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, allowed))}")
    return value


def abs_rows(tensors: list[torch.Tensor], name: str) -> None:
    for i, t in enumerate(tensors):
        cols = t[0].numel() if t.shape[0] else 1
        if t.shape[0] and cols != 1:
            raise ValueError(
                f'criterion "abs" scores one value per channel, but {name}[{i}] has {cols} values '
                f'per channel (shape {tuple(t.shape)}); use "l1" or "l2" for filters'
            )


def ratio_list(values) -> list[float]:
    """Ratios as Python floats (float64), from a float, a sequence or a 1-D tensor; their values
    unchecked (``ratios`` checks them).

    A float32 tensor's ratio is the value it holds (0.3 stored in float32 is 0.30000001192...),
    which is what the k rounding must see.
    """
    if isinstance(values, torch.Tensor):
        if values.dim() > 1:
            raise ValueError(f"ratios must be a float, a sequence or a 1-D tensor; got a {values.dim()}-D tensor")
        if not (values.is_floating_point() or values.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"ratios tensor has dtype {values.dtype}; expected a floating dtype")
        out = [float(v) for v in values.detach().reshape(-1).double().cpu().tolist()]
    elif isinstance(values, bool):
        raise TypeError("ratios must be numbers, not bool")
    elif isinstance(values, numbers.Real):
        out = [float(values)]
    elif isinstance(values, (list, tuple)):
        out = []
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"ratios[{i}] is {v!r}; expected a number")
            out.append(float(v))
    else:
        raise TypeError(f"ratios must be a float, a sequence of floats or a 1-D tensor, got {type(values).__name__}")
    return out


def ratios(values) -> list[float]:
    """``ratio_list``, then: at least one, each in [0, 1)."""
    out = ratio_list(values)
    if not out:
        raise ValueError("ratios is empty: pass at least one ratio")
    for i, p in enumerate(out):
        if not (0.0 <= p < 1.0):  # also rejects NaN
            raise ValueError(f"ratio {p!r} (ratios[{i}]) is outside [0, 1)")
    return out


def removal_count(ratio: float, n: int) -> int:
    """k = floor(p * N + 0.5) in float64: the contract's rounding, shared with the kernels."""
    return int(math.floor(ratio * float(n) + 0.5))


def scores_vector(scores, name: str = "scores") -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(scores).__name__}")
    if scores.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one score per channel), got shape {tuple(scores.shape)}")
    if scores.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {scores.dtype}")
    return scores


def segment_list(sizes, name: str = "segment_sizes") -> list[int]:
    """Segment sizes as Python ints, from a sequence or a 1-D integer tensor; at least one. Their
    values unchecked (``segment_sizes`` checks them)."""
    if isinstance(sizes, torch.Tensor):
        if sizes.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(sizes.shape)}")
        if sizes.is_floating_point():
            raise TypeError(f"{name} must hold integers, got {sizes.dtype}")
        sizes = sizes.detach().cpu().tolist()
    try:
        # operator.index, not int(): a size of 2.5 must be an error, not silently 2.
        out = [operator.index(s) for s in sizes]
    except TypeError:
        raise TypeError(f"{name} must be a sequence of integers, got {sizes!r}") from None
    if not out:
        raise ValueError(f"{name} is empty")
    return out


def segment_sizes(sizes, total: int, name: str = "segment_sizes") -> list[int]:
    """``segment_list``, then: none negative, adding up to ``total``."""
    out = segment_list(sizes, name)
    for i, s in enumerate(out):
        if s < 0:
            raise ValueError(f"{name}[{i}] = {s} is negative")
    if sum(out) != total:
        raise ValueError(f"{name} add up to {sum(out)}, but there are {total} channels")
    return out


def min_keep(value) -> int | torch.Tensor:
    """min_keep's form: an int for every segment (non-negative), or one minimum per segment, a
    1-D int64 tensor (on any device, returned as it is) or a list or tuple of ints (returned as
    a CPU int64 tensor). A tensor's values are checked by ``segment_keeps``, after the segment
    sizes: the wrappers never read them (see csrc/ops/masks.h)."""
    if isinstance(value, torch.Tensor):
        if value.dtype != torch.int64:
            raise TypeError(f"min_keep tensor has dtype {value.dtype}; expected torch.int64")
        if value.dim() != 1:
            raise ValueError(
                f"min_keep must be an int or a 1-D tensor (one minimum per segment), got shape {tuple(value.shape)}"
            )
        return value
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"min_keep[{i}] is {v!r}; expected an integer")
            if not -(2**63) <= v < 2**63:
                raise ValueError(f"min_keep[{i}] = {v} does not fit in int64")
        return torch.tensor([int(v) for v in value], dtype=torch.int64)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"min_keep must be a non-negative integer, got {value!r}")
    return int(value)


def segment_keeps_form(keep, sizes: list[int] | None) -> None:
    """A per-segment min_keep (a tensor from ``min_keep``) needs segments and one entry per
    segment; an int needs nothing. Values unread (the fake kernels have none)."""
    if not isinstance(keep, torch.Tensor):
        return
    if sizes is None:
        raise ValueError("min_keep holds one minimum per segment, but no segment_sizes were given")
    entries = keep.shape[0]
    if isinstance(entries, int) and entries != len(sizes):
        raise ValueError(f"min_keep must have one entry per segment ({len(sizes)}), got {entries}")


def segment_keeps(keep, sizes: list[int] | None) -> list[int] | None:
    """``segment_keeps_form``, then a per-segment min_keep's values (none negative), as ints;
    None for an int min_keep. Reads the tensor (a synchronisation when it is on a GPU)."""
    segment_keeps_form(keep, sizes)
    if not isinstance(keep, torch.Tensor):
        return None
    out = keep.detach().cpu().tolist()
    for i, v in enumerate(out):
        if v < 0:
            raise ValueError(f"min_keep[{i}] = {v} is negative")
    return out


def unprotected_count(sizes: list[int] | None, total: int, keep: int | list[int]) -> int:
    """The channels left removable: a segment of size s protects min(s, its min_keep), so a
    minimum past the size protects the whole segment (both forms alike)."""
    if sizes is None:
        return total
    keeps = [keep] * len(sizes) if isinstance(keep, int) else keep
    return total - sum(min(s, c) for s, c in zip(sizes, keeps))


def check_removable(ks: list[int], ratios_: list[float], n: int, free: int, keep: int | list[int]) -> None:
    for k, p in zip(ks, ratios_):
        if k > free:
            by = f"min_keep={keep} per segment" if isinstance(keep, int) else "the per-segment min_keep"
            raise ValueError(f"ratio {p} removes {k} of {n} channels, but {by} leaves only {free} removable")


def nan_count(scores: torch.Tensor) -> None:
    bad = int(torch.isnan(scores).sum())
    if bad:
        raise ValueError(f"scores contain {bad} NaN value{'s' if bad != 1 else ''}; masks are undefined")


def masks_matrix(masks, name: str = "masks") -> torch.Tensor:
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(masks).__name__}")
    if masks.dtype != torch.bool:
        raise TypeError(f"{name} must be bool, got {masks.dtype}")
    if masks.dim() == 1:
        masks = masks.unsqueeze(0)
    if masks.dim() != 2:
        raise ValueError(f"{name} must be [ratios, channels], got shape {tuple(masks.shape)}")
    return masks


def mask_pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """Two masks to compare: bool [ratios, channels] each, same shape, same device."""
    a = masks_matrix(a, "a")
    b = masks_matrix(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a has shape {tuple(a.shape)} but b {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"a is on {a.device} but b on {b.device}")
    return a, b


def group_index_types(scores: torch.Tensor, group_ptr, member_idx) -> None:
    """A CSR index's form: two 1-D int64 tensors on the scores' device, one group at least."""
    for name, t in (("group_ptr", group_ptr), ("member_idx", member_idx)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.dim() != 1:
            raise TypeError(f"{name} must be a 1-D int64 tensor")
        if t.device != scores.device:
            raise ValueError(f"{name} is on {t.device}, scores on {scores.device}")
    if group_ptr.numel() < 2:
        raise ValueError("group_ptr needs at least two entries (one group)")


def group_index(scores: torch.Tensor, group_ptr, member_idx) -> None:
    """``group_index_types``, then the values: every group has members, every member is a score
    (on CUDA, reading them synchronises)."""
    group_index_types(scores, group_ptr, member_idx)
    ptr = group_ptr.cpu()
    if int(ptr[0]) != 0 or int(ptr[-1]) != member_idx.numel():
        raise ValueError(
            f"group_ptr must start at 0 and end at len(member_idx)={member_idx.numel()}, "
            f"got {int(ptr[0])}..{int(ptr[-1])}"
        )
    if bool((ptr[1:] <= ptr[:-1]).any()):
        raise ValueError("group_ptr must increase strictly: every group needs at least one member")
    if member_idx.numel():
        lo, hi = int(member_idx.min()), int(member_idx.max())
        if lo < 0 or hi >= scores.numel():
            raise ValueError(f"member_idx holds {lo}..{hi}, outside the {scores.numel()} scores")


def int_list(values, name: str) -> list[int]:
    """Python ints from a sequence of integers (numpy integers, 0-d integer tensors included)."""
    try:
        # operator.index, not int(): an offset of 2.5 must be an error, not silently 2.
        return [operator.index(v) for v in values]
    except TypeError:
        raise TypeError(f"{name} must be a sequence of integers, got {values!r}") from None


def integer(value, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None


def natural_channels(tensors: list[torch.Tensor], offsets_: list[int] | None) -> int:
    """The channel count that ``offsets`` gives when ``num_channels`` is None: one past the
    highest row mapped (consecutive rows without offsets), as ``offsets`` computes it. Only for
    a list of tensors that is checked afterwards: a 0-dimensional tensor gives 0 here and is named
    by the check."""
    try:
        rows = map(len, tensors)  # len() is dim 0, at C speed
        return max(map(operator.add, offsets_, rows), default=0) if offsets_ else sum(rows)
    except TypeError:  # len() of a 0-d tensor
        return 0


def offsets(tensors: list[torch.Tensor], offsets_, num_channels):
    rows = [t.shape[0] for t in tensors]
    if offsets_ is None:
        offs, acc = [], 0
        for r in rows:
            offs.append(acc)
            acc += r
        natural = acc
    else:
        offs = int_list(offsets_, "offsets")
        if len(offs) != len(tensors):
            raise ValueError(f"offsets has {len(offs)} entries for {len(tensors)} tensors")
        natural = max((o + r for o, r in zip(offs, rows)), default=0)
    num_channels = natural if num_channels is None else integer(num_channels, "num_channels")
    for i, (o, r) in enumerate(zip(offs, rows)):
        if o < 0 or o + r > num_channels:
            raise ValueError(f"tensor {i} maps rows {o}..{o + r - 1} outside the {num_channels} channels")
    return offs, num_channels


def pairs(params, grads) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    params = tensor_list(params, "params")
    grads = tensor_list(grads, "grads")
    if len(params) != len(grads):
        raise ValueError(f"{len(params)} params but {len(grads)} grads")
    if params[0].dtype != grads[0].dtype:
        raise TypeError(f"params are {params[0].dtype} but grads are {grads[0].dtype}")
    for i, (p, g) in enumerate(zip(params, grads)):
        if p.shape != g.shape:
            raise ValueError(f"params[{i}] has shape {tuple(p.shape)} but grads[{i}] {tuple(g.shape)}")
        if p.device != g.device:
            raise ValueError(f"params[{i}] is on {p.device} but grads[{i}] on {g.device}")
    return params, grads


def _dense(t) -> bool:
    return isinstance(t, torch.Tensor) and t.layout == torch.strided


def accumulators(acc, skipped, params: list[torch.Tensor], inv_scale) -> None:
    """taylor_accumulate_'s state and scale: acc float32 [C] (dense, contiguous), skipped one
    int64, all on the params' device; inv_scale None or a one-element floating tensor there too."""
    if not _dense(acc) or acc.dtype != torch.float32 or acc.dim() != 1:
        raise TypeError("acc must be a 1-D float32 tensor")
    if not acc.is_contiguous():  # the kernels add into it in place
        raise ValueError("acc must be contiguous")
    if not _dense(skipped) or skipped.dtype != torch.int64 or skipped.numel() != 1:
        raise TypeError("skipped must be a one-element int64 tensor")
    if skipped.device != acc.device:
        raise ValueError(f"skipped is on {skipped.device}, acc on {acc.device}")
    if params[0].device != acc.device:
        raise ValueError(f"params are on {params[0].device}, acc on {acc.device}")
    if inv_scale is None:
        return
    if not _dense(inv_scale) or not inv_scale.is_floating_point() or inv_scale.numel() != 1:
        got = (f"a {inv_scale.dtype} tensor of shape {tuple(inv_scale.shape)}" if isinstance(inv_scale, torch.Tensor)
               else repr(inv_scale))
        raise TypeError(
            f"inv_scale must be None or a one-element float32 tensor (e.g. 1 / scaler.get_scale() as a tensor), got {got}"
        )
    if inv_scale.device != acc.device:
        raise ValueError(f"inv_scale is on {inv_scale.device}, acc on {acc.device}")
