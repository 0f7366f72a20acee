"""FLOPs of one forward call, measured with `torch.utils.flop_counter.FlopCounterMode`.

What is counted, and why:

- the matrix products and convolutions that FlopCounterMode has formulas for, a multiply-add
  counting 2 (element-wise work such as BatchNorm, activations and bias adds is not counted);
- the model runs in eval mode with autograd on: PyTorch's fused inference fast paths (e.g.
  `nn.MultiheadAttention` under `no_grad` in eval mode) call kernels that FlopCounterMode does
  not know and would make attention vanish from the count; with autograd on they are not taken;
- the CPU's fused attention kernel (`_scaled_dot_product_flash_attention_for_cpu`) has no
  formula in PyTorch; it gets the same formula as the other scaled-dot-product kernels.

Every module's training flag is restored afterwards and BatchNorm statistics are not updated
(eval mode), so measuring has no side effect on the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..layout.trace import call_model, unwrap_model

__all__ = ["FlopCount", "FlopProbe", "measure_flops", "flop_counter", "EXTRA_FLOP_FORMULAS"]


def _cpu_flash_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


EXTRA_FLOP_FORMULAS: Dict[Any, Any] = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    EXTRA_FLOP_FORMULAS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_sdpa_flop


def flop_counter() -> FlopCounterMode:
    """The FlopCounterMode that epi_fast counts with (the standard one plus the CPU's fused
    attention formula); tests use it to check achieved FLOPs independently of the cost model."""
    return FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)


@dataclass
class FlopCount:
    """total: FLOPs of one call; own: per module (by qualified name, "" for the root), the FLOPs
    of the ops it ran itself (not inside a child module), split by op name."""

    total: int
    own: Dict[str, Dict[str, int]]


class FlopProbe:
    """Counts the one call of `model` made inside it, exactly as `measure_flops` does (eval
    mode, autograd on, the same counter; every module's training flag restored on exit); the
    result is `count` (a FlopCount) once the block exits without an error.

    `measure_flops` is this around `call_model`. A caller that runs the model anyway can count
    in that same pass instead of running it again: `epi_fast.prune` enters it around the
    dependency-graph trace's forward call (`group_layout(..., observe=probe)`), which already
    runs in eval mode with autograd on.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = unwrap_model(model)
        self.count: Optional[FlopCount] = None
        self._modes = None
        self._grad = None
        self._counter = None

    def __enter__(self) -> "FlopProbe":
        if self._counter is not None:
            raise RuntimeError("a FlopProbe counts one call; it is in use already")
        self.count = None
        self._modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self._grad = torch.enable_grad()
        self._grad.__enter__()
        self._counter = flop_counter()
        try:
            self._counter.__enter__()
        except BaseException:
            self._leave(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        counter = self._counter
        try:
            counter.__exit__(exc_type, exc, tb)
        finally:
            self._leave(exc_type, exc, tb)
        if exc_type is None:
            self.count = FlopCount(int(counter.get_total_flops()), _own_flops(self.model, counter.get_flop_counts()))
        return False

    def _leave(self, exc_type, exc, tb) -> None:
        self._counter = None
        try:
            self._grad.__exit__(exc_type, exc, tb)
        finally:
            for m, flag in self._modes:
                m.training = flag


def measure_flops(model: nn.Module, example_inputs: Any) -> FlopCount:
    """Count one call of `model` on `example_inputs` (see the module docstring)."""
    probe = FlopProbe(model)
    with probe:
        out = call_model(probe.model, example_inputs)
        del out
    return probe.count


def _own_flops(model: nn.Module, counts) -> Dict[str, Dict[str, int]]:
    # FlopCounterMode names a module "<root class>.<qualified name>" and counts an op under
    # every module that encloses it: a module's own ops are its count minus its children's.
    root = type(model).__name__
    key = {name: root if not name else f"{root}.{name}" for name, _ in model.named_modules()}
    own: Dict[str, Dict[str, int]] = {}
    for name, module in model.named_modules():
        mine = {str(op): int(v) for op, v in counts.get(key[name], {}).items()}
        for child_name, _ in module.named_children():
            child = f"{name}.{child_name}" if name else child_name
            for op, v in counts.get(key.get(child, ""), {}).items():
                mine[str(op)] = mine.get(str(op), 0) - int(v)
        mine = {op: v for op, v in mine.items() if v}
        if mine:
            own[name] = mine
    return own
