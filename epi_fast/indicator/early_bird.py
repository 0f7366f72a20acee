"""Early-Bird tickets (You et al., ICLR 2020), the baseline EPI is compared with."""

from __future__ import annotations

import importlib
from collections import deque
from typing import Any, Deque, Dict, List, Optional

import torch

from .._args import check_int, check_unit
from .epi import EpochHistory

__all__ = ["EarlyBirdIndicator"]


def _ops():
    # Imported on first use, not with this module: EarlyPruningIndicator is plain host
    # arithmetic and stays usable where the extension is not built; whatever needs the
    # operators gets epi_fast._ops's own error, which says how to build it.
    return importlib.import_module("epi_fast.ops")


class EarlyBirdIndicator(EpochHistory):
    """Early-Bird tickets (You et al., ICLR 2020), the baseline EPI is compared with.

    Each epoch's global keep-mask (which channels survive, not how many per layer) is compared
    with the previous `window - 1` masks by normalised Hamming distance (differing entries / N);
    it fires when every such distance is <= eps. Like EPI, the first mask is the one at
    initialisation, so the first distance exists at t = window - 1.

    `update(mask)` takes a 1-D bool tensor [N] (True = kept) and returns the largest of the
    distances, or None while fewer than `window - 1` earlier masks exist; `history` holds that
    largest distance per epoch.
    """

    def __init__(self, window: int = 5, eps: float = 0.1) -> None:
        # window counts the newest mask and at least one earlier one.
        self.window = check_int(window, "window", 2)
        self.eps = check_unit(eps, "eps", low_open=False, high_open=True)
        self.reset()

    def reset(self) -> None:
        self._masks: Deque[torch.Tensor] = deque(maxlen=self.window - 1)
        self._history: List[Optional[float]] = []
        self._fired_epoch: Optional[int] = None

    def update(self, mask: torch.Tensor) -> Optional[float]:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError("mask must be a bool tensor (True = kept)")
        mask = mask.detach().reshape(-1) if mask.dim() == 2 and mask.shape[0] == 1 else mask.detach()
        if mask.dim() != 1 or mask.numel() == 0:
            raise ValueError(f"mask must be 1-D and non-empty, got shape {tuple(mask.shape)}")
        if self._masks and self._masks[-1].numel() != mask.numel():
            raise ValueError(f"mask has {mask.numel()} channels but earlier masks had {self._masks[-1].numel()}")
        dist: Optional[float] = None
        if len(self._masks) == self.window - 1:
            prev = torch.stack([m.to(mask.device) for m in self._masks])
            # One operator call for all earlier masks; one host copy of window-1 integers.
            _, differing = _ops().mask_overlap(mask.unsqueeze(0).expand_as(prev), prev)
            distances = differing.reshape(-1).double().cpu() / mask.numel()
            dist = float(distances.max())
            if self._fired_epoch is None and dist <= self.eps:
                self._fired_epoch = len(self._history)
        self._masks.append(mask.clone())
        self._history.append(dist)
        return dist

    def state_dict(self) -> Dict[str, Any]:
        return {
            "window": self.window,
            "eps": self.eps,
            "masks": [m.cpu().clone() for m in self._masks],
            "history": list(self._history),
            "fired_epoch": self._fired_epoch,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for key in ("window", "eps"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"Early-Bird state was saved with {key}={state[key]!r} but this indicator has "
                    f"{key}={getattr(self, key)!r}"
                )
        self.reset()
        self._masks.extend(torch.as_tensor(m, dtype=torch.bool).clone() for m in state["masks"])
        self._history = [None if v is None else float(v) for v in state["history"]]
        self._fired_epoch = state["fired_epoch"]
