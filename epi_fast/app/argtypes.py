"""argparse types of the command lines. Where an option is a library argument (a ratio, tau,
a window, ...), its range is the library's own check (`epi_fast._args`), so the command line
and the library accept the same values with the same words."""

from __future__ import annotations

import argparse
import math
from typing import Callable, List

from .._args import check_int, check_max_layer_ratio, check_ratio, check_unit

__all__ = ["criterion", "weight_criterion", "positive_int", "non_negative_int", "prune_ratio", "train_ratio", "ratio_list", "tau", "positive_float",
           "non_negative_float", "max_layer_ratio", "TARGET_HELP", "MAX_LAYER_RATIO_HELP", "ROUND_TO_HELP"]

TARGET_HELP = ("what --ratio is a fraction of: channels (group neurons, the paper's meaning; default), params or "
               "flops (of the model's parameters or FLOPs, met within 0.01)")
MAX_LAYER_RATIO_HELP = ("at most this fraction of one layer's channels is removed: R in (0, 1], or NAME=R[,NAME=R...] "
                        "per layer (the others keep the default); default 0.9 (every layer keeps at least 10%%), "
                        "1.0 is the paper's rule")
ROUND_TO_HELP = "every pruned layer keeps a multiple of N channels (or its whole width when narrower than N)"


def _parsed(text: str, parse: Callable, what: str):
    try:
        return parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _checked(check: Callable, *args, **kwargs):
    try:
        return check(*args, **kwargs)
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, sizes, epochs)."""
    return _checked(check_int, _parsed(text, int, "a positive integer"), "the value", 1)


def non_negative_int(text: str) -> int:
    return _checked(check_int, _parsed(text, int, "an integer >= 0"), "the value", 0)


def train_ratio(text: str) -> float:
    """EPIPruner's target and tracked ratios: (0, 1)."""
    return _checked(check_ratio, _parsed(text, float, "a number"), "a prune ratio", allow_zero=False)


def prune_ratio(text: str) -> float:
    """prune()'s ratio: [0, 1)."""
    return _checked(check_ratio, _parsed(text, float, "a number in [0, 1)"), "a ratio", allow_zero=True)


def ratio_list(text: str) -> List[float]:
    return [train_ratio(t) for t in text.replace(",", " ").split() if t]


def tau(text: str) -> float:
    return _checked(check_unit, _parsed(text, float, "a number"), "tau", low_open=True, high_open=False)


def _float(text: str, minimum_open: bool) -> float:
    v = _parsed(text, float, "a number")
    if not (math.isfinite(v) and (v > 0 if minimum_open else v >= 0)):
        raise argparse.ArgumentTypeError(f"must be {'a positive number' if minimum_open else '>= 0'}, got {text}")
    return v


def positive_float(text: str) -> float:
    """A finite number > 0 (a learning rate)."""
    return _float(text, True)


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (momentum, weight decay)."""
    return _float(text, False)


def criterion(text: str) -> str:
    """A criterion name of the registry or "package.module:Name" (a Criterion in the user's
    code), checked by resolving it; the text itself is kept (it goes into summary.json)."""
    from ..criteria import get_criterion

    _checked(get_criterion, text)
    return text


def weight_criterion(text: str) -> str:
    """A criterion that scores weights as they are (what a one-off prune can use)."""
    from ..criteria import get_criterion

    if _checked(get_criterion, text).needs_gradients:
        raise argparse.ArgumentTypeError(
            f"criterion {text!r} needs gradients accumulated over training; a one-off prune scores weights "
            "(use magnitude, bn, l1, l2, or epi-fast train)")
    return text


def max_layer_ratio(text: str):
    """R, or NAME=R[,NAME=R...]: the library's float or mapping form of max_layer_ratio."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected R or NAME=R[,NAME=R...], got {text!r}")
    if len(items) == 1 and "=" not in items[0]:
        return _checked(check_max_layer_ratio, _parsed(items[0], float, "a number in (0, 1]"))
    mapping = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"expected NAME=R in a per-layer list, got {item!r}")
        mapping[name] = _parsed(value, float, f"a number in (0, 1] for {name}")
    return _checked(check_max_layer_ratio, mapping)
