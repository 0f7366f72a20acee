"""Fuzzing head and MLP-channel pruning: pruned == masked over randomly drawn configurations.

Every check compares the library with something computed here, apart from it:

- the oracle is `transformer_zoo.mask_model` (the dense model with the removed heads' and
  channels' inputs to the output projection masked), never the surgery;
- which rows and columns of which parameter a key/value group or an MLP channel owns is
  written out here per family (`_spec`), from the modules' own shapes; it gives the
  independent criterion scores (joint L2 / L1 norm, Taylor square of the sum of w * g), the
  expected selection (per kind, floor(r * N_kind + 0.5) lowest scores, each group keeping its
  best `minimum`), the surviving indices of every parameter and optimizer state tensor, and the
  union of two successive prunes;
- parameters and FLOPs of the pruned model are counted on the model itself (numel,
  FlopCounterMode), not by the cost model that chose the cut.

Configurations: LLaMA / Qwen2 / Mistral with random query and key/value head counts (kv
dividing heads), head_dim, attention_bias and mlp_bias (LLaMA), Qwen2's q/k/v biases; GPT-2
and BERT with random heads and widths; nn.MultiheadAttention (batch_first True/False,
bias=False, add_bias_kv, add_zero_attn, cross-attention) in a small custom model. Biases are
randomised (Hugging Face initialises them to zero, which would hide a bias sliced wrongly).

Tests marked xfail(strict=True) are reproductions of bugs found by this file.
"""

from __future__ import annotations

import copy
import math
import os
import signal
from contextlib import contextmanager
from typing import Callable, Dict, List, Tuple

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from transformer_zoo import VOCAB, mask_model, transformers

from epi_fast import load_pruned, prune, save_pruned
from epi_fast.criteria import get_criterion
from epi_fast.layout import HeadPrunedMultiheadAttention, group_layout
from epi_fast.surgery import load_pretrained, prune_with_masks
from epi_fast.targets.flops import flop_counter

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def fuzz(n: int):
    """Hypothesis settings: n examples, the same ones every run. A longer campaign:
    EPI_FUZZ_SCALE=k runs k times as many, EPI_FUZZ_RANDOM=1 draws new ones each run."""
    n *= int(os.environ.get("EPI_FUZZ_SCALE", "1"))
    return settings(max_examples=n, deadline=None, derandomize=not os.environ.get("EPI_FUZZ_RANDOM"), database=None,
                    suppress_health_check=list(HealthCheck))


QKVO = ("llama", "qwen2", "mistral")
FAMILIES = QKVO + ("gpt2", "bert", "mha")


# -- models -------------------------------------------------------------------------------------


class MHANet(nn.Module):
    """Residual stack of nn.MultiheadAttention layers (self or cross attention)."""

    def __init__(self, embed=8, heads=2, layers=1, batch_first=True, bias=True, add_bias_kv=False,
                 add_zero_attn=False, cross=False):
        super().__init__()
        self.batch_first, self.cross = batch_first, cross
        self.inp = nn.Linear(5, embed)
        self.mem = nn.Linear(5, embed) if cross else None
        self.attn = nn.ModuleList(nn.MultiheadAttention(embed, heads, bias=bias, add_bias_kv=add_bias_kv,
                                                        add_zero_attn=add_zero_attn, batch_first=batch_first)
                                  for _ in range(layers))
        self.head = nn.Linear(embed, 3)

    def forward(self, x, memory=None):
        h = self.inp(x)
        kv = self.mem(memory) if self.cross else h
        for a in self.attn:
            h = h + a(h, kv, kv, need_weights=False)[0]
        return self.head(h)


@st.composite
def configs(draw, families=FAMILIES, big: bool = False):
    """(family, config). big: more layers, heads and channels, longer inputs (a params / FLOPs
    target needs a fine enough grid of reachable cuts)."""
    fam = draw(st.sampled_from(families))
    c: Dict = {"layers": draw(st.integers(2, 3) if big else st.integers(1, 2))}
    inter = st.integers(16, 48) if big else st.integers(2, 20)
    if fam in QKVO:
        kv = draw(st.integers(2, 6) if big else st.integers(1, 4))
        c.update(kv=kv, heads=kv * draw(st.integers(1, 3)), head_dim=draw(st.sampled_from([2, 4, 6])),
                 inter=draw(inter), attn=draw(st.sampled_from(["eager", "sdpa"])))
        low = -(-4 // c["heads"])  # HF wants a multiple of the head count (head_dim is free); at least 4 wide
        c["hidden"] = c["heads"] * draw(st.integers(low, low + 2))
        if fam == "llama":
            c.update(attention_bias=draw(st.booleans()), mlp_bias=draw(st.booleans()))
    elif fam in ("gpt2", "bert"):
        heads = draw(st.integers(4, 8) if big else st.integers(1, 5))
        head_dim = draw(st.sampled_from([2, 4]))
        head_dim = max(head_dim, -(-4 // heads))  # at least 4 wide: a 2-wide LayerNorm output is only +-1
        c.update(heads=heads, hidden=heads * head_dim, inter=draw(inter), attn=draw(st.sampled_from(["eager", "sdpa"])))
    else:
        heads = draw(st.integers(6, 12) if big else st.integers(1, 4))
        c.update(heads=heads, embed=heads * draw(st.integers(1, 4)), batch_first=draw(st.booleans()),
                 bias=draw(st.booleans()), add_bias_kv=draw(st.booleans()), add_zero_attn=draw(st.booleans()),
                 cross=draw(st.booleans()))
    c["seed"] = draw(st.integers(0, 2 ** 16))
    c["length"] = draw(st.integers(8, 16) if big else st.integers(2, 7))
    c["padded"] = fam != "mha" and draw(st.booleans())  # an attention_mask that hides some positions
    return fam, c


def build(fam: str, c: Dict) -> nn.Module:
    torch.manual_seed(c["seed"])
    if fam == "mha":
        model = MHANet(c["embed"], c["heads"], c["layers"], c["batch_first"], c["bias"], c["add_bias_kv"],
                       c["add_zero_attn"], c["cross"])
    else:
        common = dict(vocab_size=VOCAB, num_hidden_layers=c["layers"], bos_token_id=0, eos_token_id=1)
        if fam in QKVO:
            cls_cfg, cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                            "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[fam]
            extra = {k: c[k] for k in ("attention_bias", "mlp_bias") if k in c}
            cfg = cls_cfg(hidden_size=c["hidden"], intermediate_size=c["inter"], num_attention_heads=c["heads"],
                          num_key_value_heads=c["kv"], head_dim=c["head_dim"], max_position_embeddings=64,
                          pad_token_id=2, **common, **extra)
        elif fam == "gpt2":
            cls = transformers.GPT2LMHeadModel
            cfg = transformers.GPT2Config(n_embd=c["hidden"], n_layer=c["layers"], n_head=c["heads"],
                                          n_inner=c["inter"],
                                          n_positions=64, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
                                          vocab_size=VOCAB, bos_token_id=0, eos_token_id=1)
        else:
            cls = transformers.BertForSequenceClassification
            cfg = transformers.BertConfig(hidden_size=c["hidden"], num_attention_heads=c["heads"],
                                          intermediate_size=c["inter"], num_labels=3, max_position_embeddings=64,
                                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **common)
        cfg._attn_implementation = c["attn"]
        model = cls(cfg)
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised biases would hide a bias sliced wrongly
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.5)
    return model.eval()


def inputs(fam: str, c: Dict, batch: int = 2):
    g = torch.Generator().manual_seed(c["seed"] + 1)
    n = c["length"]
    if fam != "mha":
        ids = torch.randint(3, VOCAB, (batch, n), generator=g)
        if not c.get("padded"):
            return ids
        mask = torch.ones(batch, n, dtype=torch.int64)
        mask[0, :n // 2] = 0  # left padding of the first sequence (its last token stays visible)
        return {"input_ids": ids, "attention_mask": mask}
    shape = (batch, n, 5) if c["batch_first"] else (n, batch, 5)
    x = torch.randn(shape, generator=g)
    if not c["cross"]:
        return (x,)
    m = n + 2
    return (x, torch.randn((batch, m, 5) if c["batch_first"] else (m, batch, 5), generator=g))


def run(model, x) -> torch.Tensor:
    out = model(*x) if isinstance(x, tuple) else model(**x) if isinstance(x, dict) else model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def loss_of(model, x) -> torch.Tensor:
    return run(model, x).float().square().mean()


# -- which indices of which parameter each neuron owns (independent of epi_fast) ------------------

# One neuron kind of one module: (kind, module, size, [(parameter name, dim, fn(j) -> indices)]).
Spec = Tuple[str, nn.Module, int, List[Tuple[str, int, Callable[[int], torch.Tensor]]]]


def _block(start: int, width: int) -> Callable[[int], torch.Tensor]:
    return lambda j: torch.arange(start + j * width, start + (j + 1) * width)


def _spec(model: nn.Module, fam: str) -> List[Spec]:
    """Every attention (key/value groups) and MLP (hidden channels) of the model, from the
    modules' current shapes."""
    names = {m: n for n, m in model.named_modules()}
    found: List[Spec] = []

    def add(kind, module, size, parts):
        found.append((kind, module, size, [(f"{names[owner]}.{attr}" if names[owner] else attr, dim, fn)
                                         for owner, attr, dim, fn in parts if getattr(owner, attr) is not None]))

    if fam in QKVO:
        for layer in model.model.layers:
            a, mlp = layer.self_attn, layer.mlp
            d = a.head_dim
            kv = a.k_proj.out_features // d
            rep = a.q_proj.out_features // a.k_proj.out_features
            parts = []
            for lin, w in ((a.q_proj, rep * d), (a.k_proj, d), (a.v_proj, d)):
                parts += [(lin, "weight", 0, _block(0, w)), (lin, "bias", 0, _block(0, w))]
            parts.append((a.o_proj, "weight", 1, _block(0, rep * d)))
            add("heads", a, kv, parts)
            parts = [(lin, attr, 0, _block(0, 1))
                     for lin in (mlp.gate_proj, mlp.up_proj) for attr in ("weight", "bias")]
            parts.append((mlp.down_proj, "weight", 1, _block(0, 1)))
            add("mlp", mlp, mlp.up_proj.out_features, parts)
    elif fam == "gpt2":
        for block in model.transformer.h:
            a, mlp = block.attn, block.mlp
            d = a.head_dim
            h = a.c_attn.weight.shape[1] // (3 * d)
            parts = []
            for part in range(3):
                start = part * h * d
                parts += [(a.c_attn, "weight", 1, _block(start, d)), (a.c_attn, "bias", 0, _block(start, d))]
            parts.append((a.c_proj, "weight", 0, _block(0, d)))
            add("heads", a, h, parts)
            add("mlp", mlp, mlp.c_fc.weight.shape[1],
                [(mlp.c_fc, "weight", 1, _block(0, 1)), (mlp.c_fc, "bias", 0, _block(0, 1)),
                 (mlp.c_proj, "weight", 0, _block(0, 1))])
    elif fam == "bert":
        for layer in model.bert.encoder.layer:
            a = layer.attention
            d = a.self.attention_head_size
            h = a.self.query.out_features // d
            parts = [(lin, attr, 0, _block(0, d))
                     for lin in (a.self.query, a.self.key, a.self.value) for attr in ("weight", "bias")]
            parts.append((a.output.dense, "weight", 1, _block(0, d)))
            add("heads", a, h, parts)
            inter, out = layer.intermediate.dense, layer.output.dense
            add("mlp", layer, inter.out_features,
                [(inter, "weight", 0, _block(0, 1)), (inter, "bias", 0, _block(0, 1)),
                 (out, "weight", 1, _block(0, 1))])
    else:
        for a in model.attn:
            d = a.head_dim
            h = a.out_proj.weight.shape[1] // d
            parts = []
            for part in range(3):
                start = part * h * d
                parts += [(a, "in_proj_weight", 0, _block(start, d)), (a, "in_proj_bias", 0, _block(start, d))]
            parts += [(a, "bias_k", 2, _block(0, d)), (a, "bias_v", 2, _block(0, d)),
                      (a.out_proj, "weight", 1, _block(0, d))]
            add("heads", a, h, parts)
    return found


def _ordered_spec(model, fam, layout) -> List[Spec]:
    """The spec in the layout's group order; the layout must have exactly these groups."""
    spec = _spec(model, fam)
    by_module = {id(s[1]): s for s in spec}
    assert sorted(by_module) == sorted(id(g.module) for g in layout.groups)
    ordered = [by_module[id(g.module)] for g in layout.groups]
    assert [s[2] for s in ordered] == layout.group_sizes
    assert [s[0] for s in ordered] == [g.kind for g in layout.groups]
    return ordered


def _neuron_vectors(model, spec: List[Spec], grads: bool = False) -> List[torch.Tensor]:
    """Per neuron (layout order), all of its parameter entries flattened (or w * g)."""
    params = dict(model.named_parameters())
    out = []
    for _, _, size, parts in spec:
        for j in range(size):
            pieces = []
            for name, dim, fn in parts:
                p = params[name]
                t = p.detach().index_select(dim, fn(j))
                if grads:
                    t = t * p.grad.index_select(dim, fn(j))
                pieces.append(t.reshape(-1))
            out.append(torch.cat(pieces).double())
    return out


def independent_scores(model, spec, criterion: str) -> torch.Tensor:
    if criterion == "taylor":
        return torch.stack([v.sum() ** 2 for v in _neuron_vectors(model, spec, grads=True)])
    vecs = _neuron_vectors(model, spec)
    if criterion == "l1":
        return torch.stack([v.abs().sum() for v in vecs])
    return torch.stack([v.norm() for v in vecs])  # "l2" and "magnitude" (no BatchNorm here)


def expected_keep(spec, scores: torch.Tensor, ratio: float, max_layer_ratio: float):
    """The per-kind rule, written out: each kind loses its floor(r * N_kind + 0.5) lowest-scoring
    neurons (ties: lower index first), except each group's best `minimum` (ties: higher index
    kept). None when the limits do not allow it."""
    n = sum(s[2] for s in spec)
    keep = torch.ones(n, dtype=torch.bool)
    starts = [sum(s[2] for s in spec[:i]) for i in range(len(spec))]
    for kind in dict.fromkeys(s[0] for s in spec):
        candidates = []
        n_kind = 0
        for (k, _, size, _), o in zip(spec, starts):
            if k != kind:
                continue
            n_kind += size
            minimum = min(size, max(1, size - (size if max_layer_ratio >= 1.0 else math.floor(max_layer_ratio * size))))
            ranked = sorted(range(o, o + size), key=lambda i: (float(scores[i]), i))
            protected = set(ranked[size - minimum:])  # the group's best: on ties the higher index
            candidates += [i for i in ranked if i not in protected]
        k_remove = math.floor(ratio * n_kind + 0.5)
        if k_remove > len(candidates):
            return None
        for i in sorted(candidates, key=lambda i: (float(scores[i]), i))[:k_remove]:
            keep[i] = False
    return keep


def kept_indices(spec, keep: torch.Tensor, model) -> Dict[str, Tuple[int, torch.Tensor]]:
    """name -> (dim, surviving indices) of every parameter that loses entries under `keep`."""
    params = dict(model.named_parameters())
    removed: Dict[str, Tuple[int, set]] = {}
    o = 0
    for _, _, size, parts in spec:
        for j in range(size):
            if not keep[o + j]:
                for name, dim, fn in parts:
                    removed.setdefault(name, (dim, set()))[1].update(fn(j).tolist())
        o += size
    out = {}
    for name, (dim, gone) in removed.items():
        width = params[name].shape[dim]
        out[name] = (dim, torch.tensor([i for i in range(width) if i not in gone], dtype=torch.int64))
    return out


def random_keep(layout, seed: int, p_keep: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(layout.num_neurons, generator=g) < p_keep
    for o, s in zip(layout.offsets, layout.group_sizes):
        keep[o + int(torch.randint(s, (1,), generator=g))] = True  # every group keeps one
    return keep


def masked_output(dense, x, keep):
    masked = copy.deepcopy(dense)
    handles = mask_model(masked, group_layout(masked, x), keep)
    with torch.no_grad():
        out = run(masked, x)
    for h in handles:
        h.remove()
    return out


def assert_same_model(a: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    now = a.state_dict()
    assert list(now) == list(state)
    for k, v in state.items():
        assert now[k].shape == v.shape and torch.equal(now[k], v), k


# -- pruned == masked: random keep masks --------------------------------------------------------


@fuzz(20)
@given(configs(), st.integers(0, 2 ** 16), st.sampled_from([0.2, 0.5, 0.8]))
def test_random_keep_masks_equal_the_masked_model(cfg, seed, p_keep):
    fam, c = cfg
    dense = build(fam, c)
    x = inputs(fam, c)
    layout = group_layout(dense, x)
    spec = _ordered_spec(dense, fam, layout)
    keep = random_keep(layout, seed, p_keep)
    pruned = copy.deepcopy(dense)
    prune_with_masks(pruned, group_layout(pruned, x), keep)
    with torch.no_grad():
        got = run(pruned, x)
        full = run(dense, x)
    want = masked_output(dense, x, keep)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    if not bool(keep.all()):
        assert not torch.equal(want, full)  # the oracle does mask something
    # Shapes: every parameter lost exactly the entries the spec says; the rest is untouched.
    cut = kept_indices(spec, keep, dense)
    dense_params = dict(dense.named_parameters())
    for name, p in pruned.named_parameters():
        want = dense_params[name].detach()
        if name in cut:
            dim, idx = cut[name]
            want = want.index_select(dim, idx)
        assert torch.equal(p.detach(), want), name
    # The module attributes follow the kept heads; the structure vector is what was predicted.
    after = group_layout(pruned, x)
    assert after.group_sizes == [int(keep[o:o + s].sum()) for o, s in zip(layout.offsets, layout.group_sizes)]
    assert list(after.layer_channels().values()) == layout.structure(keep)[0].tolist()
    if fam == "mha":
        for a, (_, _, size, _), o in zip(pruned.attn, spec, layout.offsets):
            kept = int(keep[o:o + size].sum())
            assert a.num_heads == kept
            assert type(a) is (nn.MultiheadAttention if kept == size else HeadPrunedMultiheadAttention)
            if kept < size:
                assert a.inner_dim == kept * a.head_dim


# -- nn.MultiheadAttention called directly with every mask and weight option ---------------------


class _Call(nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, q, k, v):
        return self.attn(q, k, v, need_weights=False)[0]


@st.composite
def mha_calls(draw):
    heads = draw(st.integers(1, 4))
    c = dict(heads=heads, d=draw(st.integers(1, 4)), batch_first=draw(st.booleans()), bias=draw(st.booleans()),
             add_bias_kv=draw(st.booleans()), add_zero_attn=draw(st.booleans()), batched=draw(st.booleans()),
             self_attention=draw(st.booleans()), lq=draw(st.integers(1, 5)), lk=draw(st.integers(1, 5)),
             attn_mask=draw(st.sampled_from([None, "bool2", "float2", "bool3", "float3"])),
             kpm=draw(st.sampled_from([None, "bool", "float"])),
             weights=draw(st.sampled_from(["none", "avg", "per_head"])),
             causal=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 16)))
    if c["self_attention"] or c["causal"]:
        c["lk"] = c["lq"]
    return c


@fuzz(60)
@given(mha_calls())
def test_multihead_attention_with_masks_and_weights_equals_the_masked_module(c):
    """Outputs agree everywhere. Attention weights: per head (average_attn_weights=False), the
    pruned module's heads are the masked module's kept heads; averaged, the pruned module
    averages over its kept heads, while the masked module still averages over all of them
    (a masked head's attention probabilities are computed, only its output is zeroed), so the
    pruned average is compared with the masked module's per-head weights averaged over the kept
    heads. A 3-D attn_mask holds one [Lq, Lk] mask per (batch, head): the pruned module is given
    the rows of its kept heads (the dense-shaped mask is the subject of an xfail below)."""
    # PyTorch's own corner (xfail below): with is_causal, no key_padding_mask and need_weights=False,
    # the dense module drops attn_mask for SDPA's is_causal after appending the bias_k / zero
    # column, which hides that column; with need_weights=True it does not.
    appended = c["add_bias_kv"] or c["add_zero_attn"]
    assume(not (c["causal"] and appended and c["weights"] == "none" and c["kpm"] is None))
    g = torch.Generator().manual_seed(c["seed"])
    h, d = c["heads"], c["d"]
    e = h * d
    torch.manual_seed(c["seed"])
    dense = nn.MultiheadAttention(e, h, bias=c["bias"], add_bias_kv=c["add_bias_kv"], add_zero_attn=c["add_zero_attn"],
                                  batch_first=c["batch_first"]).eval()
    with torch.no_grad():
        for p in dense.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    b, lq, lk = 2, c["lq"], c["lk"]
    if c["batched"]:
        qs = (b, lq, e) if c["batch_first"] else (lq, b, e)
        ks = (b, lk, e) if c["batch_first"] else (lk, b, e)
    else:
        qs, ks = (lq, e), (lk, e)
    q = torch.randn(qs, generator=g)
    if c["self_attention"]:
        k = v = q
    else:
        k, v = torch.randn(ks, generator=g), torch.randn(ks, generator=g)
    bb = b if c["batched"] else 1
    kw, kw_pruned = {}, {}
    keep = random_keep(group_layout(_Call(dense), (q, k, v)), c["seed"])
    kept = keep.nonzero().flatten()
    if c["causal"]:
        causal = torch.ones(lq, lk, dtype=torch.bool).triu(1)
        kw["attn_mask"] = causal if c["attn_mask"] in (None, "bool2", "bool3") else \
            torch.zeros(lq, lk).masked_fill(causal, float("-inf"))
        kw["is_causal"] = True
    elif c["attn_mask"] is not None:
        shape = (lq, lk) if c["attn_mask"].endswith("2") else (bb * h, lq, lk)
        if c["attn_mask"].startswith("bool"):
            m = torch.rand(shape, generator=g) < 0.3
            m[..., 0] = False  # no query is masked everywhere (NaN rows)
        else:
            m = torch.randn(shape, generator=g)
        kw["attn_mask"] = m
    if c["kpm"] is not None:
        m = torch.rand(bb, lk, generator=g) < 0.3
        m[:, 0] = False
        if c["kpm"] == "float":
            m = torch.zeros(bb, lk).masked_fill(m, float("-inf"))
        if "attn_mask" in kw and kw["attn_mask"].dtype != m.dtype:
            m = m if m.dtype == torch.bool else torch.isinf(m)
            if kw["attn_mask"].dtype != torch.bool:
                m = torch.zeros(bb, lk).masked_fill(m, float("-inf"))
        kw["key_padding_mask"] = m if c["batched"] else m[0]
    kw["need_weights"] = c["weights"] != "none"
    kw["average_attn_weights"] = c["weights"] == "avg"
    kw_pruned = dict(kw)
    if "attn_mask" in kw and kw["attn_mask"].dim() == 3:
        am = kw["attn_mask"]
        kw_pruned["attn_mask"] = am.view(bb, h, lq, lk)[:, kept].reshape(-1, lq, lk)

    pruned = copy.deepcopy(dense)
    wrapper = _Call(pruned)
    prune_with_masks(wrapper, group_layout(wrapper, (q, k, v)), keep)
    masked = copy.deepcopy(dense)
    with torch.no_grad():
        for j in (~keep).nonzero().flatten().tolist():
            masked.out_proj.weight[:, j * d:(j + 1) * d] = 0
        got, got_w = pruned(q, k, v, **kw_pruned)
        want, _ = masked(q, k, v, **kw)
        want_heads = masked(q, k, v, **{**kw, "need_weights": True, "average_attn_weights": False})[1]
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    if c["weights"] == "none":
        assert got_w is None
        return
    head_dim = 1 if c["batched"] else 0
    want_kept = want_heads.index_select(head_dim, kept)
    if c["weights"] == "avg":
        want_kept = want_kept.mean(head_dim)
    torch.testing.assert_close(got_w, want_kept, atol=2e-6, rtol=1e-5)


# -- epi_fast.prune with the criteria -----------------------------------------------------------


@fuzz(20)
@given(configs(), st.sampled_from(["l2", "l1", "magnitude", "taylor"]), st.sampled_from([0.0, 0.2, 0.4, 0.6, 0.9]),
       st.sampled_from([1.0, 0.75, 0.5]))
def test_prune_with_a_criterion_removes_the_lowest_scores_per_kind(cfg, criterion, ratio, max_layer_ratio):
    fam, c = cfg
    dense = build(fam, c)
    x = inputs(fam, c)
    model = copy.deepcopy(dense)
    layout = group_layout(model, x)
    spec = _ordered_spec(model, fam, layout)
    scores = None
    if criterion == "taylor":
        acc = get_criterion("taylor").accumulator(layout)
        loss_of(model, x).backward()
        acc.step()
        scores = acc.scores()
        want_scores = independent_scores(model, spec, "taylor")
        torch.testing.assert_close(scores.double(), want_scores, rtol=2e-4, atol=1e-10)
        model.zero_grad(set_to_none=True)
    else:
        want_scores = independent_scores(model, spec, criterion)
        got = get_criterion(criterion).group_scores(layout)
        torch.testing.assert_close(got.double(), want_scores, rtol=1e-5, atol=1e-7)
    s = want_scores.sort().values
    assume(bool((s[1:] - s[:-1] > 1e-6 * s.abs().max().clamp(min=1e-12)).all()) if s.numel() > 1 else True)
    keep = expected_keep(spec, want_scores, ratio, max_layer_ratio)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    event("refused" if keep is None else "pruned")
    if keep is None:
        with pytest.raises(ValueError):
            prune(model, ratio, x, criterion=criterion, scores=scores, layout=layout, max_layer_ratio=max_layer_ratio)
        assert_same_model(model, state)
        return
    report = prune(model, ratio, x, criterion=criterion, scores=scores, layout=layout, max_layer_ratio=max_layer_ratio)
    assert report["neurons_removed"] == int((~keep).sum())
    with torch.no_grad():
        got = run(model, x)
    torch.testing.assert_close(got, masked_output(dense, x, keep), atol=2e-5, rtol=1e-4)
    if ratio == 0.0:
        assert_same_model(model, state)


# -- params / FLOPs targets, measured on the pruned model ---------------------------------------


def _measure(model, x, target):
    if target == "params":
        return sum(p.numel() for p in model.parameters())
    with flop_counter() as fc:  # autograd on, as the library measures: no MHA fast path
        run(model, x)
    return fc.get_total_flops()


@fuzz(15)
@given(configs(big=True), st.sampled_from(["params", "flops"]),
       st.sampled_from([0.1, 0.25, 0.4, 0.5, 0.7]))
def test_params_and_flops_targets_are_met_or_refused_without_a_change(cfg, target, ratio):
    fam, c = cfg
    dense = build(fam, c)
    x = inputs(fam, c)
    model = copy.deepcopy(dense)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        report = prune(model, ratio, x, target=target, max_layer_ratio=1.0)
    except ValueError:
        event("refused")
        assert_same_model(model, state)
        return
    event("met")
    achieved = 1 - _measure(model, x, target) / _measure(dense, x, target)
    assert abs(achieved - ratio) <= 0.01, (achieved, ratio)
    assert report["achieved"] == pytest.approx(achieved, abs=1e-9)


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_bert_flops_target_is_met(ratio):
    c = dict(layers=2, heads=8, hidden=64, inter=96, attn="sdpa", seed=0, length=32)
    dense = build("bert", c)
    x = inputs("bert", c)
    model = copy.deepcopy(dense)
    try:
        prune(model, ratio, x, target="flops", max_layer_ratio=1.0)
    except ValueError:
        return  # refusing is allowed; silently missing is not
    achieved = 1 - _measure(model, x, "flops") / _measure(dense, x, "flops")
    assert abs(achieved - ratio) <= 0.01, achieved  # observed 0.3353 for 0.3, 0.5711 for 0.5


# -- the optimizer --------------------------------------------------------------------------------


@fuzz(10)
@given(configs(), st.integers(0, 2 ** 16))
def test_adamw_state_is_the_dense_state_at_the_surviving_indices(cfg, seed):
    fam, c = cfg
    model = build(fam, c)
    x = inputs(fam, c)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        loss_of(model, x).backward()
        opt.step()
    before_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    before_state = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in model.named_parameters()}
    layout = group_layout(model, x)
    spec = _ordered_spec(model, fam, layout)
    keep = random_keep(layout, seed)
    cut = kept_indices(spec, keep, model)
    prune_with_masks(model, layout, keep, optimizer=opt)
    held = [p for group in opt.param_groups for p in group["params"]]
    assert {id(p) for p in held} == {id(p) for p in model.parameters()}
    for name, p in model.named_parameters():
        def sel(t):
            if name not in cut:
                return t
            dim, idx = cut[name]
            return t.index_select(dim, idx)
        assert torch.equal(p.detach(), sel(before_params[name])), name
        state = opt.state[p]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], sel(before_state[name][key])), (name, key)
        assert torch.equal(state["step"], before_state[name]["step"])
    opt.zero_grad()
    loss_of(model, x).backward()
    opt.step()  # the remapped optimizer steps the pruned model


# -- save / load ----------------------------------------------------------------------------------


@fuzz(8)
@given(cfg=configs(), seed=st.integers(0, 2 ** 16))
def test_save_and_load_give_identical_outputs(tmp_path_factory, cfg, seed):
    fam, c = cfg
    model = build(fam, c)
    x = inputs(fam, c)
    prune_with_masks(model, group_layout(model, x), random_keep(group_layout(model, x), seed))
    tmp = tmp_path_factory.mktemp("save")
    loaded = load_pruned(save_pruned(model, tmp / "m.pt"), model=build(fam, c)).eval()
    with torch.no_grad():
        want = run(model, x)
        assert torch.equal(run(loaded, x), want)
    assert [type(m) for m in model.modules()] == [type(m) for m in loaded.modules()]
    if fam != "mha":
        model.save_pretrained(tmp / "hf")
        again = load_pretrained(type(model), tmp / "hf").eval()
        # The saved config does not carry the attention implementation (eager comes back as SDPA).
        again.set_attn_implementation(c["attn"])
        for (n1, p1), (n2, p2) in zip(model.named_parameters(), again.named_parameters()):
            assert n1 == n2 and torch.equal(p1, p2), n1
        with torch.no_grad():
            assert torch.equal(run(again, x), want)


@pytest.mark.xfail(strict=True, reason="BUG: transformers 5's save_pretrained writes ViT under its legacy key names "
                                       "(vit.encoder.layer.0.attention.attention.query.weight); load_pretrained reads "
                                       "the raw safetensors keys without the model's key mapping, so even a dense ViT "
                                       "does not load")
def test_hf_vit_save_pretrained_loads_back(tmp_path):
    from transformer_zoo import hf_vit, images

    torch.manual_seed(0)
    model = hf_vit().eval()
    x = images()
    prune(model, 0.5, x, max_layer_ratio=1.0)
    model.save_pretrained(tmp_path / "hf")
    loaded = load_pretrained(type(model), tmp_path / "hf").eval()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


# -- pruning twice ------------------------------------------------------------------------------


@fuzz(10)
@given(configs(), st.integers(0, 2 ** 16), st.integers(0, 2 ** 16))
def test_pruning_twice_equals_masking_the_union(cfg, seed1, seed2):
    fam, c = cfg
    dense = build(fam, c)
    x = inputs(fam, c)
    layout1 = group_layout(dense, x)
    keep1 = random_keep(layout1, seed1, 0.7)
    model = copy.deepcopy(dense)
    prune_with_masks(model, group_layout(model, x), keep1)
    layout2 = group_layout(model, x)
    assert [g.root for g in layout2.groups] == [g.root for g in layout1.groups]
    keep2 = random_keep(layout2, seed2, 0.7)
    _ordered_spec(model, fam, layout2)  # the pruned model still has whole groups
    prune_with_masks(model, layout2, keep2)
    union = torch.zeros(layout1.num_neurons, dtype=torch.bool)
    for o1, s1, o2, s2 in zip(layout1.offsets, layout1.group_sizes, layout2.offsets, layout2.group_sizes):
        survivors = keep1[o1:o1 + s1].nonzero().flatten()  # original indices of the first prune's survivors
        assert survivors.numel() == s2
        union[o1 + survivors[keep2[o2:o2 + s2]]] = True
    with torch.no_grad():
        got = run(model, x)
    torch.testing.assert_close(got, masked_output(dense, x, union), atol=2e-5, rtol=1e-4)


# -- edge cases by hand ---------------------------------------------------------------------------


def _llama(layers=2):
    c = dict(layers=layers, kv=2, heads=4, head_dim=4, hidden=16, inter=12, attn="sdpa", attention_bias=True,
             mlp_bias=False, seed=0, length=5)
    return build("llama", c), inputs("llama", c)


@pytest.mark.parametrize("ignored", ["model.layers.0.self_attn", "model.layers.0.self_attn.q_proj",
                                     "model.layers.0.self_attn.o_proj"])
def test_ignoring_an_attention_module_or_one_of_its_projections_keeps_its_heads(ignored):
    model, x = _llama()
    attn = model.model.layers[0].self_attn
    before = {n: p.detach().clone() for n, p in attn.named_parameters()}
    layout = group_layout(model, x, ignored_layers=[ignored])
    assert "model.layers.0.self_attn" not in layout.layers
    assert "model.layers.0.mlp" in layout.layers and "model.layers.1.self_attn" in layout.layers
    report = prune(model, 0.5, x, ignored_layers=[ignored], max_layer_ratio=1.0)
    assert report["neurons_removed"] > 0
    for n, p in attn.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
    assert model.model.layers[0].mlp.up_proj.out_features < 12


def test_multihead_attention_with_another_kdim_is_a_clear_error():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.MultiheadAttention(16, 4, kdim=8, vdim=8, batch_first=True)
            self.h = nn.Linear(16, 2)

        def forward(self, q, k):
            return self.h(self.a(q, k, k)[0])

    x = (torch.randn(2, 3, 16), torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="kdim"):
        group_layout(Net(), x)
    model = Net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="kdim"):
        prune(model, 0.5, x)
    assert_same_model(model, state)


@pytest.mark.parametrize("target", ["channels", "params", "flops"])
def test_ratio_zero_changes_nothing(target):
    model, x = _llama()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = prune(model, 0.0, x, target=target)
    assert report["neurons_removed"] == 0 and report["achieved"] == 0.0
    assert_same_model(model, state)


def _share_o_proj():
    model, x = _llama()
    model.model.layers[1].self_attn.o_proj = model.model.layers[0].self_attn.o_proj
    return model, x


def test_two_attention_modules_sharing_one_linear_are_refused_clearly():
    model, x = _share_o_proj()
    with pytest.raises(ValueError):
        prune(model, 0.5, x, max_layer_ratio=1.0)


def test_a_failed_prune_of_a_shared_linear_leaves_the_model_unchanged():
    model, x = _share_o_proj()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for ratio in (0.25, 0.5):
        with pytest.raises(Exception):
            prune(model, ratio, x, max_layer_ratio=1.0)
        assert_same_model(model, state)
        with torch.no_grad():
            run(model, x)


def test_a_linear_shared_by_two_attention_modules_has_no_layout():
    """No layout, hence no prune_with_masks that would cut the shared tensor twice."""
    model, x = _share_o_proj()
    with pytest.raises(ValueError, match="is shared by"):
        group_layout(model, x)


@contextmanager
def _time_limit(seconds):
    def fire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_ignoring_every_block_of_a_decoder_is_refused():
    if not hasattr(signal, "SIGALRM"):
        pytest.skip("needs SIGALRM to stop the trace")
    model, x = _llama(layers=1)
    outcome = "returned"
    try:
        with _time_limit(3):
            group_layout(model, x, ignored_layers=["model.layers.0.self_attn", "model.layers.0.mlp"])
    except ValueError:
        outcome = "refused"
    except TimeoutError:
        outcome = "timed out"
    if outcome == "timed out":
        # A fresh exception: the interrupted Torch-Pruning frames do not format in pytest's report.
        raise TimeoutError("group_layout was still tracing after 3 s") from None
    assert outcome == "refused"


def _encoder():
    torch.manual_seed(0)

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.enc(x))

    return Enc().eval(), torch.randn(2, 5, 16)


def test_transformer_encoder_layer_prunes_to_an_odd_head_count_and_runs_under_no_grad():
    model, x = _encoder()
    layout = group_layout(model, x)
    keep = torch.ones(layout.num_neurons, dtype=torch.bool)  # MLP channels kept
    for g, o in zip(layout.groups, layout.offsets):
        if g.kind == "heads":
            keep[o:o + g.size] = torch.tensor([True, False, True, True])  # 3 heads per layer
    pruned = copy.deepcopy(model)
    prune_with_masks(pruned, group_layout(pruned, x), keep)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_output(model, x, keep), atol=2e-5, rtol=1e-4)


def test_transformer_encoder_pruned_to_an_even_head_count_runs_under_no_grad():
    model, x = _encoder()
    pruned = copy.deepcopy(model)
    prune(pruned, 0.5, x, max_layer_ratio=1.0)  # 2 of 4 heads per layer
    with torch.no_grad():
        pruned(x)


def _pruned_mha(batch_first=True):
    torch.manual_seed(0)
    dense = nn.MultiheadAttention(8, 4, batch_first=batch_first).eval()
    x = torch.randn(2, 5, 8) if batch_first else torch.randn(5, 2, 8)
    keep = torch.tensor([True, False, True, True])
    pruned = copy.deepcopy(dense)
    wrapper = _Call(pruned)
    prune_with_masks(wrapper, group_layout(wrapper, (x, x, x)), keep)
    return dense, pruned, x, keep


def test_a_3d_attn_mask_of_the_dense_shape_is_refused_clearly():
    _, pruned, x, _ = _pruned_mha()
    with pytest.raises(ValueError, match="head"):
        pruned(x, x, x, attn_mask=torch.zeros(2 * 4, 5, 5))


def test_is_causal_without_attn_mask_is_causal_or_refused_also_with_a_key_padding_mask():
    _, pruned, x, _ = _pruned_mha()
    kpm = torch.zeros(2, 5, dtype=torch.bool)
    kpm[0, -1] = True
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    with torch.no_grad():
        want = pruned(x, x, x, attn_mask=causal, key_padding_mask=kpm, need_weights=False)[0]
        try:
            got = pruned(x, x, x, is_causal=True, key_padding_mask=kpm, need_weights=False)[0]
        except RuntimeError:
            return
    torch.testing.assert_close(got, want)


@pytest.mark.xfail(strict=True, reason="divergence from the dense module (a PyTorch corner, low priority): with "
                                       "is_causal=True, a causal attn_mask, add_zero_attn (or add_bias_kv), no "
                                       "key_padding_mask and need_weights=False, nn.MultiheadAttention drops the mask "
                                       "for SDPA's is_causal, which hides the appended zero column; "
                                       "HeadPrunedMultiheadAttention pads and applies the mask (what the dense module "
                                       "does with need_weights=True)")
def test_is_causal_with_add_zero_attn_matches_the_dense_module():
    torch.manual_seed(0)
    dense = nn.MultiheadAttention(8, 4, add_zero_attn=True, batch_first=True).eval()
    x = torch.randn(2, 5, 8)
    keep = torch.tensor([True, False, True, True])
    pruned = copy.deepcopy(dense)
    wrapper = _Call(pruned)
    prune_with_masks(wrapper, group_layout(wrapper, (x, x, x)), keep)
    masked = copy.deepcopy(dense)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    with torch.no_grad():
        masked.out_proj.weight[:, 2:4] = 0
        want = masked(x, x, x, attn_mask=causal, is_causal=True, need_weights=False)[0]
        got = pruned(x, x, x, attn_mask=causal, is_causal=True, need_weights=False)[0]
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_returned_weights_are_the_weights_applied_in_training_with_dropout():
    torch.manual_seed(0)
    dense = nn.MultiheadAttention(8, 4, dropout=0.5, batch_first=True)
    x = torch.randn(2, 5, 8)
    wrapper = _Call(dense)
    prune_with_masks(wrapper, group_layout(wrapper, (x, x, x)), torch.tensor([True, False, True, True]))
    m = wrapper.attn.train()
    out, w = m(x, x, x, need_weights=True, average_attn_weights=False)
    inner = m.num_heads * m.head_dim
    v = nn.functional.linear(x, m.in_proj_weight[2 * inner:], m.in_proj_bias[2 * inner:])
    v = v.view(2, 5, m.num_heads, m.head_dim).transpose(1, 2)
    torch.testing.assert_close(m.out_proj((w @ v).transpose(1, 2).reshape(2, 5, inner)), out)


class _NormMlp(nn.Module):
    """fc1 -> GELU -> LayerNorm(hidden) -> fc2 (timm's Mlp with a norm_layer)."""

    def __init__(self, d=16, hidden=32):
        super().__init__()
        self.fc1, self.act = nn.Linear(d, hidden), nn.GELU()
        self.norm, self.fc2 = nn.LayerNorm(hidden), nn.Linear(hidden, d)

    def forward(self, x):
        return self.fc2(self.norm(self.act(self.fc1(x))))


class _NormMlpNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.mlp = _NormMlp()
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.head(h + self.mlp(h))


def test_an_mlp_with_a_norm_on_its_hidden_width_is_pruned_or_refused():
    model = _NormMlpNet().eval()
    x = (torch.randn(2, 5, 5),)
    try:
        prune(model, 0.5, x, max_layer_ratio=1.0)
    except ValueError:
        return
    with torch.no_grad():
        model(*x)


def test_olmo2_attention_with_full_width_q_norm_is_pruned_or_refused():
    if not hasattr(transformers, "Olmo2ForCausalLM"):
        pytest.skip("transformers without OLMo-2")
    torch.manual_seed(0)
    cfg = transformers.Olmo2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=24, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                                   pad_token_id=2, bos_token_id=0, eos_token_id=1)
    model = transformers.Olmo2ForCausalLM(cfg).eval()
    x = torch.randint(3, VOCAB, (2, 5))
    try:
        layout = group_layout(model, x)
        keep = torch.ones(layout.num_neurons, dtype=torch.bool)
        keep[0] = False  # one key/value group of the attention
        prune_with_masks(model, layout, keep)
    except ValueError:
        return
    with torch.no_grad():
        model(x)


class _MyMultiheadAttention(nn.MultiheadAttention):
    """A user's subclass (e.g. to log or to hook), with nn.MultiheadAttention's forward."""


def test_a_subclass_of_multihead_attention_is_pruned_or_refused():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(5, 16)
            self.attn = _MyMultiheadAttention(16, 4, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            h = self.inp(x)
            return self.head(h + self.attn(h, h, h, need_weights=False)[0])

    torch.manual_seed(0)
    model = Net().eval()
    x = (torch.randn(2, 5, 5),)
    try:
        prune(model, 0.5, x, max_layer_ratio=1.0)
    except ValueError:
        return
    with torch.no_grad():
        model(*x)


def test_torch_transformer_encoder_layers_lose_heads_and_mlp_channels_as_they_mask():
    torch.manual_seed(3)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(16, 3)).eval()
    x = torch.randn(2, 5, 16)
    layout = group_layout(model, x)
    assert sorted(set(layout.kinds)) == ["heads", "mlp"]
    keep = torch.ones(layout.num_neurons, dtype=torch.bool)
    for g, o in zip(layout.groups, layout.offsets):
        keep[o:o + g.size:2] = False  # every other head and channel
    masked = copy.deepcopy(model)
    mask_model(masked, group_layout(masked, x), keep)
    pruned = copy.deepcopy(model)
    prune_with_masks(pruned, group_layout(pruned, x), keep)
    with torch.no_grad():  # inference: torch's fused encoder path must not be taken with pruned widths
        torch.testing.assert_close(pruned(x), masked(x), atol=2e-5, rtol=1e-4)
    assert pruned[0].layers[0].linear1.out_features == 16 and pruned[0].layers[0].self_attn.num_heads == 2
