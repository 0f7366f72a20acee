"""When to prune: the Early Pruning Indicator (EPI) and the Early-Bird baseline."""

from .epi import EarlyBirdIndicator, EarlyPruningIndicator, layer_distances, structure_similarity, update_indicators

__all__ = ["structure_similarity", "layer_distances", "EarlyPruningIndicator", "update_indicators", "EarlyBirdIndicator"]
