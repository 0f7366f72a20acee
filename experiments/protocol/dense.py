"""The dense run of a unit, watched by the shipped `StructureTracker`.

Per optimizer step the run calls `tracker.accumulate()` (what `EPIPruner.accumulate()` does),
per epoch `tracker.epoch_end()` (what `EPIPruner.epoch_end()` does before it decides): the
scores, the masks of every ratio, the structures and the EPI values of every ratio come from
there, the EPI curves from the tracker's `IndicatorBank`. Beside it the run keeps what the
branches and the App. D comparison need: the full training state after every epoch, the
ranked scores, an Early-Bird indicator per ratio (fed the tracker's masks) and the rank
correlations of consecutive scores.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from epi_fast.app.training import seed_everything
from epi_fast.indicator import EarlyBirdIndicator
from epi_fast.policy.tracker import EpochRecord, StructureTracker

from .config import TRAIN, pruner_config
from .data import Tensors, load_setting
from .training import evaluate, make_optimizer, make_scheduler, samples_per_epoch, steps_per_epoch, train_epoch

# Early-Bird as in You et al.: the newest mask against the previous 4, eps 0.1.
EB_WINDOW, EB_EPS = 5, 0.1


@dataclass
class UnitSetup:
    """A unit's data, model factory and tracker configuration."""

    cfg: Dict[str, Any]
    train: Tensors
    val: Tensors
    test: Tensors
    num_classes: int
    in_channels: int
    input_size: Tuple[int, ...]
    description: str
    config: Any = None  # the PrunerConfig

    @classmethod
    def load(cls, cfg: Dict[str, Any]) -> "UnitSetup":
        train, val, test, k, cin, shape, desc = load_setting(cfg["setting"], cfg["seed"], cfg.get("train_subset"))
        return cls(cfg, train, val, test, k, cin, shape, desc, pruner_config(cfg))

    @property
    def example(self) -> torch.Tensor:
        return torch.zeros(1, self.in_channels, *self.input_size)

    @property
    def steps(self) -> int:
        return steps_per_epoch(len(self.train))

    @property
    def samples(self) -> int:
        return samples_per_epoch(len(self.train))

    def new_model(self):
        from epi_fast.models import build_model

        return build_model(self.cfg["model"], num_classes=self.num_classes, in_channels=self.in_channels,
                           **self.cfg.get("model_kwargs", {}))


def spearman_kendall(a, b) -> Tuple[float, float]:
    """Rank correlations of two score vectors; NaN (null in the JSON) when one is constant,
    as the magnitude criterion's t = 0 scores are (every BN gamma is 1)."""
    import warnings

    from scipy.stats import ConstantInputWarning, kendalltau, spearmanr

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return float(spearmanr(a, b).statistic), float(kendalltau(a, b).statistic)


@dataclass
class DenseRun:
    """What the dense run recorded; epochs t = 0 (initialisation) .. T."""

    tracker: StructureTracker
    flops: int
    params: int
    states: Dict[int, Dict[str, Any]] = field(default_factory=dict)  # the training state after epoch t < T
    scores: Dict[int, torch.Tensor] = field(default_factory=dict)    # the ranked group scores of epoch t
    structures: Dict[float, List[List[int]]] = field(default_factory=dict)
    early_bird: Dict[float, EarlyBirdIndicator] = field(default_factory=dict)
    spearman: List[Optional[float]] = field(default_factory=lambda: [None])
    kendall: List[Optional[float]] = field(default_factory=lambda: [None])
    top1: List[float] = field(default_factory=list)      # test accuracy after epoch t
    epoch_seconds: List[float] = field(default_factory=list)
    score_seconds: List[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        for r in self.ratios:
            self.structures[r] = []
            self.early_bird[r] = EarlyBirdIndicator(window=EB_WINDOW, eps=EB_EPS)

    @property
    def ratios(self) -> List[float]:
        return list(self.tracker.bank.ratios)

    @property
    def epi(self) -> Dict[float, List[Optional[float]]]:
        return self.tracker.bank.history()

    def fired_epoch(self, ratio: float) -> Optional[int]:
        return self.tracker.bank[ratio].fired_epoch

    def observe(self, record: EpochRecord) -> None:
        """Keep one epoch's record of the tracker (and feed Early-Bird its masks)."""
        t = record.epoch
        if t != len(self.scores):
            raise RuntimeError(f"the tracker recorded epoch {t}, expected {len(self.scores)}")
        self.scores[t] = record.scores.detach().clone()
        for i, r in enumerate(self.ratios):
            self.structures[r].append([int(c) for c in record.counts[i].tolist()])
            self.early_bird[r].update(record.masks[i])
        if t > 0:
            s, k = spearman_kendall(self.scores[t - 1], self.scores[t])
            self.spearman.append(s)
            self.kendall.append(k)


def snapshot(model, opt, sched, gen: torch.Generator) -> Dict[str, Any]:
    """The whole training state: a branch restored from it continues as the dense run would."""
    return {
        "model": copy.deepcopy(model.state_dict()),
        "opt": copy.deepcopy(opt.state_dict()),
        "sched": copy.deepcopy(sched.state_dict()),
        "gen": gen.get_state().clone(),
        "torch_rng": torch.get_rng_state().clone(),
    }


def dense_run(setup: UnitSetup) -> DenseRun:
    """Train the dense network for T epochs, tracked by a `StructureTracker` over every ratio."""
    from epi_fast.surgery import count_ops

    cfg = setup.cfg
    T, seed = cfg["epochs"], cfg["seed"]
    seed_everything(seed)
    model = setup.new_model()
    ops = count_ops(model, setup.example)
    opt = make_optimizer(model)
    sched = make_scheduler(opt, T, setup.steps)
    gen = torch.Generator().manual_seed(seed)
    tracker = StructureTracker(model, setup.example, setup.config)
    run = DenseRun(tracker, ops["flops"], ops["params"])
    run.top1.append(evaluate(model, setup.test))
    # The t = 0 state is the untrained network, for every criterion.
    run.states[0] = snapshot(model, opt, sched, gen)
    if tracker.initial is not None:  # weight criteria: recorded at construction
        run.observe(tracker.initial)
    for t in range(1, T + 1):
        t0 = time.perf_counter()
        train_epoch(model, opt, sched, setup.train, gen, accumulate=tracker.accumulate)
        run.epoch_seconds.append(time.perf_counter() - t0)
        if 0 not in run.scores:  # gradient criteria: captured at the first finite optimizer step
            if tracker.initial is None:
                raise RuntimeError("no optimizer step of epoch 1 had finite gradients: no t = 0 structure")
            run.observe(tracker.initial)
        t0 = time.perf_counter()
        record = tracker.epoch_end()
        run.score_seconds.append(time.perf_counter() - t0)
        run.observe(record)
        run.top1.append(evaluate(model, setup.test))
        if t < T:
            run.states[t] = snapshot(model, opt, sched, gen)
    return run


def t0_scoring_samples(setup: UnitSetup) -> int:
    """Training samples whose gradients the t = 0 scores cost beyond training itself: one batch
    (the first optimizer step's, at the initial weights) for a gradient criterion, none for a
    weight criterion. Prune-at-init pays them (analysis.costs)."""
    if not setup.config.criterion.needs_gradients:
        return 0
    return min(TRAIN["batch_size"], len(setup.train))
