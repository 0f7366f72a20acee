"""The policy: `EPIPruner` decides during training when to prune, then prunes."""

from .config import PrunerConfig
from .decision import LATE_FRACTION, LatePruneWarning, late_prune_message, prune_decision, prune_epoch_for
from .pruner import CRITERIA, GRADIENT_CRITERIA, EPIPruner, default_tau
from .tracker import EpochRecord, StructureTracker

__all__ = ["EPIPruner", "PrunerConfig", "StructureTracker", "EpochRecord", "CRITERIA", "GRADIENT_CRITERIA", "default_tau", "LATE_FRACTION", "LatePruneWarning",
           "late_prune_message", "prune_decision", "prune_epoch_for"]
