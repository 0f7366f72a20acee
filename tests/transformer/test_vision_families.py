"""Vision transformers beyond torchvision's ViT: torchvision Swin (V1 and V2), timm ViT / DeiT and timm Swin.

For each family: pruning heads and MLP channels equals masking them (the oracle in
transformer_zoo.py, which knows nothing of the surgery), save_pruned / load_pruned give back
the same outputs, and target="params" is met by an independent numel count; the residual
width (Swin's patch merging and norms) is never cut.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from epi_fast import load_pruned, prune, save_pruned
from epi_fast.layout import group_layout
from epi_fast.surgery import prune_with_masks
from epi_fast.targets import Selector

from transformer_zoo import (mask_model, swin, swin_images, swin_v2, timm_deit_distilled, timm_images, timm_swin,
                             timm_vit)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# name -> (builder, example inputs, needs timm)
VISION = {
    "swin_v1": (swin, swin_images, False),
    "swin_v2": (swin_v2, swin_images, False),
    "timm_vit": (timm_vit, timm_images, True),
    "timm_deit_distilled": (timm_deit_distilled, timm_images, True),
    "timm_swin": (timm_swin, timm_images, True),
}


def _build(family):
    build, inputs, needs_timm = VISION[family]
    if needs_timm:
        pytest.importorskip("timm")
    return build, inputs


def _params(m):
    return sum(p.numel() for p in m.parameters())


def _residual_shapes(model):
    """Shapes of everything on the residual stream: norms, patch merging, embeddings, heads."""
    return {n: tuple(p.shape) for n, p in model.named_parameters()
            if not any(k in n for k in (".attn.", ".mlp."))}


@pytest.mark.parametrize("family", sorted(VISION))
@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_pruned_equals_masked(family, ratio):
    build, inputs = _build(family)
    torch.manual_seed(1)
    dense = build().eval()
    x = inputs()
    layout = group_layout(dense, x)
    assert set(layout.kinds) == {"heads", "mlp"}
    assert len(layout.groups) == 2 * sum(1 for m in dense.modules() if "Attention" in type(m).__name__)
    g = torch.Generator().manual_seed(7)
    keep = Selector(layout, max_layer_ratio=1.0).select(torch.rand(layout.num_neurons, generator=g), [ratio]).masks[0]
    pruned = copy.deepcopy(dense)
    prune_with_masks(pruned, group_layout(pruned, x), keep)
    masked = copy.deepcopy(dense)
    handles = mask_model(masked, group_layout(masked, x), keep)
    with torch.no_grad():
        want, got = masked(x), pruned(x)
    for h in handles:
        h.remove()
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    after = group_layout(pruned, x)
    assert list(after.layer_channels().values()) == layout.structure(keep)[0].tolist()
    assert _residual_shapes(pruned) == _residual_shapes(dense)
    assert _params(pruned) < _params(dense)


@pytest.mark.parametrize("family", sorted(VISION))
def test_save_pruned_and_load_pruned_round_trip(family, tmp_path):
    build, inputs = _build(family)
    torch.manual_seed(2)
    dense = build().eval()
    x = inputs()
    pruned = copy.deepcopy(dense)
    prune(pruned, 0.5, x, max_layer_ratio=1.0)
    heads = [m.num_heads for m in pruned.modules() if "Attention" in type(m).__name__]
    assert sum(heads) < sum(m.num_heads for m in dense.modules() if "Attention" in type(m).__name__)
    loaded = load_pruned(save_pruned(pruned, tmp_path / "model.pt"), model=build()).eval()
    assert [type(m) for m in loaded.modules()] == [type(m) for m in pruned.modules()]
    assert [m.num_heads for m in loaded.modules() if "Attention" in type(m).__name__] == heads
    with torch.no_grad():
        assert torch.equal(pruned(x), loaded(x))
    loaded.train()(x).sum().backward()  # trains as a model: the pruned forward has gradients


@pytest.mark.parametrize("family", sorted(VISION))
def test_params_target_is_met_by_numel(family):
    build, inputs = _build(family)
    torch.manual_seed(3)
    # Swin V2's heads each own a 512-wide row of the position-bias MLP: a wider model, so that
    # one head is less than 0.02 of the parameters.
    dense = (build(embed=32, heads=(4, 8)) if family == "swin_v2" else build()).eval()
    x = inputs()
    model = copy.deepcopy(dense)
    report = prune(model, 0.5, x, target="params")
    achieved = 1 - _params(model) / _params(dense)
    assert abs(achieved - 0.5) <= 0.01, achieved
    assert report["achieved"] == pytest.approx(achieved, abs=1e-9)
    assert model(x).shape == dense(x).shape


def test_swin_v2_per_head_parameters_follow_their_heads():
    """logit_scale and cpb_mlp's last rows keep exactly the surviving heads' entries."""
    torch.manual_seed(4)
    dense = swin_v2().eval()
    x = swin_images()
    layout = group_layout(dense, x)
    attn = dense.features[1][0].attn
    gi = next(i for i, g in enumerate(layout.groups) if g.module is attn)
    keep = torch.ones(layout.num_neurons, dtype=torch.bool)
    keep[layout.offsets[gi]] = False  # head 0 of the first block
    pruned = copy.deepcopy(dense)
    prune_with_masks(pruned, group_layout(pruned, x), keep)
    a = pruned.features[1][0].attn
    assert a.num_heads == 1 and a.qkv.weight.shape == (3 * 8, 16) and a.proj.weight.shape == (16, 8)
    torch.testing.assert_close(a.logit_scale, attn.logit_scale[1:])
    torch.testing.assert_close(a.cpb_mlp[-1].weight, attn.cpb_mlp[-1].weight[1:])
    torch.testing.assert_close(a.qkv.weight, attn.qkv.weight.view(3, 2, 8, 16)[:, 1:].reshape(24, 16))


def test_timm_scale_norm_is_refused():
    pytest.importorskip("timm")
    model = timm_vit(scale_attn_norm=True)
    with pytest.raises(ValueError, match="scale_norm"):
        group_layout(model, timm_images())


@pytest.mark.parametrize("family", ["swin_v1", "swin_v2", "timm_vit"])
def test_flops_target_is_met_by_an_independent_count(family):
    """Swin runs qkv and proj functionally: the cost model relates those FLOPs to their weights."""
    from epi_fast.targets.flops import flop_counter

    build, inputs = _build(family)
    torch.manual_seed(5)
    dense = (build(embed=32, heads=(4, 8)) if family.startswith("swin") else build()).eval()
    x = inputs()

    def flops(m):
        with flop_counter() as fc:
            m(x)
        return fc.get_total_flops()

    model = copy.deepcopy(dense)
    prune(model, 0.5, x, target="flops")
    assert abs(1 - flops(model) / flops(dense) - 0.5) <= 0.01


@pytest.mark.parametrize("kwargs", [dict(qk_norm=True, norm_layer=nn.LayerNorm), dict(gated=True, qkv_bias=True)])
def test_timm_attention_with_qk_norm_or_a_gate_prunes_as_it_masks(kwargs):
    """q_norm / k_norm (over head_dim, shared by the heads) stay; a gate loses its heads' rows."""
    pytest.importorskip("timm")
    from timm.layers import Attention

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(6, 32)
            self.attn = Attention(32, num_heads=4, **kwargs)
            self.head = nn.Linear(32, 3)

        def forward(self, x):
            h = self.embed(x)
            return self.head((h + self.attn(h)).mean(1))

    torch.manual_seed(6)
    dense = Net().eval()
    x = torch.randn(2, 5, 6)
    layout = group_layout(dense, x)
    keep = torch.tensor([True, False, True, False])
    pruned = copy.deepcopy(dense)
    prune_with_masks(pruned, group_layout(pruned, x), keep)
    masked = copy.deepcopy(dense)
    mask_model(masked, group_layout(masked, x), keep)
    assert pruned.attn.num_heads == 2 and pruned.attn.attn_dim == 16
    if kwargs.get("gated"):
        assert pruned.attn.gate.weight.shape == (16, 32)
    else:
        assert pruned.attn.q_norm.weight.shape == (8,)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), atol=1e-6, rtol=1e-5)
    assert layout.kinds == ["heads"]


@pytest.mark.parametrize("mlp", ["GluMlp", "SwiGLUPacked", "SwiGLU"])
def test_timm_gated_mlps_prune_as_they_mask(mlp):
    """GluMlp's fc1 holds the value and the gate halves: a hidden channel owns a row of each."""
    pytest.importorskip("timm")
    import timm.layers

    torch.manual_seed(7)
    dense = timm_vit(mlp_layer=getattr(timm.layers, mlp), mlp_ratio=2.0).eval()
    x = timm_images()
    layout = group_layout(dense, x)
    # GluMlp's 128 rows of fc1 are 64 channels (value and gate halves).
    assert [g.size for g in layout.groups if g.kind == "mlp"] == [64 if mlp != "SwiGLU" else 128] * 2
    g = torch.Generator().manual_seed(8)
    keep = Selector(layout, max_layer_ratio=1.0).select(torch.rand(layout.num_neurons, generator=g), [0.5]).masks[0]
    pruned = copy.deepcopy(dense)
    prune_with_masks(pruned, group_layout(pruned, x), keep)
    masked = copy.deepcopy(dense)
    mask_model(masked, group_layout(masked, x), keep)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), atol=2e-5, rtol=1e-4)


def test_timm_mlp_with_a_norm_over_its_hidden_channels_is_refused():
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match="Mlp with a norm layer"):
        group_layout(timm_vit(scale_mlp_norm=True), timm_images())
