"""The rules that turn an indicator's state into a prune, shared by `EPIPruner`, the command
line and the reproduction protocol (one definition each)."""

from __future__ import annotations

from typing import Optional, Tuple

__all__ = ["LATE_FRACTION", "LatePruneWarning", "prune_decision", "prune_epoch_for", "late_prune_message"]

# A prune with less than this fraction of the schedule left gets a warning.
LATE_FRACTION = 0.1


class LatePruneWarning(UserWarning):
    """The network was pruned so late that it has little training left to recover."""


def prune_decision(fired_epoch: Optional[int], epoch: int, deadline_epoch: Optional[int]) -> Optional[str]:
    """Why to prune after `epoch` completed epochs, or None: "epi" once the indicator has fired
    (at `fired_epoch` <= epoch), else "deadline" once `deadline_epoch` is reached."""
    if fired_epoch is not None and fired_epoch <= epoch:
        return "epi"
    if deadline_epoch is not None and epoch >= deadline_epoch:
        return "deadline"
    return None


def prune_epoch_for(fired_epoch: Optional[int], deadline_epoch: Optional[int]) -> Tuple[Optional[int], Optional[str]]:
    """(prune epoch, reason) of a run whose indicator fired at `fired_epoch` (None: never):
    the firing epoch if it comes no later than the deadline, else the deadline."""
    if fired_epoch is not None and (deadline_epoch is None or fired_epoch <= deadline_epoch):
        return fired_epoch, "epi"
    if deadline_epoch is not None:
        return deadline_epoch, "deadline"
    return None, None


def late_prune_message(prune_epoch: int, total_epochs: Optional[int]) -> Optional[str]:
    """A warning text when fewer than LATE_FRACTION of `total_epochs` remain after a prune at
    `prune_epoch`, else None (also when the schedule is unknown)."""
    if total_epochs is None:
        return None
    left = total_epochs - prune_epoch
    if left < LATE_FRACTION * total_epochs:
        return (f"pruned after epoch {prune_epoch} of {total_epochs}: only {max(left, 0)} epoch"
                f"{'' if left == 1 else 's'} left for the smaller network to recover (less than "
                f"{LATE_FRACTION:.0%} of the schedule)")
    return None
