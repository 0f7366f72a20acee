"""Which torchvision (or timm) classification models `epi_fast.prune` handles: writes
docs/MODELS.md (or, with --source timm, docs/TIMM.md).

Each model runs in its own process with a time limit (a hang or an out-of-memory kill then
costs one row, not the survey): random weights, 10 classes, the smallest input size of
(64, 224, 299) that the model accepts, `prune(ratio=0.5, criterion="magnitude")`, then an eval
forward of the pruned model (the "works" test) and a training-mode forward (auxiliary heads
that only run in training are not traced; see the notes).

    python experiments/model_survey.py [--timeout 300] [--only resnet18 vgg11] [--out docs/MODELS.md]
    python experiments/model_survey.py --source timm [--out docs/TIMM.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SIZES = (64, 224, 299)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The timm models the survey covers by default (random weights; nothing is downloaded).
TIMM_MODELS = (
    "resnet18", "resnet50", "resnext50_32x4d", "seresnext26d_32x4d", "resnest50d", "densenet121", "dla34",
    "cspresnet50", "regnetx_016", "regnety_016", "efficientnet_b0", "tf_efficientnet_lite0", "efficientnetv2_rw_s",
    "mobilenetv3_large_100", "mixnet_s", "ghostnet_100", "rexnet_100", "repvgg_a2", "hrnet_w18_small",
    "inception_v3", "xception41", "nfnet_l0", "convnext_tiny", "poolformer_s12", "mobilevit_s", "levit_128",
    "coat_lite_tiny", "vit_small_patch16_224", "deit_small_patch16_224", "swin_tiny_patch4_window7_224",
)


def _build(name: str, source: str):
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10)
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=10)


def survey_one(name: str, source: str = "torchvision") -> dict:
    import torch

    from epi_fast.surgery import prune

    torch.set_num_threads(1)
    torch.manual_seed(0)
    row = {"model": name}
    model = _build(name, source).eval()
    size = None
    for s in SIZES:
        try:
            with torch.no_grad():
                model(torch.randn(1, 3, s, s))
            size = s
            break
        except Exception as err:  # too small for this model: try the next size
            last = err
    if size is None:
        row.update(works=False, why=f"no input size of {SIZES} runs: {type(last).__name__}: {last}")
        return row
    row["input"] = size
    x = torch.randn(1, 3, size, size)
    t = time.perf_counter()
    try:
        report = prune(model, 0.5, x, criterion="magnitude")
    except Exception as err:
        row.update(works=False, why=f"prune failed: {type(err).__name__}: {err}")
        return row
    row["prune_s"] = round(time.perf_counter() - t, 1)
    row.update(params_before=report["params_before"], params_after=report["params_after"],
               flops_before=report["flops_before"], flops_after=report["flops_after"])
    try:
        with torch.no_grad():
            y = model.eval()(x)
        if getattr(y, "shape", None) != (1, 10):
            raise RuntimeError(f"output shape {getattr(y, 'shape', type(y).__name__)}")
    except Exception as err:
        row.update(works=False, why=f"pruned model fails in eval: {type(err).__name__}: {err}")
        return row
    row["works"] = True
    try:
        model.train()(torch.randn(2, 3, size, size))
    except Exception as err:
        row["why"] = f"eval only; training-mode forward fails: {type(err).__name__}: {err}"
    return row


def _clip(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 3] + "..."


def write_table(rows: list[dict], path: str, seconds: float, source: str = "torchvision") -> None:
    import torch
    import torch_pruning
    import torchvision

    ok = sum(1 for r in rows if r.get("works"))
    if source == "timm":
        import timm

        title, versions = "# timm models and `epi_fast.prune`", f", timm {timm.__version__}"
        how = "`experiments/model_survey.py --source timm`"
    else:
        title, versions, how = "# Torchvision models and `epi_fast.prune`", "", "`experiments/model_survey.py`"
    lines = [
        title,
        "",
        f"Written by {how} (do not edit by hand). Each model: random weights,",
        "10 classes, the smallest input of 64/224/299 pixels it accepts, `prune(model, 0.5, x,",
        'criterion="magnitude")` (half of the prunable group neurons removed, each kind of group on',
        "its own, at most 90% of any layer, coupled channels combined by the criterion's default, the",
        "mean; the classifier's outputs are never pruned), then a forward pass of the pruned",
        "model in eval mode (\"works\") and in training mode (noted when it fails). Params are counted",
        "with 10 classes. The equivalence of pruning and masking is tested separately",
        "(`tests/surgery/test_surgery.py`) on a subset.",
        "",
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, torch-pruning "
        f"{torch_pruning.__version__}{versions}; {ok} of {len(rows)} models work; survey time {seconds / 60:.0f} min "
        "on 1 CPU thread.",
        "",
        "| model | works | input | params before | params after (0.5) | kept | prune s | notes |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        before, after = r.get("params_before"), r.get("params_after")
        kept = f"{after / before:.0%}" if before and after is not None else ""
        lines.append(
            f"| {r['model']} | {'yes' if r.get('works') else 'no'} | {r.get('input', '')} | "
            f"{before if before is not None else ''} | {after if after is not None else ''} | {kept} | "
            f"{r.get('prune_s', '')} | {_clip(r.get('why', ''))} |"
        )
    lines += ["", "## Notes", "", (TIMM_NOTES if source == "timm" else NOTES).strip(), ""]
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(path + ".tmp", path)


NOTES = """
- "works" means the pruned model runs and gives 10 outputs; that pruning equals masking is
  checked in `tests/surgery/test_surgery.py` for resnet18/50, mobilenet_v2/v3_small, vgg11_bn,
  densenet121, resnext50_32x4d and the in-repo models, and in tests/transformer for ViT and
  Swin (attention heads and MLP channels; docs/TRANSFORMERS.md). ConvNeXt, EfficientNet and
  RegNet run after pruning but their equivalence (LayerNorm, layer-scale parameters) is not
  tested here.
- "kept" is params after / before. A ratio counts group neurons (for models with attention:
  each kind, heads and MLP channels, loses the ratio of its own), not parameters: a neuron of a
  wide late layer carries more parameters than one of an early layer, so the parameter
  reduction differs from the ratio (`target="params"` asks for a parameter fraction). The
  default per-layer limit (`max_layer_ratio=0.9`) keeps at least a tenth of every layer.
- Grouped convolutions (ResNeXt, RegNet) are pruned alike in every convolution group: such a
  group neuron ties `groups` channels, and its score is the mean over the copies.
- Modules that only run in training mode (GoogLeNet/Inception auxiliary heads) are not seen by
  Torch-Pruning's trace, which runs in eval mode; their input channels are not pruned, so the
  pruned model runs in eval mode only (`prune` warns). Build such models with
  `aux_logits=False` before pruning.
- ShuffleNetV2: Torch-Pruning 1.6.0's index mapping of the channel shuffle (reshape/transpose)
  divides by zero while building the graph. Swin (v1, v2) prunes by heads and MLP channels
  (docs/TRANSFORMERS.md). MaxViT: its attention is not one the layout knows (a ValueError
  naming it and `epi_fast.layout.register_attention`).
"""

TIMM_NOTES = """
- "works" means the pruned model runs and gives 10 outputs. Models with attention (ViT, DeiT,
  Swin, and the timm attention the layout knows) prune by attention heads and MLP channels
  (docs/TRANSFORMERS.md); the others through Torch-Pruning's dependency graph, as the
  torchvision models of docs/MODELS.md. A model whose attention the layout does not know is
  refused with a ValueError that names it (teach it with `epi_fast.layout.register_attention`).
- "kept" is params after / before at ratio 0.5 of the group neurons, with the default
  per-layer limit (at least a tenth of every layer kept).
- `epi-fast prune --model timm/NAME` builds the same models.
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out", default=None, help="(default docs/MODELS.md, or docs/TIMM.md with --source timm)")
    ap.add_argument("--source", choices=("torchvision", "timm"), default="torchvision")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.out is None:
        args.out = os.path.join(ROOT, "docs", "TIMM.md" if args.source == "timm" else "MODELS.md")
    if args.one:
        print(json.dumps(survey_one(args.one, args.source)))
        return 0
    if args.source == "timm":
        names = args.only or list(TIMM_MODELS)
    else:
        import torchvision

        names = args.only or sorted(torchvision.models.list_models(module=torchvision.models))
    rows, start = [], time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in names:
        t = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", name, "--source", args.source], capture_output=True, text=True,
                                  timeout=args.timeout, env=env)
            lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
            if proc.returncode == 0 and lines:
                row = json.loads(lines[-1])
            else:
                tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
                why = "killed (out of memory?)" if proc.returncode in (-9, 137) else tail
                row = {"model": name, "works": False, "why": why}
        except subprocess.TimeoutExpired:
            row = {"model": name, "works": False, "why": f"over the {args.timeout} s time limit"}
        rows.append(row)
        print(f"{name}: {'ok' if row.get('works') else 'FAIL'} {time.perf_counter() - t:.0f}s {row.get('why', '')[:100]}", flush=True)
        write_table(rows, args.out, time.perf_counter() - start, args.source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
