"""Index mappings epi_fast adds to Torch-Pruning's dependency graph, where its own do not describe
how a model's channels are coupled.

- **Equal splits** (`torch.chunk`, `torch.split` / `Tensor.split` by an int) along channels: the
  model computes the pieces from the tensor's width, so after a prune every piece must keep the
  same channels: channel j of each piece is one neuron (a mapping that ties them, on every edge
  that enters the split). A split by a list of sizes leaves its pieces independent (the sizes
  must follow the modules, e.g. ``self.conv.in_channels``); pieces of any split that feed one
  shared module are tied through that module by Torch-Pruning's own mappings. The pieces of a
  split are put in piece order (Torch-Pruning numbers them in the order it met them).
- **Channel shuffle** (ShuffleNet's ``view(B, g, C/g, H, W) -> transpose(1, 2) -> view(B, C, H,
  W)``): one graph node that maps input channel ``i * C/g + j`` to output channel ``j * g + i``
  and ties the g input channels of each j (the pruned tensor must still split into g equal
  groups in the same order), in place of the reshape nodes that Torch-Pruning 1.6 cannot map
  (it divides by zero).

A split into unequal pieces (a width the chunk count does not divide) or one whose piece feeds
several consumers directly is a ValueError naming the operation.
"""

from __future__ import annotations

from typing import Dict, List

import torch_pruning as tp
from torch_pruning import _helpers
from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.node import Node

__all__ = ["Graph", "ChannelShuffle", "UnsupportedPattern"]

_Hybrid = _helpers._HybridIndex


class UnsupportedPattern(ValueError):
    """A coupling of channels that epi_fast cannot prune equal to the masked network."""


class ChannelShuffle(tp.ops._ElementWiseOp):
    """The graph node of one channel shuffle: `groups` groups of `per_group` channels. An
    element-wise op to Torch-Pruning (it keeps the width), with the mappings below."""

    def __init__(self, op_id: int, groups: int, per_group: int):
        super().__init__(op_id, "ChannelShuffle")
        self.groups, self.per_group = groups, per_group

    def __repr__(self):
        return f"ChannelShuffle_{self.id}(groups={self.groups}, channels={self.groups * self.per_group})"


class _ShufflePruner(tp.ops.DummyPruner):
    """Nothing to slice; its width, for Torch-Pruning's inference of concat and split sizes
    around it (the graph describes the model it was built on: one prune)."""

    def get_out_channels(self, layer):
        return layer.groups * layer.per_group

    get_in_channels = get_out_channels


class _ShuffleIn:
    """Input channels -> output channels of a shuffle, every tied copy."""

    def __init__(self, groups: int, per_group: int):
        self.groups, self.per_group = groups, per_group

    def __call__(self, idxs):
        out = {_Hybrid(idx=(i.idx % self.per_group) * self.groups + g, root_idx=i.root_idx)
               for i in idxs for g in range(self.groups)}
        return sorted(out)


class _ShuffleOut:
    """Output channels -> input channels of a shuffle, every tied copy."""

    def __init__(self, groups: int, per_group: int):
        self.groups, self.per_group = groups, per_group

    def __call__(self, idxs):
        out = {_Hybrid(idx=g * self.per_group + i.idx // self.groups, root_idx=i.root_idx)
               for i in idxs for g in range(self.groups)}
        return sorted(out)


class _TiePieces:
    """Input channels of an equal split -> the same channel of every piece."""

    def __init__(self, size: int, pieces: int):
        self.size, self.pieces = size, pieces

    def __call__(self, idxs):
        out = {_Hybrid(idx=q * self.size + i.idx % self.size, root_idx=i.root_idx)
               for i in idxs for q in range(self.pieces)}
        return sorted(out)


def _name(grad_fn) -> str:
    return grad_fn.name() if grad_fn is not None and hasattr(grad_fn, "name") else ""


def _only(nodes: List[Node]):
    return nodes[0] if len(nodes) == 1 else None


def _shuffle_chain(node: Node):
    """(nodes of the chain, groups, per_group) when `node` starts a channel shuffle."""
    if node.type != tp.ops.OPTYPE.RESHAPE or not _name(node.grad_fn).startswith("ViewBackward"):
        return None
    sizes = list(getattr(node.grad_fn, "_saved_self_sym_sizes", ()))
    if len(sizes) < 3:
        return None
    chain = [node]
    nxt = _only(node.outputs)
    if nxt is None or not _name(nxt.grad_fn).startswith("TransposeBackward"):
        return None
    dims = {int(nxt.grad_fn._saved_dim0) % (len(sizes) + 1), int(nxt.grad_fn._saved_dim1) % (len(sizes) + 1)}
    if dims != {1, 2} or len(nxt.inputs) != 1:
        return None
    chain.append(nxt)
    nxt = _only(nxt.outputs)
    if nxt is not None and _name(nxt.grad_fn).startswith("CloneBackward") and len(nxt.inputs) == 1:
        chain.append(nxt)
        nxt = _only(nxt.outputs)
    if nxt is None or nxt.type != tp.ops.OPTYPE.RESHAPE or len(nxt.inputs) != 1:
        return None
    split = list(getattr(nxt.grad_fn, "_saved_self_sym_sizes", ()))
    # The last view reads [B, C/g, g, *S] (after the transpose) of an input [B, C, *S].
    if len(split) != len(sizes) + 1 or split[0] != sizes[0] or split[3:] != sizes[2:] \
            or int(split[1]) * int(split[2]) != int(sizes[1]):
        return None
    chain.append(nxt)
    return chain, int(split[2]), int(split[1])


class Graph(tp.DependencyGraph):
    """Torch-Pruning's dependency graph with the mappings above."""

    def __init__(self):
        super().__init__()
        self.register_customized_layer(ChannelShuffle, _ShufflePruner())

    def _trace(self, model, example_inputs, forward_fn, output_transform):
        module2node = super()._trace(model, example_inputs, forward_fn, output_transform)
        self._shuffles: Dict[Node, tuple] = {}
        for node in list(module2node.values()):
            found = _shuffle_chain(node) if node.module in module2node else None
            if found is not None:
                self._collapse(module2node, *found)
        for node in module2node.values():
            if node.type == tp.ops.OPTYPE.SPLIT:
                _order_pieces(node)
        return module2node

    def _collapse(self, module2node, chain: List[Node], groups: int, per_group: int) -> None:
        first, last = chain[0], chain[-1]
        op = ChannelShuffle(self._op_id, groups, per_group)
        self._op_id += 1
        node = Node(op, last.grad_fn, name=None)
        node.inputs = list(first.inputs)
        node.outputs = list(last.outputs)
        for n in node.inputs:
            n.outputs = [node if o is first else o for o in n.outputs]
        for n in node.outputs:
            n.inputs = [node if i is last else i for i in n.inputs]
        for n in chain:
            del module2node[n.module]
        module2node[op] = node
        self._shuffles[node] = (groups, per_group)

    def build_dependency(self, *args, **kwargs):
        super().build_dependency(*args, **kwargs)
        for node in self.module2node.values():
            if node.type == tp.ops.OPTYPE.SPLIT and _equal_split(node) is not None:
                # Torch-Pruning infers an equal split's piece sizes from its consumers (a piece that
                # goes into a concat gets the concat's width); they are the split size.
                size = int(node.grad_fn._saved_split_size)
                node.module.split_sizes = [size] * len(node.outputs)
                node.module.offsets = [k * size for k in range(len(node.outputs) + 1)]
        for node in self.module2node.values():
            if node.type == tp.ops.OPTYPE.CONCAT:
                node.module.concat_sizes = None  # inferred from those piece sizes: again
        index_mapping.update_index_mapping(self)
        return self

    def _build_dependency(self, module2node):
        super()._build_dependency(module2node)
        for node, (groups, per_group) in self._shuffles.items():
            for dep in node.dependencies:
                if dep.target in node.inputs:
                    dep.index_mapping[0] = _ShuffleOut(groups, per_group)
            for src in node.inputs:
                for dep in src.dependencies:
                    if dep.target is node:
                        dep.index_mapping[0] = _ShuffleIn(groups, per_group)
        for node in module2node.values():
            if node.type == tp.ops.OPTYPE.SPLIT:
                tie = _equal_split(node)
                if tie is not None:
                    # [1]: Torch-Pruning's own split mapping sits in [0] of the edges from the
                    # pieces; the tie applies to whatever enters the split, from either side.
                    for src in node.inputs + node.outputs:
                        for dep in src.dependencies:
                            if dep.target is node:
                                dep.index_mapping[1] = tie


def _describe(node: Node) -> str:
    return f"{_name(node.grad_fn) or type(node.module).__name__} of a tensor of shape " \
           f"{tuple(getattr(node.grad_fn, '_saved_self_sym_sizes', ()))}"


def _equal_split(node: Node):
    """The tie of an equal split along channels (None for a split by sizes or along another
    dimension); a ValueError for equal splits that cannot stay equal."""
    fn = node.grad_fn
    if not _name(fn).startswith("SplitBackward") or not hasattr(fn, "_saved_split_size"):
        return None
    sizes = list(getattr(fn, "_saved_self_sym_sizes", ()))
    if len(sizes) < 2 or int(fn._saved_dim) % len(sizes) != 1:
        return None
    width, size = int(sizes[1]), int(fn._saved_split_size)
    pieces = -(-width // size)
    if width % size:
        raise UnsupportedPattern(
            f"cannot prune the channels of a {_describe(node)} split into pieces of {size}: the last piece "
            f"has {width % size}, and unequal pieces of a chunk do not stay where they were after a prune"
        )
    if len(node.outputs) > pieces:
        raise UnsupportedPattern(
            f"cannot prune the channels of a {_describe(node)} split into {pieces} pieces: a piece feeds "
            f"several operations directly; pass it through one operation first"
        )
    return _TiePieces(size, pieces)


def _order_pieces(node: Node) -> None:
    """Put a split's output edges in piece order (what its offsets assume), from the piece
    number each consumer's autograd node records; left as found when that is ambiguous."""
    piece_of: List[int] = []
    for out in node.outputs:
        nums = [k for f, k in getattr(out.grad_fn, "next_functions", ()) if f is node.grad_fn]
        if len(nums) != 1 or node.outputs.count(out) != 1:
            return
        piece_of.append(nums[0])
    node.outputs = [o for _, o in sorted(zip(piece_of, node.outputs), key=lambda t: t[0])]
