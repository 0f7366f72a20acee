"""Prunable torchvision detectors with a ResNet backbone, sized for small canvases.

`build_detector("ssd_resnet18")` (the default) is torchvision's SSD class on a ResNet-18
backbone: the paper's detection experiment uses SSD300 on ResNet-34 (`"ssd_resnet34"` here),
and ResNet-18 is what trains to a useful mAP on 64 x 64 digit canvases within minutes on two
CPU cores. `"retinanet_resnet18_fpn"` is torchvision's RetinaNet on a ResNet-18 FPN. All are
randomly initialised (nothing is downloaded), with trainable BatchNorm (from scratch, frozen
statistics would be meaningless), and their transform keeps the canvas size (no resize to
800 pixels).

Every detector here, and any torchvision RetinaNet, FCOS or SSD a user passes, prunes through
`epi_fast.prune` / `EPIPruner` with a batch tensor [B, 3, S, S] as example_inputs: the
backbone, the neck and the head towers lose channels, the class and box output layers never do
(`epi_fast.layout.detection`). None of these heads uses GroupNorm: a channel removed from a
GroupNorm group changes that group's statistics, so torchvision's FCOS and RetinaNet v2 heads
keep their GroupNorm towers whole (`epi_fast.layout.channels`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .._args import check_int
from ..layout.detection import head_output_layers, head_outputs, is_detector

__all__ = ["DETECTOR_NAMES", "build_detector", "SSDResNetBackbone", "head_outputs", "head_output_layers",
           "is_detector"]

DETECTOR_NAMES = ("ssd_resnet18", "ssd_resnet34", "retinanet_resnet18_fpn")

# Digits on the embedded canvases are 10 to 32 pixels tall on a 64-pixel canvas; SSD's default
# boxes take their sizes from these fractions of the image side (one more than the levels: the
# second box of level k has size sqrt(s_k s_{k+1})).
_SSD_SCALES_64 = (0.15, 0.3, 0.5, 0.7, 0.9)


class SSDResNetBackbone(nn.Module):
    """A torchvision ResNet's stem and stages as SSD feature maps: the outputs of `layer2`,
    `layer3` and `layer4` (strides 8, 16, 32), then extra blocks (1x1 conv to half width, 3x3
    stride-2 conv, each with BatchNorm and ReLU) halving the map down to 1 x 1. Returns an
    OrderedDict of the maps ("0", "1", ...), as torchvision's SSD expects."""

    def __init__(self, depth: int = 18, image_size: int = 64, extra_width: int = 256) -> None:
        super().__init__()
        import torchvision

        if depth not in (18, 34):
            raise ValueError(f"SSD backbone depth must be 18 or 34, got {depth}")
        body = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        self.stem = nn.Sequential(body.conv1, body.bn1, body.relu, body.maxpool, body.layer1)
        self.layer2, self.layer3, self.layer4 = body.layer2, body.layer3, body.layer4
        side = math.ceil(image_size / 32)
        extras, cin = [], 512
        while True:  # at least one extra block; the last map is 1 x 1
            extras.append(nn.Sequential(
                nn.Conv2d(cin, extra_width // 2, 1, bias=False), nn.BatchNorm2d(extra_width // 2), nn.ReLU(inplace=True),
                nn.Conv2d(extra_width // 2, extra_width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(extra_width), nn.ReLU(inplace=True),
            ))
            cin = extra_width
            side = math.ceil(side / 2)
            if side <= 1:
                break
        self.extras = nn.ModuleList(extras)

    @property
    def out_channels(self):
        """Channels of each feature map (read from the layers: a pruned backbone reports its
        pruned widths)."""
        def width(stage):
            return [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features
        return [width(self.layer2), width(self.layer3), width(self.layer4)] + [width(e) for e in self.extras]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.layer2(self.stem(x))
        maps = [x]
        x = self.layer3(x)
        maps.append(x)
        x = self.layer4(x)
        maps.append(x)
        for block in self.extras:
            x = block(x)
            maps.append(x)
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


def _check(name, num_classes, image_size, fpn_width):
    if name not in DETECTOR_NAMES:
        raise ValueError(f"unknown detector {name!r}: expected one of {', '.join(DETECTOR_NAMES)}")
    check_int(num_classes, "num_classes", 2)  # the background and at least one class
    check_int(image_size, "image_size", 32)  # ResNet's stride: layer4 is image_size / 32
    check_int(fpn_width, "fpn_width", 1)


def build_detector(
    name: str = "ssd_resnet18",
    num_classes: int = 11,
    image_size: int = 64,
    *,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    detections_per_img: int = 100,
    box_scales: Optional[Sequence[float]] = None,
    fpn_width: int = 64,
    anchor_sizes: Optional[Sequence[Tuple[int, ...]]] = None,
    image_mean: Sequence[float] = (0.5, 0.5, 0.5),
    image_std: Sequence[float] = (0.5, 0.5, 0.5),
) -> nn.Module:
    """A randomly initialised torchvision detector for square images of `image_size` pixels.

    name: "ssd_resnet18" (default), "ssd_resnet34" (SSD on ResNet-18 / ResNet-34: feature maps
    of layer2, layer3, layer4 and extra blocks down to 1 x 1, four default boxes per location:
    two squares and the 2:1 and 1:2 boxes) or "retinanet_resnet18_fpn" (RetinaNet on a ResNet-18
    FPN of width `fpn_width` over layer2 to layer4 plus a max-pooled level, no GroupNorm in the
    head, three aspect ratios and two sizes per level).
    num_classes: including the background (torchvision's convention: labels 1..num_classes-1).
    box_scales: SSD's default-box scales as fractions of the image side, one more than the
    feature maps (default tuned for 64-pixel canvases, spread evenly from 0.15 to 0.9 for other
    sizes). anchor_sizes: RetinaNet's anchor sizes in pixels, one tuple per level.
    score_thresh, nms_thresh, detections_per_img: the post-processing of eval mode.
    image_mean, image_std: the normalisation of the internal transform (grey canvases in
    [0, 1]: 0.5 and 0.5).
    """
    _check(name, num_classes, image_size, fpn_width)
    if name.startswith("ssd_"):
        return _ssd(int(name[len("ssd_resnet"):]), num_classes, image_size, box_scales, score_thresh, nms_thresh,
                    detections_per_img, image_mean, image_std)
    return _retinanet(num_classes, image_size, fpn_width, anchor_sizes, score_thresh, nms_thresh, detections_per_img,
                      image_mean, image_std)


def _ssd(depth, num_classes, image_size, box_scales, score_thresh, nms_thresh, detections_per_img, mean, std):
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD, SSDHead

    backbone = SSDResNetBackbone(depth, image_size)
    levels = len(backbone.out_channels)
    if box_scales is None:
        box_scales = _SSD_SCALES_64 if levels == 4 else [0.15 + (0.9 - 0.15) * k / levels for k in range(levels + 1)]
    box_scales = [float(s) for s in box_scales]
    if len(box_scales) != levels + 1 or not all(0 < s <= 1.5 for s in box_scales):
        raise ValueError(f"box_scales must hold {levels + 1} fractions of the image side in (0, 1.5] for "
                         f"{levels} feature maps, got {box_scales}")
    boxes = DefaultBoxGenerator([[2]] * levels, scales=box_scales)
    head = SSDHead(backbone.out_channels, boxes.num_anchors_per_location(), num_classes)
    return SSD(backbone, boxes, (image_size, image_size), num_classes, image_mean=list(mean), image_std=list(std),
               head=head, score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
               topk_candidates=200)


def _retinanet(num_classes, image_size, fpn_width, anchor_sizes, score_thresh, nms_thresh, detections_per_img,
               mean, std):
    import torchvision
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.retinanet import RetinaNetHead

    body = torchvision.models.resnet18(weights=None)
    # layer2..layer4 (strides 8, 16, 32) and a max-pooled level (stride 64).
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], fpn_width)
    if anchor_sizes is None:
        base = image_size / 64
        anchor_sizes = tuple((round(a * base), round(b * base)) for a, b in ((12, 16), (24, 32), (40, 48), (56, 64)))
    anchor_sizes = tuple(tuple(int(s) for s in level) for level in anchor_sizes)
    if len(anchor_sizes) != 4:
        raise ValueError(f"anchor_sizes must give one tuple of sizes per level (4 levels), got {len(anchor_sizes)}")
    anchors = AnchorGenerator(anchor_sizes, ((0.75, 1.0, 1.5),) * len(anchor_sizes))
    head = RetinaNetHead(fpn_width, anchors.num_anchors_per_location()[0], num_classes)
    return RetinaNet(backbone, num_classes, min_size=image_size, max_size=image_size, image_mean=list(mean),
                     image_std=list(std), anchor_generator=anchors, head=head, score_thresh=score_thresh,
                     nms_thresh=nms_thresh, detections_per_img=detections_per_img, topk_candidates=200)
