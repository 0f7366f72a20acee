"""Transformer group kinds: attention heads and MLP hidden channels.

A transformer block is recognised module by module, not through Torch-Pruning's graph (which
cannot follow the residual stream of Hugging Face decoders): an *adapter* looks at one
attention (or MLP) module and says which slices of which parameters each neuron owns.

- **Heads** (kind ``"heads"``): a neuron is one key/value group, that is one key head, one
  value head and the ``n_rep`` query heads that read them (``n_rep = 1`` without grouped-query
  attention). Removing it removes those heads' rows of the query, key and value projections
  and their columns of the output projection, so every layer keeps a whole number of key/value
  groups and the same number of query heads per group; the module's own head counts and
  sizes are updated, and its forward, its KV cache and ``generate()`` keep working.
- **MLP channels** (kind ``"mlp"``): a neuron is one hidden channel: its rows of the input
  projections (fc1, or gate and up) and its column of the output projection (fc2, down).

The residual width (hidden size) is never cut: every projection keeps its input width (q, k,
v, fc1) or its output width (o, fc2).

Known attention modules: ``torch.nn.MultiheadAttention``; every module with ``q_proj``,
``k_proj``, ``v_proj`` and ``o_proj`` linears and a ``head_dim`` (the Hugging Face LLaMA,
Qwen2, Mistral and ViT families); Hugging Face GPT-2 (fused ``c_attn``) and BERT
(``self.query/key/value`` with ``output.dense``); torchvision Swin and timm's ``Attention`` in
`epi_fast.layout.transformer_vision`. Any other module whose type name contains
"Attention" and that owns parameters is refused with a ValueError naming its type and
`register_attention`, through which a user teaches the layout about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .groups import LayoutGroup, Member, Source

__all__ = [
    "Block", "Slice", "SliceView", "HeadGroup", "MlpGroup", "ResidualGroup", "residual_block", "register_attention", "unregister_attention", "register_mlp",
    "guard_fused_paths",
    "find_transformer_groups", "HeadPrunedMultiheadAttention",
]


@dataclass
class Slice:
    """Neuron j owns indices ``offset + j * width ... offset + (j + 1) * width - 1`` of
    dimension `dim` of ``owner.<attr>``. `role`: "in" for a slice that feeds the neuron (q, k,
    v, fc1 rows), "out" for one it writes through (o, fc2 columns)."""

    owner: nn.Module
    attr: str
    dim: int
    offset: int
    width: int
    role: str


@dataclass
class Block:
    """What an adapter says about one attention or MLP module.

    size: neurons (key/value groups, or hidden channels); slices: every parameter slice they
    own; per_neuron: query heads (1 for MLP channels) per neuron, what the structure vector
    counts; update(kept): sets the module's own attributes (head counts, sizes) once `kept`
    neurons remain, after the slices were cut (linear layers' in/out features are set from
    their weights by the layout)."""

    size: int
    slices: List[Slice]
    per_neuron: int = 1
    update: Optional[Callable[[int], None]] = None
    count: Optional[Callable[[], int]] = None
    # Names of the module's own integer attributes that `update` sets (e.g. "heads"):
    # save_pruned writes them and load_pruned restores them, beside the built-in ones.
    saved_attrs: Tuple[str, ...] = ()


Adapter = Callable[[nn.Module], Optional[Block]]
_ATTENTION: List[Tuple[Callable[[nn.Module], bool], Adapter]] = []
_MLP: List[Tuple[Callable[[nn.Module], bool], Adapter]] = []


def _matcher(match) -> Callable[[nn.Module], bool]:
    if isinstance(match, type):
        return lambda m: isinstance(m, match)
    if callable(match):
        return match
    raise TypeError(f"match must be a module class or a predicate, got {type(match).__name__}")


def register_attention(match, adapter: Adapter) -> None:
    """Teach the layout an attention module: `match` is its class (or a predicate on a module);
    ``adapter(module)`` returns a `Block` whose neurons are its key/value groups (or None to
    leave that instance alone). Registered adapters are tried before the built-in ones."""
    _ATTENTION.insert(0, (_matcher(match), adapter))


def unregister_attention(adapter: Adapter) -> None:
    """Forget an adapter given to `register_attention` (KeyError if it is not registered)."""
    _unregister(_ATTENTION, adapter)


def _unregister(table, adapter) -> None:
    for i, (_, a) in enumerate(table):
        if a is adapter:
            del table[i]
            return
    raise KeyError(f"{getattr(adapter, '__name__', adapter)!r} is not a registered adapter")


def register_mlp(match, adapter: Adapter) -> None:
    """Teach the layout an MLP module (see `register_attention`; neurons: hidden channels)."""
    _MLP.insert(0, (_matcher(match), adapter))


# -- built-in adapters --------------------------------------------------------------------------


def _is_linear_like(m) -> bool:
    return isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"


def _qkv_slices(q, k, v, o, kv: int, n_rep: int, d: int) -> List[Slice]:
    out = []
    for lin, width in ((q, n_rep * d), (k, d), (v, d)):
        out.append(Slice(lin, "weight", 0, 0, width, "in"))
        if lin.bias is not None:
            out.append(Slice(lin, "bias", 0, 0, width, "in"))
    out.append(Slice(o, "weight", 1, 0, n_rep * d, "out"))
    return out


def _qkvo_adapter(m: nn.Module) -> Optional[Block]:
    """q_proj / k_proj / v_proj / o_proj with `head_dim` (LLaMA, Qwen2, Mistral, HF ViT, ...)."""
    q, k, v, o = m.q_proj, m.k_proj, m.v_proj, m.o_proj
    d = int(m.head_dim)
    kv = k.out_features // d
    n_rep = q.out_features // (kv * d)
    if kv * d != k.out_features or n_rep * kv * d != q.out_features or v.out_features != kv * d:
        raise ValueError(f"{type(m).__name__}: q/k/v widths {q.out_features}/{k.out_features}/{v.out_features} "
                         f"are not whole heads of head_dim {d}")
    projections = {id(p) for lin in (q, k, v, o) for p in lin.parameters()}
    for name, p in m.named_parameters():
        # A norm over all heads' queries or keys together (OLMo-2's q_norm / k_norm) would have to
        # lose the removed heads' entries and its statistics would change; per-head norms
        # (over head_dim, shared by every head: Qwen3, Gemma) are fine.
        if id(p) not in projections and p.shape[-1] in (q.out_features, k.out_features) and p.shape[-1] != d:
            raise ValueError(
                f"{type(m).__name__} has {name} {tuple(p.shape)} over all of its heads' width: pruning heads would "
                f"change it; teach the layout with epi_fast.layout.register_attention({type(m).__name__}, adapter)"
            )

    def update(kept: int) -> None:
        m.num_key_value_heads = kept
        m.num_heads = kept * n_rep
        if hasattr(m, "num_attention_heads"):
            m.num_attention_heads = kept * n_rep
        if hasattr(m, "num_key_value_groups"):
            m.num_key_value_groups = n_rep  # unchanged: whole groups go

    return Block(kv, _qkv_slices(q, k, v, o, kv, n_rep, d), n_rep, update, lambda: m.k_proj.out_features // d)


def _has_qkvo(m: nn.Module) -> bool:
    return (all(_is_linear_like(getattr(m, n, None)) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
            and isinstance(getattr(m, "head_dim", None), int))


def _bert_adapter(m: nn.Module) -> Optional[Block]:
    """Hugging Face BERT-style: ``self.query/key/value`` and ``output.dense``."""
    s, out = m.self, m.output.dense
    h, d = int(s.num_attention_heads), int(s.attention_head_size)

    def update(kept: int) -> None:
        s.num_attention_heads = kept
        s.all_head_size = kept * d

    return Block(h, _qkv_slices(s.query, s.key, s.value, out, h, 1, d), 1, update, lambda: s.num_attention_heads)


def _has_bert(m: nn.Module) -> bool:
    s = getattr(m, "self", None)
    out = getattr(getattr(m, "output", None), "dense", None)
    return (s is not None and out is not None and all(isinstance(getattr(s, n, None), nn.Linear) for n in ("query", "key", "value"))
            and hasattr(s, "attention_head_size") and not hasattr(s, "q_attn"))


def _gpt2_adapter(m: nn.Module) -> Optional[Block]:
    """Hugging Face GPT-2: a fused Conv1D ``c_attn`` (weight [hidden, 3 * heads * head_dim]) and
    ``c_proj`` (weight [heads * head_dim, hidden])."""
    if getattr(m, "is_cross_attention", False):
        raise ValueError(f"{type(m).__name__} as cross attention is not supported")
    h, d = int(m.num_heads), int(m.head_dim)
    inner = h * d
    slices = []
    for part in range(3):
        slices.append(Slice(m.c_attn, "weight", 1, part * inner, d, "in"))
        slices.append(Slice(m.c_attn, "bias", 0, part * inner, d, "in"))
    slices.append(Slice(m.c_proj, "weight", 0, 0, d, "out"))

    def update(kept: int) -> None:
        m.num_heads = kept
        m.split_size = kept * d

    return Block(h, slices, 1, update, lambda: m.num_heads)


def _is_gpt2(m: nn.Module) -> bool:
    return type(m).__name__.startswith("GPT2") and hasattr(m, "c_attn") and hasattr(m, "c_proj") and hasattr(m, "split_size")


def _mha_adapter(m: nn.MultiheadAttention) -> Optional[Block]:
    if not m._qkv_same_embed_dim:
        raise ValueError("nn.MultiheadAttention with separate kdim/vdim is not supported for head pruning")
    h, d = int(m.num_heads), int(m.head_dim)
    inner = h * d
    slices = []
    for part in range(3):
        slices.append(Slice(m, "in_proj_weight", 0, part * inner, d, "in"))
        if m.in_proj_bias is not None:
            slices.append(Slice(m, "in_proj_bias", 0, part * inner, d, "in"))
    slices.append(Slice(m.out_proj, "weight", 1, 0, d, "out"))
    for attr in ("bias_k", "bias_v"):
        if getattr(m, attr) is not None:
            slices.append(Slice(m, attr, 2, 0, d, "in"))

    def update(kept: int) -> None:
        m.num_heads = kept
        m.inner_dim = kept * d
        if type(m) is nn.MultiheadAttention:
            m.__class__ = HeadPrunedMultiheadAttention
            guard_fused_paths(m)

    return Block(h, slices, 1, update, lambda: m.num_heads)


class HeadPrunedMultiheadAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention whose heads were pruned: its inner width (``inner_dim`` =
    ``num_heads * head_dim``) is below its input width (``embed_dim``), which the functional
    implementation does not allow. Same parameters and state-dict keys; same results as the
    dense module with the removed heads masked."""

    inner_dim: int

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if is_causal and attn_mask is None:
            # What nn.MultiheadAttention says: is_causal is a hint about attn_mask, not a mask.
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                               "method `generate_square_subsequent_mask` to create this mask.")
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, lq, _ = query.shape
        h, d, inner = self.num_heads, self.head_dim, self.inner_dim
        bias = self.in_proj_bias
        bq, bk, bv = (None, None, None) if bias is None else bias.split(inner)
        wq, wk, wv = self.in_proj_weight.split(inner)
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        extra = []
        if self.bias_k is not None:
            extra.append((self.bias_k.expand(b, 1, inner), self.bias_v.expand(b, 1, inner)))
        if self.add_zero_attn:
            extra.append((k.new_zeros(b, 1, inner), v.new_zeros(b, 1, inner)))
        for ek, ev in extra:
            k, v = torch.cat([k, ek], 1), torch.cat([v, ev], 1)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        lk = k.shape[1]
        q = q.view(b, lq, h, d).transpose(1, 2)
        k = k.view(b, lk, h, d).transpose(1, 2)
        v = v.view(b, lk, h, d).transpose(1, 2)
        if attn_mask is not None and attn_mask.dim() == 3 and attn_mask.shape[0] != b * h:
            raise ValueError(
                f"attn_mask of shape {tuple(attn_mask.shape)}: this attention kept {h} of its heads, so a 3-D mask "
                f"holds batch x {h} = {b * h} rows (one per kept head, in the order the heads were kept)"
            )
        mask = _merge_masks(attn_mask, key_padding_mask, b, h, lq, lk, q.dtype)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) * (d ** -0.5)
            if mask is not None:
                scores = scores + mask
            probs = scores.softmax(-1)
            if p:
                probs = F.dropout(probs, p)  # the weights returned are the ones applied, as in the dense module
            weights = probs.mean(1) if average_attn_weights else probs
            out = probs @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(b, lq, inner))
        if not batched:
            out = out.squeeze(0)
            weights = None if weights is None else weights.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _no_op_pre_hook(module, args):
    return None


def guard_fused_paths(m: nn.Module) -> None:
    """nn.TransformerEncoderLayer's fused inference path reads its self_attn's in_proj_weight as
    three dense-width blocks, bypassing the module's forward; it is not taken when a forward
    hook is attached, which this (no-op) pre-hook is for."""
    if not any(h is _no_op_pre_hook for h in m._forward_pre_hooks.values()):
        m.register_forward_pre_hook(_no_op_pre_hook)


def _merge_masks(attn_mask, key_padding_mask, b, h, lq, lk, dtype):
    """nn.MultiheadAttention's masks (bool: True = not allowed; float: added) as one additive
    float mask broadcastable to [b, h, lq, lk], or None."""
    def additive(mask):
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
        return mask.to(dtype)

    out = None
    if attn_mask is not None:
        m = additive(attn_mask)
        out = m.view(b, h, lq, lk) if m.dim() == 3 else m
    if key_padding_mask is not None:
        m = additive(key_padding_mask).view(b, 1, 1, lk)
        out = m if out is None else out + m
    return out


def _two_linear_mlp(first: Sequence, second, module: Optional[nn.Module] = None) -> Callable[[], Block]:
    def update(kept: int) -> None:
        # LLaMA-style MLPs keep their width as an attribute (not read by forward): kept true.
        if module is not None and isinstance(getattr(module, "intermediate_size", None), int):
            module.intermediate_size = kept

    def make() -> Block:
        size = first[0].weight.shape[0] if isinstance(first[0], nn.Linear) else first[0].weight.shape[1]
        slices = []
        for lin in first:
            dim = 0 if isinstance(lin, nn.Linear) else 1  # transformers' Conv1D: weight [in, out]
            slices.append(Slice(lin, "weight", dim, 0, 1, "in"))
            if lin.bias is not None:
                slices.append(Slice(lin, "bias", 0, 0, 1, "in"))
        slices.append(Slice(second, "weight", 1 if isinstance(second, nn.Linear) else 0, 0, 1, "out"))
        lead = first[0]
        return Block(size, slices, 1, update,
                     lambda: lead.weight.shape[0] if isinstance(lead, nn.Linear) else lead.weight.shape[1])
    return make


def _mlp_parts(m: nn.Module):
    """(first projections, output projection) of a known MLP module, or None."""
    if all(isinstance(getattr(m, n, None), nn.Linear) for n in ("gate_proj", "up_proj", "down_proj")):
        return [m.gate_proj, m.up_proj], m.down_proj  # LLaMA, Qwen2, Mistral
    if all(_is_linear_like(getattr(m, n, None)) for n in ("fc1", "fc2")):
        return [m.fc1], m.fc2  # HF ViT, timm Mlp
    if all(_is_linear_like(getattr(m, n, None)) for n in ("c_fc", "c_proj")) and type(m).__name__.endswith("MLP"):
        return [m.c_fc], m.c_proj  # GPT-2
    if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return [m.linear1], m.linear2  # torch's own encoder and decoder layers
    inter = getattr(getattr(m, "intermediate", None), "dense", None)
    out = getattr(getattr(m, "output", None), "dense", None)
    if isinstance(inter, nn.Linear) and isinstance(out, nn.Linear) and hasattr(m, "attention"):
        return [inter], out  # BERT layer: intermediate.dense, output.dense
    if type(m).__name__ == "MLPBlock" and isinstance(m, nn.Sequential):
        lins = [c for c in m if isinstance(c, nn.Linear)]
        if len(lins) == 2:
            return [lins[0]], lins[1]  # torchvision ViT
    return None


def _hidden(lin) -> Tuple[int, int]:
    """(output width, input width) of a linear layer or a transformers Conv1D."""
    w = lin.weight
    return (w.shape[0], w.shape[1]) if isinstance(lin, nn.Linear) else (w.shape[1], w.shape[0])


def _plain_mlp(m: nn.Module, first, second) -> bool:
    """The projections alone carry the hidden channels: every input projection's width is the
    output projection's input width (not a gated or chunked fc1), and no other parameter of
    the MLP sits on the hidden channels (no norm over them)."""
    hidden = _hidden(second)[1]
    if any(_hidden(lin)[0] != hidden for lin in first):
        return False
    own = {id(p) for lin in [*first, second] for p in lin.parameters()}
    return not any(id(p) not in own and hidden in p.shape for p in m.parameters())


def _mlp_adapter(m: nn.Module) -> Optional[Block]:
    parts = _mlp_parts(m)
    if parts is None:
        return None
    layer = isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
    if not (layer or hasattr(m, "attention")) and not _plain_mlp(m, *parts):
        return None  # gated halves or a norm over the hidden channels: not a plain MLP
    block = _two_linear_mlp(*parts, module=m)()
    if layer:
        block.update = lambda kept: guard_fused_paths(m)  # its fused path would read the dense widths
    return block


_ATTENTION.extend([
    # Exactly nn.MultiheadAttention: a subclass may compute something else in its forward (it
    # is an unknown attention, to register).
    (lambda m: type(m) in (nn.MultiheadAttention, HeadPrunedMultiheadAttention), _mha_adapter),
    (_has_qkvo, _qkvo_adapter),
    (_is_gpt2, _gpt2_adapter),
    (_has_bert, _bert_adapter),
])
_MLP.append((lambda m: _mlp_parts(m) is not None, _mlp_adapter))


# -- the group kinds ----------------------------------------------------------------------------


@dataclass
class _SliceGroup(LayoutGroup):
    """Neurons that own slices of parameters (see `Block`)."""

    module: nn.Module = None
    block: Block = None
    names: Dict[int, str] = field(default_factory=dict, repr=False)
    joint_norm = True

    def _indices(self, s: Slice, neurons: torch.Tensor) -> torch.Tensor:
        """Indices along s.dim of the given neurons' slices, neuron-major."""
        return (s.offset + neurons[:, None] * s.width + torch.arange(s.width)[None, :]).reshape(-1)

    def sources(self, role: str) -> List[Source]:
        if role not in ("filters", "taylor", "scales"):
            raise ValueError(f"unknown source role {role!r}")
        if role == "scales":
            return []
        n = self.size
        rows = torch.arange(n)
        out = []
        seen = set()
        for s in self.block.slices:
            tensor_key = (id(s.owner._parameters[s.attr]), s.dim, s.offset)
            if tensor_key in seen:
                continue  # a tied tensor (embeddings = head) scores once
            seen.add(tensor_key)
            view = _slice_view(s.dim, s.offset, n, s.width)
            out.append(Source(self.names[id(s.owner)], s.owner, (s.attr,), rows, rows, view=view,
                              key=(id(s.owner), s.attr, s.dim, s.offset),
                              slot=(self.root, "joint") if role == "taylor" else None))
        return out

    def structure_layers(self) -> List[Tuple[nn.Module, int, int]]:
        return [(self.module, self.size, self.block.per_neuron)]

    def width(self, module: nn.Module) -> int:
        return self.block.count() * self.block.per_neuron

    def remove(self, dg, neurons: Sequence[int]) -> None:
        gone = torch.as_tensor(sorted(set(int(j) for j in neurons)), dtype=torch.int64)
        # One index per cut tensor and dimension: a fused q/k/v weight loses three slices at once.
        # A tied tensor (input embeddings = output head) is cut once, and every owner gets it.
        cuts: Dict[Tuple[int, int], List[Slice]] = {}
        for s in self.block.slices:
            cuts.setdefault((id(s.owner._parameters[s.attr]), s.dim), []).append(s)
        for (_, dim), slices in cuts.items():
            p = slices[0].owner._parameters[slices[0].attr]
            drop = torch.zeros(p.shape[dim], dtype=torch.bool)
            for s in {(s.offset, s.width): s for s in slices}.values():  # a tied tensor's slices once
                drop[self._indices(s, gone)] = True
            keep = (~drop).nonzero().flatten().to(p.device)
            new = nn.Parameter(p.detach().index_select(dim, keep), requires_grad=p.requires_grad)
            for s in slices:
                s.owner._parameters[s.attr] = new
        for s in self.block.slices:
            _sync_features(s.owner)
        if self.block.update is not None:
            self.block.update(self.size - len(gone))


def _sync_features(m: nn.Module) -> None:
    if isinstance(m, nn.Embedding):
        m.num_embeddings, m.embedding_dim = m.weight.shape
    elif isinstance(m, nn.LayerNorm) and m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif type(m).__name__ == "Conv1D":
        m.nx, m.nf = m.weight.shape


@dataclass(frozen=True)
class SliceView:
    """The rows a criterion reads from a sliced parameter: row j is neuron j's slice, indices
    ``offset + j * width ... offset + (j + 1) * width - 1`` of dimension `dim`, with every other
    dimension flattened into it. A dataclass rather than a closure so that the sharded scoring
    (`epi_fast.criteria.sharded`) can map a rank's rows of the parameter to these rows."""

    dim: int
    offset: int
    n: int
    width: int

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        part = t.narrow(self.dim, self.offset, self.n * self.width)
        if self.dim != 0:
            part = part.movedim(self.dim, 0)
        return part.reshape(self.n, -1)


def _slice_view(dim: int, offset: int, n: int, width: int) -> SliceView:
    return SliceView(dim, offset, n, width)


class HeadGroup(_SliceGroup):
    """The key/value groups (heads) of one attention module."""

    kind = "heads"


class MlpGroup(_SliceGroup):
    """The hidden channels of one MLP."""

    kind = "mlp"


class ResidualGroup(_SliceGroup):
    """The residual width (hidden size) of a whole model: one neuron is one hidden channel, in
    the embeddings, every norm and every projection that reads or writes the residual stream.
    Only when asked (`group_layout(..., residual=True)`)."""

    kind = "residual"


def _decoder_parts(model: nn.Module):
    """(input embedding, decoder layers, final norm, output head) of a LLaMA-style decoder, or
    None: layers with self_attn (q/k/v/o_proj) and mlp (gate/up/down_proj) and two 1-D norms."""
    get_in = getattr(model, "get_input_embeddings", None)
    emb = get_in() if callable(get_in) else None
    if not isinstance(emb, nn.Embedding):
        return None
    base = model.get_decoder() if callable(getattr(model, "get_decoder", None)) else getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    norm = getattr(base, "norm", None)
    head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
    if layers is None or norm is None or not isinstance(getattr(norm, "weight", None), torch.Tensor):
        return None
    for layer in layers:
        a, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if a is None or mlp is None or not _has_qkvo(a) or _mlp_parts(mlp) is None:
            return None
        for n in ("input_layernorm", "post_attention_layernorm"):
            w = getattr(getattr(layer, n, None), "weight", None)
            if not isinstance(w, torch.Tensor) or w.dim() != 1:
                return None
    return emb, layers, norm, head


def residual_block(model: nn.Module) -> Block:
    """The residual width of a LLaMA-style decoder (LLaMA, Qwen2, Mistral) as one block."""
    parts = _decoder_parts(model)
    if parts is None:
        raise ValueError(
            f"residual=True (pruning the hidden size) knows LLaMA-style decoders (embeddings, layers with "
            f"self_attn q/k/v/o_proj, mlp gate/up/down_proj and RMS norms, a final norm); {type(model).__name__} is "
            "not one"
        )
    emb, layers, norm, head = parts
    hidden = emb.weight.shape[1]
    slices = [Slice(emb, "weight", 1, 0, 1, "in")]

    # Roles as for heads: "in" for what produces the neuron (its rows of o_proj and down_proj,
    # its embedding column), "out" for what reads it (columns of q/k/v, gate/up, the head).
    def reads(lin):
        slices.append(Slice(lin, "weight", 1, 0, 1, "out"))

    def writes(lin):
        slices.append(Slice(lin, "weight", 0, 0, 1, "in"))
        if lin.bias is not None:
            slices.append(Slice(lin, "bias", 0, 0, 1, "in"))

    for layer in layers:
        a, mlp = layer.self_attn, layer.mlp
        for n in ("input_layernorm", "post_attention_layernorm"):
            slices.append(Slice(getattr(layer, n), "weight", 0, 0, 1, "norm"))
        for lin in (a.q_proj, a.k_proj, a.v_proj):
            reads(lin)
        writes(a.o_proj)
        first, out = _mlp_parts(mlp)
        for lin in first:
            reads(lin)
        writes(out)
    slices.append(Slice(norm, "weight", 0, 0, 1, "norm"))
    if isinstance(head, nn.Linear):
        reads(head)

    def update(kept: int) -> None:
        for layer in layers:
            if isinstance(getattr(layer, "hidden_size", None), int):
                layer.hidden_size = kept

    return Block(hidden, slices, 1, update, lambda: emb.weight.shape[1])


def _members(block: Block, module: nn.Module, name: str, names: Dict[nn.Module, str], attention: bool) -> List[Member]:
    """One member per cut tensor and dimension (a fused q/k/v weight is one member with three
    slices per neuron); a linear layer's bias follows its weight."""
    n = block.size
    merged: Dict[Tuple[int, str, int], List[Slice]] = {}
    for s in block.slices:
        merged.setdefault((id(s.owner), s.attr, s.dim), []).append(s)
    members = []
    for slices in merged.values():
        s = slices[0]
        own_param = s.owner is module and not _is_linear_like(module)
        if not own_param and s.attr == "bias":
            continue
        neurons = torch.cat([torch.arange(n).repeat_interleave(x.width) for x in slices])
        channels = torch.cat([x.offset + torch.arange(n * x.width) for x in slices])
        owner_name = names.get(s.owner, name)
        target = getattr(s.owner, s.attr) if own_param else s.owner
        label = f"{owner_name}.{s.attr}" if own_param else owner_name
        kind = {"in": "out", "out": "in"}.get(s.role, "other")
        members.append(Member(label, target, kind, channels, neurons, dim=s.dim))
    if attention:
        members.append(Member(name, module, "attn", torch.arange(n), torch.arange(n)))
    return members


def find_transformer_groups(model: nn.Module, ignored: Sequence[nn.Module] = (), residual: bool = False) -> List[LayoutGroup]:
    """The head and MLP groups of `model`, in module order; [] when it has no known attention.
    Raises ValueError for an attention module no adapter recognises. residual=True adds the
    residual width of a LLaMA-style decoder as one more group (kind "residual")."""
    groups = _block_groups(model, ignored)
    if residual:
        if not groups:
            raise ValueError(f"residual=True: {type(model).__name__} has no attention module the layout knows")
        block = residual_block(model)
        names = {m: n for n, m in model.named_modules()}
        emb = block.slices[0].owner
        name = names[emb]
        slice_names = {id(s.owner): names.get(s.owner, name) for s in block.slices}
        # Members: one per tensor and dimension; tied tensors (embeddings = head) once.
        seen, unique = set(), []
        for s in block.slices:
            key = (id(s.owner._parameters[s.attr]), s.dim)
            if key not in seen:
                seen.add(key)
                unique.append(s)
        view = Block(block.size, unique, 1, block.update, block.count)
        groups.append(ResidualGroup(name, block.size, _members(view, emb, name, names, False),
                                    module=emb, block=block, names=slice_names))
    return groups


def _block_groups(model: nn.Module, ignored: Sequence[nn.Module] = ()) -> List[LayoutGroup]:
    names = {m: n for n, m in model.named_modules()}
    ignored_ids = {id(m) for m in ignored}
    groups: List[LayoutGroup] = []
    inside: set = set()  # modules within a recognised block: not looked at again
    found_attention = False
    unknown: List[Tuple[str, nn.Module]] = []
    owners: Dict[Tuple[int, str], str] = {}  # (tensor owner, attribute) -> the block that cuts it
    for name, m in model.named_modules():
        if id(m) in inside:
            continue
        kind, block = _recognise(m)
        if block is None:
            if kind == "unknown" and m is not model:
                unknown.append((name, m))
            continue
        found_attention |= kind == "heads"
        for sl in block.slices:
            prev = owners.setdefault((id(sl.owner), sl.attr, sl.dim), name)
            if prev != name:
                raise ValueError(
                    f"{names.get(sl.owner, name)}.{sl.attr} is shared by {prev} and {name}: a tensor that two "
                    "attention or MLP modules read cannot lose one module's heads or channels alone"
                )
        # An attention module's insides are not looked at again; an MLP's owner may hold the
        # attention too (a BERT layer owns intermediate, output and attention).
        if kind == "heads":
            inside.update(id(sub) for sub in m.modules() if sub is not m)
        else:
            inside.update(id(s.owner) for s in block.slices)
        if id(m) in ignored_ids or any(id(s.owner) in ignored_ids for s in block.slices):
            continue
        cls = HeadGroup if kind == "heads" else MlpGroup
        slice_names = {id(s.owner): names.get(s.owner, name) for s in block.slices}
        groups.append(cls(name, block.size, _members(block, m, name, names, kind == "heads"),
                          module=m, block=block, names=slice_names))
    for name, m in unknown:
        # The innermost unknown module is named (a layer wrapping an attention is not it).
        if any(o is not m and any(sub is o for sub in m.modules()) for _, o in unknown):
            continue
        # A module that holds a known attention module is a container (a block), not an
        # attention of its own.
        if any(isinstance(g, HeadGroup) and any(sub is g.module for sub in m.modules()) for g in groups):
            continue
        if any(id(sub) in inside for sub in m.modules() if sub is not m) and not _owns_linears(m, inside):
            continue
        raise ValueError(
            f"{name} is a {type(m).__name__}, an attention module epi_fast does not know: teach the layout its "
            f"heads with epi_fast.layout.register_attention({type(m).__name__}, adapter)"
        )
    if found_attention and not groups:
        raise ValueError(
            f"{type(model).__name__} has no prunable heads or MLP channels: every attention and MLP module is ignored "
            "(ignored_layers), and layers outside its transformer blocks are not pruned"
        )
    return groups if found_attention else []


def _recognise(m: nn.Module) -> Tuple[str, Optional[Block]]:
    for match, adapter in _ATTENTION:
        if match(m):
            block = adapter(m)
            if block is not None:
                return "heads", block
    for match, adapter in _MLP:
        if match(m):
            block = adapter(m)
            if block is not None:
                return "mlp", block
    if "Attention" in type(m).__name__ and (_owns_linears(m) or any(p.dim() == 2 for p in m.parameters(recurse=False))):
        return "unknown", None
    return "none", None


def layer_width(m: Optional[nn.Module]) -> Optional[int]:
    """The width a structure-vector entry counts for module `m`: output channels of a
    conv/linear layer, query heads of a known attention module, hidden channels of a known
    MLP (None for anything else)."""
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.out_channels
    if m is None:
        return None
    _, block = _recognise(m)
    return None if block is None or block.count is None else block.count() * block.per_neuron


def _owns_linears(m: nn.Module, skip: set = frozenset()) -> bool:
    return sum(1 for c in m.modules() if _is_linear_like(c) and id(c) not in skip) >= 2
