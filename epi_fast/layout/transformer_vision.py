"""Attention heads and MLP channels of vision transformers beyond torchvision's ViT.

Adapters (see `epi_fast.layout.transformer`) for:

- **torchvision Swin** (`swin_t`, `swin_v2_t`, any `SwinTransformer`): `ShiftedWindowAttention`
  and `ShiftedWindowAttentionV2`. A head owns its rows of the fused ``qkv`` linear (in each of
  the q, k and v blocks), its columns of ``proj`` and its per-head parameters: its column of
  the relative position bias table (V1), its entry of ``logit_scale`` and its output row of the
  continuous position bias MLP ``cpb_mlp`` (V2). torchvision's functional
  `shifted_window_attention` takes the head size from the input width, so a module that lost
  heads becomes a `HeadPrunedShiftedWindowAttention` (or its V2), a subclass with the same
  parameters and state-dict keys whose forward uses the pruned inner width.
- **torchvision's MLP** (`torchvision.ops.MLP`, Swin's feed-forward block: Linear, activation,
  dropout, Linear, dropout): its hidden channels, like the ViT `MLPBlock` that derives from it.
- **timm** Swin's `WindowAttention`: as torchvision's V1; its forward already reads the head
  count from ``num_heads``.
- **timm** `Attention` (ViT, DeiT): the fused ``qkv`` linear and ``proj``; the module's own
  ``num_heads`` and ``attn_dim`` are updated (its forward reshapes with them). ``q_norm`` /
  ``k_norm`` normalise each head over ``head_dim`` with weights shared by every head: they
  stay. timm's MLPs: `Mlp`, `GluMlp` / `SwiGLUPacked` (fused value and gate halves), `SwiGLU`;
  one with a norm over its hidden channels is refused.

The residual width is never cut: Swin's patch merging layers and norms keep their widths.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .transformer import Block, Slice, register_attention, register_mlp

__all__ = [
    "HeadPrunedShiftedWindowAttention", "HeadPrunedShiftedWindowAttentionV2", "head_pruned_class",
]

try:  # torchvision is a dependency; the guard only keeps a broken install from breaking import
    from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2
    from torchvision.ops.misc import MLP as _TorchvisionMLP
except ImportError:  # pragma: no cover
    ShiftedWindowAttention = ShiftedWindowAttentionV2 = _TorchvisionMLP = None


# -- torchvision Swin ---------------------------------------------------------------------------


def _swin_head_dim(m: nn.Module) -> int:
    """Head size from the weights: 3 * num_heads * head_dim rows of qkv (the dense module's
    head size is its input width over num_heads; a pruned one's is not)."""
    h = int(m.num_heads)
    rows = m.qkv.weight.shape[0]
    if rows % (3 * h):
        raise ValueError(f"{type(m).__name__}: qkv has {rows} rows, not 3 x {h} heads")
    return rows // (3 * h)


def _swin_adapter(m: nn.Module) -> Optional[Block]:
    h, d = int(m.num_heads), _swin_head_dim(m)
    if m.proj.weight.shape[1] != h * d:
        raise ValueError(f"{type(m).__name__}: proj has {m.proj.weight.shape[1]} input columns, not {h} heads of {d}")
    inner = h * d
    slices: List[Slice] = []
    for part in range(3):
        slices.append(Slice(m.qkv, "weight", 0, part * inner, d, "in"))
        if m.qkv.bias is not None:
            slices.append(Slice(m.qkv, "bias", 0, part * inner, d, "in"))
    slices.append(Slice(m.proj, "weight", 1, 0, d, "out"))
    if isinstance(m, ShiftedWindowAttentionV2):
        slices.append(Slice(m, "logit_scale", 0, 0, 1, "in"))
        last = m.cpb_mlp[-1]
        if not isinstance(last, nn.Linear) or last.out_features != h:
            raise ValueError(f"{type(m).__name__}: the last layer of cpb_mlp is not a linear with one output per head")
        slices.append(Slice(last, "weight", 0, 0, 1, "in"))
        if last.bias is not None:
            slices.append(Slice(last, "bias", 0, 0, 1, "in"))
    else:
        slices.append(Slice(m, "relative_position_bias_table", 1, 0, 1, "in"))

    def update(kept: int) -> None:
        m.num_heads = kept
        m.inner_dim = kept * d
        pruned = head_pruned_class(m)
        if pruned is not None:
            m.__class__ = pruned

    return Block(h, slices, 1, update, lambda: m.num_heads)


def _shifted_window_attention(x: torch.Tensor, m: nn.Module, relative_position_bias: torch.Tensor,
                              logit_scale: Optional[torch.Tensor]) -> torch.Tensor:
    """torchvision's `shifted_window_attention` with the head size read from the weights
    (``qkv`` rows over 3 * num_heads) instead of the input width: the output projection maps
    the pruned inner width back to the input width. Same operations in the same order."""
    window_size, num_heads = m.window_size, m.num_heads
    head_dim = _swin_head_dim(m)
    inner = num_heads * head_dim
    qkv_bias, proj_bias = m.qkv.bias, m.proj.bias
    B, H, W, C = x.shape
    pad_r = (window_size[1] - W % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - H % window_size[0]) % window_size[0]
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    _, pad_H, pad_W, _ = x.shape

    shift_size = list(m.shift_size)
    if window_size[0] >= pad_H:
        shift_size[0] = 0
    if window_size[1] >= pad_W:
        shift_size[1] = 0
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))

    num_windows = (pad_H // window_size[0]) * (pad_W // window_size[1])
    x = x.view(B, pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, window_size[0] * window_size[1], C)

    if logit_scale is not None and qkv_bias is not None:
        qkv_bias = qkv_bias.clone()
        length = qkv_bias.numel() // 3
        qkv_bias[length:2 * length].zero_()
    qkv = F.linear(x, m.qkv.weight, qkv_bias)
    qkv = qkv.reshape(x.size(0), x.size(1), 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        q = q * head_dim ** -0.5
        attn = q.matmul(k.transpose(-2, -1))
    attn = attn + relative_position_bias

    if sum(shift_size) > 0:
        attn_mask = x.new_zeros((pad_H, pad_W))
        h_slices = ((0, -window_size[0]), (-window_size[0], -shift_size[0]), (-shift_size[0], None))
        w_slices = ((0, -window_size[1]), (-window_size[1], -shift_size[1]), (-shift_size[1], None))
        count = 0
        for hs in h_slices:
            for ws in w_slices:
                attn_mask[hs[0]:hs[1], ws[0]:ws[1]] = count
                count += 1
        attn_mask = attn_mask.view(pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1])
        attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(num_windows, window_size[0] * window_size[1])
        attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))
        attn = attn.view(x.size(0) // num_windows, num_windows, num_heads, x.size(1), x.size(1))
        attn = attn + attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, x.size(1), x.size(1))

    attn = F.softmax(attn, dim=-1)
    attn = F.dropout(attn, p=m.attention_dropout, training=m.training)

    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), inner)
    x = F.linear(x, m.proj.weight, proj_bias)
    x = F.dropout(x, p=m.dropout, training=m.training)

    x = x.view(B, pad_H // window_size[0], pad_W // window_size[1], window_size[0], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_H, pad_W, C)
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(shift_size[0], shift_size[1]), dims=(1, 2))
    return x[:, :H, :W, :].contiguous()


if ShiftedWindowAttention is not None:

    class HeadPrunedShiftedWindowAttention(ShiftedWindowAttention):
        """torchvision's ShiftedWindowAttention whose heads were pruned: its inner width
        (``num_heads * head_dim``, ``inner_dim``) is below its input width, which the functional
        `shifted_window_attention` does not allow. Same parameters, buffers and state-dict
        keys; same results as the dense module with the removed heads masked."""

        inner_dim: int

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _shifted_window_attention(x, self, self.get_relative_position_bias(), None)

    class HeadPrunedShiftedWindowAttentionV2(ShiftedWindowAttentionV2):
        """ShiftedWindowAttentionV2 whose heads were pruned (see
        `HeadPrunedShiftedWindowAttention`): cosine attention with one ``logit_scale`` and one
        output of ``cpb_mlp`` per kept head."""

        inner_dim: int

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _shifted_window_attention(x, self, self.get_relative_position_bias(), self.logit_scale)

    _PRUNED = {ShiftedWindowAttention: HeadPrunedShiftedWindowAttention,
               ShiftedWindowAttentionV2: HeadPrunedShiftedWindowAttentionV2}
else:  # pragma: no cover
    HeadPrunedShiftedWindowAttention = HeadPrunedShiftedWindowAttentionV2 = None
    _PRUNED = {}


def head_pruned_class(m: nn.Module):
    """The class a module of exactly a Swin attention class becomes once it lost heads (None
    for any other module, a subclass of the user's included, and for one already swapped)."""
    return _PRUNED.get(type(m))


def _is_swin_attention(m: nn.Module) -> bool:
    return ShiftedWindowAttention is not None and isinstance(m, ShiftedWindowAttention)


# -- torchvision MLP (Swin's feed-forward block) ------------------------------------------------


def _tv_mlp_parts(m: nn.Module):
    """(fc1, fc2) of a torchvision MLP that is Linear, parameterless activation/dropout,
    Linear, dropout; None for deeper MLPs and for one with a norm (its statistics over the
    hidden channels would change when channels go)."""
    lins = [c for c in m if isinstance(c, nn.Linear)]
    if len(lins) != 2:
        return None
    for c in m:
        if c in lins:
            continue
        if "Norm" in type(c).__name__ or any(True for _ in c.parameters()):
            return None
    return lins


def _tv_mlp_adapter(m: nn.Module) -> Optional[Block]:
    parts = _tv_mlp_parts(m)
    if parts is None:
        return None
    fc1, fc2 = parts
    slices = [Slice(fc1, "weight", 0, 0, 1, "in")]
    if fc1.bias is not None:
        slices.append(Slice(fc1, "bias", 0, 0, 1, "in"))
    slices.append(Slice(fc2, "weight", 1, 0, 1, "out"))
    return Block(fc1.out_features, slices, 1, None, lambda: fc1.weight.shape[0])


def _is_tv_mlp(m: nn.Module) -> bool:
    return _TorchvisionMLP is not None and isinstance(m, _TorchvisionMLP)


# -- timm Attention (ViT, DeiT) -----------------------------------------------------------------


def _is_timm_attention(m: nn.Module) -> bool:
    # timm.layers.Attention only: other timm modules named Attention (BEiT's, with separate q/v
    # biases and a relative position table) own more per-head parameters.
    return (type(m).__module__ == "timm.layers.attention" and type(m).__name__ == "Attention"
            and isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "proj", None), nn.Linear)
            and isinstance(getattr(m, "num_heads", None), int) and isinstance(getattr(m, "head_dim", None), int))


def _timm_adapter(m: nn.Module) -> Optional[Block]:
    h, d = int(m.num_heads), int(m.head_dim)
    inner = h * d
    name = type(m).__name__
    if m.qkv.out_features != 3 * inner or m.proj.in_features != inner:
        raise ValueError(f"timm {name}: qkv/proj widths {m.qkv.out_features}/{m.proj.in_features} are not "
                         f"{h} heads of head_dim {d}")
    if not isinstance(getattr(m, "attn_dim", None), int):
        raise ValueError(f"timm {name} without attn_dim: this timm version reshapes the heads' output with the "
                         "input width, so its heads cannot be pruned (timm 1.0.31 is known to work)")
    if not isinstance(getattr(m, "norm", nn.Identity()), nn.Identity):
        # scale_norm: a norm over all heads' outputs together, whose statistics removing a
        # head would change (pruning would not equal masking).
        raise ValueError(f"timm {name} with scale_norm (a norm over every head's output) is not supported "
                         "for head pruning")
    slices: List[Slice] = []
    for part in range(3):
        slices.append(Slice(m.qkv, "weight", 0, part * inner, d, "in"))
        if m.qkv.bias is not None:
            slices.append(Slice(m.qkv, "bias", 0, part * inner, d, "in"))
    gate = getattr(m, "gate", None)
    if isinstance(gate, nn.Linear):  # gated attention: one sigmoid gate per output channel
        slices.append(Slice(gate, "weight", 0, 0, d, "in"))
        if gate.bias is not None:
            slices.append(Slice(gate, "bias", 0, 0, d, "in"))
    slices.append(Slice(m.proj, "weight", 1, 0, d, "out"))

    def update(kept: int) -> None:
        m.num_heads = kept
        m.attn_dim = kept * d

    return Block(h, slices, 1, update, lambda: m.num_heads)


# -- timm Swin (WindowAttention) ----------------------------------------------------------------


def _is_timm_window_attention(m: nn.Module) -> bool:
    return (type(m).__module__ == "timm.models.swin_transformer" and type(m).__name__ == "WindowAttention"
            and isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "proj", None), nn.Linear)
            and isinstance(getattr(m, "relative_position_bias_table", None), torch.Tensor))


def _timm_window_adapter(m: nn.Module) -> Optional[Block]:
    """timm's Swin `WindowAttention`: like torchvision's V1 (rows of the fused ``qkv``, columns
    of ``proj``, one column of the relative position bias table per head). Its forward reshapes
    with ``num_heads`` and -1 and its scale is fixed at construction, so updating ``num_heads``
    is all a pruned module needs."""
    h = int(m.num_heads)
    rows = m.qkv.weight.shape[0]
    if rows % (3 * h) or m.proj.weight.shape[1] * 3 != rows:
        raise ValueError(f"timm WindowAttention: qkv has {rows} rows and proj {m.proj.weight.shape[1]} columns, "
                         f"not 3 x {h} heads and {h} heads")
    if m.relative_position_bias_table.shape[1] != h:
        raise ValueError(f"timm WindowAttention: relative_position_bias_table has {m.relative_position_bias_table.shape[1]} "
                         f"columns, not one per head ({h})")
    d = rows // (3 * h)
    slices: List[Slice] = []
    for part in range(3):
        slices.append(Slice(m.qkv, "weight", 0, part * h * d, d, "in"))
        if m.qkv.bias is not None:
            slices.append(Slice(m.qkv, "bias", 0, part * h * d, d, "in"))
    slices.append(Slice(m.proj, "weight", 1, 0, d, "out"))
    slices.append(Slice(m, "relative_position_bias_table", 1, 0, 1, "in"))

    def update(kept: int) -> None:
        m.num_heads = kept

    return Block(h, slices, 1, update, lambda: m.num_heads)


# -- timm MLPs ----------------------------------------------------------------------------------

_TIMM_MLPS = ("Mlp", "GluMlp", "SwiGLU", "GatedMlp")


def _is_timm_mlp(m: nn.Module) -> bool:
    return type(m).__module__ == "timm.layers.mlp" and type(m).__name__ in _TIMM_MLPS


def _rows_and_columns(firsts, fc2, offsets=(0,)) -> List[Slice]:
    slices = []
    for lin in firsts:
        for off in offsets:
            slices.append(Slice(lin, "weight", 0, off, 1, "in"))
            if lin.bias is not None:
                slices.append(Slice(lin, "bias", 0, off, 1, "in"))
    slices.append(Slice(fc2, "weight", 1, 0, 1, "out"))
    return slices


def _timm_mlp_adapter(m: nn.Module) -> Optional[Block]:
    """timm's Mlp (fc1, fc2), GluMlp / SwiGLUPacked (one fc1 whose two halves are the value and
    the gate: hidden channel j owns rows j and h + j), SwiGLU (fc1_g, fc1_x) and GatedMlp
    without a gate layer. A norm over the hidden channels (norm_layer, scale_mlp_norm) or a
    spatial gating unit is refused: its statistics, or its mixing of channels, would change
    when channels go. The 1x1-convolution form (use_conv) is left alone."""
    name = type(m).__name__
    firsts = [getattr(m, n) for n in ("fc1_g", "fc1_x")] if name == "SwiGLU" else [m.fc1]
    if not all(isinstance(lin, nn.Linear) for lin in firsts + [m.fc2]):
        return None
    for part in ("norm", "gate"):
        if not isinstance(getattr(m, part, nn.Identity()), nn.Identity):
            raise ValueError(f"timm {name} with a {part} layer over its hidden channels is not supported for MLP-channel "
                             "pruning (removing channels would change what that layer computes for the others)")
    lead = firsts[0]
    if name == "GluMlp":
        h = lead.out_features // 2
        if lead.out_features != 2 * h or m.fc2.in_features != h:
            raise ValueError(f"timm GluMlp: fc1 has {lead.out_features} rows and fc2 {m.fc2.in_features} columns, not 2h and h")
        return Block(h, _rows_and_columns(firsts, m.fc2, (0, h)), 1, None, lambda: lead.weight.shape[0] // 2)
    return Block(lead.out_features, _rows_and_columns(firsts, m.fc2), 1, None, lambda: lead.weight.shape[0])


register_attention(_is_swin_attention, _swin_adapter)
register_attention(_is_timm_attention, _timm_adapter)
register_attention(_is_timm_window_attention, _timm_window_adapter)
register_mlp(_is_tv_mlp, _tv_mlp_adapter)
register_mlp(_is_timm_mlp, _timm_mlp_adapter)
