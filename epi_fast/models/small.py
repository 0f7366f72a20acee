"""Small CNNs for 8x8 (digits) up to 32x32 inputs, and one entry point for torchvision's models
(and for the small transformers of `epi_fast.models.transformer`).

The three in-repo networks cover the three kinds of channel coupling that pruning must respect:
residual adds (`resnet_small`), depthwise convolutions with inverted residuals
(`mobilenet_small`) and concatenations (`densenet_small`). They are tiny on purpose: the tests
and the default job run on two CPU cores.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .transformer import LM_MODEL_NAMES  # causal language models, built by build_model too

__all__ = ["MODEL_NAMES", "VIT_MODEL_NAMES", "SEQUENCE_MODEL_NAMES", "resnet1d_small", "LM_MODEL_NAMES", "build_model", "resnet_small", "mobilenet_small", "densenet_small", "vit_tiny",
           "torchvision_names"]


# Convolution, batch norm and pooling per signal dimension: 2 for images, 1 for sequences
# (MNIST-1D's 40-sample signals); the networks are the same otherwise.
_LAYERS = {2: (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d), 1: (nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d)}


def _layers(dim: int):
    if dim not in _LAYERS:
        raise ValueError(f"dim must be 1 (sequences) or 2 (images), got {dim!r}")
    return _LAYERS[dim]


def _conv_bn(cin, cout, kernel=3, stride=1, groups=1, dim=2):
    conv, bn, _ = _layers(dim)
    return nn.Sequential(
        conv(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        bn(cout),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1, dim=2, kernel=3):
        super().__init__()
        conv, bn, _ = _layers(dim)
        self.conv1 = conv(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn1 = bn(cout)
        self.conv2 = conv(cout, cout, kernel, 1, kernel // 2, bias=False)
        self.bn2 = bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _conv_bn(cin, cout, 1, stride, dim=dim) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """Stem conv, three stages of BasicBlocks (widths 16/32/64; the first block of each later
    stage downsamples through a 1x1 shortcut conv), global average pool, linear head.
    `dim=1` builds the same network of Conv1d / BatchNorm1d for sequences [N, C, L]."""

    def __init__(self, num_classes=10, in_channels=3, widths=(16, 32, 64), blocks=(1, 1, 1), stem=16, dim=2,
                 kernel=3, stem_stride=1):
        super().__init__()
        pool = _layers(dim)[2]
        self.stem = nn.Sequential(_conv_bn(in_channels, stem, kernel, stem_stride, dim=dim), nn.ReLU(inplace=True))
        layers, cin = [], stem
        for i, (width, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(cin, width, stride=2 if (i > 0 and j == 0) else 1, dim=dim, kernel=kernel))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.pool = pool(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers += [_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        # With expand == 1 this is the depthwise-separable block of MobileNetV1.
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True), _conv_bn(hidden, cout, 1)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetSmall(nn.Module):
    """MobileNetV2-style: a depthwise-separable block, then inverted residuals."""

    # (expansion, out channels, blocks, first stride)
    CONFIG = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2))

    def __init__(self, num_classes=10, in_channels=3, stem=16, last=128):
        super().__init__()
        layers, cin = [_conv_bn(in_channels, stem), nn.ReLU6(inplace=True)], stem
        for t, c, n, s in self.CONFIG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [_conv_bn(cin, last, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth, bottleneck=4):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bottleneck * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bottleneck * growth)
        self.conv2 = nn.Conv2d(bottleneck * growth, growth, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.conv1(self.relu(self.norm1(x)))
        out = self.conv2(self.relu(self.norm2(out)))
        return torch.cat([x, out], 1)


class DenseNetSmall(nn.Module):
    """Two dense blocks (pre-activation BN-ReLU-conv layers whose outputs are concatenated)
    joined by a compressing transition."""

    def __init__(self, num_classes=10, in_channels=3, stem=16, growth=8, layers=(3, 3)):
        super().__init__()
        blocks, cin = [nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)], stem
        for i, n in enumerate(layers):
            for _ in range(n):
                blocks.append(DenseLayer(cin, growth))
                cin += growth
            if i < len(layers) - 1:
                blocks += [nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cin // 2, 1, bias=False), nn.AvgPool2d(2)]
                cin //= 2
        blocks += [nn.BatchNorm2d(cin), nn.ReLU()]
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def resnet_small(num_classes=10, in_channels=3, **kwargs) -> nn.Module:
    return ResNetSmall(num_classes, in_channels, **kwargs)


def resnet1d_small(num_classes=10, in_channels=1, **kwargs) -> nn.Module:
    """`resnet_small` for 1-D signals (MNIST-1D: one channel of 40 samples): kernel 5, a stem of
    stride 2, widths 32/48/64, so that every layer keeps at least 4 channels at 70% under the
    default per-layer limit (0.9), and an epoch of MNIST-1D's 4,000 signals is cheap on a CPU."""
    kwargs = {"widths": (32, 48, 64), "blocks": (1, 1, 1), "stem": 32, "kernel": 5, "stem_stride": 2, **kwargs,
              "dim": 1}
    return ResNetSmall(num_classes, in_channels, **kwargs)


def mobilenet_small(num_classes=10, in_channels=3, **kwargs) -> nn.Module:
    return MobileNetSmall(num_classes, in_channels, **kwargs)


def densenet_small(num_classes=10, in_channels=3, **kwargs) -> nn.Module:
    return DenseNetSmall(num_classes, in_channels, **kwargs)


def vit_tiny(num_classes=10, in_channels=3, **kwargs) -> nn.Module:
    from .transformer import vit_tiny as build

    return build(num_classes, in_channels, **kwargs)


_CNNS = {"resnet_small": resnet_small, "mobilenet_small": mobilenet_small, "densenet_small": densenet_small}
MODEL_NAMES = tuple(_CNNS)  # the in-repo CNNs for images
SEQUENCE_MODEL_NAMES = ("resnet1d_small",)  # the in-repo CNN for 1-D signals [N, C, L]
VIT_MODEL_NAMES = ("vit_tiny",)  # the in-repo vision transformer (8x8 inputs, like the CNNs)
_IN_REPO = {**_CNNS, "vit_tiny": vit_tiny, "resnet1d_small": resnet1d_small}



def torchvision_names() -> list[str]:
    """torchvision's classification models (weights are never downloaded here)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels == in_channels:
                    return
                if child.groups != 1:
                    raise ValueError(f"cannot adapt a grouped first convolution to {in_channels} input channels")
                new = nn.Conv2d(
                    in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                    child.dilation, 1, child.bias is not None, child.padding_mode,
                )
                setattr(parent, name, new)
                return
    raise ValueError(f"found no Conv2d to adapt to {in_channels} input channels")


def _timm_model(name: str, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ValueError(f"model 'timm/{name}' needs timm: pip install 'epi_fast[timm]'") from None
    if name not in timm.list_models():
        raise ValueError(f"unknown timm model {name!r} (timm.list_models() lists the names)")
    # Random weights: nothing is downloaded.
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)


def build_model(name: str, num_classes: Optional[int] = None, in_channels: Optional[int] = None, **kwargs) -> nn.Module:
    """An in-repo model (`MODEL_NAMES`, `VIT_MODEL_NAMES`, `LM_MODEL_NAMES`), any torchvision
    classification model by name, or a timm model as "timm/NAME" (the `timm` extra), with
    random weights. Classifiers default to 10 classes and 3 input channels (1 for
    `SEQUENCE_MODEL_NAMES`);
    for torchvision models with in_channels != 3 the first convolution is replaced by one with
    in_channels inputs. The language models (`LM_MODEL_NAMES`, Hugging Face LLaMA decoders over
    byte tokens) take `epi_fast.models.transformer.llama_lm`'s keyword arguments (vocab_size,
    max_position_embeddings, any LlamaConfig field)."""
    if name in LM_MODEL_NAMES:
        from .transformer import llama_lm

        return llama_lm(name, num_classes=num_classes, in_channels=in_channels, **kwargs)
    num_classes = 10 if num_classes is None else num_classes
    if in_channels is None:
        in_channels = 1 if name in SEQUENCE_MODEL_NAMES else 3
    if name in _IN_REPO:
        return _IN_REPO[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
    if name.startswith("timm/"):
        return _timm_model(name[len("timm/"):], num_classes, in_channels, **kwargs)
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(
            f"unknown model {name!r}: expected one of {', '.join(tuple(_IN_REPO) + LM_MODEL_NAMES)} or a torchvision "
            f"classification model (e.g. resnet18, mobilenet_v2)"
        )
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model
