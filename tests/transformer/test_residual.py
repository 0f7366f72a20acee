"""Pruning the residual width (hidden size) of a LLaMA-style decoder, when asked (residual=True).

A removed hidden channel is inert in the dense model when its embedding column and every row
that writes it (o_proj, down_proj) are zero: the residual stream then carries 0 there, and
every reader's column for it multiplies 0. The pruned model's RMS norms average over the K
kept channels instead of all H, so the masked oracle also scales every norm's weight by
sqrt(K / H) (exact up to the norms' eps). The oracle knows the decoder's own layout, not the
surgery's index mapping.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from epi_fast import EPIPruner, load_pruned, prune, save_pruned
from epi_fast.layout import group_layout
from epi_fast.surgery import load_pretrained, prune_with_masks
from epi_fast.targets import Selector

from transformer_zoo import gpt2, llama, logits, qwen2, tokens, transformers, VOCAB

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tied_llama():
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=True,
                                   rms_norm_eps=1e-12)
    return transformers.LlamaForCausalLM(cfg)


def _mask_residual(model, gone):
    k = model.model.embed_tokens.weight.shape[1] - len(gone)
    scale = math.sqrt(k / model.model.embed_tokens.weight.shape[1])
    with torch.no_grad():
        model.model.embed_tokens.weight[:, gone] = 0
        norms = [model.model.norm]
        for layer in model.model.layers:
            for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
                lin.weight[gone] = 0
                if lin.bias is not None:
                    lin.bias[gone] = 0
            norms += [layer.input_layernorm, layer.post_attention_layernorm]
        for n in norms:
            n.weight.mul_(scale)


@pytest.mark.parametrize("build", [tied_llama, llama, qwen2], ids=["llama_tied", "llama", "qwen2"])
def test_a_pruned_hidden_size_equals_the_masked_decoder(build):
    torch.manual_seed(0)
    dense = build().eval()
    for m in dense.modules():  # an eps far below the activations: the sqrt(K/H) scaling is exact
        if hasattr(m, "variance_epsilon"):
            m.variance_epsilon = 1e-12
    x = tokens()
    layout = group_layout(dense, x, residual=True)
    assert layout.kinds == ["heads", "mlp", "residual"] and layout.layers[0] == "model.embed_tokens"
    g = torch.Generator().manual_seed(1)
    keep = Selector(layout, max_layer_ratio=1.0).select(torch.rand(layout.num_neurons, generator=g), [0.4]).masks[0]
    r = [i for i, grp in enumerate(layout.groups) if grp.kind == "residual"][0]
    res_keep = keep[layout.offsets[r]:layout.offsets[r] + layout.group_sizes[r]]
    gone = (~res_keep).nonzero().flatten()
    only_residual = torch.ones_like(keep)
    only_residual[layout.offsets[r]:layout.offsets[r] + layout.group_sizes[r]] = res_keep
    pruned = copy.deepcopy(dense)
    prune_with_masks(pruned, group_layout(pruned, x, residual=True), only_residual)
    masked = copy.deepcopy(dense)
    _mask_residual(masked, gone)
    with torch.no_grad():
        torch.testing.assert_close(logits(pruned, x), logits(masked, x), atol=2e-5, rtol=1e-4)
    h = int(res_keep.sum())
    assert pruned.model.embed_tokens.embedding_dim == h and pruned.model.norm.weight.shape == (h,)
    for layer in pruned.model.layers:
        assert layer.self_attn.q_proj.in_features == layer.self_attn.o_proj.out_features == h
        assert layer.mlp.gate_proj.in_features == layer.mlp.down_proj.out_features == h
    assert pruned.lm_head.in_features == h
    if dense.config.tie_word_embeddings:
        assert pruned.lm_head.weight is pruned.model.embed_tokens.weight


def test_heads_mlp_and_the_residual_width_together_keep_generating_and_round_trip(tmp_path):
    torch.manual_seed(2)
    dense = tied_llama().eval()
    x = tokens()
    model = copy.deepcopy(dense)
    report = prune(model, 0.5, x, residual=True, target="params")
    assert abs(1 - sum(p.numel() for p in model.parameters()) / sum(p.numel() for p in dense.parameters()) - 0.5) <= 0.01
    assert set(report["kinds"]) == {"heads", "mlp", "residual"} and report["kinds"]["residual"]["removed"] > 0
    with torch.no_grad():
        out = model.generate(x[:, :4], max_new_tokens=6, do_sample=False, pad_token_id=2)
    assert out.shape == (2, 10)
    loaded = load_pruned(save_pruned(model, tmp_path / "m.pt"), model=tied_llama()).eval()
    model.save_pretrained(tmp_path / "hf")
    again = load_pretrained(transformers.LlamaForCausalLM, tmp_path / "hf").eval()
    with torch.no_grad():
        assert torch.equal(logits(loaded, x), logits(model, x))
        assert torch.equal(logits(again, x), logits(model, x))


def test_epi_can_watch_and_prune_the_residual_width():
    torch.manual_seed(3)
    model = llama()
    x = tokens(batch=4, length=12)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pruner = EPIPruner(model, opt, 0.5, x, criterion="l2", residual=True, deadline_epoch=2)
    assert "model.embed_tokens" in pruner.layers
    for _ in range(2):
        opt.zero_grad()
        model(x, labels=x).loss.backward()
        opt.step()
        pruner.epoch_end()
    assert pruner.pruned and model.model.embed_tokens.embedding_dim == 16
    assert pruner.state_dict()["config"]["residual"] is True
    opt.zero_grad()
    model(x, labels=x).loss.backward()
    opt.step()


def test_the_residual_width_is_refused_where_the_layout_does_not_know_it():
    with pytest.raises(ValueError, match="LLaMA-style decoders.*GPT2LMHeadModel is not one"):
        prune(gpt2(), 0.5, tokens(), residual=True)
    with pytest.raises(TypeError, match="residual must be a bool"):
        EPIPruner(llama(), None, 0.5, tokens(), residual="yes")
    with pytest.raises(ValueError, match="no attention module"):
        group_layout(torch.nn.Sequential(torch.nn.Linear(4, 4)), torch.randn(1, 4), residual=True)
