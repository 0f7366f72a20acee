"""The models the benchmarks score: torchvision CNNs, a transformer-shaped MLP stack, a tiny CNN.

Weights are random (weights=None): the benchmarks need shapes and bytes, not trained values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

TORCHVISION = ("resnet18", "resnet50", "mobilenet_v2")
PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)
BATCHNORM = nn.modules.batchnorm._BatchNorm

# A 7B-style MLP block: hidden h, intermediate ~2.6875 h (4096 -> 11008), up/gate/down.
MLP_BLOCKS = 8
MLP_RATIO = 11008 / 4096


@dataclass
class Workload:
    name: str
    family: str  # "torchvision", "mlp" or "tiny"
    weights: list  # conv/linear weights, detached, in model order
    bns: list = field(default_factory=list)  # BatchNorm modules with affine parameters
    module: nn.Module | None = None
    example_input: torch.Tensor | None = None
    final_linear: nn.Module | None = None

    @property
    def sizes(self) -> list[int]:
        return [w.shape[0] for w in self.weights]

    @property
    def params(self) -> int:
        return sum(w.numel() for w in self.weights)

    @property
    def weight_bytes(self) -> int:
        return sum(w.numel() * w.element_size() for w in self.weights)

    @property
    def dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    def describe(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "layers": len(self.weights),
            "channels": sum(self.sizes),
            "params": self.params,
            "weight_bytes": self.weight_bytes,
            "dtype": str(self.dtype).replace("torch.", ""),
            "bn_layers": len(self.bns),
        }


def _from_module(name: str, family: str, model: nn.Module, example_input: torch.Tensor) -> Workload:
    model.eval()
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, PRUNABLE)]
    bns = [m for m in model.modules() if isinstance(m, BATCHNORM) and m.affine]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return Workload(name, family, weights, bns, model, example_input, linears[-1] if linears else None)


class TinyNet(nn.Module):
    """Two conv-BN blocks with a residual add (a coupled group), then a linear head."""

    def __init__(self, width: int = 8, classes: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = x + torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


def _randomise_bn(model: nn.Module) -> None:
    # Fresh BNs have gamma = 1 everywhere: ties that say nothing about the kernels' speed.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BATCHNORM) and m.affine:
                m.weight.uniform_(0.1, 1.0)
                m.bias.uniform_(-0.1, 0.1)


def build_torchvision(name: str, device: torch.device) -> Workload:
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    _randomise_bn(model)
    model.to(device)
    return _from_module(name, "torchvision", model, torch.randn(1, 3, 224, 224, device=device))


def build_tiny(device: torch.device) -> Workload:
    torch.manual_seed(0)
    model = TinyNet()
    _randomise_bn(model)
    model.to(device)
    return _from_module("tiny_cnn", "tiny", model, torch.randn(1, 3, 16, 16, device=device))


def mlp_shape(target_params: float, blocks: int = MLP_BLOCKS) -> tuple[int, int, int]:
    """(hidden, intermediate, blocks) of the stack closest to `target_params` parameters."""
    h = math.sqrt(target_params / (blocks * 3 * MLP_RATIO))
    step = 64 if h >= 256 else 8
    h = max(step, int(round(h / step)) * step)
    inter = max(step, int(round(h * MLP_RATIO / step)) * step)
    return h, inter, blocks


def build_mlp(target_params: float, device: torch.device, dtype: torch.dtype) -> Workload:
    """A stack of `MLP_BLOCKS` transformer MLP blocks as nn.Linear weights [out, in]."""
    h, inter, blocks = mlp_shape(target_params)
    gen = torch.Generator(device=device).manual_seed(0)
    weights = []
    for _ in range(blocks):
        for shape in ((inter, h), (inter, h), (h, inter)):  # up, gate, down
            bound = 1.0 / math.sqrt(shape[1])
            w = torch.empty(shape, dtype=dtype, device=device)
            w.uniform_(-bound, bound, generator=gen)
            weights.append(w)
    params = sum(w.numel() for w in weights)
    return Workload(f"mlp_{_human(params)}", "mlp", weights)


def _human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f}{unit}" if v >= 10 else f"{v:.1f}{unit}"
    return str(int(n))
