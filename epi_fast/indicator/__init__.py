"""When to prune: the Early Pruning Indicator (EPI), a bank of them for several ratios, and the
Early-Bird baseline. Host-side bookkeeping over a few hundred integers per epoch: no tensors of
the model, no device work, identical on every rank that feeds it the same counts."""

from .bank import IndicatorBank
from .early_bird import EarlyBirdIndicator
from .epi import EarlyPruningIndicator, layer_distances, structure_similarity, update_indicators

__all__ = ["structure_similarity", "layer_distances", "EarlyPruningIndicator", "update_indicators",
           "IndicatorBank", "EarlyBirdIndicator"]
