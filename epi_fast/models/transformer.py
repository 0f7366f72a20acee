"""Small transformers for the train job's transformer tasks.

- `vit_tiny`: a torchvision `VisionTransformer` for the 8x8 one-channel digits (2x2 patches, so
  16 patch tokens and a class token; hidden 64, 4 heads, MLP 128, 4 layers, 136k parameters
  with one input channel). Its patch embedding takes `in_channels` channels.
- `llama_tiny` / `llama_micro`: Hugging Face `LlamaForCausalLM` decoders with grouped-query
  attention (8 query heads, 4 key/value heads) over byte tokens, trained from scratch by
  `epi-fast train --task lm`. `llama_tiny` (hidden 128, 4 layers, intermediate 344, 0.76 M
  parameters with tied embeddings) is the task's default; `llama_micro` (hidden 32, 2 layers,
  intermediate 88) is for tests and smoke runs.

Every builder takes plain keyword arguments only, so `save_pruned(arch={"name": ..., "kwargs":
...})` records how to build the dense model and `load_pruned` rebuilds it by name.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch.nn as nn

__all__ = ["vit_tiny", "llama_lm", "LM_PRESETS", "LM_MODEL_NAMES", "BYTE_VOCAB", "END_OF_TEXT"]

# Byte tokens 0..255 and one special token (end of text; also the padding and BOS id of
# generate()). The training text itself is pure bytes.
END_OF_TEXT = 256
BYTE_VOCAB = 257


def vit_tiny(num_classes: int = 10, in_channels: int = 3, image_size: int = 8, patch_size: int = 2,
             hidden_dim: int = 64, num_heads: int = 4, mlp_dim: int = 128, num_layers: int = 4,
             dropout: float = 0.0) -> nn.Module:
    """torchvision's VisionTransformer sized for 8x8 digits; the patch embedding (`conv_proj`)
    takes `in_channels` channels and is initialised as torchvision initialises its own."""
    from torchvision.models import VisionTransformer

    if image_size % patch_size:
        raise ValueError(f"vit_tiny: image_size {image_size} is not a multiple of patch_size {patch_size}")
    model = VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=num_layers, num_heads=num_heads,
                              hidden_dim=hidden_dim, mlp_dim=mlp_dim, dropout=dropout, num_classes=num_classes)
    if in_channels != 3:
        conv = nn.Conv2d(in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
        fan_in = in_channels * patch_size * patch_size
        nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(conv.bias)
        model.conv_proj = conv
    return model


# name -> LlamaConfig arguments (8 query heads and 4 key/value heads in both).
LM_PRESETS: Dict[str, Dict[str, Any]] = {
    "llama_tiny": {"hidden_size": 128, "num_hidden_layers": 4, "intermediate_size": 344,
                   "num_attention_heads": 8, "num_key_value_heads": 4},
    "llama_micro": {"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 88,
                    "num_attention_heads": 8, "num_key_value_heads": 4},
}
LM_MODEL_NAMES = tuple(LM_PRESETS)


def llama_lm(preset: str = "llama_tiny", vocab_size: int = BYTE_VOCAB, max_position_embeddings: int = 1024,
             attn_implementation: str = "sdpa", num_classes: Optional[int] = None, in_channels: Optional[int] = None,
             **overrides: Any) -> nn.Module:
    """A `transformers.LlamaForCausalLM` with random weights from a preset of `LM_PRESETS`, any
    LlamaConfig field overridden by keyword (tied input and output embeddings unless
    ``tie_word_embeddings=False``). `num_classes`, if given, is the vocabulary size (the classes
    of the next-token prediction); `in_channels` must be None or 1 (a token stream)."""
    try:
        import transformers
    except ImportError:
        raise ValueError("the language models need the transformers package (pip install 'epi_fast[transformers]')") from None
    if preset not in LM_PRESETS:
        raise ValueError(f"unknown language model {preset!r}: expected one of {', '.join(LM_MODEL_NAMES)}")
    if in_channels not in (None, 1):
        raise ValueError(f"a language model reads one token stream, not {in_channels} input channels")
    if num_classes is not None:
        vocab_size = int(num_classes)
    cfg = dict(LM_PRESETS[preset])
    cfg.update(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
               bos_token_id=END_OF_TEXT if vocab_size > END_OF_TEXT else None,
               eos_token_id=END_OF_TEXT if vocab_size > END_OF_TEXT else None,
               pad_token_id=END_OF_TEXT if vocab_size > END_OF_TEXT else None)
    cfg.update(overrides)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # no notes about the generation config
    try:
        config = transformers.LlamaConfig(**cfg)
        config._attn_implementation = attn_implementation
        return transformers.LlamaForCausalLM(config)
    finally:
        transformers.logging.set_verbosity(verbosity)
