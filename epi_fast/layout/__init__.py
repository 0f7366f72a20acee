"""Which channels of a model can be pruned, and which of them must go together.

`group_layout(model, example_inputs)` traces the model once and returns its `GroupLayout`:
the groups of coupled neurons (of every registered kind), the flat score order and the
structure vector that EPI reads. A new kind of group is one module that subclasses
`LayoutGroup` and calls `register_group_kind` (see `epi_fast.layout.groups`).
"""

from .channels import ChannelGroup
from .core import GroupLayout, group_layout
from .groups import ROLES, LayoutGroup, Member, Source, register_group_kind, unregister_group_kind
from .trace import BATCHNORM, PRUNABLE, call_model, unwrap_model

__all__ = [
    "GroupLayout", "group_layout", "LayoutGroup", "ChannelGroup", "Member", "Source", "ROLES",
    "register_group_kind", "unregister_group_kind", "unwrap_model", "call_model", "PRUNABLE", "BATCHNORM",
]
