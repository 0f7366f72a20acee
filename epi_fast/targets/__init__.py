"""What a prune aims at and within which limits: targets (channels, parameters, FLOPs),
per-layer limits, hardware-friendly widths, and the one selection rule that the prune and
EPI's tracked structures share."""

from .costs import COST_KINDS, CostModel, cost_model
from .flops import FlopCount, flop_counter, measure_flops
from .limits import DEFAULT_MAX_LAYER_RATIO, TARGETS, check_max_layer_ratio, check_round_to, check_target
from .select import RANKINGS, TOLERANCE, Selection, Selector, check_ranking

__all__ = [
    "COST_KINDS", "CostModel", "cost_model", "FlopCount", "flop_counter", "measure_flops",
    "DEFAULT_MAX_LAYER_RATIO", "TARGETS", "check_max_layer_ratio", "check_round_to", "check_target",
    "TOLERANCE", "Selection", "Selector", "RANKINGS", "check_ranking",
]
