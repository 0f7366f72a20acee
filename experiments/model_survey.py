"""Which torchvision classification models `epi_fast.prune` handles: writes docs/MODELS.md.

Each model runs in its own process with a time limit (a hang or an out-of-memory kill then
costs one row, not the survey): random weights, 10 classes, the smallest input size of
(64, 224, 299) that the model accepts, `prune(ratio=0.5, criterion="magnitude")`, then an eval
forward of the pruned model (the "works" test) and a training-mode forward (auxiliary heads
that only run in training are not traced; see the notes).

    python experiments/model_survey.py [--timeout 300] [--only resnet18 vgg11] [--out docs/MODELS.md]
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


def survey_one(name: str) -> dict:
    import torch
    import torchvision

    from epi_fast.surgery import prune

    torch.set_num_threads(1)
    torch.manual_seed(0)
    row = {"model": name}
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
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


def write_table(rows: list[dict], path: str, seconds: float) -> None:
    import torch
    import torch_pruning
    import torchvision

    ok = sum(1 for r in rows if r.get("works"))
    lines = [
        "# Torchvision models and `epi_fast.prune`",
        "",
        "Written by `experiments/model_survey.py` (do not edit by hand). Each model: random weights,",
        "10 classes, the smallest input of 64/224/299 pixels it accepts, `prune(model, 0.5, x,",
        'criterion="magnitude")` (half of the prunable group neurons removed globally, at least one',
        "kept per group, coupled channels combined by the criterion's default, the mean; the",
        "classifier's outputs are never pruned), then a forward pass of the pruned",
        "model in eval mode (\"works\") and in training mode (noted when it fails). Params are counted",
        "with 10 classes. The equivalence of pruning and masking is tested separately",
        "(`tests/surgery/test_surgery.py`) on a subset.",
        "",
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, torch-pruning "
        f"{torch_pruning.__version__}; {ok} of {len(rows)} models work; survey time {seconds / 60:.0f} min "
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
    lines += ["", "## Notes", "", NOTES.strip(), ""]
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(path + ".tmp", path)


NOTES = """
- "works" means the pruned model runs and gives 10 outputs; that pruning equals masking is
  checked in `tests/surgery/test_surgery.py` for resnet18/50, mobilenet_v2/v3_small, vgg11_bn,
  densenet121, resnext50_32x4d and the in-repo models. ConvNeXt, ViT, EfficientNet and RegNet
  run after pruning but their equivalence (LayerNorm, layer-scale and class-token parameters,
  attention) is not tested here.
- "kept" is params after / before. A ratio counts group neurons, not parameters: a neuron of a
  wide late layer carries more parameters than one of an early layer, so the parameter
  reduction differs from the ratio. With 0.1's default `reduce="sum"` a residual neuron shared
  by many layers outscored lone channels, so lone inner convolutions went first; with the mean
  (0.2.0's default for magnitude criteria) that bias is gone, but at random initialisation
  every BatchNorm gamma is 1, the BN-scored groups tie and ties go by index, so the earliest
  groups go first: in regnet_y_400mf the residual streams of the first stages keep one channel
  (14 of its 85 layers keep one). Per-layer limits are the remedy (not in this release).
- Grouped convolutions (ResNeXt, RegNet) are pruned alike in every convolution group: such a
  group neuron ties `groups` channels, and its score is the mean over the copies.
- Modules that only run in training mode (GoogLeNet/Inception auxiliary heads) are not seen by
  Torch-Pruning's trace, which runs in eval mode; their input channels are not pruned, so the
  pruned model runs in eval mode only (`prune` warns). Build such models with
  `aux_logits=False` before pruning.
- ShuffleNetV2: Torch-Pruning 1.6.0's index mapping of the channel shuffle (reshape/transpose)
  divides by zero while building the graph. Swin (v1, v2) and MaxViT: the graph build fails
  (TypeError inside Torch-Pruning) or does not finish within 300 s on one CPU thread.
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "MODELS.md"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(survey_one(args.one)))
        return 0
    import torchvision

    names = args.only or sorted(torchvision.models.list_models(module=torchvision.models))
    rows, start = [], time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in names:
        t = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True,
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
        write_table(rows, args.out, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
