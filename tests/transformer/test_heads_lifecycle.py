"""A pruned transformer keeps working as a model: generate() with its KV cache, save and load
(epi_fast's format and Hugging Face's save_pretrained), AdamW state of the survivors."""

from __future__ import annotations

import copy

import pytest
import torch

from epi_fast import load_pruned, prune, save_pruned
from epi_fast.layout import group_layout
from epi_fast.surgery import load_pretrained, prune_with_masks
from epi_fast.targets import Selector

from transformer_zoo import gpt2, llama, logits, mask_model, qwen2, tokens, tv_vit, images

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

DECODERS = {"llama_gqa": llama, "qwen2_gqa": qwen2, "gpt2": gpt2}


def _keep(layout, ratio, seed=5):
    g = torch.Generator().manual_seed(seed)
    return Selector(layout, max_layer_ratio=1.0).select(torch.rand(layout.num_neurons, generator=g), [ratio]).masks[0]


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_greedy_generate_with_the_kv_cache_matches_the_masked_model(family):
    torch.manual_seed(4)
    dense = DECODERS[family]().eval()
    x = tokens(batch=2, length=5)
    layout = group_layout(dense, x)
    keep = _keep(layout, 0.5)
    pruned = copy.deepcopy(dense)
    prune_with_masks(pruned, group_layout(pruned, x), keep)
    masked = copy.deepcopy(dense)
    mask_model(masked, group_layout(masked, x), keep)
    kwargs = dict(max_new_tokens=10, do_sample=False, use_cache=True, pad_token_id=2)
    with torch.no_grad():
        want = masked.generate(x, **kwargs)
        got = pruned.generate(x, **kwargs)
        no_cache = pruned.generate(x, **{**kwargs, "use_cache": False})
    assert got.shape == (2, 15)
    assert torch.equal(got, want)
    assert torch.equal(got, no_cache)  # the cache holds the pruned heads' keys and values


def test_save_pruned_and_load_pruned_round_trip_head_counts(tmp_path):
    torch.manual_seed(5)
    dense = llama().eval()
    x = tokens()
    pruned = copy.deepcopy(dense)
    prune(pruned, 0.5, x, max_layer_ratio=1.0)
    path = save_pruned(pruned, tmp_path / "llama.pt")
    loaded = load_pruned(path, model=llama()).eval()
    for a, b in zip(pruned.model.layers, loaded.model.layers):
        assert a.self_attn.k_proj.weight.shape == b.self_attn.k_proj.weight.shape
        assert getattr(a.self_attn, "num_heads", None) == getattr(b.self_attn, "num_heads", None)
        assert a.mlp.up_proj.out_features == b.mlp.up_proj.out_features == a.mlp.intermediate_size
        assert b.mlp.intermediate_size == a.mlp.intermediate_size
    with torch.no_grad():
        assert torch.equal(logits(pruned, x), logits(loaded, x))


def test_torchvision_vit_round_trips_with_its_pruned_attention(tmp_path):
    torch.manual_seed(6)
    dense = tv_vit().eval()
    x = images()
    pruned = copy.deepcopy(dense)
    prune(pruned, 0.5, x, max_layer_ratio=1.0)
    heads = [layer.self_attention.num_heads for layer in pruned.encoder.layers]
    assert sum(heads) == 4  # half of the 2 x 4 heads
    loaded = load_pruned(save_pruned(pruned, tmp_path / "vit.pt"), model=tv_vit()).eval()
    assert [layer.self_attention.num_heads for layer in loaded.encoder.layers] == heads
    with torch.no_grad():
        assert torch.equal(pruned(x), loaded(x))


@pytest.mark.parametrize("family", ["llama_gqa", "gpt2"])
def test_save_pretrained_loads_back_through_the_library_loader(family, tmp_path):
    torch.manual_seed(7)
    build = DECODERS[family]
    dense = build().eval()
    x = tokens()
    pruned = copy.deepcopy(dense)
    prune(pruned, 0.4, x, max_layer_ratio=1.0)
    pruned.save_pretrained(tmp_path / "hf")
    loaded = load_pretrained(type(dense), tmp_path / "hf").eval()
    for (name, p), (name2, q) in zip(pruned.named_parameters(), loaded.named_parameters()):
        assert name == name2 and p.shape == q.shape
    with torch.no_grad():
        torch.testing.assert_close(logits(loaded, x), logits(pruned, x), atol=0, rtol=0)
    # Hugging Face's own loader reads one width per model: it refuses, it does not guess.
    with pytest.raises(Exception):
        type(dense).from_pretrained(tmp_path / "hf")


def test_adamw_state_of_the_surviving_heads_is_carried():
    torch.manual_seed(8)
    model = llama().train()
    x = tokens()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(x, labels=x).loss.backward()
        opt.step()
    attn = model.model.layers[0].self_attn
    d, n_rep = attn.head_dim, attn.num_key_value_groups
    before = {k: v.clone() for k, v in opt.state[attn.q_proj.weight].items() if torch.is_tensor(v)}
    before_o = opt.state[attn.o_proj.weight]["exp_avg_sq"].clone()
    layout = group_layout(model, x)
    keep = _keep(layout, 0.5)
    g0 = next(i for i, g in enumerate(layout.groups) if g.module is attn)
    kept_groups = keep[layout.offsets[g0]:layout.offsets[g0] + layout.group_sizes[g0]].nonzero().flatten()
    rows = torch.cat([torch.arange(j * n_rep * d, (j + 1) * n_rep * d) for j in kept_groups.tolist()])
    prune_with_masks(model, layout, keep, optimizer=opt)
    state = opt.state[attn.q_proj.weight]
    assert torch.equal(state["exp_avg"], before["exp_avg"][rows])
    assert torch.equal(state["exp_avg_sq"], before["exp_avg_sq"][rows])
    assert torch.equal(state["step"], before["step"])
    assert torch.equal(opt.state[attn.o_proj.weight]["exp_avg_sq"], before_o[:, rows])
    opt.zero_grad()
    model(x, labels=x).loss.backward()
    opt.step()  # the remapped optimizer steps the pruned model
