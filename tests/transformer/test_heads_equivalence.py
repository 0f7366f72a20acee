"""Pruning attention heads and MLP channels equals masking them.

For every family (torchvision ViT, Hugging Face LLaMA / Qwen2 with grouped-query attention,
Mistral, GPT-2, BERT, ViT): the pruned model's outputs equal those of
the dense model whose removed heads' and channels' contributions are masked by forward hooks
(tests/transformer/transformer_zoo.py, which knows nothing of the surgery), at ratios 0.1 to 0.9.
"""

from __future__ import annotations

import copy

import pytest
import torch

from epi_fast.surgery import prune_with_masks
from epi_fast.criteria import get_criterion
from epi_fast.layout import group_layout
from epi_fast.targets import Selector

from transformer_zoo import FAMILIES, llama, logits, mask_model, tokens

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _random_scores(layout, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(layout.num_neurons, generator=g)


def _check_equivalent(dense, x, keep, layout, atol=2e-5):
    pruned = copy.deepcopy(dense)
    prune_with_masks(pruned, group_layout(pruned, x), keep)
    masked = copy.deepcopy(dense)
    handles = mask_model(masked, group_layout(masked, x), keep)
    with torch.no_grad():
        want = logits(masked, x)
        got = logits(pruned, x)
    for h in handles:
        h.remove()
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)
    return pruned


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.7])
def test_pruned_equals_masked(family, ratio):
    build, inputs, _ = FAMILIES[family]
    torch.manual_seed(1)
    dense = build().eval()
    x = inputs()
    layout = group_layout(dense, x)
    assert set(layout.kinds) == {"heads", "mlp"}
    keep = Selector(layout, max_layer_ratio=1.0).select(_random_scores(layout, 7), [ratio]).masks[0]
    pruned = _check_equivalent(dense, x, keep, layout)
    # The structure the layout predicted is what the pruned model has, heads counted as query heads.
    after = group_layout(pruned, x)
    assert list(after.layer_channels().values()) == layout.structure(keep)[0].tolist()
    assert after.group_sizes == [int(keep[o:o + s].sum()) for o, s in zip(layout.offsets, layout.group_sizes)]


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_llama_gqa_ratio_sweep_with_the_criterion(ratio):
    """16 query heads over 8 key/value groups: every ratio from 0.1 to 0.9 with the L2 criterion."""
    torch.manual_seed(2)
    dense = llama(heads=16, kv=8, hidden=64, inter=64).eval()
    x = tokens()
    layout = group_layout(dense, x)
    scores = get_criterion("l2").group_scores(layout)
    keep = Selector(layout, max_layer_ratio=1.0).select(scores, [ratio]).masks[0]
    pruned = _check_equivalent(dense, x, keep, layout)
    for layer in pruned.model.layers:
        attn = layer.self_attn
        # Whole key/value groups: the same number of query heads per group in every layer.
        assert attn.q_proj.out_features == attn.num_key_value_groups * attn.k_proj.out_features
        # Attributes are set on the modules that lost heads (the others keep the config's).
        assert getattr(attn, "num_heads", 16) == attn.q_proj.out_features // attn.head_dim
        assert getattr(attn, "num_key_value_heads", 8) == attn.k_proj.out_features // attn.head_dim


def test_whole_heads_go_not_parts_of_them():
    """Every projection keeps a multiple of head_dim rows and columns, the residual width stays."""
    torch.manual_seed(3)
    dense = llama().eval()
    x = tokens()
    layout = group_layout(dense, x)
    keep = Selector(layout, max_layer_ratio=1.0).select(_random_scores(layout, 3), [0.5]).masks[0]
    pruned = copy.deepcopy(dense)
    prune_with_masks(pruned, group_layout(pruned, x), keep)
    for layer in pruned.model.layers:
        a = layer.self_attn
        for lin in (a.q_proj, a.k_proj, a.v_proj):
            assert lin.out_features % a.head_dim == 0 and lin.in_features == 32
        assert a.o_proj.out_features == 32 and a.o_proj.in_features == a.q_proj.out_features
        assert layer.mlp.down_proj.out_features == 32
    assert pruned.model.embed_tokens.weight.shape == dense.model.embed_tokens.weight.shape
    assert pruned.lm_head.weight.shape == dense.lm_head.weight.shape


def test_vit_b_16_pruned_equals_masked():
    """The full-size torchvision ViT-B/16 (12 layers of 12 heads, MLP 3072) at 224x224."""
    import torchvision

    torch.manual_seed(4)
    dense = torchvision.models.vit_b_16().eval()
    x = torch.randn(1, 3, 224, 224)
    layout = group_layout(dense, x)
    assert layout.group_sizes == [12, 3072] * 12
    scores = get_criterion("l2").group_scores(layout)
    keep = Selector(layout).select(scores, [0.5]).masks[0]
    pruned = _check_equivalent(dense, x, keep, layout, atol=1e-4)
    assert [layer.self_attention.num_heads for layer in pruned.encoder.layers] == \
        [int(keep[o:o + 12].sum()) for o in layout.offsets[0::2]]
