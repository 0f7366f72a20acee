"""torchvision's one-stage detectors (RetinaNet, FCOS, SSD, SSDlite): traced along their
tensor path, with the class and box output layers never pruned.

A detector's forward takes a list of images, resizes and batches them (its `transform`),
runs `backbone` and `head` on the batch, and then decodes anchors into boxes, thresholds
scores and runs non-maximum suppression, which are data-dependent operations that a dependency
graph cannot follow and that hold no prunable layer. The layout therefore traces what the
detector computes between its batched input tensor and its head outputs:

    images = model.transform(images)            (outside the trace: nothing to prune there)
    features = model.backbone(images.tensors)   (a tensor or a dict of feature maps)
    outputs = model.head(list(features))        ({"cls_logits", "bbox_regression", ...})

which is exactly the code the three detectors share in their own `forward`. The head's
output layers (class logits, box regression, FCOS's centerness) reach those outputs and are
never pruned, so the number of classes and of anchors per location stays; they are also
named explicitly for every head type torchvision ships (`head_output_layers`). Everything
upstream prunes: the backbone, the neck (FPN, SSD's extra blocks) and the head's towers,
with the coupling the trace finds (an FPN's output width is one group shared by every level
and by the head that every level runs through; its lateral convs read the backbone stages).

Two-stage detectors (Faster, Mask and Keypoint R-CNN) crop features per region (RoIAlign)
between their stages; they are refused with a ValueError.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["is_detector", "detector_images", "head_outputs", "head_output_layers", "detector_trace",
           "SUPPORTED_DETECTORS"]

SUPPORTED_DETECTORS = ("RetinaNet", "FCOS", "SSD")


def _detection_classes() -> Tuple[tuple, tuple]:
    # Imported on use: torchvision is a dependency of epi_fast's models, not of every layout.
    try:
        from torchvision.models.detection import FCOS, RetinaNet
        from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
        from torchvision.models.detection.ssd import SSD
    except ImportError:  # pragma: no cover  (torchvision is installed with epi_fast)
        return (), ()
    return (RetinaNet, FCOS, SSD), (GeneralizedRCNN,)


def is_detector(model: nn.Module) -> bool:
    """Whether `model` is one of torchvision's one-stage detectors (RetinaNet, FCOS, SSD and
    SSDlite, subclasses included), which the layout traces along their tensor path."""
    supported, _ = _detection_classes()
    return bool(supported) and isinstance(model, supported)


def _check_detector(model: nn.Module) -> bool:
    """True for a supported detector, False for any other model; ValueError for a detector of
    torchvision's that cannot be laid out."""
    supported, refused = _detection_classes()
    if supported and isinstance(model, supported):
        return True
    if refused and isinstance(model, refused):
        raise ValueError(
            f"{type(model).__name__} is a two-stage detector: its region-of-interest heads crop features per "
            f"proposal (RoIAlign), which epi_fast cannot trace; supported detectors are torchvision's "
            f"{', '.join(SUPPORTED_DETECTORS)} (SSDlite included)"
        )
    return False


def detector_images(example_inputs: Any) -> List[torch.Tensor]:
    """The images in a detector's example_inputs: a float tensor [B, 3, H, W] (the detector
    iterates over its first dimension), a one-element tuple or list holding a list of
    [3, H, W] images, or {"images": [...]}; anything else is a ValueError."""
    images = example_inputs
    if isinstance(images, dict):
        if set(images) != {"images"}:
            raise ValueError(
                f"example_inputs of a detector as keyword inputs must be {{'images': [...]}} only, got keys "
                f"{sorted(images)}; targets are not needed (the layout traces in eval mode)"
            )
        images = images["images"]
    elif isinstance(images, (tuple, list)) and len(images) == 1 and isinstance(images[0], (list, tuple)):
        images = images[0]
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(
                f"example_inputs of a detector must be a batch of images [B, 3, H, W], got a tensor of shape "
                f"{tuple(images.shape)}"
            )
        return list(images)
    if isinstance(images, (list, tuple)) and images and all(isinstance(i, torch.Tensor) and i.dim() == 3
                                                           for i in images):
        if example_inputs is images:
            # call_model would pass the images as separate arguments (the second as targets).
            raise ValueError(
                "example_inputs of a detector must be a batch tensor [B, 3, H, W] or a one-element tuple "
                "holding the list of images, ([img, ...],); a bare list of images would be unpacked into "
                "the detector's arguments"
            )
        return list(images)
    raise ValueError(
        "example_inputs of a detector must be a batch tensor [B, 3, H, W] or a one-element tuple holding a "
        f"list of [3, H, W] images; got {type(example_inputs).__name__}"
    )


def head_outputs(model: nn.Module, images: Any) -> Dict[str, torch.Tensor]:
    """The detector's dense predictions for `images` (a batch tensor [B, 3, H, W] or a list of
    [3, H, W] images): its head's dict ({"cls_logits": [B, anchors, classes],
    "bbox_regression": [B, anchors, 4]}, FCOS adds "bbox_ctrness"), computed as the
    detector's own forward computes them before decoding boxes. The transform runs without
    autograd (resizing and batching hold nothing to prune or train)."""
    if not is_detector(model):
        raise TypeError(f"head_outputs needs a torchvision RetinaNet, FCOS or SSD, got {type(model).__name__}")
    images = list(images)
    with torch.no_grad():
        batch, _ = model.transform(images)
    features = model.backbone(batch.tensors)
    if isinstance(features, torch.Tensor):
        features = OrderedDict([("0", features)])
    return model.head(list(features.values()))


def _last_conv(module: nn.Module) -> Optional[nn.Module]:
    convs = [m for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return convs[-1] if convs else None


def head_output_layers(model: nn.Module) -> List[nn.Module]:
    """The output layers of the detector's head, whose channels are the class logits, the
    box regression (and FCOS's centerness) of every anchor: RetinaNetHead's and FCOSHead's
    `cls_logits`, `bbox_reg` (and `bbox_ctrness`), and the last convolution of every level's
    scoring module of SSDHead / SSDLiteHead. Empty for a head of another type (its output
    layers are still found by the trace: they reach the head's outputs)."""
    head = getattr(model, "head", None)
    found: List[nn.Module] = []
    for part in ("classification_head", "regression_head"):
        sub = getattr(head, part, None)
        if sub is None:
            continue
        for attr in ("cls_logits", "bbox_reg", "bbox_ctrness"):
            layer = getattr(sub, attr, None)
            if isinstance(layer, nn.Module):
                found.append(layer)
        module_list = getattr(sub, "module_list", None)  # SSD's SSDScoringHead: one module per level
        if isinstance(module_list, nn.ModuleList):
            found += [c for c in (_last_conv(m) for m in module_list) if c is not None]
    return found


def detector_trace(model: nn.Module, example_inputs: Any) -> Tuple[Optional[Callable], List[nn.Module]]:
    """(the forward the trace runs, the layers never pruned) for a supported detector; (None,
    []) for any other model. Checks example_inputs (ValueError) before anything runs."""
    if not _check_detector(model):
        return None, []
    detector_images(example_inputs)

    def call(m: nn.Module, inputs: Any) -> Dict[str, torch.Tensor]:
        return head_outputs(m, detector_images(inputs))

    return call, head_output_layers(model)
