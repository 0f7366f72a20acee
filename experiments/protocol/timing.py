"""The timing pass: wall-clock per training epoch of the dense and of every pruned network."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from epi_fast.app.training import seed_everything

from .config import TRAIN
from .data import Tensors
from .dense import UnitSetup
from .training import make_optimizer, make_scheduler, train_step


def keep_mask_from_counts(layout, layers: List[str], kept: List[int]) -> torch.Tensor:
    """The group keep-mask (first kept_g neurons of each group) that gives these per-layer counts:
    the same network shape as the branch's, for timing (which channels survive does not matter)."""
    per_layer = dict(zip(layers, kept))
    parts = []
    for g in layout.groups:
        k = per_layer.get(g.root, g.size * g.channel_groups) // max(1, g.channel_groups)
        k = max(1, min(g.size, k))
        parts.append(torch.arange(g.size) < k)
    return torch.cat(parts)


def step_seconds(model, data: Tensors, accumulate=None, warmup: int = 2, chunk: int = 8, chunks: int = 3) -> float:
    """Median seconds of one training step (SGD + schedule as in training), over `chunks` timed
    chunks of `chunk` steps after `warmup` steps."""
    opt = make_optimizer(model)
    sched = make_scheduler(opt, 1000, 10)
    gen = torch.Generator().manual_seed(0)
    bs = TRAIN["batch_size"]
    model.train()
    times = []

    def step():
        train_step(model, opt, sched, data, torch.randint(0, len(data), (bs,), generator=gen), accumulate)

    for _ in range(warmup):
        step()
    for _ in range(chunks):
        t0 = time.perf_counter()
        for _ in range(chunk):
            step()
        times.append((time.perf_counter() - t0) / chunk)
    return float(np.median(times))


def _pruned_seconds(setup: UnitSetup, unit: Dict[str, Any], cache: Dict[Tuple[int, ...], float],
                    new_model) -> Dict[str, Dict[str, float]]:
    from epi_fast.layout import group_layout
    from epi_fast.surgery import prune_with_masks

    out: Dict[str, Dict[str, float]] = {}
    for rk, br in unit["branches"].items():
        out[rk] = {}
        for e, b in br.items():
            key = tuple(b["kept"])
            if key not in cache:
                m = new_model()
                layout = group_layout(m, setup.example)
                prune_with_masks(m, layout, keep_mask_from_counts(layout, unit["layers"], b["kept"]))
                cache[key] = step_seconds(m, setup.train)
            out[rk][e] = setup.steps * cache[key]
    return out


def timing_pass(units: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Wall-clock per training epoch of the dense network and of every branch's pruned network,
    measured in one process with one thread and nothing else of this protocol running (the
    in-run timings share the CPU with the other worker and with other users' jobs, and a
    benchmark pause can fall inside an epoch). Epoch seconds = median step seconds x steps.

    The dense gradient-criterion step includes the tracker's Taylor accumulation."""
    from epi_fast.policy.tracker import StructureTracker

    torch.set_num_threads(1)
    out: Dict[str, Any] = {"method": timing_pass.__doc__.split("\n\n")[0], "criteria": {}}
    cache: Dict[Tuple[int, ...], float] = {}
    for crit in sorted({u["config"]["criterion"] for u in units}):
        us = [u for u in units if u["config"]["criterion"] == crit]
        setup = UnitSetup.load(us[0]["config"])

        def new_model(setup: UnitSetup = setup):
            seed_everything(0)
            return setup.new_model()

        m = new_model()
        tracker = StructureTracker(m, setup.example, setup.config)
        accumulate: Optional[Any] = tracker.accumulate if tracker.accumulator is not None else None
        res = {"dense_epoch_seconds": setup.steps * step_seconds(m, setup.train, accumulate),
               "pruned_epoch_seconds": {}}
        for u in us:
            res["pruned_epoch_seconds"][str(u["config"]["seed"])] = _pruned_seconds(setup, u, cache, new_model)
        out["criteria"][crit] = res
    return out
