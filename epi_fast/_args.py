"""Checks of the library's scalar arguments, one function per kind of argument.

The rule everywhere: a value of the wrong type (a string, a bool where a number is meant, a
float where an integer is meant) is a TypeError; a value of the right type outside the
documented range (NaN included) is a ValueError. Both name the argument and the value.

Documented ranges (docs/CONTRACTS.md):
    ratio of prune() / global_masks      [0, 1)   (0 removes nothing)
    ratio / track_ratios of EPIPruner    (0, 1)   (a structure that removes nothing never moves)
    tau                                  (0, 1]
    window                               integer >= 1
    patience                             integer >= 0
    min_keep of prune() / EPIPruner      integer >= 1 (an empty group would disconnect the network)
    deadline_epoch, total_epochs         integer >= 1 or None
    target                               "channels", "params" or "flops"
    max_layer_ratio                      (0, 1], or a mapping from layer name to such a number
    round_to                             integer >= 1 or None
"""

from __future__ import annotations

import math
import numbers
from typing import Any, List, Mapping, Optional

__all__ = ["check_ratio", "check_ratios", "check_int", "check_optional_int", "check_unit", "check_target",
           "check_max_layer_ratio", "check_round_to", "TARGETS", "DEFAULT_MAX_LAYER_RATIO"]


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def check_unit(value: Any, name: str, *, low_open: bool, high_open: bool) -> float:
    """A number in the interval from 0 to 1 with the given open ends."""
    v = _number(value, name)
    ok = (0.0 < v if low_open else 0.0 <= v) and (v < 1.0 if high_open else v <= 1.0)
    if not ok or math.isnan(v):
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}0, 1{hi}, got {value!r}")
    return v


def check_ratio(value: Any, name: str = "ratio", *, allow_zero: bool = True) -> float:
    """A prune ratio: the fraction of group neurons removed, in [0, 1) (or (0, 1))."""
    return check_unit(value, name, low_open=not allow_zero, high_open=True)


def check_ratios(values: Any, name: str = "track_ratios", *, allow_zero: bool = False) -> List[float]:
    """One ratio or a sequence of them, each checked as `check_ratio`."""
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        values = (values,)
    try:
        items = list(values)
    except TypeError:
        raise TypeError(f"{name} must be a ratio or a sequence of ratios, got {values!r}") from None
    return [check_ratio(v, f"{name}[{i}]", allow_zero=allow_zero) for i, v in enumerate(items)]


def check_int(value: Any, name: str, minimum: int) -> int:
    """An integer >= minimum (bools and floats are refused, even 3.0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_optional_int(value: Any, name: str, minimum: int) -> Optional[int]:
    return None if value is None else check_int(value, name, minimum)


# No layer loses more than 90% of its channels by default: every layer keeps at least
# ceil(0.1 * width) channels, so that no layer collapses to one channel (docs/METHOD.md).
DEFAULT_MAX_LAYER_RATIO = 0.9
TARGETS = ("channels", "params", "flops")


def check_target(target: Any) -> str:
    if not isinstance(target, str) or target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    return target


def check_max_layer_ratio(value: Any):
    """A float in (0, 1], or a mapping from layer name to such a float (checked per entry)."""
    if isinstance(value, Mapping):
        out = {}
        for name, r in value.items():
            if not isinstance(name, str):
                raise TypeError(f"max_layer_ratio keys must be layer names, got {name!r}")
            out[name] = check_unit(r, f"max_layer_ratio[{name!r}]", low_open=True, high_open=False)
        return out
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"max_layer_ratio must be a number in (0, 1] or a mapping from layer name to one, got {value!r}")
    return check_unit(value, "max_layer_ratio", low_open=True, high_open=False)


def check_round_to(value: Any) -> Optional[int]:
    return None if value is None else check_int(value, "round_to", 1)


# How the kinds of groups (conv channels, attention heads, MLP channels) are ranked at a ratio.
RANKINGS = ("per_kind", "global")


def check_ranking(ranking: Any) -> str:
    """"per_kind" (each kind of group ranked on its own, the default) or "global"."""
    if ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {ranking!r}; expected one of {', '.join(map(repr, RANKINGS))}")
    return ranking
