"""channel_scores: per-output-channel L1 / L2 norms, or abs of one value per channel, of many
tensors in one operator call."""

from __future__ import annotations

import torch

from . import _checks as V
from . import _schema as S
from ._ext import _C  # noqa: F401  (loads the extension: torch.ops.epi_fast)

_channel_scores = torch.ops.epi_fast.channel_scores


def channel_scores(tensors, criterion: str = "l2") -> torch.Tensor:
    """float32 [sum of dim-0 sizes]: "l1" / "l2" norms of each tensor's rows (all but dim 0), or
    "abs" of tensors with one value per row (BatchNorm gamma). One device, one dtype (float32,
    float16 or bfloat16) for all; non-finite inputs give non-finite scores."""
    if not (S.tensor_lists(tensors) and type(criterion) is str):
        tensors = V.tensor_list(tensors, "tensors")
        V.criterion(criterion, V.SCORE_CRITERIA)
        if criterion == "abs":
            V.abs_rows(tensors, "tensors")
    return _channel_scores(tensors, criterion)


@torch.library.register_fake("epi_fast::channel_scores")
def _(tensors, criterion):
    # A list that holds any meta tensor dispatches here, whatever the others' devices: check it
    # as the CPU and CUDA kernels do.
    tensors = V.tensor_list(tensors, "tensors")
    V.criterion(criterion, V.SCORE_CRITERIA)
    if criterion == "abs":
        V.abs_rows(tensors, "tensors")
    return tensors[0].new_empty((sum(t.shape[0] for t in tensors),), dtype=torch.float32)
