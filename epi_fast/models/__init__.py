"""Models by name: the in-repo CNNs and torchvision's classification models.

This package sits below `epi_fast.surgery` (not in `epi_fast.app`) because a saved pruned model
names its architecture, and `load_pruned` rebuilds it by that name.
"""

from .small import (
    MODEL_NAMES,
    build_model,
    densenet_small,
    mobilenet_small,
    resnet_small,
    torchvision_names,
)

__all__ = ["MODEL_NAMES", "build_model", "resnet_small", "mobilenet_small", "densenet_small", "torchvision_names"]
