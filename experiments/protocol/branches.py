"""One unit of work: the dense run, then one pruned branch per (ratio, prune epoch).

A branch restores the dense run's training state of epoch e, prunes it with
`epi_fast.surgery.prune` at the ratio with the tracker's scores of epoch e (optimizer state
carried over), and trains it to T on the same schedule. EPI's prune epoch per ratio is the
shipped rule (`epi_fast.policy.decision.prune_epoch_for`) applied to the indicator's firing
epoch and the deadline, so EPI's run is the branch at that epoch: up to it, EPI-guided
training *is* the dense run.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Tuple

import numpy as np
import torch

from epi_fast.policy.decision import prune_epoch_for

from .config import T0_DESCRIPTIONS, t0_kind
from .dense import DenseRun, UnitSetup, dense_run, t0_scoring_samples
from .files import atomic_json
from .training import evaluate, make_optimizer, make_scheduler, train_epoch


def run_branch(setup: UnitSetup, run: DenseRun, ratio: float, e: int) -> Dict[str, Any]:
    """Prune the dense run's state of epoch e at `ratio`, train to T; the branch's results."""
    from epi_fast.surgery import prune

    cfg, config = setup.cfg, setup.config
    T = cfg["epochs"]
    st = run.states[e]
    m = setup.new_model()
    m.load_state_dict(st["model"])
    o = make_optimizer(m)
    sc = make_scheduler(o, T, setup.steps)
    o.load_state_dict(st["opt"])
    sc.load_state_dict(st["sched"])
    g = torch.Generator()
    g.set_state(st["gen"])
    torch.set_rng_state(st["torch_rng"])
    t0 = time.perf_counter()
    rep = prune(m, ratio, setup.example, criterion=config.criterion, scores=run.scores[e], optimizer=o,
                min_keep=config.min_keep, reduce=config.reduce, target=config.target,
                max_layer_ratio=config.max_layer_ratio, round_to=config.round_to)
    prune_sec = time.perf_counter() - t0
    secs, top1_curve, loss = [], [], None
    for _ in range(e + 1, T + 1):
        t0 = time.perf_counter()
        loss = train_epoch(m, o, sc, setup.train, g)
        secs.append(time.perf_counter() - t0)
        if cfg.get("branch_curves"):
            top1_curve.append(evaluate(m, setup.test))
    return {
        # The oracle's epoch is chosen on val_top1; every reported accuracy is top1 (test).
        "top1": evaluate(m, setup.test), "val_top1": evaluate(m, setup.val), "final_loss": loss,
        "flops_after": rep["flops_after"], "params_after": rep["params_after"],
        "kept": rep["kept"], "epoch_seconds": float(np.mean(secs)) if secs else None,
        "prune_seconds": prune_sec, "top1_curve": top1_curve or None,
    }


def epi_epochs(run: DenseRun, deadline: int) -> Dict[float, Tuple[int, str]]:
    """(prune epoch, reason) per ratio: EPIPruner's rule on each ratio's indicator."""
    out = {}
    for r in run.ratios:
        epoch, reason = prune_epoch_for(run.fired_epoch(r), deadline)
        out[r] = (epoch, reason)
    return out


def environment() -> Dict[str, Any]:
    """Where the unit ran: bit-for-bit reproduction needs the same torch build and CPU kernels."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu,
            "python": platform.python_version()}


def unit_result(setup: UnitSetup, run: DenseRun, deadline: int, epochs: Dict[float, Tuple[int, str]],
                branches: Dict[str, Any]) -> Dict[str, Any]:
    """The unit's JSON (epi_fast 0.1's format, plus t0, t0_scoring_samples, epi_fast_version,
    environment, tracker, skipped_steps)."""
    import epi_fast

    cfg, ratios = setup.cfg, run.ratios
    eb = run.early_bird
    return {
        "config": cfg,
        "epi_fast_version": epi_fast.__version__,
        "environment": environment(),
        "data": setup.description,
        "train_size": len(setup.train), "val_size": len(setup.val), "test_size": len(setup.test), "samples_per_epoch": setup.samples,
        "tau": setup.config.tau, "deadline": deadline,
        "t0": T0_DESCRIPTIONS[t0_kind(cfg["criterion"])],
        "t0_scoring_samples": t0_scoring_samples(setup),
        "tracker": setup.config.to_dict(),
        "skipped_steps": run.tracker.skipped_steps,
        "protocol_sha256": cfg.get("protocol_sha256"),
        "dense": {"top1": run.top1, "top1_final": run.top1[-1], "epoch_seconds": run.epoch_seconds,
                  "score_seconds": run.score_seconds, "flops": run.flops, "params": run.params},
        "layers": list(run.tracker.layers),
        "epi": {repr(r): h for r, h in run.epi.items()},
        "epi_fired": {repr(r): run.fired_epoch(r) for r in ratios},
        "epi_epoch": {repr(r): epochs[r][0] for r in ratios},
        "epi_reason": {repr(r): epochs[r][1] for r in ratios},
        "structures": {repr(r): run.structures[r] for r in ratios},
        "early_bird": {repr(r): eb[r].history for r in ratios},
        "early_bird_fired": {repr(r): eb[r].fired_epoch for r in ratios},
        "spearman": run.spearman, "kendall": run.kendall,
        "branches": branches,
    }


def run_unit(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The dense run and every branch of one (setting, seed, criterion)."""
    torch.set_num_threads(1)
    t_unit = time.perf_counter()
    setup = UnitSetup.load(cfg)
    run = dense_run(setup)
    T = cfg["epochs"]
    deadline = cfg["deadline"] if cfg.get("deadline") is not None else T // 2
    epochs = epi_epochs(run, deadline)
    branches: Dict[str, Dict[str, Any]] = {}
    for r in run.ratios:
        todo = sorted(set(cfg["candidates"]) | {cfg["predef"], epochs[r][0]})
        branches[repr(r)] = {str(e): run_branch(setup, run, r, e) for e in todo}
    out = unit_result(setup, run, deadline, epochs, branches)
    out["unit_seconds"] = time.perf_counter() - t_unit
    return out


def work(job) -> str:
    """A pool worker's job: run one unit and write its JSON atomically."""
    cfg, path = job
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    atomic_json(path, run_unit(cfg))
    return f"{os.path.basename(path)}: {time.perf_counter() - t0:.0f} s"
