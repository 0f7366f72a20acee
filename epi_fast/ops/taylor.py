"""taylor_scores and taylor_accumulate_: first-order Taylor scores (sum over a channel of w * g,
squared or absolute), one operator call over many tensors; the accumulating form adds one
training step in place and skips a step whose gradients hold any non-finite value."""

from __future__ import annotations

import torch

from . import _checks as V
from . import _schema as S
from ._ext import _C  # noqa: F401  (loads the extension: torch.ops.epi_fast)

_taylor_scores = torch.ops.epi_fast.taylor_scores
_taylor_accumulate_ = torch.ops.epi_fast.taylor_accumulate_
_Tensor = torch.Tensor


def taylor_scores(params, grads, offsets=None, num_channels=None, mode: str = "square") -> torch.Tensor:
    """float32 [num_channels]: per channel f(sum over the rows that map to it of sum(w * g)), f =
    square or abs; tensor i's row r maps to channel offsets[i] + r (default: consecutive), and
    num_channels defaults to one past the highest channel mapped."""
    if (S.tensor_lists(params, grads) and (offsets is None or S.int_list(offsets, nonempty=True))
            and (num_channels is None or type(num_channels) is int) and type(mode) is str):
        offs = [] if offsets is None else offsets
        if num_channels is None:
            num_channels = V.natural_channels(params, offs)
    else:
        V.criterion(mode, V.TAYLOR_MODES, "mode")
        params, grads = V.pairs(params, grads)
        offs, num_channels = V.offsets(params, offsets, num_channels)
    return _taylor_scores(params, grads, offs, num_channels, mode)


def taylor_accumulate_(acc, skipped, params, grads, offsets=None, mode: str = "square", inv_scale=None) -> None:
    """Adds one step's Taylor scores into ``acc``; a step with a non-finite channel sum (an AMP
    overflow step) only increments ``skipped``. No host synchronisation on CUDA. ``inv_scale``
    (a one-element float32 tensor) multiplies the gradients: 1 / the loss scale."""
    # Every training step: in schema form (TaylorAccumulator's calls are) this is one operator
    # call, whose checks all come before its first write.
    if not (S.tensor_lists(params, grads) and isinstance(acc, _Tensor) and isinstance(skipped, _Tensor)
            and (offsets is None or S.int_list(offsets, nonempty=True))
            and (inv_scale is None or isinstance(inv_scale, _Tensor)) and type(mode) is str):
        V.criterion(mode, V.TAYLOR_MODES, "mode")
        params, grads = V.pairs(params, grads)
        V.accumulators(acc, skipped, params, inv_scale)
        offsets, _ = V.offsets(params, offsets, acc.numel())
    _taylor_accumulate_(acc, skipped, params, grads, [] if offsets is None else offsets, inv_scale, mode)


# Fake kernels: shapes and dtypes, and every check that needs no values (a meta tensor among the
# arguments dispatches here).

def _offsets_or_none(offsets):
    return list(offsets) if len(offsets) else None  # the schema's [] means consecutive


@torch.library.register_fake("epi_fast::taylor_scores")
def _(params, grads, offsets, num_channels, taylor_mode):
    V.criterion(taylor_mode, V.TAYLOR_MODES, "mode")
    params, grads = V.pairs(params, grads)
    V.offsets(params, _offsets_or_none(offsets), num_channels)
    return params[0].new_empty((num_channels,), dtype=torch.float32)


@torch.library.register_fake("epi_fast::taylor_accumulate_")
def _(acc, skipped, params, grads, offsets, inv_scale, taylor_mode):
    V.criterion(taylor_mode, V.TAYLOR_MODES, "mode")
    params, grads = V.pairs(params, grads)
    V.accumulators(acc, skipped, params, inv_scale)
    V.offsets(params, _offsets_or_none(offsets), acc.numel())
    return None
