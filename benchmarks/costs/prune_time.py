"""C. One prune, timed from the model to the pruned model: `epi_fast.prune(model, 0.5, x,
criterion="l2")` against Torch-Pruning's own `tp.pruner.MagnitudePruner` (global pruning, L2
magnitude importance, pruning_ratio 0.5, the classifier ignored).

Both sides are timed from a fresh deep copy of the same model (the copy is made outside the
timing) to the pruned model, graph construction included: epi_fast traces, builds its layout,
scores, cuts and checks that the pruned model runs (counting its FLOPs); Torch-Pruning builds
its dependency graph in the pruner's constructor, then `step()` scores and cuts. The two are
timed in interleaved rounds (see `common.interleaved`), a garbage collection before each call.

They do not compute the same network: Torch-Pruning's MagnitudePruner removes 50% of every
group's channels by its own rule (ViT's residual width included), epi_fast 50% of the group
neurons by its global ranking under its per-layer limit; the parameters after each are recorded.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn as nn

from .common import interleaved, paired_ratio

RATIO = 0.5
GOAL = 1.2  # epi_fast's time at most this times Torch-Pruning's


@dataclass
class PruneConfig:
    models: List[str] = field(default_factory=lambda: ["resnet50", "vit_b_16"])
    rounds: dict = field(default_factory=lambda: {"resnet50": 25, "vit_b_16": 15})
    warmup: int = 1
    input_size: int = 224


def build(name: str) -> nn.Module:
    if name == "resnet_small":
        from epi_fast.models.small import ResNetSmall

        return ResNetSmall(10, 3)
    import torchvision

    return getattr(torchvision.models, name)(weights=None)


def classifier(model: nn.Module) -> nn.Module:
    """The classifier: the last Linear of the model (resnet's fc, ViT's heads.head)."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last


def tp_prune(model: nn.Module, x: torch.Tensor) -> nn.Module:
    import torch_pruning as tp

    pruner = tp.pruner.MagnitudePruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=RATIO,
        global_pruning=True, ignored_layers=[classifier(model)],
    )
    pruner.step()
    return model


def epi_prune(model: nn.Module, x: torch.Tensor) -> dict:
    import epi_fast

    return epi_fast.prune(model, RATIO, x, criterion="l2")


def run(cfg: PruneConfig, log=print) -> dict:
    import torch_pruning as tp

    out = {"ratio": RATIO, "goal": GOAL, "torch_pruning": getattr(tp, "__version__", "?"), "models": {}}
    for name in cfg.models:
        torch.manual_seed(0)
        model = build(name).eval()
        x = torch.randn(1, 3, cfg.input_size, cfg.input_size) if name != "resnet_small" else torch.randn(1, 3, 32, 32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Torch-Pruning warns about ViT's bare parameters each time
            probe_epi, probe_tp = copy.deepcopy(model), copy.deepcopy(model)
            report = epi_prune(probe_epi, x)
            tp_prune(probe_tp, x)
            params_tp = sum(p.numel() for p in probe_tp.parameters())
            del probe_epi, probe_tp
            timed = interleaved({
                "epi_fast": (lambda: copy.deepcopy(model), lambda m: epi_prune(m, x)),
                "torch_pruning": (lambda: copy.deepcopy(model), lambda m: tp_prune(m, x)),
            }, rounds=cfg.rounds.get(name, 5), warmup=cfg.warmup, collect=True)
        e, t = timed["epi_fast"], timed["torch_pruning"]
        row = {
            "epi_fast": e, "torch_pruning": t,
            "ratio_paired": paired_ratio(e, t),
            "ratio_of_medians": e["median_s"] / t["median_s"],
            "params_before": report["params_before"],
            "params_after_epi_fast": report["params_after"],
            "params_after_torch_pruning": params_tp,
        }
        out["models"][name] = row
        log(f"  {name}: epi_fast {e['median_s'] * 1e3:.0f} ms, Torch-Pruning {t['median_s'] * 1e3:.0f} ms "
            f"(median of {e['reps']}); epi_fast / Torch-Pruning {row['ratio_paired']:.2f}x in-round, "
            f"{row['ratio_of_medians']:.2f}x of medians")
    return out


def targets(result: dict) -> list:
    rows = []
    for name, row in result["models"].items():
        r = row["ratio_paired"]
        rows.append({
            "target": f"C: epi_fast.prune(0.5, l2) time <= {GOAL}x Torch-Pruning's MagnitudePruner on {name}",
            "value": f"{r:.2f}x ({row['epi_fast']['median_s'] * 1e3:.0f} ms vs {row['torch_pruning']['median_s'] * 1e3:.0f} ms)",
            "goal": f"<= {GOAL}x", "status": "PASS" if r <= GOAL else "FAIL",
            "detail": f"median of in-round ratios over {row['epi_fast']['reps']} rounds; ratio of medians "
                      f"{row['ratio_of_medians']:.2f}x",
        })
    return rows
