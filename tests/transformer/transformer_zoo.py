"""Small random-init transformers of every family the layout knows, and the oracle of the
equivalence tests: the dense model with removed heads and MLP channels masked.

The masking knows each family's own layout (which input columns of the output projection a
query head owns, which hidden channel feeds which column of the MLP's output projection) and
nothing of the surgery: a forward pre-hook zeroes those columns' inputs, or, where the
projection runs functionally (nn.MultiheadAttention's out_proj, torchvision Swin's proj), its
weight columns are zeroed. The vision builders (torchvision Swin V1/V2, timm ViT and DeiT) are
not in FAMILIES: tests/transformer/test_vision_families.py runs them.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Tuple

import pytest
import torch
import torch.nn as nn

transformers = pytest.importorskip("transformers")
import torchvision  # noqa: E402

warnings.filterwarnings("ignore", message=".*bos_token_id.*")
warnings.filterwarnings("ignore", message=".*eos_token_id.*")
transformers.logging.set_verbosity_error()

VOCAB = 61


def llama(heads=8, kv=4, layers=2, hidden=32, inter=48, attn="sdpa"):
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                   num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=1, pad_token_id=2)
    cfg._attn_implementation = attn
    return transformers.LlamaForCausalLM(cfg)


def qwen2(heads=8, kv=4, layers=2, hidden=32, inter=40):
    cfg = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                   num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=1, pad_token_id=2)
    return transformers.Qwen2ForCausalLM(cfg)


def mistral(heads=8, kv=4, layers=2, hidden=32, inter=40):
    cfg = transformers.MistralConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                     num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=64,
                                     bos_token_id=0, eos_token_id=1, pad_token_id=2)
    return transformers.MistralForCausalLM(cfg)


def gpt2(heads=4, layers=2, hidden=32):
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=64,
                                  bos_token_id=0, eos_token_id=1, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg)


def bert(heads=4, layers=2, hidden=32, inter=48):
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                  intermediate_size=inter, num_labels=3, max_position_embeddings=64)
    return transformers.BertForSequenceClassification(cfg)


def hf_vit(heads=4, layers=2, hidden=32, inter=48):
    cfg = transformers.ViTConfig(image_size=8, patch_size=2, num_channels=3, hidden_size=hidden, num_hidden_layers=layers,
                                 num_attention_heads=heads, intermediate_size=inter, num_labels=3)
    return transformers.ViTForImageClassification(cfg)


def tv_vit(heads=4, layers=2, hidden=32, mlp=48):
    return torchvision.models.VisionTransformer(image_size=8, patch_size=2, num_layers=layers, num_heads=heads,
                                                hidden_dim=hidden, mlp_dim=mlp, num_classes=3)


def swin(v2=False, embed=16, heads=(2, 4), depths=(2, 2), window=3):
    """A small torchvision Swin: 7 x 7 patches in windows of 3 (padded, shifted), then patch
    merging to 4 x 4 and a second stage."""
    from torchvision.models.swin_transformer import (PatchMergingV2, SwinTransformer, SwinTransformerBlockV2)

    extra = dict(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2) if v2 else {}
    return SwinTransformer(patch_size=[2, 2], embed_dim=embed, depths=list(depths), num_heads=list(heads),
                           window_size=[window, window], num_classes=3, **extra)


def swin_v2(**kwargs):
    return swin(v2=True, **kwargs)


def timm_vit(embed=64, depth=2, heads=4, **kwargs):
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=8, embed_dim=embed, depth=depth, num_heads=heads, num_classes=3,
                             **kwargs)


def timm_deit_distilled(embed=64, depth=2, heads=4):
    from timm.models.deit import VisionTransformerDistilled

    return VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=embed, depth=depth, num_heads=heads,
                                      num_classes=3)


def timm_swin(embed=16, heads=(2, 4)):
    """timm's Swin (WindowAttention, shifted windows in every second block, patch merging)."""
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=embed, depths=(2, 2), num_heads=heads,
                           num_classes=3)


def swin_images(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 14, 14, generator=g)


def timm_images(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=g)


def tokens(batch=2, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def images(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 8, 8, generator=g)


# name -> (builder, example inputs, is a causal LM)
FAMILIES: Dict[str, Tuple[Callable[[], nn.Module], Callable[[], torch.Tensor], bool]] = {
    "llama_gqa": (llama, tokens, True),
    "qwen2_gqa": (qwen2, tokens, True),
    "mistral_gqa": (mistral, tokens, True),
    "gpt2": (gpt2, tokens, True),
    "bert": (bert, tokens, False),
    "hf_vit": (hf_vit, images, False),
    "torchvision_vit": (tv_vit, images, False),
}


def logits(model, x):
    out = model(x)
    if isinstance(out, torch.Tensor):
        return out
    return out.logits


def _heads_of(module) -> Tuple[nn.Module, int, int, bool]:
    """(output projection, head_dim, query heads per key/value group, runs functionally)."""
    if isinstance(module, nn.MultiheadAttention):
        return module.out_proj, module.head_dim, 1, True
    if hasattr(module, "qkv") and hasattr(module, "window_size"):
        # torchvision Swin: proj runs functionally; the dense head size is the width over the heads.
        return module.proj, module.qkv.in_features // module.num_heads, 1, True
    if hasattr(module, "qkv"):
        return module.proj, module.head_dim, 1, False  # timm Attention
    if hasattr(module, "o_proj"):
        return module.o_proj, module.head_dim, module.q_proj.out_features // module.k_proj.out_features, False
    if hasattr(module, "c_attn"):
        return module.c_proj, module.head_dim, 1, False
    return module.output.dense, module.self.attention_head_size, 1, False


def _mlp_out_of(module) -> nn.Module:
    if isinstance(module, nn.Sequential):
        return [c for c in module if isinstance(c, nn.Linear)][1]
    for name in ("down_proj", "fc2", "linear2"):
        if hasattr(module, name):
            return getattr(module, name)
    if hasattr(module, "c_proj"):
        return module.c_proj
    return module.output.dense


def mask_model(model: nn.Module, layout, keep: torch.Tensor) -> List:
    """Mask, in `model` (the dense model `layout` describes), the heads and MLP channels that
    `keep` (bool [N]) removes. Returns the hook handles."""
    handles = []
    for g, off in zip(layout.groups, layout.offsets):
        gone = (~keep[off:off + g.size]).nonzero().flatten().tolist()
        if not gone:
            continue
        if g.kind == "heads":
            out, d, n_rep, functional = _heads_of(g.module)
            cols = [c for j in gone for c in range(j * n_rep * d, (j + 1) * n_rep * d)]
        else:
            out, functional = _mlp_out_of(g.module), False
            cols = gone
        cols_t = torch.tensor(cols)
        if functional:
            with torch.no_grad():
                out.weight[:, cols_t] = 0
            continue

        def pre_hook(mod, args, cols_t=cols_t):
            x = args[0].clone()
            x[..., cols_t] = 0
            return (x,) + tuple(args[1:])

        handles.append(out.register_forward_pre_hook(pre_hook))
    return handles
