"""The rules for transformer groups: criteria per head and per MLP channel, per-kind ranking,
the structure vector, targets on transformers, registration of a user's attention, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from epi_fast import EPIPruner, prune
from epi_fast.criteria import get_criterion
from epi_fast.layout import Block, Slice, group_layout, register_attention, unregister_attention
from epi_fast.targets import Selector
from epi_fast.targets.flops import flop_counter

from transformer_zoo import llama, logits, mask_model, tokens, tv_vit, images

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _group(layout, module):
    return next((i, g) for i, g in enumerate(layout.groups) if g.module is module)


def test_magnitude_is_the_l2_norm_of_all_of_a_heads_and_a_channels_parameters():
    torch.manual_seed(0)
    model = llama()
    layout = group_layout(model, tokens())
    scores = get_criterion("l2").group_scores(layout)
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    d, n_rep = attn.head_dim, attn.num_key_value_groups
    gi, g = _group(layout, attn)
    for j in range(g.size):
        q = attn.q_proj.weight[j * n_rep * d:(j + 1) * n_rep * d]
        k = attn.k_proj.weight[j * d:(j + 1) * d]
        v = attn.v_proj.weight[j * d:(j + 1) * d]
        o = attn.o_proj.weight[:, j * n_rep * d:(j + 1) * n_rep * d]
        want = torch.cat([t.reshape(-1) for t in (q, k, v, o)]).norm()
        torch.testing.assert_close(scores[layout.offsets[gi] + j], want.detach(), rtol=1e-5, atol=0)
    gi, g = _group(layout, mlp)
    for j in (0, 7, g.size - 1):
        want = torch.cat([mlp.gate_proj.weight[j], mlp.up_proj.weight[j], mlp.down_proj.weight[:, j]]).norm()
        torch.testing.assert_close(scores[layout.offsets[gi] + j], want.detach(), rtol=1e-5, atol=0)


def test_taylor_is_the_square_of_the_sum_of_w_times_g_over_a_head():
    torch.manual_seed(1)
    model = llama()
    x = tokens()
    layout = group_layout(model, x)
    acc = get_criterion("taylor").accumulator(layout)
    model(x, labels=x).loss.backward()
    acc.step()
    scores = acc.scores()
    attn = model.model.layers[0].self_attn
    d, n_rep = attn.head_dim, attn.num_key_value_groups
    gi, g = _group(layout, attn)

    def wg(lin, rows=None, cols=None):
        w, gr = lin.weight, lin.weight.grad
        if rows is not None:
            return (w[rows] * gr[rows]).sum()
        return (w[:, cols] * gr[:, cols]).sum()

    for j in range(g.size):
        qr = slice(j * n_rep * d, (j + 1) * n_rep * d)
        kr = slice(j * d, (j + 1) * d)
        total = wg(attn.q_proj, qr) + wg(attn.k_proj, kr) + wg(attn.v_proj, kr) + wg(attn.o_proj, cols=qr)
        torch.testing.assert_close(scores[layout.offsets[gi] + j], (total ** 2).detach(), rtol=1e-4, atol=1e-12)


def test_each_kind_is_ranked_on_its_own_by_default():
    torch.manual_seed(2)
    model = llama()
    layout = group_layout(model, tokens())
    scores = torch.rand(layout.num_neurons)
    heads = torch.tensor([g.kind == "heads" for g in layout.groups]).repeat_interleave(torch.tensor(layout.group_sizes))
    scores[heads] *= 1000.0  # heads' scores on another scale: a global order would spare every head
    for ratio in (0.25, 0.5):
        keep = Selector(layout, max_layer_ratio=1.0).select(scores, [ratio]).masks[0]
        for kind in (True, False):
            n = int((heads == kind).sum())
            assert int((~keep[heads == kind]).sum()) == math.floor(ratio * n + 0.5)
    # ranking="global": one order after dividing each kind by its mean, so that the scale goes.
    glob = Selector(layout, max_layer_ratio=1.0, ranking="global")
    a = glob.select(scores, [0.5]).masks[0]
    rescaled = scores.clone()
    rescaled[heads] /= 1000.0
    assert torch.equal(a, glob.select(rescaled, [0.5]).masks[0])
    assert int((~a).sum()) == math.floor(0.5 * layout.num_neurons + 0.5)
    with pytest.raises(ValueError, match="unknown ranking"):
        Selector(layout, ranking="mixed")


def test_the_structure_vector_has_one_entry_for_heads_and_one_for_mlp_channels_per_layer():
    model = llama(layers=3)
    layout = group_layout(model, tokens())
    assert layout.layers == [f"model.layers.{i}.{part}" for i in range(3) for part in ("self_attn", "mlp")]
    assert list(layout.layer_channels().values()) == [8, 48] * 3  # query heads, hidden channels
    keep = torch.ones(layout.num_neurons, dtype=torch.bool)
    keep[layout.offsets[0]] = False  # one key/value group of layer 0 = two query heads
    assert layout.structure(keep)[0].tolist() == [6, 48, 8, 48, 8, 48]


@pytest.mark.parametrize("target", ["params", "flops"])
@pytest.mark.parametrize("family", ["llama", "vit"])
def test_targets_on_transformers_are_met_by_independent_counts(target, family):
    torch.manual_seed(3)
    if family == "llama":
        dense, x = llama(heads=16, kv=8, hidden=64, inter=96, layers=3), tokens(length=16)
    else:
        dense, x = tv_vit(heads=8, hidden=64, mlp=128, layers=3), images()
    dense.eval()

    def measure(m):
        if target == "params":
            return sum(p.numel() for p in m.parameters())
        # FlopCounterMode with the fused CPU attention kernel's formula (which PyTorch lacks), run
        # here on the pruned model, apart from the cost model that chose the cut.
        with flop_counter() as fc:
            m(x)
        return fc.get_total_flops()

    for ratio in (0.3, 0.5):
        model = copy.deepcopy(dense)
        report = prune(model, ratio, x, target=target)
        achieved = 1 - measure(model) / measure(dense)
        assert abs(achieved - ratio) <= 0.01, (ratio, achieved)
        assert report["achieved"] == pytest.approx(achieved, abs=1e-9)


def test_vit_b_16_reaches_0_7_with_heads():
    import torchvision

    model = torchvision.models.vit_b_16().eval()
    x = torch.randn(1, 3, 224, 224)
    before = sum(p.numel() for p in model.parameters())
    prune(model, 0.7, x, target="params")
    assert abs(1 - sum(p.numel() for p in model.parameters()) / before - 0.7) <= 0.01
    assert model(x).shape == (1, 1000)


class MyAttention(nn.Module):
    """A user's own attention: separate projections under names no adapter knows."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.heads, self.d = heads, dim // heads
        self.wq, self.wk, self.wv = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (lin(x).view(b, n, -1, self.d).transpose(1, 2) for lin in (self.wq, self.wk, self.wv))
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1))


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attn = MyAttention()
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.embed(x)
        return self.head((h + self.attn(h)).mean(1))


def _my_adapter(m: MyAttention) -> Block:
    slices = []
    for lin in (m.wq, m.wk, m.wv):
        slices += [Slice(lin, "weight", 0, 0, m.d, "in"), Slice(lin, "bias", 0, 0, m.d, "in")]
    slices.append(Slice(m.proj, "weight", 1, 0, m.d, "out"))
    return Block(m.heads, slices, update=lambda kept: setattr(m, "heads", kept), count=lambda: m.heads,
                 saved_attrs=("heads",))


def test_an_unknown_attention_is_refused_and_the_registration_hook_teaches_it():
    torch.manual_seed(4)
    model = UserNet().eval()
    x = torch.randn(2, 5, 6)
    with pytest.raises(ValueError, match=r"attn is a MyAttention.*register_attention\(MyAttention"):
        group_layout(model, x)
    register_attention(MyAttention, _my_adapter)
    try:
        layout = group_layout(model, x)
        assert layout.kinds == ["heads"] and layout.group_sizes == [4]
        keep = torch.tensor([True, False, True, False])
        masked = copy.deepcopy(model)
        pruned = copy.deepcopy(model)
        mask_cols = torch.cat([torch.arange(4, 8), torch.arange(12, 16)])
        masked.attn.proj.register_forward_pre_hook(lambda mod, a: (a[0].index_fill(-1, mask_cols, 0.0),))
        from epi_fast.surgery import prune_with_masks

        prune_with_masks(pruned, group_layout(pruned, x), keep)
        assert pruned.attn.heads == 2 and pruned.attn.wq.out_features == 8
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), masked(x), atol=1e-6, rtol=1e-5)
        # The adapter's own attribute travels through save_pruned / load_pruned.
        import tempfile

        from epi_fast import load_pruned, save_pruned

        with tempfile.TemporaryDirectory() as tmp:
            loaded = load_pruned(save_pruned(pruned, f"{tmp}/m.pt"), model=UserNet()).eval()
        assert loaded.attn.heads == 2
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), pruned(x), atol=0, rtol=0)
    finally:
        unregister_attention(_my_adapter)
    with pytest.raises(ValueError, match="MyAttention"):
        group_layout(UserNet(), x)


def test_a_ratio_that_grouped_query_attention_makes_impossible_names_the_reachable_one():
    model = llama(heads=4, kv=1)  # one key/value head per layer: no head can go
    x = tokens()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"attention-head \(key/value group\).*0\.0000 \(below\)"):
        prune(model, 0.5, x)
    model2 = llama(heads=8, kv=2)  # two groups per layer, at most 0.9 of a layer: 1 of 2
    with pytest.raises(ValueError, match=r"0\.5000 \(below\)"):
        prune(model2, 0.7, x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_example_inputs_of_a_language_model_must_be_token_ids():
    model = llama()
    with pytest.raises(ValueError, match="must be token ids"):
        group_layout(model, torch.randn(2, 8))
    with pytest.raises(ValueError, match="outside its vocabulary of 61"):
        prune(model, 0.3, torch.full((2, 8), 500))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="must be token ids"):
        prune(model, 0.3, torch.rand(2, 8))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_epi_tracks_heads_and_mlp_channels_and_prunes_a_decoder():
    torch.manual_seed(5)
    model = llama(heads=8, kv=4)
    x = tokens(batch=4, length=12)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pruner = EPIPruner(model, opt, 0.5, x, criterion="l2", window=2, patience=1, tau=1e-3)
    for epoch in range(6):
        for _ in range(2):
            opt.zero_grad()
            model(x, labels=x).loss.backward()
            opt.step()
        if pruner.epoch_end():
            break
    assert pruner.pruned
    kept = [layer.self_attn.k_proj.out_features // 4 for layer in model.model.layers]
    assert sum(kept) == 4  # half of the 2 x 4 key/value groups
    opt.zero_grad()
    model(x, labels=x).loss.backward()
    opt.step()


def test_the_pruner_state_of_a_pruned_decoder_loads_on_the_reloaded_model(tmp_path):
    from epi_fast import load_pruned, save_pruned

    torch.manual_seed(6)
    model = llama()
    x = tokens()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = EPIPruner(model, opt, 0.5, x, criterion="l2", deadline_epoch=1, ranking="global")
    model(x, labels=x).loss.backward()
    opt.step()
    assert pruner.epoch_end() and pruner.pruned
    state = pruner.state_dict()
    assert state["config"]["ranking"] == "global"
    reloaded = load_pruned(save_pruned(model, tmp_path / "m.pt"), model=llama())
    again = EPIPruner(reloaded, torch.optim.SGD(reloaded.parameters(), lr=0.1), 0.5, x, criterion="l2",
                      deadline_epoch=1, ranking="global")
    again.load_state_dict(state)
    assert again.pruned and again.kept_counts == pruner.kept_counts
    with pytest.raises(ValueError, match="ranking"):
        EPIPruner(llama(), None, 0.5, x, criterion="l2", deadline_epoch=1).load_state_dict(state)
