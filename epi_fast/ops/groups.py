"""group_reduce: coupled channels' scores combined into one score per group (sum, mean, max)
through a CSR index, in member order."""

from __future__ import annotations

import torch

from . import _checks as V
from ._ext import _C  # noqa: F401  (loads the extension: torch.ops.epi_fast)

_group_reduce = torch.ops.epi_fast.group_reduce
_Tensor = torch.Tensor


def group_reduce(scores, group_ptr, member_idx, reduce: str = "sum") -> torch.Tensor:
    """float32 [G]: group g combines scores[member_idx[group_ptr[g]:group_ptr[g + 1]]] by "sum",
    "mean" or "max" (NaN propagates), in member order; every group has at least one member."""
    if not (isinstance(scores, _Tensor) and isinstance(group_ptr, _Tensor) and isinstance(member_idx, _Tensor)
            and type(reduce) is str):
        V.scores_vector(scores)
        V.criterion(reduce, V.REDUCTIONS, "reduce")
        V.group_index_types(scores, group_ptr, member_idx)
    elif scores.is_cuda:
        # The CUDA kernel leaves the index's values unchecked (reading them is a synchronisation);
        # the reference's checks, in its order, read them here.
        V.scores_vector(scores)
        V.criterion(reduce, V.REDUCTIONS, "reduce")
        V.group_index(scores, group_ptr, member_idx)
    return _group_reduce(scores, group_ptr, member_idx, reduce)


def group_reduce_trusted(scores, group_ptr, member_idx, reduce: str = "sum") -> torch.Tensor:
    """group_reduce for an index built and checked once (the per-epoch path): no Python checks,
    so on CUDA no synchronisation; the operator still checks everything but the index's values
    there (and everything on the CPU, where that costs no synchronisation)."""
    return _group_reduce(scores, group_ptr, member_idx, reduce)


@torch.library.register_fake("epi_fast::group_reduce")
def _(scores, group_ptr, member_idx, reduce):
    V.scores_vector(scores)
    V.criterion(reduce, V.REDUCTIONS, "reduce")
    V.group_index_types(scores, group_ptr, member_idx)  # the values need data
    return scores.new_empty((group_ptr.shape[0] - 1,))
