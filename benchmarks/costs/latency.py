"""A. The pruned network's real speed: CPU inference latency of torchvision models pruned to a
FLOPs target, against the dense model, next to the FLOPs reduction.

Each model (weights=None, 224x224) is pruned with `epi_fast.prune(model, ratio, x,
target="flops")` at each ratio, with and without `round_to`; every variant is then timed in
eval mode under `torch.no_grad()` at each batch size, all variants of one model in interleaved
rounds (the dense model in every round, see `common.interleaved`), after warm-up calls.
Per variant: speed-up = dense latency / pruned latency (the median of the in-round quotients,
and the ratio of the medians), FLOPs reduction = dense FLOPs / pruned FLOPs (FlopCounterMode,
from the prune's report), and efficiency = speed-up / FLOPs reduction (1.0: the time fell as
much as the FLOPs did).
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from .common import interleaved, nothing, paired_ratio


@dataclass
class LatencyConfig:
    models: List[str] = field(default_factory=lambda: ["resnet50", "mobilenet_v2", "vit_b_16"])
    ratios: List[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])
    round_to: List[Optional[int]] = field(default_factory=lambda: [None, 8])
    batches: List[int] = field(default_factory=lambda: [1, 32])
    # rounds[model][batch]; every round times each variant once.
    rounds: Dict[str, Dict[int, int]] = field(default_factory=lambda: {
        "resnet50": {1: 21, 32: 7}, "mobilenet_v2": {1: 31, 32: 9}, "vit_b_16": {1: 9, 32: 5}})
    warmup: int = 1
    input_size: int = 224


def build(name: str, input_size: int) -> nn.Module:
    if name == "resnet_small":
        from epi_fast.models.small import ResNetSmall

        return ResNetSmall(10, 3)
    import torchvision

    return getattr(torchvision.models, name)(weights=None)


def variant_name(ratio: float, round_to: Optional[int]) -> str:
    return f"flops{ratio:g}" + (f"_r{round_to}" if round_to else "")


def run(cfg: LatencyConfig, log=print) -> dict:
    import epi_fast

    out = {"threads": torch.get_num_threads(), "models": {}}
    for name in cfg.models:
        torch.manual_seed(0)
        dense = build(name, cfg.input_size).eval()
        size = cfg.input_size if name != "resnet_small" else 32
        x1 = torch.randn(1, 3, size, size)
        models = {"dense": dense}
        variants: Dict[str, dict] = {}
        dense_flops = None
        for ratio in cfg.ratios:
            for rt in cfg.round_to:
                key = variant_name(ratio, rt)
                m = copy.deepcopy(dense)
                t0 = time.perf_counter()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        rep = epi_fast.prune(m, ratio, x1, criterion="l2", target="flops", round_to=rt)
                except (ValueError, RuntimeError) as err:
                    msg = " ".join(f"{type(err).__name__}: {err}".split())
                    variants[key] = {"ratio": ratio, "round_to": rt, "error": msg[:600]}
                    log(f"  {name} {key}: not pruned ({msg[:160]})")
                    continue
                dense_flops = rep["flops_before"]
                variants[key] = {
                    "ratio": ratio, "round_to": rt, "achieved": rep["achieved"],
                    "flops_before": rep["flops_before"], "flops_after": rep["flops_after"],
                    "params_before": rep["params_before"], "params_after": rep["params_after"],
                    "flops_reduction": rep["flops_before"] / rep["flops_after"],
                    "prune_s": time.perf_counter() - t0,
                }
                models[key] = m.eval()
        row = {"input_size": size, "variants": variants, "dense_flops_b1": dense_flops, "batches": {}}
        for b in cfg.batches:
            x = torch.randn(b, 3, size, size)
            rounds = cfg.rounds.get(name, {}).get(b, 3)

            def call(m, x=x):
                return lambda _: m(x)

            with torch.no_grad():
                timed = interleaved({k: (nothing, call(m)) for k, m in models.items()}, rounds=rounds,
                                    warmup=cfg.warmup)
            d = timed["dense"]
            per = {"dense": d}
            for key, stats in timed.items():
                if key == "dense":
                    continue
                v = variants[key]
                speed_paired = paired_ratio(d, stats)
                speed_medians = d["median_s"] / stats["median_s"]
                per[key] = dict(stats, speedup=speed_paired, speedup_of_medians=speed_medians,
                                efficiency=speed_paired / v["flops_reduction"])
            row["batches"][str(b)] = per
            log(f"  {name} batch {b} ({rounds} rounds): dense {d['median_s'] * 1e3:.1f} ms; " + "; ".join(
                f"{k} {s['median_s'] * 1e3:.1f} ms x{s['speedup']:.2f} (FLOPs /{variants[k]['flops_reduction']:.2f}, "
                f"eff {s['efficiency']:.2f})" for k, s in per.items() if k != "dense"))
        out["models"][name] = row
        del models, dense
    return out

