"""Which transformers `epi_fast.prune` handles, and what of them it prunes: the facts of
docs/TRANSFORMERS.md.

Each model runs in its own process with a time limit (an out-of-memory kill costs one row),
with random weights: its layout (attention modules, key/value groups, query heads, MLPs and
their hidden channels), then `prune(model, 0.5, x)` (half of each kind's neurons, the
defaults) and, on a copy of the dense model, `prune(model, 0.5, x, target="params")`. After
the first prune: the query heads and MLP channels left, whether every parameter outside the
attention and MLP blocks (embeddings, norms, patch merging, the residual width) and every
convolution kept its shape, and whether the pruned model runs and gives the dense output's
shape. Hugging Face decoders are built at a published model's widths with fewer layers (said
in the row), so that the survey fits a small machine.

    python experiments/transformer_survey.py [--only swin_t gpt2] [--timeout 900] [--table-only]

Writes experiments/results/transformer_survey.json and the table between the survey markers
of docs/TRANSFORMERS.md, each atomically (a reader never sees half of either).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "TRANSFORMERS.md")
RESULTS = os.path.join(ROOT, "experiments", "results", "transformer_survey.json")
BEGIN, END = "<!-- transformer_survey: begin -->", "<!-- transformer_survey: end -->"


def _tokens(vocab, length=16):
    import torch

    return torch.randint(3, vocab, (1, length), generator=torch.Generator().manual_seed(0))


def _images(size):
    import torch

    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def _hf(cls_name, cfg_name, **cfg):
    import transformers

    config = getattr(transformers, cfg_name)(**cfg)
    return getattr(transformers, cls_name)(config)


def _build(name):
    """(model, example inputs, what it is)."""
    import torchvision

    if name == "vit_b_16":
        return torchvision.models.vit_b_16(), _images(224), "torchvision vit_b_16"
    if name == "tv_vit_small":
        m = torchvision.models.VisionTransformer(image_size=8, patch_size=2, num_layers=2, num_heads=4, hidden_dim=32,
                                                 mlp_dim=48, num_classes=3)
        return m, _images(8), "torchvision VisionTransformer, 2 layers, 4 heads, width 32"
    if name in ("swin_t", "swin_v2_t"):
        return getattr(torchvision.models, name)(), _images(224 if name == "swin_t" else 256), f"torchvision {name}"
    if name == "maxvit_t":
        return torchvision.models.maxvit_t(), _images(224), "torchvision maxvit_t"
    if name == "llama":
        m = _hf("LlamaForCausalLM", "LlamaConfig", vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=4)
        return m, _tokens(32000), "HF LLaMA at TinyLlama-1.1B's widths (32 heads over 4 KV groups), 2 of its 22 layers"
    if name == "qwen2":
        m = _hf("Qwen2ForCausalLM", "Qwen2Config", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                num_hidden_layers=2, num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)
        return m, _tokens(151936), "HF Qwen2 at Qwen2-0.5B's widths (14 heads over 2 KV groups), 2 of its 24 layers"
    if name == "mistral":
        m = _hf("MistralForCausalLM", "MistralConfig", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=8)
        return m, _tokens(32000), "HF Mistral at Mistral-7B's widths (32 heads over 8 KV groups), 2 of its 32 layers"
    if name == "llama_mqa":
        m = _hf("LlamaForCausalLM", "LlamaConfig", vocab_size=1000, hidden_size=256, intermediate_size=688,
                num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=1)
        return m, _tokens(1000), "HF LLaMA with one KV head (multi-query), 8 heads, width 256, 2 layers"
    if name == "falcon_mqa":
        m = _hf("FalconForCausalLM", "FalconConfig", vocab_size=1000, hidden_size=256, num_hidden_layers=2,
                num_attention_heads=8, multi_query=True, new_decoder_architecture=False)
        return m, _tokens(1000), "HF Falcon (multi-query, fused query_key_value), width 256, 2 layers"
    if name == "gpt2":
        return _hf("GPT2LMHeadModel", "GPT2Config"), _tokens(50257), "HF GPT-2 at gpt2's config (12 layers, 12 heads)"
    if name == "gpt2_cross":
        m = _hf("GPT2LMHeadModel", "GPT2Config", vocab_size=1000, n_embd=64, n_layer=2, n_head=4,
                add_cross_attention=True)
        return m, _tokens(1000), "HF GPT-2 with cross-attention (add_cross_attention=True), width 64"
    if name == "bert":
        m = _hf("BertForSequenceClassification", "BertConfig", num_labels=3)
        return m, _tokens(30522), "HF BERT at bert-base's config (12 layers, 12 heads)"
    if name == "hf_vit":
        m = _hf("ViTForImageClassification", "ViTConfig", num_labels=10)
        return m, _images(224), "HF ViT at vit-base's config (12 layers, 12 heads)"
    if name.startswith(("vit_tiny", "deit_tiny")):
        import timm

        return timm.create_model(name, pretrained=False), _images(224), f"timm {name}"
    raise KeyError(name)


NAMES = ("vit_b_16", "tv_vit_small", "swin_t", "swin_v2_t", "llama", "qwen2", "mistral", "gpt2", "bert", "hf_vit",
         "vit_tiny_patch16_224", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
         "llama_mqa", "falcon_mqa", "gpt2_cross", "maxvit_t")


def _out(model, x):
    import torch

    with torch.no_grad():
        y = model(x)
    y = getattr(y, "logits", y)
    return tuple(y.shape) if isinstance(y, torch.Tensor) else tuple(tuple(t.shape) for t in y)


def _error(err) -> str:
    return f"{type(err).__name__}: {err}"


def survey_one(name: str) -> dict:
    import torch
    import torch.nn as nn

    from epi_fast import prune
    from epi_fast.layout import group_layout

    warnings.filterwarnings("ignore")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:
        pass
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, x, what = _build(name)
    model.eval()
    row = {"name": name, "model": what,
           "params_before": sum(p.numel() for p in model.parameters())}
    try:
        layout = group_layout(model, x)
    except Exception as err:
        row.update(prunes=False, why=_error(err))
        return row
    widths = layout.layer_channels()
    heads = [g for g in layout.groups if g.kind == "heads"]
    mlps = [g for g in layout.groups if g.kind == "mlp"]
    row.update(
        attention_modules=len(heads), kv_groups=sum(g.size for g in heads),
        query_heads=sum(widths[g.root] for g in heads),
        mlps=len(mlps), mlp_channels=sum(g.size for g in mlps),
    )
    inside = set()
    for g in layout.groups:
        inside |= {id(p) for s in g.block.slices for p in [getattr(s.owner, s.attr)]}
    outside = {n: tuple(p.shape) for n, p in model.named_parameters() if id(p) not in inside}
    convs = {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
    dense_out = _out(model, x)
    dense = copy.deepcopy(model)

    t = time.perf_counter()
    try:
        report = prune(model, 0.5, x)
    except Exception as err:
        row.update(prunes=False, why=_error(err))
    else:
        row["prune_s"] = round(time.perf_counter() - t, 1)
        after = group_layout(model, x)
        w = after.layer_channels()
        row.update(
            prunes=True, params_after=report["params_after"],
            query_heads_after=sum(w[g.root] for g in after.groups if g.kind == "heads"),
            mlp_channels_after=sum(g.size for g in after.groups if g.kind == "mlp"),
            outside_kept=all(tuple(p.shape) == outside[n] for n, p in model.named_parameters() if n in outside),
            convs=len(convs),
            convs_kept=all(tuple(m.weight.shape) == convs[n] for n, m in model.named_modules() if n in convs),
        )
        try:
            row["runs"] = _out(model, x) == dense_out
        except Exception as err:
            row.update(runs=False, why=_error(err))
    try:
        report = prune(dense, 0.5, x, target="params")
        row["params_target_0_5"] = round(float(report["achieved"]), 4)
    except Exception as err:
        row["params_target_0_5"] = _error(err)
    return row


def _clip(text, n=150) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 3] + "..."


def _target_cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    found = re.search(r"nearest reachable ratios are (\S+) \(below\) and (\S+) \(above\)", str(v))
    if found:
        return f"not reachable (nearest: {found.group(1)} below, {found.group(2)} above)"
    return _clip(v, 110)


def _cell(v):
    if v is True:
        return "yes"
    if v is False:
        return "no"
    return "" if v is None else str(v)


def table(rows) -> str:
    import torch
    import torchvision

    versions = [f"torch {torch.__version__}", f"torchvision {torchvision.__version__}"]
    for mod in ("transformers", "timm"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    lines = [
        f"Measured with {', '.join(versions)} on one CPU thread (random weights; "
        "`prune(model, 0.5, x)` with the defaults: half of the key/value groups and half of the MLP "
        "channels, each kind ranked on its own, at most 0.9 of a layer).",
        "",
        "| model | attention modules | KV groups / query heads | MLPs / channels | params | params after 0.5 | "
        "query heads / MLP channels after | outside blocks and convs kept | target=\"params\" 0.5 | notes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for r in rows:
        if "attention_modules" not in r:
            lines.append(f"| {r['model']} | | | | {r.get('params_before', '')} | | | | | refused: {_clip(r.get('why', ''))} |")
            continue
        after = f"{r['params_after']} ({r['params_after'] / r['params_before']:.0%})" if r.get("prunes") else "no"
        kept = (f"{r['query_heads_after']} / {r['mlp_channels_after']}" if r.get("prunes") else "")
        inside = (f"{_cell(r.get('outside_kept'))}, {r.get('convs')} conv(s) {_cell(r.get('convs_kept'))}"
                  if r.get("prunes") else "")
        target = _target_cell(r.get("params_target_0_5"))
        notes = _clip(r.get("why", ""), 220) if not r.get("prunes") or r.get("runs") is False else ("runs" if r.get("runs") else "")
        lines.append(
            f"| {r['model']} | {r['attention_modules']} | {r['kv_groups']} / {r['query_heads']} | "
            f"{r['mlps']} / {r['mlp_channels']} | {r['params_before']} | {after} | {kept} | {inside} | {target} | {notes} |"
        )
    return "\n".join(lines)


def write(rows, doc=DOC, results=RESULTS) -> None:
    sys.path.insert(0, ROOT)
    from epi_fast._io import atomic_write, write_json

    os.makedirs(os.path.dirname(results), exist_ok=True)
    write_json(results, {"rows": rows})
    with open(doc) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc} lacks the survey markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{table(rows)}\n{END}{tail}"
    atomic_write(doc, lambda f: f.write(new.encode()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--table-only", action="store_true", help="rewrite the table from the saved results")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(survey_one(args.one)))
        return 0
    if args.table_only:
        with open(RESULTS) as f:
            write(json.load(f)["rows"])
        return 0
    names = args.only or list(NAMES)
    old = {}
    if args.only and os.path.exists(RESULTS):  # a partial rerun keeps the other rows
        with open(RESULTS) as f:
            old = {r["name"]: r for r in json.load(f)["rows"]}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in names:
        t = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", name], capture_output=True,
                                  text=True, timeout=args.timeout, env=env)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode == 0 and lines:
                row = json.loads(lines[-1])
            else:
                tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
                row = {"name": name, "model": name,
                       "why": "killed (out of memory?)" if proc.returncode in (-9, 137) else tail}
        except subprocess.TimeoutExpired:
            row = {"name": name, "model": name, "why": f"over the {args.timeout} s time limit"}
        old[name] = row
        print(f"{name}: {time.perf_counter() - t:.0f} s {row.get('why', '')[:100]}", flush=True)
        write([old[n] for n in NAMES if n in old] + [r for n, r in old.items() if n not in NAMES])
    return 0


if __name__ == "__main__":
    sys.exit(main())
