"""Parameters, MACs and FLOPs of a model for one call."""

from __future__ import annotations

import torch.nn as nn

from ..layout import unwrap_model
from ..targets.flops import FlopCount, measure_flops

__all__ = ["count_ops"]


def count_ops(model: nn.Module, example_inputs, measured: FlopCount = None) -> dict:
    """params (unique parameters' numel), FLOPs of one call with example_inputs as
    `epi_fast.targets.measure_flops` counts them (FlopCounterMode: matrix products and
    convolutions, a multiply-add counting 2) and MACs = FLOPs / 2. No side effect on the
    model. `measured`: a FlopCount of this model and these inputs already taken."""
    model = unwrap_model(model)
    flops = (measured if measured is not None else measure_flops(model, example_inputs)).total
    params = sum(p.numel() for p in model.parameters())
    return {"params": int(params), "macs": int(flops // 2), "flops": int(flops)}
