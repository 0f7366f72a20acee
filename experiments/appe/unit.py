"""One unit of the App. E experiment: a seed's dense run, then one branch per (ratio, prune epoch)."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import torch

from epi_fast.app import training as recipe
from epi_fast.policy.decision import prune_epoch_for
from experiments.protocol.dense import snapshot  # the protocol's whole training state, restored by branches


class Setup:
    """A unit's data loaders, detector factory, tracker configuration and example input."""

    def __init__(self, cfg: Dict[str, Any]) -> None:
        from torch.utils.data import DataLoader

        from epi_fast.detection import detection_collate, digit_detection_splits
        from epi_fast.policy.config import PrunerConfig

        self.cfg = cfg
        # The canvases are fixed data (data_seed); the unit's seed moves the initialisation and
        # the batch order.
        self.train, self.val, self.test = digit_detection_splits(
            seed=cfg["data_seed"], size=cfg["image_size"], n_train=cfg["n_train"], n_val=cfg["n_val"],
            n_test=cfg["n_test"])
        self.num_classes = self.train.num_classes
        self.steps = recipe.steps_per_epoch(len(self.train), cfg["batch_size"])
        self.collate = detection_collate
        self.eval_loader = lambda ds: DataLoader(ds, batch_size=64, shuffle=False, collate_fn=detection_collate)
        ratios = cfg["ratios"]
        self.config = PrunerConfig.build(ratios[0], criterion=cfg["criterion"], window=cfg["window"],
                                         patience=cfg["patience"], tau=cfg["tau"], track_ratios=ratios[1:])
        self.example = torch.zeros(1, 3, cfg["image_size"], cfg["image_size"])

    def new_model(self):
        from epi_fast.detection import build_detector

        return build_detector(self.cfg["model"], num_classes=self.num_classes, image_size=self.cfg["image_size"])

    def optimizer(self, model):
        c = self.cfg
        opt = recipe.make_optimizer(model, c["lr"], c["momentum"], c["weight_decay"])
        return opt, recipe.make_scheduler(opt, c["epochs"], self.steps, c["warmup_epochs"])

    def train_epoch(self, model, opt, sched, gen: torch.Generator, accumulate=None) -> float:
        """One epoch in the order `gen` draws (full batches); `accumulate` after each backward."""
        model.train()
        bs = self.cfg["batch_size"]
        perm = torch.randperm(len(self.train), generator=gen).tolist()
        total = 0.0
        for i in range(self.steps):
            images, targets = self.collate([self.train[j] for j in perm[i * bs:(i + 1) * bs]])
            loss = sum(model(images, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if accumulate is not None:
                accumulate()
            opt.step()
            sched.step()
            total += float(loss.detach())
        return total / self.steps

    def evaluate(self, model, split: str) -> Dict[str, Optional[float]]:
        from epi_fast.detection import evaluate_map

        res = evaluate_map(model, self.eval_loader(getattr(self, split)))
        return {"map50": res["map_50"], "map": res["map"]}


def dense_run(s: Setup) -> Dict[str, Any]:
    """T dense epochs watched by a StructureTracker over both ratios; states and scores per epoch."""
    from epi_fast.policy.tracker import StructureTracker
    from epi_fast.surgery import count_ops

    cfg = s.cfg
    T = cfg["epochs"]
    recipe.seed_everything(cfg["seed"])
    model = s.new_model()
    model.eval()
    ops = count_ops(model, s.example)
    opt, sched = s.optimizer(model)
    gen = torch.Generator().manual_seed(cfg["seed"])
    tracker = StructureTracker(model, s.example, s.config)
    states, scores, structures = {0: snapshot(model, opt, sched, gen)}, {}, {r: [] for r in cfg["ratios"]}

    def observe(record) -> None:
        scores[record.epoch] = record.scores.detach().clone()
        for i, r in enumerate(cfg["ratios"]):
            structures[r].append([int(c) for c in record.counts[i].tolist()])

    observe(tracker.initial)  # magnitude: the initial weights
    losses, val, seconds = [], [], []
    for t in range(1, T + 1):
        t0 = time.perf_counter()
        losses.append(s.train_epoch(model, opt, sched, gen, accumulate=tracker.accumulate))
        seconds.append(time.perf_counter() - t0)
        observe(tracker.epoch_end())
        val.append(s.evaluate(model, "val"))
        if t < T:
            states[t] = snapshot(model, opt, sched, gen)
    bank = tracker.bank
    return {"model": model, "states": states, "scores": scores, "structures": structures, "ops": ops,
            "epi": {r: h for r, h in bank.history().items()},
            "fired": {r: bank[r].fired_epoch for r in cfg["ratios"]},
            "loss": losses, "val": val, "epoch_seconds": seconds, "test": s.evaluate(model, "test")}


def run_branch(s: Setup, run: Dict[str, Any], ratio: float, e: int) -> Dict[str, Any]:
    """Restore epoch e, prune at `ratio` with that epoch's scores, train to T."""
    from epi_fast.surgery import prune

    st = run["states"][e]
    m = s.new_model()
    m.load_state_dict(st["model"])
    opt, sched = s.optimizer(m)
    opt.load_state_dict(st["opt"])
    sched.load_state_dict(st["sched"])
    gen = torch.Generator()
    gen.set_state(st["gen"])
    torch.set_rng_state(st["torch_rng"])
    c = s.config
    m.eval()  # the layout is traced in eval mode (the detector's inference path)
    rep = prune(m, ratio, s.example, criterion=c.criterion, scores=run["scores"][e], optimizer=opt,
                min_keep=c.min_keep, reduce=c.reduce, target=c.target, max_layer_ratio=c.max_layer_ratio,
                round_to=c.round_to)
    loss = None
    for _ in range(e + 1, s.cfg["epochs"] + 1):
        loss = s.train_epoch(m, opt, sched, gen)
    return {"val": s.evaluate(m, "val"), "test": s.evaluate(m, "test"), "final_loss": loss,
            "params_after": rep["params_after"], "flops_after": rep["flops_after"], "kept": rep["kept"]}


def run_unit(cfg: Dict[str, Any]) -> Dict[str, Any]:
    import epi_fast

    torch.set_num_threads(1)
    t_unit = time.perf_counter()
    s = Setup(cfg)
    run = dense_run(s)
    branches: Dict[str, Dict[str, Any]] = {}
    epochs: Dict[str, List[Any]] = {}
    for r in cfg["ratios"]:
        e, why = prune_epoch_for(run["fired"][r], cfg["deadline"])
        epochs[repr(r)] = [e, why]
        todo = sorted(set(cfg["candidates"]) | {e})
        branches[repr(r)] = {str(k): run_branch(s, run, r, k) for k in todo}
    return {
        "config": cfg, "epi_fast_version": epi_fast.__version__,
        "data": {"train": len(s.train), "val": len(s.val), "test": len(s.test), "classes": s.num_classes - 1},
        "dense": {"val": run["val"], "test": run["test"], "loss": run["loss"], "epoch_seconds": run["epoch_seconds"],
                  "params": run["ops"]["params"], "flops": run["ops"]["flops"]},
        "epi": {repr(r): h for r, h in run["epi"].items()},
        "epi_fired": {repr(r): run["fired"][r] for r in cfg["ratios"]},
        "epi_epoch": epochs, "structures": {repr(r): v for r, v in run["structures"].items()},
        "branches": branches, "unit_seconds": time.perf_counter() - t_unit,
    }
