"""The targets on the models the contract names: at 0.3 / 0.5 / 0.7 of the parameters or FLOPs,
the pruned model is within 0.01 of the ratio, counted here independently of the library's cost
model (parameters by numel, FLOPs by FlopCounterMode), and with the default limit no layer
collapses."""

import copy
import math

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from epi_fast import build_model, prune

RATIOS = (0.3, 0.5, 0.7)


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flops(model, x):
    """FlopCounterMode's count of one call, autograd on so that no fused inference path hides
    attention from it; the CPU's fused attention kernel gets PyTorch's own SDPA formula."""
    mapping = {}
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa
    model.eval()
    with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(x)
    return counter.get_total_flops()


def params(model):
    return sum(p.numel() for p in model.parameters())


CASES = [
    ("resnet50", lambda: torchvision.models.resnet50(), (1, 3, 64, 64)),
    ("mobilenet_v2", lambda: torchvision.models.mobilenet_v2(), (1, 3, 64, 64)),
    ("densenet121", lambda: torchvision.models.densenet121(), (1, 3, 64, 64)),
    ("vit_b_16", lambda: torchvision.models.vit_b_16(), (1, 3, 224, 224)),
    ("resnet_small", lambda: build_model("resnet_small"), (1, 3, 8, 8)),
    ("mobilenet_small", lambda: build_model("mobilenet_small"), (1, 3, 8, 8)),
    ("densenet_small", lambda: build_model("densenet_small"), (1, 3, 8, 8)),
]


@pytest.mark.parametrize("name, make, shape", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("target", ["params", "flops"])
def test_the_target_is_met_within_0_01(name, make, shape, target):
    torch.manual_seed(0)
    dense = make().eval()
    x = torch.randn(shape)
    count = params if target == "params" else (lambda m: flops(m, x))
    full = count(dense)
    for ratio in RATIOS:
        model = copy.deepcopy(dense)
        report = prune(model, ratio, x, target=target)
        got = 1 - count(model) / full
        assert abs(got - ratio) <= 0.01, (name, target, ratio, got)
        assert report["achieved"] == pytest.approx(got, abs=1e-9)
        assert report["requested"] == ratio and report["target"] == target


def test_vit_b_16_prunes_heads_and_mlp_channels_not_its_width():
    """ViT-B/16 reaches 0.7 with its attention heads and MLP channels; the residual width stays."""
    model = torchvision.models.vit_b_16().eval()
    report = prune(model, 0.7, torch.randn(1, 3, 224, 224), target="params")
    assert abs(report["achieved"] - 0.7) <= 0.01
    heads = [layer.self_attention.num_heads for layer in model.encoder.layers]
    assert 12 * 12 > sum(heads) >= 12 and all(h >= 2 for h in heads)  # the 0.9 limit: 2 of 12 at least
    assert model.conv_proj.out_channels == 768 and model.heads.head.in_features == 768


@pytest.mark.parametrize("target", ["params", "flops"])
def test_an_unreachable_ratio_names_the_reachable_ones(target):
    model = torchvision.models.vit_b_16().eval()
    with pytest.raises(ValueError, match=r"not reachable within 0.01 .* nearest reachable ratios are 0\.\d+ \(below\) and none"):
        prune(model, 0.95, torch.randn(1, 3, 224, 224), target=target)


@pytest.mark.parametrize("name", ["resnet50", "regnet_y_400mf", "mobilenet_v2"])
def test_no_layer_collapses_with_the_defaults(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    report = prune(model, 0.5, torch.randn(1, 3, 64, 64))
    low = [(n, b, k) for n, b, k in zip(report["layers"], report["channels_before"], report["kept"])
           if k < math.ceil(0.1 * b)]
    assert not low
    assert report["max_layer_ratio"] == 0.9
