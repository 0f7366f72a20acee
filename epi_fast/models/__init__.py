"""Models by name: the in-repo CNNs, the small transformers (`vit_tiny`, the byte-level LLaMA
decoders `llama_tiny` / `llama_micro`), a 1-D residual CNN for signals (`resnet1d_small`) and torchvision's classification models.

This package sits below `epi_fast.surgery` (not in `epi_fast.app`) because a saved pruned model
names its architecture, and `load_pruned` rebuilds it by that name.
"""

from .small import (
    LM_MODEL_NAMES,
    MODEL_NAMES,
    SEQUENCE_MODEL_NAMES,
    VIT_MODEL_NAMES,
    build_model,
    densenet_small,
    mobilenet_small,
    resnet1d_small,
    resnet_small,
    torchvision_names,
    vit_tiny,
)
from .transformer import llama_lm

__all__ = ["MODEL_NAMES", "VIT_MODEL_NAMES", "SEQUENCE_MODEL_NAMES", "resnet1d_small", "LM_MODEL_NAMES", "build_model", "resnet_small", "mobilenet_small", "densenet_small", "vit_tiny",
           "llama_lm", "torchvision_names"]
