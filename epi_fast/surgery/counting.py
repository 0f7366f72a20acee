"""Parameters, MACs and FLOPs of a model for one call."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp

from ..layout import unwrap_model

__all__ = ["count_ops"]


def count_ops(model: nn.Module, example_inputs) -> dict:
    """params, MACs (multiply-adds, Torch-Pruning's counter) and FLOPs = 2 * MACs for one call
    with example_inputs. The counter works on a copy in eval mode: no side effect."""
    model = unwrap_model(model)
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    with torch.no_grad():
        macs, _ = tp.utils.count_ops_and_params(model, inputs)
    params = sum(p.numel() for p in model.parameters())
    return {"params": int(params), "macs": int(macs), "flops": int(2 * macs)}
