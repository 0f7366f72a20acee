"""The optimizer through a prune: checked before anything changes, remapped after the cut.

The same optimizer object keeps working: the new Parameters replace the old ones in its param
groups (hyper-parameters kept) and every per-parameter state tensor (SGD momentum, Adam's
exp_avg / exp_avg_sq, ...) is sliced to the surviving entries; scalar state (step) is kept.
"""

from __future__ import annotations

from typing import Dict, Iterable, Set, Tuple

import torch
import torch.nn as nn

__all__ = ["check_optimizer_holds_model", "check_optimizer_for", "remap_optimizer", "gather"]


def _held(optimizer) -> Set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def check_optimizer_holds_model(optimizer, model: nn.Module) -> None:
    """TypeError if `optimizer` is not an optimizer; ValueError if it holds none of `model`'s
    trainable parameters (another model's optimizer, or one built before a prune)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    held = _held(optimizer)
    model_params = [p for p in model.parameters() if p.requires_grad]
    if model_params and not any(id(p) in held for p in model_params):
        raise ValueError("the optimizer holds none of the model's parameters: pass the model's own optimizer")


def _name_of(model, module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name or type(model).__name__
    return type(module).__name__


def check_optimizer_for(optimizer, model: nn.Module, params: Iterable[Tuple[nn.Module, str, nn.Parameter]]) -> None:
    """Every trainable parameter that the prune changes (`params`: (owner, attribute,
    parameter)) is in the optimizer, and its state tensors have its shape or are scalars."""
    check_optimizer_holds_model(optimizer, model)
    held = _held(optimizer)
    for module, attr, p in params:
        if p.requires_grad and id(p) not in held:
            raise ValueError(f"the optimizer does not hold {_name_of(model, module)}.{attr}, which pruning changes")
        for key, value in optimizer.state.get(p, {}).items():
            if isinstance(value, torch.Tensor) and value.shape != p.shape and value.numel() > 1:
                raise ValueError(
                    f"cannot remap optimizer state {key!r} of {_name_of(model, module)}.{attr}: shape "
                    f"{tuple(value.shape)} is neither the parameter's {tuple(p.shape)} nor a scalar"
                )


def gather(tensor: torch.Tensor, flat_idx: torch.Tensor, shape) -> torch.Tensor:
    """The entries `flat_idx` of `tensor` (flattened), shaped `shape`."""
    return tensor.reshape(-1).index_select(0, flat_idx.to(tensor.device)).view(shape)


def remap_optimizer(optimizer, replaced: Dict[int, Tuple[nn.Parameter, nn.Parameter, torch.Tensor]]) -> None:
    """replaced: id(old) -> (old, new, flat indices of old kept in new)."""
    for group in optimizer.param_groups:
        group["params"] = [replaced[id(p)][1] if id(p) in replaced else p for p in group["params"]]
    for old, new, idx in replaced.values():
        state = optimizer.state.pop(old, None)
        if state is None:
            continue
        optimizer.state[new] = {
            key: gather(value, idx, new.shape)
            if isinstance(value, torch.Tensor) and value.shape == old.shape
            else value
            for key, value in state.items()
        }
