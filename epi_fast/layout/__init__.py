"""Which channels of a model can be pruned, and which of them must go together.

`group_layout(model, example_inputs)` traces the model once and returns its `GroupLayout`:
the groups of coupled neurons (of every registered kind), the flat score order and the
structure vector that EPI reads. A new kind of group is one module that subclasses
`LayoutGroup` and calls `register_group_kind` (see `epi_fast.layout.groups`).
"""

import importlib
import pkgutil

from .channels import ChannelGroup
from .core import GroupLayout, group_layout
from .groups import ROLES, LayoutGroup, Member, Source, register_group_kind, unregister_group_kind
from .trace import BATCHNORM, PRUNABLE, call_model, unwrap_model
from .transformer import (Block, HeadGroup, HeadPrunedMultiheadAttention, MlpGroup, Slice, register_attention,
                          register_mlp, unregister_attention)

__all__ = [
    "GroupLayout", "group_layout", "LayoutGroup", "ChannelGroup", "Member", "Source", "ROLES",
    "register_group_kind", "unregister_group_kind", "unwrap_model", "call_model", "PRUNABLE", "BATCHNORM",
    "HeadGroup", "MlpGroup", "Block", "Slice", "register_attention", "unregister_attention", "register_mlp",
    "HeadPrunedMultiheadAttention",
]

# Every module of this package is imported, so that a group kind added as one new file
# registers itself (register_group_kind) without an edit anywhere else.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
