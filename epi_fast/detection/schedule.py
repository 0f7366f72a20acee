"""EPI's window for a detection schedule, scaled as the paper's detection experiment scales it.

The supplementary's App. E trains SSD300 for 800 epochs with the window r = 50: about 6% of
the schedule (the classification default, r = 5 of 90 epochs, is the same share). A schedule
of T epochs gets r = round(T * 50 / 800), but at least 2: with r = 1 EPI compares each epoch
with the one before only, and on the digit canvases the structure of the first epochs jumps
once and then holds still for an epoch, which a one-epoch window mistakes for stability
(docs/DETECTION_MODEL.md has the curves).
"""

from __future__ import annotations

import math

from .._args import check_int, check_unit

__all__ = ["WINDOW_FRACTION", "MIN_WINDOW", "scaled_window"]

# App. E: window 50 of an 800-epoch schedule.
WINDOW_FRACTION = 50 / 800
MIN_WINDOW = 2


def scaled_window(epochs: int, fraction: float = WINDOW_FRACTION, minimum: int = MIN_WINDOW) -> int:
    """EPI's window for a schedule of `epochs` epochs: floor(epochs * fraction + 0.5), at least
    `minimum` (both integers >= 1; fraction in (0, 1])."""
    epochs = check_int(epochs, "epochs", 1)
    minimum = check_int(minimum, "minimum", 1)
    fraction = check_unit(fraction, "fraction", low_open=True, high_open=False)
    return max(minimum, math.floor(epochs * fraction + 0.5))
