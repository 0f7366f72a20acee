"""Several ratios side by side: one `EarlyPruningIndicator` per tracked ratio, fed together.

The structures of every tracked ratio come from the same scores each epoch (one
`global_masks_counts` call gives an int64 [ratios, layers] matrix); the bank feeds row i to the
indicator of ratio i in one batched pass and answers per ratio. The first ratio is the target:
the one whose indicator decides when to prune.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from .._args import check_ratios
from .epi import EarlyPruningIndicator

__all__ = ["IndicatorBank"]


class IndicatorBank:
    """One indicator per ratio (`ratios[0]` is the target), all with the same rule.

    update(counts): counts int64 [len(ratios), L], row i the structure of ratios[i]; returns the
    EPI values in ratio order (None while undefined). If a row is refused, no indicator has been
    updated.
    """

    def __init__(self, ratios: Sequence[float], window: int = 5, tau: float = 0.983, patience: int = 5) -> None:
        ratios = check_ratios(ratios, "ratios")
        if not ratios:
            raise ValueError("ratios is empty: the bank needs at least the target ratio")
        unique: List[float] = []
        for r in ratios:
            if r not in unique:
                unique.append(r)
        self.ratios = unique
        self._indicators = [EarlyPruningIndicator(window=window, tau=tau, patience=patience) for _ in unique]

    @property
    def target(self) -> float:
        return self.ratios[0]

    @property
    def window(self) -> int:
        return self._indicators[0].window

    @property
    def tau(self) -> float:
        return self._indicators[0].tau

    @property
    def patience(self) -> int:
        return self._indicators[0].patience

    def __getitem__(self, ratio: float) -> EarlyPruningIndicator:
        try:
            return self._indicators[self.ratios.index(ratio)]
        except ValueError:
            raise KeyError(f"ratio {ratio!r} is not tracked; tracked: {self.ratios}") from None

    def __len__(self) -> int:
        return len(self.ratios)

    def update(self, counts: Any) -> List[Optional[float]]:
        return EarlyPruningIndicator.update_many(self._indicators, counts)

    @property
    def fired_epoch(self) -> Optional[int]:
        """The epoch at which the target ratio's indicator fired, else None."""
        return self._indicators[0].fired_epoch

    @property
    def epoch(self) -> int:
        """The t of the latest recorded structure (-1 before the first update)."""
        return self._indicators[0].epoch

    def history(self) -> Dict[float, List[Optional[float]]]:
        """{ratio: [EPI_0, EPI_1, ...]} for every tracked ratio; None where undefined."""
        return {r: ind.history for r, ind in zip(self.ratios, self._indicators)}

    def state_dict(self) -> Dict[str, Any]:
        return {"ratios": list(self.ratios), "indicators": [ind.state_dict() for ind in self._indicators]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if list(state["ratios"]) != self.ratios:
            raise ValueError(f"indicator state tracks ratios {state['ratios']}, this bank tracks {self.ratios}")
        for ind, s in zip(self._indicators, state["indicators"]):
            ind.load_state_dict(s)

    def __repr__(self) -> str:
        return (f"IndicatorBank(ratios={self.ratios}, window={self.window}, tau={self.tau}, "
                f"patience={self.patience}, epoch={self.epoch}, fired_epoch={self.fired_epoch})")
