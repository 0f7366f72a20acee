"""EPI's window for a detection schedule, scaled as the paper's detection experiment scales it.

The supplementary's App. E trains SSD300 for 800 epochs with the window r = 50: about 6% of
the schedule (the classification default, r = 5 of 90 epochs, is the same share). A schedule
of T epochs gets r = round(T * 50 / 800), but at least 2: with r = 1 EPI compares each epoch
with the one before only, and on the digit canvases the structure of the first epochs jumps
once and then holds still for an epoch, which a one-epoch window mistakes for stability.

The main job's detection default also prunes by a deadline: App. E's prunes came at 12% and
32% of its schedule, while on a schedule of a few epochs the magnitude EPI at tau = 0.983
first fires at the last epoch (measured: 0.789, 0.958, 0.975, 0.988 after epochs 2-5 of 5,
docs/DETECTION.md), leaving the pruned detector no epoch to recover. `default_deadline(T)`
is epoch floor(0.6 T), at least 1, so that 40% of the schedule trains the pruned detector.
"""

from __future__ import annotations

import math

from .._args import check_int, check_unit

__all__ = ["WINDOW_FRACTION", "MIN_WINDOW", "DEADLINE_FRACTION", "scaled_window", "default_deadline"]

# App. E: window 50 of an 800-epoch schedule.
WINDOW_FRACTION = 50 / 800
MIN_WINDOW = 2
# The main job's default deadline for detection, as a share of the schedule.
DEADLINE_FRACTION = 0.6


def scaled_window(epochs: int, fraction: float = WINDOW_FRACTION, minimum: int = MIN_WINDOW) -> int:
    """EPI's window for a schedule of `epochs` epochs: floor(epochs * fraction + 0.5), at least
    `minimum` (both integers >= 1; fraction in (0, 1])."""
    epochs = check_int(epochs, "epochs", 1)
    minimum = check_int(minimum, "minimum", 1)
    fraction = check_unit(fraction, "fraction", low_open=True, high_open=False)
    return max(minimum, math.floor(epochs * fraction + 0.5))


def default_deadline(epochs: int, fraction: float = DEADLINE_FRACTION) -> int:
    """The detection job's default `deadline_epoch`: floor(epochs * fraction), at least 1."""
    epochs = check_int(epochs, "epochs", 1)
    fraction = check_unit(fraction, "fraction", low_open=True, high_open=False)
    return max(1, math.floor(epochs * fraction))
