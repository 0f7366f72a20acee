"""B. The training EPI saves: an EPI-guided run against dense training of the same network,
data, schedule and seed, on a CPU workload where compute dominates the step.

Workload: the in-repo `ResNetSmall` (a stem, three stages of basic blocks) on scikit-learn's
8x8 digits (embedded; nothing is downloaded) upsampled to 32x32, batch 128 (full batches only),
SGD with the project's recipe (`epi_fast.app.training`: Nesterov momentum, no decay on BN and
biases, linear warm-up then cosine). The data set is one tensor in memory, so a step is the
forward, backward and optimizer step, nothing else.

Runs: dense, and `EPIPruner(model, optimizer, 0.5, x, criterion=C, target="flops")` for each
criterion, default tau, EPI firing by itself (no deadline unless the configuration sets one;
`prune_reason` is reported). All runs start from the same seed (same initial weights, same
batch order) and are trained side by side in one process, one epoch of each in turn (the
order rotating every epoch), so that the machine's load hits them alike.

Measured per EPI run: its wall clock over the dense run's (pruner construction included), its
training FLOPs over the dense run's, the share of EPI's own work (constructing the pruner,
`accumulate()`, `epoch_end()`, and the prune inside it) in its wall clock, and the wall-clock
ratio its FLOPs predict: t_p / T + (1 - t_p / T) * f, with t_p the prune epoch, T the epochs
and f the FLOPs of one training step (forward + backward, FlopCounterMode) of the pruned
network over the dense one's.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from .common import interleaved, nothing, paired_ratio

WALL_GOAL = 1.15  # measured wall-clock ratio <= this x the predicted one
SHARE_GOAL = 0.01  # EPI's own work < 1% of the training time
PAPER_SPEEDUP = 2.4


@dataclass
class TrainingConfig:
    epochs: int = 30
    batch: int = 128
    widths: Tuple[int, ...] = (32, 64, 128)
    blocks: Tuple[int, ...] = (1, 1, 1)
    input_size: int = 32
    ratio: float = 0.5
    target: str = "flops"
    criteria: List[str] = field(default_factory=lambda: ["magnitude", "gradient"])
    # More EPI runs with round_to (every pruned layer keeps a multiple of it): the same criteria
    # with hardware-friendly widths, beside the runs above (which use the default, None).
    round_to_runs: List[int] = field(default_factory=list)
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    seed: int = 0
    deadline_epoch: Optional[int] = None
    train_samples: Optional[int] = None  # a subset, for the smoke test
    dense_twin: bool = True  # a second dense run: the noise floor of the wall-clock ratios
    step_rounds: int = 10  # interleaved rounds timing the final networks' training steps


def load_data(cfg: TrainingConfig):
    from epi_fast.app.data import load_dataset

    bundle = load_dataset("digits", seed=cfg.seed)

    def tensors(ds):
        x, y = ds.tensors
        x = F.interpolate(x, size=(cfg.input_size, cfg.input_size), mode="bilinear", align_corners=False)
        return x.contiguous(), y

    xtr, ytr = tensors(bundle.train)
    xte, yte = tensors(bundle.test)
    if cfg.train_samples:
        xtr, ytr = xtr[:cfg.train_samples], ytr[:cfg.train_samples]
    return xtr, ytr, xte, yte


def build_model(cfg: TrainingConfig):
    from epi_fast.models.small import ResNetSmall

    return ResNetSmall(10, 1, widths=tuple(cfg.widths), blocks=tuple(cfg.blocks), stem=cfg.widths[0])


class Run:
    """One training run; `epoch()` trains one epoch and times it."""

    def __init__(self, name: str, criterion: Optional[str], cfg: TrainingConfig, x, y, example, steps: int,
                 round_to: Optional[int] = None):
        from epi_fast.app.training import make_optimizer, make_scheduler, seed_everything

        self.name, self.criterion, self.cfg, self.round_to = name, criterion, cfg, round_to
        self.error: Optional[str] = None
        self.x, self.y, self.steps = x, y, steps
        seed_everything(cfg.seed)
        self.model = build_model(cfg)
        self.opt = make_optimizer(self.model, cfg.lr, cfg.momentum, cfg.weight_decay)
        self.sched = make_scheduler(self.opt, cfg.epochs, steps, cfg.warmup_epochs)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.epoch_s: List[float] = []
        self.epi_s = {"construct": 0.0, "accumulate": 0.0, "epoch_end": 0.0, "prune": 0.0}
        self.pruner = None
        self.fired_now = []
        if criterion is not None:
            from epi_fast import EPIPruner

            t0 = time.perf_counter()
            self.pruner = EPIPruner(self.model, self.opt, cfg.ratio, example, criterion=criterion, target=cfg.target,
                                    round_to=round_to, deadline_epoch=cfg.deadline_epoch, total_epochs=cfg.epochs)
            self.epi_s["construct"] = time.perf_counter() - t0
            self._time_prune()

    def _time_prune(self) -> None:
        # The prune runs inside epoch_end(); its own time is taken apart where the pruner
        # exposes it (an instance attribute shadows the method for this one object).
        inner = getattr(self.pruner, "_prune", None)
        if inner is None:
            return

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.epi_s["prune"] += time.perf_counter() - t0

        self.pruner._prune = timed

    def epoch(self) -> None:
        t_start = time.perf_counter()
        model, opt, b = self.model, self.opt, self.cfg.batch
        model.train()
        perm = torch.randperm(self.x.shape[0], generator=self.gen)
        acc = 0.0
        for s in range(self.steps):
            idx = perm[s * b:(s + 1) * b]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(self.x[idx]), self.y[idx])
            loss.backward()
            if self.pruner is not None:
                t0 = time.perf_counter()
                self.pruner.accumulate()
                acc += time.perf_counter() - t0
            opt.step()
            self.sched.step()
        if self.pruner is not None:
            self.epi_s["accumulate"] += acc
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a late prune's LatePruneWarning: reported below
                fired = self.pruner.epoch_end()
            self.epi_s["epoch_end"] += time.perf_counter() - t0
            if fired:
                self.model = self.pruner.module
        self.epoch_s.append(time.perf_counter() - t_start)

    @property
    def total_s(self) -> float:
        return self.epi_s["construct"] + sum(self.epoch_s)

    @property
    def epi_work_s(self) -> float:
        # epoch_end's time includes the prune's.
        return self.epi_s["construct"] + self.epi_s["accumulate"] + self.epi_s["epoch_end"]

    def top1(self, x, y) -> float:
        self.model.eval()
        with torch.no_grad():
            return float((self.model(x).argmax(1) == y).float().mean())


def in_round_wall_ratio(dense_s, run_s, tp, extra_s: float = 0.0):
    """The wall-clock ratio of a run to the dense one from in-round quotients: each epoch's time
    over the dense run's epoch trained in the same round, the median quotient before the prune
    (epochs 1..tp, the prune's own epoch included) and the median after it, weighted by their
    epoch counts, plus `extra_s` (work outside the epochs) over T median dense epochs. A burst of
    load from elsewhere that hits a few rounds moves these medians little and the sums of times
    a lot. Returns (ratio, median quotient before, median quotient after)."""
    q = [r / d for r, d in zip(run_s, dense_s)]
    T = len(q)
    k = T if tp is None else tp
    pre = statistics.median(q[:k]) if k else None
    post = statistics.median(q[k:]) if k < T else None
    ratio = ((pre or 0.0) * k + (post or 0.0) * (T - k)) / T + extra_s / (T * statistics.median(dense_s))
    return ratio, pre, post


def _warm_up(cfg: TrainingConfig, example) -> None:
    """One pruner built and dropped before the timed runs, so that one-time costs of the process
    (imports, first calls) are not charged to whichever run is built first."""
    from epi_fast import EPIPruner

    model = build_model(cfg)
    EPIPruner(model, None, cfg.ratio, example, criterion=cfg.criteria[0] if cfg.criteria else "magnitude",
              target=cfg.target)


def _step_fn(r: Run, x, y):
    from epi_fast.app.training import make_optimizer

    model = copy.deepcopy(r.model).train()
    opt = make_optimizer(model, r.cfg.lr, r.cfg.momentum, r.cfg.weight_decay)

    def step(_):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


# How the time of one training step splits, by what its aten ops do (forward and backward alike).
OP_KINDS = (("convolution", ("convolution", "conv2d", "mkldnn_conv")),
            ("batch norm", ("batch_norm",)),
            ("matrix products", ("addmm", "mm", "bmm", "linear")))


def _kind(op_name: str) -> str:
    for kind, keys in OP_KINDS:
        if any(k in op_name for k in keys):
            return kind
    return "other (activations, adds, optimizer, copies)"


def step_op_times(r: Run, x, y, steps: int = 3) -> dict:
    """Seconds per training step spent in each kind of aten op (OP_KINDS), timed op by op under
    a TorchDispatchMode (forward, backward and the optimizer's ops all pass through it), on a
    copy of the final network; the mode's own overhead (a few microseconds per op) is included."""
    from torch.utils._python_dispatch import TorchDispatchMode

    times: dict = {}

    class OpTimer(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            t0 = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            kind = _kind(func.name())
            times[kind] = times.get(kind, 0.0) + time.perf_counter() - t0
            return out

    step = _step_fn(r, x, y)
    step(None)
    with OpTimer():
        for _ in range(steps):
            step(None)
    return {k: v / steps for k, v in times.items()}


def _conv_flops(model, x, y) -> int:
    """FLOPs of the convolutions (forward and backward) in one training step."""
    from epi_fast.targets.flops import flop_counter

    m = copy.deepcopy(model).train()
    counter = flop_counter()
    with counter:
        F.cross_entropy(m(x), y).backward()
    return int(sum(v for op, v in counter.get_flop_counts().get("Global", {}).items() if "convolution" in str(op)))


def step_flops(model, x, y) -> int:
    """FLOPs of one training step's forward and backward (FlopCounterMode), on a copy."""
    from epi_fast.targets.flops import flop_counter

    m = copy.deepcopy(model).train()
    counter = flop_counter()
    with counter:
        F.cross_entropy(m(x), y).backward()
    return int(counter.get_total_flops())


def run(cfg: TrainingConfig, log=print) -> dict:
    xtr, ytr, xte, yte = load_data(cfg)
    from epi_fast.app.training import steps_per_epoch

    steps = steps_per_epoch(xtr.shape[0], cfg.batch)
    example = xtr[:1].clone()
    _warm_up(cfg, example)
    runs = [Run("dense", None, cfg, xtr, ytr, example, steps)]
    if cfg.dense_twin:
        runs.append(Run("dense twin", None, cfg, xtr, ytr, example, steps))
    runs += [Run(c, c, cfg, xtr, ytr, example, steps) for c in cfg.criteria]
    runs += [Run(f"{c}, round_to={n}", c, cfg, xtr, ytr, example, steps, round_to=n)
             for n in cfg.round_to_runs for c in cfg.criteria]
    failed = []
    for e in range(cfg.epochs):
        shift = e % len(runs)
        for r in runs[shift:] + runs[:shift]:
            try:
                r.epoch()
            except ValueError as err:  # e.g. a target this epoch's scores cannot reach: recorded, run dropped
                if r.pruner is None:
                    raise
                r.error = f"epoch {e + 1}: {type(err).__name__}: {' '.join(str(err).split())}"
                log(f"  {r.name}: stopped, {r.error}")
                failed.append(r)
        runs = [r for r in runs if r.error is None]
        pruned = [f"{r.name}@{r.pruner.prune_epoch}" for r in runs if r.pruner is not None and r.pruner.pruned]
        log(f"  epoch {e + 1}/{cfg.epochs}: " + ", ".join(f"{r.name} {r.epoch_s[-1]:.2f} s" for r in runs)
            + (f" (pruned: {', '.join(pruned)})" if pruned else ""))
    xb, yb = xtr[:cfg.batch], ytr[:cfg.batch]
    dense = runs[0]
    f_dense = step_flops(dense.model, xb, yb)
    epi_runs = [r for r in runs if r.pruner is not None]
    # The final networks' training steps, timed side by side (the same batch, a copy of each
    # model and optimizer): how the pruned step's time compares with its FLOPs, free of the
    # epoch-to-epoch noise of the runs themselves.
    steps_timed = interleaved({r.name: (nothing, _step_fn(r, xb, yb)) for r in [dense] + epi_runs},
                              rounds=cfg.step_rounds, warmup=1)
    out = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
        "steps_per_epoch": steps, "train_samples": int(xtr.shape[0]), "test_samples": int(xte.shape[0]),
        "dense": {"total_s": dense.total_s, "epoch_s": dense.epoch_s, "step_flops": f_dense,
                  "params": sum(p.numel() for p in dense.model.parameters()), "top1": dense.top1(xte, yte)},
        "runs": {},
        "failed_runs": {r.name: {"criterion": r.criterion, "round_to": r.round_to, "error": r.error,
                                 "epochs_done": len(r.epoch_s)} for r in failed},
    }
    out["dense"]["step_s"] = steps_timed["dense"]["median_s"]
    ops = {r.name: step_op_times(r, xb, yb) for r in [dense] + epi_runs}
    out["dense"]["step_op_s"] = ops["dense"]
    twin = [r for r in runs if r.name == "dense twin"]
    if twin:
        out["dense_twin"] = {"total_s": twin[0].total_s, "epoch_s": twin[0].epoch_s,
                             "wall_ratio": twin[0].total_s / dense.total_s,
                             "wall_ratio_in_round": in_round_wall_ratio(dense.epoch_s, twin[0].epoch_s, None)[0]}
        log(f"  dense twin (the same run again, a control): {twin[0].total_s:.1f} s = "
            f"{out['dense_twin']['wall_ratio']:.3f}x the dense run (in-round {out['dense_twin']['wall_ratio_in_round']:.3f}x)")
    T = cfg.epochs
    for r in epi_runs:
        rep = r.pruner.report()
        tp = r.pruner.prune_epoch
        f_pruned = step_flops(r.model, xb, yb)
        f = f_pruned / f_dense
        frac = (tp if tp is not None else T) / T
        predicted = frac + (1 - frac) * f
        measured = r.total_s / dense.total_s
        robust, q_pre, q_post = in_round_wall_ratio(dense.epoch_s, r.epoch_s, tp, r.epi_s["construct"])
        before = r.epoch_s[:tp] if tp else r.epoch_s
        after = r.epoch_s[tp:] if tp else []
        dense_after = dense.epoch_s[tp:] if tp else []
        row = {
            "criterion": r.criterion, "round_to": r.round_to, "tau": r.pruner.tau, "prune_epoch": tp, "prune_reason": r.pruner.prune_reason,
            "epochs": T, "total_s": r.total_s, "epoch_s": r.epoch_s,
            "wall_ratio": measured, "speedup": dense.total_s / r.total_s,
            "step_flops": f_pruned, "step_flops_ratio": f,
            "flops_ratio": predicted,  # training FLOPs over dense: t_p epochs dense, the rest pruned
            "predicted_wall_ratio": predicted,
            "measured_over_predicted": measured / predicted,
            "wall_ratio_in_round": robust, "speedup_in_round": 1.0 / robust,
            "measured_over_predicted_in_round": robust / predicted,
            "epoch_ratio_before_prune_in_round": q_pre, "epoch_ratio_after_prune_in_round": q_post,
            "epi_s": dict(r.epi_s), "epi_work_s": r.epi_work_s, "epi_share": r.epi_work_s / r.total_s,
            "epoch_ratio_after_prune": (sum(after) / sum(dense_after)) if after else None,
            "epoch_ratio_before_prune": sum(before) / sum(dense.epoch_s[:len(before)]),
            "step_s": steps_timed[r.name]["median_s"],
            "step_time_ratio": paired_ratio(steps_timed[r.name], steps_timed["dense"]),
            "step_rounds": steps_timed[r.name]["reps"],
            "step_op_s": ops[r.name],
            "step_op_ratio": {k: v / ops["dense"][k] for k, v in ops[r.name].items() if ops["dense"].get(k)},
            "conv_flops_ratio": _conv_flops(r.model, xb, yb) / _conv_flops(dense.model, xb, yb),
            "achieved": rep.get("achieved"), "flops_before": rep.get("flops_before"), "flops_after": rep.get("flops_after"),
            "params_after": rep.get("params_after"), "kept": rep.get("kept"),
            "epi": rep.get("epi"), "top1": r.top1(xte, yte),
        }
        out["runs"][r.name] = row
        log(f"  {r.name}: prune epoch {tp} ({row['prune_reason']}); wall {r.total_s:.1f} s vs dense "
            f"{dense.total_s:.1f} s = {measured:.3f}x, in-round {robust:.3f}x (speed-up {row['speedup']:.2f}x, "
            f"in-round {row['speedup_in_round']:.2f}x); FLOPs predict {predicted:.3f}x (f = {f:.3f}; the final "
            f"step's time ratio {row['step_time_ratio']:.3f}); measured / predicted {row['measured_over_predicted']:.3f}, "
            f"in-round {row['measured_over_predicted_in_round']:.3f}; EPI's own work "
            f"{r.epi_work_s:.3f} s = {row['epi_share']:.3%}; top-1 {row['top1']:.3f} (dense {out['dense']['top1']:.3f})")
    return out


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def targets(result: dict) -> list:
    rows = []
    for name, r in result.get("failed_runs", {}).items():
        rows.append({"target": f"B: the EPI run completed ({name})", "value": f"stopped: {r['error'][:300]}",
                     "goal": "all epochs", "status": "FAIL", "detail": f"{r['epochs_done']} epochs completed"})
    for crit, r in result["runs"].items():
        fired = r["prune_reason"] == "epi"
        note = "" if fired else f" (prune_reason {r['prune_reason']!r}: EPI did not fire by itself)"
        ratio = r.get("measured_over_predicted_in_round", r["measured_over_predicted"])
        rows.append({
            "target": f"B: measured wall-clock ratio <= {WALL_GOAL}x the FLOPs-predicted one ({crit})",
            "value": f"{ratio:.3f}x (measured {r.get('wall_ratio_in_round', r['wall_ratio']):.3f} from in-round "
                     f"epoch ratios, {r['wall_ratio']:.3f} from the sums of times; predicted {r['predicted_wall_ratio']:.3f})",
            "goal": f"<= {WALL_GOAL}x", "status": "PASS" if ratio <= WALL_GOAL else "FAIL",
            "detail": f"prune epoch {r['prune_epoch']} of {r['epochs']} ({r['prune_reason']}); step FLOPs ratio "
                      f"f = {r['step_flops_ratio']:.3f}; epochs after the prune took "
                      f"{_f(r.get('epoch_ratio_after_prune_in_round'))} of the dense run's (in-round median); "
                      f"sums of times: {r['measured_over_predicted']:.3f}x" + note,
        })
        rows.append({
            "target": f"B: EPI's own work < {SHARE_GOAL:.0%} of training time ({crit})",
            "value": f"{r['epi_share']:.3%} ({r['epi_work_s']:.3f} s of {r['total_s']:.1f} s)",
            "goal": f"< {SHARE_GOAL:.0%}", "status": "PASS" if r["epi_share"] < SHARE_GOAL else "FAIL",
            "detail": ", ".join(f"{k} {v:.3f} s" for k, v in r["epi_s"].items()) + " (epoch_end includes the prune)",
        })
        rows.append({
            "target": f"B: EPI fired by itself ({crit})",
            "value": f"prune_reason {r['prune_reason']!r} at epoch {r['prune_epoch']}",
            "goal": "'epi'", "status": "PASS" if fired else "FAIL",
            "detail": f"absolute speed-up {r.get('speedup_in_round', r['speedup']):.2f}x in-round, "
                      f"{r['speedup']:.2f}x from the sums of times (the paper: {PAPER_SPEEDUP}x)",
        })
    return rows
