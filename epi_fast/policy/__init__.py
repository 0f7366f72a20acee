"""The policy: `EPIPruner` decides during training when to prune, then prunes."""

from .pruner import CRITERIA, GRADIENT_CRITERIA, EPIPruner, default_tau

__all__ = ["EPIPruner", "CRITERIA", "GRADIENT_CRITERIA", "default_tau"]
