"""Which channels of a model can be pruned, and which of them must go together."""

from .graph import BATCHNORM, PRUNABLE, GroupLayout, LayoutGroup, Member, group_layout, unwrap_model

__all__ = ["GroupLayout", "LayoutGroup", "Member", "group_layout", "unwrap_model", "PRUNABLE", "BATCHNORM"]
